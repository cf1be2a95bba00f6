//! End-to-end tests of shaping (issue 7) in namespace VMs: the real `vtap
//! daemon`, real TCX programs on `vm1-tap`, UDP floods from VM1 to VM2, and
//! the copies the monitor receives.
//!
//! - a 1,000 pps limit gives 1,000 ± 10 % copies per second over a 5 s
//!   flood of 20,000 pps; the rest is counted as `rate_limited`;
//! - a bit rate limit likewise, in bits;
//! - two senders on both CPUs at once still get 1,000 copies/s between them;
//! - 1-in-N sampling and a limit together: sampled + rate_limited + mirrored
//!   = matched, exactly, in `/metrics` and `/api/v1/stats`;
//! - `sample_by: flow` mirrors whole request/response flows or nothing;
//! - in every test the receiving VM gets every packet that was sent.
//!
//! Root is needed; without it the tests print `skipping: needs root`, except
//! under `CI=true` where they fail. Bounded: each flood lasts 5 s at a fixed
//! rate, between namespaces the test creates.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test shaping_e2e`

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use vtap_testbed::capture::IPPROTO_UDP;
use vtap_testbed::netns::spawn_in_netns;
use vtap_testbed::{Captured, Daemon, Metrics, Options, Testbed, Udp, require_root};

const MIRRORED: &str = "vtap_policy_mirrored_packets_total";
const MATCHED: &str = "vtap_policy_matched_packets_total";
const DROPPED: &str = "vtap_policy_dropped_copies_total";

/// Flood length and rate: 20 times the 1,000 pps limit.
const FLOOD: Duration = Duration::from_secs(5);
const FLOOD_PPS: u64 = 20_000;

fn testbed(test: &str) -> Option<Testbed> {
    if !require_root(test) {
        return None;
    }
    Some(
        Testbed::new(Options::default().vms(2))
            .unwrap_or_else(|e| panic!("{test}: cannot build testbed: {e:#}")),
    )
}

/// A policy on vm1-tap (traffic from VM1) selecting UDP to `port`, output
/// mon0 VLAN `vlan`, with `shaping` (YAML lines).
fn policy(name: &str, port: u16, vlan: u16, shaping: &str) -> String {
    format!(
        "version: 1\nname: {name}\ntaps: [vm1-tap]\ndirection: ingress\nmatch:\n  protocol: udp\n  dst_ports: [{port}]\n{shaping}outputs:\n  - interface: mon0\n    vlan: {vlan}\n"
    )
}

/// What one sender did.
#[derive(Debug, Clone, Copy)]
struct Sent {
    packets: u64,
    start: Instant,
    end: Instant,
}

/// Starts a paced UDP sender in VM1 to VM2:`port`: [`FLOOD_PPS`] datagrams
/// per second of `payload` bytes for [`FLOOD`], on CPU `cpu` when given
/// (the TC program runs on the sending CPU: veth transmits in the sender's
/// context).
fn sender(
    tb: &Testbed,
    port: u16,
    payload: usize,
    cpu: Option<usize>,
) -> Result<std::thread::JoinHandle<Result<Sent>>> {
    let (from, to, pps, dur) = (1, 2, FLOOD_PPS, FLOOD);
    let dst = SocketAddr::new(tb.addr(to, false), port);
    spawn_in_netns(&tb.vm(from).ns, move || -> Result<Sent> {
        if let Some(cpu) = cpu {
            pin_to_cpu(cpu)?;
        }
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(dst)?;
        let buf = vec![0x5au8; payload];
        let start = Instant::now();
        let mut packets = 0u64;
        loop {
            let t = start.elapsed();
            if t >= dur {
                break;
            }
            let due = (pps as f64 * t.as_secs_f64()) as u64 + 1;
            while packets < due {
                match s.send(&buf) {
                    Ok(_) => packets += 1,
                    // The socket's send buffer is full: try again shortly.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => break,
                    Err(e) => return Err(anyhow!(e).context(format!("send to {dst}"))),
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(Sent {
            packets,
            start,
            end: Instant::now(),
        })
    })
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t, CPU_SET on it, and sched_setaffinity on
    // the calling thread (pid 0).
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(anyhow!(
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A UDP receiver in VM `vm` on `port` (8 MiB receive buffer) counting
/// datagrams until `stop` is set and no datagram came for 500 ms.
struct Receiver {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<u64>>,
}

fn receiver(tb: &Testbed, vm: usize, port: u16) -> Result<Receiver> {
    let addr = SocketAddr::new(tb.addr(vm, false), port);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = spawn_in_netns(&tb.vm(vm).ns, move || -> Result<u64> {
        let s = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt on an open socket with a c_int option value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let _ = ready_tx.send(());
        let mut n = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            match s.recv(&mut buf) {
                Ok(_) => n += 1,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop2.load(Ordering::SeqCst) {
                        return Ok(n);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("UDP receiver on {addr} did not start"))?;
    Ok(Receiver { stop, handle })
}

impl Receiver {
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .expect("receiver thread")
            .expect("receiver")
    }
}

/// One policy's counters from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    matched: f64,
    mirrored: f64,
    sampled: f64,
    rate_limited: f64,
    other_drops: f64,
}

fn counters(m: &Metrics, policy: &str) -> Counters {
    let p = [("policy", policy)];
    let all_drops = m.sum(DROPPED, &p);
    let sampled = m.sum(DROPPED, &[("policy", policy), ("reason", "sampled")]);
    let rate_limited = m.sum(DROPPED, &[("policy", policy), ("reason", "rate_limited")]);
    Counters {
        matched: m.sum(MATCHED, &p),
        mirrored: m.sum(MIRRORED, &p),
        sampled,
        rate_limited,
        other_drops: all_drops - sampled - rate_limited,
    }
}

/// Copies of the flood to `port` with VLAN `vlan` at the monitor.
fn copies(got: &Captured, vlan: u16, port: u16) -> usize {
    got.filter(|f| {
        f.vid() == Some(vlan)
            && f.proto() == Some(IPPROTO_UDP)
            && f.ip.as_ref().and_then(|i| i.dport) == Some(port)
    })
    .len()
}

fn context(d: &Daemon, got: &Captured) -> String {
    let m = d
        .metrics()
        .map(|m| m.dump("vtap_policy"))
        .unwrap_or_else(|e| format!("(no metrics: {e:#})"));
    format!(
        "\nmonitor: {} frames per VLAN {:?}\nmetrics:\n{m}",
        got.frames.len(),
        got.per_vid()
    )
}

/// Checks the counters after a flood (one output, monitor up): every
/// matched packet is mirrored, sampled or rate-limited, exactly; what was
/// mirrored is what the monitor got; and nothing else was dropped.
#[track_caller]
fn assert_adds_up(c: &Counters, sent: u64, at_monitor: usize, ctx: &str) {
    assert_eq!(c.matched, sent as f64, "matched != sent{ctx}");
    assert_eq!(
        c.mirrored + c.sampled + c.rate_limited,
        c.matched,
        "mirrored + sampled + rate_limited != matched: {c:?}{ctx}"
    );
    assert_eq!(c.other_drops, 0.0, "{c:?}{ctx}");
    assert_eq!(
        c.mirrored, at_monitor as f64,
        "vtap mirrored {} but the monitor got {at_monitor}{ctx}",
        c.mirrored
    );
}

/// `|got - want| <= 10 % of want`.
#[track_caller]
fn within_10_percent(what: &str, got: f64, want: f64, ctx: &str) {
    assert!(
        (got - want).abs() <= 0.10 * want,
        "{what}: {got:.0}, want {want:.0} ± 10 % ({:.0}..{:.0}){ctx}",
        0.9 * want,
        1.1 * want
    );
}

/// Runs `senders` floods (one per CPU given, `None` = unpinned) from VM1 to
/// VM2:`port` with the daemon running `policies`, captures the monitor, and
/// checks that VM2 received every datagram. Returns the sends, the capture,
/// the counters of `name` and the context for messages.
fn flood_through(
    tb: &Testbed,
    d: &Daemon,
    name: &str,
    port: u16,
    payload: usize,
    cpus: &[Option<usize>],
) -> (Vec<Sent>, Captured, Counters, String) {
    let rx = receiver(tb, 2, port).unwrap();
    let cap = tb.capture_monitor(0).unwrap();
    let senders: Vec<_> = cpus
        .iter()
        .map(|cpu| sender(tb, port, payload, *cpu).unwrap())
        .collect();
    let sent: Vec<Sent> = senders
        .into_iter()
        .map(|h| h.join().expect("sender thread").expect("sender"))
        .collect();
    let received = rx.finish();
    let got = cap.stop().unwrap();
    let ctx = context(d, &got);
    let total: u64 = sent.iter().map(|s| s.packets).sum();
    eprintln!(
        "{name}: sent {sent:?}, received {received}, monitor {} frames",
        got.frames.len()
    );
    assert!(
        total as f64 >= 0.8 * FLOOD_PPS as f64 * FLOOD.as_secs_f64() * cpus.len() as f64,
        "the flood fell short: {total} datagrams{ctx}"
    );
    assert_eq!(
        received, total,
        "VM2 must receive every datagram VM1 sent{ctx}"
    );
    let c = counters(&d.metrics().unwrap(), name);
    (sent, got, c, ctx)
}

/// Seconds from the first send to the last.
fn span(sent: &[Sent]) -> f64 {
    let start = sent.iter().map(|s| s.start).min().unwrap();
    let end = sent.iter().map(|s| s.end).max().unwrap();
    (end - start).as_secs_f64()
}

#[test]
fn pps_limit_caps_copies_at_1000_per_second() {
    let Some(tb) = testbed("pps_limit_caps_copies_at_1000_per_second") else {
        return;
    };
    let pol = policy("flood", 7001, 100, "rate_limit: {pps: 1000}\n");
    let d = tb.start_daemon(&[("flood.yaml", &pol)]).expect("daemon");
    let (sent, got, c, ctx) = flood_through(&tb, &d, "flood", 7001, 64, &[None]);
    let n = copies(&got, 100, 7001);
    assert_eq!(n, got.frames.len(), "only copies of the flood{ctx}");
    within_10_percent("copies at 1,000 pps", n as f64, 1000.0 * span(&sent), &ctx);
    assert_adds_up(&c, sent[0].packets, n, &ctx);
    assert_eq!(c.sampled, 0.0);
    assert!(c.rate_limited >= 0.9 * c.matched, "{c:?}{ctx}");
    d.stop().expect("daemon exits 0");
}

#[test]
fn bps_limit_caps_copy_bits() {
    // 8 Mbit/s of 1,042-byte frames (1,000 bytes of UDP payload + headers,
    // as the tap sees them) is 960 copies/s.
    let Some(tb) = testbed("bps_limit_caps_copy_bits") else {
        return;
    };
    const PAYLOAD: usize = 1000;
    let frame_bits = ((PAYLOAD + 8 + 20 + 14) * 8) as f64;
    let pol = policy("bits", 7002, 200, "rate_limit: {bps: 8000000}\n");
    let d = tb.start_daemon(&[("bits.yaml", &pol)]).expect("daemon");
    let (sent, got, c, ctx) = flood_through(&tb, &d, "bits", 7002, PAYLOAD, &[None]);
    let n = copies(&got, 200, 7002);
    assert_eq!(n, got.frames.len(), "only copies of the flood{ctx}");
    // The copies carry a 4-byte tag on top of the frame the tap saw.
    assert!(
        got.frames
            .iter()
            .all(|f| f.origlen as f64 * 8.0 == frame_bits + 32.0),
        "unexpected copy size{ctx}"
    );
    within_10_percent(
        "copy bits at 8 Mbit/s",
        n as f64 * frame_bits,
        8e6 * span(&sent),
        &ctx,
    );
    assert_adds_up(&c, sent[0].packets, n, &ctx);
    assert!(c.rate_limited > 0.0, "{c:?}{ctx}");
    d.stop().expect("daemon exits 0");
}

#[test]
fn both_cpus_flooding_share_the_limit() {
    // Two senders pinned to CPU 0 and CPU 1, 20,000 pps each: the policy's
    // one token bucket serves both CPUs, so the monitor still gets 1,000
    // copies/s, not 2,000.
    let Some(tb) = testbed("both_cpus_flooding_share_the_limit") else {
        return;
    };
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(ncpu >= 2, "needs two CPUs, have {ncpu}");
    let pol = policy("two", 7003, 300, "rate_limit: {pps: 1000}\n");
    let d = tb.start_daemon(&[("two.yaml", &pol)]).expect("daemon");
    let (sent, got, c, ctx) = flood_through(&tb, &d, "two", 7003, 64, &[Some(0), Some(1)]);
    let n = copies(&got, 300, 7003);
    assert_eq!(n, got.frames.len(), "only copies of the flood{ctx}");
    // The two floods ran together.
    let overlap = sent[0].end.min(sent[1].end) - sent[0].start.max(sent[1].start);
    assert!(
        overlap.as_secs_f64() > 0.9 * FLOOD.as_secs_f64(),
        "{sent:?}"
    );
    within_10_percent(
        "copies at 1,000 pps from two CPUs",
        n as f64,
        1000.0 * span(&sent),
        &ctx,
    );
    assert_adds_up(&c, sent[0].packets + sent[1].packets, n, &ctx);
    d.stop().expect("daemon exits 0");
}

#[test]
fn sampling_and_rate_limit_add_up_in_metrics_and_stats() {
    // 1-in-4 by packet, then at most 1,000 pps: every term is non-zero, and
    // matched = mirrored + sampled + rate_limited exactly, in /metrics and
    // in /api/v1/stats alike.
    let Some(tb) = testbed("sampling_and_rate_limit_add_up_in_metrics_and_stats") else {
        return;
    };
    let pol = policy(
        "mix",
        7004,
        400,
        "sample_one_in: 4\nrate_limit: {pps: 1000}\n",
    );
    let d = tb.start_daemon(&[("mix.yaml", &pol)]).expect("daemon");
    let (sent, got, c, ctx) = flood_through(&tb, &d, "mix", 7004, 64, &[None]);
    let n = copies(&got, 400, 7004);
    assert_adds_up(&c, sent[0].packets, n, &ctx);
    // 1-in-4 of the flood is ~5,000/s, above the limit: the limit decides.
    within_10_percent("copies", n as f64, 1000.0 * span(&sent), &ctx);
    let kept = c.matched - c.sampled;
    within_10_percent("kept by 1-in-4 sampling", kept, c.matched / 4.0, &ctx);
    assert!(c.rate_limited > 0.0, "{c:?}{ctx}");

    let r = d.get("/api/v1/stats").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let p = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mix")
        .unwrap_or_else(|| panic!("no policy mix in {}", r.body));
    let num = |x: &serde_json::Value| x.as_u64().unwrap_or_else(|| panic!("{x} in {}", r.body));
    let matched =
        num(&p["matched"]["ingress"]["packets"]) + num(&p["matched"]["egress"]["packets"]);
    let mirrored = num(&p["mirrored"]["mon0.400"]);
    let sampled = num(&p["dropped"]["sampled"]);
    let rate_limited = num(&p["dropped"]["rate_limited"]);
    assert_eq!(mirrored + sampled + rate_limited, matched, "{}", r.body);
    assert_eq!(
        (matched, mirrored, sampled, rate_limited),
        (
            c.matched as u64,
            c.mirrored as u64,
            c.sampled as u64,
            c.rate_limited as u64
        ),
        "/api/v1/stats and /metrics disagree: {}",
        r.body
    );
    d.stop().expect("daemon exits 0");
}

#[test]
fn flow_sampling_mirrors_whole_conversations() {
    // 24 request/response UDP flows (each its own client port) between VM1
    // and VM2, seen on both hooks of vm1-tap, at 1-in-2 by flow: each flow
    // has all of its copies (requests and replies) or none.
    const FLOWS: usize = 24;
    const EACH: u32 = 6;
    let Some(tb) = testbed("flow_sampling_mirrors_whole_conversations") else {
        return;
    };
    let pol = "version: 1\nname: flows\ntaps: [vm1-tap]\ndirection: both\nmatch: {protocol: udp, dst_ports: [7005], bidirectional: true}\nsample_one_in: 2\nsample_by: flow\noutputs: [{interface: mon0, vlan: 500}]\n";
    let d = tb.start_daemon(&[("flows.yaml", pol)]).expect("daemon");
    let cap = tb.capture_monitor(0).unwrap();
    let mut ports = Vec::new();
    for _ in 0..FLOWS {
        let u = tb
            .udp(Udp {
                from: 1,
                to: 2,
                port: 7005,
                count: EACH,
                size: 100,
                ipv6: false,
                echo: true,
            })
            .unwrap();
        assert_eq!(
            (u.received, u.replies),
            (EACH, EACH),
            "the VMs' traffic must be intact"
        );
        ports.push(u.client_port);
    }
    let got = cap.stop().unwrap();
    let ctx = context(&d, &got);
    let mut kept = 0;
    for port in &ports {
        let requests = got
            .filter(|f| f.ip.as_ref().is_some_and(|i| i.sport == Some(*port)))
            .len();
        let replies = got
            .filter(|f| f.ip.as_ref().is_some_and(|i| i.dport == Some(*port)))
            .len();
        assert!(
            (requests, replies) == (0, 0) || (requests, replies) == (EACH as usize, EACH as usize),
            "flow from port {port} split: {requests} requests, {replies} replies mirrored{ctx}"
        );
        kept += (requests > 0) as usize;
    }
    assert!(
        kept > 0 && kept < FLOWS,
        "1-in-2 by flow kept {kept} of {FLOWS} flows{ctx}"
    );
    let c = counters(&d.metrics().unwrap(), "flows");
    assert_adds_up(&c, (FLOWS as u32 * EACH * 2) as u64, got.frames.len(), &ctx);
    assert_eq!(
        c.sampled,
        ((FLOWS - kept) as u32 * EACH * 2) as f64,
        "{ctx}"
    );
    d.stop().expect("daemon exits 0");
}
