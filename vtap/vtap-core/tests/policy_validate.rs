//! One test per validation rule of `mirror-policies/README.md`: the exact
//! field paths, and every error collected at once.

use vtap_core::policy::model::{Output, Policy};
use vtap_core::policy::{FieldError, parse_str, validate_policy, validate_set};

const BASE: &str =
    "version: 1\nname: p\ntaps: [vm1-tap]\noutputs: [{interface: mon0, vlan: 100}]\n";

/// A policy: BASE with `extra` YAML lines appended (later keys may not
/// repeat BASE's; use `with` to replace them).
fn policy(extra: &str) -> Policy {
    let text = format!("{BASE}{extra}");
    parse_str(&text, "test")
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .remove(0)
}

/// BASE with one top-level key replaced.
fn with(key: &str, value: &str) -> Policy {
    let text: String = BASE
        .lines()
        .filter(|l| !l.starts_with(&format!("{key}:")))
        .map(|l| format!("{l}\n"))
        .collect();
    policy_text(&format!("{text}{key}: {value}\n"))
}

fn policy_text(text: &str) -> Policy {
    parse_str(text, "test")
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .remove(0)
}

fn fields(errs: &[FieldError]) -> Vec<&str> {
    errs.iter().map(|e| e.field.as_str()).collect()
}

/// Asserts the errors are exactly at `want` (in order) and returns them.
#[track_caller]
fn expect(p: &Policy, want: &[&str]) -> Vec<FieldError> {
    let errs = validate_policy(p);
    assert_eq!(fields(&errs), want, "{errs:#?}");
    errs
}

#[track_caller]
fn msg_contains(errs: &[FieldError], i: usize, s: &str) {
    assert!(
        errs[i].message.contains(s),
        "{:?} does not contain {s:?}",
        errs[i].message
    );
}

#[test]
fn base_is_valid() {
    expect(&policy(""), &[]);
}

#[test]
fn version_must_be_1() {
    let e = expect(&with("version", "2"), &["version"]);
    msg_contains(&e, 0, "unsupported version 2");
}

#[test]
fn name_syntax() {
    for ok in ["a", "web-to-ids", "0_x", &"a".repeat(63)] {
        expect(&with("name", &format!("{ok:?}")), &[]);
    }
    for bad in ["Web", "-web", "web.ids", "web ids", "\"\"", &"a".repeat(64)] {
        expect(&with("name", bad), &["name"]);
    }
}

#[test]
fn priority_range() {
    expect(&policy("priority: 65535\n"), &[]);
    expect(&policy("priority: 0\n"), &[]);
    let e = expect(&policy("priority: 65536\n"), &["priority"]);
    msg_contains(&e, 0, "65536 is outside 0..65535");
}

#[test]
fn taps_required_and_checked() {
    expect(&with("taps", "[]"), &["taps"]);
    expect(&with("taps", "[\"vm*-tap\", \"vnet[0-9]\", \"tap?\"]"), &[]);
    let e = expect(
        &with(
            "taps",
            "[ok, \"vm[\", \"a/b\", \"with space\", \"sixteen-chars-xx\", \"\", \"a:1\"]",
        ),
        &[
            "taps[1]", "taps[2]", "taps[3]", "taps[4]", "taps[5]", "taps[6]",
        ],
    );
    msg_contains(&e, 0, "not a valid glob");
    msg_contains(&e, 1, "'/'");
    msg_contains(&e, 3, "longer than 15 characters");
}

#[test]
fn taps_missing_is_a_validation_error() {
    let p = policy_text("version: 1\nname: p\noutputs: [{interface: mon0}]\n");
    expect(&p, &["taps"]);
}

#[test]
fn ether_type_values() {
    for ok in [
        "ipv4",
        "ipv6",
        "arp",
        "0x88cc",
        "\"0x88cc\"",
        "34958",
        "0x0600",
        "0xffff",
    ] {
        expect(&policy(&format!("match: {{ether_type: {ok}}}\n")), &[]);
    }
    for bad in [
        "0x05ff", "0x10000", "-1", "ipx", "\"0xzz\"", "0x8100", "0x88a8",
    ] {
        expect(
            &policy(&format!("match: {{ether_type: {bad}}}\n")),
            &["match.ether_type"],
        );
    }
}

#[test]
fn cidrs() {
    let p =
        policy("match: {src: [10.0.0.0/24, 10.0.0.5, fd00::/64, 10.0.0.77/24], dst: [\"::/0\"]}\n");
    expect(&p, &[]);
    assert_eq!(
        p.r#match
            .src_nets()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["10.0.0.0/24", "10.0.0.5/32", "fd00::/64", "10.0.0.0/24"]
    );
    let e = expect(
        &policy("match: {src: [10.0.0.0/24, 10.0.0.0/33, bogus], dst: [fd00::/129]}\n"),
        &["match.src[1]", "match.src[2]", "match.dst[0]"],
    );
    msg_contains(&e, 0, "prefix length 33 is out of range for IPv4 (0..32)");
    msg_contains(&e, 1, "not an IPv4/IPv6 address or CIDR");
    msg_contains(&e, 2, "out of range for IPv6 (0..128)");
    expect(&policy("match: {src: []}\n"), &["match.src"]);
}

#[test]
fn protocol_values() {
    for ok in ["tcp", "udp", "icmp", "icmpv6", "0", "255", "\"47\""] {
        expect(&policy(&format!("match: {{protocol: {ok}}}\n")), &[]);
    }
    for bad in ["256", "-1", "sctpp"] {
        expect(
            &policy(&format!("match: {{protocol: {bad}}}\n")),
            &["match.protocol"],
        );
    }
}

#[test]
fn port_values() {
    expect(
        &policy("match: {dst_ports: [0, 65535, \"1000-2000\", 1000-2000, \"53\"]}\n"),
        &[],
    );
    let e = expect(
        &policy("match: {src_ports: [2000-1000, 70000], dst_ports: [http, -1, \"1-2-3\"]}\n"),
        &[
            "match.src_ports[0]",
            "match.src_ports[1]",
            "match.dst_ports[0]",
            "match.dst_ports[1]",
            "match.dst_ports[2]",
        ],
    );
    msg_contains(&e, 0, "port range 2000-1000 is reversed");
    msg_contains(&e, 1, "port 70000 is outside 0..65535");
    expect(&policy("match: {dst_ports: []}\n"), &["match.dst_ports"]);
}

#[test]
fn ports_need_tcp_or_udp() {
    expect(&policy("match: {protocol: tcp, dst_ports: [80]}\n"), &[]);
    expect(&policy("match: {protocol: 17, src_ports: [53]}\n"), &[]);
    expect(&policy("match: {dst_ports: [80]}\n"), &[]);
    let e = expect(
        &policy("match: {protocol: icmp, src_ports: [1], dst_ports: [2]}\n"),
        &["match.src_ports", "match.dst_ports"],
    );
    msg_contains(&e, 0, "protocol is icmp");
}

#[test]
fn tcp_flags_rules() {
    let p = policy("match: {tcp_flags: [syn, \"!ack\", FIN]}\n");
    expect(&p, &[]);
    assert_eq!(p.r#match.tcp_flags(), Some((0x13, 0x03)));
    let e = expect(
        &policy("match: {tcp_flags: [syn, syn, ack, \"!ack\", bogus]}\n"),
        &[
            "match.tcp_flags[1]",
            "match.tcp_flags[3]",
            "match.tcp_flags[4]",
        ],
    );
    msg_contains(&e, 0, "already named");
    msg_contains(&e, 1, "contradicts");
    msg_contains(&e, 2, "unknown TCP flag");
    expect(&policy("match: {tcp_flags: []}\n"), &["match.tcp_flags"]);
    let e = expect(
        &policy("match: {protocol: udp, tcp_flags: [syn]}\n"),
        &["match.tcp_flags"],
    );
    msg_contains(&e, 0, "need protocol tcp");
    expect(&policy("match: {protocol: tcp, tcp_flags: [syn]}\n"), &[]);
}

#[test]
fn ether_type_that_cannot_carry_the_fields() {
    let e = expect(
        &policy("match: {ether_type: 0x88cc, src: [10.0.0.0/8], protocol: tcp}\n"),
        &["match.ether_type"],
    );
    msg_contains(&e, 0, "match.src, match.protocol");
    // ARP has addresses but no protocol/ports/flags.
    expect(
        &policy("match: {ether_type: arp, src: [10.0.0.1], dst: [10.0.0.2]}\n"),
        &[],
    );
    expect(
        &policy("match: {ether_type: arp, dst_ports: [80]}\n"),
        &["match.ether_type"],
    );
    expect(
        &policy("match: {ether_type: 0x88cc, bidirectional: true}\n"),
        &[],
    );
}

#[test]
fn ether_type_against_address_family() {
    expect(
        &policy("match: {ether_type: ipv4, src: [fd00::/64, 10.0.0.0/8]}\n"),
        &[],
    );
    let e = expect(
        &policy("match: {ether_type: ipv4, src: [fd00::/64]}\n"),
        &["match.src"],
    );
    msg_contains(&e, 0, "every src prefix is IPv6 but ether_type is ipv4");
    expect(
        &policy("match: {ether_type: ipv6, dst: [10.0.0.0/8]}\n"),
        &["match.dst"],
    );
    expect(
        &policy("match: {ether_type: arp, dst: [fd00::1]}\n"),
        &["match.dst"],
    );
    // Checked on the valid entries even when others are invalid.
    expect(
        &policy("match: {ether_type: ipv6, src: [10.0.0.0/24, bogus]}\n"),
        &["match.src[1]", "match.src"],
    );
}

#[test]
fn src_and_dst_families_must_meet() {
    let e = expect(
        &policy("match: {src: [10.0.0.0/8], dst: [fd00::/64]}\n"),
        &["match.dst"],
    );
    msg_contains(&e, 0, "no packet could match");
    expect(
        &policy("match: {src: [10.0.0.0/8, fd00::/8], dst: [fd00::/64]}\n"),
        &[],
    );
}

#[test]
fn shaping_defaults_and_unlimited() {
    // Absent, explicit defaults, and both rates 0 (= unlimited) are valid.
    expect(&policy(""), &[]);
    expect(
        &policy("sample_one_in: 1\nsnaplen: 0\nrate_limit: {pps: 0, bps: 0}\n"),
        &[],
    );
    expect(&policy("rate_limit: {}\n"), &[]);
    let p = policy("rate_limit: {pps: 0, bps: 0}\n");
    assert!(p.rate_limit.is_unlimited());
    // A sampled, rate-limited policy, by packet and by flow; either rate alone.
    expect(
        &policy("sample_one_in: 10\nsample_by: flow\nrate_limit: {pps: 1000, bps: 8000000}\n"),
        &[],
    );
    expect(&policy("sample_one_in: 2\nsample_by: packet\n"), &[]);
    expect(&policy("rate_limit: {pps: 1}\n"), &[]);
    expect(&policy("rate_limit: {bps: 1}\n"), &[]);
    expect(&policy("sample_one_in: 1000000000\n"), &[]);
    expect(
        &policy("rate_limit: {pps: 100000000, bps: 100000000000}\n"),
        &[],
    );
    // A whole number written as a float is that number.
    let p = policy("sample_one_in: 1e3\nrate_limit: {pps: 2000.0}\n");
    expect(&p, &[]);
    assert_eq!(p.sample_one_in.as_u64(), Some(1000));
    assert_eq!(p.rate_limit.pps(), 2000);
}

#[test]
fn sample_one_in_out_of_range() {
    let e = expect(&policy("sample_one_in: 0\n"), &["sample_one_in"]);
    msg_contains(&e, 0, "0 is not a valid N");
    msg_contains(&e, 0, "1 = every packet");
    let e = expect(&policy("sample_one_in: -5\n"), &["sample_one_in"]);
    msg_contains(&e, 0, "-5 is negative");
    let e = expect(&policy("sample_one_in: 2.5\n"), &["sample_one_in"]);
    msg_contains(&e, 0, "2.5 is not a whole number");
    let e = expect(&policy("sample_one_in: 1000000001\n"), &["sample_one_in"]);
    msg_contains(&e, 0, "at most 1-in-1000000000");
    let e = expect(&policy("sample_one_in: 1e12\n"), &["sample_one_in"]);
    msg_contains(&e, 0, "more than this build samples");
    // Beyond 64 bits the YAML reader itself gives up: still an error that
    // names the field and its line.
    let text = format!("{BASE}sample_one_in: 99999999999999999999999\n");
    let le = parse_str(&text, "t").expect_err("u128").to_string();
    assert!(le.contains("t:5:") && le.contains("sample_one_in"), "{le}");
    let e = expect(&policy("sample_one_in: .inf\n"), &["sample_one_in"]);
    msg_contains(&e, 0, "not a whole number");
}

#[test]
fn rate_limit_out_of_range() {
    let e = expect(&policy("rate_limit: {pps: 0.5}\n"), &["rate_limit.pps"]);
    msg_contains(&e, 0, "a rate below 1 packet per second cannot be set");
    let e = expect(&policy("rate_limit: {bps: 0.25}\n"), &["rate_limit.bps"]);
    msg_contains(&e, 0, "a rate below 1 bit per second cannot be set");
    let e = expect(&policy("rate_limit: {pps: -1}\n"), &["rate_limit.pps"]);
    msg_contains(&e, 0, "-1 is negative");
    msg_contains(&e, 0, "or 0 for no limit");
    let e = expect(&policy("rate_limit: {bps: -0.5}\n"), &["rate_limit.bps"]);
    msg_contains(&e, 0, "-0.5 is negative");
    let e = expect(&policy("rate_limit: {pps: 1500.5}\n"), &["rate_limit.pps"]);
    msg_contains(&e, 0, "1500.5 is not a whole number");
    let e = expect(
        &policy("rate_limit: {pps: 100000001, bps: 100000000001}\n"),
        &["rate_limit.pps", "rate_limit.bps"],
    );
    msg_contains(&e, 0, "from 1 to 100000000");
    msg_contains(&e, 1, "from 1 to 100000000000");
    // Every shaping error at once, each with its field.
    let e = expect(
        &policy("sample_one_in: 0\nsnaplen: 128\nrate_limit: {pps: -3, bps: 0.1}\n"),
        &[
            "sample_one_in",
            "snaplen",
            "rate_limit.pps",
            "rate_limit.bps",
        ],
    );
    msg_contains(&e, 1, "applies to pcap outputs only in this build");
}

#[test]
fn shaping_field_types() {
    // Not numbers at all, and unknown values: errors with the field path
    // (from the loader, with line and column).
    for (yaml, field) in [
        ("sample_one_in: ten\n", "sample_one_in"),
        ("sample_by: host\n", "sample_by"),
        ("rate_limit: {pps: \"1000\"}\n", "rate_limit.pps"),
        ("rate_limit: {pps: 1, burst: 2}\n", "rate_limit.burst"),
        ("rate_limit: 1000\n", "rate_limit"),
    ] {
        let text = format!("{BASE}{yaml}");
        let e = parse_str(&text, "t").expect_err(yaml);
        assert_eq!(e.problems[0].field.as_deref(), Some(field), "{yaml}: {e}");
    }
}

#[test]
fn shaping_round_trips_and_default_sample_by_is_not_written() {
    let p = policy("sample_one_in: 10\nsample_by: flow\nrate_limit: {pps: 1000, bps: 8000000}\n");
    let y = serde_yaml::to_string(&p).unwrap();
    assert!(y.contains("sample_by: flow"), "{y}");
    assert!(y.contains("pps: 1000"), "{y}");
    assert_eq!(parse_str(&y, "t").unwrap().remove(0), p);
    let j = serde_json::to_string(&p).unwrap();
    assert!(j.contains("\"sample_one_in\":10"), "{j}");
    assert_eq!(serde_json::from_str::<Policy>(&j).unwrap(), p);
    let plain = serde_json::to_string(&policy("")).unwrap();
    assert!(!plain.contains("sample_by"), "{plain}");
    assert!(plain.contains("\"sample_one_in\":1"), "{plain}");
}

#[test]
fn outputs_count() {
    expect(&with("outputs", "[]"), &["outputs"]);
    let eight: Vec<String> = (1..=8)
        .map(|v| format!("{{interface: mon0, vlan: {v}}}"))
        .collect();
    expect(&with("outputs", &format!("[{}]", eight.join(", "))), &[]);
    let nine: Vec<String> = (1..=9)
        .map(|v| format!("{{interface: mon0, vlan: {v}}}"))
        .collect();
    let e = expect(
        &with("outputs", &format!("[{}]", nine.join(", "))),
        &["outputs"],
    );
    msg_contains(&e, 0, "at most 8");
}

#[test]
fn output_interface_and_vlan() {
    let e = expect(
        &with(
            "outputs",
            "[{interface: \"\"}, {interface: sixteen-chars-xx}, {interface: \"a/b\"}, {interface: \"mon*\"}, {interface: mon0, vlan: 5000}, {interface: mon0, vlan: 0}, {interface: mon1, vlan: 4094}]",
        ),
        &[
            "outputs[0].interface",
            "outputs[1].interface",
            "outputs[2].interface",
            "outputs[3].interface",
            "outputs[4].vlan",
            "outputs[5].vlan",
        ],
    );
    assert_eq!(
        e[4].to_string(),
        "outputs[4].vlan: VLAN 5000 is outside 1..4094"
    );
}

#[test]
fn duplicate_outputs() {
    let e = expect(
        &with(
            "outputs",
            "[{interface: mon0, vlan: 100}, {interface: mon0}, {interface: mon0, vlan: 100}]",
        ),
        &["outputs[2]"],
    );
    msg_contains(&e, 0, "duplicate of outputs[0]");
}

#[test]
fn pcap_outputs_and_snaplen() {
    // Interface and pcap outputs together, whole packets: valid.
    let p = with("outputs", "[{interface: mon0}, {pcap: web}]");
    assert_eq!(p.outputs[1], Output::Pcap { pcap: "web".into() });
    expect(&p, &[]);
    // A snaplen needs pcap outputs only (copies to interfaces are whole).
    let mut p = with("outputs", "[{pcap: web}]");
    p.snaplen = 128;
    expect(&p, &[]);
    p.snaplen = 13;
    let e = expect(&p, &["snaplen"]);
    msg_contains(&e, 0, "outside 14..9216");
    p.snaplen = 9217;
    expect(&p, &["snaplen"]);
    let mut p = with("outputs", "[{interface: mon0}, {pcap: web}]");
    p.snaplen = 64;
    let e = expect(&p, &["snaplen"]);
    msg_contains(&e, 0, "applies to pcap outputs only");
    // Hostile capture names and duplicates.
    let long = "x".repeat(65);
    for bad in ["../x", "/abs", "a/b", "", ".", "..", "-x", long.as_str()] {
        let p = with("outputs", &format!("[{{pcap: {bad:?}}}]"));
        let e = expect(&p, &["outputs[0].pcap"]);
        assert!(!e[0].message.is_empty());
    }
    let e = expect(
        &with("outputs", "[{pcap: web}, {pcap: web}]"),
        &["outputs[1]"],
    );
    msg_contains(&e, 0, "duplicate of outputs[0] (capture web)");
}

#[test]
fn all_errors_at_once() {
    let p = policy_text(
        "version: 1\nname: p\ntaps: [vm1-tap]\nmatch: {src: [10.0.0.0/33], dst_ports: [2000-1000]}\noutputs: [{interface: mon0, vlan: 5000}]\n",
    );
    let e = expect(
        &p,
        &["match.src[0]", "match.dst_ports[0]", "outputs[0].vlan"],
    );
    msg_contains(&e, 1, "port range 2000-1000 is reversed");
    let p = policy_text(
        "version: 3\nname: Bad\npriority: 70000\ntaps: []\nmatch: {protocol: 300, tcp_flags: [nope]}\nsample_one_in: 0\noutputs: []\n",
    );
    expect(
        &p,
        &[
            "version",
            "name",
            "priority",
            "taps",
            "match.protocol",
            "match.tcp_flags[0]",
            "sample_one_in",
            "outputs",
        ],
    );
}

// --- set rules ---------------------------------------------------------------

fn named(name: &str, taps: &str, outputs: &str) -> Policy {
    policy_text(&format!(
        "version: 1\nname: {name}\ntaps: {taps}\noutputs: {outputs}\n"
    ))
}

#[test]
fn set_prefixes_policy_errors() {
    let mut b = named("b", "[vm1-tap]", "[{interface: mon0, vlan: 5000}]");
    b.priority = 1;
    let errs = validate_set(&[named("a", "[vm1-tap]", "[{interface: mon0}]"), b]);
    assert_eq!(fields(&errs), ["policies[b].outputs[0].vlan"]);
}

#[test]
fn set_duplicate_names() {
    let errs = validate_set(&[
        named("a", "[vm1-tap]", "[{interface: mon0}]"),
        named("b", "[vm1-tap]", "[{interface: mon0}]"),
        named("a", "[vm2-tap]", "[{interface: mon0}]"),
    ]);
    assert_eq!(fields(&errs), ["policies[a].name"]);
    msg_contains(&errs, 0, "used more than once");
}

#[test]
fn set_too_many_policies() {
    let ps: Vec<Policy> = (0..257)
        .map(|i| named(&format!("p{i}"), "[vm1-tap]", "[{interface: mon0}]"))
        .collect();
    let errs = validate_set(&ps);
    assert_eq!(fields(&errs), ["policies"]);
    msg_contains(&errs, 0, "257 policies, at most 256");
    assert!(validate_set(&ps[..256]).is_empty());
}

#[test]
fn set_too_many_outputs() {
    let ps: Vec<Policy> = (0..9)
        .map(|i| {
            let outs: Vec<String> = (1..=8)
                .map(|v| format!("{{interface: mon{i}, vlan: {v}}}"))
                .collect();
            named(
                &format!("p{i}"),
                "[vm1-tap]",
                &format!("[{}]", outs.join(", ")),
            )
        })
        .collect();
    assert!(validate_set(&ps[..8]).is_empty());
    let errs = validate_set(&ps);
    assert_eq!(fields(&errs), ["policies"]);
    msg_contains(&errs, 0, "72 distinct outputs");
}

#[test]
fn set_mirror_loop() {
    let errs = validate_set(&[
        named("a", "[vm1-tap]", "[{interface: mon0, vlan: 100}]"),
        named("b", "[vm2-tap, \"mon*\"]", "[{interface: mon1}]"),
    ]);
    assert_eq!(
        errs.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        [
            "policies[a].outputs[0].interface: mon0 is also tapped by policies[b].taps[1] (\"mon*\"): that would mirror copies of copies",
            "policies[b].outputs[0].interface: mon1 is also tapped by policies[b].taps[1] (\"mon*\"): that would mirror copies of copies",
        ]
    );
}

#[test]
fn vxlan_outputs() {
    use vtap_core::policy::compile::OutputKey;
    let p = with(
        "outputs",
        "[{vxlan: {remote: 192.0.2.7, vni: 42}, vlan: 60}, {vxlan: {remote: \"2001:db8::7\", vni: 16777215}}]",
    );
    expect(&p, &[]);
    assert_eq!(
        p.outputs[0].key().unwrap(),
        OutputKey::vxlan("192.0.2.7".parse().unwrap(), 42, 60)
    );
    assert_eq!(
        p.outputs[0].key().unwrap().to_string(),
        "vxlan:192.0.2.7/42.60"
    );
    // VNI is 24 bits; the remote is one unicast VTEP; VLAN 1..4094.
    let e = expect(
        &with("outputs", "[{vxlan: {remote: 192.0.2.7, vni: 16777216}}]"),
        &["outputs[0].vxlan.vni"],
    );
    msg_contains(&e, 0, "24 bits");
    for bad in [
        "0.0.0.0",
        "239.1.2.3",
        "255.255.255.255",
        "\"ff02::1\"",
        "\"::\"",
    ] {
        let e = expect(
            &with(
                "outputs",
                &format!("[{{vxlan: {{remote: {bad}, vni: 1}}}}]"),
            ),
            &["outputs[0].vxlan.remote"],
        );
        msg_contains(&e, 0, "unicast");
    }
    expect(
        &with(
            "outputs",
            "[{vxlan: {remote: 192.0.2.7, vni: 1}, vlan: 4095}]",
        ),
        &["outputs[0].vlan"],
    );
    // The same remote, VNI and VLAN twice: one copy per output.
    let e = expect(
        &with(
            "outputs",
            "[{vxlan: {remote: 192.0.2.7, vni: 1}}, {vxlan: {remote: 192.0.2.7, vni: 1}}]",
        ),
        &["outputs[1]"],
    );
    msg_contains(&e, 0, "duplicate of outputs[0]");
    // vtap's own device is not an interface output.
    let e = expect(
        &with("outputs", "[{interface: vtap-vxlan}]"),
        &["outputs[0].interface"],
    );
    msg_contains(&e, 0, "vxlan:");
    // Unknown keys, a missing VNI and mixed kinds are parse errors.
    for bad in [
        "[{vxlan: {remote: 192.0.2.7, vni: 1, port: 1}}]",
        "[{vxlan: {remote: 192.0.2.7}}]",
        "[{vxlan: {remote: 192.0.2.7, vni: 1}, interface: mon0}]",
        "[{vxlan: {remote: not-an-ip, vni: 1}}]",
    ] {
        let text = format!("version: 1\nname: p\ntaps: [vm1-tap]\noutputs: {bad}\n");
        assert!(parse_str(&text, "t.yaml").is_err(), "{bad} parsed");
    }
}
