//! Differential test without root: a pure-Rust simulation of the datapath's
//! table lookups over a `CompiledSet` must select exactly the policies that
//! the reference classifier (written from the policy semantics) selects.
//!
//! Seeds: `VTAP_SIM_SEED=<u64>` reruns one seed; `VTAP_SIM_FRAMES` changes the
//! total number of frames (default 120000).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vtap_abi::{Bitmap, Dir, field};
use vtap_core::policy::compile::{Assignment, CompiledSet, compile};
use vtap_core::policy::reference::{Parsed, classify, parse};
use vtap_core::policy::testgen::{random_frame, random_policy_set};
use vtap_core::policy::{Policy, validate_set};

const TAPS: [&str; 5] = ["vm1-tap", "vm2-tap", "vm3-tap", "vm*-tap", "vm[12]-tap"];
const IFACES: [&str; 4] = ["vm1-tap", "vm2-tap", "vm3-tap", "eth0"];
const OUTPUTS: [&str; 3] = ["mon0", "mon1", "vx0"];

const ALL: Bitmap = Bitmap {
    w: [u64::MAX; vtap_abi::BITMAP_WORDS],
};

/// Longest-prefix match over the entries of one LPM table.
fn lpm4(t: &std::collections::BTreeMap<Ipv4Net, Bitmap>, a: std::net::Ipv4Addr) -> Option<Bitmap> {
    t.iter()
        .filter(|(n, _)| n.contains(&a))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, b)| *b)
}
fn lpm6(t: &std::collections::BTreeMap<Ipv6Net, Bitmap>, a: std::net::Ipv6Addr) -> Option<Bitmap> {
    t.iter()
        .filter(|(n, _)| n.contains(&a))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, b)| *b)
}

/// What the C datapath does with the parse result (vtap_abi.h): AND one
/// bitmap per used field; the field's wildcard when the packet has no value
/// or the lookup misses.
fn simulate(c: &CompiledSet, ifname: &str, dir: Dir, pkt: &Parsed) -> Bitmap {
    let used = |f: usize| c.used_fields & (1 << f) != 0;
    let w = |f: usize| c.wildcard[f];
    let mut base = c.tap_bitmap(ifname, dir);
    if used(field::ETHER_TYPE) {
        base = base.and(&match pkt.ether_type {
            Some(et) => c
                .ether_types
                .get(&et)
                .copied()
                .unwrap_or(w(field::ETHER_TYPE)),
            None => w(field::ETHER_TYPE),
        });
    }
    if used(field::PROTO) {
        base = base.and(
            &pkt.proto
                .map(|p| c.proto[p as usize])
                .unwrap_or(w(field::PROTO)),
        );
    }
    if used(field::TCP_FLAGS) {
        base = base.and(
            &pkt.tcp_flags
                .map(|f| c.tcp_flags[f as usize])
                .unwrap_or(w(field::TCP_FLAGS)),
        );
    }
    let addr = |f: usize, a: Option<IpAddr>| -> Bitmap {
        if !used(f) {
            return ALL;
        }
        let (t4, t6) = if f == field::SRC {
            (&c.src4, &c.src6)
        } else {
            (&c.dst4, &c.dst6)
        };
        match a {
            None => w(f),
            Some(IpAddr::V4(a)) => lpm4(t4, a).unwrap_or(w(f)),
            Some(IpAddr::V6(a)) => lpm6(t6, a).unwrap_or(w(f)),
        }
    };
    let port = |f: usize, p: Option<u16>| -> Bitmap {
        if !used(f) {
            return ALL;
        }
        let t = if f == field::SPORT {
            &c.sport
        } else {
            &c.dport
        };
        p.map(|p| t[p as usize]).unwrap_or(w(f))
    };
    let (sp, dp) = match pkt.ports {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    let fwd = base
        .and(&addr(field::SRC, pkt.src))
        .and(&addr(field::DST, pkt.dst))
        .and(&port(field::SPORT, sp))
        .and(&port(field::DPORT, dp));
    let rev = base
        .and(&c.bidir)
        .and(&addr(field::SRC, pkt.dst))
        .and(&addr(field::DST, pkt.src))
        .and(&port(field::SPORT, dp))
        .and(&port(field::DPORT, sp));
    fwd.or(&rev)
}

fn run_seed(seed: u64, n_policies: usize, frames: usize) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let policies: Vec<Policy> = random_policy_set(&mut rng, n_policies, &TAPS, &OUTPUTS);
    assert!(
        validate_set(&policies).is_empty(),
        "seed {seed}: generated set invalid"
    );
    let a = Assignment::assign(&policies, &Assignment::default()).expect("assign");
    let c = compile(&policies, &a).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let (mut matched, mut nonempty) = (0, 0);
    for i in 0..frames {
        let (frame, vlan) = random_frame(&mut rng);
        let ifname = IFACES[rng.gen_range(0..IFACES.len())];
        let dir = if rng.gen_bool(0.5) {
            Dir::Ingress
        } else {
            Dir::Egress
        };
        let want = classify(&policies, ifname, dir, &frame, vlan);
        let pkt = parse(&frame, vlan);
        let got: BTreeSet<String> = c
            .names_of(&simulate(&c, ifname, dir, &pkt))
            .into_iter()
            .collect();
        if got != want {
            panic!(
                "VTAP_SIM_SEED={seed} frame #{i} on {ifname} {dir:?}: tables select {got:?}, reference {want:?}\n\
                 frame: {frame:02x?} offloaded vlan {vlan:?}\nparsed: {pkt:#?}\npolicies: {}",
                serde_json::to_string_pretty(&policies).unwrap()
            );
        }
        matched += want.len();
        nonempty += usize::from(!want.is_empty());
    }
    (matched, nonempty)
}

#[test]
fn tables_agree_with_reference() {
    let total: usize = std::env::var("VTAP_SIM_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120_000);
    if let Some(seed) = std::env::var("VTAP_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        run_seed(seed, 1 + (seed as usize % 40), total);
        return;
    }
    // A base seed per run would make failures irreproducible without the
    // printed seed; fixed seeds keep CI deterministic.
    let sets = 60;
    let mut nonempty = 0;
    for s in 0..sets {
        let seed = 0x5eed_0000 + s;
        let (_, ne) = run_seed(seed, 1 + (seed as usize % 40), total / sets as usize);
        nonempty += ne;
    }
    // The pools must make frames match often, or the test proves little.
    assert!(
        nonempty * 10 > total,
        "only {nonempty} of {total} frames matched a policy"
    );
    eprintln!("{nonempty} of {total} frames matched at least one policy");
}

/// Policy sets where every policy constrains one field only: each field's
/// table is exercised alone.
#[test]
fn single_field_sets_agree() {
    let mut rng = StdRng::seed_from_u64(42);
    for round in 0..30 {
        let mut policies = random_policy_set(&mut rng, 12, &TAPS, &OUTPUTS);
        let keep = round % 7;
        for p in &mut policies {
            let m = p.r#match.clone();
            p.r#match = Default::default();
            p.r#match.bidirectional = m.bidirectional;
            match keep {
                0 => p.r#match.ether_type = m.ether_type,
                1 => p.r#match.src = m.src,
                2 => p.r#match.dst = m.dst,
                3 => p.r#match.protocol = m.protocol,
                4 => p.r#match.src_ports = m.src_ports,
                5 => p.r#match.dst_ports = m.dst_ports,
                _ => p.r#match.tcp_flags = m.tcp_flags,
            }
        }
        assert!(validate_set(&policies).is_empty());
        let a = Assignment::assign(&policies, &Assignment::default()).unwrap();
        let c = compile(&policies, &a).unwrap();
        for _ in 0..1000 {
            let (frame, vlan) = random_frame(&mut rng);
            let ifname = IFACES[rng.gen_range(0..IFACES.len())];
            let dir = if rng.gen_bool(0.5) {
                Dir::Ingress
            } else {
                Dir::Egress
            };
            let want = classify(&policies, ifname, dir, &frame, vlan);
            let got: BTreeSet<String> = c
                .names_of(&simulate(&c, ifname, dir, &parse(&frame, vlan)))
                .into_iter()
                .collect();
            assert_eq!(got, want, "round {round} frame {frame:02x?}");
        }
    }
}

/// Slots far apart (as after many updates) and disabled policies.
#[test]
fn sparse_slots_agree() {
    let mut rng = StdRng::seed_from_u64(99);
    let policies = random_policy_set(&mut rng, 30, &TAPS, &OUTPUTS);
    let mut a = Assignment::default();
    for (i, p) in policies.iter().enumerate() {
        a.policy_slots.insert(p.name.clone(), (255 - i * 8) as u16);
    }
    let a = Assignment::assign(&policies, &a).unwrap();
    assert_eq!(a.policy_slots["p0"], 255);
    let c = compile(&policies, &a).unwrap();
    for _ in 0..5000 {
        let (frame, vlan) = random_frame(&mut rng);
        let ifname = IFACES[rng.gen_range(0..IFACES.len())];
        let dir = if rng.gen_bool(0.5) {
            Dir::Ingress
        } else {
            Dir::Egress
        };
        let want = classify(&policies, ifname, dir, &frame, vlan);
        let got: BTreeSet<String> = c
            .names_of(&simulate(&c, ifname, dir, &parse(&frame, vlan)))
            .into_iter()
            .collect();
        assert_eq!(got, want);
    }
}
