//! Self-tests of the testbed itself (root, real kernel, no vtap daemon):
//! it comes up and goes away cleanly, VMs reach each other, captures on the
//! monitor and through the VXLAN tunnel see exactly what was sent there.

use std::net::Ipv4Addr;
use std::time::Duration;

use vtap_testbed::capture::{IPPROTO_ICMP, IPPROTO_UDP};
use vtap_testbed::{Options, Testbed, icmp_frame, inject, netns, require_root};

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

#[test]
fn comes_up_talks_and_goes_away() {
    if !require_root("comes_up_talks_and_goes_away") {
        return;
    }
    let tb = Testbed::new(Options::default().vms(3).monitors(2).remote(42)).expect("testbed");
    let names = tb.namespaces();
    assert_eq!(names.len(), 1 + 3 + 2 + 1);
    for ns in &names {
        assert!(netns::exists(ns), "{ns} missing");
        assert!(ns.starts_with(&tb.name));
    }
    let host_links = vtap_testbed::cmd::ip(Some(&tb.host_ns), &["-br", "link"])
        .unwrap()
        .stdout;
    for want in [
        "br0", "vm1-tap", "vm2-tap", "vm3-tap", "mon0", "mon1", "ul0", "vx0",
    ] {
        assert!(
            host_links.lines().any(|l| l.starts_with(want)),
            "{want} not in host ns:\n{host_links}"
        );
    }
    for (a, b) in [(1, 2), (2, 3), (3, 1)] {
        for v6 in [false, true] {
            let r = tb.ping(a, b, 5, v6).unwrap();
            assert_eq!(
                (r.transmitted, r.received),
                (5, 5),
                "ping vm{a} -> vm{b} v6={v6}"
            );
        }
    }
    let r = tb
        .tcp_transfer(1, 3, 5001, 3_000_000, false, Duration::from_secs(30))
        .unwrap();
    assert!(r.intact(), "{r:?}");
    let r = tb
        .tcp_transfer(3, 2, 5002, 1_000_000, true, Duration::from_secs(30))
        .unwrap();
    assert!(r.intact(), "{r:?}");
    let u = tb
        .udp(vtap_testbed::Udp {
            from: 2,
            to: 1,
            port: 53,
            count: 20,
            size: 60,
            ipv6: false,
            echo: true,
        })
        .unwrap();
    assert_eq!((u.sent, u.received, u.replies), (20, 20, 20));

    let name = tb.name.clone();
    let workdir = tb.workdir.clone();
    drop(tb);
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "left over namespaces: {left:?}");
    assert!(
        !workdir.exists(),
        "work dir {} left over",
        workdir.display()
    );
    let root_links = vtap_testbed::cmd::ip(None, &["-br", "link"])
        .unwrap()
        .stdout;
    for l in root_links.lines() {
        let n = l.split_whitespace().next().unwrap_or("");
        assert!(
            !n.starts_with("vm") && !n.starts_with("mon") && n != "br0",
            "interface {n} in the root namespace"
        );
    }
}

#[test]
fn silent_when_idle() {
    if !require_root("silent_when_idle") {
        return;
    }
    let tb = Testbed::new(Options::default().vms(2)).unwrap();
    // Every packet crossing the bridge passes a vm tap: capture on both.
    let c1 = tb.capture(&tb.host_ns, "vm1-tap").unwrap();
    let c2 = tb.capture(&tb.host_ns, "vm2-tap").unwrap();
    let m = tb.capture_monitor(0).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    for c in [c1, c2, m] {
        let got = c.stop().unwrap();
        assert!(
            got.frames.is_empty(),
            "idle testbed is not silent:\n{}",
            got.dump()
        );
    }
}

#[test]
fn monitor_capture_sees_injected_tagged_frames() {
    if !require_root("monitor_capture_sees_injected_tagged_frames") {
        return;
    }
    let tb = Testbed::new(Options::default().vms(2).monitors(2)).unwrap();
    let (a, b) = (tb.vm(1).clone(), tb.vm(2).clone());
    let cap0 = tb.capture_monitor(0).unwrap();
    let cap1 = tb.capture_monitor(1).unwrap();
    let mut frames = Vec::new();
    for seq in 0..10u16 {
        frames.push(icmp_frame(
            mac(&a.mac),
            mac(&b.mac),
            &[100],
            a.ipv4,
            b.ipv4,
            8,
            seq,
        ));
        frames.push(icmp_frame(
            mac(&b.mac),
            mac(&a.mac),
            &[100],
            b.ipv4,
            a.ipv4,
            0,
            seq,
        ));
    }
    frames.push(icmp_frame(
        mac(&a.mac),
        mac(&b.mac),
        &[],
        a.ipv4,
        b.ipv4,
        8,
        99,
    ));
    frames.push(icmp_frame(
        mac(&a.mac),
        mac(&b.mac),
        &[10, 20],
        a.ipv4,
        b.ipv4,
        8,
        98,
    ));
    inject(&tb.host_ns, "mon0", frames).unwrap();
    let got = cap0.stop().unwrap();
    let other = cap1.stop().unwrap();
    assert_eq!(got.dropped_by_kernel, 0);
    assert_eq!(got.frames.len(), 22, "{}", got.dump());
    assert_eq!(got.with_vid(100).len(), 20, "{}", got.dump());
    assert!(got.with_vid(100).iter().all(|f| f.is_icmp_echo()));
    assert_eq!(
        got.with_vid(100)
            .iter()
            .filter(|f| f.is_between(a.ipv4.into(), b.ipv4.into()))
            .count(),
        10
    );
    assert_eq!(got.filter(|f| f.vids.is_empty()).len(), 1);
    assert_eq!(
        got.filter(|f| f.vids == vec![10, 20]).len(),
        1,
        "{}",
        got.dump()
    );
    assert!(
        other.frames.is_empty(),
        "mon1 got frames sent to mon0:\n{}",
        other.dump()
    );
}

#[test]
fn vxlan_output_reaches_remote() {
    if !require_root("vxlan_output_reaches_remote") {
        return;
    }
    let tb = Testbed::new(Options::default().vms(2).remote(4242)).unwrap();
    let r = tb.remote().clone();
    let (a, b) = (tb.vm(1).clone(), tb.vm(2).clone());
    let inner = tb.capture_remote().unwrap();
    let underlay = tb.capture(&r.ns, "ul0").unwrap();
    let frames: Vec<Vec<u8>> = (0..5u16)
        .map(|s| icmp_frame(mac(&a.mac), mac(&b.mac), &[321], a.ipv4, b.ipv4, 8, s))
        .collect();
    inject(&tb.host_ns, &r.vxlan, frames).unwrap();
    let got = inner.stop().unwrap();
    let ul = underlay.stop().unwrap();
    assert_eq!(got.frames.len(), 5, "{}", got.dump());
    assert!(
        got.frames
            .iter()
            .all(|f| f.vid() == Some(321) && f.proto() == Some(IPPROTO_ICMP)),
        "{}",
        got.dump()
    );
    assert_eq!(ul.frames.len(), 5, "{}", ul.dump());
    for f in &ul.frames {
        let ip = f.ip.as_ref().unwrap();
        assert_eq!(ip.proto, IPPROTO_UDP);
        assert_eq!(ip.dport, Some(4789));
        assert_eq!(ip.vxlan_vni, Some(4242));
        assert_eq!(
            (ip.src, ip.dst),
            (
                Ipv4Addr::new(192, 168, 77, 1).into(),
                Ipv4Addr::new(192, 168, 77, 2).into()
            )
        );
    }
}

#[test]
fn options_mtu_and_offloads() {
    if !require_root("options_mtu_and_offloads") {
        return;
    }
    let tb = Testbed::new(Options::default().vms(2).mtu(9000).offloads(false)).unwrap();
    let link = vtap_testbed::cmd::ip(Some(&tb.vm(1).ns), &["link", "show", "eth0"])
        .unwrap()
        .stdout;
    assert!(link.contains("mtu 9000"), "{link}");
    let k = tb
        .exec(
            &tb.vm(1).ns,
            "ethtool",
            &["-k", "eth0"],
            Duration::from_secs(10),
        )
        .unwrap()
        .stdout;
    assert!(k.contains("tcp-segmentation-offload: off"), "{k}");
    assert!(k.contains("generic-segmentation-offload: off"), "{k}");
    // Without GSO/TSO no frame on the tap exceeds the MTU.
    let cap = tb.capture(&tb.host_ns, "vm1-tap").unwrap();
    let r = tb
        .tcp_transfer(1, 2, 5001, 2_000_000, false, Duration::from_secs(30))
        .unwrap();
    assert!(r.intact());
    let got = cap.stop().unwrap();
    assert!(!got.frames.is_empty());
    assert!(
        got.frames.iter().all(|f| f.origlen <= 9014),
        "{}",
        got.dump()
    );
}

#[test]
fn cleanup_on_panic_and_background_processes_end() {
    if !require_root("cleanup_on_panic_and_background_processes_end") {
        return;
    }
    let h = std::thread::spawn(|| {
        let tb = Testbed::new(Options::default().vms(1)).unwrap();
        let name = tb.name.clone();
        let p = tb.spawn(&tb.vm(1).ns, "sleep", &["300"]).unwrap();
        let pid = p.pid().unwrap();
        // Hand the names out before panicking.
        std::fs::write(
            format!("/tmp/vtap-testbed-panic-{}", std::process::id()),
            format!("{name} {pid}"),
        )
        .unwrap();
        let _keep = p;
        panic!("deliberate panic inside a testbed");
    });
    assert!(h.join().is_err());
    let f = format!("/tmp/vtap-testbed-panic-{}", std::process::id());
    let s = std::fs::read_to_string(&f).unwrap();
    let _ = std::fs::remove_file(&f);
    let (name, pid) = s.split_once(' ').unwrap();
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "left over after panic: {left:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "background process {pid} survived"
    );
    // The panicking testbed keeps its work directory for inspection.
    let _ = std::fs::remove_dir_all(vtap_testbed::testbed::work_root().join(name));
}
