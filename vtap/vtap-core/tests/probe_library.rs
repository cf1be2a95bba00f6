//! The probe library and header, in the kernel (root: BPF_PROG_TEST_RUN):
//! `ebpf/probes/traffic_by_dst.c`, compiled by `probes::compile`, passes
//! the verifier, leaves frames untouched with TC_ACT_UNSPEC and counts
//! packets and bytes per destination (read back through the probes
//! batch/BTF layer); and `vtap_probe_parse` (ebpf/include/vtap_probe.h)
//! fills `struct vtap_probe_pkt` right for tagged and untagged IPv4/IPv6,
//! TCP/UDP, options, fragments and non-IP frames.

mod common;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use common::frames::{self, L4, V4};
use serde_json::{Value, json};
use vtap_core::probes::MapLayout;
use vtap_core::probes::batch::{self, Method};
use vtap_core::probes::btf::{Aggregation, Btf, LabelFormat};
use vtap_core::probes::compile::compile_c;

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
    let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into().unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
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
        Map::PerCpuHashMap(d) | Map::Array(d) => d.fd().as_fd(),
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
