//! Hot-plug: interfaces that appear are attached at once (rtnetlink link
//! events, not the periodic re-check), and interfaces that come and go many
//! times leave nothing behind.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test hotplug_e2e`

use std::time::{Duration, Instant};

use serde_json::Value;
use vtap_testbed::cmd;
use vtap_testbed::{Options, Testbed, require_root, wait_until};

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
    let mut worst = Duration::ZERO;
    for round in 0..30 {
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
