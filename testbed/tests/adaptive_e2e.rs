//! Adaptive mirroring end to end: a policy with `when:` on the SYN-flood
//! library probe mirrors SYNs only while a flood is on. Normal connection
//! attempts leave it off; a flood from VM1 turns it on within 1 s; when the
//! flood stops it turns off again; each change is counted and visible in
//! the policy's status. Suricata on the monitor raises its SYN-flood alert
//! on the copies, tagged with the policy's VLAN.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test adaptive_e2e`

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vtap_testbed::suricata::{self, SID_SYN_FLOOD};
use vtap_testbed::{Daemon, Options, Testbed, netns, require_root, wait_until};

const POLICY: &str = "version: 1
name: syn-watch
taps: [vm1-tap]
direction: ingress
match:
  protocol: tcp
  tcp_flags: [syn, \"!ack\"]
when: {probe: syn-flood, metric: syn_total, above: 300}
outputs:
  - interface: mon0
    vlan: 900
";

fn library(file: &str) -> String {
    vtap_testbed::probe_library(file)
}

fn inject_syn_probe(d: &Daemon) {
    let mut spec: Value = serde_yaml::from_str(&library("syn_flood.yaml")).unwrap();
    let o = spec.as_object_mut().unwrap();
    o.remove("source_file");
    o.insert("source".into(), json!(library("syn_flood.c")));
    o.insert(
        "attach".into(),
        json!({"taps": ["vm1-tap"], "hook": "tc", "direction": "ingress"}),
    );
    let r = d
        .request("PUT", "/api/v1/probes/syn-flood", Some(&spec.to_string()))
        .unwrap();
    assert!(r.status == 201 || r.status == 200, "{r:?}");
}

fn metric(d: &Daemon, name: &str) -> f64 {
    d.metrics().unwrap().sum(name, &[("policy", "syn-watch")])
}

/// TCP connection attempts from `ns` to a closed port of `dst` (each one a
/// SYN answered by a RST) every `gap` (zero: as fast as possible) until
/// `stop`; returns the number of attempts.
fn connect_loop(
    ns: &str,
    dst: SocketAddr,
    gap: Duration,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    limit: Duration,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    netns::spawn_in_netns(ns, move || {
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < limit {
            let _ = TcpStream::connect_timeout(&dst, Duration::from_millis(100));
            count.fetch_add(1, Ordering::Relaxed);
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        Ok(())
    })
    .unwrap()
}

#[test]
fn a_syn_flood_turns_mirroring_on_within_a_second_and_off_after_it() {
    const TEST: &str = "a_syn_flood_turns_mirroring_on_within_a_second_and_off_after_it";
    if !require_root(TEST) || !suricata::require_suricata(TEST) {
        return;
    }
    let tb = Testbed::new(Options::default().vms(2).monitor_mtu(65535))
        .unwrap_or_else(|e| panic!("{TEST}: cannot build testbed: {e:#}"));
    let mut ids = tb
        .start_suricata(0, &suricata::test_rules())
        .expect("suricata on the monitor");
    let d = tb.start_daemon(&[("syn.yaml", POLICY)]).expect("daemon");
    let status = || -> Value {
        serde_json::from_str(&d.get("/api/v1/policies/syn-watch").unwrap().body).unwrap()
    };
    // Without the probe the condition cannot hold.
    assert!(
        wait_until(Duration::from_secs(3), || status()["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("probe syn-flood is not loaded"))),
        "{:#}",
        status()
    );
    inject_syn_probe(&d);
    let vm1 = tb.vm(1).ns.clone();
    let dst: SocketAddr = format!("{}:9", tb.addr(2, false)).parse().unwrap();
    let cap = tb.capture_monitor(0).unwrap();

    // 1. Ordinary connection attempts (~10/s for 2 s): stays off.
    let stop = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(AtomicU64::new(0));
    connect_loop(
        &vm1,
        dst,
        Duration::from_millis(100),
        stop.clone(),
        slow.clone(),
        Duration::from_secs(2),
    )
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(metric(&d, "vtap_policy_condition_active"), 0.0);
    assert_eq!(metric(&d, "vtap_policy_activations_total"), 0.0);
    let reason = status()["status"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(reason.contains("condition does not hold"), "{:#}", status());

    // 2. A flood: on within 1 s of its start.
    let flood_n = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    // Paced (a few thousand SYNs per second, far above the 300/s
    // threshold) so the monitor's capture and Suricata keep up.
    let flood = connect_loop(
        &vm1,
        dst,
        Duration::from_micros(200),
        stop.clone(),
        flood_n.clone(),
        Duration::from_secs(10),
    );
    let on = wait_until(Duration::from_secs(3), || {
        metric(&d, "vtap_policy_condition_active") == 1.0
    });
    let took = t0.elapsed();
    // Keep flooding a little so copies flow while it is on.
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap().unwrap();
    let flood_secs = t0.elapsed().as_secs_f64();
    let sent = flood_n.load(Ordering::Relaxed);
    assert!(
        on,
        "not activated; {} SYNs in {flood_secs:.1} s\n{}",
        sent,
        d.log()
    );
    assert!(
        took < Duration::from_secs(1),
        "activated {took:?} after the flood started (bound 1 s); {sent} SYNs in {flood_secs:.1} s"
    );
    assert!(d.log().contains("policy activated"), "{}", d.log());

    // 3. Flood over: off again (hold 1 s + the 1 s rate window).
    assert!(
        wait_until(Duration::from_secs(4), || metric(
            &d,
            "vtap_policy_condition_active"
        ) == 0.0),
        "still active after the flood\n{}",
        d.log()
    );
    assert_eq!(metric(&d, "vtap_policy_activations_total"), 1.0);
    assert_eq!(metric(&d, "vtap_policy_deactivations_total"), 1.0);
    let mirrored = metric(&d, "vtap_policy_mirrored_packets_total");
    // Slow attempts now are not mirrored.
    let stop2 = Arc::new(AtomicBool::new(false));
    connect_loop(
        &vm1,
        dst,
        Duration::from_millis(100),
        stop2,
        Arc::new(AtomicU64::new(0)),
        Duration::from_secs(1),
    )
    .join()
    .unwrap()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(&d, "vtap_policy_mirrored_packets_total"),
        mirrored,
        "copies after deactivation"
    );
    // Suricata on the monitor saw the flood through the copies.
    let alerts = ids
        .wait_alerts(Duration::from_secs(10), |a| {
            a.iter().any(|x| x.sid == SID_SYN_FLOOD)
        })
        .unwrap_or_else(|e| panic!("no SYN-flood alert: {e:#}\n{}", ids.diagnostics()));
    let flood_alerts: Vec<_> = alerts.iter().filter(|a| a.sid == SID_SYN_FLOOD).collect();
    assert!(
        flood_alerts.iter().all(|a| a.vlan == vec![900]),
        "{flood_alerts:#?}"
    );
    let st = ids
        .wait_packets(mirrored as u64, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ids.diagnostics()));
    assert_eq!(st.kernel_drops, 0, "{}", st.summary());
    ids.stop().unwrap();
    let got = cap.stop().unwrap();
    let copies = got.with_vid(900).len() as f64;
    assert!(mirrored > 0.0, "no copies while active");
    assert_eq!(copies, mirrored, "{}", got.dump());
    // Only SYNs while it was on: a fraction of the flood.
    assert!(copies < sent as f64, "{copies} copies of {sent} SYNs");
    eprintln!(
        "{TEST}: activated after {took:?}; flood {sent} SYNs in {flood_secs:.1} s; {copies} mirrored"
    );
    d.stop().expect("daemon exits 0");
}
