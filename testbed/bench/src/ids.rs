//! bench-ids: the Hong et al. experiment (seed 003, Table III) with real
//! QEMU VMs. A fixed attack mix (`vtap_testbed::attack`) is replayed with
//! tcpreplay from VM1 to VM2 at increasing rates; two Suricata instances
//! with the same rules count alerts and drops side by side in one run:
//!
//! - **monitor**: on the monitor interface, fed by vtap's VLAN-tagged copies
//!   of VM1's traffic, on its own CPU (the monitor VM of the paper);
//! - **receiver path**: on VM2's tap (what reaches the receiver), pinned to
//!   the CPU the VMs run on — the IDS competes with the workload for CPU,
//!   as Suricata inside the receiver VM did in the paper.
//!
//! Also the VMs' iperf3 TCP throughput with and without vtap (the policy
//! disabled: nothing attached), alternating, same run.
//!
//! Usage: `bench-ids [OUT.json]` (root). Env: BENCH_RATES (Mbit/s, default
//! "10,25,50,100"), BENCH_ROUNDS (mix rounds per pcap, default 40),
//! BENCH_LOOPS (replays per rate, default 5), BENCH_TPUT_ROUNDS (default 3),
//! VTAP_BIN.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vtap_testbed::attack::{self, KINDS};
use vtap_testbed::suricata::{self, Suricata};
use vtap_testbed::vm::{self, VmSet};
use vtap_testbed::{Options, Testbed};

use common::{choose_vtap_bin, env_num, median, pin_process, workspace_root};

const POLICY_ON: &str = "version: 1\nname: mirror-vm1\ntaps: [vm1-tap]\ndirection: ingress\noutputs:\n  - interface: mon0\n    vlan: 100\n";

fn policy(enabled: bool) -> String {
    if enabled {
        POLICY_ON.to_string()
    } else {
        POLICY_ON.replace("name: mirror-vm1\n", "name: mirror-vm1\nenabled: false\n")
    }
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    m
}

/// iperf3 TCP VM1 → VM2 for `secs`; Gbit/s.
fn iperf(vms: &VmSet, secs: u64) -> Result<f64> {
    let out = vms.vm(1).run_ok(
        &format!("iperf3 -c 10.0.0.2 -t {secs} -J"),
        Duration::from_secs(secs + 20),
    )?;
    let v: Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no sum_received in iperf3 output")
}

/// Alerts of the attack rules, by SID.
fn attack_alerts(s: &Suricata) -> Vec<u64> {
    let all = s.alerts();
    KINDS
        .iter()
        .map(|k| all.iter().filter(|a| a.sid == k.sid).count() as u64)
        .collect()
}

struct Side {
    packets: u64,
    drops: u64,
    alerts: Vec<u64>,
}

fn side(s: &Suricata) -> Result<Side> {
    let st = s.wait_settled(Duration::from_secs(30))?;
    Ok(Side {
        packets: st.kernel_packets,
        drops: st.kernel_drops,
        alerts: attack_alerts(s),
    })
}

/// Suricata inside VM2 on its eth0 (the paper's receiver IDS, sharing the
/// VM's one vCPU with its workload): same rules, a small ring.
fn start_in_vm(vms: &VmSet, rules: &std::path::Path) -> Result<vtap_testbed::vm::GuestProcess> {
    let vm2 = vms.vm(2);
    vm2.run_ok("mkdir -p /ids && rm -f /ids/*", Duration::from_secs(10))?;
    let cfg = suricata::Config {
        midstream: false,
        ring_size: Some(4096),

        ..Default::default()
    };
    let yaml = suricata::config_yaml(
        "eth0",
        std::path::Path::new("/ids/attack.rules"),
        std::path::Path::new("/ids"),
        &cfg,
        4096,
    );
    vm2.put_file("/ids/suricata.yaml", yaml.as_bytes())?;
    vm2.put_file("/ids/attack.rules", &std::fs::read(rules)?)?;
    vm2.put_file(
        "/ids/classification.config",
        suricata::CLASSIFICATION.as_bytes(),
    )?;
    vm2.put_file("/ids/reference.config", suricata::REFERENCE.as_bytes())?;
    vm2.put_file("/ids/threshold.config", b"")?;
    let p = vm2.spawn_bg("exec suricata -c /ids/suricata.yaml --af-packet=eth0")?;
    let t0 = Instant::now();
    loop {
        let (_, log) = vm2.run("cat /ids/suricata.log 2>/dev/null", Duration::from_secs(10))?;
        if log.contains("Engine started") {
            eprintln!("suricata in vm2 started in {:?}", t0.elapsed());
            return Ok(p);
        }
        if t0.elapsed() > Duration::from_secs(180) {
            bail!(
                "suricata in vm2 did not start: {log}\n{}",
                vm2.bg_output(&p).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The in-VM Suricata's counters once they stop moving (it publishes them
/// every few seconds).
fn guest_side(vms: &VmSet) -> Result<Side> {
    let vm2 = vms.vm(2);
    let read = || -> Result<Side> {
        let mut script =
            String::from("grep '\"event_type\":\"stats\"' /ids/eve.json | tail -n 1; echo ===;");
        for k in KINDS.iter() {
            script.push_str(&format!(
                " grep -c '\"signature_id\":{}' /ids/eve.json || true;",
                k.sid
            ));
        }
        let out = vm2.run_ok(&script, Duration::from_secs(30))?;
        let (stats, counts) = out.split_once("===").unwrap_or(("", ""));
        let v: Value = serde_json::from_str(stats.trim()).unwrap_or(Value::Null);
        let cap = &v["stats"]["capture"];
        Ok(Side {
            packets: cap["kernel_packets"].as_u64().unwrap_or(0),
            drops: cap["kernel_drops"].as_u64().unwrap_or(0),
            alerts: counts
                .split_whitespace()
                .map(|c| c.parse().unwrap_or(0))
                .collect(),
        })
    };
    let mut last = read()?;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(4));
        let now = read()?;
        if now.packets == last.packets && now.alerts == last.alerts && now.drops == last.drops {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-ids: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: bench-ids [OUT.json]   (root; env BENCH_RATES, BENCH_ROUNDS, BENCH_LOOPS, BENCH_TPUT_ROUNDS, VTAP_BIN)"
        );
        return Ok(());
    }
    choose_vtap_bin()?;
    if !vtap_testbed::is_root() {
        bail!("needs root (namespaces, taps, BPF)");
    }
    if suricata::version().is_none() {
        bail!("suricata not found (scripts/install-deps.sh installs it)");
    }
    let out_path = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("testbed/out/bench-ids.json"));
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "10,25,50,100".into())
        .split(',')
        .map(|r| r.trim().parse().context("BENCH_RATES"))
        .collect::<Result<_>>()?;
    let rounds = env_num("BENCH_ROUNDS", 40)?.max(1) as usize;
    let loops = env_num("BENCH_LOOPS", 5)?.max(1);
    let tput_rounds = env_num("BENCH_TPUT_ROUNDS", 3)?.max(1);

    // The guest image with Suricata in it: the third IDS runs inside VM2.
    // SAFETY: before any thread exists.
    unsafe {
        std::env::set_var("VTAP_VM_EXTRA", "suricata");
        // Suricata's Hyperscan library needs SSSE3, which TCG's default
        // CPU model lacks.
        std::env::set_var("VTAP_QEMU_CPU", "max");
    }
    vm::ensure_image()?;
    let tb = Testbed::new(Options::default().vms(0).monitor_mtu(65535))?;
    let d = tb.start_daemon(&[("mirror.yaml", &policy(true))])?;
    let mut vms = VmSet::new(&tb, 2)?;
    vms.memory_mb = 1024;
    vms.boot_all()?;
    // The VMs (and so the receiver-path IDS) on CPU 0, the monitor IDS on
    // CPU 1.
    for i in 1..=2 {
        if let Some(pid) = vms.vm(i).pid() {
            pin_process(pid, 0)?;
        }
    }
    let mix_path = tb.path("attack-mix", "pcap");
    let s1 = vms.spec(1).clone();
    let s2 = vms.spec(2).clone();
    let mix = attack::write_mix(
        &mix_path,
        mac_bytes(&s1.mac),
        mac_bytes(&s2.mac),
        s1.ipv4,
        s2.ipv4,
        rounds,
    )?;
    vms.vm(1)
        .put_file("/tmp/mix.pcap", &std::fs::read(&mix_path)?)?;
    vms.vm(2).spawn_bg("iperf3 -s")?;
    vms.vm(2)
        .wait_listening(5201, false, Duration::from_secs(10))?;

    // 1. Throughput with and without vtap, alternating.
    let mut with = Vec::new();
    let mut without = Vec::new();
    for r in 0..tput_rounds {
        for on in [false, true] {
            d.write_policies(&[("mirror.yaml", &policy(on))])?;
            d.reload()?;
            let want = if on { "attached" } else { "" };
            vtap_testbed::wait_until(Duration::from_secs(5), || {
                d.get("/api/v1/taps/vm1-tap")
                    .ok()
                    .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
                    .map(|v| v["state"].as_str().unwrap_or("").to_string())
                    .is_some_and(|s| if on { s == want } else { s != "attached" })
            });
            std::thread::sleep(Duration::from_millis(300));
            let g = iperf(&vms, 5)?;
            eprintln!(
                "throughput round {r}: vtap {}: {g:.2} Gbit/s",
                if on { "on" } else { "off" }
            );
            if on { with.push(g) } else { without.push(g) }
        }
    }
    let (tw, two) = (
        median(&with).unwrap_or(0.0),
        median(&without).unwrap_or(0.0),
    );

    // 2. The two IDS instances.
    let rules = workspace_root().join("testbed/suricata/attack-mix.rules");
    let cfg = suricata::Config {
        midstream: false,
        ..Default::default()
    };
    let monitor = tb.start_suricata_with(0, &rules, &cfg)?;
    let recv_dir = tb.path("suricata-receiver", "d");
    std::fs::create_dir_all(&recv_dir)?;
    let receiver = Suricata::start_with(&tb.host_ns, &s2.tap, &rules, &recv_dir, &cfg)?;
    if let Some(p) = monitor.pid() {
        pin_process(p, 1)?;
    }
    if let Some(p) = receiver.pid() {
        pin_process(p, 0)?;
    }
    let in_vm = start_in_vm(&vms, &rules)?;
    let mut rows = Vec::new();
    for (&rate, load) in rates.iter().flat_map(|r| [(r, false), (r, true)]) {
        // Loaded: VM1 also sends a bulk TCP transfer to VM2 for the whole
        // replay (the receiver is busy, as a real server would be).
        let replay_est =
            (mix.bytes as f64 * loops as f64 * 8.0 / (rate as f64 * 1e6)).ceil() as u64;
        let m0 = side(&monitor)?;
        let r0 = side(&receiver)?;
        let v0 = guest_side(&vms)?;
        let copies0 = d.metrics()?.sum("vtap_policy_mirrored_packets_total", &[]);
        let bulk = if load {
            let p = vms
                .vm(1)
                .spawn_bg(&format!("iperf3 -c 10.0.0.2 -t {} -J", replay_est + 3))?;
            std::thread::sleep(Duration::from_secs(1));
            Some(p)
        } else {
            None
        };
        let t0 = Instant::now();
        let out = vms.vm(1).run_ok(
            &format!("tcpreplay -q -i eth0 --mbps={rate} --loop={loops} /tmp/mix.pcap 2>&1"),
            Duration::from_secs(600),
        )?;
        let replay_s = t0.elapsed().as_secs_f64();
        let bulk_gbps = match &bulk {
            Some(p) => {
                vms.vm(1).bg_wait(p, Duration::from_secs(replay_est + 30))?;
                let out = vms.vm(1).bg_output(p)?;
                serde_json::from_str::<Value>(out.trim())
                    .ok()
                    .and_then(|v| v["end"]["sum_received"]["bits_per_second"].as_f64())
                    .map(|b| b / 1e9)
            }
            None => None,
        };
        let m1 = side(&monitor)?;
        let r1 = side(&receiver)?;
        let v1 = guest_side(&vms)?;

        let copies = d.metrics()?.sum("vtap_policy_mirrored_packets_total", &[]) - copies0;
        let expected = mix.attacks as u64 * loops;
        let sent = mix.frames as u64 * loops;
        let row = |a: &Side, b: &Side| {
            let alerts: u64 = b.alerts.iter().zip(&a.alerts).map(|(x, y)| x - y).sum();
            let pk = b.packets - a.packets;
            let dr = b.drops - a.drops;
            let by_kind: serde_json::Map<String, Value> = KINDS
                .iter()
                .zip(b.alerts.iter().zip(&a.alerts))
                .map(|(k, (x, y))| (k.name.to_string(), json!(x - y)))
                .collect();
            json!({
                "alerts": alerts,
                "alerts_by_kind": by_kind,
                "detected": alerts as f64 / expected as f64,
                "kernel_packets": pk,
                "kernel_drops": dr,
                "drop_rate": if pk + dr == 0 { 0.0 } else { dr as f64 / (pk + dr) as f64 },
            })
        };
        let actual = out
            .lines()
            .find(|l| l.contains("Rated:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let r = json!({
            "rate_mbps": rate,
            "receiver_loaded": load,
            "bulk_gbps": bulk_gbps,
            "frames_sent": sent,
            "attacks_sent": expected,
            "replay_seconds": replay_s,
            "tcpreplay": actual,
            "vtap_copies": copies,
            "monitor": row(&m0, &m1),
            "receiver_path": row(&r0, &r1),
            "receiver_vm": row(&v0, &v1),
        });
        eprintln!("{r}");
        rows.push(r);
    }
    let result = json!({
        "bench": "ids",
        "when": chrono_like_now(),
        "vm_image": vm::ensure_image().map(|i| format!("{i:?}")).unwrap_or_default(),
        "mix": {"frames_per_replay": mix.frames, "attacks_per_replay": mix.attacks,
                "bytes_per_replay": mix.bytes, "rounds": rounds, "loops": loops},
        "throughput_gbps": {"without_vtap": without, "with_vtap": with,
                            "median_without": two, "median_with": tw,
                            "ratio": if two > 0.0 { tw / two } else { 0.0 }},
        "rates": rows,
    });
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&result)?)?;
    println!(
        "\n| rate (Mbit/s) | bulk TCP alongside | frames | attacks | monitor alerts | monitor drop % | receiver-path alerts | receiver-path drop % | in receiver VM alerts | in receiver VM drop % |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {:.2} |",
            r["rate_mbps"],
            match r["bulk_gbps"].as_f64() {
                Some(g) => format!("{g:.2} Gbit/s"),
                None => "none".into(),
            },
            r["frames_sent"],
            r["attacks_sent"],
            r["monitor"]["alerts"],
            r["monitor"]["drop_rate"].as_f64().unwrap_or(0.0) * 100.0,
            r["receiver_path"]["alerts"],
            r["receiver_path"]["drop_rate"].as_f64().unwrap_or(0.0) * 100.0,
            r["receiver_vm"]["alerts"],
            r["receiver_vm"]["drop_rate"].as_f64().unwrap_or(0.0) * 100.0,
        );
    }
    println!(
        "\nthroughput VM1→VM2 (iperf3 TCP, median of {tput_rounds}): without vtap {two:.2} Gbit/s, with vtap {tw:.2} Gbit/s, ratio {:.3}",
        if two > 0.0 { tw / two } else { 0.0 }
    );
    println!("figures: {}", out_path.display());
    drop(monitor);
    drop(receiver);
    let _ = vms.vm(2).bg_kill(&in_vm);
    d.stop()?;
    Ok(())
}

fn chrono_like_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
