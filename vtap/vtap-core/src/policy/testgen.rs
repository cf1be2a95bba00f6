//! Random policy sets and frames for differential tests (feature `testgen`).
//!
//! Policies and frames draw their addresses, ports, protocols and EtherTypes
//! from the same small pools (the `*_POOL` constants), so frames match
//! policies often, including at the edges of prefixes and port ranges.
//! Generated policy sets are always valid ([`validate_set`] passes) provided
//! no tap pattern given matches an output name.
//!
//! [`validate_set`]: super::validate::validate_set

use rand::Rng;
use rand::seq::SliceRandom;

use super::model::{
    Direction, Match, NameOrNumber, Output, POLICY_VERSION, Policy, PortSpec, RateLimit, SampleBy,
};

/// IPv4 addresses frames use (VMs, prefix edges, outsiders).
pub const IPV4_POOL: [&str; 14] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "10.0.0.0",
    "10.0.0.127",
    "10.0.0.128",
    "10.0.0.255",
    "10.0.1.5",
    "10.1.2.3",
    "192.168.1.10",
    "192.168.255.255",
    "172.16.5.4",
    "8.8.8.8",
    "0.0.0.0",
];
/// IPv4 prefixes policies use (nested, overlapping, host bits set, bare).
pub const IPV4_CIDR_POOL: [&str; 14] = [
    "10.0.0.0/24",
    "10.0.0.0/8",
    "10.0.0.1/32",
    "10.0.0.2/31",
    "10.0.0.0/25",
    "10.0.0.128/25",
    "10.0.1.0/24",
    "192.168.0.0/16",
    "172.16.0.0/12",
    "0.0.0.0/0",
    "10.0.0.3",
    "10.0.0.77/24",
    "10.0.0.255/32",
    "8.0.0.0/7",
];
/// IPv6 addresses frames use.
pub const IPV6_POOL: [&str; 10] = [
    "fd00::1",
    "fd00::2",
    "fd00::3",
    "fd00::ffff:ffff:ffff:ffff",
    "fd00:0:0:1::5",
    "fd01::1",
    "2001:db8::1",
    "fe80::1",
    "::1",
    "::",
];
/// IPv6 prefixes policies use.
pub const IPV6_CIDR_POOL: [&str; 11] = [
    "fd00::/64",
    "fd00::/16",
    "fd00::/8",
    "fd00::1/128",
    "fd00::2/127",
    "fd00:0:0:1::/64",
    "2001:db8::/32",
    "fe80::/10",
    "::/0",
    "fd00::3",
    "fd00::1234/64",
];
/// Ports frames and policies use.
pub const PORT_POOL: [u16; 14] = [
    0, 1, 22, 53, 80, 443, 1000, 1023, 1024, 1500, 2000, 8080, 12345, 65535,
];
/// Port ranges policies use.
pub const PORT_RANGE_POOL: [(u16, u16); 8] = [
    (1000, 2000),
    (0, 1023),
    (1024, 65535),
    (80, 80),
    (8000, 8080),
    (50, 60),
    (443, 444),
    (0, 65535),
];
/// IP protocols (tcp, udp, icmp, icmpv6, gre, sctp, esp, hop-by-hop as a
/// protocol number).
pub const PROTOCOL_POOL: [u8; 8] = [6, 17, 1, 58, 47, 132, 50, 0];
/// Non-IP EtherTypes (LLDP, 802.1X, loopback, an 802.3 length).
pub const OTHER_ETHER_TYPE_POOL: [u16; 4] = [0x88cc, 0x888e, 0x9000, 0x0042];
/// TCP flag bytes frames use (plus random ones).
pub const TCP_FLAGS_POOL: [u8; 10] = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x00, 0xff, 0xc2];
/// VLAN ids outputs use.
pub const VLAN_POOL: [Option<u32>; 5] = [None, Some(100), Some(200), Some(300), Some(4094)];

const FLAG_NAMES: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"];

fn pick<T: Copy, R: Rng + ?Sized>(rng: &mut R, v: &[T]) -> T {
    *v.choose(rng).expect("non-empty pool")
}

#[derive(Clone, Copy, PartialEq)]
enum Fam {
    V4,
    V6,
    Mixed,
}

fn cidr_list<R: Rng + ?Sized>(rng: &mut R, fam: Fam) -> Vec<String> {
    let n = rng.gen_range(1..=3);
    let mut v = Vec::new();
    for i in 0..n.max(if fam == Fam::Mixed { 2 } else { 1 }) {
        let four = match fam {
            Fam::V4 => true,
            Fam::V6 => false,
            Fam::Mixed => match i {
                0 => true,
                1 => false,
                _ => rng.gen_bool(0.5),
            },
        };
        v.push(
            pick(
                rng,
                if four {
                    &IPV4_CIDR_POOL[..]
                } else {
                    &IPV6_CIDR_POOL[..]
                },
            )
            .to_owned(),
        );
    }
    v.shuffle(rng);
    v
}

fn port_list<R: Rng + ?Sized>(rng: &mut R) -> Vec<PortSpec> {
    (0..rng.gen_range(1..=3))
        .map(|_| match rng.gen_range(0..5) {
            0 => PortSpec::Number(i64::from(pick(rng, &PORT_POOL))),
            1 => PortSpec::Range(pick(rng, &PORT_POOL).to_string()),
            2 => {
                let (a, b) = (pick(rng, &PORT_POOL), pick(rng, &PORT_POOL));
                PortSpec::Range(format!("{}-{}", a.min(b), a.max(b)))
            }
            _ => {
                let (a, b) = pick(rng, &PORT_RANGE_POOL);
                PortSpec::Range(format!("{a}-{b}"))
            }
        })
        .collect()
}

fn random_match<R: Rng + ?Sized>(rng: &mut R) -> Match {
    let mut m = Match {
        bidirectional: rng.gen_bool(0.35),
        ..Default::default()
    };
    let et = rng.gen_range(0..100);
    let (et_value, fam) = match et {
        0..45 => (None, pick(rng, &[Fam::V4, Fam::V6, Fam::Mixed])),
        45..65 => (Some(0x0800u16), pick(rng, &[Fam::V4, Fam::V4, Fam::Mixed])),
        65..80 => (Some(0x86dd), pick(rng, &[Fam::V6, Fam::V6, Fam::Mixed])),
        80..90 => (Some(0x0806), pick(rng, &[Fam::V4, Fam::V4, Fam::Mixed])),
        _ => {
            // A non-IP EtherType (never below 0x0600 in a policy).
            let v = pick(rng, &OTHER_ETHER_TYPE_POOL[..3]);
            m.ether_type = Some(NameOrNumber::Number(i64::from(v)));
            return m;
        }
    };
    if let Some(v) = et_value {
        let name = match v {
            0x0800 => "ipv4",
            0x86dd => "ipv6",
            _ => "arp",
        };
        m.ether_type = Some(match rng.gen_range(0..4) {
            0 => NameOrNumber::Number(i64::from(v)),
            1 => NameOrNumber::Name(format!("{v:#06x}")),
            _ => NameOrNumber::Name(name.to_owned()),
        });
    }
    if rng.gen_bool(0.45) {
        m.src = Some(cidr_list(rng, fam));
    }
    if rng.gen_bool(0.45) {
        m.dst = Some(cidr_list(rng, fam));
    }
    let arp = et_value == Some(0x0806);
    if arp {
        return m;
    }
    let proto = rng.gen_bool(0.5).then(|| pick(rng, &PROTOCOL_POOL[..6]));
    if let Some(p) = proto {
        let name = match p {
            6 => Some("tcp"),
            17 => Some("udp"),
            1 => Some("icmp"),
            58 => Some("icmpv6"),
            _ => None,
        };
        m.protocol = Some(match (name, rng.gen_bool(0.5)) {
            (Some(n), true) => NameOrNumber::Name(n.to_owned()),
            _ => NameOrNumber::Number(i64::from(p)),
        });
    }
    if matches!(proto, None | Some(6) | Some(17)) {
        if rng.gen_bool(0.3) {
            m.src_ports = Some(port_list(rng));
        }
        if rng.gen_bool(0.4) {
            m.dst_ports = Some(port_list(rng));
        }
    }
    if matches!(proto, None | Some(6)) && rng.gen_bool(0.25) {
        let mut names = FLAG_NAMES.to_vec();
        names.shuffle(rng);
        // Bias toward syn and ack.
        if rng.gen_bool(0.6) {
            names.retain(|n| *n != "syn");
            names.insert(0, "syn");
        }
        let n = rng.gen_range(1..=3);
        m.tcp_flags = Some(
            names[..n]
                .iter()
                .map(|f| {
                    if rng.gen_bool(0.3) {
                        format!("!{f}")
                    } else {
                        (*f).to_owned()
                    }
                })
                .collect(),
        );
    }
    m
}

/// `n` valid policies named `p0`, `p1`, ... over the given tap patterns and
/// output interfaces (at most the first 12 outputs are used, so the set never
/// has more than 60 distinct outputs; `n` must be at most 256). About 15% are
/// disabled.
pub fn random_policy_set<R: Rng + ?Sized>(
    rng: &mut R,
    n: usize,
    taps: &[&str],
    outputs: &[&str],
) -> Vec<Policy> {
    let outputs = &outputs[..outputs.len().min(12)];
    (0..n)
        .map(|i| {
            let mut tap_list: Vec<String> = (0..rng.gen_range(1..=2))
                .map(|_| pick(rng, taps).to_owned())
                .collect();
            tap_list.dedup();
            let mut outs: Vec<Output> = Vec::new();
            for _ in 0..rng.gen_range(1..=3) {
                let o = Output::Interface {
                    interface: pick(rng, outputs).to_owned(),
                    vlan: pick(rng, &VLAN_POOL),
                };
                if !outs.contains(&o) {
                    outs.push(o);
                }
            }
            Policy {
                version: POLICY_VERSION,
                name: format!("p{i}"),
                priority: rng.gen_range(0..=1000),
                enabled: rng.gen_bool(0.85),
                taps: tap_list,
                direction: pick(
                    rng,
                    &[Direction::Ingress, Direction::Egress, Direction::Both],
                ),
                r#match: random_match(rng),
                sample_one_in: 1u64.into(),
                sample_by: Default::default(),
                snaplen: 0,
                rate_limit: RateLimit::default(),
                outputs: outs,
                when: None,
            }
        })
        .collect()
}

/// Gives about a third of `policies` a random 1-in-N sampling (by packet
/// or by flow) and/or a pps/bps rate limit. Draws from `rng` only here, so
/// the sets [`random_policy_set`] makes for a seed do not change. Shaping
/// never changes which policies *match* a packet; tests use this to check
/// that, and that every matched packet is accounted for.
pub fn random_shaping<R: Rng + ?Sized>(rng: &mut R, policies: &mut [Policy]) {
    for p in policies.iter_mut() {
        if !rng.gen_bool(0.35) {
            continue;
        }
        if rng.gen_bool(0.6) {
            p.sample_one_in = pick(rng, &[2u64, 3, 10, 1000]).into();
            if rng.gen_bool(0.5) {
                p.sample_by = SampleBy::Flow;
            }
        }
        if rng.gen_bool(0.5) {
            p.rate_limit.pps = pick(rng, &[1u64, 50, 100_000]).into();
        }
        if rng.gen_bool(0.3) {
            p.rate_limit.bps = pick(rng, &[1u64, 20_000, 1_000_000_000]).into();
        }
    }
}

fn random_port<R: Rng + ?Sized>(rng: &mut R) -> u16 {
    match rng.gen_range(0..10) {
        0..6 => pick(rng, &PORT_POOL),
        6..8 => {
            let (a, b) = pick(rng, &PORT_RANGE_POOL);
            let e = if rng.gen_bool(0.5) { a } else { b };
            e.wrapping_add(pick(rng, &[0u16, 1, u16::MAX]))
        }
        8 => pick(rng, &PORT_POOL).wrapping_add(pick(rng, &[1u16, u16::MAX])),
        _ => rng.r#gen(),
    }
}

fn random_v4<R: Rng + ?Sized>(rng: &mut R) -> [u8; 4] {
    if rng.gen_bool(0.85) {
        pick(rng, &IPV4_POOL)
            .parse::<std::net::Ipv4Addr>()
            .expect("pool")
            .octets()
    } else {
        rng.r#gen()
    }
}

fn random_v6<R: Rng + ?Sized>(rng: &mut R) -> [u8; 16] {
    if rng.gen_bool(0.85) {
        pick(rng, &IPV6_POOL)
            .parse::<std::net::Ipv6Addr>()
            .expect("pool")
            .octets()
    } else {
        rng.r#gen()
    }
}

fn random_bytes<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.r#gen()).collect()
}

fn random_proto<R: Rng + ?Sized>(rng: &mut R) -> u8 {
    match rng.gen_range(0..20) {
        0..7 => 6,
        7..13 => 17,
        13..15 => 1,
        15..17 => 58,
        17..19 => pick(rng, &PROTOCOL_POOL),
        _ => rng.r#gen(),
    }
}

fn l4_header<R: Rng + ?Sized>(rng: &mut R, proto: u8) -> Vec<u8> {
    let mut h = Vec::new();
    match proto {
        6 => {
            h.extend_from_slice(&random_port(rng).to_be_bytes());
            h.extend_from_slice(&random_port(rng).to_be_bytes());
            h.extend(random_bytes(rng, 8));
            h.push(0x50);
            h.push(if rng.gen_bool(0.8) {
                pick(rng, &TCP_FLAGS_POOL)
            } else {
                rng.r#gen()
            });
            h.extend(random_bytes(rng, 6));
        }
        17 => {
            h.extend_from_slice(&random_port(rng).to_be_bytes());
            h.extend_from_slice(&random_port(rng).to_be_bytes());
            h.extend(random_bytes(rng, 4));
        }
        1 | 58 => h.extend(random_bytes(rng, 8)),
        _ => {
            let n = rng.gen_range(0..16);
            h.extend(random_bytes(rng, n));
        }
    }
    let n = rng.gen_range(0..16);
    h.extend(random_bytes(rng, n));
    h
}

fn ipv4_packet<R: Rng + ?Sized>(rng: &mut R) -> Vec<u8> {
    let ihl: u8 = match rng.gen_range(0..20) {
        0..16 => 5,
        16..19 => rng.gen_range(6..=15),
        _ => rng.gen_range(0..5),
    };
    let frag: u16 = match rng.gen_range(0..100) {
        0..80 => pick(rng, &[0, 0x4000]),
        80..90 => 0x2000,
        _ => rng.gen_range(1..=0x1fffu16) | pick(rng, &[0, 0x2000]),
    };
    let proto = random_proto(rng);
    let mut h = vec![0x40 | ihl, 0, 0, 0, rng.r#gen(), rng.r#gen()];
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&random_v4(rng));
    h.extend_from_slice(&random_v4(rng));
    if ihl > 5 {
        h.extend(random_bytes(rng, (usize::from(ihl) - 5) * 4));
    }
    h.extend(l4_header(rng, proto));
    h
}

fn ipv6_packet<R: Rng + ?Sized>(rng: &mut R) -> Vec<u8> {
    let n_ext = match rng.gen_range(0..100) {
        0..55 => 0,
        55..85 => rng.gen_range(1..=3),
        _ => rng.gen_range(4..=10),
    };
    let exts: Vec<u8> = (0..n_ext).map(|_| pick(rng, &[0u8, 43, 44, 60])).collect();
    let proto = random_proto(rng);
    let first = exts.first().copied().unwrap_or(proto);
    let mut h = vec![0x60, 0, 0, 0, 0, 0, first, 64];
    h.extend_from_slice(&random_v6(rng));
    h.extend_from_slice(&random_v6(rng));
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).copied().unwrap_or(proto);
        if *e == 44 {
            let off: u16 = if rng.gen_bool(0.6) {
                0
            } else {
                rng.gen_range(1..=0x1fff)
            };
            let word = (off << 3) | u16::from(rng.gen_bool(0.5));
            h.extend_from_slice(&[next, 0]);
            h.extend_from_slice(&word.to_be_bytes());
            h.extend(random_bytes(rng, 4));
        } else {
            let len = rng.gen_range(0..=2u8);
            h.extend_from_slice(&[next, len]);
            h.extend(random_bytes(rng, usize::from(len) * 8 + 6));
        }
    }
    h.extend(l4_header(rng, proto));
    h
}

fn arp_packet<R: Rng + ?Sized>(rng: &mut R) -> Vec<u8> {
    let standard = rng.gen_bool(0.9);
    let mut h = if standard {
        vec![0, 1, 8, 0, 6, 4]
    } else {
        vec![0, 1, 0x86, 0xdd, 6, 16]
    };
    h.extend_from_slice(&[0, pick(rng, &[1u8, 2])]);
    h.extend(random_bytes(rng, 6));
    h.extend_from_slice(&random_v4(rng));
    h.extend(random_bytes(rng, 6));
    h.extend_from_slice(&random_v4(rng));
    if !standard {
        h.extend(random_bytes(rng, 24));
    }
    h
}

/// A random frame and, rarely, an offloaded VLAN tag: untagged or with 1-3
/// tags (0x8100/0x88a8), IPv4 (options, fragments, bad IHL), IPv6 (extension
/// header chains with fragments), ARP, other EtherTypes, TCP/UDP/ICMP/ICMPv6/
/// other protocols; about 10% truncated at a random length and 3% pure
/// garbage.
pub fn random_frame<R: Rng + ?Sized>(rng: &mut R) -> (Vec<u8>, Option<u16>) {
    let offloaded = rng.gen_bool(0.05).then(|| rng.gen_range(0..4096u16));
    if rng.gen_bool(0.03) {
        let n = rng.gen_range(0..100);
        return (random_bytes(rng, n), offloaded);
    }
    let mut f = random_bytes(rng, 12);
    let tags = match rng.gen_range(0..100) {
        0..70 => 0,
        70..88 => 1,
        88..97 => 2,
        _ => 3,
    };
    let kind = rng.gen_range(0..100);
    let (et, l3) = match kind {
        0..45 => (0x0800, ipv4_packet(rng)),
        45..80 => (0x86dd, ipv6_packet(rng)),
        80..88 => (0x0806, arp_packet(rng)),
        88..96 => (pick(rng, &OTHER_ETHER_TYPE_POOL), {
            let n = rng.gen_range(0..46);
            random_bytes(rng, n)
        }),
        _ => {
            // An IP EtherType with a garbage body.
            let n = rng.gen_range(0..64);
            (
                pick(rng, &[0x0800u16, 0x86dd, 0x0806]),
                random_bytes(rng, n),
            )
        }
    };
    for _ in 0..tags {
        f.extend_from_slice(&pick(rng, &[0x8100u16, 0x88a8]).to_be_bytes());
        f.extend_from_slice(&rng.gen_range(0..4096u16).to_be_bytes());
    }
    f.extend_from_slice(&u16::to_be_bytes(et));
    f.extend(l3);
    if rng.gen_bool(0.1) {
        let n = rng.gen_range(0..=f.len());
        f.truncate(n);
    }
    (f, offloaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::validate_set;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn generated_sets_are_valid() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.gen_range(1..=40);
            let set = random_policy_set(
                &mut rng,
                n,
                &["vm1-tap", "vm2-tap", "vm*-tap", "vnet?"],
                &["mon0", "mon1"],
            );
            let errs = validate_set(&set);
            assert!(errs.is_empty(), "{errs:?}\n{set:#?}");
        }
        let set = random_policy_set(
            &mut rng,
            256,
            &["vm*"],
            &[
                "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m",
            ],
        );
        assert!(validate_set(&set).is_empty());
    }

    #[test]
    fn frames_parse() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut kinds = [0usize; 4];
        for _ in 0..20_000 {
            let (f, vlan) = random_frame(&mut rng);
            let p = super::super::reference::parse(&f, vlan);
            kinds[0] += usize::from(p.ports.is_some());
            kinds[1] += usize::from(p.tcp_flags.is_some());
            kinds[2] += usize::from(matches!(p.src, Some(std::net::IpAddr::V6(_))));
            kinds[3] += usize::from(p.fragment);
        }
        assert!(kinds.iter().all(|k| *k > 200), "{kinds:?}");
    }
}
