//! The reference classifier: which enabled policies fire for one raw
//! Ethernet frame seen on one tapped interface in one direction. It is written
//! from the policy semantics, not from the compiled tables, and it parses the
//! frame itself. It is the specification that the C datapath
//! (`ebpf/vtap_tc.c`) and [`compile`](mod@super::compile) must meet; the
//! differential tests compare them against it.
//!
//! # Matching
//!
//! A policy fires when it is enabled, one of its `taps` globs matches the
//! interface name, its `direction` includes the packet's direction, and its
//! `match` accepts the packet. Every field of `match` is optional; a given
//! field accepts a packet only when the packet **has** a value for it and the
//! value is accepted:
//!
//! | field | packet value | accepted when |
//! |---|---|---|
//! | `ether_type` | EtherType after the VLAN tags | equal |
//! | `src` / `dst` | IPv4/IPv6 source/destination, ARP sender/target IP | inside one of the prefixes (same family) |
//! | `protocol` | IPv4 protocol / IPv6 last next-header | equal |
//! | `src_ports` / `dst_ports` | TCP/UDP ports | inside one of the ranges |
//! | `tcp_flags` | TCP flags byte | `flags & mask == value` |
//!
//! With `bidirectional: true` the policy also fires when the packet matches
//! with source and destination swapped (addresses *and* ports together).
//!
//! # Parsing (what value a packet has for each field)
//!
//! Lengths come from the frame, never from IP length fields; the IP version
//! nibble is not checked (the EtherType decides). A field whose bytes are not
//! in the frame is unknown, and so is everything after it — never a panic or
//! an out-of-bounds read; `truncated` is set when a header that was needed
//! ends early. `ebpf/include/parse.h` implements the same rules.
//!
//! * **Ethernet**: 14 bytes, else nothing is known. Up to 2 VLAN tags in the
//!   data (TPID 0x8100 or 0x88a8, in any order) are skipped; the EtherType is
//!   the one after them (a third tag leaves EtherType 0x8100/0x88a8, a non-IP
//!   packet). A tag cut short leaves the EtherType unknown. An offloaded tag
//!   (`offloaded_vlan`, skb->vlan_tci) is not in the data; it only sets
//!   `vlan_id`/`tagged` and does not count against the 2 tags.
//! * **ARP** (0x0806): needs the 28 bytes of an Ethernet/IPv4 ARP header.
//!   For Ethernet/IPv4 ARP (htype 1, ptype 0x0800, hlen 6, plen 4),
//!   src = sender IP, dst = target IP; other ARP has no addresses. ARP has no
//!   protocol, ports or flags.
//! * **IPv4** (0x0800): the 20 fixed bytes give the addresses and the
//!   protocol (otherwise nothing, `truncated`). IHL < 5: no L4 (`truncated`).
//!   A fragment with offset != 0 has no L4 header (`fragment`): no ports, no
//!   flags. Otherwise the L4 header starts after IHL * 4 bytes (options are
//!   skipped, not read).
//! * **IPv6** (0x86dd): the 40 fixed bytes give the addresses (otherwise
//!   nothing, `truncated`). Extension headers hop-by-hop (0), routing (43),
//!   fragment (44) and destination options (60) are skipped, in any order, at
//!   most 8 of them: the first 8 bytes of each must be in the frame (next
//!   header, length); its length is `(len + 1) * 8` (fragment: 8). A missing
//!   extension header (`truncated`) or a 9th one leaves the protocol unknown,
//!   and no ports. A fragment header with offset != 0 ends the chain:
//!   protocol = its next header, `fragment`, no ports/flags. Other next
//!   headers (AH 51, ESP 50, 59, ...) are the protocol.
//! * **TCP** (6): ports need the first 4 bytes of the header, the flags byte
//!   (offset 13) needs 14 bytes. **UDP** (17): ports need 4 bytes. A TCP/UDP
//!   header cut short sets `truncated`. Other protocols (ICMP, ICMPv6, ...)
//!   have a protocol only.
//! * Any other EtherType (including 802.3 length values < 0x0600): EtherType
//!   only.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vtap_abi::{Dir, parse_flags};

use super::model::{
    ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Policy, parse_cidr, parse_port_spec, parse_tcp_flag,
};

/// TPIDs of VLAN tags skipped in the data.
pub const VLAN_TPIDS: [u16; 2] = [0x8100, 0x88a8];
/// VLAN tags skipped in the data.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers skipped.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// IPv6 extension headers that are skipped (others are the protocol).
pub const IPV6_EXT_HEADERS: [u8; 4] = [0, 43, 44, 60];

/// What a frame says about each match field (`None` = the packet has no value
/// for it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Outermost VLAN id (offloaded, else the first tag in the data), 0 = none.
    pub vlan_id: u16,
    /// At least one VLAN tag (offloaded or in the data).
    pub tagged: bool,
    /// EtherType after the VLAN tags.
    pub ether_type: Option<u16>,
    /// Offset of the L3 header (after the tags).
    pub l3_off: Option<usize>,
    /// Source address (IPv4, IPv6, or the ARP sender IP).
    pub src: Option<IpAddr>,
    /// Destination address (or the ARP target IP).
    pub dst: Option<IpAddr>,
    /// IP protocol (IPv6: the next header after the extension headers).
    pub proto: Option<u8>,
    /// Offset of the L4 header (set with `proto`, except for non-first
    /// fragments).
    pub l4_off: Option<usize>,
    /// (source, destination) ports: TCP/UDP, first fragment.
    pub ports: Option<(u16, u16)>,
    /// TCP flags byte.
    pub tcp_flags: Option<u8>,
    /// A non-first fragment.
    pub fragment: bool,
    /// A header ended before the bytes needed; parsing stopped there.
    pub truncated: bool,
}

impl Parsed {
    /// The `vtap_parse.flags` the datapath should report for this frame.
    pub fn flags(&self) -> u16 {
        let mut f = 0;
        if self.src.is_some() {
            f |= parse_flags::IP;
            if matches!(self.src, Some(IpAddr::V6(_))) {
                f |= parse_flags::IPV6;
            }
        }
        if self.proto.is_some() {
            f |= parse_flags::L4;
        }
        if self.ports.is_some() {
            f |= parse_flags::PORTS;
        }
        if self.tcp_flags.is_some() {
            f |= parse_flags::TCP_FLAGS;
        }
        if self.fragment {
            f |= parse_flags::FRAGMENT;
        }
        if self.truncated {
            f |= parse_flags::TRUNCATED;
        }
        if self.tagged {
            f |= parse_flags::TAGGED;
        }
        f
    }
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

fn v4_at(b: &[u8], off: usize) -> Option<IpAddr> {
    let s: [u8; 4] = b.get(off..off + 4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(s)))
}

fn v6_at(b: &[u8], off: usize) -> Option<IpAddr> {
    let s: [u8; 16] = b.get(off..off + 16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(s)))
}

/// Parses a raw Ethernet frame (see the module doc).
pub fn parse(frame: &[u8], offloaded_vlan: Option<u16>) -> Parsed {
    let mut p = Parsed::default();
    if let Some(tci) = offloaded_vlan {
        p.tagged = true;
        p.vlan_id = tci & 0x0fff;
    }
    let Some(mut et) = be16(frame, 12) else {
        p.truncated = true;
        return p;
    };
    let mut off = 14;
    let mut tags = 0;
    while VLAN_TPIDS.contains(&et) && tags < MAX_VLAN_TAGS {
        let (Some(tci), Some(inner)) = (be16(frame, off), be16(frame, off + 2)) else {
            p.truncated = true;
            return p;
        };
        if !p.tagged {
            p.vlan_id = tci & 0x0fff;
        }
        p.tagged = true;
        et = inner;
        off += 4;
        tags += 1;
    }
    p.ether_type = Some(et);
    p.l3_off = Some(off);
    let l3 = &frame[off.min(frame.len())..];
    match et {
        ETH_P_IP => parse_ipv4(l3, off, &mut p),
        ETH_P_IPV6 => parse_ipv6(l3, off, &mut p),
        ETH_P_ARP => parse_arp(l3, &mut p),
        _ => {}
    }
    p
}

fn parse_arp(b: &[u8], p: &mut Parsed) {
    if b.len() < 28 {
        p.truncated = true;
        return;
    }
    let ethernet_ipv4 =
        be16(b, 0) == Some(1) && be16(b, 2) == Some(ETH_P_IP) && b[4] == 6 && b[5] == 4;
    if ethernet_ipv4 {
        p.src = v4_at(b, 14);
        p.dst = v4_at(b, 24);
    }
}

fn parse_ipv4(b: &[u8], l3_off: usize, p: &mut Parsed) {
    if b.len() < 20 {
        p.truncated = true;
        return;
    }
    p.src = v4_at(b, 12);
    p.dst = v4_at(b, 16);
    p.proto = Some(b[9]);
    let ihl = usize::from(b[0] & 0x0f);
    if ihl < 5 {
        p.truncated = true;
        return;
    }
    if be16(b, 6).unwrap_or(0) & 0x1fff != 0 {
        p.fragment = true;
        return;
    }
    let hlen = ihl * 4;
    parse_l4(b.get(hlen..).unwrap_or(&[]), l3_off + hlen, b[9], p);
}

fn parse_ipv6(b: &[u8], l3_off: usize, p: &mut Parsed) {
    if b.len() < 40 {
        p.truncated = true;
        return;
    }
    p.src = v6_at(b, 8);
    p.dst = v6_at(b, 24);
    let mut nh = b[6];
    let mut cur = 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !IPV6_EXT_HEADERS.contains(&nh) {
            break;
        }
        // Every extension header is at least 8 bytes; its first 8 must be
        // present (the rest is skipped, not read).
        let Some(h) = b.get(cur..cur + 8) else {
            p.truncated = true;
            return;
        };
        if nh == 44 {
            nh = h[0];
            cur += 8;
            if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                // A later fragment: what follows is payload.
                p.proto = Some(nh);
                p.fragment = true;
                return;
            }
        } else {
            nh = h[0];
            cur += (usize::from(h[1]) + 1) * 8;
        }
    }
    if IPV6_EXT_HEADERS.contains(&nh) {
        // A 9th extension header: the protocol stays unknown.
        return;
    }
    p.proto = Some(nh);
    parse_l4(b.get(cur..).unwrap_or(&[]), l3_off + cur, nh, p);
}

fn parse_l4(b: &[u8], l4_off: usize, proto: u8, p: &mut Parsed) {
    p.l4_off = Some(l4_off);
    if proto != 6 && proto != 17 {
        return;
    }
    let (Some(sp), Some(dp)) = (be16(b, 0), be16(b, 2)) else {
        p.truncated = true;
        return;
    };
    p.ports = Some((sp, dp));
    if proto == 6 {
        match b.get(13) {
            Some(f) => p.tcp_flags = Some(*f),
            None => p.truncated = true,
        }
    }
}

/// Whether `addr` is inside one of the prefixes `list` (absent = any).
fn addr_ok(list: &Option<Vec<String>>, addr: Option<IpAddr>) -> bool {
    let Some(list) = list else { return true };
    let Some(addr) = addr else { return false };
    list.iter()
        .filter_map(|s| parse_cidr(s).ok())
        .any(|n| n.contains(&addr))
}

fn port_ok(list: &Option<Vec<super::model::PortSpec>>, port: Option<u16>) -> bool {
    let Some(list) = list else { return true };
    let Some(port) = port else { return false };
    list.iter()
        .filter_map(|s| parse_port_spec(s).ok())
        .any(|(lo, hi)| lo <= port && port <= hi)
}

/// Whether one policy's `match` accepts a parsed packet (ignoring taps,
/// direction and `enabled`).
pub fn matches(policy: &Policy, pkt: &Parsed) -> bool {
    let m = &policy.r#match;
    if m.ether_type.is_some() && (m.ether_type() != pkt.ether_type || pkt.ether_type.is_none()) {
        return false;
    }
    if m.protocol.is_some() && (m.protocol() != pkt.proto || pkt.proto.is_none()) {
        return false;
    }
    if let Some(flags) = &m.tcp_flags {
        let Some(value) = pkt.tcp_flags else {
            return false;
        };
        for f in flags {
            let Ok((bit, set)) = parse_tcp_flag(f) else {
                return false;
            };
            if (value & bit != 0) != set {
                return false;
            }
        }
    }
    let (sp, dp) = match pkt.ports {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    let forward = addr_ok(&m.src, pkt.src)
        && addr_ok(&m.dst, pkt.dst)
        && port_ok(&m.src_ports, sp)
        && port_ok(&m.dst_ports, dp);
    let reverse = m.bidirectional
        && addr_ok(&m.src, pkt.dst)
        && addr_ok(&m.dst, pkt.src)
        && port_ok(&m.src_ports, dp)
        && port_ok(&m.dst_ports, sp);
    forward || reverse
}

/// The names of the enabled policies that fire for `frame`, seen on
/// interface `ifname` in direction `dir`. `policies` should be a valid set
/// ([`validate_set`](super::validate::validate_set)).
pub fn classify(
    policies: &[Policy],
    ifname: &str,
    dir: Dir,
    frame: &[u8],
    offloaded_vlan: Option<u16>,
) -> BTreeSet<String> {
    let pkt = parse(frame, offloaded_vlan);
    policies
        .iter()
        .filter(|p| {
            p.enabled && p.direction.includes(dir) && p.taps_match(ifname) && matches(p, &pkt)
        })
        .map(|p| p.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::parse_str;

    fn eth(et: u16, tags: &[(u16, u16)], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        let mut types: Vec<u16> = tags.iter().map(|t| t.0).collect();
        types.push(et);
        f.extend_from_slice(&types[0].to_be_bytes());
        for (i, (_, vid)) in tags.iter().enumerate() {
            f.extend_from_slice(&vid.to_be_bytes());
            f.extend_from_slice(&types[i + 1].to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], opts: usize, frag: u16, l4: &[u8]) -> Vec<u8> {
        let ihl = 5 + opts as u8;
        let mut h = vec![0x40 | ihl, 0, 0, 0, 0, 0];
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend(std::iter::repeat_n(1u8, opts * 4));
        h.extend_from_slice(l4);
        h
    }

    fn tcp(sp: u16, dp: u16, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sp.to_be_bytes());
        t.extend_from_slice(&dp.to_be_bytes());
        t.extend_from_slice(&[0; 8]);
        t.extend_from_slice(&[0x50, flags, 0, 0, 0, 0, 0, 0]);
        t
    }

    fn ipv6(nh: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 0, nh, 64];
        h.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(ext);
        h.extend_from_slice(l4);
        h
    }

    #[test]
    fn parse_tcp_ipv4_with_tags_and_options() {
        let f = eth(
            ETH_P_IP,
            &[(0x88a8, 10), (0x8100, 20)],
            &ipv4(
                6,
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                2,
                0x4000,
                &tcp(1234, 80, 0x12),
            ),
        );
        let p = parse(&f, None);
        assert_eq!(p.vlan_id, 10);
        assert_eq!(p.ether_type, Some(ETH_P_IP));
        assert_eq!(p.l3_off, Some(22));
        assert_eq!(p.src, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(p.proto, Some(6));
        assert_eq!(p.l4_off, Some(22 + 28));
        assert_eq!(p.ports, Some((1234, 80)));
        assert_eq!(p.tcp_flags, Some(0x12));
        assert!(!p.truncated && !p.fragment);
        // Truncations at every length: never a panic; fields appear in order.
        for n in 0..22 + 28 + 14 {
            let q = parse(&f[..n], Some(5));
            assert!(q.truncated, "{n}");
            assert_eq!(q.vlan_id, 5);
            assert!(q.tcp_flags.is_none(), "flags at {n}");
        }
        assert_eq!(
            parse(&f[..22 + 28 + 14], None),
            Parsed {
                truncated: false,
                ..p.clone()
            }
        );
        assert!(parse(&f[..22 + 28 + 13], None).ports.is_some());
        assert!(parse(&f[..22 + 28 + 3], None).ports.is_none());
        assert_eq!(parse(&f[..22 + 28], None).proto, Some(6));
        // Options cut short: protocol known (fixed header), no ports.
        let q = parse(&f[..22 + 27], None);
        assert_eq!((q.proto, q.ports, q.truncated), (Some(6), None, true));
        assert!(q.src.is_some());
        assert_eq!(q.l4_off, Some(22 + 28));
        let q = parse(&f[..22 + 19], None);
        assert!(q.src.is_none() && q.proto.is_none());
    }

    #[test]
    fn three_tags_is_not_ip() {
        let f = eth(
            ETH_P_IP,
            &[(0x8100, 1), (0x8100, 2), (0x8100, 3)],
            &ipv4(17, [1; 4], [2; 4], 0, 0, &[0; 8]),
        );
        let p = parse(&f, None);
        assert_eq!(p.ether_type, Some(0x8100));
        assert!(p.src.is_none());
    }

    #[test]
    fn fragments() {
        let f = eth(ETH_P_IP, &[], &ipv4(17, [1; 4], [2; 4], 0, 0x0001, &[0; 8]));
        let p = parse(&f, None);
        assert!(p.fragment && p.proto == Some(17) && p.ports.is_none());
        // First fragment (MF set, offset 0) has ports.
        let f = eth(
            ETH_P_IP,
            &[],
            &ipv4(17, [1; 4], [2; 4], 0, 0x2000, &[0, 1, 0, 2, 0, 0, 0, 0]),
        );
        assert_eq!(parse(&f, None).ports, Some((1, 2)));
        // ihl < 5: addresses and protocol, no L4.
        let mut h = ipv4(17, [1; 4], [2; 4], 0, 0, &[0; 8]);
        h[0] = 0x44;
        let p = parse(&eth(ETH_P_IP, &[], &h), None);
        assert!(
            p.src.is_some()
                && p.proto == Some(17)
                && p.ports.is_none()
                && p.l4_off.is_none()
                && p.truncated
        );
    }

    #[test]
    fn ipv6_extension_headers() {
        // hop-by-hop (8 bytes) → fragment (offset 0) → dstopts (16 bytes) → udp
        let mut ext = vec![44, 0, 0, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&[60, 0, 0, 1, 0, 0, 0, 0]);
        ext.extend_from_slice(&[17, 1]);
        ext.extend_from_slice(&[0; 14]);
        let f = eth(
            ETH_P_IPV6,
            &[],
            &ipv6(0, &ext, &[0, 53, 0x30, 0x39, 0, 8, 0, 0]),
        );
        let p = parse(&f, None);
        assert_eq!(p.proto, Some(17));
        assert_eq!(p.ports, Some((53, 12345)));
        assert_eq!(p.l4_off, Some(14 + 40 + 32));
        // Non-first fragment.
        let f = eth(
            ETH_P_IPV6,
            &[],
            &ipv6(44, &[6, 0, 0, 8, 0, 0, 0, 1], &[0; 20]),
        );
        let p = parse(&f, None);
        assert_eq!((p.proto, p.fragment, p.ports), (Some(6), true, None));
        // 8 extension headers are fine, 9 are too many.
        let chain = |n: usize| {
            let mut e = Vec::new();
            for i in 0..n {
                e.extend_from_slice(&[if i + 1 == n { 58 } else { 60 }, 0, 0, 0, 0, 0, 0, 0]);
            }
            eth(ETH_P_IPV6, &[], &ipv6(60, &e, &[128, 0, 0, 0]))
        };
        assert_eq!(parse(&chain(8), None).proto, Some(58));
        let p = parse(&chain(9), None);
        assert_eq!(p.proto, None);
        assert!(p.src.is_some());
        // A missing extension header.
        let f = chain(3);
        let p = parse(&f[..14 + 40 + 20], None);
        assert!(p.proto.is_none() && p.truncated);
        // A long last extension header cut short: protocol known, no ports.
        let mut ext = vec![17, 2];
        ext.extend_from_slice(&[0; 22]);
        let f = eth(
            ETH_P_IPV6,
            &[],
            &ipv6(60, &ext, &[0, 53, 0, 53, 0, 8, 0, 0]),
        );
        assert_eq!(parse(&f, None).ports, Some((53, 53)));
        let p = parse(&f[..14 + 40 + 10], None);
        assert_eq!((p.proto, p.ports, p.truncated), (Some(17), None, true));
    }

    #[test]
    fn arp() {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
        a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let p = parse(&eth(ETH_P_ARP, &[], &a), None);
        assert_eq!(p.src, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(p.dst, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(p.proto, None);
        let p = parse(&eth(ETH_P_ARP, &[], &a[..27]), None);
        assert!(p.src.is_none() && p.truncated);
        // Not Ethernet/IPv4: no addresses, not truncated.
        a[2] = 0x86;
        let p = parse(&eth(ETH_P_ARP, &[], &a), None);
        assert!(p.src.is_none() && !p.truncated);
    }

    #[test]
    fn classify_semantics() {
        let ps = parse_str(
            r#"
version: 1
name: web
taps: ["vm*-tap"]
direction: ingress
match: {src: [10.0.0.0/24], dst: [10.0.0.2], protocol: tcp, dst_ports: [80], bidirectional: true}
outputs: [{interface: mon0, vlan: 200}]
---
version: 1
name: syn
taps: [vm1-tap]
match: {tcp_flags: [syn, "!ack"]}
outputs: [{interface: mon0, vlan: 300}]
---
version: 1
name: off
enabled: false
taps: [vm1-tap]
outputs: [{interface: mon0, vlan: 400}]
"#,
            "t",
        )
        .unwrap();
        let req = eth(
            ETH_P_IP,
            &[],
            &ipv4(6, [10, 0, 0, 1], [10, 0, 0, 2], 0, 0, &tcp(40000, 80, 0x02)),
        );
        let resp = eth(
            ETH_P_IP,
            &[],
            &ipv4(6, [10, 0, 0, 2], [10, 0, 0, 1], 0, 0, &tcp(80, 40000, 0x12)),
        );
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            classify(&ps, "vm1-tap", Dir::Ingress, &req, None),
            names(&["syn", "web"])
        );
        assert_eq!(
            classify(&ps, "vm2-tap", Dir::Ingress, &resp, None),
            names(&["web"])
        );
        assert_eq!(
            classify(&ps, "vm1-tap", Dir::Egress, &resp, None),
            names(&[])
        );
        assert_eq!(
            classify(&ps, "vm1-tap", Dir::Egress, &req, None),
            names(&["syn"])
        );
        // A non-first fragment has no flags and no ports.
        let frag = eth(
            ETH_P_IP,
            &[],
            &ipv4(
                6,
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                0,
                0x0010,
                &tcp(40000, 80, 0x02),
            ),
        );
        assert_eq!(
            classify(&ps, "vm1-tap", Dir::Ingress, &frag, None),
            names(&[])
        );
    }
}
