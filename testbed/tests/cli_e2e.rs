//! End-to-end tests of the command-line client: the real `vtap daemon` in a
//! throwaway testbed's host namespace, driven by the real CLI binary
//! (`target/debug/vtap` or $VTAP_BIN) run inside that namespace with
//! `ip netns exec HOST vtap --api http://127.0.0.1:7470 ...`. Assertions are
//! on the CLI's exit status, its stdout (tables and `--output json`) and its
//! stderr, and on the daemon's persisted state across a restart.
//!
//! Root is needed; without it the tests print `skipping: needs root`, except
//! under `CI=true` where they fail instead.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test cli_e2e`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vtap_testbed::cmd::{self, BgProcess};
use vtap_testbed::daemon::{DAEMON_PORT, http_request, tail};
use vtap_testbed::{Options, Testbed, require_root, vtap_bin};

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What one CLI run did.
#[derive(Debug)]
struct Run {
    args: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "`vtap {}` exited {}\n--- stdout\n{}--- stderr\n{}---",
            self.args, self.code, self.stdout, self.stderr
        )
    }

    /// Requires exit 0; returns stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{}", self.describe());
        &self.stdout
    }

    /// Requires exit `code`; returns stderr.
    fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{}", self.describe());
        assert!(
            self.stderr.starts_with("error: "),
            "stderr must start with `error: `\n{}",
            self.describe()
        );
        &self.stderr
    }

    /// Requires exit 0 and parses stdout as JSON.
    fn json(&self) -> Value {
        let out = self.ok();
        serde_json::from_str(out)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }
}

/// The CLI, run inside the testbed's host namespace against its daemon.
struct Cli<'a> {
    tb: &'a Testbed,
    api: String,
    env: Vec<(String, String)>,
}

impl<'a> Cli<'a> {
    fn new(tb: &'a Testbed) -> Cli<'a> {
        Cli {
            tb,
            api: format!("http://127.0.0.1:{DAEMON_PORT}"),
            env: Vec::new(),
        }
    }

    fn with_env(tb: &'a Testbed, k: &str, v: &str) -> Cli<'a> {
        let mut c = Cli::new(tb);
        c.env.push((k.into(), v.into()));
        c
    }

    /// `vtap --api URL ARGS...`.
    fn run(&self, args: &[&str]) -> Run {
        let mut full = vec!["--api", self.api.as_str()];
        full.extend_from_slice(args);
        self.raw(&full)
    }

    /// `vtap ARGS...` (no `--api` added).
    fn raw(&self, args: &[&str]) -> Run {
        let mut c = cmd::ns_command(&self.tb.host_ns, vtap_bin());
        c.args(args)
            .env_remove("VTAP_API")
            .env_remove("VTAP_TOKEN")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let out = cmd::run(&mut c, CLI_TIMEOUT)
            .unwrap_or_else(|e| panic!("running vtap {args:?}: {e:#}"));
        Run {
            args: args.join(" "),
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }
}

fn testbed(test: &str) -> Option<Testbed> {
    if !require_root(test) {
        return None;
    }
    Some(
        Testbed::new(Options::default().vms(2))
            .unwrap_or_else(|e| panic!("{test}: cannot build testbed: {e:#}")),
    )
}

/// A policy on `taps` (both directions) matching `protocol`, to mon0 with `vlan`.
fn policy(name: &str, taps: &str, protocol: &str, vlan: u16) -> String {
    format!(
        "version: 1\nname: {name}\npriority: 100\nenabled: true\ntaps: [{taps}]\ndirection: both\n\
         match:\n  protocol: {protocol}\noutputs:\n  - interface: mon0\n    vlan: {vlan}\n"
    )
}

/// Writes `files` (name, text) into a fresh directory of the testbed.
fn write_dir(tb: &Testbed, stem: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = tb.path(stem, "d");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// Writes one file into a fresh directory and returns the file's path.
fn write_file(tb: &Testbed, name: &str, text: &str) -> PathBuf {
    write_dir(tb, "file", &[(name, text)]).join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The cells of the table row whose first cell is `first` (cells are
/// separated by three or more spaces).
fn row(table: &str, first: &str) -> Option<Vec<String>> {
    table.lines().find_map(|l| {
        let cells: Vec<String> = l
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        (cells.first().map(String::as_str) == Some(first)).then_some(cells)
    })
}

/// Every policy of `policy list -o json`, by name.
fn policies(cli: &Cli) -> BTreeMap<String, Value> {
    let v = cli.run(&["policy", "list", "-o", "json"]).json();
    v["policies"]
        .as_array()
        .unwrap_or_else(|| panic!("no policies array: {v}"))
        .iter()
        .map(|p| (p["policy"]["name"].as_str().unwrap().to_owned(), p.clone()))
        .collect()
}

fn etag_of(cli: &Cli, name: &str) -> String {
    let v = cli.run(&["policy", "get", name, "--output", "json"]).json();
    let e = v["etag"].as_str().unwrap_or_default().to_owned();
    assert!(!e.is_empty(), "no etag in {v}");
    e
}

/// Starts `vtap daemon` on an existing policy directory (the testbed's
/// `start_daemon` always makes a fresh one) and waits until it is ready.
fn start_daemon_on<'a>(tb: &'a Testbed, policy_dir: &Path) -> BgProcess<'a> {
    let state = tb.path("state", "d");
    std::fs::create_dir_all(&state).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], DAEMON_PORT));
    let mut c = cmd::ns_command(&tb.host_ns, vtap_bin());
    c.arg("daemon")
        .arg("--policies")
        .arg(policy_dir)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--state-dir")
        .arg(&state)
        .env("VTAP_LOG", "info");
    let mut p = tb.spawn_command(c, "vtap-daemon-restarted").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = p.try_wait().unwrap() {
            panic!(
                "restarted daemon exited ({}):\n{}",
                cmd::describe_status(&st),
                tail(&p.stderr(), 40)
            );
        }
        match http_request(&tb.host_ns, addr, "GET", "/readyz", None) {
            Ok(r) if r.status == 200 => return p,
            _ if Instant::now() > deadline => panic!(
                "restarted daemon not ready within 30 s:\n{}",
                tail(&p.stderr(), 40)
            ),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Apply a directory of two policies, list them, get one, dry-run a change,
/// delete one, change one for real; then restart the daemon on the same
/// policy directory and find the same policies active with the same ETags.
#[test]
fn cli_manages_policies_and_they_survive_a_restart() {
    let Some(tb) = testbed("cli_manages_policies_and_they_survive_a_restart") else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let cli = Cli::new(&tb);
    assert_eq!(cli.run(&["policy", "list"]).ok(), "no policies\n");

    // apply: one batch, both created.
    let dir = write_dir(
        &tb,
        "apply",
        &[
            ("10-icmp.yaml", &policy("icmp", "vm1-tap", "icmp", 100)),
            ("20-udp.yaml", &policy("udp", "vm2-tap", "udp", 200)),
        ],
    );
    let r = cli.run(&["policy", "apply", "-f", s(&dir)]);
    let out = r.ok();
    for name in ["icmp", "udp"] {
        let cells = row(out, name).unwrap_or_else(|| panic!("no row {name}\n{}", r.describe()));
        assert_eq!(cells[1], "created", "{}", r.describe());
        assert_eq!(cells.len(), 3, "etag column\n{}", r.describe());
    }
    // Again: unchanged.
    let r = cli.run(&["policy", "apply", "-f", s(&dir)]);
    assert_eq!(
        row(r.ok(), "udp").unwrap()[1],
        "unchanged",
        "{}",
        r.describe()
    );

    // list: both present and active (table and JSON).
    let r = cli.run(&["policy", "list"]);
    let out = r.ok();
    assert!(out.starts_with("NAME "), "{}", r.describe());
    for (name, tap) in [("icmp", "vm1-tap"), ("udp", "vm2-tap")] {
        let cells = row(out, name).unwrap_or_else(|| panic!("no row {name}\n{}", r.describe()));
        assert_eq!(&cells[1..4], ["yes", "yes", tap], "{}", r.describe());
    }
    let all = policies(&cli);
    assert_eq!(all.keys().collect::<Vec<_>>(), ["icmp", "udp"]);
    for (name, p) in &all {
        assert_eq!(p["status"]["active"], true, "{name}: {p}");
    }

    // get: JSON with an etag, YAML, and the table.
    let got = cli.run(&["policy", "get", "icmp", "-o", "json"]).json();
    assert_eq!(got["policy"]["name"], "icmp");
    assert_eq!(got["policy"]["outputs"][0]["vlan"], 100);
    let etag0 = got["etag"].as_str().unwrap().to_owned();
    assert!(!etag0.is_empty(), "{got}");
    let y = cli.run(&["policy", "get", "icmp", "-o", "yaml"]);
    assert!(
        y.ok().contains(&format!("etag: {etag0}")),
        "{}",
        y.describe()
    );
    let t = cli.run(&["policy", "get", "icmp"]);
    let out = t.ok();
    assert!(
        out.contains("ETag:") && out.contains(&etag0),
        "{}",
        t.describe()
    );
    assert!(
        out.contains("\nPolicy:\n  version: 1\n  name: icmp\n"),
        "{}",
        t.describe()
    );

    // Dry run of a change: reported as a replacement, nothing changes.
    let changed = write_dir(
        &tb,
        "changed",
        &[("icmp.yaml", &policy("icmp", "vm1-tap", "icmp", 101))],
    );
    let r = cli.run(&["policy", "apply", "-f", s(&changed), "--dry-run"]);
    let out = r.ok();
    assert_eq!(
        row(out, "icmp").unwrap()[1],
        "replaced (dry run)",
        "{}",
        r.describe()
    );
    assert!(
        out.contains("dry run: nothing was applied"),
        "{}",
        r.describe()
    );
    let r = cli.run(&[
        "policy",
        "put",
        "-f",
        s(&changed.join("icmp.yaml")),
        "--dry-run",
    ]);
    assert_eq!(
        row(r.ok(), "icmp").unwrap()[1],
        "replaced (dry run)",
        "{}",
        r.describe()
    );
    assert_eq!(etag_of(&cli, "icmp"), etag0, "a dry run changed the policy");
    let now = policies(&cli);
    assert_eq!(now["icmp"]["policy"]["outputs"][0]["vlan"], 100);

    // Delete: dry run first (still there), then for real.
    let r = cli.run(&["policy", "delete", "udp", "--dry-run"]);
    assert_eq!(
        row(r.ok(), "udp").unwrap()[1],
        "deleted (dry run)",
        "{}",
        r.describe()
    );
    assert!(policies(&cli).contains_key("udp"));
    let r = cli.run(&["policy", "delete", "udp"]);
    assert_eq!(
        row(r.ok(), "udp").unwrap()[1],
        "deleted",
        "{}",
        r.describe()
    );
    assert_eq!(policies(&cli).keys().collect::<Vec<_>>(), ["icmp"]);
    let gone = cli.run(&["policy", "get", "udp"]);
    assert!(gone.fails(1).contains("udp"), "{}", gone.describe());
    cli.run(&["policy", "delete", "udp"]).fails(1);

    // The change for real: a new etag.
    let r = cli.run(&["policy", "apply", "-f", s(&changed)]);
    let cells = row(r.ok(), "icmp").unwrap();
    assert_eq!(cells[1], "replaced", "{}", r.describe());
    let etag1 = etag_of(&cli, "icmp");
    assert_ne!(etag1, etag0);
    assert_eq!(cells[2], etag1, "apply reports the new etag");
    let before = policies(&cli);

    // Restart on the same policy directory: the REST changes were persisted.
    let policy_dir = d.policy_dir.clone();
    d.stop().expect("daemon exits 0 on SIGTERM");
    let cli_down = cli.run(&["policy", "list"]);
    cli_down.fails(3);
    let mut restarted = start_daemon_on(&tb, &policy_dir);
    let after = policies(&cli);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["icmp"],
        "policies after restart: {after:?}\ndaemon log:\n{}",
        tail(&restarted.stderr(), 30)
    );
    assert_eq!(after["icmp"]["policy"], before["icmp"]["policy"]);
    assert_eq!(after["icmp"]["etag"], before["icmp"]["etag"]);
    assert_eq!(after["icmp"]["status"]["active"], true, "{}", after["icmp"]);
    let taps = cli.run(&["tap", "list"]);
    let cells = row(taps.ok(), "vm1-tap").unwrap_or_else(|| panic!("{}", taps.describe()));
    assert_eq!(cells[1], "attached", "{}", taps.describe());
    let st = restarted
        .stop_with(libc::SIGTERM, Duration::from_secs(15))
        .unwrap();
    assert!(
        st.success(),
        "restarted daemon: {}",
        cmd::describe_status(&st)
    );
}

/// Errors are readable and exit non-zero: a stale If-Match (409), an invalid
/// policy (every field path), a file that does not parse (file:line, nothing
/// sent), unknown names, an unreachable daemon (exit 3), usage errors (2).
#[test]
fn cli_reports_conflicts_and_invalid_policies() {
    let Some(tb) = testbed("cli_reports_conflicts_and_invalid_policies") else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let cli = Cli::new(&tb);

    let v1 = write_file(&tb, "web.yaml", &policy("web", "vm1-tap", "tcp", 10));
    let r = cli.run(&["policy", "put", "-f", s(&v1)]);
    assert_eq!(
        row(r.ok(), "web").unwrap()[1],
        "created",
        "{}",
        r.describe()
    );
    let etag0 = etag_of(&cli, "web");

    // Someone else changes it over the API.
    let mut body: Value =
        serde_json::from_str(cli.run(&["policy", "get", "web", "-o", "json"]).ok()).unwrap();
    body["policy"]["outputs"][0]["vlan"] = 11.into();
    let changed = body["policy"].to_string();
    let resp = d
        .request("PUT", "/api/v1/policies/web", Some(changed.as_str()))
        .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let etag1 = etag_of(&cli, "web");
    assert_ne!(etag0, etag1);

    // Our update with the old ETag: 409, shown readably, exit 1, no change.
    let v3 = write_file(&tb, "web.yaml", &policy("web", "vm1-tap", "tcp", 12));
    let r = cli.run(&["policy", "put", "-f", s(&v3), "--if-match", &etag0]);
    let err = r.fails(1);
    assert!(err.contains("web"), "{}", r.describe());
    assert!(!err.contains('{'), "raw JSON on stderr\n{}", r.describe());
    assert_eq!(
        etag_of(&cli, "web"),
        etag1,
        "a stale If-Match changed the policy"
    );
    if have("curl") {
        let out = tb
            .exec(
                &tb.host_ns,
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "PUT",
                    "-H",
                    "Content-Type: application/json",
                    "-H",
                    &format!("If-Match: \"{etag0}\""),
                    "--data",
                    &changed,
                    &format!("http://127.0.0.1:{DAEMON_PORT}/api/v1/policies/web"),
                ],
                Duration::from_secs(20),
            )
            .unwrap();
        assert_eq!(out.stdout.trim(), "409", "curl with the stale If-Match");
    }
    let r = cli.run(&["policy", "delete", "web", "--if-match", &etag0]);
    r.fails(1);
    // With the current ETag (quoted or not) it goes through.
    let r = cli.run(&[
        "policy",
        "put",
        "-f",
        s(&v3),
        "--if-match",
        &format!("\"{etag1}\""),
    ]);
    assert_eq!(
        row(r.ok(), "web").unwrap()[1],
        "replaced",
        "{}",
        r.describe()
    );
    let etag2 = etag_of(&cli, "web");

    // An invalid policy: 422 with every field path, nothing applied.
    let bad = write_dir(
        &tb,
        "invalid",
        &[(
            "bad.yaml",
            "version: 1\nname: bad\ntaps: [vm1-tap]\nmatch:\n  src: [10.0.0.300/24]\n  dst_ports: [70000]\noutputs:\n  - interface: mon0\n    vlan: 5000\n",
        )],
    );
    for dry in [false, true] {
        let mut args = vec!["policy", "apply", "-f", s(&bad)];
        if dry {
            args.push("--dry-run");
        }
        let r = cli.run(&args);
        let err = r.fails(1);
        for field in ["match.src[0]", "match.dst_ports[0]", "outputs[0].vlan"] {
            assert!(
                err.contains(field),
                "{field} not reported\n{}",
                r.describe()
            );
        }
        assert!(
            err.lines().skip(1).all(|l| l.starts_with("  ")),
            "details indented\n{}",
            r.describe()
        );
    }
    // The same set with a valid policy: all or nothing.
    std::fs::write(bad.join("ok.yaml"), policy("fine", "vm2-tap", "udp", 30)).unwrap();
    cli.run(&["policy", "apply", "-f", s(&bad)]).fails(1);
    assert_eq!(policies(&cli).keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(etag_of(&cli, "web"), etag2);

    // A file that does not parse: reported locally with file and line.
    let unparsable = write_file(
        &tb,
        "typo.yaml",
        "version: 1\nname: typo\ntaps: [vm1-tap]\nmatch:\n  colour: red\noutputs: [{interface: mon0}]\n",
    );
    let r = cli.run(&["policy", "apply", "-f", s(&unparsable)]);
    let err = r.fails(1);
    assert!(
        err.contains(&format!("{}:5:3: match.colour", unparsable.display())),
        "{}",
        r.describe()
    );
    assert!(err.contains("nothing was sent"), "{}", r.describe());
    // The offline check says the same, without a daemon.
    let r = cli.raw(&["policy", "check", "-f", s(&unparsable)]);
    assert_eq!(r.code, 1, "{}", r.describe());
    assert!(r.stderr.contains("match.colour"), "{}", r.describe());
    let r = cli.raw(&["policy", "check", "-f", s(&v3)]);
    assert!(r.ok().contains("1 policies valid"), "{}", r.describe());

    // Unknown names.
    cli.run(&["policy", "get", "nope"]).fails(1);
    cli.run(&["policy", "delete", "nope"]).fails(1);

    // No daemon there: exit 3, with the URL.
    let r = cli.raw(&["--api", "http://127.0.0.1:1", "policy", "list"]);
    let err = r.fails(3);
    assert!(
        err.contains("cannot reach the vtap daemon at http://127.0.0.1:1"),
        "{}",
        r.describe()
    );

    // Usage errors: exit 2.
    assert_eq!(cli.run(&["policy", "apply"]).code, 2);
    assert_eq!(cli.run(&["-o", "xml", "policy", "list"]).code, 2);
    assert_eq!(cli.raw(&["--api", "127.0.0.1:7470", "stats"]).code, 2);
    assert_eq!(cli.raw(&["daemon", "--token", "x"]).code, 2);

    d.stop().expect("daemon exits 0 on SIGTERM");
}

/// `vtap tap list` shows the VMs' taps attached; attach/detach an
/// interface explicitly; `vtap stats` shows the traffic; with a token file
/// the CLI needs `--token`/`VTAP_TOKEN`.
#[test]
fn cli_taps_stats_and_token() {
    let Some(tb) = testbed("cli_taps_stats_and_token") else {
        return;
    };
    let token_file = tb.path("token", "txt");
    std::fs::write(&token_file, "s3cret-token-for-cli-e2e\n").unwrap();
    let d = tb
        .start_daemon_with(
            &[("icmp.yaml", &policy("icmp", "vm1-tap", "icmp", 100))],
            &["--token-file", s(&token_file)],
        )
        .expect("daemon");
    let anon = Cli::new(&tb);
    let r = anon.run(&["tap", "list"]);
    let err = r.fails(1);
    assert!(
        err.contains("--token"),
        "hint about the token\n{}",
        r.describe()
    );
    let wrong = anon.run(&["--token", "nope", "tap", "list"]);
    wrong.fails(1);
    let cli = Cli::with_env(&tb, "VTAP_TOKEN", "s3cret-token-for-cli-e2e");

    // Policy-selected tap: attached both ways.
    let r = cli.run(&["tap", "list"]);
    let cells = row(r.ok(), "vm1-tap").unwrap_or_else(|| panic!("{}", r.describe()));
    assert_eq!(
        &cells[1..3],
        ["attached", "ingress,egress"],
        "{}",
        r.describe()
    );
    assert_eq!(cells.last().unwrap(), "icmp", "{}", r.describe());

    // Explicit attach of vm2-tap (no policy selects it), one direction.
    let r = anon.run(&[
        "--token",
        "s3cret-token-for-cli-e2e",
        "tap",
        "attach",
        "vm2-tap",
        "--direction",
        "ingress",
    ]);
    let cells = row(r.ok(), "vm2-tap").unwrap_or_else(|| panic!("{}", r.describe()));
    assert_eq!(&cells[1..3], ["attached", "ingress"], "{}", r.describe());
    let taps = cli.run(&["tap", "list", "-o", "json"]).json();
    let vm2 = taps["taps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "vm2-tap")
        .unwrap_or_else(|| panic!("vm2-tap not listed: {taps}"))
        .clone();
    assert_eq!(vm2["explicit"], true, "{vm2}");
    assert_eq!(vm2["attached"], serde_json::json!(["ingress"]), "{vm2}");

    // Traffic, then stats.
    let p = tb.ping(1, 2, 5, false).unwrap();
    assert_eq!(p.received, 5);
    let st = cli.run(&["stats", "-o", "json"]).json();
    let pol = st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "icmp")
        .unwrap_or_else(|| panic!("no icmp in stats: {st}"));
    let matched: u64 = pol["matched"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["packets"].as_u64().unwrap())
        .sum();
    assert!(matched >= 10, "icmp matched {matched}: {st}");
    let r = cli.run(&["stats"]);
    let out = r.ok();
    for section in [
        "TAPS\n",
        "\nPOLICIES\n",
        "\nOUTPUTS\n",
        "Policy-set switches:",
    ] {
        assert!(
            out.contains(section),
            "{section:?} missing\n{}",
            r.describe()
        );
    }
    let cells = row(out, "icmp").unwrap_or_else(|| panic!("{}", r.describe()));
    assert!(cells[1].parse::<u64>().unwrap() >= 10, "{}", r.describe());
    let r = cli.run(&["policy", "list"]);
    let cells = row(r.ok(), "icmp").unwrap();
    assert!(
        cells[4].parse::<u64>().unwrap() >= 10,
        "MATCHED\n{}",
        r.describe()
    );
    assert!(
        cells[5].parse::<u64>().unwrap() >= 10,
        "MIRRORED\n{}",
        r.describe()
    );

    // vm2-tap saw the pings it sent (ingress = from the VM).
    let r = cli.run(&["tap", "list"]);
    let cells = row(r.ok(), "vm2-tap").unwrap();
    assert!(cells[3].parse::<u64>().unwrap() >= 5, "{}", r.describe());

    // Detach the explicit one; detaching what was never attached is 404.
    let r = cli.run(&["tap", "detach", "vm2-tap"]);
    r.ok();
    let taps = cli.run(&["tap", "list", "-o", "json"]).json();
    let still = taps["taps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "vm2-tap" && !t["attached"].as_array().unwrap().is_empty());
    assert!(!still, "vm2-tap still attached: {taps}");
    cli.run(&["tap", "detach", "nosuch0"]).fails(1);

    d.stop().expect("daemon exits 0 on SIGTERM");
}
