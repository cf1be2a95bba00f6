//! The samples `/metrics` exports for a probe (root: the probe is loaded
//! into the kernel by `ProbeManager`, without links): a per-CPU hash and a
//! plain hash filled with known values give, for every `aggregate` mode
//! (none = one sample per CPU with a `cpu` label, sum, avg, min, max), the
//! values computed here from what was written, with the key fields as
//! labels, the static labels first — the exporter reads the value field
//! straight from the map's bytes, so this pins it to the spec's semantics.

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use vtap_core::datapath::sys;
use vtap_core::netlink::Links;
use vtap_core::probes::batch;
use vtap_core::probes::manager::{MetricSamples, ProbeManager};
use vtap_core::probes::spec::ProbeSpec;

const SRC: &str = r#"#include "vtap_probe.h"
struct key { __u32 id; };
struct val { __u64 packets; __u64 bytes; };
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 64);
	__type(key, struct key);
	__type(value, struct val);
} pcpu SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct key);
	__type(value, struct val);
} plain SEC(".maps");
SEC("classifier")
int samples_check(struct __sk_buff *skb)
{
	struct key k = {};
	struct val *a = bpf_map_lookup_elem(&pcpu, &k);
	struct val *b = bpf_map_lookup_elem(&plain, &k);
	if (a)
		a->packets++;
	if (b)
		b->packets++;
	return VTAP_PROBE_PASS;
}
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"#;

fn spec() -> ProbeSpec {
    let metric = |name: &str, map: &str, agg: &str, field: &str| {
        format!(
            "  - {{name: {name}, map: {map}, type: gauge, value_field: {field}, aggregate: {agg}, labels: {{zone: a}}, key_labels: [{{field: id, label: id}}]}}\n"
        )
    };
    let mut y =
        String::from("version: 1\nname: samples\nattach: {taps: [no-such-tap]}\nmetrics:\n");
    for agg in ["none", "sum", "avg", "min", "max"] {
        y += &metric(&format!("pcpu_{agg}"), "pcpu", agg, "packets");
    }
    y += &metric("plain_bytes", "plain", "sum", "bytes");
    let mut s: ProbeSpec = serde_yaml::from_str(&y).expect("spec");
    s.source = Some(SRC.to_string());
    s
}

/// The probe's map `name`.
fn map_of(pm: &ProbeManager, name: &str) -> aya::maps::MapData {
    let id = pm.map_id("samples", name).expect("the probe has the map");
    aya::maps::MapData::from_id(id).unwrap()
}

/// Rows of one metric: label values → value.
fn rows(ms: &[MetricSamples], metric: &str) -> (Vec<String>, BTreeMap<Vec<String>, f64>) {
    let m = ms
        .iter()
        .find(|m| m.metric == metric)
        .unwrap_or_else(|| panic!("no metric {metric} in {ms:#?}"));
    (m.label_names.clone(), m.rows.iter().cloned().collect())
}

#[test]
fn samples_follow_the_spec_for_every_aggregation() {
    let mut pm = ProbeManager::new();
    pm.inject(spec(), &Links::default())
        .unwrap_or_else(|e| panic!("inject: {e:?}"));
    let ncpus = batch::possible_cpus().unwrap();
    let pcpu = map_of(&pm, "pcpu");
    let plain = map_of(&pm, "plain");
    // Entry id: CPU c counts 10 * id + c (+ 1000 on CPU 0 for id 2, so min
    // and max differ from the arithmetic).
    let per_cpu = |id: u32, c: usize| -> u64 {
        10 * u64::from(id) + c as u64 + if id == 2 && c == 0 { 1000 } else { 0 }
    };
    for id in 1..=3u32 {
        let mut v = vec![0u8; 16 * ncpus];
        for c in 0..ncpus {
            v[16 * c..16 * c + 8].copy_from_slice(&per_cpu(id, c).to_ne_bytes());
            v[16 * c + 8..16 * c + 16].copy_from_slice(&7u64.to_ne_bytes());
        }
        sys::update(pcpu.fd().as_fd(), &id.to_ne_bytes(), &v, 0).unwrap();
        let mut p = vec![0u8; 16];
        p[8..].copy_from_slice(&(u64::from(id) * 1500).to_ne_bytes());
        sys::update(plain.fd().as_fd(), &id.to_ne_bytes(), &p, 0).unwrap();
    }
    let all = pm.samples();
    let ms = &all["samples"];
    let xs = |id: u32| -> Vec<f64> { (0..ncpus).map(|c| per_cpu(id, c) as f64).collect() };
    let key = |id: u32| vec!["a".to_string(), id.to_string()];

    let (names, got) = rows(ms, "pcpu_none");
    assert_eq!(names, ["zone", "id", "cpu"]);
    let mut want = BTreeMap::new();
    for id in 1..=3 {
        for (c, x) in xs(id).into_iter().enumerate() {
            want.insert(vec!["a".into(), id.to_string(), c.to_string()], x);
        }
    }
    assert_eq!(got, want, "aggregate: none");

    for (agg, f) in [
        ("sum", (|v: &[f64]| v.iter().sum()) as fn(&[f64]) -> f64),
        ("avg", |v| v.iter().sum::<f64>() / v.len() as f64),
        ("min", |v| v.iter().copied().fold(f64::INFINITY, f64::min)),
        ("max", |v| {
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        }),
    ] {
        let (names, got) = rows(ms, &format!("pcpu_{agg}"));
        assert_eq!(names, ["zone", "id"], "{agg}");
        let want: BTreeMap<_, _> = (1..=3).map(|id| (key(id), f(&xs(id)))).collect();
        assert_eq!(got, want, "aggregate: {agg}");
    }

    let (names, got) = rows(ms, "plain_bytes");
    assert_eq!(names, ["zone", "id"]);
    let want: BTreeMap<_, _> = (1..=3)
        .map(|id| (key(id), f64::from(id) * 1500.0))
        .collect();
    assert_eq!(got, want, "plain hash, value field bytes");
}
