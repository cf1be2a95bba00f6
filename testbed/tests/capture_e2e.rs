//! End-to-end tests of the pcap sink: the real daemon, real traffic between
//! namespace VMs, and the produced pcapng files read by `tshark` (what an
//! operator would use), the live stream read by `curl | tcpdump -r -`.
//!
//! Root is needed; without it the tests print `skipping: needs root`, except
//! under `CI=true` where they fail instead.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test capture_e2e -- --test-threads 3`

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use vtap_testbed::cmd::{ns_command, run};
use vtap_testbed::{Daemon, Options, Testbed, Udp, require_root, wait_until};

fn testbed(test: &str, opts: Options) -> Option<Testbed> {
    if !require_root(test) {
        return None;
    }
    Some(Testbed::new(opts).unwrap_or_else(|e| panic!("{test}: cannot build testbed: {e:#}")))
}

/// A policy on vm1-tap (both directions) sending `match_yaml` packets to
/// capture `capture` with `snaplen`.
fn pcap_policy(name: &str, match_yaml: &str, capture: &str, snaplen: u32) -> String {
    let mut s = format!(
        "version: 1\nname: {name}\ntaps: [vm1-tap]\ndirection: both\nsnaplen: {snaplen}\n"
    );
    if !match_yaml.trim().is_empty() {
        s.push_str("match:\n");
        for l in match_yaml.trim().lines() {
            s.push_str(&format!("  {}\n", l.trim()));
        }
    }
    s.push_str(&format!("outputs:\n  - pcap: {capture}\n"));
    s
}

fn capture(d: &Daemon, name: &str) -> Value {
    let r = d
        .get(&format!("/api/v1/captures/{name}"))
        .expect("GET capture");
    assert_eq!(r.status, 200, "GET /api/v1/captures/{name}: {}", r.body);
    serde_json::from_str(&r.body).expect("capture JSON")
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

/// Waits until the capture's writer has handled every packet it received
/// (written or counted as lost) and the files are flushed.
fn settle(d: &Daemon, name: &str, at_least: u64) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(15), || {
        let v = capture(d, name);
        let handled = n(&v, "written_packets")
            + n(&v, "not_written_error")
            + n(&v, "not_written_stopped")
            + n(&v, "writer_queue_full");
        let done = n(&v, "received") >= at_least && handled == n(&v, "received");
        last = v;
        done
    });
    assert!(ok, "capture {name} did not settle: {last:#}\n{}", d.log());
    // The writer flushes on its 200 ms tick.
    std::thread::sleep(Duration::from_millis(600));
    capture(d, name)
}

/// One packet of a pcapng file as tshark reports it.
#[derive(Debug, Clone)]
struct Pkt {
    len: u64,
    caplen: u64,
    time: f64,
    iface: String,
    src: String,
    dst: String,
    sport: String,
    dport: String,
    comment: String,
}

fn tshark(file: &Path) -> Vec<Pkt> {
    let mut c = std::process::Command::new("tshark");
    c.args(["-n", "-r"]).arg(file).args([
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "frame.len",
        "-e",
        "frame.cap_len",
        "-e",
        "frame.time_epoch",
        "-e",
        "frame.interface_name",
        "-e",
        "ip.src",
        "-e",
        "ip.dst",
        "-e",
        "udp.srcport",
        "-e",
        "udp.dstport",
        "-e",
        "frame.comment",
    ]);
    let o = run(&mut c, Duration::from_secs(60)).expect("tshark");
    assert!(
        o.success(),
        "tshark -r {} failed: {}",
        file.display(),
        o.stderr
    );
    o.stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let g = |i: usize| f.get(i).copied().unwrap_or("").to_string();
            Pkt {
                len: g(0).parse().unwrap_or(0),
                caplen: g(1).parse().unwrap_or(0),
                time: g(2).parse().unwrap_or(0.0),
                iface: g(3),
                src: g(4),
                dst: g(5),
                sport: g(6),
                dport: g(7),
                comment: g(8),
            }
        })
        .collect()
}

fn files(v: &Value) -> Vec<PathBuf> {
    v["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| PathBuf::from(f["path"].as_str().unwrap()))
        .collect()
}

fn all_packets(v: &Value) -> Vec<Pkt> {
    files(v).iter().flat_map(|f| tshark(f)).collect()
}

fn ip(tb: &Testbed, vm: usize) -> IpAddr {
    tb.addr(vm, false)
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Exactly the selected packets reach the files, whole or cut to the
/// snaplen, with true original lengths, wall-clock timestamps, the tap and
/// direction as the interface, and the policy as the packet comment.
#[test]
fn pcap_files_hold_exactly_the_selected_packets() {
    let Some(tb) = testbed(
        "pcap_files_hold_exactly_the_selected_packets",
        Options::default().vms(2),
    ) else {
        return;
    };
    let d = tb
        .start_daemon(&[
            (
                "full.yaml",
                &pcap_policy("udp-full", "protocol: udp\ndst_ports: [5353]", "full", 0),
            ),
            (
                "short.yaml",
                &pcap_policy(
                    "udp-short",
                    "protocol: udp\nbidirectional: true\ndst_ports: [5353]",
                    "short",
                    64,
                ),
            ),
        ])
        .expect("daemon");
    let t0 = now_s();
    // Not selected: ICMP and UDP to another port.
    let p = tb.ping(1, 2, 5, false).unwrap();
    assert_eq!(p.received, 5);
    tb.udp(Udp {
        from: 1,
        to: 2,
        port: 6000,
        count: 5,
        size: 300,
        ipv6: false,
        echo: false,
    })
    .unwrap();
    // Selected: 40 datagrams of 1000 bytes vm1 -> vm2:5353, echoed back.
    let u = tb
        .udp(Udp {
            from: 1,
            to: 2,
            port: 5353,
            count: 40,
            size: 1000,
            ipv6: false,
            echo: true,
        })
        .unwrap();
    assert_eq!((u.received, u.replies), (40, 40), "{u:?}");
    let t1 = now_s();

    // `full`: only the requests (dst port 5353), whole.
    let v = settle(&d, "full", 40);
    let pk = all_packets(&v);
    assert_eq!(pk.len(), 40, "full capture: {pk:#?}\n{v:#}");
    let (a, b) = (ip(&tb, 1).to_string(), ip(&tb, 2).to_string());
    let port = u.client_port.to_string();
    for p in &pk {
        assert_eq!(
            (&p.src, &p.dst, &p.sport, p.dport.as_str()),
            (&a, &b, &port, "5353"),
            "{p:?}"
        );
        assert_eq!(p.len, 14 + 20 + 8 + 1000, "{p:?}");
        assert_eq!(p.caplen, p.len, "whole packets: {p:?}");
        assert_eq!(p.iface, "vm1-tap:ingress", "{p:?}");
        assert!(p.comment.contains("udp-full"), "{p:?}");
        assert!(
            p.time >= t0 - 1.0 && p.time <= t1 + 1.0,
            "timestamp {} not within [{t0}, {t1}] ± 1 s",
            p.time
        );
    }
    assert!(
        pk.windows(2).all(|w| w[0].time <= w[1].time),
        "timestamps go back within the flow"
    );
    assert_eq!(n(&v, "packets"), 40, "{v:#}");
    assert_eq!(n(&v, "ring_full"), 0, "{v:#}");

    // `short` (bidirectional): requests and replies, 64 bytes of each.
    let v = settle(&d, "short", 80);
    let pk = all_packets(&v);
    assert_eq!(pk.len(), 80, "short capture: {v:#}");
    let up = pk.iter().filter(|p| p.iface == "vm1-tap:ingress").count();
    let down = pk.iter().filter(|p| p.iface == "vm1-tap:egress").count();
    assert_eq!((up, down), (40, 40), "{pk:#?}");
    for p in &pk {
        assert_eq!((p.len, p.caplen), (1042, 64), "{p:?}");
        assert!(p.comment.contains("udp-short"), "{p:?}");
    }
    let m = d.metrics().unwrap();
    assert_eq!(
        m.sum("vtap_capture_packets_total", &[("capture", "short")]),
        80.0
    );
    assert_eq!(
        m.sum("vtap_capture_written_packets_total", &[("capture", "short")]),
        80.0
    );
    d.stop().expect("daemon exits 0");
}
