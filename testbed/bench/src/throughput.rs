//! Throughput with and without mirroring, side by side in one run.
//!
//! One testbed (2 VMs, monitor `mon0` whose peer sits in the monitor
//! namespace); iperf3 TCP from VM1 to VM2 in three configurations, run
//! round-robin (A B C A B C ...) so that drift of the machine hits all of
//! them alike, and the median of each reported:
//!
//! - `no-tap`: nothing attached to `vm1-tap`;
//! - `vtap`: the real daemon in the host namespace with one policy mirroring
//!   everything on `vm1-tap`, both directions, to `mon0` VLAN 100; started
//!   and waited ready before, stopped (SIGTERM, exit 0 required) after;
//! - `tc-mirred`: clsact + `u32 match u32 0 0 action mirred egress mirror dev
//!   mon0` on ingress and egress of `vm1-tap`; removed after.
//!
//! for two frame regimes: `mtu` (tso/gso/gro off on the VM and tap ends, so
//! TC sees frames of at most 1514 bytes) and `gso` (the kernel's default
//! offloads: GSO super-packets). Every run records the copies the monitor
//! received, the packets seen on `vm1-tap`, vtap's own counters, the machine's
//! CPU use during the transfer (/proc/stat), softirq counts and backlog drops.
//!
//! `cargo build --release -p vtap && sudo cargo run --release -p vtap-bench --bin bench-throughput -- [OUT.json]`
//!
//! Default output `testbed/out/bench-throughput.json`; a Markdown table goes
//! to stdout and into the JSON (`markdown`). Knobs (environment):
//! `BENCH_ROUNDS` (default 5; rounds after the third only while
//! `BENCH_REGIME_BUDGET`, default 100 s per regime, lasts), `BENCH_SECONDS`
//! (iperf3 `-t`, default 5), `BENCH_REGIMES` (`mtu,gso`), `BENCH_PIN`
//! (`CLIENT_CPU,SERVER_CPU` for `taskset`, default `0,0`, or `none`),
//! `BENCH_QUIET_WAIT` (seconds, default 8), `VTAP_BIN` (default
//! `target/release/vtap`, falling back to the debug build with a warning).
//!
//! Why pinned to one CPU: over veth the whole forwarding path (both taps, the
//! bridge, the mirror copy and its reception in the monitor namespace) runs
//! in softirq on the sending CPU. With client and server on one CPU that CPU
//! is the bottleneck and throughput is inversely proportional to the
//! per-packet cost, which is what a tap adds; unpinned, the scheduler's
//! placement of client and server swings a run between ~8 and ~15 Gbit/s
//! (MTU regime), more than the effect measured. Before each measurement the
//! benchmark waits (bounded) until processes outside the testbed (builds,
//! tests of other people) use < 5 % of the machine, and records their share
//! during the run; a run they disturbed (> 10 %) is repeated once (at most 6
//! repeats per benchmark; the disturbed sample stays in the JSON, excluded).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use vtap_testbed::cmd::{self, SHORT};

mod common;
use common::*;
use vtap_testbed::{Metrics, Options, Testbed};

const POLICY: &str =
    "version: 1\nname: all\ntaps: [vm1-tap]\noutputs: [{interface: mon0, vlan: 100}]\n";
const IPERF_PORT: &str = "5201";
const TAP: &str = "vm1-tap";
/// A run during which processes outside the testbed used more than this
/// share (%) of the machine is marked disturbed and repeated once.
const DISTURBED_PCT: f64 = 10.0;

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    NoTap,
    Vtap,
    Mirred,
    /// The floor of any BPF tap: a program that only returns TC_ACT_UNSPEC.
    BarePass,
    /// The floor of a BPF tap that copies: only `bpf_clone_redirect` to
    /// mon0 (no tag, no parsing, no counters).
    BareClone,
    /// The floor of vtap's copy: push the VLAN tag, `bpf_clone_redirect`,
    /// pop the tag — nothing else.
    BareCloneVlan,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::NoTap,
        Config::Vtap,
        Config::Mirred,
        Config::BarePass,
        Config::BareClone,
        Config::BareCloneVlan,
    ];
    fn name(self) -> &'static str {
        match self {
            Config::NoTap => "no-tap",
            Config::Vtap => "vtap",
            Config::Mirred => "tc-mirred",
            Config::BarePass => "bare-bpf-pass",
            Config::BareClone => "bare-bpf-clone",
            Config::BareCloneVlan => "bare-bpf-vlan-clone",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Regime {
    Mtu,
    Gso,
}

impl Regime {
    fn name(self) -> &'static str {
        match self {
            Regime::Mtu => "mtu",
            Regime::Gso => "gso",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Regime::Mtu => {
                "MTU-sized frames (tso/gso/gro off on VM eth0 and vmN-tap: TC sees <= 1514-byte frames)"
            }
            Regime::Gso => "Default offloads (GSO super-packets up to ~64 KiB through TC)",
        }
    }
}

// ---------------------------------------------------------------------------
// Counters of the machine and of interfaces.

/// `/proc/stat` jiffies of one line: user nice system idle iowait irq softirq steal.
#[derive(Debug, Clone, Default)]
struct CpuTimes(Vec<u64>);

const CPU_FIELDS: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// Aggregate line first, then one per CPU.
fn proc_stat() -> Result<Vec<CpuTimes>> {
    let s = std::fs::read_to_string("/proc/stat")?;
    Ok(s.lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| {
            CpuTimes(
                l.split_whitespace()
                    .skip(1)
                    .take(8)
                    .filter_map(|v| v.parse().ok())
                    .collect(),
            )
        })
        .collect())
}

fn cpu_delta(a: &CpuTimes, b: &CpuTimes) -> Value {
    let d: Vec<u64> =
        a.0.iter()
            .zip(&b.0)
            .map(|(x, y)| y.saturating_sub(*x))
            .collect();
    let total: u64 = d.iter().sum();
    let idle = d.get(3).copied().unwrap_or(0) + d.get(4).copied().unwrap_or(0);
    let pct = |v: u64| {
        if total == 0 {
            0.0
        } else {
            100.0 * v as f64 / total as f64
        }
    };
    let mut o = serde_json::Map::new();
    o.insert("busy_pct".into(), json!(pct(total - idle)));
    for (i, f) in CPU_FIELDS.iter().enumerate() {
        o.insert(
            format!("{f}_pct"),
            json!(pct(d.get(i).copied().unwrap_or(0))),
        );
    }
    o.insert("jiffies".into(), json!(total));
    Value::Object(o)
}

fn cpu_report(before: &[CpuTimes], after: &[CpuTimes]) -> Value {
    let per_cpu: Vec<Value> = before
        .iter()
        .zip(after)
        .skip(1)
        .map(|(a, b)| cpu_delta(a, b))
        .collect();
    json!({
        "machine": before.first().zip(after.first()).map(|(a, b)| cpu_delta(a, b)),
        "per_cpu": per_cpu,
    })
}

/// `/proc/softirqs`: name -> sum over CPUs.
fn softirqs() -> BTreeMap<String, u64> {
    let s = std::fs::read_to_string("/proc/softirqs").unwrap_or_default();
    s.lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?.trim_end_matches(':').to_string();
            Some((name, it.filter_map(|v| v.parse::<u64>().ok()).sum()))
        })
        .collect()
}

/// `/proc/net/softnet_stat` summed over CPUs: (processed, dropped, time_squeeze).
fn softnet() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    let mut t = (0, 0, 0);
    for l in s.lines() {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| u64::from_str_radix(x, 16).ok())
            .collect();
        if v.len() >= 3 {
            t.0 += v[0];
            t.1 += v[1];
            t.2 += v[2];
        }
    }
    t
}

/// utime + stime of a process, in seconds.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is index 0: utime = 14 -> 11, stime = 15 -> 12.
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((ut + st) as f64 / hz)
}

/// CPU ticks (utime + stime) of user-space processes that are not in the
/// given network namespaces: other people's work on this machine (builds,
/// tests) that competes with the measurement. Kernel threads are left out
/// (ksoftirqd does our packets' work).
fn foreign_ticks(ours: &[u64]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id().to_string();
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let dir = e.path();
        if let Ok(md) = std::fs::metadata(dir.join("ns/net"))
            && ours.contains(&md.ino())
        {
            continue;
        }
        let Ok(st) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some(close) = st.rfind(')') else { continue };
        let f: Vec<&str> = st[close + 2..].split_whitespace().collect();
        // Index 0 is field 3 (state): flags = field 9 -> 6, utime 14 -> 11, stime 15 -> 12.
        let flags: u64 = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
        if flags & 0x0020_0000 != 0 {
            continue; // PF_KTHREAD
        }
        let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stt: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += ut + stt;
    }
    total
}

/// Share (percent of the whole machine) of CPU used by foreign processes
/// over `window`.
fn foreign_pct(ours: &[u64], window: Duration) -> f64 {
    let a = foreign_ticks(ours);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let b = foreign_ticks(ours);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    100.0 * (b.saturating_sub(a)) as f64 / hz / (t0.elapsed().as_secs_f64() * ncpu)
}

/// Waits (bounded) until foreign processes use less than `max_pct` of the
/// machine over half a second. Returns (seconds waited, last level).
fn wait_quiet(ours: &[u64], max_pct: f64, bound: Duration) -> (f64, f64) {
    let t0 = Instant::now();
    loop {
        let p = foreign_pct(ours, Duration::from_millis(500));
        if p < max_pct || t0.elapsed() >= bound || INTERRUPTED.load(Ordering::SeqCst) {
            return (t0.elapsed().as_secs_f64(), p);
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct LinkStats {
    rx_packets: u64,
    rx_bytes: u64,
    rx_dropped: u64,
    tx_packets: u64,
    tx_bytes: u64,
    tx_dropped: u64,
}

impl LinkStats {
    fn delta(&self, after: &LinkStats) -> LinkStats {
        LinkStats {
            rx_packets: after.rx_packets.saturating_sub(self.rx_packets),
            rx_bytes: after.rx_bytes.saturating_sub(self.rx_bytes),
            rx_dropped: after.rx_dropped.saturating_sub(self.rx_dropped),
            tx_packets: after.tx_packets.saturating_sub(self.tx_packets),
            tx_bytes: after.tx_bytes.saturating_sub(self.tx_bytes),
            tx_dropped: after.tx_dropped.saturating_sub(self.tx_dropped),
        }
    }
    fn json(&self) -> Value {
        json!({
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes, "rx_dropped": self.rx_dropped,
            "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes, "tx_dropped": self.tx_dropped,
        })
    }
}

/// `ip -n NS -s -j link show dev DEV` (sysfs would show the caller's namespace).
fn link_stats(ns: &str, dev: &str) -> Result<LinkStats> {
    let out = cmd::ip(Some(ns), &["-s", "-j", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out.stdout).context("ip -j link output")?;
    let s = &v[0]["stats64"];
    let g = |a: &str, b: &str| s[a][b].as_u64().unwrap_or(0);
    Ok(LinkStats {
        rx_packets: g("rx", "packets"),
        rx_bytes: g("rx", "bytes"),
        rx_dropped: g("rx", "dropped"),
        tx_packets: g("tx", "packets"),
        tx_bytes: g("tx", "bytes"),
        tx_dropped: g("tx", "dropped"),
    })
}

// ---------------------------------------------------------------------------
// Offloads.

const OFFLOADS: [(&str, &str); 3] = [
    ("tso", "tcp-segmentation-offload"),
    ("gso", "generic-segmentation-offload"),
    ("gro", "generic-receive-offload"),
];

/// (short name, on) for tso/gso/gro of `dev` in `ns`.
fn read_offloads(ns: &str, dev: &str) -> Result<Vec<(&'static str, bool)>> {
    let out = cmd::ns_run_ok(ns, "ethtool", &["-k", dev], SHORT)?;
    OFFLOADS
        .iter()
        .map(|(short, long)| {
            let line = out
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{long}:")))
                .ok_or_else(|| anyhow!("ethtool -k {dev}: no {long}"))?;
            Ok((*short, line.contains(": on")))
        })
        .collect()
}

fn set_offloads(ns: &str, dev: &str, want: &[(&str, bool)]) -> Result<()> {
    let mut args = vec!["-K".to_string(), dev.to_string()];
    for (f, on) in want {
        args.push(f.to_string());
        args.push(if *on { "on" } else { "off" }.into());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    cmd::ns_run_ok(ns, "ethtool", &a, SHORT)?;
    Ok(())
}

/// The four ends of the VM-to-VM path: (namespace, device).
fn path_ends(tb: &Testbed) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for vm in &tb.vms {
        v.push((vm.ns.clone(), vm.ifname.clone()));
        v.push((tb.host_ns.clone(), vm.tap.clone()));
    }
    v
}

fn offload_state(tb: &Testbed) -> Result<Value> {
    let mut o = serde_json::Map::new();
    for (ns, dev) in path_ends(tb) {
        let label = if ns == tb.host_ns {
            dev.clone()
        } else {
            format!("{}:{dev}", ns.rsplit('-').next().unwrap_or(&ns))
        };
        let f = read_offloads(&ns, &dev)?;
        o.insert(
            label,
            Value::Object(
                f.into_iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect(),
            ),
        );
    }
    Ok(Value::Object(o))
}

// ---------------------------------------------------------------------------
// State checks and configurations.

/// `BPF_PROG_QUERY` on `dev` (in the calling thread's namespace) for one
/// attach type: the number of programs attached. bpftool 7.1 (Debian 12)
/// does not know TCX, so the syscall is made here.
fn bpf_query_count(dev: &str, attach_type: u32) -> Result<u32> {
    let c = std::ffi::CString::new(dev)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {dev}");
    }
    // union bpf_attr, query: target_ifindex @0, attach_type @4, query_flags @8,
    // attach_flags @12, prog_ids @16, prog_cnt @24, ... (zeroed: count only).
    let mut attr = [0u8; 120];
    attr[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    const BPF_PROG_QUERY: libc::c_long = 16;
    // SAFETY: bpf(2) with a zeroed, correctly sized attr buffer we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc != 0 {
        bail!(
            "BPF_PROG_QUERY({dev}, {attach_type}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(u32::from_ne_bytes(
        attr[24..28].try_into().expect("4 bytes"),
    ))
}

/// What is attached to the tap right now: clsact qdisc present, TCX
/// programs per direction. Everything must be empty before a run.
fn tap_attachments(tb: &Testbed) -> Value {
    let qdisc = cmd::run(
        Command::new("tc").args(["-n", &tb.host_ns, "qdisc", "show", "dev", TAP]),
        SHORT,
    )
    .map(|o| o.stdout.contains("clsact"))
    .unwrap_or(false);
    // BPF_TCX_INGRESS = 46, BPF_TCX_EGRESS = 47.
    let tcx = vtap_testbed::netns::in_netns(&tb.host_ns, || {
        Ok((bpf_query_count(TAP, 46)?, bpf_query_count(TAP, 47)?))
    });
    let (tcx_ingress, tcx_egress) = match tcx {
        Ok((i, e)) => (json!(i), json!(e)),
        Err(e) => (json!(format!("{e:#}")), Value::Null),
    };
    json!({ "clsact": qdisc, "tcx_ingress": tcx_ingress, "tcx_egress": tcx_egress })
}

fn is_clean(state: &Value) -> bool {
    state["clsact"] == json!(false)
        && state["tcx_ingress"] == json!(0)
        && state["tcx_egress"] == json!(0)
}

/// Action indexes of the two mirred actions (ingress, egress), set
/// explicitly: u32 filters of one clsact qdisc share their hash tables, so a
/// filter dump of either direction lists both and only the index tells them
/// apart.
const MIRRED_INDEX: [(&str, &str); 2] = [("ingress", "101"), ("egress", "102")];

fn mirred_add(tb: &Testbed) -> Result<()> {
    tc(tb, &["qdisc", "add", "dev", TAP, "clsact"])?;
    for (dir, index) in MIRRED_INDEX {
        tc(
            tb,
            &[
                "filter", "add", "dev", TAP, dir, "protocol", "all", "u32", "match", "u32", "0",
                "0", "action", "mirred", "egress", "mirror", "dev", "mon0", "index", index,
            ],
        )?;
    }
    Ok(())
}

/// Packets and drops of the mirred actions, per direction.
fn mirred_stats(tb: &Testbed) -> Value {
    let mut o = serde_json::Map::new();
    for (dir, index) in MIRRED_INDEX {
        let v = tc(
            tb,
            &[
                "-s", "-j", "actions", "get", "action", "mirred", "index", index,
            ],
        )
        .ok()
        .and_then(|out| serde_json::from_str::<Value>(&out.stdout).ok())
        .unwrap_or(Value::Null);
        // [{"total acts":1},{"actions":[{... "stats":{"packets":..,"drops":..}}]}]
        let acts: Vec<&Value> = v
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["actions"].as_array().into_iter().flatten())
            .collect();
        let sum = |k: &str| {
            acts.iter()
                .map(|a| a["stats"][k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        o.insert(
            dir.into(),
            json!({ "packets": sum("packets"), "drops": sum("drops"), "overlimits": sum("overlimits") }),
        );
    }
    Value::Object(o)
}

fn mirred_del(tb: &Testbed) -> Result<()> {
    tc(tb, &["qdisc", "del", "dev", TAP, "clsact"])?;
    Ok(())
}

/// Removes the clsact qdisc when dropped (also on error paths).
struct MirredGuard<'a>(&'a Testbed, bool);

impl Drop for MirredGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = mirred_del(self.0);
        }
    }
}

/// Counter deltas (`_total` samples) between two scrapes, nonzero only.
fn metric_deltas(a: &Metrics, b: &Metrics) -> BTreeMap<String, f64> {
    let before = a.to_map();
    b.to_map()
        .into_iter()
        .filter(|(k, _)| k.split('{').next().unwrap_or("").ends_with("_total"))
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

fn sum_delta(a: &Metrics, b: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    b.sum(name, labels) - a.sum(name, labels)
}

/// Distinct WARN/ERROR/panic lines of a daemon log (ANSI colours and the
/// leading timestamp removed) with how often each occurred.
fn log_issues(log: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in log.lines() {
        let mut clean = String::with_capacity(line.len());
        let mut it = line.chars();
        while let Some(c) = it.next() {
            if c == '\u{1b}' {
                for c2 in it.by_ref() {
                    if c2.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                clean.push(c);
            }
        }
        if !(clean.contains("WARN") || clean.contains("ERROR") || clean.contains("panicked")) {
            continue;
        }
        let body = match clean.split_once(' ') {
            Some((ts, rest)) if ts.starts_with(|c: char| c.is_ascii_digit()) => rest.trim(),
            _ => clean.trim(),
        };
        *m.entry(body.to_string()).or_insert(0) += 1;
    }
    m
}

static REPORTED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

// ---------------------------------------------------------------------------
// iperf3.

fn wait_listening(ns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = cmd::ns_run_ok(
            ns,
            "ss",
            &["-Hltn", &format!("sport = :{IPERF_PORT}")],
            SHORT,
        )?;
        if !o.stdout.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("iperf3 server in {ns} not listening after 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Iperf {
    bps_received: f64,
    bps_sent: f64,
    retransmits: u64,
    cpu_client: f64,
    cpu_server: f64,
    bytes_received: u64,
    /// Sender-side Gbit/s of each 1-s interval.
    intervals: Vec<f64>,
}

fn parse_iperf(text: &str) -> Result<Iperf> {
    let v: Value = serde_json::from_str(text).context("iperf3 -J output is not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 JSON has no end.sum_received.bits_per_second"))?;
    Ok(Iperf {
        bps_received: bps,
        bps_sent: end["sum_sent"]["bits_per_second"].as_f64().unwrap_or(0.0),
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        cpu_client: end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(0.0),
        cpu_server: end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(0.0),
        bytes_received: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
        intervals: v["intervals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
            .map(|b| b / 1e9)
            .collect(),
    })
}

/// One bounded iperf3 transfer VM1 -> VM2 (server started for this one test).
/// Run settings shared by every measurement.
#[derive(Debug, Clone, Copy)]
struct Settings {
    seconds: u64,
    /// CPUs of the iperf3 client and server (`taskset -c`), if pinned.
    pin: Option<(usize, usize)>,
    /// Before each measurement wait (at most `quiet_wait`) until other
    /// processes use less than `quiet_pct` % of the machine.
    quiet_pct: f64,
    quiet_wait: Duration,
}

fn iperf_once(tb: &Testbed, set: Settings) -> Result<(Iperf, cmd::Output)> {
    let (vm1, vm2) = (tb.vm(1), tb.vm(2));
    let mut server = match set.pin {
        Some((_, cpu)) => tb.spawn(
            &vm2.ns,
            "taskset",
            &[
                "-c",
                &cpu.to_string(),
                "iperf3",
                "-s",
                "-1",
                "-p",
                IPERF_PORT,
            ],
        )?,
        None => tb.spawn(&vm2.ns, "iperf3", &["-s", "-1", "-p", IPERF_PORT])?,
    };
    wait_listening(&vm2.ns)?;
    let t = set.seconds.to_string();
    let dst = vm2.ipv4.to_string();
    let mut c = match set.pin {
        Some((cpu, _)) => {
            let mut c = cmd::ns_command(&vm1.ns, "taskset");
            c.args(["-c", &cpu.to_string(), "iperf3"]);
            c
        }
        None => cmd::ns_command(&vm1.ns, "iperf3"),
    };
    c.args([
        "-c",
        &dst,
        "-p",
        IPERF_PORT,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    let out = cmd::run(&mut c, Duration::from_secs(set.seconds + 20))?;
    let parsed = parse_iperf(&out.stdout).with_context(|| {
        format!(
            "iperf3 client (exit {}): stderr {:?}",
            out.status,
            out.stderr.trim()
        )
    })?;
    let _ = server.wait_timeout(Duration::from_secs(3));
    Ok((parsed, out))
}

// ---------------------------------------------------------------------------
// One measurement.

struct Snapshot {
    tap: LinkStats,
    mon0: LinkStats,
    mon_rx: LinkStats,
    softirqs: BTreeMap<String, u64>,
    softnet: (u64, u64, u64),
}

fn snapshot(tb: &Testbed) -> Result<Snapshot> {
    let m = tb.monitor(0);
    Ok(Snapshot {
        tap: link_stats(&tb.host_ns, TAP)?,
        mon0: link_stats(&tb.host_ns, &m.iface)?,
        mon_rx: link_stats(&m.ns, &m.ifname)?,
        softirqs: softirqs(),
        softnet: softnet(),
    })
}

fn run_one(
    tb: &Testbed,
    regime: Regime,
    config: Config,
    round: usize,
    set: Settings,
) -> Result<Value> {
    check_interrupted()?;
    let pre_state = tap_attachments(tb);
    let mut sample = serde_json::Map::new();
    sample.insert("regime".into(), json!(regime.name()));
    sample.insert("config".into(), json!(config.name()));
    sample.insert("round".into(), json!(round));
    sample.insert("tap_attachments_before".into(), pre_state.clone());
    if !is_clean(&pre_state) {
        eprintln!(
            "WARNING: {TAP} is not clean before {} round {round}: {pre_state}",
            config.name()
        );
    }

    let setup = Instant::now();
    let mut daemon = None;
    let mut guard = MirredGuard(tb, false);
    match config {
        Config::NoTap => {}
        Config::Vtap => daemon = Some(tb.start_daemon(&[("all.yaml", POLICY)])?),
        Config::Mirred => {
            guard.1 = true;
            mirred_add(tb)?;
        }
        Config::BarePass => {
            guard.1 = true;
            bare_bpf_add(tb, TAP, "pass", "return TC_ACT_UNSPEC;")?;
        }
        Config::BareClone | Config::BareCloneVlan => {
            let mon = host_ifindex(tb, "mon0")?;
            let body = if config == Config::BareClone {
                format!("bpf_clone_redirect(skb, {mon}, 0); return TC_ACT_UNSPEC;")
            } else {
                // 0x0081: htons(ETH_P_8021Q) on this little-endian machine.
                format!(
                    "if (bpf_skb_vlan_push(skb, 0x0081, 100) == 0) {{ bpf_clone_redirect(skb, {mon}, 0); bpf_skb_vlan_pop(skb); }} return TC_ACT_UNSPEC;"
                )
            };
            guard.1 = true;
            bare_bpf_add(tb, TAP, config.name(), &body)?;
        }
    }
    sample.insert("setup_seconds".into(), json!(setup.elapsed().as_secs_f64()));
    sample.insert("tap_attachments_during".into(), tap_attachments(tb));
    check_interrupted()?;

    let ours = netns_inodes(tb);
    let (waited, level) = wait_quiet(&ours, set.quiet_pct, set.quiet_wait);
    sample.insert(
        "quiet_gate".into(),
        json!({ "waited_seconds": waited, "foreign_cpu_pct_last_window": level }),
    );
    let m_before = match &daemon {
        Some(d) => Some(d.metrics()?),
        None => None,
    };
    let dpid = daemon.as_ref().and_then(|d| d.pid());
    let dcpu_before = dpid.and_then(proc_cpu_seconds);
    let s_before = snapshot(tb)?;
    let foreign_before = foreign_ticks(&ours);
    let cpu_before = proc_stat()?;
    let t0 = Instant::now();
    let res = iperf_once(tb, set);
    let wall = t0.elapsed();
    let cpu_after = proc_stat()?;
    let foreign_after = foreign_ticks(&ours);
    let s_after = snapshot(tb)?;
    let dcpu_after = dpid.and_then(proc_cpu_seconds);
    let m_after = match &daemon {
        Some(d) => Some(d.metrics()?),
        None => None,
    };

    // Tear the configuration down before judging the run.
    let mut teardown = serde_json::Map::new();
    if let Some(mut d) = daemon.take() {
        let st = d.stop_with(libc::SIGTERM);
        let issues = log_issues(&d.log());
        teardown.insert(
            "daemon_exit".into(),
            json!(match &st {
                Ok(s) => cmd::describe_status(s),
                Err(e) => format!("{e:#}"),
            }),
        );
        teardown.insert("daemon_log_issues".into(), json!(issues));
        if !matches!(&st, Ok(s) if s.success()) {
            eprintln!(
                "WARNING: vtap daemon did not exit 0 after SIGTERM: {}\n{}",
                match &st {
                    Ok(s) => cmd::describe_status(s),
                    Err(e) => format!("{e:#}"),
                },
                vtap_testbed::daemon::tail(&d.log(), 30)
            );
        }
        let mut seen = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
        for (msg, n) in &issues {
            if seen.insert(msg.clone()) {
                eprintln!("WARNING: vtap daemon log ({n}x in this run): {msg}");
            }
        }
        drop(seen);
        drop(d);
    }
    if guard.1 {
        if config == Config::Mirred {
            teardown.insert("mirred_actions".into(), mirred_stats(tb));
        }
        guard.1 = false;
        mirred_del(tb)?;
    }
    teardown.insert("tap_attachments_after".into(), tap_attachments(tb));
    sample.insert("teardown".into(), Value::Object(teardown));

    let (ip, client_out) = res?;
    let tap = s_before.tap.delta(&s_after.tap);
    let mon0 = s_before.mon0.delta(&s_after.mon0);
    let mon_rx = s_before.mon_rx.delta(&s_after.mon_rx);
    let seen = tap.rx_packets + tap.tx_packets;
    sample.insert("gbit_per_s".into(), json!(ip.bps_received / 1e9));
    sample.insert(
        "iperf3".into(),
        json!({
            "bits_per_second_received": ip.bps_received,
            "bits_per_second_sent": ip.bps_sent,
            "bytes_received": ip.bytes_received,
            "retransmits": ip.retransmits,
            "interval_gbit_per_s": ip.intervals,
            "cpu_client_pct": ip.cpu_client,
            "cpu_server_pct": ip.cpu_server,
            "wall_seconds": wall.as_secs_f64(),
            "client_stderr": client_out.stderr.trim(),
        }),
    );
    let mut cpu = cpu_report(&cpu_before, &cpu_after);
    let jiffies = cpu["machine"]["jiffies"].as_u64().unwrap_or(0);
    let foreign = foreign_after.saturating_sub(foreign_before);
    cpu["foreign_pct"] = json!(if jiffies == 0 {
        0.0
    } else {
        100.0 * foreign as f64 / jiffies as f64
    });
    sample.insert("cpu".into(), cpu);
    let sirq: BTreeMap<String, u64> = s_after
        .softirqs
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(*s_before.softirqs.get(k).unwrap_or(&0)),
            )
        })
        .collect();
    sample.insert("softirqs".into(), json!(sirq));
    sample.insert(
        "softnet".into(),
        json!({
            "processed": s_after.softnet.0.saturating_sub(s_before.softnet.0),
            "dropped": s_after.softnet.1.saturating_sub(s_before.softnet.1),
            "time_squeeze": s_after.softnet.2.saturating_sub(s_before.softnet.2),
        }),
    );
    sample.insert("tap_link".into(), tap.json());
    sample.insert("mon0_link".into(), mon0.json());
    sample.insert("monitor_eth0_link".into(), mon_rx.json());
    let avg = |b: u64, p: u64| if p == 0 { 0.0 } else { b as f64 / p as f64 };
    sample.insert(
        "avg_frame_bytes".into(),
        json!({
            "from_vm1": avg(tap.rx_bytes, tap.rx_packets),
            "to_vm1": avg(tap.tx_bytes, tap.tx_packets),
        }),
    );
    sample.insert("packets_seen".into(), json!(seen));
    sample.insert("copies_at_monitor".into(), json!(mon_rx.rx_packets));
    if let (Some(a), Some(b)) = (&m_before, &m_after) {
        let dropped: BTreeMap<String, f64> = b
            .find("vtap_policy_dropped_copies_total", &[("policy", "all")])
            .iter()
            .filter_map(|s| {
                let r = s.labels.get("reason")?.clone();
                let v = s.value
                    - a.get(
                        "vtap_policy_dropped_copies_total",
                        &[("policy", "all"), ("reason", &r)],
                    )
                    .ok()
                    .flatten()
                    .unwrap_or(0.0);
                Some((r, v))
            })
            .collect();
        sample.insert(
            "vtap".into(),
            json!({
                "mirrored": sum_delta(a, b, "vtap_policy_mirrored_packets_total", &[("policy", "all")]),
                "dropped_copies": dropped,
                "dropped_copies_total": sum_delta(a, b, "vtap_policy_dropped_copies_total", &[("policy", "all")]),
                "tap_packets": sum_delta(a, b, "vtap_tap_packets_total", &[("tap", TAP)]),
                "tap_classified": sum_delta(a, b, "vtap_tap_classified_packets_total", &[("tap", TAP)]),
                "output_sent": sum_delta(a, b, "vtap_output_packets_total", &[]),
                "output_failed": sum_delta(a, b, "vtap_output_failed_packets_total", &[]),
                "counter_deltas": metric_deltas(a, b),
                "daemon_cpu_seconds": dcpu_before.zip(dcpu_after).map(|(x, y)| y - x),
            }),
        );
    }
    Ok(Value::Object(sample))
}

// ---------------------------------------------------------------------------
// Statistics and report.

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn summarize(regime: Regime, runs: &[Value]) -> (Value, String) {
    let ok: Vec<&Value> = runs
        .iter()
        .filter(|r| {
            r["regime"] == json!(regime.name())
                && r.get("gbit_per_s").is_some()
                && r["excluded"] != json!(true)
        })
        .collect();
    let by = |c: Config| -> Vec<&Value> {
        ok.iter()
            .copied()
            .filter(|r| r["config"] == json!(c.name()))
            .collect()
    };
    let base_runs = by(Config::NoTap);
    let base = median(
        &base_runs
            .iter()
            .filter_map(|r| f(r, &["gbit_per_s"]))
            .collect::<Vec<_>>(),
    );
    let mut md = String::new();
    let _ = writeln!(md, "\n### {}\n", regime.title());
    let _ = writeln!(
        md,
        "| configuration | Gbit/s (median) | samples | spread | ratio to no-tap (paired) | copies at monitor / packets on {TAP} | vtap mirrored / dropped / tap pkts | CPU busy % | softirq % | other procs % | avg frame B (from VM1) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut summary = serde_json::Map::new();
    for c in Config::ALL {
        let rs = by(c);
        let g: Vec<f64> = rs.iter().filter_map(|r| f(r, &["gbit_per_s"])).collect();
        let med = median(&g);
        let (mn, mx) = g
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        let spread = med.filter(|m| *m > 0.0).map(|m| (mx - mn) / m);
        // Paired ratios: this configuration over no-tap of the same round.
        let paired: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                let b = base_runs.iter().find(|x| x["round"] == r["round"])?;
                Some(f(r, &["gbit_per_s"])? / f(b, &["gbit_per_s"])?)
            })
            .collect();
        let ratio = med.zip(base).map(|(m, b)| m / b);
        let seen: f64 = rs.iter().filter_map(|r| f(r, &["packets_seen"])).sum();
        let copies: f64 = rs.iter().filter_map(|r| f(r, &["copies_at_monitor"])).sum();
        let mirrored: f64 = rs.iter().filter_map(|r| f(r, &["vtap", "mirrored"])).sum();
        let vdropped: f64 = rs
            .iter()
            .filter_map(|r| f(r, &["vtap", "dropped_copies_total"]))
            .sum();
        let vtap_pkts: f64 = rs
            .iter()
            .filter_map(|r| f(r, &["vtap", "tap_packets"]))
            .sum();
        let cpu = median(
            &rs.iter()
                .filter_map(|r| f(r, &["cpu", "machine", "busy_pct"]))
                .collect::<Vec<_>>(),
        );
        let sirq = median(
            &rs.iter()
                .filter_map(|r| f(r, &["cpu", "machine", "softirq_pct"]))
                .collect::<Vec<_>>(),
        );
        let foreign = median(
            &rs.iter()
                .filter_map(|r| f(r, &["cpu", "foreign_pct"]))
                .collect::<Vec<_>>(),
        );
        let frame = median(
            &rs.iter()
                .filter_map(|r| f(r, &["avg_frame_bytes", "from_vm1"]))
                .collect::<Vec<_>>(),
        );
        let copy_ratio = if seen > 0.0 { copies / seen } else { 0.0 };
        summary.insert(
            c.name().into(),
            json!({
                "runs": g.len(),
                "gbit_per_s": g,
                "median_gbit_per_s": med,
                "min_gbit_per_s": if g.is_empty() { None } else { Some(mn) },
                "max_gbit_per_s": if g.is_empty() { None } else { Some(mx) },
                "spread_rel": spread,
                "ratio_to_no_tap": ratio,
                "paired_ratios": paired,
                "median_paired_ratio": median(&paired),
                "packets_seen": seen,
                "copies_at_monitor": copies,
                "copies_per_packet_seen": copy_ratio,
                "vtap_mirrored": mirrored,
                "vtap_dropped_copies": vdropped,
                "vtap_tap_packets": vtap_pkts,
                "median_cpu_busy_pct": cpu,
                "median_softirq_pct": sirq,
                "median_foreign_cpu_pct": foreign,
                "disturbed_runs_kept": rs.iter().filter(|r| r["disturbed"] == json!(true)).count(),
                "median_avg_frame_bytes_from_vm1": frame,
            }),
        );
        let opt = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or("-".into());
        let copies_cell = if c == Config::NoTap {
            format!("{copies:.0} / {seen:.0}")
        } else {
            format!("{copies:.0} / {seen:.0} ({copy_ratio:.4})")
        };
        let vtap_cell = if c == Config::Vtap {
            format!("{mirrored:.0} / {vdropped:.0} / {vtap_pkts:.0}")
        } else {
            "-".into()
        };
        let ratio_cell = if c == Config::NoTap {
            "1".into()
        } else {
            format!("{} ({})", opt(ratio, 3), opt(median(&paired), 3))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.name(),
            opt(med, 2),
            g.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            spread
                .map(|s| format!("{:.1}%", 100.0 * s))
                .unwrap_or("-".into()),
            ratio_cell,
            copies_cell,
            vtap_cell,
            opt(cpu, 0),
            opt(sirq, 0),
            opt(foreign, 1),
            opt(frame, 0),
        );
    }
    (Value::Object(summary), md)
}

// ---------------------------------------------------------------------------
// Set-up.

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("bench-throughput: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: bench-throughput [OUT.json]   (root; env BENCH_ROUNDS, BENCH_SECONDS, BENCH_REGIMES=mtu,gso, BENCH_PIN, BENCH_QUIET_WAIT, BENCH_REGIME_BUDGET, VTAP_BIN)"
        );
        return Ok(true);
    }
    let vtap_binary = describe_vtap_bin(&choose_vtap_bin()?)?;
    if !vtap_testbed::is_root() {
        bail!("needs root (network namespaces, TC, BPF)");
    }
    let out_path = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("testbed/out/bench-throughput.json"));
    let rounds = env_num("BENCH_ROUNDS", 5)?.max(1) as usize;
    let seconds = env_num("BENCH_SECONDS", 5)?.clamp(1, 60);
    let regimes: Vec<Regime> = std::env::var("BENCH_REGIMES")
        .unwrap_or_else(|_| "mtu,gso".into())
        .split(',')
        .map(|s| match s.trim() {
            "mtu" => Ok(Regime::Mtu),
            "gso" => Ok(Regime::Gso),
            o => Err(anyhow!("BENCH_REGIMES: unknown regime {o:?} (mtu, gso)")),
        })
        .collect::<Result<_>>()?;
    let pin = match std::env::var("BENCH_PIN").as_deref() {
        Ok("none") => None,
        Ok(v) => {
            let (a, b) = v.split_once(',').ok_or_else(|| {
                anyhow!("BENCH_PIN={v:?}: expected CLIENT_CPU,SERVER_CPU or none")
            })?;
            Some((a.trim().parse()?, b.trim().parse()?))
        }
        Err(_) => Some((0, 0)),
    };
    let set = Settings {
        seconds,
        pin,
        quiet_pct: 5.0,
        quiet_wait: Duration::from_secs(env_num("BENCH_QUIET_WAIT", 8)?),
    };
    for t in ["iperf3", "tc", "ethtool", "ss", "taskset"] {
        if shell("sh", &["-c", &format!("command -v {t}")]).is_empty() {
            bail!("{t} not found");
        }
    }
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
    }

    let started = Instant::now();
    let tb = Testbed::new(Options::default().vms(2).monitors(1).monitor_mtu(65535))?;
    eprintln!(
        "testbed {} up in {:.1}s; vtap {}; {rounds} rounds x {} configs x {} regimes, iperf3 -t {seconds}",
        tb.name,
        started.elapsed().as_secs_f64(),
        vtap_binary["path"].as_str().unwrap_or("?"),
        Config::ALL.len(),
        regimes.len()
    );
    type Offloads = Vec<(&'static str, bool)>;
    let defaults: Vec<(String, String, Offloads)> = path_ends(&tb)
        .into_iter()
        .map(|(ns, dev)| {
            let f = read_offloads(&ns, &dev)?;
            Ok((ns, dev, f))
        })
        .collect::<Result<_>>()?;

    let mut runs: Vec<Value> = Vec::new();
    let mut regime_info = json!({});
    let mut failures = 0;
    let mut retries_left = 6;
    let regime_budget = Duration::from_secs(env_num("BENCH_REGIME_BUDGET", 100)?);
    for &regime in &regimes {
        check_interrupted()?;
        match regime {
            Regime::Mtu => {
                for (ns, dev) in path_ends(&tb) {
                    set_offloads(&ns, &dev, &[("tso", false), ("gso", false), ("gro", false)])?;
                }
            }
            Regime::Gso => {
                for (ns, dev, f) in &defaults {
                    set_offloads(ns, dev, f)?;
                }
            }
        }
        let offloads = offload_state(&tb)?;
        // Warm-up (not counted): the first transfer of a fresh path is slower.
        let warm = iperf_once(&tb, Settings { seconds: 2, ..set })
            .map(|(i, _)| i.bps_received / 1e9)
            .map_err(|e| format!("{e:#}"));
        eprintln!(
            "[{}] offloads {offloads}; warm-up {warm:?} Gbit/s",
            regime.name()
        );
        regime_info[regime.name()] =
            json!({ "offloads": offloads, "warmup_gbit_per_s": warm.ok() });
        let regime_start = Instant::now();
        let mut done_rounds = 0;
        for round in 1..=rounds {
            // Rounds beyond the third only while the regime's time budget lasts.
            if round > 3 && done_rounds > 0 {
                let per_round = regime_start.elapsed().as_secs_f64() / done_rounds as f64;
                if regime_start.elapsed().as_secs_f64() + per_round > regime_budget.as_secs_f64() {
                    eprintln!(
                        "[{}] time budget {:?} reached: {done_rounds} rounds",
                        regime.name(),
                        regime_budget
                    );
                    break;
                }
            }
            for config in Config::ALL {
                let mut attempt = 0;
                loop {
                    let t = Instant::now();
                    match run_one(&tb, regime, config, round, set) {
                        Ok(mut s) => {
                            let foreign = f(&s, &["cpu", "foreign_pct"]).unwrap_or(0.0);
                            let disturbed = foreign > DISTURBED_PCT;
                            let retry = disturbed && attempt == 0 && retries_left > 0;
                            eprintln!(
                                "[{} r{round}] {:<9} {:6.2} Gbit/s  cpu {:3.0}% (others {:4.1}%)  copies {}/{}  ({:.1}s){}",
                                regime.name(),
                                config.name(),
                                s["gbit_per_s"].as_f64().unwrap_or(0.0),
                                f(&s, &["cpu", "machine", "busy_pct"]).unwrap_or(0.0),
                                foreign,
                                s["copies_at_monitor"],
                                s["packets_seen"],
                                t.elapsed().as_secs_f64(),
                                if retry {
                                    "  disturbed by other processes: repeated"
                                } else {
                                    ""
                                }
                            );
                            s["disturbed"] = json!(disturbed);
                            s["excluded"] = json!(retry);
                            runs.push(s);
                            if retry {
                                retries_left -= 1;
                                attempt += 1;
                                continue;
                            }
                        }
                        Err(e) => {
                            check_interrupted()?;
                            failures += 1;
                            eprintln!(
                                "[{} r{round}] {} FAILED: {e:#}",
                                regime.name(),
                                config.name()
                            );
                            runs.push(json!({
                                "regime": regime.name(), "config": config.name(), "round": round,
                                "error": format!("{e:#}"),
                            }));
                        }
                    }
                    break;
                }
            }
            done_rounds = round;
        }
        regime_info[regime.name()]["rounds"] = json!(done_rounds);
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "## vtap throughput: iperf3 TCP VM1 -> VM2, {seconds} s per run, up to {rounds} rounds round-robin, median per configuration"
    );
    let mut summaries = serde_json::Map::new();
    for &regime in &regimes {
        let (s, t) = summarize(regime, &runs);
        summaries.insert(regime.name().into(), s);
        md.push_str(&t);
    }
    let _ = writeln!(
        md,
        "\nratio = median Gbit/s / median no-tap Gbit/s (in parentheses: median of per-round ratios); spread = (max - min) / median; CPU = whole machine ({} CPUs) from /proc/stat during the transfer; other procs = CPU used meanwhile by processes outside the testbed (other people's builds/tests: a run with a high value is disturbed); copies = rx packets of the monitor's eth0; packets on {TAP} = its rx + tx.",
        shell("nproc", &[])
    );
    let total = started.elapsed();
    let _ = writeln!(
        md,
        "\ntotal run time {:.0} s; {failures} failed runs",
        total.as_secs_f64()
    );

    let report = json!({
        "benchmark": "bench-throughput",
        "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "kernel": shell("uname", &["-r"]),
        "cpus": shell("nproc", &[]),
        "iperf3": shell("iperf3", &["--version"]).lines().next().unwrap_or("").to_string(),
        "git_head": shell("git", &["-C", &workspace_root().to_string_lossy(), "rev-parse", "HEAD"]),
        "vtap_binary": vtap_binary,
        "policy": POLICY,
        "rounds": rounds,
        "seconds": seconds,
        "iperf3_cpu_pinning": pin.map(|(c, s)| json!({ "client_cpu": c, "server_cpu": s })),
        "order": Config::ALL.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "testbed": tb.to_json(),
        "monitor_mtu": 65535,
        "regimes": regime_info,
        "summary": summaries,
        "runs": runs,
        "failures": failures,
        "total_seconds": total.as_secs_f64(),
        "markdown": md,
    });
    drop(tb);
    if let Some(dir) = out_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("write {}", out_path.display()))?;
    println!("{md}");
    eprintln!("wrote {}", out_path.display());
    Ok(failures == 0)
}
