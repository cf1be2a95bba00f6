//! BPF_PROG_TEST_RUN tests: crafted frames through the real TC programs with
//! real policy sets applied through compile → resolve → reconcile. Every run
//! also checks that the program returned TC_ACT_UNSPEC and that the frame
//! came back byte for byte (`Harness::run`). Needs root; in CI never skips.

mod common;

use common::frames::{self, Ext, L4, V4, arp, ipv4, ipv6, pad, v6};
use common::{Harness, policy, private_netns, require_root};
use vtap_abi::{Dir, drop_reason};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
const C: [u8; 4] = [10, 0, 1, 9];
const Q: u16 = 0x8100;
const AD: u16 = 0x88a8;

fn set(names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn harness(deliver: bool, yamls: &[&str]) -> Option<Harness> {
    if !require_root() {
        return None;
    }
    private_netns();
    let mut h = Harness::new(deliver);
    h.apply(yamls.iter().map(|y| policy(y)).collect());
    Some(h)
}

fn p(name: &str, extra: &str) -> String {
    format!(
        "version: 1\nname: {name}\ntaps: [vm1-tap]\noutputs: [{{interface: mon0, vlan: 100}}]\n{extra}"
    )
}

#[test]
fn direction_field() {
    let (i, e, b) = (
        p("in", "direction: ingress"),
        p("out", "direction: egress"),
        p("both", ""),
    );
    let Some(h) = harness(false, &[&i, &e, &b]) else {
        return;
    };
    let f = pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()));
    assert_eq!(h.classify(Dir::Ingress, &f), set(&["in", "both"]));
    assert_eq!(h.classify(Dir::Egress, &f), set(&["out", "both"]));
}

#[test]
fn tap_field() {
    let other = "version: 1\nname: other\ntaps: [vm2-tap]\noutputs: [{interface: mon0}]\n";
    let glob = "version: 1\nname: glob\ntaps: [\"vm*-tap\"]\noutputs: [{interface: mon0}]\n";
    let Some(h) = harness(false, &[other, glob]) else {
        return;
    };
    let f = pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()));
    assert_eq!(h.classify(Dir::Ingress, &f), set(&["glob"]));
}

#[test]
fn ether_type_field() {
    let (v4, v6p, ar, num) = (
        p("v4", "match: {ether_type: ipv4}"),
        p("v6", "match: {ether_type: ipv6}"),
        p("arp", "match: {ether_type: arp}"),
        p("lldp", "match: {ether_type: 0x88cc}"),
    );
    let Some(h) = harness(false, &[&v4, &v6p, &ar, &num]) else {
        return;
    };
    for d in Dir::ALL {
        assert_eq!(
            h.classify(d, &pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()))),
            set(&["v4"])
        );
        assert_eq!(
            h.classify(d, &ipv6(&[], v6(1), v6(2), &[], &L4::Icmpv6)),
            set(&["v6"])
        );
        assert_eq!(h.classify(d, &pad(arp(&[], A, B))), set(&["arp"]));
        assert_eq!(
            h.classify(d, &pad(frames::eth(&[], 0x88cc))),
            set(&["lldp"])
        );
        // Tagged frames: the ether_type after the tags counts.
        assert_eq!(
            h.classify(d, &pad(ipv4(&[(Q, 5)], A, B, &L4::Icmp, &V4::default()))),
            set(&["v4"])
        );
        assert_eq!(
            h.classify(d, &ipv6(&[(AD, 7), (Q, 5)], v6(1), v6(2), &[], &L4::Icmpv6)),
            set(&["v6"])
        );
    }
}

#[test]
fn cidr_fields_v4_and_v6() {
    let (s, d, both, six, mixed) = (
        p("src", "match: {src: [10.0.0.0/24]}"),
        p("dst", "match: {dst: [10.0.0.2/32, 10.0.1.0/24]}"),
        p("both", "match: {src: [10.0.0.1], dst: [10.0.0.0/16]}"),
        p(
            "six",
            "match: {src: [\"fd00::/64\"], dst: [\"fd00::2/128\"]}",
        ),
        p("mixed", "match: {src: [10.0.1.0/24, \"fd00::1/128\"]}"),
    );
    let Some(h) = harness(false, &[&s, &d, &both, &six, &mixed]) else {
        return;
    };
    let icmp = |a, b| pad(ipv4(&[], a, b, &L4::Icmp, &V4::default()));
    assert_eq!(
        h.classify(Dir::Ingress, &icmp(A, B)),
        set(&["src", "dst", "both"])
    );
    assert_eq!(h.classify(Dir::Ingress, &icmp(B, A)), set(&["src"]));
    assert_eq!(h.classify(Dir::Egress, &icmp(C, C)), set(&["dst", "mixed"]));
    assert_eq!(
        h.classify(Dir::Ingress, &icmp([192, 168, 1, 1], B)),
        set(&["dst"])
    );
    let i6 = |a, b| ipv6(&[], a, b, &[], &L4::Icmpv6);
    assert_eq!(
        h.classify(Dir::Ingress, &i6(v6(1), v6(2))),
        set(&["six", "mixed"])
    );
    assert_eq!(h.classify(Dir::Ingress, &i6(v6(2), v6(1))), set(&[]));
    // ARP: sender/target addresses count as src/dst.
    assert_eq!(
        h.classify(Dir::Ingress, &pad(arp(&[], A, B))),
        set(&["src", "dst", "both"])
    );
    // Non-IP never matches an address constraint.
    assert_eq!(
        h.classify(Dir::Ingress, &pad(frames::eth(&[], 0x88cc))),
        set(&[])
    );
}

#[test]
fn cidr_fields_through_lpm_tries() {
    // The same set as cidr_fields_v4_and_v6, with every address table in
    // its LPM trie instead of the per-length hashes.
    if !require_root() {
        return;
    }
    private_netns();
    let mut h = Harness::new(false);
    h.hash_lens = 0;
    h.apply(
        [
            p("src", "match: {src: [10.0.0.0/24]}"),
            p("dst", "match: {dst: [10.0.0.2/32, 10.0.1.0/24]}"),
            p(
                "six",
                "match: {src: [\"fd00::/64\"], dst: [\"fd00::2/128\"]}",
            ),
        ]
        .iter()
        .map(|y| policy(y))
        .collect(),
    );
    let icmp = |a, b| pad(ipv4(&[], a, b, &L4::Icmp, &V4::default()));
    assert_eq!(h.classify(Dir::Ingress, &icmp(A, B)), set(&["src", "dst"]));
    assert_eq!(h.classify(Dir::Egress, &icmp(C, C)), set(&["dst"]));
    assert_eq!(
        h.classify(Dir::Ingress, &ipv6(&[], v6(1), v6(2), &[], &L4::Icmpv6)),
        set(&["six"])
    );
}

#[test]
fn protocol_and_port_fields() {
    let (tcp, udp, icmp, web, dns, range, num) = (
        p("tcp", "match: {protocol: tcp}"),
        p("udp", "match: {protocol: udp}"),
        p("icmp", "match: {protocol: icmp}"),
        p("web", "match: {protocol: tcp, dst_ports: [80, 443]}"),
        p("dns", "match: {src_ports: [53]}"),
        p(
            "range",
            "match: {protocol: udp, dst_ports: [\"1000-2000\"]}",
        ),
        p("gre", "match: {protocol: 47}"),
    );
    let Some(h) = harness(false, &[&tcp, &udp, &icmp, &web, &dns, &range, &num]) else {
        return;
    };
    let f = |l4: L4| pad(ipv4(&[], A, B, &l4, &V4::default()));
    assert_eq!(
        h.classify(
            Dir::Ingress,
            &f(L4::Tcp {
                sport: 5555,
                dport: 443,
                flags: 0x10
            })
        ),
        set(&["tcp", "web"])
    );
    assert_eq!(
        h.classify(
            Dir::Ingress,
            &f(L4::Tcp {
                sport: 53,
                dport: 8080,
                flags: 0x10
            })
        ),
        set(&["tcp", "dns"])
    );
    assert_eq!(
        h.classify(
            Dir::Egress,
            &f(L4::Udp {
                sport: 53,
                dport: 1000
            })
        ),
        set(&["udp", "dns", "range"])
    );
    assert_eq!(
        h.classify(
            Dir::Egress,
            &f(L4::Udp {
                sport: 54,
                dport: 2000
            })
        ),
        set(&["udp", "range"])
    );
    assert_eq!(
        h.classify(
            Dir::Egress,
            &f(L4::Udp {
                sport: 54,
                dport: 2001
            })
        ),
        set(&["udp"])
    );
    assert_eq!(h.classify(Dir::Ingress, &f(L4::Icmp)), set(&["icmp"]));
    assert_eq!(
        h.classify(Dir::Ingress, &f(L4::Raw(47, vec![0; 8]))),
        set(&["gre"])
    );
    // IPv6 with ports.
    let f6 = ipv6(
        &[],
        v6(1),
        v6(2),
        &[],
        &L4::Tcp {
            sport: 1,
            dport: 80,
            flags: 2,
        },
    );
    assert_eq!(h.classify(Dir::Ingress, &f6), set(&["tcp", "web"]));
}

#[test]
fn tcp_flags_field() {
    let (syn, synonly, rst) = (
        p("syn", "match: {tcp_flags: [syn]}"),
        p(
            "synonly",
            "match: {protocol: tcp, tcp_flags: [syn, \"!ack\"]}",
        ),
        p("rst", "match: {tcp_flags: [rst]}"),
    );
    let Some(h) = harness(false, &[&syn, &synonly, &rst]) else {
        return;
    };
    let f = |flags| {
        pad(ipv4(
            &[],
            A,
            B,
            &L4::Tcp {
                sport: 1,
                dport: 2,
                flags,
            },
            &V4::default(),
        ))
    };
    assert_eq!(h.classify(Dir::Ingress, &f(0x02)), set(&["syn", "synonly"]));
    assert_eq!(h.classify(Dir::Ingress, &f(0x12)), set(&["syn"]));
    assert_eq!(h.classify(Dir::Ingress, &f(0x14)), set(&["rst"]));
    assert_eq!(h.classify(Dir::Ingress, &f(0x10)), set(&[]));
    // UDP never matches a flags constraint.
    assert_eq!(
        h.classify(
            Dir::Ingress,
            &pad(ipv4(
                &[],
                A,
                B,
                &L4::Udp { sport: 1, dport: 2 },
                &V4::default()
            ))
        ),
        set(&[])
    );
}

#[test]
fn bidirectional_field() {
    let (bi, uni) = (
        p(
            "bi",
            "match: {src: [10.0.0.1/32], dst: [10.0.0.2/32], protocol: tcp, dst_ports: [80], bidirectional: true}",
        ),
        p(
            "uni",
            "match: {src: [10.0.0.1/32], dst: [10.0.0.2/32], protocol: tcp, dst_ports: [80]}",
        ),
    );
    let Some(h) = harness(false, &[&bi, &uni]) else {
        return;
    };
    let fwd = pad(ipv4(
        &[],
        A,
        B,
        &L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: 0x02,
        },
        &V4::default(),
    ));
    let rev = pad(ipv4(
        &[],
        B,
        A,
        &L4::Tcp {
            sport: 80,
            dport: 40000,
            flags: 0x12,
        },
        &V4::default(),
    ));
    let other = pad(ipv4(
        &[],
        B,
        A,
        &L4::Tcp {
            sport: 81,
            dport: 40000,
            flags: 0x12,
        },
        &V4::default(),
    ));
    assert_eq!(h.classify(Dir::Ingress, &fwd), set(&["bi", "uni"]));
    assert_eq!(h.classify(Dir::Egress, &rev), set(&["bi"]));
    assert_eq!(h.classify(Dir::Egress, &other), set(&[]));
}

#[test]
fn ipv4_options_and_fragments() {
    let (web, tcp) = (
        p("web", "match: {dst_ports: [80]}"),
        p("tcp", "match: {protocol: tcp}"),
    );
    let Some(h) = harness(false, &[&web, &tcp]) else {
        return;
    };
    let l4 = L4::Tcp {
        sport: 1,
        dport: 80,
        flags: 2,
    };
    let opts = ipv4(
        &[],
        A,
        B,
        &l4,
        &V4 {
            options: 12,
            ..Default::default()
        },
    );
    assert_eq!(h.classify(Dir::Ingress, &opts), set(&["web", "tcp"]));
    let first = ipv4(
        &[],
        A,
        B,
        &l4,
        &V4 {
            more_fragments: true,
            ..Default::default()
        },
    );
    assert_eq!(h.classify(Dir::Ingress, &first), set(&["web", "tcp"]));
    // A non-first fragment carries no ports (its payload is not a TCP header).
    let later = ipv4(
        &[],
        A,
        B,
        &l4,
        &V4 {
            frag_offset: 100,
            more_fragments: false,
            ..Default::default()
        },
    );
    assert_eq!(h.classify(Dir::Ingress, &later), set(&["tcp"]));
}

#[test]
fn ipv6_extension_headers() {
    let (web, udp) = (
        p("web", "match: {dst_ports: [80]}"),
        p("udp", "match: {protocol: udp}"),
    );
    let Some(h) = harness(false, &[&web, &udp]) else {
        return;
    };
    let tcp = L4::Tcp {
        sport: 1,
        dport: 80,
        flags: 2,
    };
    let chain = [Ext::HopByHop, Ext::Routing, Ext::DestOpts];
    assert_eq!(
        h.classify(Dir::Ingress, &ipv6(&[], v6(1), v6(2), &chain, &tcp)),
        set(&["web"])
    );
    let frag0 = [
        Ext::HopByHop,
        Ext::Fragment {
            offset: 0,
            more: true,
        },
    ];
    assert_eq!(
        h.classify(Dir::Ingress, &ipv6(&[], v6(1), v6(2), &frag0, &tcp)),
        set(&["web"])
    );
    let later = [Ext::Fragment {
        offset: 20,
        more: false,
    }];
    let u = L4::Udp {
        sport: 1,
        dport: 80,
    };
    assert_eq!(
        h.classify(Dir::Ingress, &ipv6(&[], v6(1), v6(2), &later, &u)),
        set(&["udp"])
    );
    // Longer chain than the parser follows: protocol unknown, nothing fires.
    let long: Vec<Ext> = (0..9).map(|_| Ext::DestOpts).collect();
    assert_eq!(
        h.classify(Dir::Ingress, &ipv6(&[], v6(1), v6(2), &long, &u)),
        set(&[])
    );
}

#[test]
fn truncated_and_odd_frames_pass_unchanged() {
    let (any, web) = (
        p("any", ""),
        p("web", "match: {protocol: tcp, dst_ports: [80]}"),
    );
    let Some(h) = harness(false, &[&any, &web]) else {
        return;
    };
    let full = ipv4(
        &[(Q, 3), (AD, 4)],
        A,
        B,
        &L4::Tcp {
            sport: 1,
            dport: 80,
            flags: 2,
        },
        &V4 {
            options: 8,
            ..Default::default()
        },
    );
    // Every prefix of a valid frame (down to 14 bytes: BPF_PROG_TEST_RUN's
    // minimum) passes unchanged; the catch-all policy always fires; the port
    // policy fires only once the TCP ports are present.
    let ports_end = 14 + 8 + 28 + 4;
    for len in 14..=full.len() {
        let f = &full[..len];
        let fired = h.classify(Dir::Ingress, f);
        assert!(fired.contains("any"), "len {len}");
        assert_eq!(fired.contains("web"), len >= ports_end, "len {len}");
    }
    // Garbage of odd sizes.
    for len in [14usize, 15, 33, 61, 127, 1500] {
        let f: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        h.run(Dir::Egress, &f);
    }
    // IHL < 5 and a 3-tag frame.
    let mut bad = pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()));
    bad[14] = 0x43;
    h.run(Dir::Ingress, &bad);
    h.run(
        Dir::Ingress,
        &pad(frames::eth(&[(Q, 1), (Q, 2), (Q, 3)], 0x0800)),
    );
}

#[test]
fn copies_are_counted_per_policy_and_output() {
    let (a, b) = (
        "version: 1\nname: a\ntaps: [vm1-tap]\nmatch: {protocol: icmp}\noutputs: [{interface: mon0, vlan: 100}, {interface: mon1, vlan: 200}]\n",
        "version: 1\nname: b\ntaps: [vm1-tap]\noutputs: [{interface: mon0, vlan: 100}]\n",
    );
    let Some(h) = harness(true, &[a, b]) else {
        return;
    };
    let f = pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()));
    for _ in 0..5 {
        h.run(Dir::Ingress, &f);
    }
    let ids = &h.assignment.output_ids;
    let mon0 = ids.iter().find(|(k, _)| k.vlan == 100).unwrap().1;
    let mon1 = ids.iter().find(|(k, _)| k.vlan == 200).unwrap().1;
    assert_eq!(h.output_stats("a", *mon0).mirrored, 5);
    assert_eq!(h.output_stats("a", *mon1).mirrored, 5);
    assert_eq!(h.output_stats("b", *mon0).mirrored, 5);
    // The shared output got one copy per packet, not two.
    let sent: vtap_abi::CopyStats =
        vtap_core::datapath::stats::sum_percpu_array(&h.dp, &h.dp.maps.copy_stats, [*mon0 as u32])
            .unwrap()
            .remove(0)
            .1;
    assert_eq!(sent.sent, 5);
    assert_eq!(h.drops("a").reason.iter().sum::<u64>(), 0);
}

#[test]
fn missing_output_is_counted_as_output_down() {
    let a = p("a", "");
    let Some(h) = harness(false, &[&a]) else {
        return;
    };
    let f = pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()));
    for _ in 0..3 {
        h.run(Dir::Egress, &f);
    }
    let d = h.drops("a");
    assert_eq!(d.reason[drop_reason::OUTPUT_DOWN], 3);
    assert_eq!(h.matched()["a"], [0, 3]);
}

#[test]
fn copies_dropped_by_the_output_device_are_counted_as_xmit_dropped() {
    // A down veth drops what is queued to it (noop qdisc): the copy was made
    // but not delivered. (The engine resolves a down output to ifindex 0,
    // counted as output_down, before the datapath even tries: see the
    // engine's resolve tests.)
    if !require_root() {
        return;
    }
    private_netns();
    for args in [
        &["link", "add", "dn0", "type", "veth", "peer", "name", "dn1"][..],
        &["link", "set", "dn1", "up"],
    ] {
        assert!(
            std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
                .success()
        );
    }
    // SAFETY: a valid NUL-terminated name.
    let dn0 = unsafe { libc::if_nametoindex(c"dn0".as_ptr()) };
    assert_ne!(dn0, 0);
    let mut h = Harness::new(true).with_output_ifindex(dn0);
    h.apply(vec![policy(&p("a", ""))]);
    let f = pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()));
    for _ in 0..4 {
        h.run(Dir::Ingress, &f);
    }
    let d = h.drops("a");
    assert_eq!(d.reason[drop_reason::XMIT_DROPPED], 4, "{d:?}");
    assert_eq!(d.reason.iter().sum::<u64>(), 4);
}

#[test]
fn disabled_policy_never_fires() {
    let (on, off) = (p("on", ""), p("off", "enabled: false"));
    let Some(h) = harness(false, &[&on, &off]) else {
        return;
    };
    let f = pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()));
    assert_eq!(h.classify(Dir::Ingress, &f), set(&["on"]));
}

#[test]
fn generations_flip_atomically_between_sets() {
    let Some(mut h) = harness(false, &[&p("one", "match: {protocol: icmp}")]) else {
        return;
    };
    let f = pad(ipv4(&[], A, B, &L4::Icmp, &V4::default()));
    assert_eq!(h.classify(Dir::Ingress, &f), set(&["one"]));
    for i in 0..20 {
        let name = format!("p{i}");
        h.apply(vec![policy(&p(&name, "match: {protocol: icmp}"))]);
        assert_eq!(h.classify(Dir::Ingress, &f), set(&[&name]));
        // An older generation's policies never fire again.
        assert!(!h.classify(Dir::Ingress, &f).contains("one"));
    }
    h.apply(vec![]);
    assert_eq!(h.classify(Dir::Ingress, &f), set(&[]));
}
