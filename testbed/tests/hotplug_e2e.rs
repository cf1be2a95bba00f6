//! Hot-plug: interfaces that appear are attached at once (rtnetlink link
//! events, not the periodic re-check), and interfaces that come and go many
//! times leave nothing behind.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test hotplug_e2e`

use std::time::{Duration, Instant};

use serde_json::Value;
use vtap_testbed::cmd;
use vtap_testbed::{Options, Testbed, require_root, wait_until};

/// What the daemon `pid` holds in the kernel: its BPF links (link fds in
/// /proc/PID/fdinfo), and the entries of its tap table (`vtap_tap_sel`,
/// dumped with bpftool).
fn kernel_objects(pid: u32) -> (usize, usize) {
    let (links, maps) = vtap_testbed::bpf_fds(pid).expect("fdinfo");
    let links = links.len();
    let maps: Vec<String> = maps.iter().map(|m| m.to_string()).collect();
    let json = |args: &[&str]| -> Value {
        let o = std::process::Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool");
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    };
    let tap_sel = maps
        .iter()
        .find(|id| json(&["-j", "map", "show", "id", id])["name"] == "vtap_tap_sel")
        .expect("the daemon's vtap_tap_sel");
    let entries = json(&["-j", "map", "dump", "id", tap_sel])
        .as_array()
        .map_or(0, |a| a.len());
    (links, entries)
}

#[test]
fn interfaces_are_attached_on_their_link_event_and_leave_nothing_behind() {
    const TEST: &str = "interfaces_are_attached_on_their_link_event_and_leave_nothing_behind";
    if !require_root(TEST) {
        return;
    }
    let tb = Testbed::new(Options::default().vms(2))
        .unwrap_or_else(|e| panic!("{TEST}: cannot build testbed: {e:#}"));
    // The periodic re-check is a minute away: only the link event can
    // attach within the bound below.
    let cfg = tb.path("vtapd", "yaml");
    std::fs::write(&cfg, "refresh_ms: 60000\n").unwrap();
    let policy =
        "version: 1\nname: hp\ntaps: [\"hp*\"]\noutputs:\n  - interface: mon0\n    vlan: 70\n";
    let d = tb
        .start_daemon_with(&[("hp.yaml", policy)], &["--config", cfg.to_str().unwrap()])
        .expect("daemon");
    let ns = tb.host_ns.clone();
    let tap = |d: &vtap_testbed::Daemon| -> Value {
        let r = d.get("/api/v1/taps/hp0").unwrap();
        serde_json::from_str(&r.body).unwrap_or(Value::Null)
    };
    let pid = d.pid().expect("daemon pid");
    let before = kernel_objects(pid);
    let mut worst = Duration::ZERO;
    let mut at_10 = None;
    for round in 0..100 {
        if round == 10 {
            at_10 = Some(kernel_objects(pid));
        }
        let t0 = Instant::now();
        cmd::ip(
            Some(&ns),
            &["link", "add", "hp0", "type", "veth", "peer", "name", "hq0"],
        )
        .unwrap();
        cmd::ip(Some(&ns), &["link", "set", "hp0", "up"]).unwrap();
        cmd::ip(Some(&ns), &["link", "set", "hq0", "up"]).unwrap();
        let ok = wait_until(Duration::from_secs(3), || tap(&d)["state"] == "attached");
        let took = t0.elapsed();
        assert!(
            ok,
            "round {round}: hp0 not attached: {:#}\n{}",
            tap(&d),
            d.log()
        );
        worst = worst.max(took);
        cmd::ip(Some(&ns), &["link", "del", "hp0"]).unwrap();
        // Gone: detached and forgotten (a glob's interface is listed only
        // while it exists).
        assert!(
            wait_until(Duration::from_secs(3), || d
                .get("/api/v1/taps/hp0")
                .is_ok_and(|r| r.status == 404)),
            "round {round}: hp0 still listed: {:#}",
            tap(&d)
        );
    }
    assert!(
        worst < Duration::from_secs(1),
        "slowest attach {worst:?} (bound 1 s)"
    );
    // Nothing left behind in the kernel either: no BPF link, and the tap
    // table does not grow with the rounds. The active generation has no
    // entry; the inactive one still holds the set before the last change
    // (hp0's two directions) until the next change rewrites it.
    let after = kernel_objects(pid);
    assert_eq!(before, (0, 0));
    assert_eq!(after.0, 0, "BPF links left: {after:?}");
    assert!(
        after.1 <= 2,
        "tap table entries after 100 rounds: {}",
        after.1
    );
    assert_eq!(Some(after), at_10, "grew between round 10 and round 100");
    // Nothing left behind: no tap entry, no attached link.
    let r = d.get("/api/v1/taps").unwrap();
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["taps"], serde_json::json!([]), "{v:#}");
    let m = d.metrics().unwrap();
    assert_eq!(
        m.sum("vtap_tap_attached", &[("tap", "hp0")]),
        0.0,
        "{}",
        m.dump("vtap_tap")
    );
    d.stop().expect("daemon exits 0");
}

/// An output interface that vanishes: its copies are counted as
/// `output_down` (not silently lost) and resume when it comes back.
#[test]
fn copies_to_a_vanished_output_are_counted_and_resume_when_it_returns() {
    const TEST: &str = "copies_to_a_vanished_output_are_counted_and_resume_when_it_returns";
    if !require_root(TEST) {
        return;
    }
    let tb = Testbed::new(Options::default().vms(2))
        .unwrap_or_else(|e| panic!("{TEST}: cannot build testbed: {e:#}"));
    let ns = tb.host_ns.clone();
    let mk = || {
        cmd::ip(
            Some(&ns),
            &[
                "link", "add", "out0", "type", "veth", "peer", "name", "out1",
            ],
        )
        .unwrap();
        cmd::ip(Some(&ns), &["link", "set", "out0", "up"]).unwrap();
        cmd::ip(Some(&ns), &["link", "set", "out1", "up"]).unwrap();
    };
    mk();
    let policy = "version: 1\nname: o\ntaps: [vm1-tap]\ndirection: ingress\nmatch: {protocol: icmp}\noutputs:\n  - interface: out0\n    vlan: 71\n";
    let d = tb.start_daemon(&[("o.yaml", policy)]).expect("daemon");
    let m = |name: &str, l: &[(&str, &str)]| d.metrics().unwrap().sum(name, l);
    let mirrored = || m("vtap_policy_mirrored_packets_total", &[("policy", "o")]);
    let down = || {
        m(
            "vtap_policy_dropped_copies_total",
            &[("policy", "o"), ("reason", "output_down")],
        )
    };
    assert_eq!(tb.ping(1, 2, 5, false).unwrap().received, 5);
    assert_eq!((mirrored(), down()), (5.0, 0.0));
    // Gone: the VM's traffic flows on, each copy is counted as output_down.
    cmd::ip(Some(&ns), &["link", "del", "out0"]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tb.ping(1, 2, 5, false).unwrap().received, 5);
    assert_eq!((mirrored(), down()), (5.0, 5.0), "{}", d.log());
    // Back (a new ifindex): copies resume within a second.
    mk();
    assert!(
        wait_until(Duration::from_secs(2), || {
            let _ = tb.ping(1, 2, 1, false);
            mirrored() > 5.0
        }),
        "copies did not resume\n{}",
        d.log()
    );
    d.stop().expect("daemon exits 0");
}
