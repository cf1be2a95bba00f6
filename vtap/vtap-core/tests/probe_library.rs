//! The probe library and header, in the kernel (root: BPF_PROG_TEST_RUN):
//! `ebpf/probes/traffic_by_dst.c`, compiled by `probes::compile`, passes
//! the verifier, leaves frames untouched with TC_ACT_UNSPEC and counts
//! packets and bytes per destination (read back through the probes
//! batch/BTF layer); and `vtap_probe_parse` (ebpf/include/vtap_probe.h)
//! fills `struct vtap_probe_pkt` right for tagged and untagged IPv4/IPv6,
//! TCP/UDP, options, fragments and non-IP frames.
//!
//! Every library probe (`ebpf/probes/NAME.c` + `NAME.yaml`): its spec
//! parses and validates (CLI form), its source compiles and every metric's
//! map, key label (field + format) and value field resolve against the
//! object's BTF (no root needed); and, as root, crafted frames with a known
//! ground truth give exactly the expected samples, read the way the
//! exporter reads them (the spec's maps, labels, value fields and per-CPU
//! aggregation): syn_flood, dns_flows, ntp_monlist, pkt_size_hist,
//! flow_features.

mod common;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use common::frames::{self, L4, V4};
use serde_json::{Value, json};
use vtap_core::probes::MapLayout;
use vtap_core::probes::batch::{self, Method};
use vtap_core::probes::btf::{Aggregation, Btf, Field, LabelFormat};
use vtap_core::probes::compile::compile_c;
use vtap_core::probes::spec::{self, Hook, MetricKind, MetricSpec, ProbeSpec};

const TRAFFIC_BY_DST: &str = include_str!("../../../ebpf/probes/traffic_by_dst.c");

/// Loads an object and its classifier `prog` into the kernel.
fn load(obj: &[u8], prog: &str) -> aya::Ebpf {
    let mut ebpf = aya::Ebpf::load(obj).expect("aya loads the probe (creates its maps)");
    let p: &mut SchedClassifier = ebpf
        .program_mut(prog)
        .unwrap_or_else(|| panic!("program {prog}"))
        .try_into()
        .expect("a classifier");
    p.load().expect("the verifier accepts the probe");
    ebpf
}

/// Runs a frame through the program; asserts TC_ACT_UNSPEC and an
/// unchanged frame.
fn run(ebpf: &mut aya::Ebpf, prog: &str, frame: &[u8]) {
    run_ctx(ebpf, prog, frame, None);
}

/// [`run`] with an input `struct __sk_buff` (the fields the kernel allows:
/// mark, priority, ingress_ifindex, ifindex, ...).
fn run_ctx(ebpf: &mut aya::Ebpf, prog: &str, frame: &[u8], ctx: Option<&[u8]>) {
    let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into().unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value as i32, -1, "VTAP_PROBE_PASS = TC_ACT_UNSPEC");
    assert_eq!(&out[..r.data_size_out as usize], frame, "frame altered");
}

fn map_fd<'a>(ebpf: &'a aya::Ebpf, name: &str) -> BorrowedFd<'a> {
    use aya::maps::Map;
    match ebpf.map(name).unwrap_or_else(|| panic!("map {name}")) {
        Map::PerCpuHashMap(d)
        | Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuLruHashMap(d) => d.fd().as_fd(),
        other => panic!("unexpected map kind {other:?}"),
    }
}

#[test]
fn traffic_by_dst_counts_packets_and_bytes_per_destination() {
    if !common::require_root() {
        return;
    }
    let obj = compile_c(TRAFFIC_BY_DST).expect("compile traffic_by_dst.c");
    let mut ebpf = load(&obj, "traffic_by_dst");

    let udp = L4::Udp {
        sport: 1000,
        dport: 53,
    };
    let to_a = frames::pad(frames::ipv4(
        &[],
        [10, 0, 0, 1],
        [10, 0, 1, 5],
        &udp,
        &V4::default(),
    ));
    let to_b_tagged = frames::ipv4(
        &[(0x8100, 7)],
        [10, 0, 0, 1],
        [192, 0, 2, 9],
        &L4::Tcp {
            sport: 40000,
            dport: 443,
            flags: 0x02,
        },
        &V4 {
            options: 8,
            ..Default::default()
        },
    );
    for _ in 0..3 {
        run(&mut ebpf, "traffic_by_dst", &to_a);
    }
    run(&mut ebpf, "traffic_by_dst", &to_b_tagged);
    // Not counted: IPv6, ARP.
    run(
        &mut ebpf,
        "traffic_by_dst",
        &frames::ipv6(&[], frames::v6(1), frames::v6(2), &[], &udp),
    );
    run(
        &mut ebpf,
        "traffic_by_dst",
        &frames::pad(frames::arp(&[], [10, 0, 0, 1], [10, 0, 1, 5])),
    );

    // Read back the way the exporter does: batch read, BTF layouts, per-CPU
    // sum, ipv4 labels.
    let btf = Btf::from_elf(&obj).unwrap();
    let layout = MapLayout::new(&btf, "dst_stats").unwrap();
    let entries = batch::read(map_fd(&ebpf, "dst_stats"), Method::Auto).unwrap();
    let addr = layout.key.field("addr").unwrap();
    let mut got = BTreeMap::new();
    for (k, v) in entries.iter() {
        let value = layout
            .value
            .aggregate(v, entries.ncpus(), Aggregation::Sum)
            .unwrap();
        got.insert(addr.format(k, LabelFormat::Ipv4).unwrap(), value);
    }
    let expected: BTreeMap<String, Value> = [
        (
            "10.0.1.5".to_string(),
            json!({"packets": 3, "bytes": 3 * to_a.len()}),
        ),
        (
            "192.0.2.9".to_string(),
            json!({"packets": 1, "bytes": to_b_tagged.len()}),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);

    // The whole-map decode agrees, the key shown by value (__be32).
    let decoded = layout.decode(&entries, Some(Aggregation::Sum)).unwrap();
    assert!(
        decoded.contains(&json!({
            "key": {"addr": u32::from_be_bytes([10, 0, 1, 5])},
            "value": {"packets": 3, "bytes": 3 * to_a.len()}
        })),
        "{decoded:?}"
    );
}

/// A probe that stores what vtap_probe_parse returned and filled.
const PARSE_PROBE: &str = r#"
#include "vtap_probe.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct result {
	__s32 ret;
	__u32 _pad;
	struct vtap_probe_pkt pkt;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct result);
} last SEC(".maps");

SEC("classifier")
int parse(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct result *r = bpf_map_lookup_elem(&last, &zero);
	if (!r)
		return VTAP_PROBE_PASS;
	r->ret = vtap_probe_parse(skb, &r->pkt);
	return VTAP_PROBE_PASS;
}
"#;

/// A zero number, or an array of zeros (fields the parser left unset).
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_u64() == Some(0),
        Value::Array(a) => a.iter().all(is_zero),
        _ => false,
    }
}

#[test]
fn vtap_probe_parse_fills_the_packet_summary() {
    if !common::require_root() {
        return;
    }
    let obj = compile_c(PARSE_PROBE).expect("compile the parse probe");
    let btf = Btf::from_elf(&obj).unwrap();
    let layout = MapLayout::new(&btf, "last").unwrap();
    let mut ebpf = load(&obj, "parse");

    let mut parse = |frame: &[u8]| -> Value {
        run(&mut ebpf, "parse", frame);
        let entries = batch::read(map_fd(&ebpf, "last"), Method::Auto).unwrap();
        let mut v = layout.decode(&entries, None).unwrap().remove(0)["value"].take();
        v["pkt"].as_object_mut().unwrap().retain(|_, x| !is_zero(x));
        v
    };
    let ne = u32::from_ne_bytes;
    let a4 = |last: u8| [10, 0, 0, last];

    let tcp = L4::Tcp {
        sport: 40000,
        dport: 443,
        flags: 0x12,
    };
    let f = frames::ipv4(&[], a4(1), a4(2), &tcp, &V4::default());
    assert_eq!(
        parse(&f),
        json!({"ret": 0, "_pad": 0, "pkt": {
            "ether_type": 0x0800, "proto": 6, "saddr4": ne(a4(1)), "daddr4": ne(a4(2)),
            "sport": 40000, "dport": 443, "tcp_flags": 0x12, "len": f.len()}})
    );

    // One 802.1Q tag, IPv4 options: ports found behind both.
    let udp = L4::Udp {
        sport: 5353,
        dport: 53,
    };
    let opts = V4 {
        options: 12,
        ..Default::default()
    };
    let f = frames::ipv4(&[(0x8100, 5)], a4(3), a4(4), &udp, &opts);
    assert_eq!(
        parse(&f),
        json!({"ret": 0, "_pad": 0, "pkt": {
            "ether_type": 0x0800, "proto": 17, "saddr4": ne(a4(3)), "daddr4": ne(a4(4)),
            "sport": 5353, "dport": 53, "len": f.len()}})
    );

    // A non-first fragment: addresses and protocol, no ports.
    let frag = V4 {
        frag_offset: 100,
        ..Default::default()
    };
    let f = frames::pad(frames::ipv4(&[], a4(5), a4(6), &udp, &frag));
    assert_eq!(
        parse(&f),
        json!({"ret": 0, "_pad": 0, "pkt": {
            "ether_type": 0x0800, "proto": 17, "saddr4": ne(a4(5)), "daddr4": ne(a4(6)),
            "len": f.len()}})
    );

    // IPv6 (802.1ad tag), TCP right after the fixed header.
    let f = frames::ipv6(&[(0x88a8, 9)], frames::v6(1), frames::v6(2), &[], &tcp);
    assert_eq!(
        parse(&f),
        json!({"ret": 0, "_pad": 0, "pkt": {
            "ether_type": 0x86dd, "proto": 6, "ipv6": 1,
            "saddr6": frames::v6(1), "daddr6": frames::v6(2),
            "sport": 40000, "dport": 443, "tcp_flags": 0x12, "len": f.len()}})
    );

    // IPv6 with an extension header: not followed, so no ports.
    let f = frames::ipv6(
        &[],
        frames::v6(3),
        frames::v6(4),
        &[frames::Ext::HopByHop],
        &udp,
    );
    assert_eq!(
        parse(&f),
        json!({"ret": 0, "_pad": 0, "pkt": {
            "ether_type": 0x86dd, "ipv6": 1,
            "saddr6": frames::v6(3), "daddr6": frames::v6(4), "len": f.len()}})
    );

    // Non-IP: -1, ether type and length only.
    let f = frames::pad(frames::arp(&[], a4(1), a4(2)));
    assert_eq!(
        parse(&f),
        json!({"ret": -1, "_pad": 0, "pkt": {"ether_type": 0x0806, "len": f.len()}})
    );

    // Truncated TCP header: L3 parsed (0), no ports.
    let mut f = frames::ipv4(&[(0x8100, 1)], a4(7), a4(8), &tcp, &V4::default());
    f.truncate(f.len() - 10);
    assert_eq!(
        parse(&f),
        json!({"ret": 0, "_pad": 0, "pkt": {
            "ether_type": 0x0800, "proto": 6, "saddr4": ne(a4(7)), "daddr4": ne(a4(8)),
            "len": f.len()}})
    );
}

// ------------------------------------------------------------- the library

/// A library probe: `ebpf/probes/NAME.c` (its program is named NAME) and
/// its spec `ebpf/probes/NAME.yaml`.
struct LibProbe {
    name: &'static str,
    yaml: &'static str,
    source: &'static str,
}

macro_rules! lib_probe {
    ($name:literal) => {
        LibProbe {
            name: $name,
            yaml: include_str!(concat!("../../../ebpf/probes/", $name, ".yaml")),
            source: include_str!(concat!("../../../ebpf/probes/", $name, ".c")),
        }
    };
}

const TRAFFIC_BY_DST_PROBE: LibProbe = lib_probe!("traffic_by_dst");
const SYN_FLOOD: LibProbe = lib_probe!("syn_flood");
const DNS_FLOWS: LibProbe = lib_probe!("dns_flows");
const NTP_MONLIST: LibProbe = lib_probe!("ntp_monlist");
const PKT_SIZE_HIST: LibProbe = lib_probe!("pkt_size_hist");
const FLOW_FEATURES: LibProbe = lib_probe!("flow_features");

const LIBRARY: [&LibProbe; 6] = [
    &TRAFFIC_BY_DST_PROBE,
    &SYN_FLOOD,
    &DNS_FLOWS,
    &NTP_MONLIST,
    &PKT_SIZE_HIST,
    &FLOW_FEATURES,
];

/// One metric of a spec, resolved against the object's BTF the way the
/// probe manager resolves it.
struct ResolvedMetric {
    spec: MetricSpec,
    layout: MapLayout,
    labels: Vec<(Field, LabelFormat, String)>,
}

/// A library probe: its spec (checked) and object (compiled), every metric
/// resolved.
struct Resolved {
    name: &'static str,
    obj: Vec<u8>,
    metrics: BTreeMap<String, ResolvedMetric>,
}

/// (a) the spec parses as a `ProbeSpec` and validates in its CLI form (the
/// library's conventions too), (b) the source compiles and every metric's
/// map, key labels (field + format) and value field resolve in the BTF.
fn resolve(p: &LibProbe) -> Resolved {
    let name = p.name;
    let spec: ProbeSpec =
        serde_yaml::from_str(p.yaml).unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    let errs = spec::validate(&spec, true);
    assert!(
        errs.is_empty(),
        "{name}.yaml: {}",
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert_eq!(spec.name, name.replace('_', "-"), "{name}.yaml: name");
    assert_eq!(
        spec.source_file.as_deref(),
        Some(format!("{name}.c").as_str())
    );
    assert!(spec.source.is_none() && spec.object.is_none() && spec.object_file.is_none());
    assert_eq!(spec.attach.hook, Hook::Tc, "{name}.yaml");
    assert_eq!(spec.attach.taps, ["vm*-tap"], "{name}.yaml");
    for m in &spec.metrics {
        let what = format!("{name}.yaml: metric {}", m.name);
        assert!(!m.help.trim().is_empty(), "{what}: help");
        assert!(!m.snapshot && !m.reset_on_read, "{what}");
        if m.kind == MetricKind::Histogram {
            // Bucket-indexed map: no key labels; checked below.
            assert!(!m.buckets.is_empty() && m.key_labels.is_empty(), "{what}");
            continue;
        }
        assert!(
            matches!(m.kind, MetricKind::Counter | MetricKind::Gauge),
            "{what}: type"
        );
        assert!(
            !m.value_field.is_empty() && !m.key_labels.is_empty(),
            "{what}"
        );
    }

    let obj = compile_c(p.source).unwrap_or_else(|e| panic!("compiling {name}.c: {e}"));
    let btf = Btf::from_elf(&obj).unwrap_or_else(|e| panic!("{name}.c: BTF: {e}"));
    let mut metrics = BTreeMap::new();
    for m in &spec.metrics {
        let what = format!("{name}: metric {} (map {})", m.name, m.map);
        let layout = MapLayout::new(&btf, &m.map).unwrap_or_else(|e| panic!("{what}: {e}"));
        if m.kind == MetricKind::Histogram {
            assert!(layout.key.size() <= 8, "{what}: bucket index key");
            for f in [&m.value_field, &m.sum_field] {
                layout
                    .value
                    .field(f)
                    .unwrap_or_else(|e| panic!("{what}: field {f:?}: {e}"));
            }
            continue;
        }
        let labels = m
            .key_labels
            .iter()
            .map(|kl| {
                let f = layout
                    .key
                    .field(&kl.field)
                    .unwrap_or_else(|e| panic!("{what}: key field {:?}: {e}", kl.field));
                f.check(kl.format)
                    .unwrap_or_else(|e| panic!("{what}: key field {:?}: {e}", kl.field));
                (f, kl.format, kl.label.clone())
            })
            .collect();
        layout
            .value
            .field(&m.value_field)
            .unwrap_or_else(|e| panic!("{what}: value field: {e}"));
        metrics.insert(
            m.name.clone(),
            ResolvedMetric {
                spec: m.clone(),
                layout,
                labels,
            },
        );
    }
    Resolved { name, obj, metrics }
}

impl Resolved {
    /// Loads the object and its program (named like the probe).
    fn load(&self) -> aya::Ebpf {
        load(&self.obj, self.name)
    }

    /// Runs frames through the program (TC_ACT_UNSPEC, frames unchanged).
    fn run(&self, ebpf: &mut aya::Ebpf, frames: &[&[u8]]) {
        for f in frames {
            run(ebpf, self.name, f);
        }
    }

    /// The samples of a metric as the exporter makes them: batch read of
    /// its map, per-CPU values aggregated as the spec says, the value
    /// field, the key labels (`"label=value,…"` in spec order).
    fn samples(&self, ebpf: &aya::Ebpf, metric: &str) -> BTreeMap<String, Value> {
        let m = &self.metrics[metric];
        let entries = batch::read(map_fd(ebpf, &m.spec.map), Method::Auto).unwrap();
        let mut out = BTreeMap::new();
        for (k, v) in entries.iter() {
            let value = if entries.map_type().is_per_cpu() {
                let how = m.spec.aggregate.aggregation().expect("aggregated");
                m.layout.value.aggregate(v, entries.ncpus(), how).unwrap()
            } else {
                m.layout.value.decode(v).unwrap()
            };
            let mut x = &value;
            for part in m.spec.value_field.split('.') {
                x = &x[part];
            }
            let labels = m
                .labels
                .iter()
                .map(|(f, fmt, l)| format!("{l}={}", f.format(k, *fmt).unwrap()))
                .collect::<Vec<_>>()
                .join(",");
            assert!(x.is_number(), "{metric} {labels}: {x}");
            assert!(
                out.insert(labels, x.clone()).is_none(),
                "{metric}: duplicate labels"
            );
        }
        out
    }
}

/// Expected samples.
fn want<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<String, Value> {
    pairs
        .into_iter()
        .map(|(l, v)| (l.to_string(), json!(v)))
        .collect()
}

/// Frame lengths summed (as bytes counters).
fn total(frames: &[&[u8]]) -> u64 {
    frames.iter().map(|f| f.len() as u64).sum()
}

/// UDP with a payload (the frame builder's `L4::Udp` has none).
fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    L4::Raw(17, h)
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

/// An untagged IPv4 frame.
fn v4(src: [u8; 4], dst: [u8; 4], l4: &L4) -> Vec<u8> {
    frames::ipv4(&[], src, dst, l4, &V4::default())
}

/// An IPv4 frame with one 802.1Q tag.
fn v4_tagged(src: [u8; 4], dst: [u8; 4], l4: &L4) -> Vec<u8> {
    frames::ipv4(&[(0x8100, 42)], src, dst, l4, &V4::default())
}

/// Sets the TOS byte of an IPv4 frame (untagged or with one tag).
fn with_tos(mut f: Vec<u8>, tos: u8) -> Vec<u8> {
    let l3 = match u16::from_be_bytes([f[12], f[13]]) {
        0x8100 | 0x88a8 => 18,
        _ => 14,
    };
    f[l3 + 1] = tos;
    f
}

#[test]
fn library_specs_resolve_against_their_objects() {
    // Every spec of ebpf/probes is in LIBRARY (and so checked here).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/probes");
    for e in std::fs::read_dir(dir).unwrap() {
        let file = e.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = file.strip_suffix(".yaml") {
            assert!(
                LIBRARY.iter().any(|p| p.name == stem),
                "{file} is not in LIBRARY"
            );
        }
    }
    for p in LIBRARY {
        let r = resolve(p);
        assert!(!r.metrics.is_empty(), "{}", p.name);
    }
}

// ------------------------------------------------------------- syn_flood

#[test]
fn syn_flood_counts_syns_and_synacks_per_destination() {
    if !common::require_root() {
        return;
    }
    let r = resolve(&SYN_FLOOD);
    let mut ebpf = r.load();
    let (c1, c2, srv, other) = ([10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 1, 5], [192, 0, 2, 9]);

    let syn = v4(c1, srv, &tcp(40000, 80, 0x02));
    let syn_ecn = v4(c2, srv, &tcp(40001, 80, 0xc2)); // SYN + ECE + CWR
    let synack = v4(srv, c1, &tcp(80, 40000, 0x12));
    let syn_tagged = v4_tagged(c1, other, &tcp(40002, 443, 0x02));
    // 3 SYNs and 1 SYN-ACK for srv, 1 SYN for other.
    r.run(&mut ebpf, &[&syn, &syn, &syn_ecn, &synack, &syn_tagged]);
    // Not counted: ACK, RST+ACK, SYN+RST, FIN+ACK, a non-first fragment of
    // a SYN, UDP, IPv6 SYN, ARP.
    let frag = frames::ipv4(
        &[],
        c1,
        srv,
        &tcp(40000, 80, 0x02),
        &V4 {
            frag_offset: 10,
            ..Default::default()
        },
    );
    r.run(
        &mut ebpf,
        &[
            &v4(c1, srv, &tcp(40000, 80, 0x10)),
            &v4(srv, c1, &tcp(80, 40000, 0x14)),
            &v4(c1, srv, &tcp(40000, 80, 0x06)),
            &v4(c1, srv, &tcp(40000, 80, 0x11)),
            &frag,
            &frames::pad(v4(c1, srv, &udp(40000, 80, &[]))),
            &frames::ipv6(&[], frames::v6(1), frames::v6(2), &[], &tcp(1, 80, 0x02)),
            &frames::pad(frames::arp(&[], c1, srv)),
        ],
    );

    assert_eq!(
        r.samples(&ebpf, "syn_total"),
        want([("dst=10.0.1.5", 3), ("dst=192.0.2.9", 1)])
    );
    assert_eq!(
        r.samples(&ebpf, "synack_total"),
        want([("dst=10.0.1.5", 1), ("dst=192.0.2.9", 0)])
    );
}

// ------------------------------------------------------------- dns_flows

/// A domain name in DNS wire format (with the root label).
fn qname(labels: &[&str]) -> Vec<u8> {
    let mut n = Vec::new();
    for l in labels {
        n.push(l.len() as u8);
        n.extend_from_slice(l.as_bytes());
    }
    n.push(0);
    n
}

/// A DNS message: the header (id 0x1234, flags, QDCOUNT 1) and the
/// question (name in wire format, QTYPE, QCLASS IN).
fn dns(flags: u16, name: &[u8], qtype: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34];
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&[0; 6]);
    m.extend_from_slice(name);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

#[test]
fn dns_flows_counts_queries_by_qtype_and_responses_by_rcode_per_client() {
    if !common::require_root() {
        return;
    }
    let r = resolve(&DNS_FLOWS);
    let mut ebpf = r.load();
    let (client, client2, client3, server, server2) = (
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        [10, 0, 0, 3],
        [10, 0, 0, 53],
        [10, 0, 0, 99],
    );
    const RD: u16 = 0x0100;
    const QR: u16 = 0x8000;
    let example = qname(&["example", "com"]);

    // Client 10.0.0.1: 2 A queries, 1 AAAA query (tagged), 1 NXDOMAIN.
    let q_a = v4(client, server, &udp(40000, 53, &dns(RD, &example, 1)));
    let www = qname(&["www", "example", "com"]);
    let q_aaaa = v4_tagged(client, server, &udp(40001, 53, &dns(RD, &www, 28)));
    let nx = v4(
        server,
        client,
        &udp(53, 40000, &dns(QR | RD | 0x80 | 3, &example, 1)),
    );
    // Client 10.0.0.2: TXT for a name of the greatest length, 255 bytes.
    let (l63, l61) = ("a".repeat(63), "b".repeat(61));
    let longest = qname(&[&l63, &l63, &l63, &l61]);
    assert_eq!(longest.len(), 255);
    let q_txt = v4(client2, server, &udp(5000, 53, &dns(RD, &longest, 16)));
    // Client 10.0.0.3: the QTYPE is not read (code 0) for a name one byte
    // too long, and a compression pointer in the question.
    let l62 = "c".repeat(62);
    let too_long = qname(&[&l63, &l63, &l63, &l62]);
    let q_long = v4(client3, server, &udp(5001, 53, &dns(RD, &too_long, 1)));
    let q_ptr = v4(client3, server, &udp(5001, 53, &dns(RD, &[0xc0, 0x0c], 1)));
    // Server to server (both ports 53): the query's sender is the client.
    let mx = v4(server, server2, &udp(53, 53, &dns(0, &example, 15)));

    let counted: [&[u8]; 8] = [&q_a, &q_a, &q_aaaa, &nx, &q_txt, &q_long, &q_ptr, &mx];
    r.run(&mut ebpf, &counted);
    // Not DNS: another port, a payload shorter than a DNS header (frame
    // not padded: padding would fill the header), TCP port 53, IPv6.
    let q = dns(RD, &example, 1);
    r.run(
        &mut ebpf,
        &[
            &v4(client, server, &udp(40000, 5353, &q)),
            &v4(client, server, &udp(40000, 53, &q[..11])),
            &frames::pad(v4(client, server, &tcp(40000, 53, 0x18))),
            &frames::ipv6(&[], frames::v6(1), frames::v6(2), &[], &udp(40000, 53, &q)),
        ],
    );

    let c =
        |client: &str, kind: &str, code: u32| format!("client={client},kind={kind},code={code}");
    let expected_packets: BTreeMap<String, Value> = [
        (c("10.0.0.1", "query", 1), 2),
        (c("10.0.0.1", "query", 28), 1),
        (c("10.0.0.1", "response", 3), 1),
        (c("10.0.0.2", "query", 16), 1),
        (c("10.0.0.3", "query", 0), 2),
        (c("10.0.0.53", "query", 15), 1),
    ]
    .into_iter()
    .map(|(l, v)| (l, json!(v)))
    .collect();
    assert_eq!(r.samples(&ebpf, "dns_messages_total"), expected_packets);
    let expected_bytes: BTreeMap<String, Value> = [
        (c("10.0.0.1", "query", 1), total(&[&q_a, &q_a])),
        (c("10.0.0.1", "query", 28), total(&[&q_aaaa])),
        (c("10.0.0.1", "response", 3), total(&[&nx])),
        (c("10.0.0.2", "query", 16), total(&[&q_txt])),
        (c("10.0.0.3", "query", 0), total(&[&q_long, &q_ptr])),
        (c("10.0.0.53", "query", 15), total(&[&mx])),
    ]
    .into_iter()
    .map(|(l, v)| (l, json!(v)))
    .collect();
    assert_eq!(r.samples(&ebpf, "dns_bytes_total"), expected_bytes);
}

// ----------------------------------------------------------- ntp_monlist

#[test]
fn ntp_monlist_counts_mode7_and_all_ntp_per_source() {
    if !common::require_root() {
        return;
    }
    let r = resolve(&NTP_MONLIST);
    let mut ebpf = r.load();
    let (attacker, server) = ([10, 0, 0, 9], [10, 0, 1, 1]);

    // From 10.0.0.9: 2 monlist requests (mode 7, v2, MON_GETLIST_1) and one
    // mode-3 client request.
    let monlist = frames::pad(v4(
        attacker,
        server,
        &udp(50000, 123, &[0x17, 0, 3, 42, 0, 0, 0, 0]),
    ));
    let mut client_req = vec![0u8; 48];
    client_req[0] = 0x23; // v4, mode 3
    let mode3 = v4(attacker, server, &udp(50001, 123, &client_req));
    // From 10.0.1.1: a mode-4 answer and a (tagged) monlist response.
    let mut reply = client_req.clone();
    reply[0] = 0x24; // v4, mode 4
    let mode4 = v4(server, attacker, &udp(123, 50001, &reply));
    let mut monlist_resp = vec![0u8; 8 + 6 * 72];
    monlist_resp[..4].copy_from_slice(&[0x97, 0, 3, 42]); // response, v2, mode 7
    let mode7_resp = v4_tagged(server, attacker, &udp(123, 50000, &monlist_resp));
    r.run(
        &mut ebpf,
        &[&monlist, &monlist, &mode3, &mode4, &mode7_resp],
    );
    // Not NTP: another port, no payload (not padded), IPv6.
    r.run(
        &mut ebpf,
        &[
            &frames::pad(v4(attacker, server, &udp(50000, 1234, &[0x17, 0, 3, 42]))),
            &v4(attacker, server, &udp(50000, 123, &[])),
            &frames::ipv6(
                &[],
                frames::v6(1),
                frames::v6(2),
                &[],
                &udp(50000, 123, &[0x17, 0, 3, 42]),
            ),
        ],
    );

    let (a, s) = ("src=10.0.0.9", "src=10.0.1.1");
    assert_eq!(
        r.samples(&ebpf, "ntp_mode7_packets_total"),
        want([(a, 2), (s, 1)])
    );
    assert_eq!(
        r.samples(&ebpf, "ntp_mode7_bytes_total"),
        want([
            (a, total(&[&monlist, &monlist])),
            (s, total(&[&mode7_resp]))
        ])
    );
    assert_eq!(
        r.samples(&ebpf, "ntp_packets_total"),
        want([(a, 3), (s, 2)])
    );
    assert_eq!(
        r.samples(&ebpf, "ntp_bytes_total"),
        want([
            (a, total(&[&monlist, &monlist, &mode3])),
            (s, total(&[&mode4, &mode7_resp]))
        ])
    );
}

// --------------------------------------------------------- pkt_size_hist

#[test]
fn pkt_size_hist_counts_frames_per_size_bucket() {
    if !common::require_root() {
        return;
    }
    let r = resolve(&PKT_SIZE_HIST);
    let mut ebpf = r.load();
    // A frame of exactly n bytes (an IPv4/UDP frame, padded).
    let sized = |n: usize| {
        let mut f = v4([10, 0, 0, 1], [10, 0, 0, 2], &udp(1, 2, &[]));
        assert!(n >= f.len());
        f.resize(n, 0);
        f
    };
    let arp = frames::pad(frames::arp(&[], [10, 0, 0, 1], [10, 0, 0, 2]));
    assert_eq!(arp.len(), 60);
    let sizes = [64, 65, 100, 300, 1514, 1518, 1519, 3000];
    let fs: Vec<Vec<u8>> = sizes.iter().map(|&n| sized(n)).collect();
    r.run(&mut ebpf, &[&arp]);
    for f in &fs {
        r.run(&mut ebpf, &[f]);
    }

    let b = |i: u32| format!("bucket={i}");
    let packets: BTreeMap<String, Value> = [2, 2, 0, 1, 0, 2, 2, 0, 0]
        .into_iter()
        .enumerate()
        .map(|(i, n)| (b(i as u32), json!(n)))
        .collect();
    assert_eq!(r.samples(&ebpf, "pkt_size_packets_total"), packets);
    // 60 + 64 | 65 + 100 | - | 300 | - | 1514 + 1518 | 1519 + 3000 | - | -
    let bytes: BTreeMap<String, Value> = [124, 165, 0, 300, 0, 3032, 4519, 0, 0]
        .into_iter()
        .enumerate()
        .map(|(i, n)| (b(i as u32), json!(n)))
        .collect();
    assert_eq!(r.samples(&ebpf, "pkt_size_bytes_total"), bytes);
}

// --------------------------------------------------------- flow_features

/// A `struct __sk_buff` for BPF_PROG_TEST_RUN with only ingress_ifindex
/// set (offset 36; the kernel allows it in the input context).
fn skb_ctx(ingress_ifindex: u32) -> Vec<u8> {
    let mut c = vec![0u8; 44]; // up to and with ifindex (0: loopback)
    c[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    c
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn flow_features_records_netflow_features_per_5_tuple() {
    if !common::require_root() {
        return;
    }
    let r = resolve(&FLOW_FEATURES);
    let mut ebpf = r.load();
    let prog = r.name;
    let (vm, srv, mdns, vm2) = (
        [10, 0, 0, 1],
        [10, 0, 1, 5],
        [224, 0, 0, 251],
        [10, 0, 0, 2],
    );

    let t0 = monotonic_ns();
    // Flow A, 10.0.0.1:40000 -> 10.0.1.5:443 TCP: SYN with TOS 0x10, then
    // ACK and PSH+ACK with TOS 0 (SRC_TOS is the first packet's). The first
    // packet as at a tap's ingress (ingress_ifindex = the device, lo).
    let a1 = with_tos(v4(vm, srv, &tcp(40000, 443, 0x02)), 0x10);
    let a2 = v4(vm, srv, &tcp(40000, 443, 0x10));
    let a3 = v4_tagged(vm, srv, &tcp(40000, 443, 0x18));
    run_ctx(&mut ebpf, prog, &a1, Some(&skb_ctx(1)));
    // Flow C, the reverse direction: SYN+ACK, as at a tap's egress of a
    // packet received on ifindex 7.
    let c1 = v4(srv, vm, &tcp(443, 40000, 0x12));
    run_ctx(&mut ebpf, prog, &c1, Some(&skb_ctx(7)));
    r.run(&mut ebpf, &[&a2, &a3]);
    // Flow B, 10.0.0.1:5353 -> 224.0.0.251:5353 UDP, TOS 0xb8 (EF), one
    // frame tagged; as sent by the host itself (no ingress interface).
    let b1 = with_tos(frames::pad(v4(vm, mdns, &udp(5353, 5353, &[]))), 0xb8);
    let b2 = with_tos(v4_tagged(vm, mdns, &udp(5353, 5353, &[0; 40])), 0xb8);
    r.run(&mut ebpf, &[&b1, &b2]);
    // Flow D, ICMP (no ports).
    let d1 = frames::pad(v4(vm, vm2, &L4::Icmp));
    r.run(&mut ebpf, &[&d1]);
    // Not recorded: IPv6, ARP.
    r.run(
        &mut ebpf,
        &[
            &frames::ipv6(&[], frames::v6(1), frames::v6(2), &[], &tcp(1, 2, 0x02)),
            &frames::pad(frames::arp(&[], vm, srv)),
        ],
    );
    let t1 = monotonic_ns();

    let a = "saddr=10.0.0.1,daddr=10.0.1.5,sport=40000,dport=443,proto=6";
    let c = "saddr=10.0.1.5,daddr=10.0.0.1,sport=443,dport=40000,proto=6";
    let b = "saddr=10.0.0.1,daddr=224.0.0.251,sport=5353,dport=5353,proto=17";
    let d = "saddr=10.0.0.1,daddr=10.0.0.2,sport=0,dport=0,proto=1";
    assert_eq!(
        r.samples(&ebpf, "flow_packets_total"),
        want([(a, 3), (b, 2), (c, 1), (d, 1)])
    );
    assert_eq!(
        r.samples(&ebpf, "flow_bytes_total"),
        want([
            (a, total(&[&a1, &a2, &a3])),
            (b, total(&[&b1, &b2])),
            (c, total(&[&c1])),
            (d, total(&[&d1]))
        ])
    );
    assert_eq!(
        r.samples(&ebpf, "flow_tos"),
        want([(a, 0x10), (b, 0xb8), (c, 0), (d, 0)])
    );
    assert_eq!(
        r.samples(&ebpf, "flow_tcp_flags"),
        want([(a, 0x1a), (b, 0), (c, 0x12), (d, 0)])
    );
    // Test runs happen on the loopback device (ifindex 1): at "ingress"
    // (ingress_ifindex 1) in = 1, out = 0; otherwise in = ingress_ifindex
    // (7, or 0 for the host's own packets) and out = 1.
    assert_eq!(
        r.samples(&ebpf, "flow_in_ifindex"),
        want([(a, 1), (b, 0), (c, 7), (d, 0)])
    );
    assert_eq!(
        r.samples(&ebpf, "flow_out_ifindex"),
        want([(a, 0), (b, 1), (c, 1), (d, 1)])
    );
    let first = r.samples(&ebpf, "flow_first_seen_ns");
    let last = r.samples(&ebpf, "flow_last_seen_ns");
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        last.keys().collect::<Vec<_>>()
    );
    for (k, f) in &first {
        let (f, l) = (f.as_u64().unwrap(), last[k].as_u64().unwrap());
        assert!(
            t0 <= f && f <= l && l <= t1,
            "{k}: {t0} <= {f} <= {l} <= {t1}"
        );
    }
    // Multi-packet flows: the last packet came after the first; a single
    // packet's flow: first = last.
    let lt = |k: &str| first[k].as_u64().unwrap() < last[k].as_u64().unwrap();
    assert!(lt(a) && lt(b));
    assert_eq!(first[c], last[c]);
    assert_eq!(first[d], last[d]);
    // Flow C began between A's first and last packets.
    assert!(first[a].as_u64() < first[c].as_u64() && first[c].as_u64() < last[a].as_u64());
}
