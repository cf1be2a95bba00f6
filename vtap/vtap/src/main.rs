//! `vtap`: the appliance daemon and its command-line client.
//!
//! `vtap daemon` runs the appliance (see [`daemon`]); `vtap policy check`
//! validates policy files offline. The other subcommands are clients of the
//! REST API (see [`cli`]): `--api URL` / `VTAP_API`, `--token` / `VTAP_TOKEN`,
//! `--output table|json|yaml`.

mod api;
mod cli;
mod daemon;
mod metrics;
mod wire;

use std::process::ExitCode;

/// mimalloc: exporting a probe map of 1M entries is millions of small
/// label strings per scrape; glibc's malloc/free were a third of that time
/// (BENCHMARKS.md §6).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vtap",
    version,
    about = "eBPF virtual TAP and traffic-mirroring appliance",
    after_help = "Exit status of client commands: 0 ok, 1 refused by the daemon or bad input file, \
                  2 usage error, 3 daemon unreachable."
)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the appliance: attach to taps, mirror, serve the API.
    Daemon(daemon::DaemonArgs),
    /// Mirror policies: apply files, list, get, delete, check offline.
    Policy {
        #[command(subcommand)]
        cmd: cli::policy::PolicyCmd,
    },
    /// Tapped interfaces: list, attach, detach.
    Tap {
        #[command(subcommand)]
        cmd: cli::tap::TapCmd,
    },
    /// Every counter: taps, policies, outputs.
    Stats,
    /// Counting probes: inject, list, get, delete, read metrics.
    Probe {
        #[command(subcommand)]
        cmd: cli::probe::ProbeCmd,
    },
    /// Pcap captures: list with files and counters, stream live pcapng.
    Capture {
        #[command(subcommand)]
        cmd: cli::capture::CaptureCmd,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(e) = client_flag_on_daemon(&matches) {
        e.exit();
    }
    let ctx = cli::Ctx::new(cli.global);
    match cli.cmd {
        Cmd::Daemon(args) => daemon::run(args),
        Cmd::Policy { cmd } => cli::finish(cli::policy::run(&ctx, cmd)),
        Cmd::Tap { cmd } => cli::finish(cli::tap::run(&ctx, cmd)),
        Cmd::Stats => cli::finish(cli::stats::run(&ctx)),
        Cmd::Capture { cmd } => cli::finish(cli::capture::run(&ctx, cmd)),
        Cmd::Probe { cmd } => cli::finish(cli::probe::run(&ctx, cmd)),
    }
}

/// `vtap daemon --token X` would silently do nothing: the client-only
/// global flags are a usage error there (exit 2).
fn client_flag_on_daemon(m: &ArgMatches) -> Option<clap::Error> {
    let Some(("daemon", dm)) = m.subcommand() else {
        return None;
    };
    let given = cli::CLIENT_ONLY
        .into_iter()
        .find(|id| dm.value_source(id) == Some(ValueSource::CommandLine))?;
    Some(Cli::command().error(
        clap::error::ErrorKind::ArgumentConflict,
        format!(
            "--{given} is an option of the client commands; `vtap daemon` does not take it \
             (it listens on --listen and reads its token from --token-file)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_flags_are_refused_by_the_daemon() {
        for args in [
            &["vtap", "daemon", "--token", "x"][..],
            &["vtap", "--api", "http://h:1", "daemon"][..],
            &["vtap", "daemon", "-o", "json", "--listen", "127.0.0.1:1"][..],
        ] {
            let m = Cli::command().try_get_matches_from(args).unwrap();
            let e = client_flag_on_daemon(&m).expect("refused");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        let m = Cli::command()
            .try_get_matches_from(["vtap", "daemon", "--listen", "127.0.0.1:1"])
            .unwrap();
        assert!(client_flag_on_daemon(&m).is_none());
        let m = Cli::command()
            .try_get_matches_from(["vtap", "--token", "x", "stats"])
            .unwrap();
        assert!(client_flag_on_daemon(&m).is_none());
    }

    #[test]
    fn global_flags_anywhere() {
        let c = Cli::try_parse_from([
            "vtap",
            "policy",
            "list",
            "-o",
            "json",
            "--api",
            "http://h:1",
        ])
        .unwrap();
        assert_eq!(c.global.output, cli::output::Format::Json);
        assert_eq!(c.global.api, "http://h:1");
        let c = Cli::try_parse_from([
            "vtap",
            "--output",
            "yaml",
            "tap",
            "attach",
            "vm1-tap",
            "--direction",
            "egress",
        ])
        .unwrap();
        assert_eq!(c.global.output, cli::output::Format::Yaml);
        assert!(matches!(
            c.cmd,
            Cmd::Tap {
                cmd: cli::tap::TapCmd::Attach {
                    direction: Some(cli::tap::DirectionArg::Egress),
                    ..
                }
            }
        ));
        // Usage errors are clap's (exit 2).
        let e = Cli::try_parse_from(["vtap", "policy", "apply"])
            .err()
            .unwrap();
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["vtap", "-o", "xml", "stats"])
            .err()
            .unwrap();
        assert_eq!(e.exit_code(), 2);
    }
}
