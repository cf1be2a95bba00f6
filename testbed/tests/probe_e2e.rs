//! End-to-end tests of run-time probes: the real daemon, a library probe
//! compiled on the appliance and attached to a namespace VM's tap, traffic
//! with a known ground truth, the probe's maps read over REST and in
//! `/metrics`; bad probes refused with the compiler's or the verifier's
//! reason while the running probe keeps counting.
//!
//! Run: `cargo build -p vtap && cargo test -p vtap-testbed --test probe_e2e`

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use vtap_testbed::{Daemon, Options, Testbed, require_root};

fn testbed(test: &str) -> Option<Testbed> {
    if !require_root(test) {
        return None;
    }
    Some(
        Testbed::new(Options::default().vms(2))
            .unwrap_or_else(|e| panic!("{test}: cannot build testbed: {e:#}")),
    )
}

fn library(file: &str) -> String {
    vtap_testbed::probe_library(file)
}

/// The library spec of traffic-by-dst as JSON, with the source inlined and
/// the taps narrowed to vm1-tap.
fn traffic_by_dst() -> Value {
    let mut spec: Value =
        serde_yaml::from_str::<Value>(&library("traffic_by_dst.yaml")).expect("spec YAML");
    let obj = spec.as_object_mut().unwrap();
    obj.remove("source_file");
    obj.insert("source".into(), json!(library("traffic_by_dst.c")));
    obj.insert(
        "attach".into(),
        json!({"taps": ["vm1-tap"], "hook": "tc", "direction": "ingress"}),
    );
    spec
}

fn put(d: &Daemon, name: &str, spec: &Value) -> (u16, Value) {
    let r = d
        .request(
            "PUT",
            &format!("/api/v1/probes/{name}"),
            Some(&spec.to_string()),
        )
        .expect("PUT probe");
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone())),
    )
}

/// Packets counted for destination `dst` by the probe's `dst_packets`.
fn dst_packets(d: &Daemon, dst: &str) -> u64 {
    let r = d
        .get("/api/v1/probes/traffic-by-dst/metrics/dst_packets")
        .expect("GET metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let entries = v[0]["value"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .filter(|e| {
            // The key's addr is a `__be32`: decoded as the number it means.
            e["key"]["addr"]
                .as_u64()
                .map(|a| std::net::Ipv4Addr::from(a as u32).to_string())
                == Some(dst.to_string())
        })
        .map(|e| e["value"]["packets"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_library_probe_counts_exactly_and_bad_probes_change_nothing() {
    let Some(tb) = testbed("a_library_probe_counts_exactly_and_bad_probes_change_nothing") else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let spec = traffic_by_dst();
    let (code, st) = put(&d, "traffic-by-dst", &spec);
    assert_eq!(code, 201, "{st:#}\n{}", d.log());
    assert_eq!(st["attached"], json!(["vm1-tap:ingress"]), "{st:#}");
    assert!(st["program_id"].as_u64().is_some(), "{st:#}");

    let vm2 = tb.addr(2, false).to_string();
    let p = tb.ping(1, 2, 20, false).unwrap();
    assert_eq!(p.received, 20);
    assert_eq!(
        dst_packets(&d, &vm2),
        20,
        "echo requests vm1 -> vm2: {}",
        d.get("/api/v1/probes/traffic-by-dst/metrics").unwrap().body
    );

    // In /metrics, with the probe label and the key field as a label.
    let m = d.metrics().unwrap();
    let v = m.sum(
        "vtap_probe_dst_packets_total",
        &[("probe", "traffic-by-dst"), ("dst", vm2.as_str())],
    );
    assert_eq!(v, 20.0, "{}", m.dump("vtap_probe"));
    assert!(
        m.sum(
            "vtap_probe_dst_bytes_total",
            &[("probe", "traffic-by-dst"), ("dst", vm2.as_str())]
        ) >= 20.0 * 98.0
    );

    // Bad probes: each a 4xx with the reason; the running one is untouched.
    let src = library("traffic_by_dst.c");
    let mut bad: Vec<(&str, Value, &str)> = Vec::new();
    let mut s = spec.clone();
    s["source"] = json!(format!("{src}\nthis is not C;\n"));
    bad.push(("syntax error", s, "error"));
    let mut s = spec.clone();
    s["source"] = json!(
        "#include \"vtap_probe.h\"\nstruct dst_key { __be32 addr; };\nstruct dst_val { __u64 packets; __u64 bytes; };\nstruct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 16); __type(key, struct dst_key); __type(value, struct dst_val); } dst_stats SEC(\".maps\");\nSEC(\"classifier\") int p(struct __sk_buff *skb) { __u8 *d = (void *)(long)skb->data; __u8 x = *(volatile __u8 *)(d + 100); (void)x; return VTAP_PROBE_PASS; }\nchar LICENSE[] SEC(\"license\") = \"GPL\";\n"
    );
    bad.push(("out-of-bounds read", s, "verifier"));
    let mut s = spec.clone();
    s["metrics"][0]["map"] = json!("nosuch");
    bad.push(("missing map", s, "nosuch"));
    let mut s = spec.clone();
    s["source"] = json!("x".repeat(70 * 1024));
    bad.push(("oversized source", s, "at most"));
    let mut s = spec.clone();
    s["source"] = json!(format!("#include \"/etc/passwd\"\n{src}"));
    bad.push(("include outside the path", s, "not allowed"));
    let mut s = spec.clone();
    s.as_object_mut().unwrap().remove("source");
    s["object"] = json!(base64_of("/bin/true"));
    bad.push(("not a BPF ELF", s, "not a BPF object"));
    for (what, s, reason) in bad {
        let (code, body) = put(&d, "traffic-by-dst", &s);
        assert_eq!(code, 422, "{what}: {body:#}");
        assert!(
            body.to_string().contains(reason),
            "{what}: reason {reason:?} missing in {body:#}"
        );
    }
    let p = tb.ping(1, 2, 5, false).unwrap();
    assert_eq!(p.received, 5);
    assert_eq!(dst_packets(&d, &vm2), 25, "the running probe kept counting");

    // Replace: the new version starts from empty maps and counts.
    let (code, st) = put(&d, "traffic-by-dst", &spec);
    assert_eq!(code, 200, "{st:#}");
    let p = tb.ping(1, 2, 3, false).unwrap();
    assert_eq!(p.received, 3);
    assert_eq!(dst_packets(&d, &vm2), 3);

    // Remove.
    let r = d
        .request("DELETE", "/api/v1/probes/traffic-by-dst", None)
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let r = d.get("/api/v1/probes/traffic-by-dst").unwrap();
    assert_eq!(r.status, 404);
    let r = d.get("/api/v1/probes").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["probes"],
        json!([])
    );
    d.stop().expect("daemon exits 0");
}

fn base64_of(path: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = std::fs::read(path).unwrap();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Reset on read: each API read returns what was counted since the previous
/// one, while `/metrics` stays monotonic — neither steals the other's counts.
#[test]
fn reset_on_read_windows_and_monotonic_metrics() {
    let Some(tb) = testbed("reset_on_read_windows_and_monotonic_metrics") else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let mut spec = traffic_by_dst();
    for m in spec["metrics"].as_array_mut().unwrap() {
        m["reset_on_read"] = json!(true);
    }
    // Mixed settings on one map are refused.
    let mut mixed = spec.clone();
    mixed["metrics"][1]["reset_on_read"] = json!(false);
    let (code, body) = put(&d, "traffic-by-dst", &mixed);
    assert_eq!(code, 422, "{body:#}");
    assert!(body.to_string().contains("must agree"), "{body:#}");

    let (code, st) = put(&d, "traffic-by-dst", &spec);
    assert_eq!(code, 201, "{st:#}");
    let vm2 = tb.addr(2, false).to_string();
    let scrape = |d: &Daemon| {
        d.metrics().unwrap().sum(
            "vtap_probe_dst_packets_total",
            &[("probe", "traffic-by-dst"), ("dst", vm2.as_str())],
        )
    };
    assert_eq!(tb.ping(1, 2, 5, false).unwrap().received, 5);
    assert_eq!(dst_packets(&d, &vm2), 5, "first window");
    assert_eq!(scrape(&d), 5.0);
    assert_eq!(tb.ping(1, 2, 3, false).unwrap().received, 3);
    // A scrape in between does not steal the API's window.
    assert_eq!(scrape(&d), 8.0, "monotonic");
    assert_eq!(dst_packets(&d, &vm2), 3, "second window");
    assert_eq!(dst_packets(&d, &vm2), 0, "nothing since");
    assert_eq!(scrape(&d), 8.0, "still monotonic");
    // The other metric of the map saw every count too.
    let m = d.metrics().unwrap();
    assert_eq!(
        m.sum(
            "vtap_probe_dst_bytes_total",
            &[("probe", "traffic-by-dst"), ("dst", vm2.as_str())]
        ),
        8.0 * 98.0
    );
    d.stop().expect("daemon exits 0");
}

/// Parse once: on an interface vtap taps, a probe reads vtap's parse result
/// of the very packet it handles (`vtap_probe_shared`); elsewhere it gets
/// none and parses itself.
#[test]
fn probes_share_vtaps_parse_results() {
    let Some(tb) = testbed("probes_share_vtaps_parse_results") else {
        return;
    };
    // vtap taps vm1-tap (both directions); vm2-tap is not tapped.
    let mirror = "version: 1\nname: m\ntaps: [vm1-tap]\nmatch: {protocol: tcp}\noutputs:\n  - interface: mon0\n    vlan: 10\n";
    let d = tb.start_daemon(&[("m.yaml", mirror)]).expect("daemon");
    let src = r#"#include "vtap_probe.h"
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");
SEC("classifier")
int shared_check(struct __sk_buff *skb)
{
	const struct vtap_parse *p = vtap_probe_shared(skb);
	__u32 k = 2; /* not shared */
	if (p)
		k = (p->flags & VTAP_P_L4) && p->proto == 1 ? 0 : 1; /* shared ICMP, shared other */
	__u64 *v = bpf_map_lookup_elem(&seen, &k);
	if (v)
		*v += 1;
	return VTAP_PROBE_PASS;
}
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"#;
    let spec = json!({
        "version": 1, "name": "shared",
        "attach": {"taps": ["vm1-tap", "vm2-tap"], "hook": "tc", "direction": "ingress"},
        "source": src,
        "metrics": [{"name": "seen", "map": "seen", "type": "counter", "aggregate": "sum",
                     "key_labels": [{"field": "", "label": "kind", "format": "decimal"}]}]
    });
    let (code, st) = put(&d, "shared", &spec);
    assert_eq!(code, 201, "{st:#}\n{}", d.log());
    assert_eq!(tb.ping(1, 2, 10, false).unwrap().received, 10);
    let m = d.metrics().unwrap();
    let kind = |k: &str| m.sum("vtap_probe_seen_total", &[("probe", "shared"), ("kind", k)]);
    // vm1-tap ingress: the 10 echo requests, parsed by vtap and shared;
    // vm2-tap ingress: the 10 replies, not tapped by vtap: the probe's own.
    assert_eq!(
        (kind("0"), kind("1"), kind("2")),
        (10.0, 0.0, 10.0),
        "{}",
        m.dump("vtap_probe")
    );
    // Removing the last probe stops the publishing; injecting again works.
    let r = d.request("DELETE", "/api/v1/probes/shared", None).unwrap();
    assert_eq!(r.status, 204);
    d.stop().expect("daemon exits 0");
}

/// Replacing a probe under traffic loses and duplicates nothing: the new
/// version takes over the old one's TCX link atomically, and the old one's
/// final counts come back in the response.
#[test]
fn replacing_a_probe_50_times_under_traffic_loses_nothing() {
    let Some(tb) = testbed("replacing_a_probe_50_times_under_traffic_loses_nothing") else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let spec = traffic_by_dst();
    let (code, st) = put(&d, "traffic-by-dst", &spec);
    assert_eq!(code, 201, "{st:#}");
    let vm2 = tb.addr(2, false).to_string();
    let count_in = |fin: &Value| -> u64 {
        fin.as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["name"] == "dst_packets")
            .flat_map(|m| m["value"].as_array().cloned().unwrap_or_default())
            .filter(|e| {
                e["key"]["addr"]
                    .as_u64()
                    .map(|a| std::net::Ipv4Addr::from(a as u32).to_string())
                    == Some(vm2.clone())
            })
            .map(|e| e["value"]["packets"].as_u64().unwrap_or(0))
            .sum()
    };
    const PINGS: u32 = 400;
    let mut ping = tb
        .spawn(
            &tb.vm(1).ns,
            "ping",
            &["-n", "-q", "-c", &PINGS.to_string(), "-i", "0.01", &vm2],
        )
        .unwrap();
    let mut counted = 0;
    let mut swaps = 0;
    while swaps < 50 {
        let (code, st) = put(&d, "traffic-by-dst", &spec);
        assert_eq!(code, 200, "{st:#}");
        counted += count_in(&st["replaced_final"]);
        swaps += 1;
    }
    let status = ping.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "ping: {}",
        ping.stdout()
    );
    assert!(
        ping.stdout()
            .contains(&format!("{PINGS} packets transmitted, {PINGS} received")),
        "{}",
        ping.stdout()
    );
    counted += dst_packets(&d, &vm2);
    assert_eq!(
        counted, PINGS as u64,
        "echo requests counted across {swaps} versions"
    );
    d.stop().expect("daemon exits 0");
}

/// Snapshots: two maps the probe updates together always read in
/// agreement, while traffic flows, and every packet is counted once across
/// the two alternating copies.
#[test]
fn snapshot_reads_maps_at_one_instant() {
    let Some(tb) = testbed("snapshot_reads_maps_at_one_instant") else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let src = r#"#include "vtap_probe.h"
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} first SEC(".maps"), second SEC(".maps");
SEC("classifier")
int pair(struct __sk_buff *skb)
{
	struct vtap_probe_pkt p;
	if (vtap_probe_parse(skb, &p) != 0 || p.ether_type != ETH_P_IP || p.proto != IPPROTO_ICMP)
		return VTAP_PROBE_PASS;
	__u32 k = 0;
	__u64 *a = bpf_map_lookup_elem(&first, &k);
	__u64 *b = bpf_map_lookup_elem(&second, &k);
	if (a && b) {
		__sync_fetch_and_add(a, 1);
		__sync_fetch_and_add(b, 1);
	}
	return VTAP_PROBE_PASS;
}
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"#;
    let spec = json!({
        "version": 1, "name": "pair",
        "attach": {"taps": ["vm1-tap"], "hook": "tc", "direction": "ingress"},
        "source": src,
        "metrics": [
            {"name": "first", "map": "first", "type": "counter", "snapshot": true},
            {"name": "second", "map": "second", "type": "counter", "snapshot": true}
        ]
    });
    let (code, st) = put(&d, "pair", &spec);
    assert_eq!(code, 201, "{st:#}");
    const PINGS: u64 = 1000;
    let vm2 = tb.addr(2, false).to_string();
    let mut ping = tb
        .spawn(
            &tb.vm(1).ns,
            "ping",
            &["-n", "-q", "-c", "1000", "-i", "0.002", &vm2],
        )
        .unwrap();
    let read = || -> (u64, u64) {
        let r = d.get("/api/v1/probes/pair/metrics").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let get = |i: usize| {
            v[i]["value"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|e| e["value"].as_u64())
                .unwrap_or(0)
        };
        (get(0), get(1))
    };
    let mut reads = 0;
    let mut last = 0;
    while ping.try_wait().unwrap().is_none() && reads < 200 {
        let (a, b) = read();
        assert_eq!(a, b, "read {reads}: the two maps disagree");
        assert!(a >= last, "totals go back: {a} < {last}");
        last = a;
        reads += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(reads >= 20, "only {reads} reads during the traffic");
    let st = ping.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(st.is_some_and(|s| s.success()), "{}", ping.stdout());
    assert_eq!(read(), (PINGS, PINGS), "every echo request counted once");
    d.stop().expect("daemon exits 0");
}

/// The CLI: inject a library probe from its spec file (the source file is
/// read beside it), list it, read it, delete it.
#[test]
fn cli_injects_a_library_probe_from_its_spec_file() {
    let Some(tb) = testbed("cli_injects_a_library_probe_from_its_spec_file") else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf/probes/traffic_by_dst.yaml");
    let api = format!("http://{}", d.addr);
    let vtap = |args: &[&str]| -> (i32, String) {
        let mut c = vtap_testbed::cmd::ns_command(&tb.host_ns, vtap_testbed::vtap_bin());
        c.arg("--api").arg(&api).args(args);
        let o = vtap_testbed::cmd::run(&mut c, Duration::from_secs(60)).expect("vtap runs");
        (
            o.status.code().unwrap_or(-1),
            format!("{}{}", o.stdout, o.stderr),
        )
    };
    let (rc, out) = vtap(&["probe", "inject", "-f", spec.to_str().unwrap()]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("probe traffic-by-dst injected"), "{out}");
    assert!(
        out.contains("vm1-tap:ingress") && out.contains("vm2-tap:ingress"),
        "{out}"
    );
    assert_eq!(tb.ping(1, 2, 7, false).unwrap().received, 7);
    let (rc, out) = vtap(&["probe", "list"]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("traffic-by-dst") && out.contains("dst_packets"),
        "{out}"
    );
    let (rc, out) = vtap(&["probe", "metrics", "traffic-by-dst", "--openmetrics"]);
    assert_eq!(rc, 0, "{out}");
    let vm2 = tb.addr(2, false).to_string();
    assert!(
        out.contains(&format!(
            "vtap_probe_dst_packets_total{{probe=\"traffic-by-dst\",dst=\"{vm2}\"}} 7"
        )),
        "{out}"
    );
    let (rc, out) = vtap(&["probe", "inject", "-f", "/nonexistent.yaml"]);
    assert_eq!(rc, 1, "{out}");
    let (rc, out) = vtap(&["probe", "delete", "traffic-by-dst"]);
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = vtap(&["probe", "get", "traffic-by-dst"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("404") || out.contains("no probe"), "{out}");
    d.stop().expect("daemon exits 0");
}

/// A bucket-indexed map exported as a real Prometheus histogram
/// (cumulative `le` buckets, `_sum`, `_count`), accepted by promtool.
#[test]
fn a_bucket_map_is_exported_as_a_histogram() {
    let Some(tb) = testbed("a_bucket_map_is_exported_as_a_histogram") else {
        return;
    };
    let d = tb.start_daemon(&[]).expect("daemon");
    let mut spec: Value =
        serde_yaml::from_str::<Value>(&library("pkt_size_hist.yaml")).expect("spec YAML");
    let obj = spec.as_object_mut().unwrap();
    obj.remove("source_file");
    obj.insert("source".into(), json!(library("pkt_size_hist.c")));
    obj.insert(
        "attach".into(),
        json!({"taps": ["vm1-tap"], "hook": "tc", "direction": "both"}),
    );
    let (code, st) = put(&d, "pkt-size-hist", &spec);
    assert_eq!(code, 201, "{st:#}");
    assert_eq!(tb.ping(1, 2, 10, false).unwrap().received, 10);
    let text = d.metrics_text().unwrap();
    let m = vtap_testbed::Metrics::parse(&text).unwrap();
    let b = |le: &str| {
        m.sum(
            "vtap_probe_frame_size_bytes_bucket",
            &[("probe", "pkt-size-hist"), ("le", le)],
        )
    };
    // 10 echo requests and 10 replies of 98 bytes, on vm1-tap.
    assert_eq!(
        (b("64"), b("128"), b("65535"), b("+Inf")),
        (0.0, 20.0, 20.0, 20.0),
        "{text}"
    );
    let p = [("probe", "pkt-size-hist")];
    assert_eq!(m.sum("vtap_probe_frame_size_bytes_count", &p), 20.0);
    assert_eq!(m.sum("vtap_probe_frame_size_bytes_sum", &p), 20.0 * 98.0);
    // promtool (installed by scripts/install-deps.sh) accepts it.
    let mut c = std::process::Command::new("promtool");
    c.args(["check", "metrics"]);
    let o =
        vtap_testbed::cmd::run_with_stdin(&mut c, Some(text.as_bytes()), Duration::from_secs(30))
            .expect("promtool runs");
    assert!(o.success(), "promtool: {}{}", o.stdout, o.stderr);
    d.stop().expect("daemon exits 0");
}

/// An XDP probe: counts on an interface's ingress before the kernel builds
/// an skb, never changes the frame; replacing it is an XDP link update; an
/// interface vtap already taps in XDP mode is reported busy, not taken.
#[test]
fn xdp_probes_count_and_never_take_a_busy_interface() {
    let Some(tb) = testbed("xdp_probes_count_and_never_take_a_busy_interface") else {
        return;
    };
    let cap = "version: 1\nname: c\ntaps: [vm1-tap]\ndirection: ingress\nsnaplen: 64\noutputs: [{pcap: x}]\n";
    let d = tb
        .start_daemon_with(&[("c.yaml", cap)], &["--xdp-tap", "vm1-tap"])
        .expect("daemon");
    let src = r#"#include "vtap_probe.h"
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 64);
	__type(key, __be32);
	__type(value, __u64);
} icmp_by_src SEC(".maps");
SEC("xdp")
int icmp_in(struct xdp_md *ctx)
{
	struct vtap_probe_pkt p;
	if (vtap_probe_parse_xdp(ctx, &p) != 0 || p.ether_type != ETH_P_IP || p.proto != IPPROTO_ICMP)
		return VTAP_PROBE_XDP_PASS;
	__u64 one = 1, *v = bpf_map_lookup_elem(&icmp_by_src, &p.saddr4);
	if (v)
		*v += 1;
	else
		bpf_map_update_elem(&icmp_by_src, &p.saddr4, &one, BPF_NOEXIST);
	return VTAP_PROBE_XDP_PASS;
}
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"#;
    let spec = json!({
        "version": 1, "name": "icmp-in",
        "attach": {"taps": ["vm1-tap", "vm2-tap"], "hook": "xdp", "direction": "ingress"},
        "source": src,
        "metrics": [{"name": "icmp_in", "map": "icmp_by_src", "type": "counter",
                     "key_labels": [{"field": "", "label": "src", "format": "ipv4"}]}]
    });
    let (code, st) = put(&d, "icmp-in", &spec);
    assert_eq!(code, 201, "{st:#}");
    assert_eq!(st["hook"], "xdp");
    assert_eq!(st["attached"], json!(["vm2-tap:ingress"]), "{st:#}");
    assert!(
        st["errors"]["vm1-tap"].as_str().is_some(),
        "vm1-tap runs vtap's XDP program: {st:#}"
    );
    assert_eq!(tb.ping(1, 2, 6, false).unwrap().received, 6);
    // vm2-tap's ingress carries what VM2 sends: the echo replies.
    let vm2 = tb.addr(2, false).to_string();
    let m = d.metrics().unwrap();
    let v = |m: &vtap_testbed::Metrics| {
        m.sum(
            "vtap_probe_icmp_in_total",
            &[("probe", "icmp-in"), ("src", vm2.as_str())],
        )
    };
    assert_eq!(v(&m), 6.0, "{}", m.dump("vtap_probe"));
    // vtap's own XDP capture on vm1-tap still works.
    let r = d.get("/api/v1/captures/x").unwrap();
    let c: Value = serde_json::from_str(&r.body).unwrap();
    assert!(c["packets"].as_u64().unwrap_or(0) >= 6, "{c:#}");
    // Replace (an XDP link update), then count on.
    let (code, st) = put(&d, "icmp-in", &spec);
    assert_eq!(code, 200, "{st:#}");
    assert_eq!(st["attached"], json!(["vm2-tap:ingress"]), "{st:#}");
    assert_eq!(tb.ping(1, 2, 4, false).unwrap().received, 4);
    assert_eq!(v(&d.metrics().unwrap()), 4.0);
    let r = d.request("DELETE", "/api/v1/probes/icmp-in", None).unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        tb.ping(1, 2, 2, false).unwrap().received,
        2,
        "traffic after removal"
    );
    d.stop().expect("daemon exits 0");
}
