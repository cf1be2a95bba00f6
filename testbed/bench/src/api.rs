//! The REST control plane under load: how fast a policy change reaches the
//! wire, and how many requests the API serves while mirroring goes on.
//!
//! One testbed (2 VMs, monitor `mon0`), the real daemon in the host
//! namespace, a paced UDP flow from VM1 to a receiver in VM2 (so it crosses
//! `vm1-tap`), and one policy `p` mirroring it to `mon0` with a VLAN.
//!
//! 1. **Policy-update latency.** `BENCH_UPDATES` times (default 200) the
//!    VLAN of `p` is changed with `PUT /api/v1/policies/p`; a raw AF_PACKET
//!    socket on the monitor's `eth0` (in the monitor namespace; kernel
//!    receive timestamps `SO_TIMESTAMPNS`, VLAN from `PACKET_AUXDATA`)
//!    finds the first copy with the new VID. Reported: median / p99 / max
//!    of (first new copy − PUT response received) — negative when the copy
//!    was on the wire before the client had read the response, which is
//!    the point of applying before answering — and of (first new copy − PUT
//!    request sent), and the PUT round trip. Copies with the old VID after
//!    the response are counted (must be 0). The flow's rate bounds the
//!    resolution (`BENCH_PPS`, default 5000 datagrams/s: 0.2 ms).
//! 2. **REST throughput under load.** `wrk -t2 -c4 -d10s --latency` against
//!    `GET /api/v1/stats` (in the host namespace) while the flow is
//!    mirrored; requests/s and latency percentiles, and
//!    `vtap_policy_mirrored_packets_total{policy="p"}` sampled every second
//!    during the run, which must keep increasing.
//!
//! `cargo build --release -p vtap && sudo cargo run --release -p vtap-bench --bin bench-api -- [OUT.json]`
//!
//! Default output `testbed/out/bench-api.json` (JSON, with the Markdown table
//! in `markdown`); the table is printed too. Knobs: `BENCH_UPDATES`,
//! `BENCH_PPS`, `BENCH_WRK_SECONDS` (10), `BENCH_WRK_CONNECTIONS` (4),
//! `VTAP_BIN` (default `target/release/vtap`, falling back to debug).
//! Everything is bounded: the flow stops after at most 10 minutes, each
//! update waits at most 2 s for its first copy, wrk has a hard timeout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use vtap_testbed::netns::{in_netns, spawn_in_netns};
use vtap_testbed::{Metrics, Options, Testbed, UdpFlow, cmd};

const POLICY: &str = "p";
const MIRRORED: &str = "vtap_policy_mirrored_packets_total";

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

// ------------------------------------------------------------------ HTTP

struct Resp {
    status: u16,
    body: String,
    sent_ns: u64,
    recv_ns: u64,
}

/// One HTTP/1.1 request from inside `ns`; times taken around the exchange
/// inside the namespace thread.
fn http(ns: &str, addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Result<Resp> {
    let req = match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    };
    let (raw, sent_ns, recv_ns) = in_netns(ns, move || -> Result<(Vec<u8>, u64, u64)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.set_nodelay(true)?;
        let t0 = now_ns();
        s.write_all(req.as_bytes())?;
        let mut v = Vec::new();
        s.read_to_end(&mut v)?;
        Ok((v, t0, now_ns()))
    })
    .with_context(|| format!("{method} {path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("{method} {path}: chunked response not expected");
    }
    Ok(Resp {
        status,
        body: String::from_utf8_lossy(&raw[split + 4..]).into_owned(),
        sent_ns,
        recv_ns,
    })
}

fn policy_body(vlan: u16) -> String {
    json!({
        "version": 1, "name": POLICY, "priority": 100, "enabled": true,
        "taps": ["vm1-tap"], "direction": "ingress",
        "match": {"protocol": "udp"},
        "outputs": [{"interface": "mon0", "vlan": vlan}],
    })
    .to_string()
}

// ------------------------------------------------------------------ traffic

// ------------------------------------------------------------------ monitor

const SOL_PACKET: libc::c_int = 263;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_STATISTICS: libc::c_int = 6;
const SO_TIMESTAMPNS: libc::c_int = 35; // == SCM_TIMESTAMPNS
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const ETH_P_ALL: u16 = 0x0003;

/// Copies seen on the monitor: (kernel receive time ns, outermost VID or 0).
type Seen = Arc<Mutex<Vec<(u64, u16)>>>;

struct MonitorReader {
    stop: Arc<AtomicBool>,
    seen: Seen,
    handle: JoinHandle<Result<(u64, u64)>>,
}

impl MonitorReader {
    /// A raw AF_PACKET socket on `ifname` inside `ns`.
    fn start(ns: &str, ifname: &str) -> Result<MonitorReader> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Seen = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
        let (st, sn) = (stop.clone(), seen.clone());
        let ifname = std::ffi::CString::new(ifname)?;
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let handle = spawn_in_netns(ns, move || -> Result<(u64, u64)> {
            let fd = match open_packet_socket(&ifname) {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let r = read_loop(fd, &st, &sn);
            let stats = packet_stats(fd);
            // SAFETY: closing the fd this thread opened.
            unsafe { libc::close(fd) };
            r?;
            Ok(stats)
        })?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("monitor socket did not open"))??;
        Ok(MonitorReader { stop, seen, handle })
    }

    /// Stops; returns (packets, drops) of the socket's PACKET_STATISTICS.
    fn stop(self) -> Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow!("monitor reader panicked"))?
    }
}

fn open_packet_socket(ifname: &std::ffi::CStr) -> Result<libc::c_int> {
    // SAFETY: plain socket calls with valid, owned arguments.
    unsafe {
        let idx = libc::if_nametoindex(ifname.as_ptr());
        if idx == 0 {
            bail!("no interface {ifname:?}");
        }
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            ETH_P_ALL.to_be() as libc::c_int,
        );
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let ptr = &one as *const libc::c_int as *const libc::c_void;
        let buf: libc::c_int = 16 << 20;
        let bufp = &buf as *const libc::c_int as *const libc::c_void;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        let checks = [
            libc::setsockopt(fd, SOL_PACKET, PACKET_AUXDATA, ptr, sz),
            libc::setsockopt(fd, libc::SOL_SOCKET, SO_TIMESTAMPNS, ptr, sz),
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bufp, sz),
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ),
        ];
        if checks.iter().any(|r| *r != 0) {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("setsockopt on the monitor socket: {e}");
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = idx as i32;
        if libc::bind(
            fd,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("bind AF_PACKET: {e}");
        }
        // Drop what queued before the bind took effect.
        let mut scratch = [0u8; 64];
        while libc::recv(
            fd,
            scratch.as_mut_ptr() as *mut libc::c_void,
            64,
            libc::MSG_DONTWAIT,
        ) > 0
        {}
        let _ = packet_stats(fd); // reading resets the counters
        Ok(fd)
    }
}

fn packet_stats(fd: libc::c_int) -> (u64, u64) {
    let mut st = [0u32; 2];
    let mut len = 8 as libc::socklen_t;
    // SAFETY: getsockopt into an 8-byte buffer (struct tpacket_stats).
    let r = unsafe {
        libc::getsockopt(
            fd,
            SOL_PACKET,
            PACKET_STATISTICS,
            st.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 {
        (st[0] as u64, st[1] as u64)
    } else {
        (0, 0)
    }
}

fn read_loop(fd: libc::c_int, stop: &AtomicBool, seen: &Seen) -> Result<()> {
    let mut data = [0u8; 128];
    let mut control = [0u64; 64]; // 512 bytes, 8-aligned for cmsghdr
    while !stop.load(Ordering::Relaxed) {
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: msghdr over stack buffers that outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: see above.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted => continue,
                _ => bail!("recvmsg on the monitor: {e}"),
            }
        }
        let n = (n as usize).min(data.len());
        let mut ts = 0u64;
        let mut vid: Option<u16> = None;
        // SAFETY: walking the control messages the kernel just wrote.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let d = libc::CMSG_DATA(c);
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SO_TIMESTAMPNS {
                    let t = std::ptr::read_unaligned(d as *const libc::timespec);
                    ts = t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
                } else if (*c).cmsg_level == SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                    // struct tpacket_auxdata: status u32, len u32, snaplen u32,
                    // mac u16, net u16, vlan_tci u16, vlan_tpid u16.
                    let status = std::ptr::read_unaligned(d as *const u32);
                    let tci = std::ptr::read_unaligned(d.add(16) as *const u16);
                    if status & TP_STATUS_VLAN_VALID != 0 {
                        vid = Some(tci & 0x0fff);
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if vid.is_none() && n >= 16 && data[12] == 0x81 && data[13] == 0x00 {
            vid = Some(u16::from_be_bytes([data[14], data[15]]) & 0x0fff);
        }
        if ts == 0 {
            ts = now_ns();
        }
        seen.lock().unwrap().push((ts, vid.unwrap_or(0)));
    }
    Ok(())
}

// ------------------------------------------------------------------ stats

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "n": v.len(),
        "min": v.first().copied().unwrap_or(f64::NAN),
        "median": percentile(&v, 50.0),
        "p90": percentile(&v, 90.0),
        "p99": percentile(&v, 99.0),
        "max": v.last().copied().unwrap_or(f64::NAN),
    })
}

/// `1.23ms` / `456.00us` / `1.10s` -> milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    for (suf, mul) in [("us", 1e-3), ("ms", 1.0), ("m", 60_000.0), ("s", 1000.0)] {
        if let Some(x) = s.strip_suffix(suf) {
            return x.parse::<f64>().ok().map(|v| v * mul);
        }
    }
    None
}

fn parse_wrk(out: &str) -> Value {
    let mut lat = serde_json::Map::new();
    let mut in_dist = false;
    let mut rps = None;
    let mut requests = None;
    let mut non2xx = 0u64;
    let mut socket_errors = None;
    let mut avg = None;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            let mut it = t.split_whitespace();
            match (it.next(), it.next()) {
                (Some(p), Some(v)) if p.ends_with('%') => {
                    if let Some(ms) = wrk_ms(v) {
                        lat.insert(format!("p{}", p.trim_end_matches('%')), json!(ms));
                    }
                    continue;
                }
                _ => in_dist = false,
            }
        }
        if let Some(r) = t.strip_prefix("Requests/sec:") {
            rps = r.trim().parse::<f64>().ok();
        } else if t.starts_with("Latency") {
            avg = t.split_whitespace().nth(1).and_then(wrk_ms);
        } else if t.contains("requests in") {
            requests = t
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok());
        } else if let Some(r) = t.strip_prefix("Non-2xx or 3xx responses:") {
            non2xx = r.trim().parse().unwrap_or(u64::MAX);
        } else if t.starts_with("Socket errors:") {
            socket_errors = Some(t.to_string());
        }
    }
    json!({"requests_per_s": rps, "requests": requests, "latency_avg_ms": avg, "latency_ms": lat,
           "non_2xx": non2xx, "socket_errors": socket_errors})
}

// ------------------------------------------------------------------ main

fn main() -> Result<()> {
    let out_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "testbed/out/bench-api.json".into());
    if out_path == "-h" || out_path == "--help" {
        println!(
            "usage: bench-api [OUT.json]   (root; env BENCH_UPDATES, BENCH_PPS, BENCH_WRK_SECONDS, BENCH_WRK_CONNECTIONS, VTAP_BIN)"
        );
        return Ok(());
    }
    if !vtap_testbed::is_root() {
        bail!("bench-api needs root (network namespaces, eBPF)");
    }
    let updates: usize = env_num("BENCH_UPDATES", 200);
    let pps: u32 = env_num("BENCH_PPS", 5000);
    let wrk_secs: u64 = env_num("BENCH_WRK_SECONDS", 10);
    let wrk_conns: u32 = env_num("BENCH_WRK_CONNECTIONS", 4);
    let binary = common::describe_vtap_bin(&common::choose_vtap_bin()?)?;
    let has_wrk = Command::new("sh")
        .args(["-c", "command -v wrk"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_wrk {
        bail!("wrk is not installed (scripts/install-deps.sh installs it: apt-get install wrk)");
    }
    let started = Instant::now();

    let tb = Testbed::new(Options::default().vms(2))?;
    let d = tb.start_daemon(&[])?;
    let ns = tb.host_ns.clone();
    let addr = d.addr;
    let mut vlan: u16 = 100;
    let r = http(
        &ns,
        addr,
        "PUT",
        "/api/v1/policies/p",
        Some(&policy_body(vlan)),
    )?;
    if r.status != 201 {
        bail!("creating policy p: {} {}", r.status, r.body);
    }
    let flow = UdpFlow::start(
        &tb,
        1,
        2,
        7100,
        Duration::from_secs_f64(1.0 / pps.max(1) as f64),
        Duration::from_secs(600),
    )?;
    let mon = MonitorReader::start(&tb.monitor(0).ns, &tb.monitor(0).ifname)?;
    std::thread::sleep(Duration::from_millis(300));

    // 1. Policy-update latency.
    let mut from_resp = Vec::new();
    let mut from_req = Vec::new();
    let mut rtt = Vec::new();
    let mut stale_after_response = 0u64;
    let mut missed = 0usize;
    let mut cursor = 0usize;
    for i in 0..updates {
        let old = vlan;
        vlan = 100 + ((i as u16 + 1) % 7);
        if vlan == old {
            vlan = 100 + ((vlan - 100 + 1) % 7);
        }
        let r = http(
            &ns,
            addr,
            "PUT",
            "/api/v1/policies/p",
            Some(&policy_body(vlan)),
        )?;
        if r.status != 200 {
            bail!("update {i}: PUT p vlan {vlan}: {} {}", r.status, r.body);
        }
        rtt.push((r.recv_ns - r.sent_ns) as f64 / 1e6);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut first = None;
        while first.is_none() && Instant::now() < deadline {
            {
                let seen = mon.seen.lock().unwrap();
                for &(ts, vid) in &seen[cursor..] {
                    if vid == vlan && ts >= r.sent_ns {
                        first = Some(ts);
                        break;
                    }
                }
            }
            if first.is_none() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        match first {
            Some(ts) => {
                from_resp.push((ts as f64 - r.recv_ns as f64) / 1e6);
                from_req.push((ts as f64 - r.sent_ns as f64) / 1e6);
            }
            None => missed += 1,
        }
        // Let a few ms of copies arrive, then count old-VID copies stamped
        // after the response and move the cursor past this update.
        std::thread::sleep(Duration::from_millis(10));
        let seen = mon.seen.lock().unwrap();
        stale_after_response += seen[cursor..]
            .iter()
            .filter(|(ts, vid)| *vid == old && *ts > r.recv_ns)
            .count() as u64;
        cursor = seen.len();
    }
    let latency_done = started.elapsed();

    // 2. REST throughput under load.
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let (ss, sns) = (sampler_stop.clone(), ns.clone());
    let sampler = std::thread::spawn(move || -> Vec<(f64, f64)> {
        let t0 = Instant::now();
        let mut v = Vec::new();
        while !ss.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(wrk_secs + 30) {
            if let Ok(r) = http(&sns, addr, "GET", "/metrics", None)
                && r.status == 200
                && let Ok(m) = Metrics::parse(&r.body)
            {
                v.push((
                    t0.elapsed().as_secs_f64(),
                    m.sum(MIRRORED, &[("policy", POLICY)]),
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        v
    });
    let url = format!("http://{addr}/api/v1/stats");
    let mut c = cmd::ns_command(&ns, "wrk");
    c.args([
        "-t2",
        &format!("-c{wrk_conns}"),
        &format!("-d{wrk_secs}s"),
        "--latency",
        "--timeout",
        "5s",
        &url,
    ]);
    let wrk_out = cmd::run(&mut c, Duration::from_secs(wrk_secs + 60))?;
    sampler_stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().map_err(|_| anyhow!("sampler panicked"))?;
    if !wrk_out.success() {
        bail!("wrk failed: {}{}", wrk_out.stdout, wrk_out.stderr);
    }
    let wrk = parse_wrk(&wrk_out.stdout);

    let (mon_packets, mon_drops) = mon.stop()?;
    let (sent, received) = flow.stop()?;
    let m = d.metrics()?;
    let flips = m
        .get("vtap_policy_generation_flips_total", &[])?
        .unwrap_or(0.0);
    d.stop()?;
    drop(tb);

    let increasing = samples.windows(2).all(|w| w[1].1 > w[0].1);
    let mirrored_delta = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b.1 - a.1,
        _ => 0.0,
    };
    let lat = summary(from_resp.clone());
    let lat_req = summary(from_req.clone());
    let rtt_s = summary(rtt.clone());
    let g = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let wl = &wrk["latency_ms"];
    let target_met = g(&lat, "median") <= 10.0 && missed == 0;
    let mut md = String::new();
    md.push_str(&format!(
        "bench-api: {} policy updates over REST under {pps} datagrams/s mirrored (resolution {:.2} ms); vtap binary {}\n\n",
        updates,
        1000.0 / pps as f64,
        binary["path"].as_str().unwrap_or("?")
    ));
    md.push_str("| measure | median | p90 | p99 | max | n |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, s) in [
        ("first copy with the new VLAN − PUT response (ms)", &lat),
        (
            "first copy with the new VLAN − PUT request sent (ms)",
            &lat_req,
        ),
        ("PUT round trip (ms)", &rtt_s),
    ] {
        md.push_str(&format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {} |\n",
            g(s, "median"),
            g(s, "p90"),
            g(s, "p99"),
            g(s, "max"),
            s["n"]
        ));
    }
    md.push_str(&format!(
        "\nTarget median ≤ 10 ms (from the response): {}. Updates without a new copy within 2 s: {missed}. \
         Copies with the old VLAN stamped after the response: {stale_after_response}. Monitor socket: {mon_packets} packets, {mon_drops} dropped. \
         UDP sent {sent}, received {received}. Generation flips: {flips}.\n\n",
        if target_met { "met" } else { "NOT met" }
    ));
    md.push_str(&format!(
        "| wrk GET /api/v1/stats ({wrk_secs} s, 2 threads, {wrk_conns} connections) | requests/s | p50 ms | p75 ms | p90 ms | p99 ms | non-2xx |\n|---|---:|---:|---:|---:|---:|---:|\n| while mirroring | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
        g(&wrk, "requests_per_s"),
        g(wl, "p50"),
        g(wl, "p75"),
        g(wl, "p90"),
        g(wl, "p99"),
        wrk["non_2xx"]
    ));
    md.push_str(&format!(
        "\n{MIRRORED}{{policy=\"p\"}} during the wrk run (every ~1 s): {} — {} (+{mirrored_delta:.0})\n",
        samples.iter().map(|(_, v)| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
        if increasing && samples.len() >= 2 { "kept increasing" } else { "DID NOT keep increasing" }
    ));
    println!("{md}");

    let result = json!({
        "benchmark": "bench-api",
        "binary": binary,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "updates": updates,
        "pps": pps,
        "update_latency_ms": {
            "from_response": lat,
            "from_request": lat_req,
            "put_round_trip": rtt_s,
            "target_median_ms": 10.0,
            "target_met": target_met,
            "missed": missed,
            "old_vlan_copies_after_response": stale_after_response,
            "raw_from_response": from_resp,
        },
        "monitor_socket": {"packets": mon_packets, "drops": mon_drops},
        "udp": {"sent": sent, "received": received},
        "generation_flips": flips,
        "wrk": {
            "url": "/api/v1/stats", "seconds": wrk_secs, "threads": 2, "connections": wrk_conns,
            "result": wrk, "raw": wrk_out.stdout,
        },
        "mirrored_during_wrk": {
            "samples": samples.iter().map(|(t, v)| json!({"t_s": t, "value": v})).collect::<Vec<_>>(),
            "kept_increasing": increasing && samples.len() >= 2,
            "delta": mirrored_delta,
        },
        "durations_s": {"latency_phase": latency_done.as_secs_f64(), "total": started.elapsed().as_secs_f64()},
        "markdown": md,
    });
    if let Some(dir) = std::path::Path::new(&out_path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&result)? + "\n")?;
    println!(
        "wrote {out_path} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if missed > 0 || !(increasing && samples.len() >= 2) || wrk["non_2xx"] != json!(0) {
        bail!("bench-api: a check failed (see the table above)");
    }
    Ok(())
}
