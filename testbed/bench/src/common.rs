//! Helpers shared by the benchmark binaries (`bench-throughput`,
//! `bench-shaping`, `bench-capture`, `bench-api`, …).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use vtap_testbed::Testbed;
use vtap_testbed::cmd::{self, SHORT};

/// Set by the signal handler: stop at the next check.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

pub fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// nsfs inode numbers of the testbed's namespaces.
pub fn netns_inodes(tb: &Testbed) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    tb.namespaces()
        .iter()
        .filter_map(|ns| std::fs::metadata(format!("/run/netns/{ns}")).ok())
        .map(|m| m.ino())
        .collect()
}

pub fn shell(program: &str, args: &[&str]) -> String {
    cmd::run(Command::new(program).args(args), SHORT)
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_default()
}

pub fn tc(tb: &Testbed, args: &[&str]) -> Result<cmd::Output> {
    let mut c = Command::new("tc");
    c.arg("-n").arg(&tb.host_ns).args(args);
    cmd::run_ok(&mut c, SHORT)
}

/// The floor of a BPF tap: a minimal TC program,
/// `int prog(struct __sk_buff *skb) { BODY }`, compiled here with clang-19
/// and attached with cls_bpf direct-action on a clsact qdisc (added here) to
/// both directions of `dev` in the testbed's host namespace. BODY may use
/// `TC_ACT_UNSPEC` and the helpers `bpf_clone_redirect`,
/// `bpf_skb_vlan_push` and `bpf_skb_vlan_pop` (declared by number). Remove
/// it with `tc qdisc del dev DEV clsact`.
pub fn bare_bpf_add(tb: &Testbed, dev: &str, name: &str, body: &str) -> Result<()> {
    let dir = tb.path(&format!("bare-bpf-{name}"), "d");
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("bare.c");
    let obj = dir.join("bare.o");
    std::fs::write(
        &src,
        format!(
            "struct __sk_buff;\n\
             #define TC_ACT_UNSPEC (-1)\n\
             static long (*bpf_clone_redirect)(struct __sk_buff *skb, unsigned int ifindex, unsigned long long flags) = (void *)13;\n\
             static long (*bpf_skb_vlan_push)(struct __sk_buff *skb, unsigned short proto, unsigned short tci) = (void *)18;\n\
             static long (*bpf_skb_vlan_pop)(struct __sk_buff *skb) = (void *)19;\n\
             __attribute__((section(\"tc\"), used)) int prog(struct __sk_buff *skb) {{ {body} }}\n\
             char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n"
        ),
    )?;
    let o = std::process::Command::new("clang-19")
        .args([
            "-O2",
            "-Wall",
            "-Wno-unused-variable",
            "-target",
            "bpf",
            "-c",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()?;
    if !o.status.success() {
        bail!("clang-19: {}", String::from_utf8_lossy(&o.stderr));
    }
    let obj = obj.to_string_lossy().to_string();
    tc(tb, &["qdisc", "add", "dev", dev, "clsact"])?;
    for d in ["ingress", "egress"] {
        tc(
            tb,
            &[
                "filter", "add", "dev", dev, d, "bpf", "da", "obj", &obj, "sec", "tc",
            ],
        )?;
    }
    Ok(())
}

/// The ifindex of `dev` in the testbed's host namespace.
pub fn host_ifindex(tb: &Testbed, dev: &str) -> Result<u32> {
    let c = std::ffi::CString::new(dev)?;
    let i = vtap_testbed::netns::in_netns(&tb.host_ns, move || {
        // SAFETY: a valid NUL-terminated name.
        Ok(unsafe { libc::if_nametoindex(c.as_ptr()) })
    })?;
    if i == 0 {
        bail!("no interface {dev} in {}", tb.host_ns);
    }
    Ok(i)
}

pub fn workspace_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

// ---------------------------------------------------------------------------
// Added for `bench-capture` (usable by any benchmark): process and thread
// CPU time, link counters, offloads, a pinned iperf3 transfer, the CPU use
// of processes outside the testbed.

/// Clock ticks per second of `/proc/*/stat` times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// (comm, utime + stime ticks) of one `/proc/.../stat` file.
fn stat_comm_ticks(path: &Path) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let f: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    // Index 0 is field 3 (state): utime = field 14 -> 11, stime = 15 -> 12.
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((comm, ut + st))
}

/// utime + stime of a whole process (all its threads, living and ended),
/// in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    stat_comm_ticks(Path::new(&format!("/proc/{pid}/stat"))).map(|(_, t)| t as f64 / clock_ticks())
}

/// utime + stime of each living thread of a process, in seconds, keyed by
/// `comm/tid` (e.g. `vtap-pcap-ring/1234`).
pub fn thread_cpu_seconds(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return m;
    };
    for e in rd.flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        if let Some((comm, t)) = stat_comm_ticks(&e.path().join("stat")) {
            m.insert(format!("{comm}/{tid}"), t as f64 / clock_ticks());
        }
    }
    m
}

/// Per-thread CPU seconds between two [`thread_cpu_seconds`] readings,
/// summed by thread name (threads that appeared in between count from 0).
pub fn thread_cpu_delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        let name = k
            .rsplit_once('/')
            .map_or(k.as_str(), |(n, _)| n)
            .to_string();
        *m.entry(name).or_insert(0.0) += d;
    }
    m
}

/// `/proc/stat` jiffies: [machine, cpu0, cpu1, ...], each (busy, total).
pub fn cpu_busy_jiffies() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Busy % of each line of [`cpu_busy_jiffies`] between two readings.
pub fn cpu_busy_pct_between(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if y.1 > x.1 {
                100.0 * y.0.saturating_sub(x.0) as f64 / (y.1 - x.1) as f64
            } else {
                0.0
            }
        })
        .collect()
}

/// utime + stime ticks of user-space processes that are not in the given
/// network namespaces (see [`netns_inodes`]) and are not this process:
/// other people's work competing with the measurement. Kernel threads are
/// left out (ksoftirqd does the packets' work).
pub fn outside_cpu_ticks(ours: &[u64]) -> u64 {
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

/// Waits (at most `bound`) until processes outside the testbed use less
/// than `max_pct` % of the machine over half a second. Returns (seconds
/// waited, last level in %).
pub fn wait_for_quiet(ours: &[u64], max_pct: f64, bound: std::time::Duration) -> (f64, f64) {
    let t0 = std::time::Instant::now();
    loop {
        let a = outside_cpu_ticks(ours);
        let w = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let b = outside_cpu_ticks(ours);
        let p = 100.0 * b.saturating_sub(a) as f64
            / clock_ticks()
            / (w.elapsed().as_secs_f64() * cpu_count() as f64);
        if p < max_pct || t0.elapsed() >= bound || INTERRUPTED.load(Ordering::SeqCst) {
            return (t0.elapsed().as_secs_f64(), p);
        }
    }
}

/// Packet and byte counters of one device.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
}

impl LinkCounters {
    pub fn delta(&self, after: &LinkCounters) -> LinkCounters {
        LinkCounters {
            rx_packets: after.rx_packets.saturating_sub(self.rx_packets),
            rx_bytes: after.rx_bytes.saturating_sub(self.rx_bytes),
            rx_dropped: after.rx_dropped.saturating_sub(self.rx_dropped),
            tx_packets: after.tx_packets.saturating_sub(self.tx_packets),
            tx_bytes: after.tx_bytes.saturating_sub(self.tx_bytes),
            tx_dropped: after.tx_dropped.saturating_sub(self.tx_dropped),
        }
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes, "rx_dropped": self.rx_dropped,
            "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes, "tx_dropped": self.tx_dropped,
        })
    }
}

/// `ip -n NS -s -j link show dev DEV` (sysfs would show the caller's
/// namespace).
pub fn link_counters(ns: &str, dev: &str) -> Result<LinkCounters> {
    let out = cmd::ip(Some(ns), &["-s", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout).context("ip -j link output")?;
    let s = &v[0]["stats64"];
    let g = |a: &str, b: &str| s[a][b].as_u64().unwrap_or(0);
    Ok(LinkCounters {
        rx_packets: g("rx", "packets"),
        rx_bytes: g("rx", "bytes"),
        rx_dropped: g("rx", "dropped"),
        tx_packets: g("tx", "packets"),
        tx_bytes: g("tx", "bytes"),
        tx_dropped: g("tx", "dropped"),
    })
}

/// ethtool feature names of the offloads that make TC see GSO super-packets.
pub const SEGMENTATION_OFFLOADS: [(&str, &str); 3] = [
    ("tso", "tcp-segmentation-offload"),
    ("gso", "generic-segmentation-offload"),
    ("gro", "generic-receive-offload"),
];

/// (short name, on) of tso/gso/gro of `dev` in `ns` (`ethtool -k`).
pub fn get_offloads(ns: &str, dev: &str) -> Result<Vec<(&'static str, bool)>> {
    let out = cmd::ns_run_ok(ns, "ethtool", &["-k", dev], SHORT)?;
    SEGMENTATION_OFFLOADS
        .iter()
        .map(|(short, long)| {
            let line = out
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{long}:")))
                .ok_or_else(|| anyhow::anyhow!("ethtool -k {dev}: no {long}"))?;
            Ok((*short, line.contains(": on")))
        })
        .collect()
}

/// `ethtool -K dev f on|off ...` in `ns`.
pub fn put_offloads(ns: &str, dev: &str, want: &[(&str, bool)]) -> Result<()> {
    let mut args = vec!["-K".to_string(), dev.to_string()];
    for (f, on) in want {
        args.push(f.to_string());
        args.push(if *on { "on" } else { "off" }.into());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    cmd::ns_run_ok(ns, "ethtool", &a, SHORT)?;
    Ok(())
}

/// The four ends of the VM-to-VM path, (namespace, device): each VM's
/// `eth0` and its tap in the host namespace.
pub fn vm_path_ends(tb: &Testbed) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for vm in &tb.vms {
        v.push((vm.ns.clone(), vm.ifname.clone()));
        v.push((tb.host_ns.clone(), vm.tap.clone()));
    }
    v
}

/// Result of one iperf3 TCP transfer.
#[derive(Debug, Clone, Default)]
pub struct IperfResult {
    pub bps_received: f64,
    pub bps_sent: f64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub cpu_client_pct: f64,
    pub cpu_server_pct: f64,
    /// Sender-side Gbit/s of each 1-s interval.
    pub intervals_gbit: Vec<f64>,
    pub wall_seconds: f64,
}

impl IperfResult {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bits_per_second_received": self.bps_received,
            "bits_per_second_sent": self.bps_sent,
            "bytes_received": self.bytes_received,
            "retransmits": self.retransmits,
            "cpu_client_pct": self.cpu_client_pct,
            "cpu_server_pct": self.cpu_server_pct,
            "interval_gbit_per_s": self.intervals_gbit,
            "wall_seconds": self.wall_seconds,
        })
    }
}

/// Parses `iperf3 -J` output of the client.
pub fn parse_iperf3_json(text: &str) -> Result<IperfResult> {
    let v: serde_json::Value =
        serde_json::from_str(text).context("iperf3 -J output is not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("iperf3 JSON has no end.sum_received.bits_per_second"))?;
    Ok(IperfResult {
        bps_received: bps,
        bps_sent: end["sum_sent"]["bits_per_second"].as_f64().unwrap_or(0.0),
        bytes_received: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        cpu_client_pct: end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(0.0),
        cpu_server_pct: end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(0.0),
        intervals_gbit: v["intervals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
            .map(|b| b / 1e9)
            .collect(),
        wall_seconds: 0.0,
    })
}

/// One bounded iperf3 TCP transfer VM1 -> VM2 of `seconds` (a one-off
/// server on `port` in VM2), client and server pinned with `taskset` to
/// `pin = (client CPU, server CPU)` if given.
pub fn iperf3_vm1_to_vm2(
    tb: &Testbed,
    seconds: u64,
    pin: Option<(usize, usize)>,
    port: u16,
) -> Result<IperfResult> {
    let (vm1, vm2) = (tb.vm(1), tb.vm(2));
    let port_s = port.to_string();
    let mut server_args: Vec<String> = Vec::new();
    if let Some((_, cpu)) = pin {
        server_args.extend(["-c".into(), cpu.to_string(), "iperf3".into()]);
    }
    server_args.extend(["-s".into(), "-1".into(), "-p".into(), port_s.clone()]);
    let sa: Vec<&str> = server_args.iter().map(|s| s.as_str()).collect();
    let mut server = tb.spawn(
        &vm2.ns,
        if pin.is_some() { "taskset" } else { "iperf3" },
        &sa,
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let o = cmd::ns_run_ok(
            &vm2.ns,
            "ss",
            &["-Hltn", &format!("sport = :{port}")],
            SHORT,
        )?;
        if !o.stdout.trim().is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("iperf3 server in {} not listening after 5 s", vm2.ns);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut c = match pin {
        Some((cpu, _)) => {
            let mut c = cmd::ns_command(&vm1.ns, "taskset");
            c.args(["-c", &cpu.to_string(), "iperf3"]);
            c
        }
        None => cmd::ns_command(&vm1.ns, "iperf3"),
    };
    let t = seconds.to_string();
    let dst = vm2.ipv4.to_string();
    c.args([
        "-c",
        &dst,
        "-p",
        &port_s,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    let t0 = std::time::Instant::now();
    let out = cmd::run(&mut c, std::time::Duration::from_secs(seconds + 20))?;
    let wall = t0.elapsed().as_secs_f64();
    let mut r = parse_iperf3_json(&out.stdout).with_context(|| {
        format!(
            "iperf3 client (exit {}): stderr {:?}",
            out.status,
            out.stderr.trim()
        )
    })?;
    r.wall_seconds = wall;
    let _ = server.wait_timeout(std::time::Duration::from_secs(3));
    Ok(r)
}

/// Context switches (voluntary, involuntary) of each living thread of a
/// process, keyed like [`thread_cpu_seconds`]. Voluntary switches are the
/// thread's sleeps: one per wake-up.
pub fn thread_ctx_switches(pid: u32) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return m;
    };
    for e in rd.flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        let Ok(st) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        let name = field("Name:");
        let vol = field("voluntary_ctxt_switches:").parse().unwrap_or(0);
        let invol = field("nonvoluntary_ctxt_switches:").parse().unwrap_or(0);
        m.insert(format!("{name}/{tid}"), (vol, invol));
    }
    m
}

/// [`thread_ctx_switches`] deltas summed by thread name, as JSON
/// `{name: {voluntary, involuntary}}`.
pub fn thread_ctx_delta(
    before: &std::collections::BTreeMap<String, (u64, u64)>,
    after: &std::collections::BTreeMap<String, (u64, u64)>,
) -> serde_json::Value {
    let mut m: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
    for (k, (v, i)) in after {
        let (bv, bi) = before.get(k).copied().unwrap_or((0, 0));
        let name = k
            .rsplit_once('/')
            .map_or(k.as_str(), |(n, _)| n)
            .to_string();
        let e = m.entry(name).or_insert((0, 0));
        e.0 += v.saturating_sub(bv);
        e.1 += i.saturating_sub(bi);
    }
    serde_json::Value::Object(
        m.into_iter()
            .map(|(k, (v, i))| (k, serde_json::json!({ "voluntary": v, "involuntary": i })))
            .collect(),
    )
}

/// Per-CPU counts of the architecture's named interrupts in
/// `/proc/interrupts` (`IWI` irq work, `RES` rescheduling IPIs, `CAL`
/// function-call IPIs, `LOC` local timer, ...): name -> [cpu0, cpu1, ...].
pub fn named_interrupts() -> std::collections::BTreeMap<String, Vec<u64>> {
    let ncpu = cpu_count();
    std::fs::read_to_string("/proc/interrupts")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (name, rest) = l.trim_start().split_once(':')?;
            if !name.chars().all(|c| c.is_ascii_uppercase()) {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .take(ncpu)
                .map_while(|x| x.parse().ok())
                .collect();
            (v.len() == ncpu).then(|| (name.to_string(), v))
        })
        .collect()
}

/// Differences of two [`named_interrupts`] readings (rows that changed).
pub fn named_interrupts_delta(
    a: &std::collections::BTreeMap<String, Vec<u64>>,
    b: &std::collections::BTreeMap<String, Vec<u64>>,
) -> serde_json::Value {
    serde_json::Value::Object(
        b.iter()
            .filter_map(|(k, vb)| {
                let va = a.get(k)?;
                let d: Vec<u64> = vb
                    .iter()
                    .zip(va)
                    .map(|(x, y)| x.saturating_sub(*y))
                    .collect();
                d.iter()
                    .any(|x| *x > 0)
                    .then(|| (k.clone(), serde_json::json!(d)))
            })
            .collect(),
    )
}

/// VTAP_BIN, else target/release/vtap, else the debug build (with a
/// warning); exported as VTAP_BIN for the testbed library.
pub fn choose_vtap_bin() -> Result<PathBuf> {
    if std::env::var_os("VTAP_BIN").is_none() {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let release = target.join("release").join("vtap");
        let chosen = if release.exists() {
            release
        } else {
            eprintln!("WARNING: target/release/vtap missing: using the debug build");
            target.join("debug").join("vtap")
        };
        // SAFETY: called first thing in main, before any thread exists.
        unsafe { std::env::set_var("VTAP_BIN", &chosen) };
    }
    let bin = vtap_testbed::vtap_bin();
    if !bin.exists() {
        bail!(
            "vtap binary not found at {} (cargo build --release -p vtap)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The newest modification time of a file under `dir` (skipping `target`
/// and `.git`), with its path.
fn newest_mtime(dir: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            if p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                continue;
            }
            newest_mtime(&p, newest);
        } else if let Ok(m) = md.modified()
            && newest.as_ref().is_none_or(|(t, _)| m > *t)
        {
            *newest = Some((m, p));
        }
    }
}

/// A description of the vtap binary [`choose_vtap_bin`] chose, for a
/// benchmark's JSON: path, release or not, modification time, and the
/// newest source file under `vtap/` and `ebpf/` when the binary is older
/// (warned about on stderr).
pub fn describe_vtap_bin(bin: &Path) -> Result<serde_json::Value> {
    let mtime = std::fs::metadata(bin)?.modified()?;
    let mut newest = None;
    for d in ["vtap", "ebpf"] {
        newest_mtime(&workspace_root().join(d), &mut newest);
    }
    let stale = newest
        .as_ref()
        .filter(|(t, _)| *t > mtime)
        .map(|(_, p)| p.clone());
    if let Some(p) = &stale {
        eprintln!(
            "WARNING: {} is older than {} — rebuild with `cargo build --release -p vtap`",
            bin.display(),
            p.display()
        );
    }
    let release = bin.components().any(|c| c.as_os_str() == "release");
    Ok(serde_json::json!({
        "path": bin.canonicalize().unwrap_or(bin.to_path_buf()),
        "release": release,
        "modified_unix": mtime
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "older_than_source": stale,
        "note": (!release).then_some("not a release build"),
    }))
}

/// `taskset -a -p -c CPU PID`: every thread of the process on one CPU.
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    cmd::run_ok(
        std::process::Command::new("taskset").args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &pid.to_string(),
        ]),
        cmd::SHORT,
    )?;
    Ok(())
}
