//! Loading files and directories: every problem reported with its file, line
//! and field; no panic on any input.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vtap_core::policy::load::{ProblemKind, load_and_validate, load_path, parse_str};

const GOOD: &str =
    "version: 1\nname: a\ntaps: [vm1-tap]\noutputs: [{interface: mon0, vlan: 100}]\n";

/// A fresh scratch directory under the target dir (no tempfile crate).
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("policy_load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn directory_in_name_order_ignoring_others() {
    let d = scratch("order");
    std::fs::write(d.join("b.yaml"), GOOD.replace("name: a", "name: b")).unwrap();
    std::fs::write(d.join("a.yml"), GOOD).unwrap();
    std::fs::write(
        d.join("c.json"),
        r#"{"version": 1, "name": "c", "taps": ["vm2-tap"], "outputs": [{"interface": "mon0"}]}"#,
    )
    .unwrap();
    std::fs::write(d.join("README.md"), "# not a policy: {{{").unwrap();
    std::fs::write(d.join("README.yaml"), "not: a policy").unwrap();
    std::fs::write(d.join(".hidden.yaml"), "garbage: [").unwrap();
    std::fs::write(d.join("notes.txt"), "garbage: [").unwrap();
    std::fs::create_dir(d.join("sub.yaml")).unwrap();
    std::fs::write(d.join("sub.yaml/x.yaml"), "garbage: [").unwrap();
    let ps = load_and_validate(&d).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
}

#[test]
fn every_problem_of_every_file() {
    let d = scratch("problems");
    // Parse errors in two files, validation errors in a third, a duplicate
    // name across files, and a mirror loop.
    std::fs::write(
        d.join("1-typo.yaml"),
        format!("{GOOD}match:\n  colour: red\n"),
    )
    .unwrap();
    std::fs::write(d.join("2-syntax.yaml"), "version: [1\n").unwrap();
    std::fs::write(
        d.join("3-bad.yaml"),
        "version: 1\nname: bad\ntaps: [vm1-tap]\nmatch: {src: [10.0.0.0/33], dst_ports: [2000-1000]}\noutputs: [{interface: mon0, vlan: 5000}]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("4-dup.yaml"),
        format!(
            "{}---\n{}",
            GOOD.replace("name: a", "name: dup"),
            GOOD.replace("name: a", "name: dup")
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("5-loop.yaml"),
        GOOD.replace("name: a", "name: loop")
            .replace("[vm1-tap]", "[\"mon*\"]"),
    )
    .unwrap();
    let e = load_and_validate(&d).unwrap_err();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let f = |n: &str| d.join(n).display().to_string();
    assert_eq!(e.problems.len(), lines.len());
    let expect = [
        format!(
            "{}:6:3: match.colour: unknown field `colour`",
            f("1-typo.yaml")
        ),
        format!(
            "{}:2:1: did not find expected ',' or ']'",
            f("2-syntax.yaml")
        ),
        format!(
            "{}: policies[bad].match.src[0]: \"10.0.0.0/33\": prefix length 33 is out of range for IPv4 (0..32)",
            f("3-bad.yaml")
        ),
        format!(
            "{}: policies[bad].match.dst_ports[0]: port range 2000-1000 is reversed",
            f("3-bad.yaml")
        ),
        format!(
            "{}: policies[bad].outputs[0].vlan: VLAN 5000 is outside 1..4094",
            f("3-bad.yaml")
        ),
        format!(
            "{}: policies[dup].name: policy name \"dup\" is used more than once",
            f("4-dup.yaml")
        ),
        format!(
            "{}: policies[bad].outputs[0].interface: mon0 is also tapped by policies[loop].taps[0] (\"mon*\")",
            f("3-bad.yaml")
        ),
        format!(
            "{}: policies[dup].outputs[0].interface: mon0 is also tapped",
            f("4-dup.yaml")
        ),
        format!(
            "{}: policies[dup].outputs[0].interface: mon0 is also tapped",
            f("4-dup.yaml")
        ),
        format!(
            "{}: policies[loop].outputs[0].interface: mon0 is also tapped",
            f("5-loop.yaml")
        ),
    ];
    assert_eq!(lines.len(), expect.len(), "{text}");
    for (l, want) in lines.iter().zip(&expect) {
        assert!(
            l.starts_with(want.as_str()),
            "{l:?}\ndoes not start with\n{want:?}\n\n{text}"
        );
    }
    assert_eq!(e.problems[0].kind, ProblemKind::Parse);
    assert_eq!(e.problems[2].kind, ProblemKind::Invalid);
    assert_eq!(
        e.problems[2].field.as_deref(),
        Some("policies[bad].match.src[0]")
    );
    // REST details.
    let details = e.field_errors();
    assert_eq!(details[0].field, "match.colour");
    assert!(details[0].message.contains("1-typo.yaml:6:3"));
}

#[test]
fn io_errors_name_the_file() {
    let d = scratch("io");
    let missing = d.join("nope.yaml");
    let e = load_path(&missing).unwrap_err();
    assert_eq!(e.problems[0].kind, ProblemKind::Io);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read:", missing.display())),
        "{e}"
    );
    std::fs::write(d.join("bin.yaml"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let e = load_path(&d).unwrap_err();
    assert!(e.to_string().contains("bin.yaml: cannot read"), "{e}");
}

#[test]
fn wrong_types_name_their_field() {
    for (text, field) in [
        ("version: one\nname: a\n", "version"),
        ("version: 1\nname: a\ntaps: vm1-tap\noutputs: []\n", "taps"),
        (
            "version: 1\nname: a\ntaps: [t]\ndirection: sideways\noutputs: []\n",
            "direction",
        ),
        (
            "version: 1\nname: a\ntaps: [t]\nmatch: {src_ports: [[1]]}\noutputs: []\n",
            "match.src_ports[0]",
        ),
        (
            "version: 1\nname: a\ntaps: [t]\nmatch: {ether_type: [1]}\noutputs: []\n",
            "match.ether_type",
        ),
        (
            "version: 1\nname: a\ntaps: [t]\noutputs: [{interface: m, pcap: x}]\n",
            "outputs[0]",
        ),
        (
            "version: 1\nname: a\ntaps: [t]\noutputs: [{interface: m, vlan: -1}]\n",
            "outputs[0].vlan",
        ),
        (
            "version: 1\nname: a\ntaps: [t]\nrate_limit: {pps: 1, burst: 2}\noutputs: []\n",
            "rate_limit.burst",
        ),
    ] {
        let e = parse_str(text, "t").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].field.as_deref(), Some(field), "{e}");
        assert!(e.problems[0].line.is_some(), "{e}");
    }
    let e = parse_str("name: a\n", "t").unwrap_err();
    assert!(e.to_string().contains("missing field `version`"), "{e}");
    let e = parse_str("just a string\n", "t").unwrap_err();
    assert!(e.to_string().contains("expected a policy"), "{e}");
}

fn no_panic(text: &str) {
    let r = std::panic::catch_unwind(|| {
        if let Ok(ps) = parse_str(text, "fuzz") {
            let _ = vtap_core::policy::validate_set(&ps);
        }
    });
    assert!(r.is_ok(), "panic on {text:?}");
}

/// `VTAP_FUZZ_ITERS` scales the random part (default 1).
#[test]
fn garbage_never_panics() {
    let scale: usize = std::env::var("VTAP_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rng = StdRng::seed_from_u64(1234 + scale as u64);
    // Hand-picked nasties.
    for t in [
        "",
        "---",
        "--- ---",
        "\0",
        "{",
        "[[[[[[[[",
        &"[".repeat(10_000),
        &"- ".repeat(5_000),
        "a: &a [*a]",
        "a: *nope",
        "a: &x [1]\nb: [*x, *x, *x]",
        "version: 99999999999999999999999",
        "version: 1\nname: a\ntaps: [\"\\u0000\"]\noutputs: [{interface: \"\\u0000\"}]\n",
        "version: 1\nname: a\ntaps: [t]\nmatch: {src: [\"::ffff:1.2.3.4/200\"], src_ports: [\"-\", \"65536-65537\", \"0x10-0x20\"], ether_type: \"0x\"}\noutputs: [{interface: m}]",
        "version: 1\nname: a\ntaps: [t]\nmatch: {tcp_flags: [\"!\", \"!!syn\", \"\"], protocol: \"\"}\noutputs: [{interface: m}]",
        "!!binary aGVsbG8=",
        "? [a]\n: b",
        "version: !!str 1",
        "<<: {version: 1}",
        "\u{feff}version: 1",
    ] {
        no_panic(t);
    }
    // Random bytes as text.
    for _ in 0..2000 * scale {
        let n = rng.gen_range(0..200);
        let bytes: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
        no_panic(&String::from_utf8_lossy(&bytes));
    }
    // Random edits of a full valid policy.
    let full = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mirror-policies/20-web-bidir.yaml"),
    )
    .unwrap();
    let alphabet: Vec<char> = " :-[]{}\"'\n#!&*,0123456789abc/.|>?%@`\t".chars().collect();
    let two = format!(
        "{full}---\n{full}---\n{}",
        full.replace("name: web-bidir", "name: other")
    );
    for i in 0..6000 * scale {
        let src = if i % 2 == 0 { &full } else { &two };
        let mut chars: Vec<char> = src.chars().collect();
        for _ in 0..rng.gen_range(1..6) {
            let i = rng.gen_range(0..=chars.len());
            match rng.gen_range(0..3) {
                0 if i < chars.len() => {
                    chars.remove(i);
                }
                1 if i < chars.len() => chars[i] = alphabet[rng.gen_range(0..alphabet.len())],
                _ => chars.insert(i, alphabet[rng.gen_range(0..alphabet.len())]),
            }
        }
        no_panic(&chars.into_iter().collect::<String>());
    }
}
