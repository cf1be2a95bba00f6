//! Datapath cost per packet, measured with BPF_PROG_TEST_RUN (`repeat`), for
//! 0, 1, 16, 64 and 256 policies, for a frame that matches one policy and one
//! that matches none, with outputs absent (classification only: the copy is
//! counted as output_down) and with a real output (the clone is transmitted
//! to a veth in a private namespace).
//!
//! `cargo run --release -p vtap-bench --bin bench-classify -- [OUT.json]`
//! (root). Writes the figures as JSON and prints a Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use aya::programs::{TestRun, TestRunOptions};
use vtap_abi::Dir;
use vtap_core::datapath::Datapath;
use vtap_core::datapath::reconcile::Reconciler;
use vtap_core::engine::{TapState, allocate, resolve};
use vtap_core::netlink::{Link, Links};
use vtap_core::policy::compile::compile;
use vtap_core::policy::load::parse_str;

const REPEAT: u32 = 2_000_000;

fn policies(n: usize) -> Vec<vtap_core::policy::model::Policy> {
    (0..n)
        .map(|i| {
            if std::env::var("BENCH_SHAPE").as_deref() == Ok("proto") {
                let y = format!("version: 1\nname: p{i}\ntaps: [vm1-tap]\nmatch: {{protocol: tcp}}\noutputs: [{{interface: mon0, vlan: {}}}]\n", 100 + (i % 64));
                return parse_str(&y, "bench").unwrap().remove(0);
            }
            if std::env::var("BENCH_SHAPE").as_deref() == Ok("ports") {
                let y = format!("version: 1\nname: p{i}\ntaps: [vm1-tap]\nmatch: {{protocol: tcp, dst_ports: [{}]}}\noutputs: [{{interface: mon0, vlan: {}}}]\n", 1000 + i, 100 + (i % 64));
                return parse_str(&y, "bench").unwrap().remove(0);
            }
            let y = format!(
                "version: 1\nname: p{i}\ntaps: [vm1-tap]\nmatch:\n  src: [10.{}.{}.0/24]\n  dst: [\"10.200.0.0/16\", \"fd00:{i:x}::/64\"]\n  protocol: tcp\n  dst_ports: [{}, \"20000-20100\"]\noutputs: [{{interface: mon0, vlan: {}}}]\n",
                i / 256,
                i % 256,
                1000 + i,
                100 + (i % 64)
            );
            parse_str(&y, "bench").unwrap().remove(0)
        })
        .collect()
}

fn frame(src: [u8; 4], dport: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[10, 200, 0, 1]);
    f.extend_from_slice(&ip);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x10;
    f.extend_from_slice(&tcp);
    f.resize(1514, 0xab);
    f
}

fn ns_per_packet(dp: &Datapath, f: &[u8]) -> f64 {
    let mut out = vec![0u8; f.len() + 64];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let r = dp
            .program(Dir::Ingress)
            .test_run(TestRunOptions {
                data_in: Some(f),
                data_out: Some(&mut out),
                repeat: REPEAT,
                ..Default::default()
            })
            .expect("test run");
        best = best.min(r.duration.as_nanos() as f64);
    }
    best
}

fn main() -> anyhow::Result<()> {
    let out_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "testbed/out/bench-classify.json".into());
    // A private namespace with a veth pair: mon0 → peer in the same ns, up,
    // so clones are really transmitted and received (and dropped) there.
    // SAFETY: affects only this process's (single) thread.
    anyhow::ensure!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0,
        "unshare: need root"
    );
    for args in [
        &["link", "set", "lo", "up"][..],
        &[
            "link", "add", "mon0", "type", "veth", "peer", "name", "mon0p",
        ],
        &["link", "set", "mon0", "up"],
        &["link", "set", "mon0p", "up"],
    ] {
        anyhow::ensure!(
            Command::new("ip").args(args).status()?.success(),
            "ip {args:?}"
        );
    }
    // (not /sys/class/net: sysfs still shows the original namespace)
    // SAFETY: a valid NUL-terminated name.
    let mon0 = unsafe { libc::if_nametoindex(c"mon0".as_ptr()) };
    anyhow::ensure!(mon0 != 0, "mon0 not found");
    let mut rows = Vec::new();
    for &with_output in &[false, true] {
        for &n in &[0usize, 1, 16, 64, 256] {
            let dp = Datapath::load()?;
            let mut rec = Reconciler::new();
            let ps = policies(n);
            let (a, _, _) = allocate(&Default::default(), &ps)?;
            let c = compile(&ps, &a)?;
            let mut taps = BTreeMap::new();
            taps.insert(
                "vm1-tap".to_string(),
                TapState {
                    xdp: false,
                    ifindex: 1,
                    slot: 0,
                    wanted: Dir::ALL.into(),
                    attached: Dir::ALL.into(),
                    error: None,
                },
            );
            let mut links = Links::new();
            links.insert(
                "vm1-tap".into(),
                Link {
                    ifindex: 1,
                    up: true,
                    mtu: 1500,
                },
            );
            if with_output {
                links.insert(
                    "mon0".into(),
                    Link {
                        ifindex: mon0,
                        up: true,
                        mtu: 1500,
                    },
                );
            }
            rec.apply(&dp, &resolve(&c, &taps, &links))?;
            // The matching frame matches exactly the last policy.
            let last = n.saturating_sub(1);
            let hit = frame(
                [10, (last / 256) as u8, (last % 256) as u8, 7],
                1000 + last as u16,
            );
            let miss = frame([192, 168, 0, 1], 9);
            let h = ns_per_packet(&dp, &hit);
            let m = ns_per_packet(&dp, &miss);
            println!("policies={n:4} output={with_output:5} match={h:6.1} ns  no-match={m:6.1} ns");
            rows.push(serde_json::json!({"policies": n, "real_output": with_output, "match_ns": h, "nomatch_ns": m}));
        }
    }
    let base = rows
        .iter()
        .find(|r| r["policies"] == 1 && r["real_output"] == false)
        .unwrap()["match_ns"]
        .as_f64()
        .unwrap();
    let at256 = rows
        .iter()
        .find(|r| r["policies"] == 256 && r["real_output"] == false)
        .unwrap()["match_ns"]
        .as_f64()
        .unwrap();
    let mut md = String::from(
        "| policies | match, no output (ns) | no match (ns) | match + clone to veth (ns) |\n|---:|---:|---:|---:|\n",
    );
    for n in [0, 1, 16, 64, 256] {
        let get = |o: bool, k: &str| {
            rows.iter()
                .find(|r| r["policies"] == n && r["real_output"] == o)
                .unwrap()[k]
                .as_f64()
                .unwrap()
        };
        writeln!(
            md,
            "| {n} | {:.1} | {:.1} | {:.1} |",
            get(false, "match_ns"),
            get(false, "nomatch_ns"),
            get(true, "match_ns")
        )?;
    }
    writeln!(
        md,
        "\ncost at 256 policies / cost at 1 policy (matching frame, no output): {:.2}",
        at256 / base
    )?;
    println!("\n{md}");
    if let Some(dir) = std::path::Path::new(&out_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &out_path,
        serde_json::to_string_pretty(
            &serde_json::json!({"repeat": REPEAT, "frame_bytes": 1514, "rows": rows, "ratio_256_over_1": at256 / base, "markdown": md}),
        )?,
    )?;
    println!("wrote {out_path}");
    Ok(())
}
