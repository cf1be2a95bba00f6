//! `vtap`: the appliance daemon and its command-line client.
//!
//! `vtap daemon` runs the appliance (see [`daemon`]); `vtap policy check`
//! validates policy files offline. The other subcommands of the contract are
//! clients of the REST API.

mod daemon;
mod metrics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vtap",
    version,
    about = "eBPF virtual TAP and traffic-mirroring appliance"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the appliance: attach to taps, mirror, serve the API.
    Daemon(daemon::DaemonArgs),
    /// Policy files.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy file or directory offline (no daemon needed).
    Check {
        /// A policy file or a directory of them.
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Daemon(args) => daemon::run(args),
        Cmd::Policy {
            cmd: PolicyCmd::Check { path },
        } => policy_check(&path),
    }
}

fn policy_check(path: &std::path::Path) -> ExitCode {
    match vtap_core::policy::load::load_and_validate(path) {
        Ok(policies) => {
            for p in &policies {
                println!(
                    "ok  {:<24} {} taps, {} outputs{}",
                    p.name,
                    p.taps.len(),
                    p.outputs.len(),
                    if p.enabled { "" } else { " (disabled)" }
                );
            }
            println!("{}: {} policies valid", path.display(), policies.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid\n{e}", path.display());
            ExitCode::from(1)
        }
    }
}
