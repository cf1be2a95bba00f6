//! Packet capture on a VM tap: `tcpdump` against vtap's pcap sink, side by
//! side in one run, under an iperf3 TCP load between two namespace VMs.
//!
//! One testbed (2 VMs on a bridge). iperf3 TCP VM1 -> VM2 (client and server
//! pinned to CPU 0 by default, as in `bench-throughput`) for `--seconds`
//! per case, in two frame regimes:
//!
//! - `mtu`: tso/gso/gro off on both VMs' `eth0` and on `vm1-tap`/`vm2-tap`,
//!   so the tap sees frames of at most 1514 bytes;
//! - `gso`: the kernel's default offloads (read at start, restored): GSO
//!   super-packets of up to ~64 KiB cross the tap.
//!
//! and, per regime, these capture methods on `vm1-tap` (both directions):
//!
//! - `none`: no capture (the baseline throughput);
//! - `tcpdump-256`, `tcpdump-full`: `tcpdump -i vm1-tap -w FILE -s 256|0 -n
//!   -Z root` in the testbed's host namespace, started before and stopped
//!   (SIGINT) after the transfer, once it has drained its buffer;
//! - `vtap-256`, `vtap-full`: `vtap daemon` with one policy
//!   `{taps: [vm1-tap], direction: both, snaplen: 256|0, outputs: [{pcap:
//!   bench}]}`, started before the transfer; after it the benchmark waits
//!   until the ring is drained and the writer caught up (received = packets
//!   put in the ring, and received = written + every loss counter).
//!
//! Measured per case:
//!
//! - packets that crossed the tap: rx + tx deltas of `vm1-tap` over the
//!   transfer (`ip -s -j link`), independent of both capture tools;
//! - captured: packets in the tcpdump file (read here), or vtap's
//!   `written_packets` (the packets in its pcapng files are counted too, as
//!   a cross-check); the fraction captured = captured / crossed;
//! - losses: tcpdump's "packets dropped by kernel" (and "received by
//!   filter"); vtap's `ring_full`, `writer_queue_full`, `not_written_*`;
//! - CPU of the capturing process (whole process, /proc/PID/stat utime +
//!   stime): over the transfer as % of one core, and in total until it has
//!   handled everything (the drain after the transfer included), also per
//!   captured packet; vtap's per-thread split (ring reader, file writer,
//!   ...); the machine's per-CPU busy %;
//! - iperf3 throughput, and its ratio to the `none` case of the same round.
//!
//! `cargo build --release -p vtap -p vtap-bench && sudo target/release/bench-capture [OUT.json]`
//!
//! Writes `testbed/out/bench-capture.json` by default (every sample, the
//! summary and the Markdown table it prints). Flags: see `--help`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use vtap_testbed::cmd;

mod common;
use common::*;
use vtap_testbed::{Daemon, Metrics, Options, Testbed};

const TAP: &str = "vm1-tap";
const CAPTURE: &str = "bench";
const POLICY_NAME: &str = "cap-all";
const IPERF_PORT: u16 = 5201;
/// A run during which processes outside the testbed used more than this
/// share (%) of the machine is marked disturbed and repeated once.
const DISTURBED_PCT: f64 = 10.0;
/// vtap's largest capture of one packet (`snaplen: 0`).
const VTAP_MAX_CAPLEN: u32 = 9216;

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// Cases.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    None,
    Tcpdump,
    Vtap,
}

/// A capture method: the tool and its snaplen (0 = whole packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Method {
    tool: Tool,
    snaplen: u32,
}

impl Method {
    fn name(self) -> String {
        let snap = if self.snaplen == 0 {
            "full".to_string()
        } else {
            self.snaplen.to_string()
        };
        match self.tool {
            Tool::None => "none".into(),
            Tool::Tcpdump => format!("tcpdump-{snap}"),
            Tool::Vtap => format!("vtap-{snap}"),
        }
    }

    fn parse(s: &str) -> Result<Method> {
        let s = s.trim();
        if s == "none" {
            return Ok(Method {
                tool: Tool::None,
                snaplen: 0,
            });
        }
        let (tool, snap) = s
            .split_once('-')
            .ok_or_else(|| anyhow!("method {s:?}: expected none, tcpdump-N|full, vtap-N|full"))?;
        let tool = match tool {
            "tcpdump" => Tool::Tcpdump,
            "vtap" => Tool::Vtap,
            o => bail!("method {s:?}: unknown tool {o:?} (tcpdump, vtap)"),
        };
        let snaplen = match snap {
            "full" | "0" => 0,
            n => n
                .parse::<u32>()
                .with_context(|| format!("method {s:?}: snaplen {n:?}"))?,
        };
        if tool == Tool::Vtap && snaplen != 0 && !(14..=VTAP_MAX_CAPLEN).contains(&snaplen) {
            bail!("method {s:?}: vtap snaplen must be 14..{VTAP_MAX_CAPLEN} or full");
        }
        Ok(Method { tool, snaplen })
    }

    fn policy(self) -> String {
        format!(
            "version: 1\nname: {POLICY_NAME}\ntaps: [{TAP}]\ndirection: both\nsnaplen: {}\noutputs:\n  - pcap: {CAPTURE}\n",
            self.snaplen
        )
    }
}

const DEFAULT_METHODS: &str = "none,tcpdump-256,tcpdump-full,vtap-256,vtap-full";

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
                "MTU-sized frames (tso/gso/gro off on the VMs' eth0 and on vm1-tap/vm2-tap: <= 1514-byte frames)"
            }
            Regime::Gso => "Default offloads (GSO super-packets of up to ~64 KiB cross the tap)",
        }
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
struct Settings {
    seconds: u64,
    rounds: usize,
    regimes: Vec<Regime>,
    methods: Vec<Method>,
    /// iperf3 (client CPU, server CPU), `taskset -c`.
    pin: Option<(usize, usize)>,
    /// Pin the capturing process (all its threads) to this CPU.
    capture_cpu: Option<usize>,
    /// `--capture-ring-mib` of the daemon (None: the daemon's default).
    ring_mib: Option<u32>,
    /// `tcpdump -B` in KiB (None: tcpdump's default).
    tcpdump_buffer_kib: Option<u32>,
    quiet_wait: Duration,
    budget: Duration,
    keep_files: bool,
    /// Write the capture files to a tmpfs (RAM) instead of the disk: shows
    /// what the capture pipeline itself sustains when storage is not the
    /// limit.
    tmpfs: bool,
}

/// A tmpfs mounted for one case (files in RAM), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=20g", "vtap-bench"])
            .arg(dir)
            .output()?;
        if !o.status.success() {
            bail!(
                "mount tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

// ---------------------------------------------------------------------------
// Counting packets in capture files (pcap and pcapng), without decoding them.

#[derive(Debug, Clone, Default)]
struct FileCount {
    files: usize,
    file_bytes: u64,
    packets: u64,
    cap_bytes: u64,
    orig_bytes: u64,
    max_caplen: u64,
    /// A file ended inside a record.
    truncated: bool,
}

impl FileCount {
    fn add(&mut self, o: &FileCount) {
        self.files += o.files;
        self.file_bytes += o.file_bytes;
        self.packets += o.packets;
        self.cap_bytes += o.cap_bytes;
        self.orig_bytes += o.orig_bytes;
        self.max_caplen = self.max_caplen.max(o.max_caplen);
        self.truncated |= o.truncated;
    }
    fn json(&self) -> Value {
        json!({
            "files": self.files, "file_bytes": self.file_bytes, "packets": self.packets,
            "cap_bytes": self.cap_bytes, "orig_bytes": self.orig_bytes,
            "max_caplen": self.max_caplen, "truncated": self.truncated,
        })
    }
}

/// Reads up to `buf.len()` bytes; fewer only at the end of the file.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Counts the packets of one pcap or pcapng file.
fn count_file(path: &Path) -> Result<FileCount> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let size = f.metadata()?.len();
    let mut r = std::io::BufReader::with_capacity(4 << 20, f);
    let mut c = FileCount {
        files: 1,
        file_bytes: size,
        ..Default::default()
    };
    let mut head = [0u8; 24];
    let n = read_up_to(&mut r, &mut head[..12])?;
    if n == 0 {
        return Ok(c);
    }
    if n < 12 {
        c.truncated = true;
        return Ok(c);
    }
    let m = u32::from_le_bytes(head[0..4].try_into().expect("4"));
    if m == 0x0A0D_0D0A {
        // pcapng: blocks of (type, total length, body, total length).
        let le = match &head[8..12] {
            [0x4D, 0x3C, 0x2B, 0x1A] => true,
            [0x1A, 0x2B, 0x3C, 0x4D] => false,
            _ => bail!("{}: bad pcapng byte-order magic", path.display()),
        };
        let u = |b: &[u8]| {
            let a: [u8; 4] = b.try_into().expect("4");
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        // The first block: skip what is left of it.
        let first_len = u(&head[4..8]) as i64;
        if first_len < 12 {
            bail!("{}: bad section header length", path.display());
        }
        r.seek_relative(first_len - 12)?;
        let mut bh = [0u8; 28];
        let mut last_was_packet = false;
        loop {
            let n = read_up_to(&mut r, &mut bh[..8])?;
            if n == 0 {
                break;
            }
            if n < 8 {
                c.truncated = true;
                break;
            }
            let ty = u(&bh[0..4]);
            let len = u(&bh[4..8]) as i64;
            if len < 12 || len % 4 != 0 {
                bail!("{}: bad pcapng block length {len}", path.display());
            }
            let mut used = 8;
            last_was_packet = false;
            if ty == 6 && len >= 32 {
                // Enhanced packet block: interface id, timestamp (2), caplen, origlen.
                if read_up_to(&mut r, &mut bh[8..28])? < 20 {
                    c.truncated = true;
                    break;
                }
                used = 28;
                let cap = u(&bh[20..24]) as u64;
                last_was_packet = true;
                c.packets += 1;
                c.cap_bytes += cap;
                c.orig_bytes += u(&bh[24..28]) as u64;
                c.max_caplen = c.max_caplen.max(cap);
            } else if ty == 3 && len >= 16 {
                // Simple packet block: origlen.
                if read_up_to(&mut r, &mut bh[8..12])? < 4 {
                    c.truncated = true;
                    break;
                }
                used = 12;
                let orig = u(&bh[8..12]) as u64;
                last_was_packet = true;
                c.packets += 1;
                c.orig_bytes += orig;
                c.cap_bytes += orig.min(len as u64 - 16);
            }
            r.seek_relative(len - used)?;
        }
        // seek_relative past the end is not an error: check the size.
        if r.stream_position()? > size {
            c.truncated = true;
            if last_was_packet {
                c.packets -= 1;
            }
        }
        return Ok(c);
    }
    // pcap: 24-byte header, then (ts_sec, ts_frac, incl_len, orig_len) + data.
    let le = match m {
        0xA1B2_C3D4 | 0xA1B2_3C4D => true,
        0xD4C3_B2A1 | 0x4D3C_B2A1 => false,
        _ => bail!("{}: neither pcap nor pcapng (magic {m:#x})", path.display()),
    };
    if read_up_to(&mut r, &mut head[12..24])? < 12 {
        c.truncated = true;
        return Ok(c);
    }
    let u = |b: &[u8]| {
        let a: [u8; 4] = b.try_into().expect("4");
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut rh = [0u8; 16];
    loop {
        let n = read_up_to(&mut r, &mut rh)?;
        if n == 0 {
            break;
        }
        if n < 16 {
            c.truncated = true;
            break;
        }
        let incl = u(&rh[8..12]) as u64;
        c.packets += 1;
        c.cap_bytes += incl;
        c.orig_bytes += u(&rh[12..16]) as u64;
        c.max_caplen = c.max_caplen.max(incl);
        r.seek_relative(incl as i64)?;
    }
    if r.stream_position()? > size {
        c.truncated = true;
        c.packets = c.packets.saturating_sub(1);
    }
    Ok(c)
}

/// Counts every capture file in `dir` (vtap's `*.pcapng`).
fn count_dir(dir: &Path) -> Result<(FileCount, Vec<PathBuf>)> {
    let mut total = FileCount::default();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pcapng" || x == "pcap"))
            .collect(),
        Err(_) => Vec::new(),
    };
    paths.sort();
    for p in &paths {
        total.add(&count_file(p)?);
    }
    Ok((total, paths))
}

// ---------------------------------------------------------------------------
// The capturing processes.

/// tcpdump's closing statistics (stderr).
fn tcpdump_stats(stderr: &str) -> Value {
    let grab = |what: &str| {
        stderr
            .lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    json!({
        "captured": grab("packets captured"),
        "received_by_filter": grab("received by filter"),
        "dropped_by_kernel": grab("dropped by kernel"),
        "dropped_by_interface": grab("dropped by interface"),
    })
}

/// Waits (at most `bound`) until the process used no CPU for `quiet`
/// (it has handled everything queued for it). Returns the seconds until
/// its CPU time last changed.
fn wait_idle(pid: u32, quiet: Duration, bound: Duration) -> f64 {
    let t0 = Instant::now();
    let mut last = process_cpu_seconds(pid);
    let mut last_change = 0.0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = process_cpu_seconds(pid);
        if now != last {
            last = now;
            last_change = t0.elapsed().as_secs_f64();
        }
        let idle_for = t0.elapsed().as_secs_f64() - last_change;
        if idle_for >= quiet.as_secs_f64() || t0.elapsed() >= bound {
            return last_change;
        }
    }
}

fn capture_json(d: &Daemon) -> Result<Value> {
    let r = d.get(&format!("/api/v1/captures/{CAPTURE}"))?;
    if r.status != 200 {
        bail!("GET /api/v1/captures/{CAPTURE}: {} {}", r.status, r.body);
    }
    serde_json::from_str(&r.body).context("capture JSON")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// Counters of the capture REST object that are cumulative.
const VTAP_COUNTERS: [&str; 13] = [
    "packets",
    "bytes",
    "cap_bytes",
    "ring_full",
    "received",
    "written_packets",
    "written_bytes",
    "not_written_error",
    "not_written_stopped",
    "writer_queue_full",
    "streamed",
    "stream_lost",
    "subscribers",
];

fn vtap_delta(a: &Value, b: &Value) -> Value {
    Value::Object(
        VTAP_COUNTERS
            .iter()
            .map(|k| ((*k).to_string(), json!(u(b, k).saturating_sub(u(a, k)))))
            .collect(),
    )
}

/// Packets the writer has handled (written or counted as lost).
fn vtap_handled(v: &Value) -> u64 {
    u(v, "written_packets")
        + u(v, "not_written_error")
        + u(v, "not_written_stopped")
        + u(v, "writer_queue_full")
}

/// Capture and tap counters of the daemon's `/metrics`.
fn vtap_metrics(m: &Metrics) -> BTreeMap<String, f64> {
    m.samples
        .iter()
        .filter(|s| {
            s.name.starts_with("vtap_capture_")
                || (s.name == "vtap_tap_packets_total"
                    && s.labels.get("tap").is_some_and(|t| t == TAP))
        })
        .map(|s| (vtap_testbed::metrics::key(&s.name, &s.labels), s.value))
        .collect()
}

fn map_delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(k, d)| *d != 0.0 && k.contains("_total"))
        .collect()
}

/// Distinct WARN/ERROR/panic lines of a daemon log (colours and timestamps
/// removed), with counts.
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

// ---------------------------------------------------------------------------
// One case.

struct Window {
    tap: LinkCounters,
    cpu: Vec<(u64, u64)>,
    outside: u64,
    proc_cpu: Option<f64>,
    threads: BTreeMap<String, f64>,
    switches: BTreeMap<String, (u64, u64)>,
    interrupts: BTreeMap<String, Vec<u64>>,
}

fn window_mark(tb: &Testbed, pid: Option<u32>, ours: &[u64]) -> Result<Window> {
    Ok(Window {
        proc_cpu: pid.and_then(process_cpu_seconds),
        threads: pid.map(thread_cpu_seconds).unwrap_or_default(),
        switches: pid.map(thread_ctx_switches).unwrap_or_default(),
        interrupts: named_interrupts(),
        tap: link_counters(&tb.host_ns, TAP)?,
        cpu: cpu_busy_jiffies(),
        outside: outside_cpu_ticks(ours),
    })
}

fn run_case(
    tb: &Testbed,
    regime: Regime,
    method: Method,
    round: usize,
    set: &Settings,
) -> Result<Value> {
    check_interrupted()?;
    let mut s = serde_json::Map::new();
    s.insert("regime".into(), json!(regime.name()));
    s.insert("method".into(), json!(method.name()));
    s.insert(
        "tool".into(),
        json!(format!("{:?}", method.tool).to_lowercase()),
    );
    s.insert("snaplen".into(), json!(method.snaplen));
    s.insert("round".into(), json!(round));
    let ours = netns_inodes(tb);

    // Start the capture.
    let setup = Instant::now();
    let mut tcpdump = None;
    let mut daemon = None;
    let mut tcpdump_file = None;
    let mut tmpfs: Option<Tmpfs> = None;
    match method.tool {
        Tool::None => {}
        Tool::Tcpdump => {
            let mut file = tb.path(
                &format!("tcpdump-{}-{}", regime.name(), method.name()),
                "pcap",
            );
            if set.tmpfs {
                let dir = tb.path("tcpdump-tmpfs", "d");
                tmpfs = Some(Tmpfs::mount(&dir)?);
                file = dir.join(file.file_name().unwrap());
            }
            let mut args: Vec<String> = vec![
                "-i".into(),
                TAP.into(),
                "-w".into(),
                file.to_string_lossy().into_owned(),
                "-s".into(),
                method.snaplen.to_string(),
                "-n".into(),
                "-Z".into(),
                "root".into(),
            ];
            if let Some(kib) = set.tcpdump_buffer_kib {
                args.extend(["-B".into(), kib.to_string()]);
            }
            let mut c = cmd::ns_command(&tb.host_ns, "tcpdump");
            c.args(&args);
            s.insert(
                "command".into(),
                json!(format!("tcpdump {}", args.join(" "))),
            );
            let mut p = tb.spawn_command(c, "tcpdump")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !p.stderr().contains("listening on") {
                if let Some(st) = p.try_wait()? {
                    bail!(
                        "tcpdump exited ({}) before capturing: {}",
                        cmd::describe_status(&st),
                        p.stderr().trim()
                    );
                }
                if Instant::now() > deadline {
                    bail!("tcpdump not capturing after 10 s: {}", p.stderr().trim());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            tcpdump = Some(p);
            tcpdump_file = Some(file);
        }
        Tool::Vtap => {
            // No file is deleted by rotation (max_files: 0), so the files
            // can be counted; rotation itself stays at its default size.
            let cfg = tb.path("vtapd", "yaml");
            std::fs::write(&cfg, "capture_defaults:\n  max_files: 0\n")?;
            let cfg_s = cfg.to_string_lossy().into_owned();
            let mut extra = vec!["--config".to_string(), cfg_s];
            if let Some(mib) = set.ring_mib {
                extra.extend(["--capture-ring-mib".into(), mib.to_string()]);
            }
            let ea: Vec<&str> = extra.iter().map(|x| x.as_str()).collect();
            let policy = method.policy();
            s.insert("policy".into(), json!(policy));
            s.insert("daemon_extra_args".into(), json!(extra));
            let d = tb.start_daemon_prepared(&[("cap.yaml", &policy)], &ea, |state| {
                if set.tmpfs {
                    tmpfs = Some(Tmpfs::mount(&state.join("captures"))?);
                }
                Ok(())
            })?;
            // The capture exists once the policy set is applied.
            let mut last = String::new();
            let ok = vtap_testbed::wait_until(Duration::from_secs(10), || match capture_json(&d) {
                Ok(_) => true,
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            });
            if !ok {
                bail!("capture {CAPTURE} not there 10 s after the daemon started: {last}");
            }
            daemon = Some(d);
        }
    }
    let pid = tcpdump
        .as_ref()
        .and_then(|p| p.pid())
        .or_else(|| daemon.as_ref().and_then(|d| d.pid()));
    if let (Some(pid), Some(cpu)) = (pid, set.capture_cpu) {
        pin_process(pid, cpu)?;
    }
    s.insert("setup_seconds".into(), json!(setup.elapsed().as_secs_f64()));

    let (waited, level) = wait_for_quiet(&ours, 5.0, set.quiet_wait);
    s.insert(
        "quiet_gate".into(),
        json!({ "waited_seconds": waited, "outside_cpu_pct_last_window": level }),
    );
    let (vtap_before, metrics_before) = match &daemon {
        Some(d) => (Some(capture_json(d)?), Some(vtap_metrics(&d.metrics()?))),
        None => (None, None),
    };
    check_interrupted()?;

    // The transfer.
    let before = window_mark(tb, pid, &ours)?;
    let t0 = Instant::now();
    let ip = iperf3_vm1_to_vm2(tb, set.seconds, set.pin, IPERF_PORT);
    let window = t0.elapsed().as_secs_f64();
    let after = window_mark(tb, pid, &ours)?;

    // Let the capture handle everything, then read its CPU once more.
    let drain0 = Instant::now();
    let mut drain_seconds = 0.0;
    let mut vtap_after = None;
    let mut settled = true;
    if let Some(d) = &daemon {
        let mut last = Value::Null;
        settled = vtap_testbed::wait_until(Duration::from_secs(30), || match capture_json(d) {
            Ok(v) => {
                let done =
                    u(&v, "received") >= u(&v, "packets") && vtap_handled(&v) == u(&v, "received");
                last = v;
                done
            }
            Err(_) => false,
        });
        if !settled {
            eprintln!("WARNING: capture did not settle within 30 s: {last}");
        }
        vtap_after = Some(last);
        drain_seconds = drain0.elapsed().as_secs_f64();
    }
    if let Some(p) = &tcpdump
        && let Some(pid) = p.pid()
    {
        // Longer than libpcap's block timeout (1 s for tcpdump): a block
        // that is not full reaches tcpdump only when the kernel retires it.
        drain_seconds = wait_idle(pid, Duration::from_millis(1600), Duration::from_secs(20));
    }
    let proc_cpu_drained = pid.and_then(process_cpu_seconds);
    let threads_drained = pid.map(thread_cpu_seconds).unwrap_or_default();
    let switches_drained = pid.map(thread_ctx_switches).unwrap_or_default();

    // Tear down, read the files.
    let mut files = FileCount::default();
    let mut file_paths = Vec::new();
    if let Some(mut p) = tcpdump.take() {
        let st = p.stop_with(libc::SIGINT, Duration::from_secs(30));
        let stderr = p.stderr();
        s.insert(
            "tcpdump_exit".into(),
            json!(match &st {
                Ok(st) => cmd::describe_status(st),
                Err(e) => format!("{e:#}"),
            }),
        );
        s.insert("tcpdump_stats".into(), tcpdump_stats(&stderr));
        s.insert(
            "tcpdump_stderr".into(),
            json!(
                stderr
                    .lines()
                    .filter(|l| !l.contains("listening on"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        );
        drop(p);
        if let Some(f) = &tcpdump_file {
            files = count_file(f)?;
            file_paths.push(f.clone());
        }
    }
    if let Some(mut d) = daemon.take() {
        let metrics_after = d.metrics().map(|m| vtap_metrics(&m)).unwrap_or_default();
        let final_view = capture_json(&d).ok();
        let st = d.stop_with(libc::SIGTERM);
        s.insert(
            "daemon_exit".into(),
            json!(match &st {
                Ok(st) => cmd::describe_status(st),
                Err(e) => format!("{e:#}"),
            }),
        );
        s.insert("daemon_log_issues".into(), json!(log_issues(&d.log())));
        let dir = d.state_dir.join("captures").join(CAPTURE);
        let (fc, paths) = count_dir(&dir)?;
        files = fc;
        file_paths = paths;
        if let (Some(a), Some(b)) = (&vtap_before, &vtap_after) {
            s.insert("vtap".into(), vtap_delta(a, b));
        }
        if let Some(b) = &vtap_after {
            s.insert("vtap_settled".into(), json!(settled));
            s.insert(
                "vtap_writer_lag_seconds".into(),
                b["writer_lag_seconds"].clone(),
            );
            s.insert("vtap_state".into(), b["state"].clone());
        }
        s.insert("vtap_final_view".into(), json!(final_view));
        if let Some(a) = &metrics_before {
            s.insert(
                "vtap_metrics_delta".into(),
                json!(map_delta(a, &metrics_after)),
            );
        }
        drop(d);
    }
    if !set.keep_files {
        for p in &file_paths {
            let _ = std::fs::remove_file(p);
        }
    }
    // Counted: a tmpfs of this case goes away.
    drop(tmpfs);

    let ip = ip?;
    let tap = before.tap.delta(&after.tap);
    let crossed = tap.rx_packets + tap.tx_packets;
    s.insert("gbit_per_s".into(), json!(ip.bps_received / 1e9));
    s.insert("iperf3".into(), ip.json());
    s.insert("window_seconds".into(), json!(window));
    s.insert("tap_link".into(), tap.json());
    s.insert("packets_crossed".into(), json!(crossed));
    let avg = |b: u64, p: u64| if p == 0 { 0.0 } else { b as f64 / p as f64 };
    s.insert(
        "avg_packet_bytes".into(),
        json!({ "from_vm1": avg(tap.rx_bytes, tap.rx_packets), "to_vm1": avg(tap.tx_bytes, tap.tx_packets) }),
    );
    s.insert("files".into(), files.json());

    let captured = match method.tool {
        Tool::None => None,
        Tool::Tcpdump => Some(files.packets),
        Tool::Vtap => s.get("vtap").map(|v| u(v, "written_packets")),
    };
    if let Some(c) = captured {
        s.insert("captured".into(), json!(c));
        s.insert(
            "captured_fraction".into(),
            json!(if crossed == 0 {
                0.0
            } else {
                c as f64 / crossed as f64
            }),
        );
    }
    if let (Some(a), Some(b), Some(c)) = (before.proc_cpu, after.proc_cpu, proc_cpu_drained) {
        let total = c - a;
        s.insert(
            "capture_cpu".into(),
            json!({
                "window_seconds_cpu": b - a,
                "window_pct_of_one_core": 100.0 * (b - a) / window,
                "total_seconds_cpu": total,
                "drain_seconds": drain_seconds,
                "us_per_captured_packet": captured.filter(|c| *c > 0).map(|c| 1e6 * total / c as f64),
                "threads_window": thread_cpu_delta(&before.threads, &after.threads),
                "threads_total": thread_cpu_delta(&before.threads, &threads_drained),
                "thread_switches_window": thread_ctx_delta(&before.switches, &after.switches),
                "thread_switches_total": thread_ctx_delta(&before.switches, &switches_drained),
            }),
        );
    }
    s.insert(
        "interrupts_per_cpu".into(),
        named_interrupts_delta(&before.interrupts, &after.interrupts),
    );
    let busy = cpu_busy_pct_between(&before.cpu, &after.cpu);
    s.insert(
        "machine_cpu_busy_pct".into(),
        json!({ "machine": busy.first(), "per_cpu": busy.get(1..).unwrap_or(&[]) }),
    );
    let outside = after.outside.saturating_sub(before.outside) as f64 / clock_ticks();
    s.insert(
        "outside_cpu_pct".into(),
        json!(100.0 * outside / (window * cpu_count() as f64)),
    );
    Ok(Value::Object(s))
}

// ---------------------------------------------------------------------------
// Summary and table.

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn med(rs: &[&Value], path: &[&str]) -> Option<f64> {
    median(&rs.iter().filter_map(|r| num(r, path)).collect::<Vec<_>>())
}

fn fmt_int(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn summarize(regime: Regime, methods: &[Method], runs: &[Value]) -> (Value, String) {
    let ok: Vec<&Value> = runs
        .iter()
        .filter(|r| {
            r["regime"] == json!(regime.name())
                && r.get("gbit_per_s").is_some()
                && r["excluded"] != json!(true)
        })
        .collect();
    let by = |m: Method| -> Vec<&Value> {
        ok.iter()
            .copied()
            .filter(|r| r["method"] == json!(m.name()))
            .collect()
    };
    let none = Method {
        tool: Tool::None,
        snaplen: 0,
    };
    let base_runs = by(none);
    let base = med(&base_runs, &["gbit_per_s"]);
    let mut md = String::new();
    let _ = writeln!(md, "\n### {}\n", regime.title());
    let _ = writeln!(
        md,
        "| method | Gbit/s | ratio to no capture | packets on {TAP} | captured | captured / on tap | lost (reason: packets) | capture CPU, % of a core (transfer) | capture CPU s (incl. drain) | CPU µs / captured pkt | drain s | avg caplen B | files MB |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    let mut summary = serde_json::Map::new();
    for &m in methods {
        let rs = by(m);
        if rs.is_empty() {
            continue;
        }
        let gbit = med(&rs, &["gbit_per_s"]);
        let paired: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                let b = base_runs.iter().find(|x| x["round"] == r["round"])?;
                Some(num(r, &["gbit_per_s"])? / num(b, &["gbit_per_s"])?)
            })
            .collect();
        let ratio = median(&paired).or_else(|| gbit.zip(base).map(|(a, b)| a / b));
        let crossed = med(&rs, &["packets_crossed"]);
        let captured = med(&rs, &["captured"]);
        let frac = med(&rs, &["captured_fraction"]);
        let cpu_pct = med(&rs, &["capture_cpu", "window_pct_of_one_core"]);
        let cpu_total = med(&rs, &["capture_cpu", "total_seconds_cpu"]);
        let us_pkt = med(&rs, &["capture_cpu", "us_per_captured_packet"]);
        let drain = med(&rs, &["capture_cpu", "drain_seconds"]);
        let caplen = median(
            &rs.iter()
                .filter_map(|r| {
                    let p = num(r, &["files", "packets"])?;
                    (p > 0.0).then(|| num(r, &["files", "cap_bytes"]).unwrap_or(0.0) / p)
                })
                .collect::<Vec<_>>(),
        );
        let file_mb = med(&rs, &["files", "file_bytes"]).map(|b| b / 1e6);
        let mut lost = BTreeMap::new();
        match m.tool {
            Tool::None => {}
            Tool::Tcpdump => {
                if let Some(v) = med(&rs, &["tcpdump_stats", "dropped_by_kernel"]) {
                    lost.insert("dropped by kernel", v);
                }
                // Neither written nor reported as dropped.
                let unaccounted = median(
                    &rs.iter()
                        .filter_map(|r| {
                            let c = num(r, &["packets_crossed"])?;
                            let w = num(r, &["captured"])?;
                            let d = num(r, &["tcpdump_stats", "dropped_by_kernel"]).unwrap_or(0.0);
                            Some((c - w - d).max(0.0))
                        })
                        .collect::<Vec<_>>(),
                );
                if let Some(v) = unaccounted {
                    lost.insert("unaccounted", v);
                }
            }
            Tool::Vtap => {
                for k in [
                    "ring_full",
                    "writer_queue_full",
                    "not_written_error",
                    "not_written_stopped",
                ] {
                    if let Some(v) = med(&rs, &["vtap", k]) {
                        lost.insert(k, v);
                    }
                }
            }
        }
        let lost_cell = if m.tool == Tool::None {
            "-".to_string()
        } else {
            lost.iter()
                .map(|(k, v)| format!("{k}: {}", fmt_int(*v)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        summary.insert(
            m.name(),
            json!({
                "runs": rs.len(),
                "gbit_per_s": rs.iter().filter_map(|r| num(r, &["gbit_per_s"])).collect::<Vec<_>>(),
                "median_gbit_per_s": gbit,
                "ratio_to_no_capture": ratio,
                "packets_crossed": crossed,
                "captured": captured,
                "captured_fraction": frac,
                "captured_fractions": rs.iter().filter_map(|r| num(r, &["captured_fraction"])).collect::<Vec<_>>(),
                "lost": lost,
                "capture_cpu_pct_of_one_core": cpu_pct,
                "capture_cpu_seconds_total": cpu_total,
                "capture_cpu_us_per_packet": us_pkt,
                "drain_seconds": drain,
                "avg_caplen_bytes": caplen,
                "file_mb": file_mb,
                "median_outside_cpu_pct": med(&rs, &["outside_cpu_pct"]),
            }),
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.name(),
            opt(gbit, |x| format!("{x:.2}")),
            if m.tool == Tool::None {
                "1".into()
            } else {
                opt(ratio, |x| format!("{x:.3}"))
            },
            opt(crossed, fmt_int),
            opt(captured, fmt_int),
            opt(frac, |x| format!("{:.2} %", 100.0 * x)),
            lost_cell,
            opt(cpu_pct, |x| format!("{x:.0}")),
            opt(cpu_total, |x| format!("{x:.2}")),
            opt(us_pkt, |x| format!("{x:.2}")),
            opt(drain, |x| format!("{x:.1}")),
            opt(caplen, |x| format!("{x:.0}")),
            opt(file_mb, |x| format!("{x:.0}")),
        );
    }
    // vtap against tcpdump at the same snaplen.
    let mut cmp = String::new();
    for &m in methods.iter().filter(|m| m.tool == Tool::Vtap) {
        let t = Method {
            tool: Tool::Tcpdump,
            snaplen: m.snaplen,
        };
        let (Some(v), Some(td)) = (
            summary.get(&m.name()).cloned(),
            summary.get(&t.name()).cloned(),
        ) else {
            continue;
        };
        let r = |k: &str| match (v[k].as_f64(), td[k].as_f64()) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let _ = writeln!(
            cmp,
            "| {} / {} | {} | {} | {} | {} |",
            m.name(),
            t.name(),
            opt(r("captured_fraction"), |x| format!("{x:.2}")),
            opt(r("capture_cpu_pct_of_one_core"), |x| format!("{x:.2}")),
            opt(r("capture_cpu_us_per_packet"), |x| format!("{x:.2}")),
            opt(r("median_gbit_per_s"), |x| format!("{x:.3}")),
        );
        summary
            .entry(format!("{}_vs_{}", m.name(), t.name()))
            .or_insert(json!({
                "captured_fraction_ratio": r("captured_fraction"),
                "cpu_pct_ratio": r("capture_cpu_pct_of_one_core"),
                "cpu_per_packet_ratio": r("capture_cpu_us_per_packet"),
                "throughput_ratio": r("median_gbit_per_s"),
            }));
    }
    if !cmp.is_empty() {
        let _ = writeln!(
            md,
            "\n| vtap / tcpdump | captured fraction | CPU % of a core (transfer) | CPU per captured packet | VM throughput |\n|---|---:|---:|---:|---:|\n{}",
            cmp.trim_end()
        );
    }
    (Value::Object(summary), md)
}

/// The issue's targets, judged on the mtu regime.
fn targets(summaries: &serde_json::Map<String, Value>) -> (Value, String) {
    let mtu = &summaries.get("mtu").cloned().unwrap_or(Value::Null);
    let frac = |m: &str| mtu[m]["captured_fraction"].as_f64();
    let cpu = |m: &str| mtu[m]["capture_cpu_pct_of_one_core"].as_f64();
    let verdict = |b: Option<bool>| match b {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    };
    let t1 = frac("vtap-256").map(|f| f >= 1.0);
    let t2 = frac("vtap-full").map(|f| f >= 0.999);
    let t3 = match (
        cpu("vtap-256"),
        cpu("tcpdump-256"),
        cpu("vtap-full"),
        cpu("tcpdump-full"),
    ) {
        (Some(a), Some(b), Some(c), Some(d)) => Some(a < b && c < d),
        (Some(a), Some(b), _, _) => Some(a < b),
        (_, _, Some(c), Some(d)) => Some(c < d),
        _ => None,
    };
    let pct = |v: Option<f64>| opt(v, |x| format!("{:.3} %", 100.0 * x));
    let cpu_s = |v: Option<f64>| opt(v, |x| format!("{x:.0} %"));
    let mut md = String::new();
    let _ = writeln!(md, "\n### Targets (MTU-sized frames)\n");
    let _ = writeln!(
        md,
        "- vtap captures 100 % with snaplen 256: {} ({})",
        verdict(t1),
        pct(frac("vtap-256"))
    );
    let _ = writeln!(
        md,
        "- vtap captures >= 99.9 % with whole packets: {} ({})",
        verdict(t2),
        pct(frac("vtap-full"))
    );
    let _ = writeln!(
        md,
        "- vtap uses less CPU than tcpdump: {} (256: vtap {} vs tcpdump {}; full: vtap {} vs tcpdump {} of a core)",
        verdict(t3),
        cpu_s(cpu("vtap-256")),
        cpu_s(cpu("tcpdump-256")),
        cpu_s(cpu("vtap-full")),
        cpu_s(cpu("tcpdump-full")),
    );
    (
        json!({ "vtap_256_all": t1, "vtap_full_999": t2, "vtap_less_cpu": t3 }),
        md,
    )
}

// ---------------------------------------------------------------------------
// Set-up.

const USAGE: &str =
    "usage: bench-capture [OUT.json] [--out FILE] [--seconds N (10)] [--rounds N (1)]
       [--regimes mtu,gso] [--methods none,tcpdump-256,tcpdump-full,vtap-256,vtap-full]
       [--ring-mib N (daemon default)] [--pin CLIENT_CPU,SERVER_CPU|none (0,0)]
       [--capture-cpu N|none (none)] [--tcpdump-buffer-kib N (tcpdump default)]
       [--quiet-wait S (8)] [--budget S (540)] [--keep-files] [--tmpfs]
Runs as root. Env: VTAP_BIN (default target/release/vtap).";

fn parse_args(args: &[String]) -> Result<(Settings, PathBuf)> {
    let mut set = Settings {
        seconds: 10,
        rounds: 1,
        regimes: vec![Regime::Mtu, Regime::Gso],
        methods: DEFAULT_METHODS
            .split(',')
            .map(Method::parse)
            .collect::<Result<_>>()?,
        pin: Some((0, 0)),
        capture_cpu: None,
        ring_mib: None,
        tcpdump_buffer_kib: None,
        quiet_wait: Duration::from_secs(8),
        budget: Duration::from_secs(540),
        keep_files: false,
        tmpfs: false,
    };
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if a.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut val = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{flag} needs a value")),
            }
        };
        match flag {
            "--out" => out = Some(PathBuf::from(val()?)),
            "--seconds" => set.seconds = val()?.parse::<u64>()?.clamp(1, 120),
            "--rounds" => set.rounds = val()?.parse::<usize>()?.max(1),
            "--regimes" => {
                set.regimes = val()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "mtu" => Ok(Regime::Mtu),
                        "gso" => Ok(Regime::Gso),
                        o => Err(anyhow!("--regimes: unknown regime {o:?} (mtu, gso)")),
                    })
                    .collect::<Result<_>>()?
            }
            "--methods" => {
                set.methods = val()?
                    .split(',')
                    .map(Method::parse)
                    .collect::<Result<_>>()?;
            }
            "--ring-mib" => set.ring_mib = Some(val()?.parse()?),
            "--pin" => {
                let v = val()?;
                set.pin = if v == "none" {
                    None
                } else {
                    let (a, b) = v
                        .split_once(',')
                        .ok_or_else(|| anyhow!("--pin {v:?}: CLIENT_CPU,SERVER_CPU or none"))?;
                    Some((a.trim().parse()?, b.trim().parse()?))
                };
            }
            "--capture-cpu" => {
                let v = val()?;
                set.capture_cpu = if v == "none" { None } else { Some(v.parse()?) };
            }
            "--tcpdump-buffer-kib" => set.tcpdump_buffer_kib = Some(val()?.parse()?),
            "--quiet-wait" => set.quiet_wait = Duration::from_secs(val()?.parse()?),
            "--budget" => set.budget = Duration::from_secs(val()?.parse()?),
            "--keep-files" => set.keep_files = true,
            "--tmpfs" => set.tmpfs = true,
            f if f.starts_with('-') => bail!("unknown flag {f}\n{USAGE}"),
            p => {
                if out.is_some() {
                    bail!("more than one output file\n{USAGE}");
                }
                out = Some(PathBuf::from(p));
            }
        }
    }
    let out = out.unwrap_or_else(|| workspace_root().join("testbed/out/bench-capture.json"));
    Ok((set, out))
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("bench-capture: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(true);
    }
    let vtap_binary = describe_vtap_bin(&choose_vtap_bin()?)?;
    let (set, out_path) = parse_args(&args)?;
    if !vtap_testbed::is_root() {
        bail!("needs root (network namespaces, TC, BPF)");
    }
    for t in ["iperf3", "tcpdump", "ethtool", "ss", "taskset"] {
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
    let tb = Testbed::new(Options::default().vms(2).monitors(0))?;
    let method_names: Vec<String> = set.methods.iter().map(|m| m.name()).collect();
    eprintln!(
        "testbed {} up in {:.1}s; vtap {}; {} round(s) x {} methods x {} regimes, iperf3 -t {}",
        tb.name,
        started.elapsed().as_secs_f64(),
        vtap_binary["path"].as_str().unwrap_or("?"),
        set.rounds,
        set.methods.len(),
        set.regimes.len(),
        set.seconds
    );
    type Offloads = Vec<(&'static str, bool)>;
    let defaults: Vec<(String, String, Offloads)> = vm_path_ends(&tb)
        .into_iter()
        .map(|(ns, dev)| {
            let f = get_offloads(&ns, &dev)?;
            Ok((ns, dev, f))
        })
        .collect::<Result<_>>()?;
    let offload_json = |tb: &Testbed| -> Value {
        let mut o = serde_json::Map::new();
        for (ns, dev) in vm_path_ends(tb) {
            let label = if ns == tb.host_ns {
                dev.clone()
            } else {
                format!("{}:{dev}", ns.rsplit('-').next().unwrap_or(&ns))
            };
            let v = get_offloads(&ns, &dev)
                .map(|f| {
                    Value::Object(
                        f.into_iter()
                            .map(|(k, v)| (k.to_string(), json!(v)))
                            .collect(),
                    )
                })
                .unwrap_or_else(|e| json!(format!("{e:#}")));
            o.insert(label, v);
        }
        Value::Object(o)
    };

    let mut runs: Vec<Value> = Vec::new();
    let mut regime_info = json!({});
    let mut failures = 0;
    let mut skipped = 0;
    let mut retries_left = 4;
    // Rough cost of one case beyond the transfer (start, drain, files).
    let per_case = Duration::from_secs(set.seconds + 8);
    'regimes: for &regime in &set.regimes {
        check_interrupted()?;
        match regime {
            Regime::Mtu => {
                for (ns, dev) in vm_path_ends(&tb) {
                    put_offloads(&ns, &dev, &[("tso", false), ("gso", false), ("gro", false)])?;
                }
            }
            Regime::Gso => {
                for (ns, dev, f) in &defaults {
                    put_offloads(ns, dev, f)?;
                }
            }
        }
        let offloads = offload_json(&tb);
        let warm = iperf3_vm1_to_vm2(&tb, 2, set.pin, IPERF_PORT)
            .map(|r| r.bps_received / 1e9)
            .map_err(|e| format!("{e:#}"));
        eprintln!(
            "[{}] offloads {offloads}; warm-up {warm:?} Gbit/s",
            regime.name()
        );
        regime_info[regime.name()] =
            json!({ "offloads": offloads, "warmup_gbit_per_s": warm.ok() });
        for round in 1..=set.rounds {
            for &method in &set.methods {
                let mut attempt = 0;
                loop {
                    if started.elapsed() + per_case > set.budget {
                        eprintln!(
                            "time budget {:?} reached: skipping the remaining cases",
                            set.budget
                        );
                        skipped += 1;
                        break 'regimes;
                    }
                    let t = Instant::now();
                    match run_case(&tb, regime, method, round, &set) {
                        Ok(mut s) => {
                            let outside = num(&s, &["outside_cpu_pct"]).unwrap_or(0.0);
                            let disturbed = outside > DISTURBED_PCT;
                            let retry = disturbed && attempt == 0 && retries_left > 0;
                            eprintln!(
                                "[{} r{round}] {:<13} {:6.2} Gbit/s  crossed {:>10}  captured {:>10} ({:7.3} %)  capture CPU {:5.1} % of a core, {:.2} s total  others {:4.1} %  ({:.1} s){}",
                                regime.name(),
                                method.name(),
                                num(&s, &["gbit_per_s"]).unwrap_or(0.0),
                                s["packets_crossed"],
                                s.get("captured").cloned().unwrap_or(json!("-")),
                                100.0 * num(&s, &["captured_fraction"]).unwrap_or(0.0),
                                num(&s, &["capture_cpu", "window_pct_of_one_core"]).unwrap_or(0.0),
                                num(&s, &["capture_cpu", "total_seconds_cpu"]).unwrap_or(0.0),
                                outside,
                                t.elapsed().as_secs_f64(),
                                if retry {
                                    "  disturbed by other processes: repeated"
                                } else {
                                    ""
                                }
                            );
                            if let Some(v) = s.get("vtap") {
                                eprintln!("    vtap {v}");
                            }
                            if let Some(v) = s.get("tcpdump_stats") {
                                eprintln!("    tcpdump {v}; file {}", s["files"]);
                            }
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
                                method.name()
                            );
                            runs.push(json!({
                                "regime": regime.name(), "method": method.name(), "round": round,
                                "error": format!("{e:#}"),
                            }));
                        }
                    }
                    break;
                }
            }
        }
    }
    // Leave the path as the kernel set it.
    for (ns, dev, f) in &defaults {
        let _ = put_offloads(ns, dev, f);
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Capture on {TAP}: tcpdump vs vtap's pcap sink, iperf3 TCP VM1 -> VM2, {} s per case, {} round(s){}",
        set.seconds,
        set.rounds,
        if set.rounds > 1 { ", medians" } else { "" }
    );
    let mut summaries = serde_json::Map::new();
    for &regime in &set.regimes {
        let (s, t) = summarize(regime, &set.methods, &runs);
        summaries.insert(regime.name().into(), s);
        md.push_str(&t);
    }
    let (verdicts, tmd) = targets(&summaries);
    md.push_str(&tmd);
    let _ = writeln!(
        md,
        "\npackets on {TAP} = its rx + tx during the transfer (ip -s link); captured = packets in the tcpdump file, or vtap's written_packets once its writer caught up; capture CPU = utime + stime of the whole capturing process (/proc/PID/stat) during the transfer, as % of one core, and in seconds until it had handled everything; iperf3 pinned to {}; vtap ring {} MiB; tcpdump buffer {}; files on {}.",
        set.pin
            .map(|(c, s)| format!("CPU {c} (client) / {s} (server)"))
            .unwrap_or_else(|| "no CPU".into()),
        set.ring_mib
            .map(|m| m.to_string())
            .unwrap_or_else(|| "64 (default)".into()),
        set.tcpdump_buffer_kib
            .map(|k| format!("{k} KiB"))
            .unwrap_or_else(|| "default (2 MiB)".into()),
        if set.tmpfs {
            "a tmpfs (RAM)"
        } else {
            "the disk (the work directory)"
        },
    );
    let _ = writeln!(
        md,
        "\ntotal run time {:.0} s; {failures} failed, {skipped} skipped for time",
        started.elapsed().as_secs_f64()
    );

    let report = json!({
        "benchmark": "bench-capture",
        "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "kernel": shell("uname", &["-r"]),
        "cpus": cpu_count(),
        "iperf3": shell("iperf3", &["--version"]).lines().next().unwrap_or("").to_string(),
        "tcpdump": shell("sh", &["-c", "tcpdump --version 2>&1 | head -2"]),
        "git_head": shell("git", &["-C", &workspace_root().to_string_lossy(), "rev-parse", "HEAD"]),
        "vtap_binary": vtap_binary,
        "settings": {
            "seconds": set.seconds,
            "rounds": set.rounds,
            "regimes": set.regimes.iter().map(|r| r.name()).collect::<Vec<_>>(),
            "methods": method_names,
            "iperf3_cpu_pinning": set.pin.map(|(c, s)| json!({ "client_cpu": c, "server_cpu": s })),
            "capture_cpu": set.capture_cpu,
            "capture_ring_mib": set.ring_mib,
            "tcpdump_buffer_kib": set.tcpdump_buffer_kib,
            "budget_seconds": set.budget.as_secs(),
        },
        "testbed": tb.to_json(),
        "regimes": regime_info,
        "summary": summaries,
        "targets": verdicts,
        "runs": runs,
        "failures": failures,
        "skipped": skipped,
        "total_seconds": started.elapsed().as_secs_f64(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bench-capture-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn counts_pcap() {
        let mut b = Vec::new();
        b.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
        b.extend_from_slice(&[2, 0, 4, 0]);
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&256u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for (incl, orig) in [(60u32, 60u32), (256, 1514)] {
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&incl.to_le_bytes());
            b.extend_from_slice(&orig.to_le_bytes());
            b.extend(std::iter::repeat_n(0u8, incl as usize));
        }
        let p = tmp("a.pcap");
        std::fs::write(&p, &b).unwrap();
        let c = count_file(&p).unwrap();
        assert_eq!(
            (c.packets, c.cap_bytes, c.orig_bytes, c.max_caplen),
            (2, 316, 1574, 256)
        );
        assert!(!c.truncated);
        // Cut inside the last record.
        std::fs::write(&p, &b[..b.len() - 10]).unwrap();
        let c = count_file(&p).unwrap();
        assert_eq!(c.packets, 1);
        assert!(c.truncated);
    }

    #[test]
    fn counts_pcapng() {
        let mut b = Vec::new();
        // SHB: type, len 28, BOM, major 1, minor 0, section length -1, len.
        b.extend_from_slice(&0x0A0D_0D0Au32.to_le_bytes());
        b.extend_from_slice(&28u32.to_le_bytes());
        b.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        b.extend_from_slice(&[1, 0, 0, 0]);
        b.extend_from_slice(&[0xff; 8]);
        b.extend_from_slice(&28u32.to_le_bytes());
        // IDB: type 1, len 20, linktype 1, reserved, snaplen, len.
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&20u32.to_le_bytes());
        b.extend_from_slice(&[1, 0, 0, 0]);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&20u32.to_le_bytes());
        for (cap, orig) in [(60u32, 60u32), (62, 9000)] {
            let pad = cap.div_ceil(4) * 4;
            let len = 32 + pad;
            b.extend_from_slice(&6u32.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&[0; 12]);
            b.extend_from_slice(&cap.to_le_bytes());
            b.extend_from_slice(&orig.to_le_bytes());
            b.extend(std::iter::repeat_n(0u8, pad as usize));
            b.extend_from_slice(&len.to_le_bytes());
        }
        let p = tmp("a.pcapng");
        std::fs::write(&p, &b).unwrap();
        let c = count_file(&p).unwrap();
        assert_eq!(
            (c.packets, c.cap_bytes, c.orig_bytes, c.max_caplen),
            (2, 122, 9060, 62)
        );
        assert!(!c.truncated);
    }

    #[test]
    fn parses_methods() {
        assert_eq!(Method::parse("vtap-full").unwrap().snaplen, 0);
        assert_eq!(Method::parse("tcpdump-256").unwrap().tool, Tool::Tcpdump);
        assert_eq!(Method::parse("none").unwrap().name(), "none");
        assert!(Method::parse("vtap-10").is_err());
        assert!(Method::parse("foo-1").is_err());
    }
}
