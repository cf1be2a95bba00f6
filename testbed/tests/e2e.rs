//! End-to-end tests: the real `vtap daemon` (target/debug/vtap or $VTAP_BIN)
//! in a throwaway testbed's host namespace, real TCX programs on the VMs'
//! taps, real traffic, and assertions on what the monitor captured and on
//! the daemon's Prometheus counters. Never on trace_pipe.
//!
//! Each test builds its own testbed, so they run in parallel. Root is needed;
//! without it they print `skipping: needs root`, except under `CI=true`
//! where they fail instead.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test e2e -- --test-threads 3`

use std::net::IpAddr;
use std::time::Duration;

use vtap_testbed::capture::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use vtap_testbed::{
    Captured, Daemon, Frame, Metrics, Options, Testbed, Udp, require_root, wait_until,
};

const MIRRORED: &str = "vtap_policy_mirrored_packets_total";
const MATCHED: &str = "vtap_policy_matched_packets_total";
const DROPPED: &str = "vtap_policy_dropped_copies_total";
const TAP_PACKETS: &str = "vtap_tap_packets_total";
/// Copies actually sent per output (documented in README.md, beyond the
/// brief's contract).
const OUTPUT_PACKETS: &str = "vtap_output_packets_total";

/// A policy on `vm1-tap`, both directions, with `match_yaml` (indented by
/// two spaces, may be empty) and outputs `(interface, vlan)`.
fn policy(name: &str, match_yaml: &str, outputs: &[(&str, u16)]) -> String {
    let mut s = format!(
        "version: 1\nname: {name}\npriority: 100\nenabled: true\ntaps: [vm1-tap]\ndirection: both\n"
    );
    if !match_yaml.trim().is_empty() {
        s.push_str("match:\n");
        for l in match_yaml.trim().lines() {
            s.push_str(&format!("  {}\n", l.trim()));
        }
    }
    s.push_str("outputs:\n");
    for (iface, vlan) in outputs {
        s.push_str(&format!("  - interface: {iface}\n    vlan: {vlan}\n"));
    }
    s
}

fn testbed(test: &str, opts: Options) -> Option<Testbed> {
    if !require_root(test) {
        return None;
    }
    Some(Testbed::new(opts).unwrap_or_else(|e| panic!("{test}: cannot build testbed: {e:#}")))
}

fn counter(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.sum(name, labels)
}

fn ip(tb: &Testbed, vm: usize) -> IpAddr {
    tb.addr(vm, false)
}

fn echo(f: &Frame, src: IpAddr, dst: IpAddr, icmp_type: u8) -> bool {
    f.is_between(src, dst) && f.ip.as_ref().and_then(|i| i.icmp_type) == Some(icmp_type)
}

/// Fails with the capture, the metrics and the daemon log in the message.
fn context(d: &Daemon, got: &Captured) -> String {
    let m = d
        .metrics()
        .map(|m| m.dump("vtap_"))
        .unwrap_or_else(|e| format!("(no metrics: {e:#})"));
    format!("\n{}\nmetrics:\n{m}", got.dump())
}

/// (a) Mirroring everything on vm1's tap does not disturb the VMs' traffic:
/// ping loses nothing and TCP data arrives bit-exact, over IPv4 and IPv6.
#[test]
fn traffic_is_intact_while_mirroring() {
    let Some(tb) = testbed(
        "traffic_is_intact_while_mirroring",
        Options::default().vms(2),
    ) else {
        return;
    };
    let d = tb
        .start_daemon(&[("all.yaml", &policy("all", "", &[("mon0", 10)]))])
        .expect("daemon");
    let cap = tb.capture_monitor(0).unwrap();

    let p = tb.ping(1, 2, 50, false).unwrap();
    assert_eq!(
        (p.transmitted, p.received),
        (50, 50),
        "ping lost packets while mirroring"
    );
    let p = tb.ping(2, 1, 20, true).unwrap();
    assert_eq!(
        (p.transmitted, p.received),
        (20, 20),
        "ping -6 lost packets while mirroring"
    );
    let t = tb
        .tcp_transfer(1, 2, 5001, 4_000_000, false, Duration::from_secs(30))
        .unwrap();
    assert!(
        t.intact(),
        "TCP vm1 -> vm2 corrupted while mirroring: {t:?}"
    );
    let t6 = tb
        .tcp_transfer(2, 1, 5002, 2_000_000, true, Duration::from_secs(30))
        .unwrap();
    assert!(
        t6.intact(),
        "TCP vm2 -> vm1 (IPv6) corrupted while mirroring: {t6:?}"
    );

    let got = cap.stop().unwrap();
    let m = d.metrics().unwrap();
    let tcp_up = got
        .filter(|f| f.proto() == Some(IPPROTO_TCP) && f.is_between(ip(&tb, 1), ip(&tb, 2)))
        .len();
    let tcp_down = got
        .filter(|f| f.proto() == Some(IPPROTO_TCP) && f.is_between(ip(&tb, 2), ip(&tb, 1)))
        .len();
    assert!(
        tcp_up > 0 && tcp_down > 0,
        "no TCP copies in both directions{}",
        context(&d, &got)
    );
    assert!(
        got.frames.iter().all(|f| f.vid() == Some(10)),
        "copy without VLAN 10{}",
        context(&d, &got)
    );
    let mirrored = counter(&m, MIRRORED, &[("policy", "all"), ("output", "mon0.10")]);
    assert!(
        mirrored >= got.frames.len() as f64,
        "monitor got more frames ({}) than vtap mirrored ({mirrored})",
        got.frames.len()
    );
    assert!(
        counter(
            &m,
            TAP_PACKETS,
            &[("tap", "vm1-tap"), ("direction", "ingress")]
        ) > 0.0,
        "{}",
        m.dump("vtap_tap")
    );
    assert!(
        counter(
            &m,
            TAP_PACKETS,
            &[("tap", "vm1-tap"), ("direction", "egress")]
        ) > 0.0,
        "{}",
        m.dump("vtap_tap")
    );
    d.stop().expect("daemon exits 0 on SIGTERM");
}

/// (b) The monitor gets exactly the selected traffic: N echo requests and N
/// replies through vm1's tap give exactly 2N tagged copies; UDP and TCP
/// between the same VMs, and ICMP between other VMs, give none. The
/// daemon's counters agree, and promtool accepts its exposition.
#[test]
fn monitor_gets_exactly_the_selected_traffic() {
    const N: u32 = 25;
    let Some(tb) = testbed(
        "monitor_gets_exactly_the_selected_traffic",
        Options::default().vms(3),
    ) else {
        return;
    };
    let d = tb
        .start_daemon(&[(
            "icmp.yaml",
            &policy("icmp", "protocol: icmp", &[("mon0", 100)]),
        )])
        .expect("daemon");
    let h = d.get("/healthz").unwrap();
    assert_eq!(h.status, 200, "/healthz: {h:?}");
    let cap = tb.capture_monitor(0).unwrap();

    let p = tb.ping(1, 2, N, false).unwrap();
    assert_eq!(p.received, N);
    let u = tb
        .udp(Udp {
            from: 1,
            to: 2,
            port: 53,
            count: 30,
            size: 80,
            ipv6: false,
            echo: true,
        })
        .unwrap();
    assert_eq!(u.received, 30);
    assert!(
        tb.tcp_transfer(1, 2, 5001, 300_000, false, Duration::from_secs(20))
            .unwrap()
            .intact()
    );
    assert!(
        tb.tcp_transfer(2, 1, 5002, 300_000, false, Duration::from_secs(20))
            .unwrap()
            .intact()
    );
    // ICMP that never crosses vm1's tap.
    assert_eq!(tb.ping(2, 3, 10, false).unwrap().received, 10);

    let got = cap.stop().unwrap();
    let ctx = context(&d, &got);
    assert_eq!(got.dropped_by_kernel, 0);
    assert_eq!(
        got.frames.len(),
        2 * N as usize,
        "expected exactly {} copies{ctx}",
        2 * N
    );
    assert!(
        got.frames.iter().all(|f| f.vids == vec![100]),
        "every copy carries exactly VLAN 100{ctx}"
    );
    assert!(
        got.frames.iter().all(|f| f.proto() == Some(IPPROTO_ICMP)),
        "a non-ICMP copy{ctx}"
    );
    assert_eq!(
        got.filter(|f| echo(f, ip(&tb, 1), ip(&tb, 2), 8)).len(),
        N as usize,
        "echo requests{ctx}"
    );
    assert_eq!(
        got.filter(|f| echo(f, ip(&tb, 2), ip(&tb, 1), 0)).len(),
        N as usize,
        "echo replies{ctx}"
    );
    assert_eq!(
        got.filter(|f| f.proto() == Some(IPPROTO_UDP) || f.proto() == Some(IPPROTO_TCP))
            .len(),
        0
    );

    let m = d.metrics().unwrap();
    assert_eq!(
        counter(&m, MIRRORED, &[("policy", "icmp"), ("output", "mon0.100")]),
        2.0 * N as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(&m, MATCHED, &[("policy", "icmp")]),
        2.0 * N as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(&m, MATCHED, &[("policy", "icmp"), ("direction", "ingress")]),
        N as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(&m, MATCHED, &[("policy", "icmp"), ("direction", "egress")]),
        N as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(&m, OUTPUT_PACKETS, &[("output", "mon0.100")]),
        2.0 * N as f64,
        "{ctx}"
    );
    assert_eq!(counter(&m, DROPPED, &[("policy", "icmp")]), 0.0, "{ctx}");
    let seen_in = counter(
        &m,
        TAP_PACKETS,
        &[("tap", "vm1-tap"), ("direction", "ingress")],
    );
    assert!(
        seen_in >= (N + 30) as f64,
        "tap counter {seen_in} below what vm1 sent{ctx}"
    );
    // vm2/vm3 taps are not named by any policy.
    assert_eq!(
        counter(&m, TAP_PACKETS, &[("tap", "vm3-tap")]),
        0.0,
        "{ctx}"
    );

    let text = d.metrics_text().unwrap();
    if which("promtool") {
        let mut c = std::process::Command::new("promtool");
        c.args(["check", "metrics"]);
        let out = vtap_testbed::cmd::run_with_stdin(
            &mut c,
            Some(text.as_bytes()),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(
            out.success(),
            "promtool check metrics rejects /metrics:\n{}{}\n--- exposition ---\n{text}",
            out.stdout,
            out.stderr
        );
    } else {
        assert!(
            !vtap_testbed::in_ci(),
            "promtool missing in CI (scripts/install-deps.sh installs it)"
        );
    }
    d.stop().expect("daemon exits 0 on SIGTERM");
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// (c) Every matching policy fires, but a packet reaches a destination
/// (interface + VLAN) at most once: two policies to different VLANs/outputs
/// give one copy each; two policies to the same output+VLAN give one copy.
#[test]
fn one_copy_per_destination() {
    const N: u32 = 10;
    let Some(tb) = testbed(
        "one_copy_per_destination",
        Options::default().vms(2).monitors(2),
    ) else {
        return;
    };
    let d = tb
        .start_daemon(&[
            (
                "a.yaml",
                &policy("pol-a", "protocol: icmp", &[("mon0", 100)]),
            ),
            (
                "b.yaml",
                &policy("pol-b", "protocol: icmp", &[("mon0", 200)]),
            ),
            (
                "c.yaml",
                &policy("pol-c", "protocol: icmp", &[("mon1", 300)]),
            ),
            (
                "d.yaml",
                &policy("pol-d", "protocol: icmp", &[("mon0", 100)]),
            ),
        ])
        .expect("daemon");
    let c0 = tb.capture_monitor(0).unwrap();
    let c1 = tb.capture_monitor(1).unwrap();
    assert_eq!(tb.ping(1, 2, N, false).unwrap().received, N);
    let g0 = c0.stop().unwrap();
    let g1 = c1.stop().unwrap();
    let ctx = format!("{}{}", context(&d, &g0), g1.dump());
    let per0 = g0.per_vid();
    assert_eq!(
        per0.get(&Some(100)).copied().unwrap_or(0),
        2 * N as usize,
        "mon0 VLAN 100 (pol-a and pol-d share it){ctx}"
    );
    assert_eq!(
        per0.get(&Some(200)).copied().unwrap_or(0),
        2 * N as usize,
        "mon0 VLAN 200{ctx}"
    );
    assert_eq!(g0.frames.len(), 4 * N as usize, "mon0 total{ctx}");
    assert_eq!(g1.frames.len(), 2 * N as usize, "mon1 total{ctx}");
    assert!(
        g1.frames.iter().all(|f| f.vids == vec![300]),
        "mon1 VLAN 300{ctx}"
    );
    for vid in [100, 200] {
        assert_eq!(
            g0.with_vid(vid)
                .iter()
                .filter(|f| echo(f, ip(&tb, 1), ip(&tb, 2), 8))
                .count(),
            N as usize,
            "{ctx}"
        );
    }

    let m = d.metrics().unwrap();
    for p in ["pol-a", "pol-b", "pol-c", "pol-d"] {
        assert_eq!(
            counter(&m, MATCHED, &[("policy", p)]),
            2.0 * N as f64,
            "{p} matched{ctx}"
        );
    }
    assert_eq!(
        counter(&m, MIRRORED, &[("policy", "pol-b"), ("output", "mon0.200")]),
        2.0 * N as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(&m, MIRRORED, &[("policy", "pol-c"), ("output", "mon1.300")]),
        2.0 * N as f64,
        "{ctx}"
    );
    // pol-a and pol-d share mon0.100: one copy per packet went out, and each
    // policy's packets count as delivered there.
    assert_eq!(
        counter(&m, OUTPUT_PACKETS, &[("output", "mon0.100")]),
        2.0 * N as f64,
        "copies sent to mon0.100{ctx}"
    );
    assert_eq!(
        counter(&m, MIRRORED, &[("policy", "pol-a"), ("output", "mon0.100")]),
        2.0 * N as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(&m, MIRRORED, &[("policy", "pol-d"), ("output", "mon0.100")]),
        2.0 * N as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(&m, OUTPUT_PACKETS, &[("output", "mon0.200")]),
        2.0 * N as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(&m, OUTPUT_PACKETS, &[("output", "mon1.300")]),
        2.0 * N as f64,
        "{ctx}"
    );
    d.stop().expect("daemon exits 0 on SIGTERM");
}

/// (d) IPv6: an ICMPv6 policy between fd00:: addresses mirrors ping -6 and
/// nothing of an IPv4 ping.
#[test]
fn ipv6_icmpv6_policy() {
    const N: u32 = 20;
    let Some(tb) = testbed("ipv6_icmpv6_policy", Options::default().vms(2)) else {
        return;
    };
    let d = tb
        .start_daemon(&[(
            "v6.yaml",
            &policy(
                "v6",
                "ether_type: ipv6\nprotocol: icmpv6\nsrc: [fd00::/64]\ndst: [fd00::/64]",
                &[("mon0", 600)],
            ),
        )])
        .expect("daemon");
    let cap = tb.capture_monitor(0).unwrap();
    assert_eq!(tb.ping(1, 2, N, true).unwrap().received, N);
    assert_eq!(tb.ping(1, 2, 10, false).unwrap().received, 10);
    assert_eq!(
        tb.udp(Udp {
            from: 1,
            to: 2,
            port: 5353,
            count: 10,
            size: 40,
            ipv6: true,
            echo: false
        })
        .unwrap()
        .received,
        10
    );
    let got = cap.stop().unwrap();
    let ctx = context(&d, &got);
    let (a, b) = (tb.addr(1, true), tb.addr(2, true));
    assert_eq!(got.frames.len(), 2 * N as usize, "{ctx}");
    assert!(
        got.frames.iter().all(|f| f.vids == vec![600]
            && f.proto() == Some(IPPROTO_ICMPV6)
            && f.is_icmpv6_echo()),
        "{ctx}"
    );
    assert_eq!(
        got.filter(|f| echo(f, a, b, 128)).len(),
        N as usize,
        "{ctx}"
    );
    assert_eq!(
        got.filter(|f| echo(f, b, a, 129)).len(),
        N as usize,
        "{ctx}"
    );
    let m = d.metrics().unwrap();
    assert_eq!(
        counter(&m, MIRRORED, &[("policy", "v6"), ("output", "mon0.600")]),
        2.0 * N as f64,
        "{ctx}"
    );
    d.stop().expect("daemon exits 0 on SIGTERM");
}

/// (e) `bidirectional: true` copies both directions of the TCP conversation
/// vm1 -> vm2:5201; the same match without it copies only vm1 -> vm2.
#[test]
fn bidirectional_conversation() {
    let Some(tb) = testbed("bidirectional_conversation", Options::default().vms(2)) else {
        return;
    };
    let m_yaml = "src: [10.0.0.1/32]\ndst: [10.0.0.2/32]\nprotocol: tcp\ndst_ports: [5201]";
    let d = tb
        .start_daemon(&[
            (
                "bidi.yaml",
                &policy(
                    "conv-bidi",
                    &format!("{m_yaml}\nbidirectional: true"),
                    &[("mon0", 501)],
                ),
            ),
            (
                "oneway.yaml",
                &policy("conv-oneway", m_yaml, &[("mon0", 502)]),
            ),
        ])
        .expect("daemon");
    let cap = tb.capture_monitor(0).unwrap();
    assert!(
        tb.tcp_transfer(1, 2, 5201, 1_000_000, false, Duration::from_secs(20))
            .unwrap()
            .intact()
    );
    // Not the conversation: other port, other direction of initiation.
    assert!(
        tb.tcp_transfer(1, 2, 5202, 200_000, false, Duration::from_secs(20))
            .unwrap()
            .intact()
    );
    assert!(
        tb.tcp_transfer(2, 1, 5201, 200_000, false, Duration::from_secs(20))
            .unwrap()
            .intact()
    );
    let got = cap.stop().unwrap();
    let ctx = context(&d, &got);
    let (a, b) = (ip(&tb, 1), ip(&tb, 2));
    let fwd = |f: &Frame| f.is_between(a, b) && f.ip.as_ref().unwrap().dport == Some(5201);
    let rev = |f: &Frame| f.is_between(b, a) && f.ip.as_ref().unwrap().sport == Some(5201);
    let bidi = got.with_vid(501);
    let one = got.with_vid(502);
    assert!(
        bidi.iter().all(|f| fwd(f) || rev(f)),
        "VLAN 501 copy outside the conversation{ctx}"
    );
    assert!(
        one.iter().all(|f| fwd(f)),
        "VLAN 502 copy outside vm1 -> vm2:5201{ctx}"
    );
    let (bf, br) = (
        bidi.iter().filter(|f| fwd(f)).count(),
        bidi.iter().filter(|f| rev(f)).count(),
    );
    assert!(
        bf > 0 && br > 0,
        "bidirectional policy must copy both directions (fwd {bf}, rev {br}){ctx}"
    );
    assert_eq!(
        one.len(),
        bf,
        "both policies see the same forward packets{ctx}"
    );
    assert_eq!(
        got.frames.len(),
        bidi.len() + one.len(),
        "copies of other VLANs{ctx}"
    );
    // The SYN of the conversation is in both, the SYN-ACK only in the bidirectional one.
    assert!(
        one.iter()
            .any(|f| f.ip.as_ref().unwrap().tcp_flags == Some(0x02)),
        "{ctx}"
    );
    assert!(
        bidi.iter()
            .any(|f| rev(f) && f.ip.as_ref().unwrap().tcp_flags == Some(0x12)),
        "{ctx}"
    );
    let m = d.metrics().unwrap();
    assert_eq!(
        counter(
            &m,
            MIRRORED,
            &[("policy", "conv-bidi"), ("output", "mon0.501")]
        ),
        bidi.len() as f64,
        "{ctx}"
    );
    assert_eq!(
        counter(
            &m,
            MIRRORED,
            &[("policy", "conv-oneway"), ("output", "mon0.502")]
        ),
        one.len() as f64,
        "{ctx}"
    );
    d.stop().expect("daemon exits 0 on SIGTERM");
}

fn ping_vids(tb: &Testbed, n: u32) -> Captured {
    let cap = tb.capture_monitor(0).unwrap();
    assert_eq!(tb.ping(1, 2, n, false).unwrap().received, n);
    cap.stop().unwrap()
}

/// (f) SIGHUP re-reads the policy directory: VLAN 100 becomes 300. A
/// directory with a broken file is rejected as a whole and the running set
/// stays; the daemon keeps serving and exits 0 on SIGTERM.
#[test]
fn sighup_reload_and_broken_file() {
    const N: u32 = 5;
    let Some(tb) = testbed("sighup_reload_and_broken_file", Options::default().vms(2)) else {
        return;
    };
    let mut d = tb
        .start_daemon(&[(
            "icmp.yaml",
            &policy("icmp", "protocol: icmp", &[("mon0", 100)]),
        )])
        .expect("daemon");
    let got = ping_vids(&tb, N);
    assert_eq!(
        got.per_vid().into_iter().collect::<Vec<_>>(),
        vec![(Some(100), 2 * N as usize)],
        "{}",
        context(&d, &got)
    );

    d.write_policies(&[(
        "icmp.yaml",
        &policy("icmp", "protocol: icmp", &[("mon0", 300)]),
    )])
    .unwrap();
    d.reload().unwrap();
    // Applied once a single ping is counted against the new output.
    let applied = wait_until(Duration::from_secs(10), || {
        tb.ping(1, 2, 1, false).is_ok()
            && d.metrics()
                .map(|m| counter(&m, MIRRORED, &[("policy", "icmp"), ("output", "mon0.300")]) > 0.0)
                .unwrap_or(false)
    });
    assert!(
        applied,
        "no copy to mon0.300 within 10 s after SIGHUP{}",
        d.metrics()
            .map(|m| m.dump("vtap_policy"))
            .unwrap_or_default()
    );
    d.check_alive().unwrap();
    let got = ping_vids(&tb, N);
    assert_eq!(
        got.per_vid().into_iter().collect::<Vec<_>>(),
        vec![(Some(300), 2 * N as usize)],
        "after reload{}",
        context(&d, &got)
    );

    // A change plus a broken file: nothing of it may apply.
    d.write_policies(&[
        ("icmp.yaml", &policy("icmp", "protocol: icmp", &[("mon0", 400)])),
        // Parses, but does not validate (the usual operator mistake).
        ("broken.yaml", "version: 1\nname: broken\ntaps: [vm1-tap]\ndirection: both\noutputs:\n  - interface: mon0\n    vlan: 5000\n"),
    ])
    .unwrap();
    // The rejection is logged (naming the file or at least the policy);
    // measure the log before the signal: the daemon may answer at once.
    let log_before = d.log().len();
    d.reload().unwrap();
    let reported = wait_until(Duration::from_secs(10), || {
        d.log()[log_before..].contains("broken")
    });
    std::thread::sleep(Duration::from_millis(300));
    d.check_alive()
        .expect("daemon survives a broken policy file on SIGHUP");
    assert!(
        reported,
        "no log line about the broken policy after the reload; log:\n{}",
        vtap_testbed::daemon::tail(&d.log(), 30)
    );
    assert_eq!(d.get("/healthz").unwrap().status, 200);
    let got = ping_vids(&tb, N);
    assert_eq!(
        got.per_vid().into_iter().collect::<Vec<_>>(),
        vec![(Some(300), 2 * N as usize)],
        "a rejected reload changed what is mirrored{}",
        context(&d, &got)
    );
    let m = d.metrics().unwrap();
    assert_eq!(
        m.find(MATCHED, &[("policy", "broken")]).len()
            + m.find(MIRRORED, &[("output", "mon0.400")]).len(),
        0,
        "{}",
        m.dump("vtap_policy")
    );
    let rejection = d.log()[log_before..].to_string();
    d.stop().expect("daemon exits 0 on SIGTERM");
    // README.md: "A bad file is rejected with every error logged (file,
    // field path, message)". Checked last, so the behaviour above is proven
    // even while this fails.
    assert!(
        rejection.contains("broken.yaml"),
        "the reload error does not name the file broken.yaml:\n{}",
        rejection.trim()
    );
    assert!(
        rejection.contains("outputs[0].vlan"),
        "the reload error does not give the field path:\n{}",
        rejection.trim()
    );
}

/// (g) A VXLAN device as output: the remote host's VXLAN device receives the
/// decapsulated copies with their VLAN tag; the underlay carries the VNI.
/// Also: SIGINT ends the daemon with status 0.
#[test]
fn vxlan_remote_mirror() {
    const N: u32 = 10;
    let Some(tb) = testbed(
        "vxlan_remote_mirror",
        Options::default().vms(2).remote(4242),
    ) else {
        return;
    };
    let mut d = tb
        .start_daemon(&[(
            "remote.yaml",
            &policy("remote", "protocol: icmp", &[("vx0", 700)]),
        )])
        .expect("daemon");
    let inner = tb.capture_remote().unwrap();
    let r = tb.remote().clone();
    let underlay = tb.capture(&r.ns, "ul0").unwrap();
    assert_eq!(tb.ping(1, 2, N, false).unwrap().received, N);
    let got = inner.stop().unwrap();
    let ul = underlay.stop().unwrap();
    let ctx = format!("{}{}", context(&d, &got), ul.dump());
    assert_eq!(got.frames.len(), 2 * N as usize, "{ctx}");
    assert!(
        got.frames
            .iter()
            .all(|f| f.vids == vec![700] && f.is_icmp_echo()),
        "{ctx}"
    );
    assert_eq!(
        got.filter(|f| echo(f, ip(&tb, 1), ip(&tb, 2), 8)).len(),
        N as usize,
        "{ctx}"
    );
    assert_eq!(ul.frames.len(), 2 * N as usize, "{ctx}");
    assert!(
        ul.frames.iter().all(|f| f
            .ip
            .as_ref()
            .is_some_and(|i| i.dport == Some(4789) && i.vxlan_vni == Some(4242))),
        "{ctx}"
    );
    let m = d.metrics().unwrap();
    assert_eq!(
        counter(&m, MIRRORED, &[("policy", "remote"), ("output", "vx0.700")]),
        2.0 * N as f64,
        "{ctx}"
    );
    // Nothing went to the local monitor.
    assert_eq!(counter(&m, MIRRORED, &[("output", "mon0")]), 0.0);
    let st = d.stop_with(libc::SIGINT).unwrap();
    assert!(
        st.success(),
        "daemon exit after SIGINT: {st:?}; log:\n{}",
        d.log()
    );
}

/// (g2) `vxlan: {remote, vni}` outputs: vtap makes its own collect-metadata
/// VXLAN device and sets each copy's tunnel key (remote, VNI) on the copy
/// alone. The remote's VXLAN device (VNI 4242) decapsulates the copies of
/// the 4242 output with their inner VLAN tag; the underlay shows both VNIs;
/// the VMs' packets carry no tunnel metadata (the ping replies come back and
/// nothing else leaves through the underlay); the device goes away with the
/// last vxlan output.
#[test]
fn vxlan_output_sets_the_tunnel_key_per_policy() {
    const N: u32 = 10;
    let Some(tb) = testbed(
        "vxlan_output_sets_the_tunnel_key_per_policy",
        Options::default().vms(2).remote(4242),
    ) else {
        return;
    };
    let r = tb.remote().clone();
    let remote_ip = "192.168.77.2";
    // The host's own VNI-4242 device holds UDP 4789 in a mode (not
    // collect-metadata) that vtap's device cannot share: remove it.
    vtap_testbed::cmd::ip(Some(&tb.host_ns), &["link", "del", &r.vxlan]).unwrap();
    let p = |name: &str, m: &str, vni: u32, vlan: u16| {
        format!(
            "version: 1\nname: {name}\ntaps: [vm1-tap]\ndirection: ingress\nmatch:\n  {m}\noutputs:\n  - vxlan: {{remote: {remote_ip}, vni: {vni}}}\n    vlan: {vlan}\n"
        )
    };
    let d = tb
        .start_daemon(&[
            ("a.yaml", &p("icmp-a", "protocol: icmp", 4242, 310)),
            ("b.yaml", &p("icmp-b", "protocol: icmp", 777, 320)),
            // No route to this remote in the host namespace: the device
            // cannot send these copies, and says so.
            (
                "c.yaml",
                &p("icmp-c", "protocol: icmp", 5, 330).replace(remote_ip, "192.168.99.1"),
            ),
        ])
        .expect("daemon");
    let inner = tb.capture_remote().unwrap();
    let underlay = tb.capture(&r.ns, "ul0").unwrap();
    assert_eq!(tb.ping(1, 2, N, false).unwrap().received, N);
    let got = inner.stop().unwrap();
    let ul = underlay.stop().unwrap();
    let ctx = format!("{}{}", context(&d, &got), ul.dump());
    // The remote's VNI-4242 device decapsulates the 4242 copies only.
    assert_eq!(got.frames.len(), N as usize, "{ctx}");
    assert!(
        got.frames
            .iter()
            .all(|f| f.vids == vec![310] && echo(f, ip(&tb, 1), ip(&tb, 2), 8)),
        "{ctx}"
    );
    // The underlay: N copies per VNI, nothing else (the VMs' own packets
    // did not follow the copies into the tunnel).
    let vni = |v: u32| {
        ul.filter(|f| {
            f.ip.as_ref()
                .is_some_and(|i| i.dport == Some(4789) && i.vxlan_vni == Some(v))
        })
        .len()
    };
    assert_eq!(vni(4242), N as usize, "{ctx}");
    assert_eq!(vni(777), N as usize, "{ctx}");
    assert_eq!(ul.frames.len(), 2 * N as usize, "{ctx}");
    let m = d.metrics().unwrap();
    let label_a = format!("vxlan:{remote_ip}/4242.310");
    assert_eq!(
        counter(&m, MIRRORED, &[("policy", "icmp-a"), ("output", &label_a)]),
        N as f64,
        "{ctx}"
    );
    let dev_failed = m.sum(
        "vtap_output_device_tx_errors_total",
        &[("interface", "vtap-vxlan")],
    ) + m.sum(
        "vtap_output_device_tx_dropped_total",
        &[("interface", "vtap-vxlan")],
    );
    assert!(
        dev_failed >= N as f64,
        "unroutable copies not counted by the device: {dev_failed}\n{}",
        m.dump("vtap_output_device")
    );
    let dev = || {
        vtap_testbed::cmd::ip(Some(&tb.host_ns), &["-d", "link", "show", "vtap-vxlan"])
            .map(|o| o.stdout)
            .unwrap_or_default()
    };
    assert!(dev().contains("vxlan external"), "{}", dev());
    // Bad input changes nothing: a multicast remote is refused by the API.
    let bad = serde_json::json!({"version": 1, "name": "bad", "taps": ["vm1-tap"],
        "outputs": [{"vxlan": {"remote": "239.1.1.1", "vni": 1}}]});
    let resp = d
        .request("PUT", "/api/v1/policies/bad", Some(&bad.to_string()))
        .unwrap();
    assert!(resp.status == 400 || resp.status == 422, "{resp:?}");
    assert!(resp.body.contains("unicast"), "{resp:?}");
    // The last vxlan output gone: the device is deleted.
    d.write_policies(&[]).unwrap();
    d.reload().unwrap();
    assert!(
        vtap_testbed::wait_until(Duration::from_secs(5), || dev().is_empty()),
        "vtap-vxlan still there: {}\n{}",
        dev(),
        d.log()
    );
    d.stop().expect("daemon exits 0");
}

/// (h) An invalid policy directory at start-up is fatal: the daemon exits
/// non-zero (it does not run with a partial set) and names the bad file.
#[test]
fn invalid_policy_dir_is_fatal_at_startup() {
    let Some(tb) = testbed(
        "invalid_policy_dir_is_fatal_at_startup",
        Options::default().vms(1),
    ) else {
        return;
    };
    let bad = "version: 1\nname: bad\ntaps: [vm1-tap]\ndirection: both\noutputs:\n  - interface: mon0\n    vlan: 5000\n";
    let err = match tb.start_daemon(&[
        (
            "good.yaml",
            &policy("good", "protocol: icmp", &[("mon0", 100)]),
        ),
        ("bad.yaml", bad),
    ]) {
        Ok(mut d) => {
            let st = d.stop_with(libc::SIGTERM);
            panic!(
                "daemon became ready with an invalid policy directory ({st:?}); log:\n{}",
                d.log()
            );
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("vtap daemon exited (exit "),
        "daemon did not exit by itself: {err}"
    );
    assert!(
        !err.contains("exited (exit 0)"),
        "exit status 0 for an invalid policy directory: {err}"
    );
    assert!(
        err.contains("bad.yaml"),
        "the error does not name bad.yaml: {err}"
    );
}
