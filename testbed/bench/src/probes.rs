//! Counting probes: extraction, reset, injection and datapath cost, side by
//! side in one run.
//!
//! 1. **Extraction.** A small C object compiled with
//!    `vtap_core::probes::compile::compile_c` (one `BPF_MAP_TYPE_HASH` of
//!    `max_entries` 1,048,576 with a 5-tuple key — `__be32 saddr, daddr;
//!    __be16 sport, dport; __u8 proto; __u8 pad[3]` — and a value of four
//!    `__u64`: packets, bytes, first_seen, last_seen — plus a trivial
//!    `SEC("classifier")` program) is injected as probe `bench` with
//!    `ProbeManager::inject` (no links; metric `flow_packets` labelled by
//!    the 5-tuple), its map filled with `BPF_MAP_UPDATE_BATCH` to 1, 100,
//!    10,000 and 1,000,000 entries (not timed), and read with the probe
//!    layers directly: (a) `batch::read(fd, Method::Batch)`; (b) that +
//!    `MapLayout::write_json` (JSON text); (c) that + `MapLayout::decode`
//!    (`serde_json::Value`s); (d) that + OpenMetrics text, one sample per
//!    entry with the 5-tuple as labels (`Field::format`, ipv4 / decimal),
//!    appended straight to one `String`; (f) the daemon's own path:
//!    `ProbeManager::samples_of` + `exposition::probe_families` +
//!    `exposition::encode_openmetrics`; (g) the same with
//!    `exposition::encode_text`; (e) `batch::read(fd, Method::Iterative)`. Round-robin over
//!    the methods, median of `BENCH_RUNS` (5) runs; a method whose first
//!    run takes more than 2 s gets 3 runs. Freeing the output is not timed.
//! 2. **Reset.** `batch::read_and_delete` with `Method::Batch` and with
//!    `Method::Iterative` on 10,000 and 1,000,000 entries, refilled (not
//!    timed) before every run; every run must return every entry and leave
//!    the map empty.
//! 3. **Injection.** `ProbeManager::inject` of the library probe
//!    `ebpf/probes/traffic_by_dst.{c,yaml}` (the YAML's metrics; direction
//!    `both`) as C source and as a pre-built ELF (compiled once with
//!    `compile_c`, base64 in `object`), with empty `Links` and attached to
//!    one veth in a private network namespace created (and deleted) by the
//!    benchmark; each injection is followed by `remove` (not timed).
//!    Round-robin over the four cases, median of `BENCH_INJECT_RUNS` (10).
//! 4. **Datapath cost.** A testbed (2 namespace VMs on a bridge); iperf3 TCP
//!    VM1 -> VM2 pinned to CPU 0 as in `bench-throughput`, MTU-sized frames
//!    (tso/gso/gro off on the four ends; `BENCH_REGIMES=mtu,gso` adds the
//!    default offloads); cases: 0, 1 and 10 copies of traffic_by_dst
//!    (`traffic-0..9`, pre-built ELF) attached with TCX to both directions
//!    of `vm1-tap` through `ProbeManager` on a thread inside the testbed's
//!    host namespace, and 1 copy read with `read_json` at 10 Hz by a thread
//!    during the transfer. `BENCH_SECONDS` (5) per transfer, `BENCH_ROUNDS`
//!    (3) rounds round-robin, medians. Per case: the programs attached
//!    (`BPF_PROG_QUERY`), the probe's packet count against `vm1-tap`'s
//!    counters, the reader's thread CPU time.
//!
//! Before each part the benchmark waits until processes outside the
//! testbed use < 10 % of the machine for 3 s in a row (at most
//! `BENCH_QUIET_MAX_WAIT`, 600 s), records what they used during each part
//! and before each transfer also waits (≤ 8 s) for < 5 %; a transfer they
//! disturbed (> 10 %) is repeated once (at most 4 times in all).
//!
//! `cargo build --release -p vtap-bench && sudo target/release/bench-probes [OUT.json]`
//!
//! Writes `testbed/out/bench-probes.json` by default (every sample, the
//! medians, the target verdicts and the Markdown it prints). Knobs
//! (environment): `BENCH_PARTS` (`extract,reset,inject,throughput`),
//! `BENCH_SIZES` (`1,100,10000,1000000`), `BENCH_RUNS`,
//! `BENCH_INJECT_RUNS`, `BENCH_SECONDS`, `BENCH_ROUNDS`, `BENCH_REGIMES`
//! (`mtu`), `BENCH_PIN` (`0,0` or `none`), `BENCH_QUIET_MAX_WAIT`.

use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use vtap_core::datapath::sys;
use vtap_core::netlink::{Links, list_links_blocking};
use vtap_core::policy::model::Direction;
use vtap_core::probes::MapLayout;
use vtap_core::probes::batch::{self, Entries, Method};
use vtap_core::probes::btf::{Btf, Field, LabelFormat};
use vtap_core::probes::compile::compile_c;
use vtap_core::probes::manager::ProbeManager;
use vtap_core::probes::spec::ProbeSpec;
use vtap_testbed::netns;
use vtap_testbed::{Options, Testbed};

mod common;
use common::*;

/// The daemon's allocator (vtap/src/main.rs), so the daemon-path columns
/// allocate as the daemon does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The extraction map: 5-tuple key, four counters.
const FLOW_C: &str = r#"#include "vtap_probe.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3]; /* explicit: the key is 16 bytes, no hidden padding */
};

struct flow_val {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen;
	__u64 last_seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

SEC("classifier")
int bench_flows(struct __sk_buff *skb)
{
	struct flow_key k = {};
	struct flow_val *v = bpf_map_lookup_elem(&flows, &k);

	if (v)
		__sync_fetch_and_add(&v->packets, 1);
	return VTAP_PROBE_PASS;
}
"#;
const KEY_SIZE: usize = 16;
const VALUE_SIZE: usize = 32;
const MAX_ENTRIES: usize = 1 << 20;

const TRAFFIC_C: &str = include_str!("../../../ebpf/probes/traffic_by_dst.c");
const TRAFFIC_YAML: &str = include_str!("../../../ebpf/probes/traffic_by_dst.yaml");

/// Issue targets.
const DYNMON_10K_MS: f64 = 1300.0;
const TARGET_10K_MS: f64 = 10.0;
const TARGET_1M_MS: f64 = 1000.0;
const TARGET_RESET_RATIO: f64 = 20.0;
const TARGET_INJECT_ELF_MS: f64 = 50.0;
const TARGET_INJECT_C_MS: f64 = 1500.0;
const TARGET_READ_COST: f64 = 0.005;

/// A first run slower than this cuts a method's runs to 3.
const SLOW_MS: f64 = 2000.0;
const TAP: &str = "vm1-tap";
const DISTURBED_PCT: f64 = 10.0;

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn med(v: &[f64]) -> f64 {
    median(v).unwrap_or(f64::NAN)
}

fn fmt_ms(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x < 1.0 {
        format!("{x:.3}")
    } else if x < 100.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

/// (max - min) / median.
fn spread(v: &[f64]) -> f64 {
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let min = v.iter().cloned().fold(f64::MAX, f64::min);
    (max - min) / med(v)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Share (% of the machine) of CPU used by processes outside `ours` between
/// two [`outside_cpu_ticks`] readings taken `secs` apart.
fn outside_pct(a: u64, b: u64, secs: f64) -> f64 {
    100.0 * b.saturating_sub(a) as f64 / clock_ticks() / (secs.max(1e-3) * cpu_count() as f64)
}

/// Waits until processes outside `ours` use less than `max_pct` % of the
/// machine for `sustain` in a row (0.5 s windows), at most `bound`.
fn wait_sustained_quiet(ours: &[u64], max_pct: f64, sustain: Duration, bound: Duration) -> Value {
    let t0 = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    let mut last;
    let mut announced = false;
    loop {
        let a = outside_cpu_ticks(ours);
        let w = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let b = outside_cpu_ticks(ours);
        last = outside_pct(a, b, w.elapsed().as_secs_f64());
        if last < max_pct {
            let s = *quiet_since.get_or_insert(w);
            if s.elapsed() >= sustain {
                break;
            }
        } else {
            quiet_since = None;
            if !announced && t0.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "waiting for a quiet machine (other processes use {last:.0} % now; at most {} s)",
                    bound.as_secs()
                );
                announced = true;
            }
        }
        if t0.elapsed() >= bound || INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
    }
    let quiet = quiet_since.is_some_and(|s| s.elapsed() >= sustain);
    if !quiet {
        eprintln!(
            "WARNING: the machine did not become quiet (others {last:.0} %); measuring anyway"
        );
    }
    json!({ "waited_s": t0.elapsed().as_secs_f64(), "last_outside_pct": last, "quiet": quiet })
}

/// Tracks the CPU share of other processes over a part of the benchmark.
struct Outside {
    ticks: u64,
    t: Instant,
    ours: Vec<u64>,
}

impl Outside {
    fn start(ours: &[u64]) -> Outside {
        Outside {
            ticks: outside_cpu_ticks(ours),
            t: Instant::now(),
            ours: ours.to_vec(),
        }
    }
    fn pct(&self) -> f64 {
        outside_pct(
            self.ticks,
            outside_cpu_ticks(&self.ours),
            self.t.elapsed().as_secs_f64(),
        )
    }
}

// ---------------------------------------------------------------------------
// Part 1 and 2: the flow map.

/// Key and value of flow `i` (keys distinct: saddr = 10.0.0.0 + i).
fn flow_entry(i: u32) -> ([u8; KEY_SIZE], [u8; VALUE_SIZE]) {
    let mut k = [0u8; KEY_SIZE];
    k[0..4].copy_from_slice(&(0x0a00_0000u32.wrapping_add(i)).to_be_bytes());
    k[4..8].copy_from_slice(&(0xc0a8_0001u32 + (i % 251)).to_be_bytes());
    k[8..10].copy_from_slice(&((1024 + i % 64_000) as u16).to_be_bytes());
    k[10..12].copy_from_slice(&[443u16, 80, 53, 22][(i % 4) as usize].to_be_bytes());
    k[12] = if i % 4 == 2 { 17 } else { 6 };
    let mut v = [0u8; VALUE_SIZE];
    let p = u64::from(i) + 1;
    v[0..8].copy_from_slice(&p.to_ne_bytes());
    v[8..16].copy_from_slice(&(p * 1000 + 7).to_ne_bytes());
    v[16..24].copy_from_slice(&(1_700_000_000_000_000_000u64 + p).to_ne_bytes());
    v[24..32].copy_from_slice(&(1_700_000_000_000_000_000u64 + 2 * p).to_ne_bytes());
    (k, v)
}

/// Empties the map, then puts flows 0..n with `BPF_MAP_UPDATE_BATCH`.
fn refill(fd: BorrowedFd<'_>, n: usize) -> Result<()> {
    let left = batch::read_and_delete(fd, Method::Batch)?;
    drop(left);
    const CHUNK: usize = 1 << 16;
    let mut keys = Vec::with_capacity(CHUNK * KEY_SIZE);
    let mut values = Vec::with_capacity(CHUNK * VALUE_SIZE);
    let mut start = 0;
    while start < n {
        let m = CHUNK.min(n - start);
        keys.clear();
        values.clear();
        for i in start..start + m {
            let (k, v) = flow_entry(i as u32);
            keys.extend_from_slice(&k);
            values.extend_from_slice(&v);
        }
        sys::update_batch(fd, &keys, &values, m as u32).context("BPF_MAP_UPDATE_BATCH")?;
        start += m;
    }
    let got = batch::read(fd, Method::Batch)?.len();
    if got != n {
        bail!("filled {n} entries, the map holds {got}");
    }
    Ok(())
}

/// The key fields as labels, and the value field of the samples.
struct FlowFields {
    labels: Vec<(Field, LabelFormat, &'static str)>,
    packets: Field,
}

impl FlowFields {
    fn new(layout: &MapLayout) -> Result<FlowFields> {
        let mut labels = Vec::new();
        for (f, fmt) in [
            ("saddr", LabelFormat::Ipv4),
            ("daddr", LabelFormat::Ipv4),
            ("sport", LabelFormat::Decimal),
            ("dport", LabelFormat::Decimal),
            ("proto", LabelFormat::Decimal),
        ] {
            let field = layout.key.field(f)?;
            field.check(fmt)?;
            labels.push((field, fmt, f));
        }
        Ok(FlowFields {
            labels,
            packets: layout.value.field("packets")?,
        })
    }
}

const OM_NAME: &str = "vtap_probe_flow_packets";
const OM_HELP: &str = "Packets per flow";

/// OpenMetrics text, built directly: one `String`, labels from
/// `Field::format`, the value from `Field::format(Decimal)`.
fn openmetrics_direct(f: &FlowFields, entries: &Entries) -> Result<String> {
    let mut out = String::with_capacity(entries.len() * 140 + 128);
    let _ = write!(
        out,
        "# HELP {OM_NAME} {OM_HELP}.\n# TYPE {OM_NAME} counter\n"
    );
    for (k, v) in entries.iter() {
        out.push_str(OM_NAME);
        out.push_str("_total{probe=\"bench\"");
        for (field, fmt, label) in &f.labels {
            out.push(',');
            out.push_str(label);
            out.push_str("=\"");
            // ipv4 and decimal never produce characters that need escaping.
            out.push_str(&field.format(k, *fmt)?);
            out.push('"');
        }
        out.push_str("} ");
        out.push_str(&f.packets.format(v, LabelFormat::Decimal)?);
        out.push('\n');
    }
    out.push_str("# EOF\n");
    Ok(out)
}

/// The flow map as a probe spec, injected through `ProbeManager` (no
/// links): the daemon-path columns read it with `ProbeManager::samples_of`
/// and encode it with `vtap_core::exposition`, as `/metrics` and
/// `/api/v1/probes/{name}/metrics?format=openmetrics` do.
const FLOW_SPEC: &str = r#"version: 1
name: bench
attach: {taps: [bench-no-tap]}
metrics:
  - name: flow_packets
    map: flows
    help: Packets per flow.
    type: counter
    value_field: packets
    key_labels:
      - {field: saddr, label: saddr, format: ipv4}
      - {field: daddr, label: daddr, format: ipv4}
      - {field: sport, label: sport}
      - {field: dport, label: dport}
      - {field: proto, label: proto}
"#;

/// The daemon's whole path from the map to the text: the probe's samples
/// (its own batch read), its families, the encoder; returns the text and
/// the number of samples.
fn daemon_path(pm: &mut ProbeManager, openmetrics: bool) -> Result<(String, usize)> {
    let samples = pm.samples_of(&["bench".to_string()]);
    let mut fams = Vec::new();
    vtap_core::exposition::probe_families(samples, None, None, &mut fams);
    let n = fams.iter().map(|f| f.samples.len()).sum();
    let text = if openmetrics {
        vtap_core::exposition::encode_openmetrics(fams)?
    } else {
        vtap_core::exposition::encode_text(fams)?
    };
    Ok((text, n))
}

/// Injects the flow probe; returns the manager and its `flows` map.
fn inject_flow_probe() -> Result<(ProbeManager, aya::maps::MapData)> {
    let mut spec: ProbeSpec = serde_yaml::from_str(FLOW_SPEC).context("FLOW_SPEC")?;
    spec.source = Some(FLOW_C.to_string());
    let mut pm = ProbeManager::new();
    pm.inject(spec, &Links::default()).map_err(|e| match e {
        vtap_core::probes::manager::ProbeManagerError::Invalid(errs) => {
            anyhow!("inject the flow probe: {errs:?}")
        }
        e => anyhow!("inject the flow probe: {e}"),
    })?;
    let id = pm
        .map_id("bench", "flows")
        .ok_or_else(|| anyhow!("the flow probe has no map named flows"))?;
    Ok((pm, aya::maps::MapData::from_id(id)?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extract {
    Batch,
    Json,
    Values,
    OmDirect,
    DaemonOm,
    DaemonText,
    Iterative,
}

impl Extract {
    const ALL: [Extract; 7] = [
        Extract::Batch,
        Extract::Json,
        Extract::Values,
        Extract::OmDirect,
        Extract::DaemonOm,
        Extract::DaemonText,
        Extract::Iterative,
    ];
    fn name(self) -> &'static str {
        match self {
            Extract::Batch => "batch_read",
            Extract::Json => "batch_read+json_text",
            Extract::Values => "batch_read+serde_json_values",
            Extract::OmDirect => "batch_read+openmetrics_direct",
            Extract::DaemonOm => "daemon_openmetrics",
            Extract::DaemonText => "daemon_prometheus_text",
            Extract::Iterative => "iterative_read",
        }
    }
}

/// One timed extraction; returns (ms, what it produced). The output is
/// freed after the clock stops.
fn extract_once(
    kind: Extract,
    fd: BorrowedFd<'_>,
    layout: &MapLayout,
    f: &FlowFields,
    pm: &mut ProbeManager,
) -> Result<(f64, Value)> {
    let t = Instant::now();
    if matches!(kind, Extract::DaemonOm | Extract::DaemonText) {
        let (text, n) = daemon_path(pm, kind == Extract::DaemonOm)?;
        let elapsed = ms(t.elapsed());
        let size = text.len();
        drop(text);
        return Ok((
            elapsed,
            json!({ "entries": n, "batched": true, "output_bytes": size }),
        ));
    }
    let method = if kind == Extract::Iterative {
        Method::Iterative
    } else {
        Method::Batch
    };
    let entries = batch::read(fd, method)?;
    let n = entries.len();
    let batched = entries.batched();
    macro_rules! done {
        ($out:expr, $size:expr) => {{
            let out = $out;
            let elapsed = ms(t.elapsed());
            let size = $size(&out);
            drop(out);
            drop(entries);
            Ok((
                elapsed,
                json!({ "entries": n, "batched": batched, "output_bytes": size }),
            ))
        }};
    }
    match kind {
        Extract::Batch | Extract::Iterative => {
            let elapsed = ms(t.elapsed());
            drop(entries);
            Ok((elapsed, json!({ "entries": n, "batched": batched })))
        }
        Extract::Json => {
            let mut s = String::new();
            layout.write_json(&entries, None, &mut s)?;
            done!(s, |s: &String| s.len())
        }
        Extract::Values => {
            let v = layout.decode(&entries, None)?;
            if v.len() != n {
                bail!("decode gave {} values for {n} entries", v.len());
            }
            done!(v, |_: &Vec<Value>| Value::Null)
        }
        Extract::OmDirect => done!(openmetrics_direct(f, &entries)?, |s: &String| s.len()),
        Extract::DaemonOm | Extract::DaemonText => unreachable!("returned above"),
    }
}

/// Untimed: the outputs agree with each other (sizes up to 10,000).
fn cross_check(
    fd: BorrowedFd<'_>,
    layout: &MapLayout,
    f: &FlowFields,
    pm: &mut ProbeManager,
    n: usize,
) -> Result<Value> {
    let e = batch::read(fd, Method::Batch)?;
    let it = batch::read(fd, Method::Iterative)?;
    let mut a = e.to_pairs();
    let mut b = it.to_pairs();
    a.sort();
    b.sort();
    if a != b || a.len() != n {
        bail!(
            "batch and iterative reads differ ({} / {} entries, {n} expected)",
            a.len(),
            b.len()
        );
    }
    let mut s = String::new();
    layout.write_json(&e, None, &mut s)?;
    let parsed: Value = serde_json::from_str(&s).context("write_json output is not JSON")?;
    let decoded = Value::Array(layout.decode(&e, None)?);
    if parsed != decoded {
        bail!("write_json and decode disagree");
    }
    let om = openmetrics_direct(f, &e)?;
    let samples = om.lines().filter(|l| !l.starts_with('#')).count();
    let (client, _) = daemon_path(pm, true)?;
    let client_samples = client.lines().filter(|l| !l.starts_with('#')).count();
    let (text, _) = daemon_path(pm, false)?;
    let text_samples = text.lines().filter(|l| !l.starts_with('#')).count();
    if samples != n || client_samples != n || text_samples != n {
        bail!(
            "OpenMetrics: {samples} (direct) / {client_samples} (daemon) samples, {text_samples} in the text format, for {n} entries"
        );
    }
    // The same samples, whatever the order: the direct writer's lines
    // against the daemon's (its label set is the same, in the same order).
    let mut a: Vec<&str> = om.lines().filter(|l| !l.starts_with('#')).collect();
    let mut b: Vec<&str> = client.lines().filter(|l| !l.starts_with('#')).collect();
    a.sort_unstable();
    b.sort_unstable();
    if a != b {
        bail!("the direct OpenMetrics writer and the daemon's encoder disagree");
    }
    Ok(json!({
        "batch_equals_iterative": true,
        "json_text_equals_values": true,
        "openmetrics_samples": samples,
        "first_json_entry": parsed.get(0),
        "first_openmetrics_sample": om.lines().nth(2),
        "first_daemon_openmetrics_sample": client.lines().find(|l| !l.starts_with('#')),
        "first_daemon_text_sample": text.lines().find(|l| !l.starts_with('#')),
    }))
}

fn part_extract(
    fd: BorrowedFd<'_>,
    layout: &MapLayout,
    f: &FlowFields,
    pm: &mut ProbeManager,
    sizes: &[usize],
    runs: usize,
) -> Result<Value> {
    let mut out = Vec::new();
    for &n in sizes {
        check_interrupted()?;
        refill(fd, n)?;
        let check = if n <= 10_000 {
            cross_check(fd, layout, f, pm, n)?
        } else {
            json!("skipped (size)")
        };
        let mut caps = [runs; Extract::ALL.len()];
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Extract::ALL.len()];
        let mut info: Vec<Value> = vec![Value::Null; Extract::ALL.len()];
        let outside = Outside::start(&[]);
        for run in 0..runs {
            for (j, &kind) in Extract::ALL.iter().enumerate() {
                if run >= caps[j] {
                    continue;
                }
                let (t, what) = extract_once(kind, fd, layout, f, pm)?;
                if what["entries"] != json!(n) {
                    bail!(
                        "{}: {} entries read, {n} in the map",
                        kind.name(),
                        what["entries"]
                    );
                }
                if run == 0 && t > SLOW_MS {
                    caps[j] = caps[j].min(3);
                }
                samples[j].push(t);
                info[j] = what;
            }
        }
        let outside_pct = outside.pct();
        let mut per = serde_json::Map::new();
        for (j, &kind) in Extract::ALL.iter().enumerate() {
            per.insert(
                kind.name().into(),
                json!({
                    "median_ms": med(&samples[j]),
                    "runs_ms": samples[j],
                    "runs": samples[j].len(),
                    "last": info[j],
                }),
            );
        }
        let m = |k: Extract| med(&samples[Extract::ALL.iter().position(|x| *x == k).unwrap()]);
        eprintln!(
            "[extract] {n:>9} entries: batch {} ms, +json {} ms, +values {} ms, +om {} ms, daemon om {} ms, daemon text {} ms, iterative {} ms (others {outside_pct:.1} %)",
            fmt_ms(m(Extract::Batch)),
            fmt_ms(m(Extract::Json)),
            fmt_ms(m(Extract::Values)),
            fmt_ms(m(Extract::OmDirect)),
            fmt_ms(m(Extract::DaemonOm)),
            fmt_ms(m(Extract::DaemonText)),
            fmt_ms(m(Extract::Iterative)),
        );
        out.push(json!({
            "entries": n,
            "methods": Value::Object(per),
            "iterative_over_batch": m(Extract::Iterative) / m(Extract::Batch),
            "outside_cpu_pct": outside_pct,
            "cross_check": check,
        }));
    }
    Ok(Value::Array(out))
}

fn part_reset(fd: BorrowedFd<'_>, sizes: &[usize], runs: usize) -> Result<Value> {
    let mut out = Vec::new();
    for &n in sizes {
        let methods = [("batch", Method::Batch), ("iterative", Method::Iterative)];
        let mut caps = [runs; 2];
        let mut samples = [Vec::new(), Vec::new()];
        let outside = Outside::start(&[]);
        for run in 0..runs {
            for (j, (name, method)) in methods.iter().enumerate() {
                check_interrupted()?;
                if run >= caps[j] {
                    continue;
                }
                refill(fd, n)?;
                let t = Instant::now();
                let e = batch::read_and_delete(fd, *method)?;
                let took = ms(t.elapsed());
                let got = e.len();
                drop(e);
                let left = batch::read(fd, Method::Batch)?.len();
                if got != n || left != 0 {
                    bail!("read_and_delete {name}: {got} of {n} entries returned, {left} left");
                }
                if run == 0 && took > SLOW_MS {
                    caps[j] = caps[j].min(3);
                }
                samples[j].push(took);
            }
        }
        let (b, i) = (med(&samples[0]), med(&samples[1]));
        let outside_pct = outside.pct();
        eprintln!(
            "[reset] {n:>9} entries: batch {} ms, iterative {} ms, ratio {:.1} (others {outside_pct:.1} %)",
            fmt_ms(b),
            fmt_ms(i),
            i / b
        );
        out.push(json!({
            "entries": n,
            "batch": { "median_ms": b, "runs_ms": samples[0] },
            "iterative": { "median_ms": i, "runs_ms": samples[1] },
            "ratio": i / b,
            "outside_cpu_pct": outside_pct,
        }));
    }
    Ok(Value::Array(out))
}

// ---------------------------------------------------------------------------
// Part 3: injection.

/// The library spec (traffic_by_dst.yaml) with another name, taps and
/// direction, and the C source or the object instead of `source_file`.
fn traffic_spec(name: &str, taps: &[&str], object_b64: Option<&str>) -> Result<ProbeSpec> {
    let mut s: ProbeSpec = serde_yaml::from_str(TRAFFIC_YAML).context("traffic_by_dst.yaml")?;
    s.name = name.to_string();
    s.attach.taps = taps.iter().map(|t| t.to_string()).collect();
    s.attach.direction = Direction::Both;
    s.source_file = None;
    s.object_file = None;
    match object_b64 {
        Some(b) => {
            s.object = Some(b.to_string());
            s.source = None;
        }
        None => {
            s.source = Some(TRAFFIC_C.to_string());
            s.object = None;
        }
    }
    Ok(s)
}

/// A private namespace with one veth pair, deleted on drop.
struct PrivateNs(String);

impl Drop for PrivateNs {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn part_inject(object_b64: &str, runs: usize) -> Result<Value> {
    let ns = format!("{}-probeinj", vtap_testbed::testbed::run_prefix());
    netns::add(&ns)?;
    let guard = PrivateNs(ns.clone());
    vtap_testbed::cmd::ip(
        Some(&ns),
        &[
            "link", "add", "vbp0", "type", "veth", "peer", "name", "vbp1",
        ],
    )?;
    for d in ["vbp0", "vbp1", "lo"] {
        vtap_testbed::cmd::ip(Some(&ns), &["link", "set", d, "up"])?;
    }
    let b64 = object_b64.to_string();
    let r = netns::in_netns(&ns, move || {
        let links: Links = list_links_blocking()?;
        if !links.contains_key("vbp0") {
            bail!("vbp0 not listed in the private namespace");
        }
        let empty = Links::new();
        // (form, attached)
        let cases = [("c", false), ("elf", false), ("c", true), ("elf", true)];
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut load_ms: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut remove_ms: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut status: Vec<Value> = vec![Value::Null; cases.len()];
        let mut pm = ProbeManager::new();
        for _ in 0..runs {
            for (j, (form, attach)) in cases.iter().enumerate() {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    bail!("interrupted by a signal");
                }
                let spec = traffic_spec(
                    "inject-bench",
                    &["vbp0"],
                    (*form == "elf").then_some(b64.as_str()),
                )?;
                let l = if *attach { &links } else { &empty };
                let t = Instant::now();
                let replaced = pm.inject(spec, l).map_err(|e| anyhow!("inject: {e}"))?;
                samples[j].push(ms(t.elapsed()));
                if replaced {
                    bail!("a probe was replaced: the previous one was not removed");
                }
                let st = pm
                    .status("inject-bench")
                    .ok_or_else(|| anyhow!("no status"))?;
                let want = if *attach { 2 } else { 0 };
                if st.attached.len() != want || !st.errors.is_empty() {
                    bail!(
                        "{form}: attached {:?}, errors {:?} (expected {want} links)",
                        st.attached,
                        st.errors
                    );
                }
                load_ms[j].push(st.load_ms);
                status[j] = serde_json::to_value(&st)?;
                let t = Instant::now();
                pm.remove("inject-bench")
                    .map_err(|e| anyhow!("remove: {e}"))?;
                remove_ms[j].push(ms(t.elapsed()));
            }
        }
        let mut out = serde_json::Map::new();
        for (j, (form, attach)) in cases.iter().enumerate() {
            out.insert(
                format!("{form}_{}", if *attach { "veth" } else { "no_attach" }),
                json!({
                    "form": form,
                    "attached_to": if *attach { json!(["vbp0:ingress", "vbp0:egress"]) } else { json!([]) },
                    "median_ms": med(&samples[j]),
                    "runs_ms": samples[j],
                    "manager_load_ms_median": med(&load_ms[j]),
                    "remove_ms_median": med(&remove_ms[j]),
                    "status_of_last": status[j],
                }),
            );
        }
        Ok(Value::Object(out))
    });
    drop(guard);
    let v = r?;
    for (k, label) in [
        ("c_no_attach", "C, no attach"),
        ("elf_no_attach", "ELF, no attach"),
        ("c_veth", "C, veth"),
        ("elf_veth", "ELF, veth"),
    ] {
        eprintln!(
            "[inject] {label:<14} median {} ms",
            fmt_ms(v[k]["median_ms"].as_f64().unwrap_or(f64::NAN))
        );
    }
    Ok(json!({ "namespace": ns, "veth": "vbp0 (peer vbp1)", "runs": runs, "cases": v }))
}

// ---------------------------------------------------------------------------
// Part 4: throughput.

/// `BPF_PROG_QUERY` on `dev` in the calling thread's namespace: programs
/// attached for `attach_type` (BPF_TCX_INGRESS = 46, BPF_TCX_EGRESS = 47).
fn bpf_query_count(dev: &str, attach_type: u32) -> Result<u32> {
    let c = std::ffi::CString::new(dev)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {dev}");
    }
    let mut attr = [0u8; 120];
    attr[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    const BPF_PROG_QUERY: libc::c_long = 16;
    // SAFETY: bpf(2) with a zeroed, correctly sized attr buffer we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc != 0 {
        bail!("BPF_PROG_QUERY({dev}): {}", std::io::Error::last_os_error());
    }
    Ok(u32::from_ne_bytes(
        attr[24..28].try_into().expect("4 bytes"),
    ))
}

fn tcx_counts(host_ns: &str) -> Result<(u32, u32)> {
    netns::in_netns(host_ns, || {
        Ok((bpf_query_count(TAP, 46)?, bpf_query_count(TAP, 47)?))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    probes: usize,
    reads: bool,
}

impl Case {
    const ALL: [Case; 4] = [
        Case {
            probes: 0,
            reads: false,
        },
        Case {
            probes: 1,
            reads: false,
        },
        Case {
            probes: 10,
            reads: false,
        },
        Case {
            probes: 1,
            reads: true,
        },
    ];
    fn name(self) -> String {
        if self.reads {
            format!("{}-probe+reads", self.probes)
        } else {
            format!("{}-probes", self.probes)
        }
    }
}

/// Injects `n` copies (`traffic-0..`) in the host namespace.
fn inject_copies(host_ns: &str, n: usize, b64: &str) -> Result<(ProbeManager, f64)> {
    let b64 = b64.to_string();
    netns::in_netns(host_ns, move || {
        let links = list_links_blocking()?;
        let mut pm = ProbeManager::new();
        let t = Instant::now();
        for i in 0..n {
            let spec = traffic_spec(&format!("traffic-{i}"), &[TAP], Some(&b64))?;
            pm.inject(spec, &links)
                .map_err(|e| anyhow!("inject traffic-{i}: {e}"))?;
            let st = pm.status(&format!("traffic-{i}")).expect("injected");
            if st.attached.len() != 2 {
                bail!(
                    "traffic-{i}: attached {:?}, errors {:?}",
                    st.attached,
                    st.errors
                );
            }
        }
        Ok((pm, ms(t.elapsed())))
    })
}

/// Sum of `packets` over the entries of the first metric of `read_json`.
fn probe_packets(pm: &mut ProbeManager, name: &str) -> Result<u64> {
    let v = pm
        .read_json(name, Some("dst_packets"))
        .map_err(|e| anyhow!("read_json: {e}"))?;
    Ok(v.first()
        .and_then(|m| m["value"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e["value"]["packets"].as_u64())
        .sum())
}

struct ReaderStats {
    reads: usize,
    read_ms: Vec<f64>,
    cpu_s: f64,
    wall_s: f64,
    errors: usize,
}

/// Reads `traffic-0` with `read_json` every 100 ms until `stop`.
fn reader(pm: &Mutex<ProbeManager>, stop: &AtomicBool) -> ReaderStats {
    let cpu0 = thread_cpu_now();
    let t0 = Instant::now();
    let mut next = Instant::now();
    let mut s = ReaderStats {
        reads: 0,
        read_ms: Vec::new(),
        cpu_s: 0.0,
        wall_s: 0.0,
        errors: 0,
    };
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        match pm.lock().unwrap().read_json("traffic-0", None) {
            Ok(v) => {
                std::hint::black_box(v);
            }
            Err(_) => s.errors += 1,
        }
        s.read_ms.push(ms(t.elapsed()));
        s.reads += 1;
        next += Duration::from_millis(100);
        let now = Instant::now();
        if next > now {
            // Sleep in small steps so `stop` ends the loop quickly.
            while Instant::now() < next && !stop.load(Ordering::SeqCst) {
                std::thread::sleep((next - Instant::now()).min(Duration::from_millis(20)));
            }
        }
    }
    s.cpu_s = thread_cpu_now() - cpu0;
    s.wall_s = t0.elapsed().as_secs_f64();
    s
}

#[derive(Clone, Copy)]
struct Set {
    seconds: u64,
    pin: Option<(usize, usize)>,
}

fn run_case(
    tb: &Testbed,
    ours: &[u64],
    case: Case,
    regime: &str,
    round: usize,
    set: Set,
    b64: &str,
) -> Result<Value> {
    let before_state = tcx_counts(&tb.host_ns)?;
    if before_state != (0, 0) {
        bail!("{TAP} is not clean before the run: TCX {before_state:?}");
    }
    let (pm, inject_ms) = inject_copies(&tb.host_ns, case.probes, b64)?;
    let attached = tcx_counts(&tb.host_ns)?;
    let pm = Mutex::new(pm);
    let (quiet_waited, _) = wait_for_quiet(ours, 5.0, Duration::from_secs(8));
    let link_a = link_counters(&tb.host_ns, TAP)?;
    let o = Outside::start(ours);
    let jif_a = cpu_busy_jiffies();
    let stop = AtomicBool::new(false);
    let (iperf, rstats) = std::thread::scope(|s| {
        let h = case.reads.then(|| s.spawn(|| reader(&pm, &stop)));
        let r = iperf3_vm1_to_vm2(tb, set.seconds, set.pin, 5201);
        stop.store(true, Ordering::SeqCst);
        (r, h.map(|h| h.join().expect("reader thread")))
    });
    let jif_b = cpu_busy_jiffies();
    let outside = o.pct();
    let link_b = link_counters(&tb.host_ns, TAP)?;
    let iperf = iperf?;
    let mut pm = pm.into_inner().unwrap();
    let counted = if case.probes > 0 {
        Some(probe_packets(&mut pm, "traffic-0")?)
    } else {
        None
    };
    let d = link_a.delta(&link_b);
    let tap_packets = d.rx_packets + d.tx_packets;
    for i in 0..case.probes {
        pm.remove(&format!("traffic-{i}"))
            .map_err(|e| anyhow!("remove: {e}"))?;
    }
    drop(pm);
    let after_state = tcx_counts(&tb.host_ns)?;
    if after_state != (0, 0) {
        bail!("{TAP} still has TCX programs after the run: {after_state:?}");
    }
    let gbit = iperf.bps_received / 1e9;
    let reader_json = rstats.map(|r| {
        json!({
            "reads": r.reads,
            "errors": r.errors,
            "read_ms_median": med(&r.read_ms),
            "read_ms_max": r.read_ms.iter().cloned().fold(0.0, f64::max),
            "cpu_seconds": r.cpu_s,
            "wall_seconds": r.wall_s,
            "cpu_pct_of_one_core": 100.0 * r.cpu_s / r.wall_s.max(1e-9),
            "cpu_pct_of_machine": 100.0 * r.cpu_s / r.wall_s.max(1e-9) / cpu_count() as f64,
        })
    });
    Ok(json!({
        "regime": regime,
        "case": case.name(),
        "probes": case.probes,
        "reads": case.reads,
        "round": round,
        "gbit_per_s": gbit,
        "iperf3": iperf.json(),
        "inject_ms": inject_ms,
        "tcx_programs_during": { "ingress": attached.0, "egress": attached.1 },
        "tap_packets": tap_packets,
        "probe_counted_packets": counted,
        "probe_counted_over_tap": counted.map(|c| c as f64 / tap_packets.max(1) as f64),
        "reader": reader_json,
        "cpu_busy_pct": cpu_busy_pct_between(&jif_a, &jif_b),
        "outside_cpu_pct": outside,
        "quiet_wait_s": quiet_waited,
    }))
}

fn part_throughput(
    set: Set,
    rounds: usize,
    regimes: &[String],
    b64: &str,
    quiet_bound: Duration,
) -> Result<Value> {
    let started = Instant::now();
    let tb = Testbed::new(Options::default().vms(2).monitors(0))?;
    let ours = netns_inodes(&tb);
    eprintln!(
        "[throughput] testbed {} up in {:.1}s",
        tb.name,
        started.elapsed().as_secs_f64()
    );
    type Offloads = Vec<(&'static str, bool)>;
    let defaults: Vec<(String, String, Offloads)> = vm_path_ends(&tb)
        .into_iter()
        .map(|(ns, dev)| {
            let f = get_offloads(&ns, &dev)?;
            Ok((ns, dev, f))
        })
        .collect::<Result<_>>()?;
    let quiet = wait_sustained_quiet(&ours, 10.0, Duration::from_secs(3), quiet_bound);
    let mut runs = Vec::new();
    let mut regime_info = serde_json::Map::new();
    let mut retries_left = 4;
    for regime in regimes {
        match regime.as_str() {
            "mtu" => {
                for (ns, dev) in vm_path_ends(&tb) {
                    put_offloads(&ns, &dev, &[("tso", false), ("gso", false), ("gro", false)])?;
                }
            }
            "gso" => {
                for (ns, dev, f) in &defaults {
                    put_offloads(ns, dev, f)?;
                }
            }
            o => bail!("BENCH_REGIMES: unknown regime {o:?} (mtu, gso)"),
        }
        let warm = iperf3_vm1_to_vm2(&tb, 2, set.pin, 5201).map(|r| r.bps_received / 1e9);
        eprintln!(
            "[throughput {regime}] warm-up {:.2} Gbit/s",
            warm.as_ref().unwrap_or(&0.0)
        );
        regime_info.insert(regime.clone(), json!({ "warmup_gbit_per_s": warm.ok() }));
        for round in 1..=rounds {
            for case in Case::ALL {
                let mut attempt = 0;
                loop {
                    check_interrupted()?;
                    let mut s = run_case(&tb, &ours, case, regime, round, set, b64)?;
                    let outside = s["outside_cpu_pct"].as_f64().unwrap_or(0.0);
                    let retry = outside > DISTURBED_PCT && attempt == 0 && retries_left > 0;
                    eprintln!(
                        "[throughput {regime} r{round}] {:<14} {:6.2} Gbit/s  tcx {}/{}  probe/tap {}  reader {}  (others {outside:.1} %){}",
                        case.name(),
                        s["gbit_per_s"].as_f64().unwrap_or(0.0),
                        s["tcx_programs_during"]["ingress"],
                        s["tcx_programs_during"]["egress"],
                        s["probe_counted_over_tap"]
                            .as_f64()
                            .map_or("-".into(), |x| format!("{x:.4}")),
                        s["reader"]["reads"],
                        if retry { "  disturbed: repeated" } else { "" }
                    );
                    s["excluded"] = json!(retry);
                    runs.push(s);
                    if retry {
                        retries_left -= 1;
                        attempt += 1;
                        continue;
                    }
                    break;
                }
            }
        }
    }
    // Summary per regime and case.
    let mut summary = serde_json::Map::new();
    for regime in regimes {
        let kept = |c: Case| -> Vec<&Value> {
            runs.iter()
                .filter(|r| {
                    r["regime"] == json!(regime)
                        && r["case"] == json!(c.name())
                        && r["excluded"] != json!(true)
                })
                .collect()
        };
        let gbits = |c: Case| -> Vec<f64> {
            kept(c)
                .iter()
                .filter_map(|r| r["gbit_per_s"].as_f64())
                .collect()
        };
        let by_round = |c: Case| -> std::collections::BTreeMap<u64, f64> {
            kept(c)
                .iter()
                .filter_map(|r| Some((r["round"].as_u64()?, r["gbit_per_s"].as_f64()?)))
                .collect()
        };
        let paired = |a: Case, b: Case| -> Vec<f64> {
            let (ra, rb) = (by_round(a), by_round(b));
            ra.iter()
                .filter_map(|(k, x)| rb.get(k).map(|y| x / y))
                .collect()
        };
        let base = Case::ALL[0];
        let one = Case::ALL[1];
        let m0 = med(&gbits(base));
        let mut cases = serde_json::Map::new();
        for c in Case::ALL {
            let g = gbits(c);
            let m = med(&g);
            let ks = kept(c);
            let f = |path: &[&str]| -> Vec<f64> {
                ks.iter()
                    .filter_map(|r| {
                        let mut v = *r;
                        for p in path {
                            v = &v[*p];
                        }
                        v.as_f64()
                    })
                    .collect()
            };
            cases.insert(
                c.name(),
                json!({
                    "median_gbit_per_s": m,
                    "samples": g,
                    "spread_rel": spread(&g),
                    "ratio_to_0_probes": m / m0,
                    "paired_ratios_to_0_probes": paired(c, base),
                    "median_paired_ratio_to_0_probes": med(&paired(c, base)),
                    "ratio_to_1_probe": m / med(&gbits(one)),
                    "median_paired_ratio_to_1_probe": med(&paired(c, one)),
                    "probe_counted_over_tap_median": med(&f(&["probe_counted_over_tap"])),
                    "reader_cpu_pct_of_one_core_median": med(&f(&["reader", "cpu_pct_of_one_core"])),
                    "reader_cpu_pct_of_machine_median": med(&f(&["reader", "cpu_pct_of_machine"])),
                    "reader_read_ms_median": med(&f(&["reader", "read_ms_median"])),
                    "reader_reads_median": med(&f(&["reader", "reads"])),
                    "outside_cpu_pct_median": med(&f(&["outside_cpu_pct"])),
                }),
            );
        }
        summary.insert(regime.clone(), Value::Object(cases));
    }
    Ok(json!({
        "testbed": tb.to_json(),
        "seconds": set.seconds,
        "rounds": rounds,
        "pin": set.pin.map(|(c, s)| json!({ "client_cpu": c, "server_cpu": s })),
        "quiet_wait": quiet,
        "regimes": regime_info,
        "summary": summary,
        "runs": runs,
        "seconds_total": started.elapsed().as_secs_f64(),
    }))
}

// ---------------------------------------------------------------------------
// Report.

fn markdown(report: &Value, targets: &mut Vec<Value>) -> String {
    let mut md = String::new();
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    if let Some(ex) = report["extraction"].as_array() {
        let _ = writeln!(
            md,
            "## Probe map extraction (HASH, max_entries 1,048,576, 16-byte 5-tuple key, 32-byte value), ms, median of runs\n"
        );
        let _ = writeln!(
            md,
            "| entries | (a) batch read | (b) + JSON text | (c) + serde_json Values | (d) + OpenMetrics, direct strings | (f) daemon: samples + OpenMetrics | (g) daemon: samples + Prometheus text | (e) iterative read | (e)/(a) | (b) vs Dynmon 10k (1,300 ms) | runs |"
        );
        let _ = writeln!(
            md,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for e in ex {
            let m = &e["methods"];
            let g = |k: Extract| f(&m[k.name()]["median_ms"]);
            let runs: Vec<String> = Extract::ALL
                .iter()
                .map(|k| m[k.name()]["runs"].to_string())
                .collect();
            let n = e["entries"].as_u64().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1}× | {} | {} |",
                n,
                fmt_ms(g(Extract::Batch)),
                fmt_ms(g(Extract::Json)),
                fmt_ms(g(Extract::Values)),
                fmt_ms(g(Extract::OmDirect)),
                fmt_ms(g(Extract::DaemonOm)),
                fmt_ms(g(Extract::DaemonText)),
                fmt_ms(g(Extract::Iterative)),
                f(&e["iterative_over_batch"]),
                if n == 10_000 {
                    format!("{:.0}× faster", DYNMON_10K_MS / g(Extract::Json))
                } else {
                    "".into()
                },
                runs.join("/"),
            );
            for (n_t, limit) in [(10_000u64, TARGET_10K_MS), (1_000_000, TARGET_1M_MS)] {
                if n == n_t {
                    for (k, what) in [
                        (Extract::Json, "JSON text"),
                        (Extract::OmDirect, "OpenMetrics (direct)"),
                        (Extract::DaemonOm, "OpenMetrics (the daemon's path)"),
                    ] {
                        targets.push(json!({
                            "target": format!("{n} entries to {what} <= {limit} ms"),
                            "measured_ms": g(k),
                            "met": g(k) <= limit,
                        }));
                    }
                }
            }
        }
        let _ = writeln!(
            md,
            "\nEvery column includes the read. (d): one sample per entry, `vtap_probe_flow_packets_total{{probe=\"bench\",saddr=…,daddr=…,sport=…,dport=…,proto=…}} packets`, labels with `layout.key.field(..).format(..)` (ipv4 / decimal), value with `Field::format(Decimal)`, appended to one pre-sized `String`. (f), (g): the daemon's own code on the same map injected as a probe (`ProbeManager::samples_of` — its batch read, labels formatted from the key bytes, the value field read from the value bytes — then `vtap_core::exposition::probe_families` and `encode_openmetrics` (prometheus-client's encoder) or `encode_text` (the prometheus crate's)), as `/api/v1/probes/bench/metrics?format=openmetrics` and `/metrics` do it. Freeing the output is not timed. runs = runs of (a)/(b)/(c)/(d)/(f)/(g)/(e)."
        );
    }
    if let Some(rs) = report["reset"].as_array() {
        let _ = writeln!(
            md,
            "\n## Reset: `batch::read_and_delete`, ms, median of runs\n"
        );
        let _ = writeln!(
            md,
            "| entries | Method::Batch | Method::Iterative | iterative / batch | target ≥ 20× |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---|");
        for r in rs {
            let ratio = f(&r["ratio"]);
            let n = r["entries"].as_u64().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {n} | {} ({} runs) | {} ({} runs) | {ratio:.1}× | {} |",
                fmt_ms(f(&r["batch"]["median_ms"])),
                r["batch"]["runs_ms"].as_array().map_or(0, |a| a.len()),
                fmt_ms(f(&r["iterative"]["median_ms"])),
                r["iterative"]["runs_ms"].as_array().map_or(0, |a| a.len()),
                verdict(ratio >= TARGET_RESET_RATIO),
            );
            targets.push(json!({
                "target": format!("reset of {n} entries: batch >= 20x faster than iterative"),
                "measured_ratio": ratio,
                "met": ratio >= TARGET_RESET_RATIO,
            }));
        }
    }
    if report["injection"].is_object() {
        let c = &report["injection"]["cases"];
        let runs = report["injection"]["runs"].as_u64().unwrap_or(0);
        let _ = writeln!(
            md,
            "\n## Injection: `ProbeManager::inject` of traffic_by_dst, ms, median of {runs}\n"
        );
        let _ = writeln!(
            md,
            "| form | empty `Links` | attached to one veth (ingress + egress) | target |"
        );
        let _ = writeln!(md, "|---|---:|---:|---|");
        for (form, label, limit) in [
            ("c", "C source (compile_c + load)", TARGET_INJECT_C_MS),
            ("elf", "pre-built ELF (base64)", TARGET_INJECT_ELF_MS),
        ] {
            let a = f(&c[format!("{form}_no_attach")]["median_ms"]);
            let b = f(&c[format!("{form}_veth")]["median_ms"]);
            let _ = writeln!(
                md,
                "| {label} | {} | {} | ≤ {limit} ms: {} |",
                fmt_ms(a),
                fmt_ms(b),
                verdict(a.max(b) <= limit)
            );
            targets.push(json!({
                "target": format!("inject {form} <= {limit} ms"),
                "measured_ms": { "no_attach": a, "veth": b },
                "met": a.max(b) <= limit,
            }));
        }
    }
    if let Some(sum) = report["throughput"]["summary"].as_object() {
        let t = &report["throughput"];
        let _ = writeln!(
            md,
            "\n## Datapath: iperf3 TCP VM1 -> VM2 with traffic_by_dst on both directions of vm1-tap ({} s per run, {} rounds round-robin, medians)\n",
            t["seconds"], t["rounds"]
        );
        let _ = writeln!(
            md,
            "| regime | configuration | Gbit/s | samples | spread | ratio to 0 probes (paired) | ratio to 1 probe (paired) | probe packets / tap packets | reader CPU (% of one core) | others % |"
        );
        let _ = writeln!(md, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
        for (regime, cases) in sum {
            for c in Case::ALL {
                let s = &cases[c.name()];
                let samples: Vec<String> = s["samples"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .map(|x| format!("{x:.2}"))
                    .collect();
                let _ = writeln!(
                    md,
                    "| {regime} | {} | {:.2} | {} | {:.1} % | {:.3} ({:.3}) | {} | {} | {} | {:.1} |",
                    c.name(),
                    f(&s["median_gbit_per_s"]),
                    samples.join(", "),
                    100.0 * f(&s["spread_rel"]),
                    f(&s["ratio_to_0_probes"]),
                    f(&s["median_paired_ratio_to_0_probes"]),
                    if c.probes == 1 {
                        format!(
                            "{:.4} ({:.4})",
                            f(&s["ratio_to_1_probe"]),
                            f(&s["median_paired_ratio_to_1_probe"])
                        )
                    } else {
                        "–".into()
                    },
                    if c.probes > 0 {
                        format!("{:.4}", f(&s["probe_counted_over_tap_median"]))
                    } else {
                        "–".into()
                    },
                    if c.reads {
                        format!(
                            "{:.3} ({:.0} reads, {:.2} ms each)",
                            f(&s["reader_cpu_pct_of_one_core_median"]),
                            f(&s["reader_reads_median"]),
                            f(&s["reader_read_ms_median"])
                        )
                    } else {
                        "–".into()
                    },
                    f(&s["outside_cpu_pct_median"]),
                );
            }
            let r = &cases[Case::ALL[3].name()];
            let cost_tp = 1.0 - f(&r["median_paired_ratio_to_1_probe"]);
            let cost_cpu = f(&r["reader_cpu_pct_of_machine_median"]) / 100.0;
            targets.push(json!({
                "target": format!("{regime}: reading 1 probe at 10 Hz costs <= 0.5 %"),
                "throughput_cost_paired": cost_tp,
                "throughput_spread_1_probe": f(&cases[Case::ALL[1].name()]["spread_rel"]),
                "reader_cpu_share_of_machine": cost_cpu,
                "met_by_reader_cpu": cost_cpu <= TARGET_READ_COST,
                "met_by_throughput": cost_tp <= TARGET_READ_COST,
            }));
        }
        let _ = writeln!(
            md,
            "\nratio = median / median of 0 probes (paired: median of per-round ratios); probe packets = traffic-0's `dst_packets` summed over destinations after the run, tap packets = rx + tx of vm1-tap over the transfer; reader = one thread calling `read_json(\"traffic-0\")` every 100 ms during the transfer, thread CPU time; others = CPU used meanwhile by processes outside the testbed (% of the machine)."
        );
    }
    md
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-probes: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: bench-probes [OUT.json]   (root; env BENCH_PARTS=extract,reset,inject,throughput, BENCH_SIZES, BENCH_RUNS, BENCH_INJECT_RUNS, BENCH_SECONDS, BENCH_ROUNDS, BENCH_REGIMES=mtu[,gso], BENCH_PIN, BENCH_QUIET_MAX_WAIT)"
        );
        return Ok(());
    }
    if !vtap_testbed::is_root() {
        bail!("needs root (BPF, network namespaces)");
    }
    let out_path = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("testbed/out/bench-probes.json"));
    let parts: Vec<String> = std::env::var("BENCH_PARTS")
        .unwrap_or_else(|_| "extract,reset,inject,throughput".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1,100,10000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().context("BENCH_SIZES"))
        .collect::<Result<_>>()?;
    if sizes.iter().any(|&n| n > MAX_ENTRIES) {
        bail!("BENCH_SIZES: at most {MAX_ENTRIES}");
    }
    let runs = env_num("BENCH_RUNS", 5)?.max(1) as usize;
    let inject_runs = env_num("BENCH_INJECT_RUNS", 10)?.max(1) as usize;
    let seconds = env_num("BENCH_SECONDS", 5)?.clamp(1, 60);
    let rounds = env_num("BENCH_ROUNDS", 3)?.max(1) as usize;
    let regimes: Vec<String> = std::env::var("BENCH_REGIMES")
        .unwrap_or_else(|_| "mtu".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let pin = match std::env::var("BENCH_PIN").as_deref() {
        Ok("none") => None,
        Ok(v) => {
            let (a, b) = v
                .split_once(',')
                .ok_or_else(|| anyhow!("BENCH_PIN={v:?}: CLIENT_CPU,SERVER_CPU or none"))?;
            Some((a.trim().parse()?, b.trim().parse()?))
        }
        Err(_) => Some((0, 0)),
    };
    let quiet_bound = Duration::from_secs(env_num("BENCH_QUIET_MAX_WAIT", 600)?);
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let mut report = json!({
        "benchmark": "bench-probes",
        "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "kernel": shell("uname", &["-r"]),
        "cpus": cpu_count(),
        "git_head": shell("git", &["-C", &workspace_root().to_string_lossy(), "rev-parse", "HEAD"]),
        "clang": shell("clang-19", &["--version"]).lines().next().unwrap_or("").to_string(),
        "parts": parts,
        "runs": runs,
        "quiet_waits": {},
    });
    let want = |p: &str| parts.iter().any(|x| x == p);

    // The library probe as an object, for ELF injection and the testbed.
    let traffic_obj = compile_c(TRAFFIC_C).map_err(|e| anyhow!("compile traffic_by_dst.c: {e}"))?;
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&traffic_obj)
    };
    report["traffic_by_dst_object_bytes"] = json!(traffic_obj.len());

    if want("extract") || want("reset") {
        let obj = compile_c(FLOW_C).map_err(|e| anyhow!("compile the flow map object: {e}"))?;
        let btf = Btf::from_elf(&obj)?;
        let layout = MapLayout::new(&btf, "flows")?;
        if layout.key.size() != KEY_SIZE || layout.value.size() != VALUE_SIZE {
            bail!(
                "flow layouts are {} / {} bytes, expected {KEY_SIZE} / {VALUE_SIZE}",
                layout.key.size(),
                layout.value.size()
            );
        }
        let fields = FlowFields::new(&layout)?;
        let (mut pm, flows) = inject_flow_probe()?;
        let fd = flows.fd().as_fd();
        let info = batch::MapInfo::of(fd)?;
        report["flow_map"] = json!({
            "object_bytes": obj.len(),
            "map_type": info.map_type,
            "key_size": info.key_size,
            "value_size": info.value_size,
            "max_entries": info.max_entries,
            "key_type": layout.key.type_name(),
            "value_type": layout.value.type_name(),
        });
        if want("extract") {
            report["quiet_waits"]["extract"] =
                wait_sustained_quiet(&[], 10.0, Duration::from_secs(3), quiet_bound);
            report["extraction"] = part_extract(fd, &layout, &fields, &mut pm, &sizes, runs)?;
        }
        if want("reset") {
            check_interrupted()?;
            report["quiet_waits"]["reset"] =
                wait_sustained_quiet(&[], 10.0, Duration::from_secs(3), quiet_bound);
            let rs: Vec<usize> = [10_000usize, 1_000_000]
                .into_iter()
                .filter(|n| sizes.contains(n))
                .collect();
            report["reset"] = part_reset(fd, &rs, runs)?;
        }
    }
    if want("inject") {
        check_interrupted()?;
        report["quiet_waits"]["inject"] =
            wait_sustained_quiet(&[], 10.0, Duration::from_secs(3), quiet_bound);
        report["injection"] = part_inject(&b64, inject_runs)?;
    }
    if want("throughput") {
        check_interrupted()?;
        report["throughput"] =
            part_throughput(Set { seconds, pin }, rounds, &regimes, &b64, quiet_bound)?;
    }

    let mut targets = Vec::new();
    let mut md = markdown(&report, &mut targets);
    let _ = writeln!(md, "\n## Targets\n");
    for t in &targets {
        let met = match (&t["met"], &t["met_by_reader_cpu"]) {
            (Value::Bool(b), _) => verdict(*b).to_string(),
            (_, Value::Bool(cpu)) => format!(
                "reader CPU {:.3} % of the machine: {}; throughput cost (paired, 1 probe + reads vs 1 probe) {:.2} %: {} (run-to-run spread of the 1-probe case {:.1} %)",
                100.0
                    * t["reader_cpu_share_of_machine"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                verdict(*cpu),
                100.0 * t["throughput_cost_paired"].as_f64().unwrap_or(f64::NAN),
                verdict(t["met_by_throughput"] == json!(true)),
                100.0 * t["throughput_spread_1_probe"].as_f64().unwrap_or(f64::NAN),
            ),
            _ => "-".into(),
        };
        let _ = writeln!(md, "- {}: {met}", t["target"].as_str().unwrap_or(""));
    }
    let total = started.elapsed().as_secs_f64();
    let _ = writeln!(md, "\ntotal run time {total:.0} s");
    report["targets"] = Value::Array(targets);
    report["total_seconds"] = json!(total);
    report["markdown"] = json!(md);
    if let Some(dir) = out_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("write {}", out_path.display()))?;
    println!("{md}");
    eprintln!("wrote {}", out_path.display());
    Ok(())
}
