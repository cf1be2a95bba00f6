//! The probe extraction layer (`vtap_core::probes`): BTF decoding of every
//! type kind into exact JSON, label formatting, per-CPU aggregation, map
//! definitions, malformed BTF, and — as root, with real kernel maps created
//! from `ebpf/probes/test_layouts.c` — whole-map reads of every supported
//! map type with batch syscalls and the iterative fallback, resets, and the
//! time to read and decode 10k struct entries.
//!
//! The tests build their bytes for a little-endian host (x86_64).

mod common;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vtap_core::datapath::sys;
use vtap_core::probes::MapLayout;
use vtap_core::probes::batch::{self, BatchError, MapType, Method};
use vtap_core::probes::btf::{Aggregation, Btf, BtfError, LabelFormat, Layout};

// ------------------------------------------------------------ the object

/// Compiles `ebpf/probes/test_layouts.c` once per test binary run.
fn object() -> &'static [u8] {
    static OBJ: OnceLock<Vec<u8>> = OnceLock::new();
    OBJ.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("probes-extract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("test_layouts.o");
        let clang = std::env::var("VTAP_CLANG").unwrap_or_else(|_| "clang-19".into());
        let st = std::process::Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-I"])
            .arg(root.join("ebpf/include"))
            .args(["-I", "/usr/include/x86_64-linux-gnu", "-c"])
            .arg(root.join("ebpf/probes/test_layouts.c"))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("running {clang}: {e}"));
        assert!(st.success(), "{clang} failed on test_layouts.c");
        let bytes = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

fn btf() -> &'static Btf {
    static BTF: OnceLock<Btf> = OnceLock::new();
    BTF.get_or_init(|| Btf::from_elf(object()).expect("BTF of test_layouts.o"))
}

fn layout(map: &str) -> MapLayout {
    MapLayout::new(btf(), map).unwrap_or_else(|e| panic!("layout of {map}: {e}"))
}

fn fd<'a>(ebpf: &'a aya::Ebpf, name: &str) -> BorrowedFd<'a> {
    use aya::maps::Map;
    match ebpf.map(name).unwrap_or_else(|| panic!("map {name}")) {
        Map::HashMap(d)
        | Map::Array(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::Queue(d)
        | Map::Stack(d)
        | Map::LpmTrie(d) => d.fd().as_fd(),
        other => panic!("unexpected map kind {other:?}"),
    }
}

fn load() -> aya::Ebpf {
    aya::Ebpf::load(object()).expect("aya loads test_layouts.o (creates its maps)")
}

fn ncpus() -> usize {
    batch::possible_cpus().unwrap()
}

// ------------------------------------------------------- value builders

/// Sets `bits` bits at bit offset `off` (little-endian bitfield order).
fn put_bits(buf: &mut [u8], off: usize, bits: usize, value: u64) {
    for i in 0..bits {
        let bit = (value >> i) & 1;
        let at = off + i;
        buf[at / 8] = (buf[at / 8] & !(1 << (at % 8))) | ((bit as u8) << (at % 8));
    }
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A `struct flow_key` (network byte order) and its JSON.
fn flow_key(i: u32) -> (Vec<u8>, Value) {
    let mut b = vec![0u8; 16];
    let saddr = [10, 0, (i >> 8) as u8, i as u8];
    let daddr = [192, 168, 1, 2];
    let sport = 1024 + (i % 60000) as u16;
    let proto = if i.is_multiple_of(2) { 6 } else { 17 };
    put(&mut b, 0, &saddr);
    put(&mut b, 4, &daddr);
    put(&mut b, 8, &sport.to_be_bytes());
    put(&mut b, 10, &443u16.to_be_bytes());
    b[12] = proto;
    let v = json!({
        "saddr": u32::from_be_bytes(saddr),
        "daddr": u32::from_be_bytes(daddr),
        "sport": sport,
        "dport": 443,
        "proto": proto,
        "_pad": [0, 0, 0],
    });
    (b, v)
}

/// A `struct nasty` (208 bytes) whose fields depend on `i`, and its JSON.
fn nasty(i: u32) -> (Vec<u8>, Value) {
    let mut b = vec![0u8; 208];
    let n = i as i64;
    // struct inner in: a @0, b @2, union u @4, anonymous union @8
    b[0] = 200 + i as u8;
    put(&mut b, 2, &(-12345 + i as i16).to_ne_bytes());
    put(&mut b, 4, &[1, 2, 3, 4 + i as u8]);
    put(&mut b, 8, &(-123i8 as u8 as u16 | 0xff00).to_ne_bytes());
    let colors = [
        (0u32, json!("RED")),
        (1, json!("GREEN")),
        (7, json!("BLUE")),
        (3, json!(3)),
    ];
    let (color, color_j) = colors[i as usize % 4].clone();
    put(&mut b, 12, &color.to_ne_bytes());
    let tinies = [
        (1u8, json!("TINY_A")),
        (200, json!("TINY_B")),
        (5, json!(5)),
    ];
    let (tiny, tiny_j) = tinies[i as usize % 3].clone();
    b[16] = tiny;
    let signs = [
        (-5i32, json!("SIGN_MINUS")),
        (0, json!("SIGN_ZERO")),
        (3, json!("SIGN_PLUS")),
        (-2, json!(-2)),
    ];
    let (sign, sign_j) = signs[i as usize % 4].clone();
    put(&mut b, 20, &sign.to_ne_bytes());
    let wides = [
        (0x1_2345_6789u64, json!("WIDE_HUGE")),
        (1, json!("WIDE_SMALL")),
        (2, json!(2)),
    ];
    let (wide, wide_j) = wides[i as usize % 3].clone();
    put(&mut b, 24, &wide.to_ne_bytes());
    // Bitfields: f1:3 f2:5 f3:24 from bit 256; big_bf:40 cbf:4 sbf:12 from bit 320.
    let f1 = (5 + i as u64) % 8;
    let f2 = -((i % 16) as i64); // -15..0 in a signed 5-bit field
    let f3 = 0xAB_CDEF - i as u64;
    let big = 0xFF_1234_5678 + i as u64;
    let (cbf, cbf_j) = if i.is_multiple_of(2) {
        (7, json!("BLUE"))
    } else {
        (2, json!(2))
    };
    let sbf = -1000 + n;
    put_bits(&mut b, 256, 3, f1);
    put_bits(&mut b, 259, 5, f2 as u64 & 0x1f);
    put_bits(&mut b, 264, 24, f3);
    put_bits(&mut b, 320, 40, big);
    put_bits(&mut b, 360, 4, cbf);
    put_bits(&mut b, 364, 12, sbf as u64 & 0xfff);
    b[47] = (i.is_multiple_of(2)) as u8;
    let name = format!("probe-{i}");
    put(&mut b, 48, name.as_bytes());
    let (raw, raw_j) = if i.is_multiple_of(2) {
        ([0x41u8, 0x07, 0, 0x42], json!([65, 7, 0, 66]))
    } else {
        (*b"ABCD", json!([65, 66, 67, 68]))
    };
    put(&mut b, 64, &raw);
    put(&mut b, 68, &[2, 0, 0, 0, 0, i as u8]);
    b[74] = 255 - i as u8;
    put(&mut b, 76, &(-2 - i as i16).to_ne_bytes());
    put(&mut b, 80, &(4_000_000_000u32 + i).to_ne_bytes());
    put(
        &mut b,
        88,
        &(-9_000_000_000_000_000_000i64 + n).to_ne_bytes(),
    );
    let (u128v, u128_j) = if i.is_multiple_of(2) {
        let v = u128::MAX - i as u128;
        (v, json!(v.to_string()))
    } else {
        (i as u128, json!(i))
    };
    put(&mut b, 96, &u128v.to_ne_bytes());
    let (s128v, s128_j) = if i.is_multiple_of(2) {
        let v = i128::MIN + i as i128;
        (v, json!(v.to_string()))
    } else {
        (-(i as i128), json!(-n))
    };
    put(&mut b, 112, &s128v.to_ne_bytes());
    let mut pairs = Vec::new();
    for p in 0..3u32 {
        let k = p + 1 + i;
        put(&mut b, 128 + p as usize * 8, &k.to_ne_bytes());
        put(&mut b, 132 + p as usize * 8, &(-(k as i32)).to_ne_bytes());
        pairs.push(json!({"k": k, "v": -(k as i64)}));
    }
    let mut matrix = vec![vec![0u16; 3]; 2];
    for (r, row) in matrix.iter_mut().enumerate() {
        for (c, cell) in row.iter_mut().enumerate() {
            *cell = (r * 3 + c + 1) as u16 + i as u16;
            put(&mut b, 152 + (r * 3 + c) * 2, &cell.to_ne_bytes());
        }
    }
    let ip6: [u8; 16] = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16).octets();
    put(&mut b, 164, &ip6);
    put(&mut b, 180, &(42 + i).to_ne_bytes());
    let f32v = 1.5f32 + i as f32;
    let f64v = -2.25f64 * (i + 1) as f64;
    put(&mut b, 184, &f32v.to_ne_bytes());
    put(&mut b, 192, &f64v.to_ne_bytes());
    put(&mut b, 200, &(0xdead_beefu64 + i as u64).to_ne_bytes());
    let v = json!({
        "in": {
            "a": 200 + i,
            "b": -12345 + n,
            "u": {"as_u32": u32::from_ne_bytes([1, 2, 3, 4 + i as u8]), "as_bytes": [1, 2, 3, 4 + i]},
            "x": 0xff85,
            "y": -123,
        },
        "color": color_j,
        "tiny": tiny_j,
        "sign": sign_j,
        "wide": wide_j,
        "f1": f1,
        "f2": f2,
        "f3": f3,
        "big_bf": big,
        "cbf": cbf_j,
        "sbf": sbf,
        "flag": i.is_multiple_of(2),
        "name": name,
        "raw": raw_j,
        "mac": [2, 0, 0, 0, 0, i],
        "u8v": 255 - i,
        "s16v": -2 - n,
        "u32v": 4_000_000_000u32 + i,
        "s64v": -9_000_000_000_000_000_000i64 + n,
        "u128v": u128_j,
        "s128v": s128_j,
        "pairs": pairs,
        "matrix": matrix,
        "ip6": ip6.to_vec(),
        "cv": 42 + i,
        "f32v": f32v as f64,
        "f64v": f64v,
        "ptr": 0xdead_beefu64 + i as u64,
    });
    (b, v)
}

/// One CPU's `struct pc` (12 bytes) and its JSON.
fn pc(cpu: usize, i: u32) -> (Vec<u8>, Value) {
    let mut b = vec![0u8; 12];
    let packets = 10 * (cpu as u32 + 1) + i;
    let delta = (if cpu.is_multiple_of(2) { -5 } else { 7 }) * (cpu as i16 + 1);
    let tag = cpu as u8 + 1;
    let kind = ((3 + cpu * 6) % 16) as u64;
    let on = (cpu.is_multiple_of(2)) as u64;
    let (t, t_j) = if cpu.is_multiple_of(2) {
        (1u8, "TINY_A")
    } else {
        (200, "TINY_B")
    };
    put(&mut b, 0, &packets.to_ne_bytes());
    put(&mut b, 4, &delta.to_ne_bytes());
    b[6] = tag;
    put_bits(&mut b, 56, 4, kind);
    put_bits(&mut b, 60, 1, on);
    b[8] = t;
    let nm = format!("c{}", cpu % 10);
    put(&mut b, 9, nm.as_bytes());
    let v = json!({"packets": packets, "delta": delta, "tag": tag, "kind": kind, "on": on, "t": t_j, "nm": nm});
    (b, v)
}

/// A per-CPU value of `struct pc` for every possible CPU (stride 16).
fn pc_all(i: u32) -> (Vec<u8>, Vec<Value>) {
    let mut buf = vec![0u8; 16 * ncpus()];
    let mut vals = Vec::new();
    for cpu in 0..ncpus() {
        let (b, v) = pc(cpu, i);
        put(&mut buf, cpu * 16, &b);
        vals.push(v);
    }
    (buf, vals)
}

/// A `struct qv` (16 bytes) and its JSON.
fn qv(seq: u64) -> (Vec<u8>, Value) {
    let mut b = vec![0u8; 16];
    put(&mut b, 0, &seq.to_ne_bytes());
    let colors = ["RED", "GREEN", "BLUE"];
    let c = [0u32, 1, 7][seq as usize % 3];
    put(&mut b, 8, &c.to_ne_bytes());
    (b, json!({"seq": seq, "c": colors[seq as usize % 3]}))
}

/// A `struct flow_stats` (40 bytes) and its JSON.
fn flow_stats(i: u32) -> (Vec<u8>, Value) {
    let mut b = vec![0u8; 40];
    let packets = i as u64 * 3 + 1;
    let bytes = packets * 1500;
    let first = 1_000_000_000u64 + i as u64;
    let last = first + 5_000;
    put(&mut b, 0, &packets.to_ne_bytes());
    put(&mut b, 8, &bytes.to_ne_bytes());
    put(&mut b, 16, &first.to_ne_bytes());
    put(&mut b, 24, &last.to_ne_bytes());
    b[32] = (i % 64) as u8;
    b[33] = (i % 256) as u8;
    let v = json!({"packets": packets, "bytes": bytes, "first_seen": first, "last_seen": last,
                   "tcp_flags": i % 64, "tos": i % 256, "_pad": 0, "_pad2": 0});
    (b, v)
}

/// `Layout::write_json`, parsed back.
fn written(l: &Layout, bytes: &[u8]) -> Value {
    let mut out = String::new();
    l.write_json(bytes, &mut out).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn by_key(entries: Vec<Value>) -> BTreeMap<String, Value> {
    entries
        .into_iter()
        .map(|e| (e["key"].to_string(), e["value"].clone()))
        .collect()
}

// ---------------------------------------------------- pure BTF decoding

#[test]
fn map_definitions_are_found_and_agree_with_aya_obj() {
    let btf = btf();
    let maps = btf.maps().unwrap();
    let names: Vec<&str> = maps.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "t_hash",
            "t_array",
            "t_lru_hash",
            "t_percpu_array",
            "t_percpu_hash",
            "t_lru_percpu_hash",
            "t_queue",
            "t_stack",
            "t_flows",
            "t_big_array",
            "t_many",
            "t_lpm",
            "t_untyped"
        ]
    );
    let obj = aya_obj::Object::parse(object()).unwrap();
    for m in &maps {
        let aya_obj::Map::Btf(am) = &obj.maps[&m.name] else {
            panic!("{} is not a BTF map for aya-obj", m.name);
        };
        assert_eq!(
            m.key_type.unwrap_or(0),
            am.def.btf_key_type_id,
            "{} key",
            m.name
        );
        assert_eq!(
            m.value_type.unwrap_or(0),
            am.def.btf_value_type_id,
            "{} value",
            m.name
        );
        assert_eq!(
            m.map_type,
            Some(obj.maps[&m.name].map_type()),
            "{} type",
            m.name
        );
        assert_eq!(
            m.max_entries,
            Some(obj.maps[&m.name].max_entries()),
            "{}",
            m.name
        );
    }
    let h = btf.map("t_hash").unwrap();
    assert_eq!(btf.describe(h.key_type.unwrap()), "struct flow_key");
    assert_eq!(btf.describe(h.value_type.unwrap()), "struct nasty");
    assert_eq!(
        btf.describe(btf.map("t_array").unwrap().value_type.unwrap()),
        "nasty_t"
    );
    let u = btf.map("t_untyped").unwrap();
    assert_eq!((u.key_type, u.value_type), (None, None));
    assert_eq!((u.key_size, u.value_size), (Some(4), Some(6)));
    assert!(matches!(btf.map("nope"), Err(BtfError::NoSuchMap(_))));

    let l = layout("t_hash");
    assert_eq!((l.key.size(), l.value.size()), (16, 208));
    let q = layout("t_queue");
    assert_eq!((q.key.size(), q.value.size()), (0, 16));
    let u = layout("t_untyped");
    assert_eq!(
        u.value.decode(&[1, 2, 3, 4, 5, 255]).unwrap(),
        json!([1, 2, 3, 4, 5, 255])
    );
}

#[test]
fn every_type_kind_decodes_to_exact_json() {
    let l = layout("t_hash");
    // Through the typedef (nasty_t) the same plan comes out.
    let la = layout("t_array");
    for i in 0..12 {
        let (b, want) = nasty(i);
        assert_eq!(l.value.decode(&b).unwrap(), want, "nasty({i})");
        assert_eq!(written(&l.value, &b), want, "nasty({i}) as text");
        assert_eq!(la.value.decode(&b).unwrap(), want, "nasty_t({i})");
        let (k, kwant) = flow_key(i * 300);
        assert_eq!(l.key.decode(&k).unwrap(), kwant, "flow_key({i})");
        assert_eq!(written(&l.key, &k), kwant, "flow_key({i}) as text");
    }
    // Members in declaration order in the text form.
    let mut text = String::new();
    l.key.write_json(&flow_key(1).0, &mut text).unwrap();
    assert_eq!(
        text,
        r#"{"saddr":167772161,"daddr":3232235778,"sport":1025,"dport":443,"proto":17,"_pad":[0,0,0]}"#
    );
    // A value of the wrong length is an error.
    let (b, _) = nasty(0);
    assert!(l.value.write_json(&b[1..], &mut text).is_err());
    assert!(matches!(
        l.value.decode(&b[..207]),
        Err(BtfError::ShortBuffer {
            need: 208,
            got: 207
        })
    ));
    assert!(l.value.decode(&[b.clone(), vec![0]].concat()).is_err());
}

#[test]
fn char_arrays_are_strings_only_when_printable_and_terminated() {
    let l = layout("t_hash").value;
    let name = l.field("name").unwrap();
    let raw = l.field("raw").unwrap();
    let cases: &[(&[u8], Value)] = &[
        (b"eth0\0garbage\x01\x02\x03\0", json!("eth0")),
        (b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", json!("")),
        (b"exactly-15-char\0", json!("exactly-15-char")),
        (b"q\"uo\\te\0", json!("q\"uo\\te")),
        // No NUL at all: numbers, even when printable.
        (b"sixteen-chars-ab", json!(b"sixteen-chars-ab".to_vec())),
        // Non-printable before the NUL: numbers (char is signed).
        (b"ab\xffc\0\0\0\0\0\0\0\0\0\0\0\0", {
            let mut v = vec![json!(97), json!(98), json!(-1), json!(99)];
            v.extend(std::iter::repeat_n(json!(0), 12));
            Value::Array(v)
        }),
    ];
    for (bytes, want) in cases {
        let mut b = vec![0u8; 208];
        put(&mut b, 48, bytes);
        assert_eq!(name.decode(&b).unwrap(), *want, "{bytes:?}");
        assert_eq!(l.decode(&b).unwrap()["name"], *want);
        assert_eq!(written(&l, &b)["name"], *want);
    }
    // __u8 arrays are never strings.
    let mut b = vec![0u8; 208];
    put(&mut b, 68, b"abc\0\0\0");
    assert_eq!(l.decode(&b).unwrap()["mac"], json!([97, 98, 99, 0, 0, 0]));
    put(&mut b, 64, b"ok\0\0");
    assert_eq!(raw.decode(&b).unwrap(), json!("ok"));
}

#[test]
fn key_fields_format_as_labels() {
    let l = layout("t_hash");
    let (k, _) = flow_key(0x0102);
    let f = |p: &str, fmt: LabelFormat| l.key.field(p).unwrap().format(&k, fmt);
    assert_eq!(f("saddr", LabelFormat::Ipv4).unwrap(), "10.0.1.2");
    assert_eq!(f("daddr", LabelFormat::Ipv4).unwrap(), "192.168.1.2");
    assert_eq!(
        f("sport", LabelFormat::Decimal).unwrap(),
        (1024 + 0x0102).to_string()
    );
    assert_eq!(f("dport", LabelFormat::Decimal).unwrap(), "443");
    assert_eq!(f("dport", LabelFormat::Hex).unwrap(), "0x1bb");
    assert_eq!(f("proto", LabelFormat::Decimal).unwrap(), "6");
    assert_eq!(f("saddr", LabelFormat::Hex).unwrap(), "0xa000102");
    assert_eq!(f("_pad", LabelFormat::Hex).unwrap(), "0x000000");
    assert_eq!(f("_pad[1]", LabelFormat::Decimal).unwrap(), "0");

    let (v, _) = nasty(1);
    let g = |p: &str, fmt: LabelFormat| l.value.field(p).unwrap().format(&v, fmt);
    assert_eq!(g("ip6", LabelFormat::Ipv6).unwrap(), "2001:db8::1");
    assert_eq!(g("mac", LabelFormat::Mac).unwrap(), "02:00:00:00:00:01");
    assert_eq!(g("color", LabelFormat::EnumName).unwrap(), "GREEN");
    assert_eq!(g("tiny", LabelFormat::EnumName).unwrap(), "TINY_B");
    assert_eq!(g("cbf", LabelFormat::EnumName).unwrap(), "2"); // unknown value
    assert_eq!(g("color", LabelFormat::Decimal).unwrap(), "1");
    assert_eq!(g("sign", LabelFormat::EnumName).unwrap(), "SIGN_ZERO");
    assert_eq!(g("f2", LabelFormat::Decimal).unwrap(), "-1");
    assert_eq!(g("f2", LabelFormat::Hex).unwrap(), "0x1f");
    assert_eq!(g("s16v", LabelFormat::Decimal).unwrap(), "-3");
    assert_eq!(g("s16v", LabelFormat::Hex).unwrap(), "0xfffd");
    assert_eq!(g("big_bf", LabelFormat::Hex).unwrap(), "0xff12345679");
    assert_eq!(g("u128v", LabelFormat::Decimal).unwrap(), "1");
    assert_eq!(g("in.u.as_bytes[3]", LabelFormat::Decimal).unwrap(), "5");
    assert_eq!(g("in.y", LabelFormat::Decimal).unwrap(), "-123");
    assert_eq!(g("pairs[2].v", LabelFormat::Decimal).unwrap(), "-4");
    assert_eq!(g("matrix[1][2]", LabelFormat::Decimal).unwrap(), "7");
    assert_eq!(g("flag", LabelFormat::Decimal).unwrap(), "0");
    assert_eq!(g("ptr", LabelFormat::Hex).unwrap(), "0xdeadbef0");
    assert_eq!(g("in.u.as_u32", LabelFormat::Ipv4).unwrap(), "1.2.3.5");

    // Wrong formats are refused up front (check) and when formatting.
    for (path, fmt) in [
        ("saddr", LabelFormat::Ipv6),
        ("saddr", LabelFormat::Mac),
        ("saddr", LabelFormat::EnumName),
        ("_pad", LabelFormat::Decimal),
    ] {
        let field = l.key.field(path).unwrap();
        assert!(
            matches!(field.check(fmt), Err(BtfError::Format { .. })),
            "{path} {fmt}"
        );
        assert!(field.format(&k, fmt).is_err());
    }
    for (path, fmt) in [
        ("f1", LabelFormat::Ipv4),
        ("name", LabelFormat::Decimal),
        ("in", LabelFormat::Decimal),
        ("f64v", LabelFormat::Hex),
    ] {
        let field = l.value.field(path).unwrap();
        assert!(field.check(fmt).is_err(), "{path} {fmt}");
    }
    assert!(
        l.key
            .field("saddr")
            .unwrap()
            .check(LabelFormat::Ipv4)
            .is_ok()
    );
    for bad in [
        "nope", "saddr.x", "_pad[3]", "_pad[", "[0]", "saddr..x", "_pad[x]",
    ] {
        assert!(
            matches!(l.key.field(bad), Err(BtfError::NoSuchField { .. })),
            "{bad}"
        );
    }
    assert_eq!(
        "enum".parse::<LabelFormat>().unwrap(),
        LabelFormat::EnumName
    );
    assert_eq!("ipv6".parse::<LabelFormat>().unwrap(), LabelFormat::Ipv6);
    assert!("ip".parse::<LabelFormat>().is_err());
    let fmt: LabelFormat = serde_json::from_value(json!("enum_name")).unwrap();
    assert_eq!(fmt, LabelFormat::EnumName);
}

#[test]
fn per_cpu_values_decode_per_cpu_and_aggregate() {
    let l = layout("t_percpu_array").value;
    assert_eq!((l.size(), l.per_cpu_stride()), (12, 16));
    for n in [1usize, 2, 3, 8] {
        let mut buf = vec![0xAAu8; 16 * n]; // padding bytes must not matter
        let mut vals = Vec::new();
        for cpu in 0..n {
            let (b, v) = pc(cpu, 7);
            put(&mut buf, cpu * 16, &b);
            vals.push(v);
        }
        assert_eq!(l.decode_per_cpu(&buf, n).unwrap(), vals);
        let mut text = String::new();
        l.write_json_per_cpu(&buf, n, &mut text).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!(vals));
        let num = |f: &str| -> Vec<i64> { vals.iter().map(|v| v[f].as_i64().unwrap()).collect() };
        for how in [
            Aggregation::Sum,
            Aggregation::Avg,
            Aggregation::Min,
            Aggregation::Max,
        ] {
            let agg = |f: &str| -> Value {
                let xs = num(f);
                match how {
                    Aggregation::Sum => json!(xs.iter().sum::<i64>()),
                    Aggregation::Avg => json!(xs.iter().sum::<i64>() as f64 / n as f64),
                    Aggregation::Min => json!(*xs.iter().min().unwrap()),
                    Aggregation::Max => json!(*xs.iter().max().unwrap()),
                }
            };
            let want = json!({
                "packets": agg("packets"), "delta": agg("delta"), "tag": agg("tag"),
                "kind": agg("kind"), "on": agg("on"),
                // Enums and strings are not aggregated: CPU 0's.
                "t": vals[0]["t"], "nm": vals[0]["nm"],
            });
            assert_eq!(l.aggregate(&buf, n, how).unwrap(), want, "{n} CPUs, {how}");
        }
    }
    assert!(matches!(
        l.decode_per_cpu(&[0; 24], 2),
        Err(BtfError::PerCpuLength {
            got: 24,
            ncpus: 2,
            stride: 16
        })
    ));
    assert!(l.aggregate(&[], 0, Aggregation::Sum).is_err());
    // Aggregation of a whole nested struct: every integer leaf, floats too.
    let v = layout("t_hash").value;
    let (a, aj) = nasty(1);
    let (b, bj) = nasty(3);
    let mut buf = vec![0u8; 416];
    put(&mut buf, 0, &a);
    put(&mut buf, 208, &b);
    let sum = v.aggregate(&buf, 2, Aggregation::Sum).unwrap();
    let s = |p: &str| {
        aj.pointer(p).unwrap().as_i64().unwrap() + bj.pointer(p).unwrap().as_i64().unwrap()
    };
    assert_eq!(sum["u8v"], json!(s("/u8v")));
    assert_eq!(sum["pairs"][1]["v"], json!(s("/pairs/1/v")));
    assert_eq!(sum["matrix"][1][0], json!(s("/matrix/1/0")));
    assert_eq!(sum["in"]["y"], json!(-246));
    assert_eq!(sum["f2"], json!(s("/f2")));
    assert_eq!(sum["f64v"], json!(-2.25 * 2.0 + -2.25 * 4.0));
    assert_eq!(sum["color"], aj["color"]);
    assert_eq!(sum["u128v"], json!(4));
    let max = v.aggregate(&buf, 2, Aggregation::Max).unwrap();
    assert_eq!(max["s64v"], bj["s64v"]);
    assert_eq!(max["name"], aj["name"]);
    assert_eq!("avg".parse::<Aggregation>().unwrap(), Aggregation::Avg);
    assert!("mean".parse::<Aggregation>().is_err());
}

// ------------------------------------------- hand-built BTF (both encodings)

/// A minimal BTF writer for tests that clang cannot produce.
#[derive(Default)]
struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next: u32,
}

impl BtfBuilder {
    fn new() -> Self {
        BtfBuilder {
            types: Vec::new(),
            strings: vec![0],
            next: 1,
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    fn words(&mut self, w: &[u32]) -> u32 {
        for x in w {
            self.types.extend_from_slice(&x.to_ne_bytes());
        }
        self.next += 1;
        self.next - 1
    }
    fn int(&mut self, name: &str, size: u32, signed: bool, offset: u32, bits: u32) -> u32 {
        let n = self.s(name);
        self.words(&[
            n,
            1 << 24,
            size,
            (signed as u32) << 24 | offset << 16 | bits,
        ])
    }
    fn record(
        &mut self,
        name: &str,
        size: u32,
        kind_flag: bool,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let n = self.s(name);
        let mut w = vec![
            n,
            (kind_flag as u32) << 31 | 4 << 24 | members.len() as u32,
            size,
        ];
        for (mname, ty, off) in members {
            w.extend([self.s(mname), *ty, *off]);
        }
        self.words(&w)
    }
    fn typedef(&mut self, name: &str, ty: u32) -> u32 {
        let n = self.s(name);
        self.words(&[n, 8 << 24, ty])
    }
    fn array(&mut self, elem: u32, index: u32, len: u32) -> u32 {
        self.words(&[0, 3 << 24, 0, elem, index, len])
    }
    fn build(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xeb9fu16.to_ne_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strings);
        b
    }
}

#[test]
fn bitfields_decode_the_same_in_both_btf_encodings() {
    let mut bb = BtfBuilder::new();
    let u32_ = bb.int("unsigned int", 4, false, 0, 32);
    let s32 = bb.int("int", 4, true, 0, 32);
    let u64_ = bb.int("unsigned long long", 8, false, 0, 64);
    // Old encoding (kind_flag unset): the member's INT carries the bits,
    // and BTF_INT_OFFSET moves the field further.
    let bf3 = bb.int("unsigned int", 4, false, 0, 3);
    let bf5s = bb.int("int", 4, true, 0, 5);
    let bf4_at2 = bb.int("unsigned int", 4, false, 2, 4);
    let bf40 = bb.int("unsigned long long", 8, false, 0, 40);
    let old = bb.record(
        "old",
        16,
        false,
        &[
            ("a", bf3, 0),
            ("b", bf5s, 3),
            ("c", bf4_at2, 8), // bits 10..14
            ("", bf3, 14),     // unnamed padding
            ("d", u32_, 32),
            ("e", bf40, 64),
        ],
    );
    // New encoding (kind_flag set): the member carries its bit size.
    let new = bb.record(
        "new",
        16,
        true,
        &[
            ("a", u32_, 3 << 24),
            ("b", s32, 5 << 24 | 3),
            ("c", u32_, 4 << 24 | 10),
            ("", u32_, 3 << 24 | 14),
            ("d", u32_, 32),
            ("e", u64_, 40 << 24 | 64),
        ],
    );
    let btf = Btf::parse(&bb.build()).unwrap();
    let (lo, ln) = (
        Layout::new(&btf, old).unwrap(),
        Layout::new(&btf, new).unwrap(),
    );
    let mut b = vec![0u8; 16];
    put_bits(&mut b, 0, 3, 6);
    put_bits(&mut b, 3, 5, 0b10110); // -10
    put_bits(&mut b, 10, 4, 9);
    put_bits(&mut b, 14, 3, 7); // padding: never shown
    put(&mut b, 4, &0xdead_beefu32.to_ne_bytes());
    put_bits(&mut b, 64, 40, 0xAB_1234_5678);
    let want = json!({"a": 6, "b": -10, "c": 9, "d": 0xdead_beefu32, "e": 0xAB_1234_5678u64});
    assert_eq!(lo.decode(&b).unwrap(), want);
    assert_eq!(ln.decode(&b).unwrap(), want);
    for p in ["a", "b", "c", "e"] {
        assert_eq!(
            lo.field(p)
                .unwrap()
                .format(&b, LabelFormat::Decimal)
                .unwrap(),
            ln.field(p)
                .unwrap()
                .format(&b, LabelFormat::Decimal)
                .unwrap()
        );
    }
}

fn expect_err(blob: &[u8], what: &str) {
    match Btf::parse(blob) {
        Err(_) => {}
        Ok(btf) => {
            // Parses: then every layout must fail cleanly or work.
            for id in 0..btf.len() as u32 {
                let _ = Layout::new(&btf, id);
            }
            panic!("{what}: parsed");
        }
    }
}

#[test]
fn malformed_btf_is_an_error_never_a_panic() {
    let good = {
        let mut bb = BtfBuilder::new();
        let u = bb.int("unsigned int", 4, false, 0, 32);
        bb.record("s", 4, false, &[("x", u, 0)]);
        bb.build()
    };
    assert!(Btf::parse(&good).is_ok());
    expect_err(&[], "empty");
    expect_err(&good[..10], "truncated header");
    expect_err(&good[..good.len() - 3], "truncated strings");
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    expect_err(&bad_magic, "bad magic");
    let mut swapped = good.clone();
    swapped.swap(0, 1);
    expect_err(&swapped, "other byte order");
    let mut version = good.clone();
    version[2] = 2;
    expect_err(&version, "version");
    let mut type_len = good.clone();
    type_len[12..16].copy_from_slice(&1000u32.to_ne_bytes());
    expect_err(&type_len, "type section out of bounds");
    let mut name = good.clone();
    name[24..28].copy_from_slice(&999u32.to_ne_bytes());
    expect_err(&name, "string offset out of bounds");
    let mut kind = good.clone();
    kind[28..32].copy_from_slice(&(30u32 << 24).to_ne_bytes());
    expect_err(&kind, "unknown kind");
    assert!(matches!(
        Btf::from_elf(b"not an elf"),
        Err(BtfError::Elf(_))
    ));
    assert!(Btf::from_elf(&object()[..100]).is_err());

    // Structurally valid blobs whose types cannot be laid out.
    let mut bb = BtfBuilder::new();
    let u = bb.int("unsigned int", 4, false, 0, 32);
    let dangling = bb.record("dangling", 4, false, &[("x", 77, 0)]);
    let cyc = bb.typedef("cyc", 0);
    // Patch the typedef to point at itself.
    let mut blob = bb.build();
    let at = blob.len() - bb.strings.len() - 4;
    blob[at..at + 4].copy_from_slice(&cyc.to_ne_bytes());
    let outside = {
        let mut bb2 = BtfBuilder::new();
        let u = bb2.int("unsigned int", 4, false, 0, 32);
        let o = bb2.record("outside", 4, false, &[("x", u, 16)]);
        let idx = bb2.int("__ARRAY_SIZE_TYPE__", 4, false, 0, 32);
        let a1 = bb2.array(u, idx, u32::MAX);
        let huge = bb2.array(a1, idx, u32::MAX);
        let mis = bb2.record("misaligned", 8, false, &[("x", u, 3)]);
        let bfs = bb2.record("bf_of_struct", 8, true, &[("x", o, 3 << 24)]);
        let btf = Btf::parse(&bb2.build()).unwrap();
        for (id, what) in [
            (o, "outside"),
            (huge, "huge"),
            (mis, "misaligned"),
            (bfs, "bitfield of struct"),
        ] {
            assert!(Layout::new(&btf, id).is_err(), "{what}");
        }
        assert!(Layout::new(&btf, 999).is_err());
        assert!(Layout::new(&btf, 0).is_err(), "void");
        u
    };
    let _ = (u, outside);
    let btf = Btf::parse(&blob).unwrap();
    assert!(matches!(
        Layout::new(&btf, dangling),
        Err(BtfError::NoSuchType(77))
    ));
    assert!(matches!(Layout::new(&btf, cyc), Err(BtfError::TooDeep(_))));

    // Random corruption of the real object's BTF: errors, never panics.
    let real = {
        use object::{Object, ObjectSection};
        let obj = object::File::parse(object()).unwrap();
        obj.section_by_name(".BTF")
            .unwrap()
            .data()
            .unwrap()
            .to_vec()
    };
    assert!(Btf::parse(&real).is_ok());
    // VTAP_PROBES_FUZZ=<iterations>[:<seed>] runs a longer campaign.
    let env = std::env::var("VTAP_PROBES_FUZZ").unwrap_or_default();
    let mut it = env.split(':');
    let iterations: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let mut seed: u64 = it
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x2545_f491_4f6c_dd1d);
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut parsed, mut laid_out) = (0, 0);
    for _ in 0..iterations {
        let mut blob = real.clone();
        for _ in 0..1 + rnd() % 4 {
            let at = (rnd() % blob.len() as u64) as usize;
            blob[at] = rnd() as u8;
        }
        if rnd() % 8 == 0 {
            blob.truncate((rnd() % blob.len() as u64) as usize);
        }
        let Ok(btf) = Btf::parse(&blob) else { continue };
        parsed += 1;
        for id in 0..btf.len() as u32 {
            let Ok(l) = Layout::new(&btf, id) else {
                continue;
            };
            laid_out += 1;
            if l.size() <= 1 << 16 {
                let bytes = vec![0xa5; l.size()];
                let mut text = String::new();
                match (l.decode(&bytes), l.write_json(&bytes, &mut text)) {
                    (Ok(v), Ok(())) => assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v),
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!("decode {a:?} but write_json {b:?}"),
                }
                let _ = l.aggregate(&vec![0x5a; l.per_cpu_stride() * 2], 2, Aggregation::Sum);
            }
        }
        let _ = btf.maps();
    }
    eprintln!("fuzz: {parsed} corrupted blobs parsed, {laid_out} layouts built");
}

// ------------------------------------------------------ kernel maps (root)

fn update(fd: BorrowedFd<'_>, k: &[u8], v: &[u8]) {
    sys::update(fd, k, v, 0).unwrap_or_else(|e| panic!("update: {e}"));
}

/// What each test map holds after `fill`, as `{key JSON: value JSON}`
/// (queues/stacks: values in pop order under the key `"[]"` is not used).
struct Expected {
    hash: BTreeMap<String, Value>,
    array: BTreeMap<String, Value>,
    percpu_array: BTreeMap<String, Vec<Value>>,
    percpu_hash: BTreeMap<String, Vec<Value>>,
    lru_percpu_hash: BTreeMap<String, Vec<Value>>,
    queue: Vec<Value>,
}

fn fill(ebpf: &mut aya::Ebpf) -> Expected {
    let mut hash = BTreeMap::new();
    for i in 0..10 {
        let (k, kj) = flow_key(i * 7);
        let (v, vj) = nasty(i);
        update(fd(ebpf, "t_hash"), &k, &v);
        update(fd(ebpf, "t_lru_hash"), &k, &v);
        hash.insert(kj.to_string(), vj);
    }
    let mut array = BTreeMap::new();
    for i in 0..4u32 {
        let (v, vj) = if i == 2 {
            // Never written: the kernel's zeroes.
            (
                vec![0u8; 208],
                layout("t_array").value.decode(&[0u8; 208]).unwrap(),
            )
        } else {
            nasty(20 + i)
        };
        update(fd(ebpf, "t_array"), &i.to_ne_bytes(), &v);
        array.insert(json!(i).to_string(), vj);
    }
    let mut percpu_array = BTreeMap::new();
    for i in 0..3u32 {
        let (v, vj) = pc_all(i);
        update(fd(ebpf, "t_percpu_array"), &i.to_ne_bytes(), &v);
        percpu_array.insert(json!(i).to_string(), vj);
    }
    let mut percpu_hash = BTreeMap::new();
    let mut lru_percpu_hash = BTreeMap::new();
    for i in 0..5u32 {
        let (k, kj) = flow_key(1000 + i);
        let (v, vj) = pc_all(i + 10);
        update(fd(ebpf, "t_percpu_hash"), &k, &v);
        percpu_hash.insert(kj.to_string(), vj);
        let (v, vj) = pc_all(i + 20);
        update(fd(ebpf, "t_lru_percpu_hash"), &(i * 1000).to_ne_bytes(), &v);
        lru_percpu_hash.insert(json!(i * 1000).to_string(), vj);
    }
    let mut queue = Vec::new();
    {
        let mut q: aya::maps::Queue<_, [u8; 16]> =
            aya::maps::Queue::try_from(ebpf.map_mut("t_queue").unwrap()).unwrap();
        for s in 1..=5 {
            let (b, j) = qv(s);
            q.push(<[u8; 16]>::try_from(b.as_slice()).unwrap(), 0)
                .unwrap();
            queue.push(j);
        }
    }
    {
        let mut st: aya::maps::Stack<_, [u8; 16]> =
            aya::maps::Stack::try_from(ebpf.map_mut("t_stack").unwrap()).unwrap();
        for s in 1..=5 {
            let (b, _) = qv(s);
            st.push(<[u8; 16]>::try_from(b.as_slice()).unwrap(), 0)
                .unwrap();
        }
    }
    Expected {
        hash,
        array,
        percpu_array,
        percpu_hash,
        lru_percpu_hash,
        queue,
    }
}

/// Reads a map and decodes it, checking that the text form agrees.
fn read_json(ebpf: &aya::Ebpf, map: &str, method: Method) -> (Vec<Value>, bool) {
    let e = batch::read(fd(ebpf, map), method).unwrap_or_else(|e| panic!("read {map}: {e}"));
    let l = layout(map);
    let v = l.decode(&e, None).unwrap();
    for per_cpu in [None, Some(Aggregation::Sum), Some(Aggregation::Avg)] {
        let mut text = String::new();
        l.write_json(&e, per_cpu, &mut text).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            Value::Array(l.decode(&e, per_cpu).unwrap()),
            "{map} {per_cpu:?}"
        );
    }
    (v, e.batched())
}

fn per_cpu_by_key(entries: Vec<Value>) -> BTreeMap<String, Vec<Value>> {
    entries
        .into_iter()
        .map(|e| {
            (
                e["key"].to_string(),
                e["value"].as_array().expect("one value per CPU").clone(),
            )
        })
        .collect()
}

#[test]
fn every_map_type_reads_back_exactly() {
    if !common::require_root() {
        return;
    }
    for method in [Method::Auto, Method::Batch, Method::Iterative] {
        let mut ebpf = load();
        let want = fill(&mut ebpf);
        let batched = method != Method::Iterative;
        for map in ["t_hash", "t_lru_hash"] {
            let (got, b) = read_json(&ebpf, map, method);
            assert_eq!(b, batched, "{map} {method:?}");
            assert_eq!(by_key(got), want.hash, "{map} {method:?}");
        }
        let (got, b) = read_json(&ebpf, "t_array", method);
        assert_eq!(b, batched);
        assert_eq!(by_key(got), want.array, "t_array {method:?}");
        for (map, w) in [
            ("t_percpu_array", &want.percpu_array),
            ("t_percpu_hash", &want.percpu_hash),
            ("t_lru_percpu_hash", &want.lru_percpu_hash),
        ] {
            let (got, b) = read_json(&ebpf, map, method);
            assert_eq!(b, batched, "{map}");
            assert_eq!(per_cpu_by_key(got), *w, "{map} {method:?}");
        }
        // Aggregated per-CPU read.
        let e = batch::read(fd(&ebpf, "t_percpu_hash"), method).unwrap();
        let sums = layout("t_percpu_hash")
            .decode(&e, Some(Aggregation::Sum))
            .unwrap();
        for s in sums {
            let cpus = &want.percpu_hash[&s["key"].to_string()];
            let total: u64 = cpus.iter().map(|v| v["packets"].as_u64().unwrap()).sum();
            assert_eq!(s["value"]["packets"], json!(total));
            assert_eq!(s["value"]["t"], cpus[0]["t"]);
        }
        // Queues pop in FIFO order, stacks in LIFO order, and are drained.
        let (got, b) = read_json(&ebpf, "t_queue", method);
        assert!(!b);
        let vals: Vec<Value> = got.iter().map(|e| e["value"].clone()).collect();
        assert_eq!(vals, want.queue);
        assert!(got.iter().all(|e| e.get("key").is_none()));
        let (got, _) = read_json(&ebpf, "t_stack", method);
        let vals: Vec<Value> = got.iter().map(|e| e["value"].clone()).collect();
        assert_eq!(vals, want.queue.iter().rev().cloned().collect::<Vec<_>>());
        assert!(read_json(&ebpf, "t_queue", method).0.is_empty());
        assert!(read_json(&ebpf, "t_stack", method).0.is_empty());
        // Reading is not destructive for the others.
        assert_eq!(by_key(read_json(&ebpf, "t_hash", method).0), want.hash);
    }
}

#[test]
fn read_and_delete_resets_every_map_type() {
    if !common::require_root() {
        return;
    }
    for method in [Method::Auto, Method::Iterative] {
        let mut ebpf = load();
        let want = fill(&mut ebpf);
        for map in ["t_hash", "t_lru_hash"] {
            let e = batch::read_and_delete(fd(&ebpf, map), method).unwrap();
            assert_eq!(e.batched(), method == Method::Auto);
            assert_eq!(by_key(layout(map).decode(&e, None).unwrap()), want.hash);
            assert!(
                batch::read(fd(&ebpf, map), method).unwrap().is_empty(),
                "{map}"
            );
        }
        for (map, w) in [
            ("t_percpu_hash", &want.percpu_hash),
            ("t_lru_percpu_hash", &want.lru_percpu_hash),
        ] {
            let e = batch::read_and_delete(fd(&ebpf, map), method).unwrap();
            assert_eq!(per_cpu_by_key(layout(map).decode(&e, None).unwrap()), *w);
            assert!(
                batch::read(fd(&ebpf, map), method).unwrap().is_empty(),
                "{map}"
            );
        }
        // Arrays: read, then every element zeroed (entries stay).
        let e = batch::read_and_delete(fd(&ebpf, "t_array"), method).unwrap();
        assert_eq!(
            by_key(layout("t_array").decode(&e, None).unwrap()),
            want.array
        );
        let after = batch::read(fd(&ebpf, "t_array"), method).unwrap();
        assert_eq!(after.len(), 4);
        assert!(after.iter().all(|(_, v)| v.iter().all(|&b| b == 0)));
        let e = batch::read_and_delete(fd(&ebpf, "t_percpu_array"), method).unwrap();
        assert_eq!(
            per_cpu_by_key(layout("t_percpu_array").decode(&e, None).unwrap()),
            want.percpu_array
        );
        let after = batch::read(fd(&ebpf, "t_percpu_array"), method).unwrap();
        assert_eq!((after.len(), after.value_len()), (3, 16 * ncpus()));
        assert!(after.iter().all(|(_, v)| v.iter().all(|&b| b == 0)));
        // Queue and stack: drained.
        assert_eq!(
            batch::read_and_delete(fd(&ebpf, "t_queue"), method)
                .unwrap()
                .len(),
            5
        );
        assert!(
            batch::read_and_delete(fd(&ebpf, "t_queue"), method)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            batch::read_and_delete(fd(&ebpf, "t_stack"), method)
                .unwrap()
                .len(),
            5
        );
    }
}

#[test]
fn read_all_checks_the_callers_description_of_the_map() {
    if !common::require_root() {
        return;
    }
    let mut ebpf = load();
    let want = fill(&mut ebpf);
    let n = ncpus();
    let pairs = batch::read_all(fd(&ebpf, "t_hash"), MapType::Hash, 16, 208, 16, n).unwrap();
    assert_eq!(pairs.len(), 10);
    let l = layout("t_hash");
    let got: BTreeMap<String, Value> = pairs
        .iter()
        .map(|(k, v)| {
            (
                l.key.decode(k).unwrap().to_string(),
                l.value.decode(v).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want.hash);
    let pairs = batch::read_all(
        fd(&ebpf, "t_percpu_array"),
        MapType::PerCpuArray,
        4,
        12,
        3,
        n,
    )
    .unwrap();
    assert_eq!(pairs.len(), 3);
    assert!(pairs.iter().all(|(k, v)| k.len() == 4 && v.len() == 16 * n));
    for (map_type, ks, vs, max, cpus, what) in [
        (MapType::Array, 16, 208, 16, n, "type"),
        (MapType::Hash, 4, 208, 16, n, "key size"),
        (MapType::Hash, 16, 200, 16, n, "value size"),
        (MapType::Hash, 16, 208, 17, n, "max_entries"),
        (
            MapType::Hash,
            16,
            208,
            16,
            n + 1,
            "the number of possible CPUs",
        ),
    ] {
        match batch::read_all(fd(&ebpf, "t_hash"), map_type, ks, vs, max, cpus) {
            Err(BatchError::Mismatch { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{what}: {other:?}"),
        }
    }
    let drained =
        batch::read_and_delete_all(fd(&ebpf, "t_lru_hash"), MapType::LruHash, 16, 208, 16, n)
            .unwrap();
    assert_eq!(drained.len(), 10);
    assert!(
        batch::read(fd(&ebpf, "t_lru_hash"), Method::Auto)
            .unwrap()
            .is_empty()
    );
    let info = batch::MapInfo::of(fd(&ebpf, "t_flows")).unwrap();
    assert_eq!(
        (
            info.map_type,
            info.key_size,
            info.value_size,
            info.max_entries
        ),
        (1, 16, 40, 16384)
    );
    assert_eq!(info.name, "t_flows");
}

fn fill_flows(fd: BorrowedFd<'_>, n: u32) -> BTreeMap<String, Value> {
    let mut keys = Vec::with_capacity(n as usize * 16);
    let mut vals = Vec::with_capacity(n as usize * 40);
    let mut want = BTreeMap::new();
    for i in 0..n {
        let (k, kj) = flow_key(i);
        let (v, vj) = flow_stats(i);
        keys.extend_from_slice(&k);
        vals.extend_from_slice(&v);
        want.insert(kj.to_string(), vj);
    }
    assert_eq!(want.len(), n as usize, "distinct keys");
    sys::update_batch(fd, &keys, &vals, n).unwrap();
    want
}

fn best_and_median(mut t: Vec<Duration>) -> (Duration, Duration) {
    t.sort();
    (t[0], t[t.len() / 2])
}

#[test]
fn ten_thousand_struct_entries_read_and_decode_fast_and_exactly() {
    if !common::require_root() {
        return;
    }
    const N: u32 = 10_000;
    let ebpf = load();
    let fd = fd(&ebpf, "t_flows");
    let want = fill_flows(fd, N);
    let l = layout("t_flows");

    // Correctness, batch and iterative.
    for method in [Method::Auto, Method::Iterative] {
        let e = batch::read(fd, method).unwrap();
        assert_eq!(e.batched(), method == Method::Auto);
        assert_eq!(e.len(), N as usize);
        assert_eq!(by_key(l.decode(&e, None).unwrap()), want, "{method:?}");
    }
    // Labels for every entry, as an exporter would make them.
    let saddr = l.key.field("saddr").unwrap();
    let sport = l.key.field("sport").unwrap();
    let e = batch::read(fd, Method::Auto).unwrap();
    let labels: std::collections::BTreeSet<(String, String)> = e
        .iter()
        .map(|(k, _)| {
            (
                saddr.format(k, LabelFormat::Ipv4).unwrap(),
                sport.format(k, LabelFormat::Decimal).unwrap(),
            )
        })
        .collect();
    assert_eq!(labels.len(), N as usize);
    assert!(labels.contains(&("10.0.39.15".to_string(), (1024 + 9999).to_string())));

    // Timing: read (one batch), decode to JSON, both; best and median of 9.
    let (mut read_t, mut decode_t, mut total_t, mut iter_t) = (vec![], vec![], vec![], vec![]);
    let (mut text_t, mut write_t) = (vec![], vec![]);
    let mut text = String::new();
    for _ in 0..9 {
        text.clear();
        let t = Instant::now();
        let e = batch::read(fd, Method::Auto).unwrap();
        let tw = Instant::now();
        l.write_json(&e, None, &mut text).unwrap();
        text_t.push(t.elapsed());
        write_t.push(tw.elapsed());
        let t0 = Instant::now();
        let e = batch::read(fd, Method::Auto).unwrap();
        let t1 = Instant::now();
        let json = l.decode(&e, None).unwrap();
        let t2 = Instant::now();
        assert_eq!(json.len(), N as usize);
        read_t.push(t1 - t0);
        decode_t.push(t2 - t1);
        total_t.push(t2 - t0);
        let t3 = Instant::now();
        let e = batch::read(fd, Method::Iterative).unwrap();
        iter_t.push(t3.elapsed());
        assert_eq!(e.len(), N as usize);
    }
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(by_key(parsed.as_array().unwrap().clone()), want);
    let text = {
        let t = Instant::now();
        let s = serde_json::to_string(
            &l.decode(&batch::read(fd, Method::Auto).unwrap(), None)
                .unwrap(),
        )
        .unwrap();
        (t.elapsed(), s.len())
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let (rb, rm) = best_and_median(read_t);
    let (db, dm) = best_and_median(decode_t);
    let (tb, tm) = best_and_median(total_t);
    let (ib, im) = best_and_median(iter_t);
    let (wb, wm) = best_and_median(text_t);
    let (ob, om) = best_and_median(write_t);
    println!(
        "probes_extract [{profile} build, {N} entries, 16-byte key, 40-byte value]: \
         batch read {rb:?} (median {rm:?}), JSON decode {db:?} (median {dm:?}), \
         read+decode to Value {tb:?} (median {tm:?}); \
         write JSON text {ob:?} (median {om:?}), read+write JSON text {wb:?} (median {wm:?}); \
         iterative read {ib:?} (median {im:?}); \
         read+decode+serde_json::to_string {:?} ({} bytes)",
        text.0, text.1
    );

    // Reset: batch (LOOKUP_AND_DELETE_BATCH) vs iterative, same content.
    let t = Instant::now();
    let e = batch::read_and_delete(fd, Method::Auto).unwrap();
    let batch_reset = t.elapsed();
    assert_eq!(by_key(l.decode(&e, None).unwrap()), want);
    assert!(batch::read(fd, Method::Auto).unwrap().is_empty());
    fill_flows(fd, N);
    let t = Instant::now();
    let e = batch::read_and_delete(fd, Method::Iterative).unwrap();
    let iter_reset = t.elapsed();
    assert_eq!(by_key(l.decode(&e, None).unwrap()), want);
    assert!(batch::read(fd, Method::Auto).unwrap().is_empty());
    println!(
        "probes_extract [{profile}]: read-and-reset {N} entries: batch {batch_reset:?}, \
         iterative {iter_reset:?}"
    );

    // A 20k-element array in batches (more than one syscall's worth is
    // not needed: arrays are read in one go) and zeroed in batches.
    let big = fd_of_big(&ebpf);
    let vals: Vec<u8> = (0..20_000u64).flat_map(|i| (i * i).to_ne_bytes()).collect();
    let keys: Vec<u8> = (0..20_000u32).flat_map(u32::to_ne_bytes).collect();
    sys::update_batch(big, &keys, &vals, 20_000).unwrap();
    let e = batch::read_and_delete(big, Method::Auto).unwrap();
    assert!(e.batched());
    let la = layout("t_big_array");
    for (i, (k, v)) in e.iter().enumerate() {
        assert_eq!(la.key.decode(k).unwrap(), json!(i));
        assert_eq!(la.value.decode(v).unwrap(), json!((i * i) as u64));
    }
    assert!(
        batch::read(big, Method::Auto)
            .unwrap()
            .iter()
            .all(|(_, v)| v == [0; 8])
    );
}

fn fd_of_big(ebpf: &aya::Ebpf) -> BorrowedFd<'_> {
    fd(ebpf, "t_big_array")
}

#[test]
fn hash_maps_larger_than_one_batch_are_read_whole() {
    if !common::require_root() {
        return;
    }
    const N: u32 = 70_000; // more than the 64Ki entries one syscall asks for
    let ebpf = load();
    let fd = fd(&ebpf, "t_many");
    let keys: Vec<u8> = (0..N).flat_map(|i| (i * 7).to_ne_bytes()).collect();
    let vals: Vec<u8> = (0..N)
        .flat_map(|i| (i as u64 * 1_000_003).to_ne_bytes())
        .collect();
    sys::update_batch(fd, &keys, &vals, N).unwrap();
    let check = |e: &batch::Entries| {
        assert_eq!(e.len(), N as usize);
        let mut seen = vec![false; N as usize];
        for (k, v) in e.iter() {
            let k = u32::from_ne_bytes(k.try_into().unwrap());
            assert_eq!(k % 7, 0);
            let i = k / 7;
            assert_eq!(
                u64::from_ne_bytes(v.try_into().unwrap()),
                i as u64 * 1_000_003
            );
            assert!(
                !std::mem::replace(&mut seen[i as usize], true),
                "key {k} twice"
            );
        }
    };
    for method in [Method::Batch, Method::Iterative] {
        let e = batch::read(fd, method).unwrap();
        assert_eq!(e.batched(), method == Method::Batch);
        check(&e);
    }
    let e = batch::read_and_delete(fd, Method::Batch).unwrap();
    check(&e);
    assert!(batch::read(fd, Method::Auto).unwrap().is_empty());
}

#[test]
fn map_types_without_batch_syscalls_fall_back_to_iteration() {
    if !common::require_root() {
        return;
    }
    let ebpf = load();
    let fd = fd(&ebpf, "t_lpm");
    let mut want = BTreeMap::new();
    for (i, (prefix, addr)) in [
        (8u32, [10u8, 0, 0, 0]),
        (16, [10, 1, 0, 0]),
        (24, [192, 168, 7, 0]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut k = prefix.to_ne_bytes().to_vec();
        k.extend_from_slice(&addr);
        update(fd, &k, &(i as u32 + 100).to_ne_bytes());
        want.insert(
            json!({"prefixlen": prefix, "addr": addr}).to_string(),
            json!(i + 100),
        );
    }
    // Lookups: batch or not (recent kernels batch LPM tries generically),
    // the same entries.
    let l = layout("t_lpm");
    for method in [Method::Auto, Method::Iterative] {
        let e = batch::read(fd, method).unwrap();
        assert_eq!(by_key(l.decode(&e, None).unwrap()), want, "{method:?}");
    }
    let e = batch::read(fd, Method::Auto).unwrap();
    let addr = l.key.field("addr").unwrap();
    let len = l.key.field("prefixlen").unwrap();
    let mut cidrs: Vec<String> = e
        .iter()
        .map(|(k, _)| {
            format!(
                "{}/{}",
                addr.format(k, LabelFormat::Ipv4).unwrap(),
                len.format(k, LabelFormat::Decimal).unwrap()
            )
        })
        .collect();
    cidrs.sort();
    assert_eq!(cidrs, ["10.0.0.0/8", "10.1.0.0/16", "192.168.7.0/24"]);
    // The kernel has no LOOKUP_AND_DELETE_BATCH (nor LOOKUP_AND_DELETE_ELEM)
    // for LPM tries: Batch alone reports the refusal...
    match batch::read_and_delete(fd, Method::Batch) {
        Err(BatchError::Os { op, source, .. }) => {
            assert_eq!(op, "BPF_MAP_LOOKUP_AND_DELETE_BATCH");
            eprintln!("LPM trie batch lookup-and-delete refused as expected: {source}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        batch::read(fd, Method::Auto).unwrap().len(),
        3,
        "nothing deleted"
    );
    // ...and Auto falls back to lookup + delete, key by key.
    let e = batch::read_and_delete(fd, Method::Auto).unwrap();
    assert!(!e.batched());
    assert_eq!(by_key(l.decode(&e, None).unwrap()), want);
    assert!(batch::read(fd, Method::Auto).unwrap().is_empty());
}
