//! Real QEMU VMs (TCG) on tap devices: the guests' own kernels send the
//! traffic, vtap taps their tap devices on the host bridge.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test vm_e2e -- --test-threads 1`
//! (the first run builds the guest image, see testbed/vm/README.md).

use std::time::{Duration, Instant};

use serde_json::Value;
use vtap_testbed::vm::{QemuVm, VmSet};
use vtap_testbed::{Daemon, Options, Testbed, cmd, require_root, wait_until};

const SEC: Duration = Duration::from_secs(1);

fn testbed(test: &str) -> Testbed {
    Testbed::new(Options::default().vms(0))
        .unwrap_or_else(|e| panic!("{test}: cannot build testbed: {e:#}"))
}

fn start(tb: &Testbed, n: usize) -> VmSet<'_> {
    let t0 = Instant::now();
    let vms = VmSet::start(tb, n).unwrap_or_else(|e| panic!("cannot boot {n} VMs: {e:#}"));
    eprintln!(
        "booted {n} VMs in {:?} ({})",
        t0.elapsed(),
        vms.running()
            .map(|v| format!("{}: {:?}", v.name(), v.boot_time))
            .collect::<Vec<_>>()
            .join(", ")
    );
    vms
}

/// Writes `kib` KiB of random data to /www/NAME in `vm`; returns its MD5.
fn make_file(vm: &QemuVm, name: &str, kib: u32) -> String {
    let out = vm
        .run_ok(
            &format!(
                "dd if=/dev/urandom of=/www/{name} bs=1024 count={kib} 2>/dev/null && md5sum /www/{name}"
            ),
            20 * SEC,
        )
        .unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

/// Starts busybox httpd on port 80 in `vm` and waits until it answers.
fn start_httpd(vm: &QemuVm) {
    vm.spawn_bg("exec httpd -f -p 80 -h /www").unwrap();
    vm.wait_listening(80, false, 10 * SEC).unwrap();
}

/// MD5 of `http://ADDR/NAME` fetched from `vm`.
fn fetch_md5(vm: &QemuVm, addr: &str, name: &str) -> String {
    let out = vm
        .run_ok(
            &format!("set -o pipefail; wget -q -O - http://{addr}/{name} | md5sum"),
            30 * SEC,
        )
        .unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

fn tap_state(d: &Daemon, tap: &str) -> Value {
    match d.get(&format!("/api/v1/taps/{tap}")) {
        Ok(r) if r.status == 200 => serde_json::from_str(&r.body).unwrap_or(Value::Null),
        Ok(r) => serde_json::json!({"http_status": r.status}),
        Err(e) => serde_json::json!({"error": format!("{e:#}")}),
    }
}

fn attached(d: &Daemon, tap: &str) -> bool {
    tap_state(d, tap)["state"] == "attached"
}

/// The BPF links process `pid` holds (link fds in /proc/PID/fdinfo), as the
/// `ifindex:` each is attached to (0 for a link without a device, e.g. one
/// whose device is gone).
fn links_of(pid: u32) -> Vec<u32> {
    vtap_testbed::bpf_fds(pid).unwrap().0
}

fn ifindex(ns: &str, dev: &str) -> u32 {
    let out = cmd::ip(Some(ns), &["-j", "link", "show", dev]).unwrap();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v[0]["ifindex"].as_u64().unwrap() as u32
}

/// Every packet the guests send, tagged with VLAN 100, to mon0.
const MIRROR_ALL: &str = "version: 1\nname: vms\ntaps: [\"vm*-tap\"]\ndirection: ingress\n\
                          outputs:\n  - interface: mon0\n    vlan: 100\n";

#[test]
fn agent_runs_commands_with_exit_codes_timeouts_and_background_jobs() {
    const TEST: &str = "agent_runs_commands_with_exit_codes_timeouts_and_background_jobs";
    if !require_root(TEST) {
        return;
    }
    let tb = testbed(TEST);
    let vms = start(&tb, 1);
    let vm = vms.vm(1);

    let o = vm
        .output("echo out; echo err >&2; cd /tmp; pwd; exit 3", 10 * SEC)
        .unwrap();
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (3, "out\n/tmp\n", "err\n")
    );
    // Quoting survives: the script travels base64-encoded.
    let (rc, out) = vm
        .run(r#"printf '%s|' "a b" 'c"d' "$((6*7))""#, 10 * SEC)
        .unwrap();
    assert_eq!((rc, out.as_str()), (0, "a b|c\"d|42|"));
    // Round trip of a trivial command.
    let t0 = Instant::now();
    for _ in 0..20 {
        vm.run_ok("true", 10 * SEC).unwrap();
    }
    eprintln!("agent round trip: {:?}", t0.elapsed() / 20);
    // Long output, exact.
    let out = vm.run_ok("seq 1 20000", 20 * SEC).unwrap();
    assert_eq!(out.lines().count(), 20000);
    assert_eq!(out.lines().last(), Some("20000"));
    // iproute2's ip, not busybox's.
    let out = vm.run_ok("ip -V", 10 * SEC).unwrap();
    assert!(out.contains("iproute2"), "{out}");
    assert!(
        vm.run_ok("iperf3 --version", 10 * SEC)
            .unwrap()
            .contains("iperf 3")
    );

    // A timeout kills the whole process group, children included.
    let t0 = Instant::now();
    let e = vm
        .run("sleep 300 & sleep 301; echo never", 2 * SEC)
        .unwrap_err();
    assert!(format!("{e:#}").contains("did not finish"), "{e:#}");
    assert!(t0.elapsed() < 10 * SEC, "{:?}", t0.elapsed());
    let ps = vm.run_ok("ps", 10 * SEC).unwrap();
    assert!(!ps.contains("sleep 30"), "left behind:\n{ps}");
    // The agent still answers afterwards.
    assert_eq!(vm.run_ok("echo ok", 10 * SEC).unwrap(), "ok\n");

    // Background jobs: output, exit code, kill.
    let p = vm
        .spawn_bg("echo started; sleep 1; echo done; exit 7")
        .unwrap();
    assert_eq!(vm.bg_wait(&p, 10 * SEC).unwrap(), 7);
    assert_eq!(vm.bg_output(&p).unwrap(), "started\ndone\n");
    let p = vm.spawn_bg("sleep 400 & sleep 401").unwrap();
    assert!(vm.run_ok("ps", 10 * SEC).unwrap().contains("sleep 401"));
    vm.bg_kill(&p).unwrap();
    let ps = vm.run_ok("ps", 10 * SEC).unwrap();
    assert!(!ps.contains("sleep 40"), "left behind:\n{ps}");
    drop(vms);
    // Dropping the set removed the tap.
    let out = cmd::ip(Some(&tb.host_ns), &["-br", "link"]).unwrap();
    assert!(!out.stdout.contains("vm1-tap"), "{}", out.stdout);
}

#[test]
fn two_vms_ping_fetch_over_http_and_run_iperf3() {
    const TEST: &str = "two_vms_ping_fetch_over_http_and_run_iperf3";
    if !require_root(TEST) {
        return;
    }
    let tb = testbed(TEST);
    let vms = start(&tb, 2);
    let (vm1, vm2) = (vms.vm(1), vms.vm(2));

    assert_eq!(vms.ping(1, 2, 5, false).unwrap(), 5);
    assert_eq!(vms.ping(2, 1, 3, true).unwrap(), 3, "IPv6");

    let want = make_file(vm2, "blob", 4096);
    start_httpd(vm2);
    let t0 = Instant::now();
    assert_eq!(fetch_md5(vm1, "10.0.0.2", "blob"), want);
    eprintln!("HTTP: 4 MiB in {:?}", t0.elapsed());

    let srv = vm2.spawn_bg("exec iperf3 -s -1").unwrap();
    vm2.wait_listening(5201, false, 10 * SEC).unwrap();
    let out = vm1.run_ok("iperf3 -c 10.0.0.2 -t 2 -J", 30 * SEC).unwrap();
    let j: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let bps = j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    eprintln!(
        "iperf3 TCP vm1 -> vm2 (TCG guests): {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 10e6, "{bps} bit/s\n{out}");
    assert_eq!(vm2.bg_wait(&srv, 10 * SEC).unwrap(), 0);
    vms.stop_all().unwrap();
}

#[test]
fn taps_of_vms_booted_after_the_policy_are_attached_and_mirrored() {
    const TEST: &str = "taps_of_vms_booted_after_the_policy_are_attached_and_mirrored";
    if !require_root(TEST) {
        return;
    }
    let tb = testbed(TEST);
    // The policy names the taps before any of them exists.
    let d = tb
        .start_daemon(&[("vms.yaml", MIRROR_ALL)])
        .unwrap_or_else(|e| panic!("{TEST}: daemon: {e:#}"));
    assert_eq!(d.get("/api/v1/taps/vm1-tap").unwrap().status, 404);
    let vms = start(&tb, 2);
    for tap in ["vm1-tap", "vm2-tap"] {
        assert!(
            wait_until(5 * SEC, || attached(&d, tap)),
            "{tap}: {:#}\n{}",
            tap_state(&d, tap),
            d.log()
        );
    }
    let (vm1, vm2) = (vms.vm(1), vms.vm(2));
    let want = make_file(vm2, "blob", 1024);
    start_httpd(vm2);

    // Silent guests: nothing is mirrored while they are idle (no ARP, ND,
    // MLD or router solicitations).
    let cap = tb.capture_monitor(0).unwrap();
    std::thread::sleep(2 * SEC);
    let idle = cap.stop().unwrap();
    assert!(idle.frames.is_empty(), "idle guests sent:\n{}", idle.dump());

    let cap = tb.capture_monitor(0).unwrap();
    assert_eq!(vms.ping(1, 2, 5, false).unwrap(), 5);
    assert_eq!(
        fetch_md5(vm1, "10.0.0.2", "blob"),
        want,
        "VM traffic intact"
    );
    let got = cap.stop().unwrap();

    let (a1, a2) = (vms.addr(1, false), vms.addr(2, false));
    let copies = got.with_vid(100);
    let echo = |s, d| {
        copies
            .iter()
            .filter(|f| f.is_icmp_echo() && f.is_between(s, d))
            .count()
    };
    assert!(echo(a1, a2) >= 5, "requests vm1 -> vm2\n{}", got.dump());
    assert!(echo(a2, a1) >= 5, "replies vm2 -> vm1\n{}", got.dump());
    let http = |s, d, port_of: fn(&vtap_testbed::IpInfo) -> Option<u16>| {
        copies
            .iter()
            .filter(|f| {
                f.is_between(s, d) && f.ip.as_ref().is_some_and(|ip| port_of(ip) == Some(80))
            })
            .map(|f| f.origlen)
            .sum::<usize>()
    };
    assert!(http(a1, a2, |ip| ip.dport) > 0, "requests\n{}", got.dump());
    // The 1 MiB answer, copied whole (GSO super-packets included).
    let answer = http(a2, a1, |ip| ip.sport);
    assert!(
        answer > 1024 * 1024,
        "{answer} bytes of answer\n{}",
        got.dump()
    );
    // Only the guests' traffic: nothing untagged, nothing from elsewhere.
    assert_eq!(copies.len(), got.frames.len(), "{}", got.dump());
    let macs = [vms.spec(1).mac.as_str(), vms.spec(2).mac.as_str()];
    for f in &got.frames {
        let src = f
            .src_mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert!(macs.contains(&src.as_str()), "copy from {src}: {f}");
    }

    let m = d.metrics().unwrap();
    let mirrored = m.sum("vtap_policy_mirrored_packets_total", &[("policy", "vms")]);
    assert!(
        mirrored >= copies.len() as f64,
        "mirrored {mirrored}, copies {}\n{}",
        copies.len(),
        m.dump("vtap_policy")
    );
    vms.stop_all().unwrap();
    d.stop().expect("daemon exits 0");
}

#[test]
fn a_vm_stopped_and_booted_20_times_is_reattached_each_time_and_leaks_nothing() {
    const TEST: &str = "a_vm_stopped_and_booted_20_times_is_reattached_each_time_and_leaks_nothing";
    if !require_root(TEST) {
        return;
    }
    let t_start = Instant::now();
    let tb = testbed(TEST);
    let d = tb
        .start_daemon(&[("vms.yaml", MIRROR_ALL)])
        .unwrap_or_else(|e| panic!("{TEST}: daemon: {e:#}"));
    let pid = d.pid().expect("daemon pid");
    let mut vms = start(&tb, 2);
    for tap in ["vm1-tap", "vm2-tap"] {
        assert!(
            wait_until(5 * SEC, || attached(&d, tap)),
            "{tap}: {:#}",
            tap_state(&d, tap)
        );
    }
    let links_before = links_of(pid);
    let on_tap = |links: &[u32]| {
        let i = ifindex(&tb.host_ns, "vm2-tap");
        links.iter().filter(|&&l| l == i).count()
    };
    let tap_links = on_tap(&links_before);
    assert!(tap_links > 0, "no link on vm2-tap: {links_before:?}");
    let (a1, a2) = (vms.addr(1, false), vms.addr(2, false));

    let (mut boots, mut stops) = (Vec::new(), Vec::new());
    for round in 0..20 {
        let t0 = Instant::now();
        vms.stop(2)
            .unwrap_or_else(|e| panic!("round {round}: stop: {e:#}"));
        stops.push(t0.elapsed());
        // Gone: detached and forgotten.
        assert!(
            wait_until(5 * SEC, || d
                .get("/api/v1/taps/vm2-tap")
                .is_ok_and(|r| r.status == 404)),
            "round {round}: vm2-tap still listed: {:#}",
            tap_state(&d, "vm2-tap")
        );
        let vm2 = vms
            .boot(2)
            .unwrap_or_else(|e| panic!("round {round}: boot: {e:#}"));
        boots.push(vm2.boot_time);
        assert!(
            wait_until(5 * SEC, || attached(&d, "vm2-tap")),
            "round {round}: {:#}\n{}",
            tap_state(&d, "vm2-tap"),
            d.log()
        );
        let cap = tb.capture_monitor(0).unwrap();
        assert_eq!(vms.ping(1, 2, 2, false).unwrap(), 2, "round {round}");
        let got = cap.stop().unwrap();
        // The replies leave vm2 through the re-created tap.
        let replies = got
            .with_vid(100)
            .iter()
            .filter(|f| f.is_icmp_echo() && f.is_between(a2, a1))
            .count();
        assert_eq!(replies, 2, "round {round}\n{}", got.dump());
    }
    let max = boots.iter().max().unwrap();
    let avg = boots.iter().sum::<Duration>() / boots.len() as u32;
    let stop_avg = stops.iter().sum::<Duration>() / stops.len() as u32;
    eprintln!(
        "20 boots of vm2: average {avg:?}, slowest {max:?}; stop (poweroff) average {stop_avg:?}"
    );

    // As many links as before, on the current vm2-tap as many as on the
    // first one, none left without a device.
    let links_after = links_of(pid);
    assert_eq!(
        links_after.len(),
        links_before.len(),
        "before {links_before:?}, after {links_after:?}"
    );
    assert_eq!(on_tap(&links_after), tap_links, "{links_after:?}");
    assert!(!links_after.contains(&0), "{links_after:?}");
    let m = d.metrics().unwrap();
    assert_eq!(
        m.sum("vtap_tap_attached", &[("tap", "vm2-tap")]),
        1.0,
        "{}",
        m.dump("vtap_tap")
    );
    vms.stop_all().unwrap();
    d.stop().expect("daemon exits 0");
    eprintln!("{TEST}: {:?}", t_start.elapsed());
}

/// The IDS scenario with real VMs: policies by glob before the VMs exist
/// (ICMP → VLAN 100, web → VLAN 200); Suricata on the monitor (MTU 65535)
/// raises the test rules' alerts on the copies, each with its policy's VLAN;
/// its capture counters show no kernel drop and no truncated packet; the
/// VMs' own transfer is intact.
#[test]
fn suricata_on_the_monitor_alerts_on_mirrored_vm_traffic_with_the_policy_vlan() {
    use vtap_testbed::suricata::{self, SID_CANARY_TCP, SID_ICMP_ECHO};
    const TEST: &str = "suricata_on_the_monitor_alerts_on_mirrored_vm_traffic_with_the_policy_vlan";
    if !require_root(TEST) || !suricata::require_suricata(TEST) {
        return;
    }
    let tb = Testbed::new(Options::default().vms(0).monitor_mtu(65535))
        .unwrap_or_else(|e| panic!("{TEST}: cannot build testbed: {e:#}"));
    let mut ids = tb
        .start_suricata(0, &suricata::test_rules())
        .unwrap_or_else(|e| panic!("suricata: {e:#}"));
    let icmp = "version: 1\nname: icmp\ntaps: [\"vm*-tap\"]\ndirection: ingress\nmatch: {protocol: icmp}\noutputs:\n  - interface: mon0\n    vlan: 100\n";
    let web = "version: 1\nname: web\ntaps: [\"vm*-tap\"]\ndirection: ingress\nmatch: {protocol: tcp, dst_ports: [80], bidirectional: true}\noutputs:\n  - interface: mon0\n    vlan: 200\n";
    let d = tb
        .start_daemon(&[("icmp.yaml", icmp), ("web.yaml", web)])
        .unwrap_or_else(|e| panic!("{TEST}: daemon: {e:#}"));
    let vms = start(&tb, 2);
    for tap in ["vm1-tap", "vm2-tap"] {
        assert!(wait_until(5 * SEC, || attached(&d, tap)), "{tap}");
    }
    let (vm1, vm2) = (vms.vm(1), vms.vm(2));
    let want = make_file(vm2, "vtap-canary", 512);
    start_httpd(vm2);
    assert_eq!(vms.ping(1, 2, 5, false).unwrap(), 5);
    assert_eq!(
        fetch_md5(vm1, "10.0.0.2", "vtap-canary"),
        want,
        "VM traffic intact"
    );
    let alerts = ids
        .wait_alerts(20 * SEC, |a| {
            a.iter().filter(|x| x.sid == SID_ICMP_ECHO).count() >= 5
                && a.iter().any(|x| x.sid == SID_CANARY_TCP)
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ids.diagnostics()));
    for a in &alerts {
        let want = if a.sid == SID_ICMP_ECHO { 100 } else { 200 };
        assert_eq!(a.vlan, vec![want], "{a:#?}");
        assert_eq!(a.src_ip, "10.0.0.1", "{a:#?}");
    }
    // ICMP echo requests: exactly one alert each.
    assert_eq!(
        alerts.iter().filter(|x| x.sid == SID_ICMP_ECHO).count(),
        5,
        "{alerts:#?}"
    );
    let m = d.metrics().unwrap();
    let mirrored = m.sum("vtap_policy_mirrored_packets_total", &[]) as u64;
    let st = ids
        .wait_packets(mirrored, 20 * SEC)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ids.diagnostics()));
    assert_eq!(st.kernel_drops, 0, "{}", st.summary());
    assert_eq!(st.trunc_pkt, 0, "{}", st.summary());
    assert_eq!(st.kernel_packets, mirrored, "{}", st.summary());
    eprintln!("{TEST}: {} alerts; {}", alerts.len(), st.summary());
    ids.stop().unwrap();
    vms.stop_all().unwrap();
    d.stop().expect("daemon exits 0");
}
