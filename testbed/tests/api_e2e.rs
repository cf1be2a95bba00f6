//! End-to-end tests of the REST control plane: the real `vtap daemon`
//! (target/debug/vtap or $VTAP_BIN) in a throwaway testbed's host namespace,
//! driven over HTTP from inside that namespace (or from a VM), with real
//! traffic and a real capture on the monitor.
//!
//! - `no_stale_vlan_while_replacing_the_set_100_times`: 100 policy-set
//!   replacements over REST under continuous traffic; every copy's VLAN must
//!   be one a policy active at that moment could give.
//! - `promtool_accepts_metrics_in_both_formats`: `/metrics` as Prometheus
//!   text and as OpenMetrics, with traffic, through `promtool check metrics`.
//! - `rest_changes_survive_a_restart`: policies and explicit taps applied
//!   over REST come back (same ETags) after SIGTERM + restart.
//! - `listen_security_at_start`: a non-loopback `--listen` needs
//!   `--token-file` (or `--insecure`); with a token, requests without it get
//!   401, also from a VM.
//!
//! Each test builds its own testbed and bounds every wait. Root is needed;
//! without it they print `skipping: needs root`, except under `CI=true`
//! where they fail instead.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test api_e2e -- --test-threads 2 --nocapture`

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vtap_testbed::capture::IPPROTO_UDP;
use vtap_testbed::cmd::{self, BgProcess};
use vtap_testbed::netns::in_netns;
use vtap_testbed::{
    Frame, Metrics, Options, Testbed, UdpFlow, in_ci, parse_frame, require_root, vtap_bin,
};

// ---------------------------------------------------------------- helpers

fn testbed(test: &str, opts: Options) -> Option<Testbed> {
    if !require_root(test) {
        return None;
    }
    Some(Testbed::new(opts).unwrap_or_else(|e| panic!("{test}: cannot build testbed: {e:#}")))
}

/// Wall-clock time in ns since the epoch (CLOCK_REALTIME, the clock pcap
/// timestamps use).
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// An HTTP response with the client-side times of the exchange.
#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Just before the request's first byte was written.
    sent_ns: u64,
    /// Just after the whole response was read.
    recv_ns: u64,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request (`Connection: close`) with extra headers, from a
/// thread inside network namespace `ns`; times are taken inside that thread
/// around the exchange itself.
fn http(
    ns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Resp> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some(b) => {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                req.push_str("Content-Type: application/json\r\n");
            }
            req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        }
        None => req.push_str("\r\n"),
    }
    let what = format!("{method} http://{addr}{path} in {ns}");
    let (raw, sent_ns, recv_ns) = in_netns(ns, move || -> Result<(Vec<u8>, u64, u64)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.set_write_timeout(Some(Duration::from_secs(15)))?;
        s.set_nodelay(true)?;
        let t0 = now_ns();
        s.write_all(req.as_bytes())?;
        let mut v = Vec::new();
        s.read_to_end(&mut v)?;
        Ok((v, t0, now_ns()))
    })
    .with_context(|| what.clone())?;
    let r = vtap_testbed::daemon::parse_http_response(&raw, &what)?;
    Ok(Resp {
        status: r.status,
        headers: r.headers,
        body: r.body,
        sent_ns,
        recv_ns,
    })
}

/// A `vtap daemon` started by this file (the library's `start_daemon` makes
/// a fresh policy and state directory each time; these tests need to choose
/// them, the listen address and the flags).
struct Vtapd<'a> {
    tb: &'a Testbed,
    proc: BgProcess<'a>,
    /// Where to reach it from the host namespace.
    addr: SocketAddr,
}

impl<'a> Vtapd<'a> {
    fn command(
        tb: &Testbed,
        policies: &Path,
        state: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Command {
        let mut c = cmd::ns_command(&tb.host_ns, vtap_bin());
        c.arg("daemon")
            .arg("--policies")
            .arg(policies)
            .arg("--state-dir")
            .arg(state)
            .arg("--listen")
            .arg(listen)
            .args(extra);
        let level = std::env::var("VTAP_TEST_LOG").unwrap_or_else(|_| "info".into());
        c.env("VTAP_LOG", level).env("RUST_BACKTRACE", "1");
        c
    }

    /// Starts the daemon and waits (bounded) until `/readyz` is 200.
    fn start(
        tb: &'a Testbed,
        policies: &Path,
        state: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Result<Vtapd<'a>> {
        if !vtap_bin().exists() {
            bail!(
                "vtap binary not found at {} (cargo build -p vtap, or set VTAP_BIN)",
                vtap_bin().display()
            );
        }
        let port: u16 = listen.rsplit(':').next().unwrap_or("").parse()?;
        let c = Self::command(tb, policies, state, listen, extra);
        let proc = tb.spawn_command(c, "vtapd")?;
        let mut d = Vtapd {
            tb,
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = d.proc.try_wait()? {
                bail!(
                    "vtap daemon exited ({}) before it was ready; log:\n{}",
                    cmd::describe_status(&st),
                    d.log()
                );
            }
            match d.req("GET", "/readyz", &[], None) {
                Ok(r) if r.status == 200 => return Ok(d),
                _ if Instant::now() > deadline => {
                    bail!("vtap daemon not ready within 30 s; log:\n{}", d.log())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Resp> {
        http(&self.tb.host_ns, self.addr, method, path, headers, body)
    }

    fn log(&self) -> String {
        format!("{}{}", self.proc.stdout(), self.proc.stderr())
    }

    /// SIGTERM; requires exit 0 within 15 s.
    fn stop(mut self) -> Result<()> {
        let st = self
            .proc
            .stop_with(libc::SIGTERM, Duration::from_secs(15))?;
        if !st.success() {
            bail!(
                "vtap daemon exited with {} after SIGTERM; log:\n{}",
                cmd::describe_status(&st),
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for Vtapd<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- vtap daemon log ----\n{}\n----", self.log());
        }
        let _ = self.proc.stop_with(libc::SIGTERM, Duration::from_secs(10));
    }
}

/// A policy object (the JSON form of a policy file) on `taps`.
fn policy_json(
    name: &str,
    taps: &[&str],
    direction: &str,
    vlan: Option<u16>,
    proto: Option<&str>,
) -> Value {
    let mut out = json!({"interface": "mon0"});
    if let Some(v) = vlan {
        out["vlan"] = json!(v);
    }
    let mut p = json!({
        "version": 1,
        "name": name,
        "priority": 100,
        "enabled": true,
        "taps": taps,
        "direction": direction,
        "outputs": [out],
    });
    if let Some(pr) = proto {
        p["match"] = json!({"protocol": pr});
    }
    p
}

/// Frames of a pcap file with their capture times (ns since the epoch).
fn read_pcap_timed(path: &Path) -> Result<Vec<(u64, Frame)>> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut r = pcap_file::pcap::PcapReader::new(f)?;
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p?;
        v.push((
            p.timestamp.as_nanos() as u64,
            parse_frame(&p.data, p.orig_len as usize),
        ));
    }
    Ok(v)
}

fn which(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ------------------------------------------------ 1. no stale VLAN, 100 changes

/// One change of the policy set, as the client saw it.
#[derive(Debug, Clone)]
struct Change {
    what: String,
    sent_ns: u64,
    recv_ns: u64,
    /// VLAN of policy `p` before and after (None: no policy).
    before: Option<u16>,
    after: Option<u16>,
}

/// While a client replaces the policy set 100 times over REST (single PUT,
/// batch PUT, DELETE + re-create), cycling the VLAN of the only mirroring
/// policy through 100..=103, continuous UDP traffic crosses `vm1-tap`. Every
/// copy on the monitor must carry a VLAN that a policy active at the copy's
/// capture time could give: during a request both the old and the new VLAN
/// are legitimate, after its response only the new one, while the policy is
/// deleted none. VLANs never configured: zero copies.
#[test]
fn no_stale_vlan_while_replacing_the_set_100_times() {
    const CHANGES: usize = 100;
    const VLANS: [u16; 4] = [100, 101, 102, 103];
    /// Slack allowed between an interval's edges (request sent, response
    /// received, both taken by the client) and a copy's capture timestamp
    /// (taken by the kernel when the copy reaches the monitor's socket, or
    /// carried from when the original was queued).
    const SLACK_NS: u64 = 5_000_000;
    const TEST: &str = "no_stale_vlan_while_replacing_the_set_100_times";
    let started = Instant::now();
    let Some(tb) = testbed(TEST, Options::default().vms(2)) else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let ns = tb.host_ns.clone();
    let addr = d.addr;
    let cap = tb.capture_monitor(0).expect("capture");
    let flow = UdpFlow::start(
        &tb,
        1,
        2,
        7001,
        Duration::from_millis(1),
        Duration::from_secs(90),
    )
    .expect("udp flow");
    std::thread::sleep(Duration::from_millis(100));

    let mut changes: Vec<Change> = Vec::with_capacity(CHANGES);
    let mut current: Option<u16> = None;
    let mut first_etag = None;
    for i in 0..CHANGES {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{TEST}: took too long ({} changes done)",
            changes.len()
        );
        let vlan = VLANS[i % VLANS.len()];
        let (what, after, r) = if i % 10 == 9 {
            let r = http(&ns, addr, "DELETE", "/api/v1/policies/p", &[], None).unwrap();
            assert_eq!(
                r.status, 200,
                "change {i}: DELETE p: {} {}",
                r.status, r.body
            );
            assert_eq!(r.json()["deleted"], json!(["p"]), "change {i}: {}", r.body);
            ("DELETE /api/v1/policies/p".to_string(), None, r)
        } else {
            let p = policy_json("p", &["vm1-tap"], "both", Some(vlan), None);
            let (what, r) = if i % 5 == 2 {
                let body = json!({"policies": [p]}).to_string();
                let r = http(&ns, addr, "PUT", "/api/v1/policies", &[], Some(&body)).unwrap();
                assert_eq!(
                    r.status, 200,
                    "change {i}: batch PUT: {} {}",
                    r.status, r.body
                );
                (format!("PUT /api/v1/policies (batch) vlan {vlan}"), r)
            } else {
                let body = p.to_string();
                let r = http(&ns, addr, "PUT", "/api/v1/policies/p", &[], Some(&body)).unwrap();
                let want = if current.is_none() { 201 } else { 200 };
                assert_eq!(r.status, want, "change {i}: PUT p: {} {}", r.status, r.body);
                (format!("PUT /api/v1/policies/p vlan {vlan}"), r)
            };
            let j = r.json();
            let key = if current.is_none() {
                "created"
            } else {
                "replaced"
            };
            assert_eq!(j[key], json!(["p"]), "change {i}: {what}: {}", r.body);
            if first_etag.is_none() {
                first_etag = j["etags"]["p"].as_str().map(String::from);
            }
            (what, Some(vlan), r)
        };
        changes.push(Change {
            what,
            sent_ns: r.sent_ns,
            recv_ns: r.recv_ns,
            before: current,
            after,
        });
        current = after;
        // Let some traffic through in every state (a few ms, varied).
        std::thread::sleep(Duration::from_millis(5 + (i as u64 * 7) % 20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let end_ns = now_ns();
    let (sent, received) = flow.stop().expect("udp flow");
    let got = cap.stop().expect("capture");
    let frames = read_pcap_timed(&got.path).expect("pcap");
    let m = d.metrics().expect("metrics");
    d.stop().expect("daemon exits 0 on SIGTERM");

    // Intervals of legitimacy: during a request both VLANs, between a
    // response and the next request only the new one.
    let mut intervals: Vec<(u64, u64, BTreeSet<u16>)> = Vec::new();
    for (k, c) in changes.iter().enumerate() {
        let during: BTreeSet<u16> = c.before.iter().chain(c.after.iter()).copied().collect();
        intervals.push((c.sent_ns, c.recv_ns, during));
        let until = changes.get(k + 1).map_or(end_ns, |n| n.sent_ns);
        intervals.push((c.recv_ns, until, c.after.iter().copied().collect()));
    }
    let first_ns = changes[0].sent_ns;
    // Distance of `t` from [a, b] (0 inside).
    let dist = |t: u64, a: u64, b: u64| -> u64 { a.saturating_sub(t) + t.saturating_sub(b) };

    let mut per_vid: BTreeMap<Option<u16>, u64> = BTreeMap::new();
    let mut unexpected_traffic = Vec::new();
    let mut never_configured = Vec::new();
    let mut stale = Vec::new();
    let mut max_excess = 0u64;
    let mut in_transition = 0u64;
    let src = tb.addr(1, false);
    let dst = tb.addr(2, false);
    for (t, f) in &frames {
        *per_vid.entry(f.vid()).or_insert(0) += 1;
        let ours = f.proto() == Some(IPPROTO_UDP)
            && f.is_between(src, dst)
            && f.ip.as_ref().and_then(|i| i.dport) == Some(7001);
        if !ours {
            unexpected_traffic.push(format!("{t}: {f}"));
        }
        let Some(v) = f.vid().filter(|v| VLANS.contains(v) && f.vids.len() == 1) else {
            never_configured.push(format!("{t}: {f}"));
            continue;
        };
        // Distance from the nearest interval in which `v` was legitimate.
        let excess = intervals
            .iter()
            .filter(|(_, _, set)| set.contains(&v))
            .map(|(a, b, _)| dist(*t, *a, *b))
            .min()
            .unwrap_or(u64::MAX);
        if intervals
            .iter()
            .any(|(a, b, set)| set.len() == 2 && set.contains(&v) && dist(*t, *a, *b) == 0)
        {
            in_transition += 1;
        }
        max_excess = max_excess.max(excess);
        if excess > SLACK_NS {
            // Where was it? The change around that time.
            let k = changes.partition_point(|c| c.sent_ns <= *t);
            let around: Vec<String> = changes[k.saturating_sub(2)..(k + 1).min(changes.len())]
                .iter()
                .map(|c| {
                    format!(
                        "[{:+.3} ms .. {:+.3} ms] {} ({:?} -> {:?})",
                        (c.sent_ns as f64 - *t as f64) / 1e6,
                        (c.recv_ns as f64 - *t as f64) / 1e6,
                        c.what,
                        c.before,
                        c.after
                    )
                })
                .collect();
            stale.push(format!(
                "vid {v} at {:.6}s after the first change, {:.3} ms outside every interval where it was legitimate; changes around (times relative to the copy): {}",
                (*t as f64 - first_ns as f64) / 1e9,
                excess as f64 / 1e6,
                around.join("; ")
            ));
        }
    }

    let mut rtts: Vec<f64> = changes
        .iter()
        .map(|c| (c.recv_ns - c.sent_ns) as f64 / 1e6)
        .collect();
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let report = format!(
        "{TEST}: {} changes in {:.2} s ({} single PUTs, {} batch PUTs, {} DELETEs); \
         REST round trip median {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         UDP sent {sent}, received {received}; {} copies on the monitor, per VLAN {:?}; \
         {in_transition} copies inside a request's window (old or new VLAN legitimate); \
         slack {} ms, largest distance of a copy from a legitimate interval {:.3} ms; \
         never-configured VIDs or untagged: {}; stale: {}; other traffic: {}",
        changes.len(),
        (changes.last().unwrap().recv_ns - first_ns) as f64 / 1e9,
        changes
            .iter()
            .filter(|c| c.what.starts_with("PUT /api/v1/policies/p"))
            .count(),
        changes.iter().filter(|c| c.what.contains("batch")).count(),
        changes
            .iter()
            .filter(|c| c.what.starts_with("DELETE"))
            .count(),
        percentile(&rtts, 50.0),
        percentile(&rtts, 99.0),
        rtts.last().copied().unwrap_or(0.0),
        frames.len(),
        per_vid
            .iter()
            .map(|(k, v)| (k.map_or("untagged".to_string(), |k| k.to_string()), *v))
            .collect::<Vec<_>>(),
        SLACK_NS as f64 / 1e6,
        max_excess as f64 / 1e6,
        never_configured.len(),
        stale.len(),
        unexpected_traffic.len(),
    );
    eprintln!("{report}");

    assert!(
        never_configured.is_empty(),
        "{report}\ncopies with a VID never configured (or untagged/double-tagged):\n{}",
        never_configured
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        stale.is_empty(),
        "{report}\nstale copies ({}):\n{}",
        stale.len(),
        stale
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        unexpected_traffic.is_empty(),
        "{report}\nframes that are not copies of the test's UDP flow:\n{}",
        unexpected_traffic
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for v in VLANS {
        assert!(
            per_vid.get(&Some(v)).copied().unwrap_or(0) > 0,
            "{report}\nno copy with VLAN {v}: the test did not exercise it"
        );
    }
    assert!(
        frames.len() as u64 > sent / 2,
        "{report}\nfar fewer copies than datagrams: was traffic mirrored at all?"
    );
    assert_eq!(
        received, sent,
        "{report}\nthe VMs' own traffic lost datagrams"
    );
    assert!(first_etag.is_some());
    let flips = m
        .get("vtap_policy_generation_flips_total", &[])
        .unwrap()
        .unwrap_or(0.0);
    assert!(
        flips >= CHANGES as f64,
        "{report}\n{CHANGES} changes but only {flips} generation flips"
    );
}

// ------------------------------------------------------------- 2. promtool

/// Structural checks of an OpenMetrics 1.0 text exposition (a subset of the
/// spec: EOF, metadata before samples, one block per family, sample names of
/// their family's type). Returns the problems found.
fn openmetrics_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !text.ends_with("# EOF\n") && !text.ends_with("# EOF") {
        problems.push("does not end with `# EOF`".into());
    }
    let mut seen_families: BTreeSet<String> = BTreeSet::new();
    let mut family: Option<(String, String)> = None; // (name, type)
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if *line == "# EOF" {
            if n + 1 != lines.len() {
                problems.push(format!("{at}: `# EOF` is not the last line"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let kind = it.next().unwrap_or("");
            let name = it.next().unwrap_or("").to_string();
            let arg = it.next().unwrap_or("");
            if family.as_ref().map(|f| &f.0) != Some(&name) {
                if !seen_families.insert(name.clone()) {
                    problems.push(format!(
                        "{at}: family {name} appears twice (not contiguous)"
                    ));
                }
                family = Some((name.clone(), "unknown".into()));
            }
            match kind {
                "TYPE" => {
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "stateset",
                        "info",
                        "summary",
                        "unknown",
                    ]
                    .contains(&arg)
                    {
                        problems.push(format!("{at}: unknown type {arg:?}"));
                    }
                    if arg == "counter" && name.ends_with("_total") {
                        problems.push(format!("{at}: counter family name ends in _total"));
                    }
                    family = Some((name, arg.to_string()));
                }
                "HELP" => {
                    if !helps.insert(name.clone()) {
                        problems.push(format!("{at}: second HELP for {name}"));
                    }
                }
                "UNIT" => {}
                _ => problems.push(format!("{at}: unknown metadata {kind:?}")),
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            problems.push(format!("{at}: not allowed in OpenMetrics"));
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let Some((fam, ty)) = &family else {
            problems.push(format!("{at}: sample before any metadata"));
            continue;
        };
        let ok = match ty.as_str() {
            "counter" => name == format!("{fam}_total") || name == format!("{fam}_created"),
            _ => name == fam,
        };
        if !ok {
            problems.push(format!(
                "{at}: sample {name} does not belong to family {fam} ({ty})"
            ));
        }
    }
    if let Err(e) = Metrics::parse(text) {
        problems.push(format!("samples do not parse: {e:#}"));
    }
    problems
}

/// `promtool check metrics` accepts `/metrics` while policies with traffic
/// exist: as Prometheus text (no problem at all), and as OpenMetrics
/// (`Accept: application/openmetrics-text; version=1.0.0`). promtool
/// 2.42's `check metrics` reads only the Prometheus text format: on
/// OpenMetrics it sees a `# TYPE X counter` family and `X_total` samples as
/// two metrics and says "X_total no help text". Exactly those complaints
/// (for counter families that do have HELP) are tolerated; any other, or a
/// parse error, fails. The OpenMetrics body is also checked structurally
/// here and its samples must equal the text format's.
#[test]
fn promtool_accepts_metrics_in_both_formats() {
    const TEST: &str = "promtool_accepts_metrics_in_both_formats";
    let Some(tb) = testbed(TEST, Options::default().vms(2)) else {
        return;
    };
    if !which("promtool") {
        assert!(
            !in_ci(),
            "{TEST}: promtool missing in CI (scripts/install-deps.sh installs it)"
        );
        eprintln!("{TEST}: skipping: promtool not installed");
        return;
    }
    let d = tb.start_daemon(&[]).expect("daemon");
    let ns = tb.host_ns.clone();
    for (name, body) in [
        (
            "icmp",
            policy_json("icmp", &["vm1-tap"], "both", Some(100), Some("icmp")),
        ),
        (
            "udp",
            policy_json("udp", &["vm*-tap"], "ingress", Some(200), Some("udp")),
        ),
        (
            "all2",
            policy_json("all2", &["vm2-tap"], "egress", None, None),
        ),
    ] {
        let r = http(
            &ns,
            d.addr,
            "PUT",
            &format!("/api/v1/policies/{name}"),
            &[],
            Some(&body.to_string()),
        )
        .unwrap();
        assert_eq!(r.status, 201, "PUT {name}: {}", r.body);
    }
    // A library probe too: its maps are exported in /metrics as well.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf/probes");
    let mut spec: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("traffic_by_dst.yaml")).unwrap())
            .unwrap();
    spec.as_object_mut().unwrap().remove("source_file");
    spec["source"] =
        serde_json::json!(std::fs::read_to_string(dir.join("traffic_by_dst.c")).unwrap());
    let r = http(
        &ns,
        d.addr,
        "PUT",
        "/api/v1/probes/traffic-by-dst",
        &[],
        Some(&spec.to_string()),
    )
    .unwrap();
    assert_eq!(r.status, 201, "PUT probe: {}", r.body);
    let p = tb.ping(1, 2, 20, false).unwrap();
    assert_eq!(p.received, 20);
    let flow = UdpFlow::start(
        &tb,
        2,
        1,
        7002,
        Duration::from_millis(2),
        Duration::from_secs(10),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (sent, _) = flow.stop().unwrap();
    assert!(sent > 0);
    std::thread::sleep(Duration::from_millis(100));

    let promtool = |text: &str| -> (i32, String) {
        let out = cmd::run_with_stdin(
            Command::new("promtool").args(["check", "metrics"]),
            Some(text.as_bytes()),
            Duration::from_secs(30),
        )
        .expect("promtool runs");
        (
            out.status.code().unwrap_or(-1),
            format!("{}{}", out.stdout, out.stderr),
        )
    };

    // Prometheus text format 0.0.4.
    let r = http(&ns, d.addr, "GET", "/metrics", &[], None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let ct = r.header("content-type").unwrap_or("").to_string();
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content-type {ct:?}"
    );
    let text = r.body.clone();
    let m = Metrics::parse(&text).unwrap();
    assert!(
        m.sum(
            "vtap_probe_dst_packets_total",
            &[("probe", "traffic-by-dst")]
        ) >= 20.0,
        "{}",
        m.dump("vtap_probe")
    );
    for (policy, output) in [("icmp", "mon0.100"), ("udp", "mon0.200"), ("all2", "mon0")] {
        let v = m.sum(
            "vtap_policy_mirrored_packets_total",
            &[("policy", policy), ("output", output)],
        );
        assert!(
            v > 0.0,
            "no traffic mirrored by {policy} to {output}:\n{}",
            m.dump("vtap_policy")
        );
    }
    let (rc, out) = promtool(&text);
    eprintln!(
        "{TEST}: text format ({} bytes, {} samples): promtool exit {rc} {out:?}",
        text.len(),
        m.samples.len()
    );
    assert!(
        rc == 0 && out.trim().is_empty(),
        "promtool check metrics rejects the text format (exit {rc}):\n{out}\n--- exposition ---\n{text}"
    );

    // OpenMetrics 1.0.
    let r = http(
        &ns,
        d.addr,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let ct = r.header("content-type").unwrap_or("").to_string();
    assert!(
        ct.starts_with("application/openmetrics-text") && ct.contains("version=1.0.0"),
        "content-type {ct:?}"
    );
    let om = r.body.clone();
    let problems = openmetrics_problems(&om);
    assert!(
        problems.is_empty(),
        "OpenMetrics exposition is malformed:\n{}\n--- exposition ---\n{om}",
        problems.join("\n")
    );
    // Same samples, same values (the traffic has stopped).
    let om_map = Metrics::parse(&om).unwrap().to_map();
    let text_map = Metrics::parse(&r_text_again(&ns, d.addr)).unwrap().to_map();
    assert_eq!(
        om_map.keys().collect::<Vec<_>>(),
        text_map.keys().collect::<Vec<_>>(),
        "the two formats expose different samples"
    );
    for (k, v) in &text_map {
        assert_eq!(
            om_map.get(k),
            Some(v),
            "{k}: text {v}, OpenMetrics {:?}",
            om_map.get(k)
        );
    }
    let counters_with_help: BTreeSet<String> = {
        let helps: BTreeSet<&str> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        om.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .filter(|(n, t)| *t == "counter" && helps.contains(n))
            .map(|(n, _)| n.to_string())
            .collect()
    };
    let (rc, out) = promtool(&om);
    let mut tolerated = 0;
    let mut other = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        match line
            .strip_suffix(" no help text")
            .and_then(|n| n.strip_suffix("_total"))
        {
            Some(fam) if counters_with_help.contains(fam) => tolerated += 1,
            _ => other.push(line.to_string()),
        }
    }
    eprintln!(
        "{TEST}: OpenMetrics ({} bytes): promtool exit {rc}; {tolerated} tolerated \"X_total no help text\" \
         lines (promtool 2.42 parses only the 0.0.4 text format), other problems: {other:?}",
        om.len()
    );
    assert!(
        other.is_empty() && (rc == 0 || rc == 3),
        "promtool check metrics rejects the OpenMetrics exposition (exit {rc}):\n{}\n--- exposition ---\n{om}",
        other.join("\n")
    );
    d.stop().expect("daemon exits 0 on SIGTERM");
}

fn r_text_again(ns: &str, addr: SocketAddr) -> String {
    let r = http(ns, addr, "GET", "/metrics", &[], None).unwrap();
    assert_eq!(r.status, 200);
    r.body
}

// ------------------------------------------------ 3. restart durability

/// Policies and explicitly attached taps applied over REST only (the test
/// writes no policy file) are all there again after SIGTERM and a restart
/// on the same `--policies` and `--state-dir`: same names, same ETags, same
/// content; deleted ones stay deleted; the explicit taps with their
/// directions (also one whose interface does not exist); and mirroring
/// works again.
#[test]
fn rest_changes_survive_a_restart() {
    const TEST: &str = "rest_changes_survive_a_restart";
    let Some(tb) = testbed(TEST, Options::default().vms(2)) else {
        return;
    };
    let pol_dir = tb.workdir.join("rest-policies");
    let state_dir = tb.workdir.join("rest-state");
    std::fs::create_dir_all(&pol_dir).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let listen = "127.0.0.1:7471";

    let d = Vtapd::start(&tb, &pol_dir, &state_dir, listen, &[]).expect("daemon");
    let put = |d: &Vtapd, path: &str, body: &Value, want: u16| {
        let r = d.req("PUT", path, &[], Some(&body.to_string())).unwrap();
        assert_eq!(r.status, want, "PUT {path}: {}", r.body);
        r.json()
    };
    // A batch, single PUTs, a replacement, a deletion.
    put(
        &d,
        "/api/v1/policies",
        &json!({"policies": [
            policy_json("icmp", &["vm1-tap"], "both", Some(100), Some("icmp")),
            policy_json("udp-in", &["vm*-tap"], "ingress", Some(200), Some("udp")),
            policy_json("gone", &["vm2-tap"], "both", Some(300), None),
        ]}),
        200,
    );
    let mut egress = policy_json("egress2", &["vm2-tap"], "egress", None, Some("tcp"));
    put(&d, "/api/v1/policies/egress2", &egress, 201);
    egress["outputs"][0]["vlan"] = json!(400);
    egress["priority"] = json!(7);
    let j = put(&d, "/api/v1/policies/egress2", &egress, 200);
    assert_eq!(j["replaced"], json!(["egress2"]));
    let mut off = policy_json("off", &["vm1-tap"], "both", Some(500), None);
    off["enabled"] = json!(false);
    put(&d, "/api/v1/policies/off", &off, 201);
    let r = d.req("DELETE", "/api/v1/policies/gone", &[], None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // Explicit taps: an interface no policy selects with one direction (so
    // `directions` shows the explicit ones), one that does not exist (yet),
    // and one that policies select too, with the default (both).
    put(
        &d,
        "/api/v1/taps/br0",
        &json!({"directions": ["egress"]}),
        201,
    );
    put(
        &d,
        "/api/v1/taps/vm9-tap",
        &json!({"directions": ["ingress"]}),
        201,
    );
    let r = d.req("PUT", "/api/v1/taps/vm2-tap", &[], None).unwrap();
    assert_eq!(
        r.status, 201,
        "PUT /api/v1/taps/vm2-tap (no body): {}",
        r.body
    );

    let snapshot = |d: &Vtapd| -> (BTreeMap<String, (String, Value)>, BTreeMap<String, Value>) {
        let r = d.req("GET", "/api/v1/policies", &[], None).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let mut pols = BTreeMap::new();
        for p in r.json()["policies"].as_array().unwrap() {
            let name = p["policy"]["name"].as_str().unwrap().to_string();
            // The ETag header of GET /policies/{name} must agree.
            let one = d
                .req("GET", &format!("/api/v1/policies/{name}"), &[], None)
                .unwrap();
            assert_eq!(one.status, 200, "{}", one.body);
            let etag = p["etag"].as_str().unwrap().to_string();
            assert_eq!(
                one.header("etag"),
                Some(format!("\"{etag}\"").as_str()),
                "{name}"
            );
            pols.insert(name, (etag, p["policy"].clone()));
        }
        let r = d.req("GET", "/api/v1/taps", &[], None).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let taps = r.json()["taps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["explicit"] == json!(true))
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    json!({"directions": t["directions"], "state": t["state"], "attached": t["attached"]}),
                )
            })
            .collect();
        (pols, taps)
    };
    let (pols_before, taps_before) = snapshot(&d);
    assert_eq!(
        pols_before.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["egress2", "icmp", "off", "udp-in"]
    );
    assert_eq!(
        taps_before.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["br0", "vm2-tap", "vm9-tap"]
    );
    assert_eq!(
        taps_before["br0"],
        json!({"directions": ["egress"], "attached": ["egress"], "state": "attached"})
    );
    assert_eq!(
        taps_before["vm9-tap"],
        json!({"directions": ["ingress"], "attached": [], "state": "missing"})
    );
    assert_eq!(taps_before["vm2-tap"]["state"], json!("attached"));
    d.stop().expect("daemon exits 0 on SIGTERM");

    let files: Vec<String> = std::fs::read_dir(&pol_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "{TEST}: after SIGTERM: policy dir {files:?}, state dir {:?}",
        std::fs::read_dir(&state_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    );

    let d = Vtapd::start(&tb, &pol_dir, &state_dir, listen, &[]).expect("daemon restarts");
    let (pols_after, taps_after) = snapshot(&d);
    for (name, (etag, p)) in &pols_before {
        let Some((etag2, p2)) = pols_after.get(name) else {
            panic!(
                "policy {name} is gone after the restart; now: {:?}",
                pols_after.keys()
            );
        };
        assert_eq!(
            etag2, etag,
            "{name}: ETag changed across the restart: {p} vs {p2}"
        );
        assert_eq!(p2, p, "{name}: content changed across the restart");
    }
    assert_eq!(
        pols_after.keys().collect::<Vec<_>>(),
        pols_before.keys().collect::<Vec<_>>(),
        "a deleted policy came back, or one appeared"
    );
    assert_eq!(
        taps_after, taps_before,
        "explicit taps differ after the restart"
    );
    eprintln!(
        "{TEST}: after restart: policies {:?}, explicit taps {}",
        pols_after
            .iter()
            .map(|(k, (e, _))| format!("{k}={e}"))
            .collect::<Vec<_>>(),
        serde_json::to_string(&taps_after).unwrap()
    );

    // And the restored set mirrors: ICMP from vm1 with VLAN 100.
    let cap = tb.capture_monitor(0).unwrap();
    let p = tb.ping(1, 2, 5, false).unwrap();
    assert_eq!(p.received, 5);
    let got = cap.stop().unwrap();
    assert_eq!(
        got.with_vid(100).len(),
        10,
        "after the restart the icmp policy does not mirror 5 requests + 5 replies:\n{}",
        got.dump()
    );
    d.stop().expect("daemon exits 0 on SIGTERM");
}

// -------------------------------------------------------- 4. security at start

/// Gives the host namespace an address on the VMs' bridge (10.0.0.254) with
/// permanent neighbour entries both ways (the VMs are NOARP), so a VM can
/// reach a daemon listening on 0.0.0.0.
fn host_on_bridge(tb: &Testbed) -> Result<SocketAddr> {
    let h = tb.host_ns.as_str();
    cmd::ip(Some(h), &["addr", "add", "10.0.0.254/24", "dev", "br0"])?;
    let mac = cmd::ns_run_ok(h, "cat", &["/sys/class/net/br0/address"], cmd::SHORT)?
        .stdout
        .trim()
        .to_string();
    let vm = tb.vm(1);
    cmd::ip(
        Some(h),
        &[
            "neigh",
            "replace",
            &vm.ipv4.to_string(),
            "lladdr",
            &vm.mac,
            "dev",
            "br0",
            "nud",
            "permanent",
        ],
    )?;
    cmd::ip(
        Some(&vm.ns),
        &[
            "neigh",
            "replace",
            "10.0.0.254",
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    Ok(SocketAddr::from(([10, 0, 0, 254], 0)))
}

/// `--listen 0.0.0.0:PORT` without `--token-file` is refused at start (exit
/// non-zero, a message naming the flags, nothing listening); `--insecure`
/// allows it; with `--token-file` every request without the right token
/// gets 401 (from the host's loopback and from a VM), `/healthz` and
/// `/readyz` stay open, and a PUT without the token changes nothing.
#[test]
fn listen_security_at_start() {
    const TEST: &str = "listen_security_at_start";
    let Some(tb) = testbed(TEST, Options::default().vms(2)) else {
        return;
    };
    let bridge = host_on_bridge(&tb).expect("host address on br0");
    let pol_dir = tb.workdir.join("sec-policies");
    let state_dir = tb.workdir.join("sec-state");
    std::fs::create_dir_all(&pol_dir).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let vm1 = tb.vm(1).ns.clone();
    let from_vm =
        |port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>| {
            http(
                &vm1,
                SocketAddr::new(bridge.ip(), port),
                method,
                path,
                headers,
                body,
            )
        };

    // 1. Refused without a token.
    let mut c = Vtapd::command(&tb, &pol_dir, &state_dir, "0.0.0.0:7472", &[]);
    let out = cmd::run(&mut c, Duration::from_secs(20)).expect("daemon runs");
    let msg = format!("{}{}", out.stdout, out.stderr);
    eprintln!(
        "{TEST}: --listen 0.0.0.0:7472 without a token: {} {:?}",
        cmd::describe_status(&out.status),
        msg.trim()
    );
    assert!(
        !out.status.success(),
        "the daemon accepted 0.0.0.0 without a token: {msg}"
    );
    assert!(
        msg.contains("--token-file") && msg.contains("--insecure") && msg.contains("0.0.0.0:7472"),
        "the refusal does not say what to do: {msg:?}"
    );
    assert!(
        from_vm(7472, "GET", "/healthz", &[], None).is_err(),
        "something listens on 7472 after the refusal"
    );
    // A token that is too short is refused too.
    let short = tb.workdir.join("short-token");
    std::fs::write(&short, "abc\n").unwrap();
    let mut c = Vtapd::command(
        &tb,
        &pol_dir,
        &state_dir,
        "0.0.0.0:7472",
        &["--token-file", short.to_str().unwrap()],
    );
    let out = cmd::run(&mut c, Duration::from_secs(20)).expect("daemon runs");
    eprintln!(
        "{TEST}: 3-character token: {} {:?}",
        cmd::describe_status(&out.status),
        out.stderr.trim()
    );
    assert!(!out.status.success(), "a 3-character token was accepted");

    // 2. --insecure: accepted, reachable from a VM without a token.
    let d = Vtapd::start(&tb, &pol_dir, &state_dir, "0.0.0.0:7473", &["--insecure"])
        .expect("--insecure starts");
    let r = from_vm(7473, "GET", "/api/v1/policies", &[], None).unwrap();
    assert_eq!(r.status, 200, "--insecure: GET from a VM: {}", r.body);
    d.stop().expect("daemon exits 0 on SIGTERM");

    // 3. With a token.
    let token = "vtap-e2e-token-0123456789abcdef";
    let token_file = tb.workdir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let d = Vtapd::start(
        &tb,
        &pol_dir,
        &state_dir,
        "0.0.0.0:7474",
        &["--token-file", token_file.to_str().unwrap()],
    )
    .expect("daemon with a token starts");
    let good = format!("Bearer {token}");
    let bad = format!("Bearer {token}x");
    let body = policy_json("p", &["vm1-tap"], "both", Some(100), None).to_string();
    let requests: Vec<(&str, &str, Option<&str>)> = vec![
        ("GET", "/api/v1/policies", None),
        ("GET", "/api/v1/policies/p", None),
        ("PUT", "/api/v1/policies/p", Some(body.as_str())),
        ("PUT", "/api/v1/policies", Some(r#"{"policies":[]}"#)),
        ("DELETE", "/api/v1/policies/p", None),
        ("GET", "/api/v1/taps", None),
        ("PUT", "/api/v1/taps/vm1-tap", None),
        ("DELETE", "/api/v1/taps/vm1-tap", None),
        ("GET", "/api/v1/stats", None),
        ("GET", "/api/v1/openapi.json", None),
        ("GET", "/metrics", None),
        ("GET", "/api/v1/no-such-path", None),
    ];
    let mut seen = Vec::new();
    for (via_vm, port) in [(false, 7474u16), (true, 7474)] {
        for auth in [
            None,
            Some(bad.as_str()),
            Some("Basic dnRhcDp2dGFw"),
            Some(token),
        ] {
            for (method, path, b) in &requests {
                let h: Vec<(&str, &str)> =
                    auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
                let r = if via_vm {
                    from_vm(port, method, path, &h, *b)
                } else {
                    d.req(method, path, &h, *b)
                }
                .unwrap();
                assert_eq!(
                    r.status,
                    401,
                    "{} {method} {path} with Authorization {auth:?}: {} {}",
                    if via_vm { "from vm1" } else { "from the host" },
                    r.status,
                    r.body
                );
                assert_eq!(
                    r.header("www-authenticate"),
                    Some("Bearer"),
                    "{method} {path}"
                );
                assert!(r.json()["error"].is_string(), "{method} {path}: {}", r.body);
                seen.push(());
            }
        }
    }
    // Health stays open; the rejected PUT changed nothing.
    for path in ["/healthz", "/readyz"] {
        let r = from_vm(7474, "GET", path, &[], None).unwrap();
        assert_eq!(r.status, 200, "{path} without a token: {}", r.body);
    }
    let r = from_vm(
        7474,
        "GET",
        "/api/v1/policies",
        &[("Authorization", &good)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["policies"],
        json!([]),
        "a PUT without the token created something"
    );
    // The right token works for reads and writes, from a VM too.
    let r = from_vm(
        7474,
        "PUT",
        "/api/v1/policies/p",
        &[("Authorization", &good)],
        Some(&body),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = d
        .req("GET", "/metrics", &[("Authorization", &good)], None)
        .unwrap();
    assert_eq!(r.status, 200);
    eprintln!(
        "{TEST}: {} requests without a valid token all got 401 (host loopback and vm1 -> 10.0.0.254); \
         health open; right token accepted",
        seen.len()
    );
    d.stop().expect("daemon exits 0 on SIGTERM");
}
