//! Golden tests of the compiler: small policy sets compiled and rendered as
//! readable JSON (`CompiledSet::summary`: used fields, wildcards, LPM entries,
//! port/protocol ranges, TCP flag groups), compared with
//! `tests/golden/*.json`. Run with `UPDATE_GOLDEN=1` to rewrite them after an
//! intended change, and review the diff.

use std::path::{Path, PathBuf};

use vtap_core::policy::compile::{Assignment, compile};
use vtap_core::policy::load::{load_and_validate, parse_str};
use vtap_core::policy::{Policy, validate_set};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check(name: &str, policies: &[Policy]) {
    let errs = validate_set(policies);
    assert!(errs.is_empty(), "{errs:?}");
    let a = Assignment::assign(policies, &Assignment::default()).unwrap();
    let c = compile(policies, &a).unwrap();
    let got = serde_json::to_string_pretty(&c.summary()).unwrap() + "\n";
    let path = golden_dir().join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if got != want {
        let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
        let first = (0..g.len().max(w.len()))
            .find(|i| g.get(*i) != w.get(*i))
            .unwrap_or(0);
        panic!(
            "{} differs from the compiled set at line {} (UPDATE_GOLDEN=1 rewrites it):\n  golden:   {}\n  compiled: {}\n--- compiled\n{got}",
            path.display(),
            first + 1,
            w.get(first).unwrap_or(&"<end>"),
            g.get(first).unwrap_or(&"<end>"),
        );
    }
}

fn yaml(text: &str) -> Vec<Policy> {
    parse_str(text, "golden").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn lpm_nested_prefixes() {
    check(
        "lpm_nested",
        &yaml(
            r#"
version: 1
name: net8
taps: ["vm*-tap"]
match: {src: [10.0.0.0/8, "fd00::/16"]}
outputs: [{interface: mon0, vlan: 100}]
---
version: 1
name: net24
taps: ["vm*-tap"]
match: {src: [10.0.0.0/24], dst: [10.0.0.2, 192.168.0.0/16]}
outputs: [{interface: mon0, vlan: 200}]
---
version: 1
name: host-bidir
taps: [vm1-tap]
direction: ingress
match: {src: [10.0.0.1/32, "fd00::1"], dst: ["fd00::/64", 10.0.0.0/25], bidirectional: true}
outputs: [{interface: mon0, vlan: 300}]
---
version: 1
name: anything
taps: [vm2-tap]
direction: egress
outputs: [{interface: mon0, vlan: 100}]
"#,
        ),
    );
}

#[test]
fn ports_protocols_flags() {
    check(
        "ports_proto_flags",
        &yaml(
            r#"
version: 1
name: web
taps: ["vm*-tap"]
match: {protocol: tcp, dst_ports: [80, 443, "8000-8080"]}
outputs: [{interface: mon0, vlan: 100}]
---
version: 1
name: high-ports
taps: ["vm*-tap"]
match: {src_ports: ["1024-65535"], dst_ports: ["1000-2000"]}
outputs: [{interface: mon0, vlan: 100}]
---
version: 1
name: dns
taps: ["vm*-tap"]
match: {protocol: udp, dst_ports: [53]}
outputs: [{interface: mon0, vlan: 200}]
---
version: 1
name: syn-only
taps: ["vm*-tap"]
match: {tcp_flags: [syn, "!ack"]}
outputs: [{interface: mon0, vlan: 300}]
---
version: 1
name: gre
taps: ["vm*-tap"]
match: {protocol: 47}
outputs: [{interface: mon0, vlan: 400}]
"#,
        ),
    );
}

#[test]
fn ether_types_and_disabled() {
    check(
        "ether_types_disabled",
        &yaml(
            r#"
version: 1
name: arp
taps: ["vm*-tap"]
match: {ether_type: arp, dst: [10.0.0.1]}
outputs: [{interface: mon0, vlan: 100}, {interface: mon1}]
---
version: 1
name: lldp
taps: ["vm*-tap"]
direction: ingress
match: {ether_type: 0x88cc}
outputs: [{interface: mon1}]
---
version: 1
name: v6
taps: ["vm*-tap"]
match: {ether_type: ipv6, protocol: icmpv6}
outputs: [{interface: mon0, vlan: 200}]
---
version: 1
name: off
enabled: false
taps: ["vm*-tap"]
match: {ether_type: ipv4, src: [172.16.0.0/12], protocol: tcp, src_ports: [9], tcp_flags: [fin]}
outputs: [{interface: mon2, vlan: 4094}]
"#,
        ),
    );
}

#[test]
fn example_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mirror-policies");
    check(
        "examples",
        &load_and_validate(&dir).unwrap_or_else(|e| panic!("{e}")),
    );
}
