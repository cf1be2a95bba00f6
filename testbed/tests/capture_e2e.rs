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
use vtap_testbed::cmd::run;
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
    let mut s =
        format!("version: 1\nname: {name}\ntaps: [vm1-tap]\ndirection: both\nsnaplen: {snaplen}\n");
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
        m.sum(
            "vtap_capture_written_packets_total",
            &[("capture", "short")]
        ),
        80.0
    );
    d.stop().expect("daemon exits 0");
}

/// A 9000-byte jumbo frame is captured whole; GSO super-packets of a TCP
/// transfer keep their true length and a caplen that fits (never more than
/// the 9216-byte maximum, never more than the packet).
#[test]
fn jumbo_frames_and_gso_super_packets() {
    let Some(tb) = testbed(
        "jumbo_frames_and_gso_super_packets",
        Options::default().vms(2).mtu(9000).offloads(true),
    ) else {
        return;
    };
    let d = tb
        .start_daemon(&[
            (
                "jumbo.yaml",
                &pcap_policy("jumbo", "protocol: udp\ndst_ports: [7000]", "jumbo", 0),
            ),
            (
                "tcp.yaml",
                &pcap_policy("tcp", "protocol: tcp\ndst_ports: [5001]", "tcp", 0),
            ),
        ])
        .expect("daemon");
    tb.udp(Udp {
        from: 1,
        to: 2,
        port: 7000,
        count: 5,
        size: 8900,
        ipv6: false,
        echo: false,
    })
    .unwrap();
    let v = settle(&d, "jumbo", 5);
    let pk = all_packets(&v);
    assert_eq!(pk.len(), 5, "{v:#}");
    for p in &pk {
        assert_eq!(
            (p.len, p.caplen),
            (14 + 20 + 8 + 8900, 14 + 20 + 8 + 8900),
            "{p:?}"
        );
    }

    let t = tb
        .tcp_transfer(1, 2, 5001, 8_000_000, false, Duration::from_secs(30))
        .unwrap();
    assert!(t.intact(), "{t:?}");
    let v = capture(&d, "tcp");
    let v = settle(&d, "tcp", n(&v, "packets"));
    let pk = all_packets(&v);
    assert_eq!(pk.len() as u64, n(&v, "packets"), "{v:#}");
    assert_eq!(n(&v, "ring_full"), 0, "{v:#}");
    let max_len = pk.iter().map(|p| p.len).max().unwrap();
    assert!(
        max_len > 9014,
        "no GSO super-packet seen (largest {max_len}); offloads on?"
    );
    for p in &pk {
        assert!(p.caplen <= p.len && p.caplen <= 9216, "{p:?}");
        assert_eq!(p.caplen, p.len.min(9216), "caplen = min(9216, len): {p:?}");
    }
    d.stop().expect("daemon exits 0");
}

/// Rotation by size keeps at most `max_files` (the oldest are deleted), and
/// a stop condition ends file output after exactly N packets.
#[test]
fn rotation_by_size_and_count_and_stop_conditions() {
    let Some(tb) = testbed(
        "rotation_by_size_and_count_and_stop_conditions",
        Options::default().vms(2).offloads(false),
    ) else {
        return;
    };
    let cfg = tb.path("vtapd", "yaml");
    std::fs::write(
        &cfg,
        "captures:\n  rot:\n    rotate_mib: 1\n    max_files: 3\n  stop:\n    stop_packets: 25\n",
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let d = tb
        .start_daemon_with(
            &[
                ("rot.yaml", &pcap_policy("rot", "protocol: tcp", "rot", 0)),
                (
                    "stop.yaml",
                    &pcap_policy("stop", "protocol: udp\ndst_ports: [6100]", "stop", 0),
                ),
            ],
            &["--config", cfg_s],
        )
        .expect("daemon");
    // ~12 MB of TCP: about 12 files of 1 MiB, of which the last 3 stay.
    let t = tb
        .tcp_transfer(1, 2, 5001, 12_000_000, false, Duration::from_secs(60))
        .unwrap();
    assert!(t.intact(), "{t:?}");
    let v = capture(&d, "rot");
    let v = settle(&d, "rot", n(&v, "packets"));
    let fs = files(&v);
    assert_eq!(fs.len(), 3, "max_files 3: {v:#}");
    for f in &fs {
        let sz = std::fs::metadata(f).unwrap().len();
        assert!(sz <= (1 << 20) + 70_000, "{} is {sz} bytes", f.display());
        assert!(
            f.file_name().unwrap().to_str().unwrap().starts_with("rot-"),
            "{}",
            f.display()
        );
    }
    let mut names: Vec<_> = fs
        .iter()
        .map(|f| f.file_name().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        fs.iter()
            .map(|f| f.file_name().unwrap().to_owned())
            .collect::<Vec<_>>(),
        "files listed oldest first"
    );
    let in_files = all_packets(&v).len() as u64;
    assert!(
        in_files > 0 && in_files < n(&v, "written_packets"),
        "oldest files deleted"
    );
    assert!(v["files"].as_array().unwrap().len() == 3, "{v:#}");

    tb.udp(Udp {
        from: 1,
        to: 2,
        port: 6100,
        count: 40,
        size: 100,
        ipv6: false,
        echo: false,
    })
    .unwrap();
    let v = settle(&d, "stop", 40);
    assert_eq!(v["state"], "stopped", "{v:#}");
    assert_eq!(n(&v, "written_packets"), 25, "{v:#}");
    assert_eq!(n(&v, "not_written_stopped"), 15, "{v:#}");
    assert_eq!(all_packets(&v).len(), 25);
    d.stop().expect("daemon exits 0");
}

/// Two concurrent `curl -sN …/stream | tcpdump -r -` subscribers both see
/// every packet sent after they joined.
#[test]
fn two_live_streams_each_get_every_packet() {
    let Some(tb) = testbed(
        "two_live_streams_each_get_every_packet",
        Options::default().vms(2),
    ) else {
        return;
    };
    let d = tb
        .start_daemon(&[(
            "s.yaml",
            &pcap_policy("s", "protocol: udp\ndst_ports: [6200]", "live", 0),
        )])
        .expect("daemon");
    let url = format!(
        "http://{}/api/v1/captures/live/stream?packets=30&seconds=60",
        d.addr
    );
    let script = format!("curl -sN '{url}' | tcpdump -nn -r - 2>/dev/null");
    let subs: Vec<_> = (0..2)
        .map(|_| tb.spawn(&tb.host_ns, "sh", &["-c", &script]).unwrap())
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || n(
            &capture(&d, "live"),
            "subscribers"
        ) == 2),
        "subscribers did not join"
    );
    tb.udp(Udp {
        from: 1,
        to: 2,
        port: 6200,
        count: 30,
        size: 200,
        ipv6: false,
        echo: false,
    })
    .unwrap();
    for mut s in subs {
        let st = s.wait_timeout(Duration::from_secs(20)).unwrap();
        assert!(st.is_some(), "stream did not end after 30 packets");
        let out = s.stdout();
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(".6200:")).collect();
        assert_eq!(lines.len(), 30, "tcpdump -r - saw:\n{out}");
    }
    let v = capture(&d, "live");
    assert_eq!(n(&v, "stream_lost"), 0, "{v:#}");
    d.stop().expect("daemon exits 0");
}

/// Unmounts a test filesystem when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk stops the capture's files with a clear state while mirroring
/// goes on; writing resumes by itself once space is freed.
#[test]
fn full_disk_stops_files_not_mirroring_and_recovers() {
    let Some(tb) = testbed(
        "full_disk_stops_files_not_mirroring_and_recovers",
        Options::default().vms(2),
    ) else {
        return;
    };
    let mirror = "version: 1\nname: mirror\ntaps: [vm1-tap]\nmatch: {protocol: udp}\noutputs:\n  - interface: mon0\n    vlan: 30\n";
    let mut mount = None;
    let d = tb
        .start_daemon_prepared(
            &[
                ("mirror.yaml", mirror),
                ("cap.yaml", &pcap_policy("cap", "protocol: udp", "small", 0)),
            ],
            &[],
            |state| {
                let dir = state.join("captures/small");
                std::fs::create_dir_all(&dir)?;
                let o = std::process::Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "size=256k", "vtap-test"])
                    .arg(&dir)
                    .output()?;
                anyhow::ensure!(o.status.success(), "mount tmpfs: {o:?}");
                mount = Some(Mount(dir));
                Ok(())
            },
        )
        .expect("daemon");
    let _m = mount.expect("mounted");
    let dir = _m.0.clone();
    let send = |count: u32, port: u16| {
        tb.udp(Udp {
            from: 1,
            to: 2,
            port,
            count,
            size: 1400,
            ipv6: false,
            echo: false,
        })
        .unwrap()
    };
    // ~400 KiB of packets into 256 KiB.
    send(300, 6300);
    let v = settle(&d, "small", 300);
    assert_eq!(v["state"], "error", "{v:#}");
    assert!(
        v["state_detail"]
            .as_str()
            .unwrap_or("")
            .contains("No space left"),
        "{v:#}"
    );
    assert!(n(&v, "not_written_error") > 0, "{v:#}");
    let m = d.metrics().unwrap();
    assert_eq!(
        m.sum("vtap_capture_file_error", &[("capture", "small")]),
        1.0
    );

    // Mirroring goes on meanwhile.
    let cap = tb.capture_monitor(0).unwrap();
    send(20, 6301);
    let got = cap.stop().unwrap();
    let mirrored = got
        .filter(|f| f.ip.as_ref().and_then(|i| i.dport) == Some(6301))
        .len();
    assert_eq!(mirrored, 20, "mirroring stopped with the disk full");

    // Free the space: writing resumes into a new file.
    for e in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            send(5, 6302);
            capture(&d, "small")["state"] == "writing"
        }),
        "capture did not resume: {:#}",
        capture(&d, "small")
    );
    let before = n(&capture(&d, "small"), "written_packets");
    send(10, 6303);
    let v = settle(&d, "small", 0);
    assert!(n(&v, "written_packets") >= before + 10, "{v:#}");
    let pk = all_packets(&v);
    assert!(
        pk.iter().filter(|p| p.dport == "6303").count() == 10,
        "{pk:#?}"
    );
    drop(_m);
    d.stop().expect("daemon exits 0");
}

/// Capture names that could escape the state directory are refused (422)
/// and change nothing.
#[test]
fn hostile_capture_names_are_rejected() {
    let Some(tb) = testbed(
        "hostile_capture_names_are_rejected",
        Options::default().vms(2),
    ) else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let long = "a".repeat(300);
    for bad in ["../x", "/etc/passwd", "a/b", "..", ".hidden", long.as_str()] {
        let body = serde_json::json!({
            "version": 1, "name": "evil", "taps": ["vm1-tap"],
            "outputs": [{"pcap": bad}]
        });
        let r = d
            .request("PUT", "/api/v1/policies/evil", Some(&body.to_string()))
            .unwrap();
        assert_eq!(r.status, 422, "pcap {bad:?}: {}", r.body);
        assert!(r.body.contains("outputs[0].pcap"), "{}", r.body);
    }
    let r = d.get("/api/v1/captures/..%2Fx").unwrap();
    assert!(
        r.status == 422 || r.status == 404,
        "{} {}",
        r.status,
        r.body
    );
    let r = d.get("/api/v1/captures").unwrap();
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["captures"].as_array().unwrap().len(), 0, "{v:#}");
    let r = d.get("/api/v1/policies").unwrap();
    assert!(!r.body.contains("evil"), "{}", r.body);
    assert!(
        std::fs::read_dir(d.state_dir.join("captures"))
            .unwrap()
            .next()
            .is_none(),
        "nothing created under captures/"
    );
    d.stop().expect("daemon exits 0");
}

/// A tap in XDP mode: ingress captures are the same records as from TC;
/// a copy to an interface is impossible there and counted as `xdp_mode`;
/// egress is not tapped; the VM's traffic is untouched.
#[test]
fn xdp_mode_tap_captures_ingress() {
    let Some(tb) = testbed("xdp_mode_tap_captures_ingress", Options::default().vms(2)) else {
        return;
    };
    let mirror = "version: 1\nname: mirror\ntaps: [vm1-tap]\nmatch: {protocol: udp, dst_ports: [6400]}\noutputs:\n  - interface: mon0\n    vlan: 40\n";
    let d = tb
        .start_daemon_with(
            &[
                ("mirror.yaml", mirror),
                (
                    "cap.yaml",
                    &pcap_policy(
                        "cap",
                        "protocol: udp\nbidirectional: true\ndst_ports: [6400]",
                        "x",
                        128,
                    ),
                ),
            ],
            &["--xdp-tap", "vm1-*"],
        )
        .expect("daemon");
    let r = d.get("/api/v1/taps/vm1-tap").unwrap();
    let tap: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(tap["mode"], "xdp", "{tap:#}");
    assert_eq!(tap["attached"], serde_json::json!(["ingress"]), "{tap:#}");
    let u = tb
        .udp(Udp {
            from: 1,
            to: 2,
            port: 6400,
            count: 20,
            size: 500,
            ipv6: false,
            echo: true,
        })
        .unwrap();
    assert_eq!((u.received, u.replies), (20, 20), "traffic intact: {u:?}");
    let v = settle(&d, "x", 20);
    let pk = all_packets(&v);
    // Ingress only: the requests, not the replies.
    assert_eq!(pk.len(), 20, "{v:#}");
    for p in &pk {
        assert_eq!(p.iface, "vm1-tap:ingress");
        assert_eq!((p.len, p.caplen), (542, 128), "{p:?}");
        assert_eq!(p.dport, "6400");
    }
    let m = d.metrics().unwrap();
    assert_eq!(
        m.sum(
            "vtap_policy_dropped_copies_total",
            &[("policy", "mirror"), ("reason", "xdp_mode")]
        ),
        20.0,
        "{}",
        m.dump("vtap_policy")
    );
    d.stop().expect("daemon exits 0");
}
