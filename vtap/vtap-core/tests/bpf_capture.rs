//! BPF tests of the pcap path: the real datapath run with
//! BPF_PROG_TEST_RUN, its ring buffer read back record by record.

mod common;

use common::frames::{L4, V4, ipv4};
use common::{Harness, policy, private_netns, require_root};
use vtap_abi::{CaptureStats, Dir, PcapRec, drop_reason};
use vtap_core::capture::ring::parse_record;
use vtap_core::capture::ringbuf::{BatchEnd, PcapRing};
use vtap_core::datapath::LoadOptions;
use vtap_core::datapath::stats::sum_percpu_array;

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

fn harness(ring_bytes: u32, yamls: &[&str]) -> Option<(Harness, PcapRing)> {
    if !require_root() {
        return None;
    }
    private_netns();
    let mut h = Harness::with_options(
        true,
        LoadOptions {
            pcap_ring_bytes: ring_bytes,
        },
    );
    h.apply(yamls.iter().map(|y| policy(y)).collect());
    let ring = h.dp.take_pcap_ring().expect("ring");
    Some((h, ring))
}

/// A UDP frame of exactly `len` bytes.
fn frame(len: usize) -> Vec<u8> {
    let mut f = ipv4(
        &[],
        A,
        B,
        &L4::Udp {
            sport: 1000,
            dport: 2000,
        },
        &V4::default(),
    );
    let mut i = 0u8;
    while f.len() < len {
        f.push(i);
        i = i.wrapping_add(1);
    }
    // Fix the IPv4 total length for the padding (the classifier does not
    // care, but keep the frame honest).
    let tot = (len - 14) as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f
}

fn drain(ring: &mut PcapRing) -> Vec<(PcapRec, Vec<u8>)> {
    let out = walk(ring, usize::MAX).0;
    ring.release();
    out
}

/// Walks up to `max` records without releasing them.
fn walk(ring: &mut PcapRing, max: usize) -> (Vec<(PcapRec, Vec<u8>)>, BatchEnd) {
    let mut out = Vec::new();
    let end = ring.walk(|rec| {
        let (h, d) = parse_record(rec).expect("well-formed record");
        out.push((h, d.to_vec()));
        out.len() < max
    });
    (out, end)
}

fn capture_stats(h: &Harness, id: u8) -> CaptureStats {
    sum_percpu_array(&h.dp, &h.dp.maps.capture_stats, [id as u32])
        .unwrap()
        .remove(0)
        .1
}

fn capture_id(h: &Harness, name: &str) -> u8 {
    *h.assignment
        .output_ids
        .iter()
        .find(|(k, _)| k.capture.as_deref() == Some(name))
        .unwrap()
        .1
}

#[test]
fn records_carry_the_packet_cut_to_the_snaplen() {
    let Some((h, mut ring)) = harness(
        1 << 20,
        &[
            "version: 1\nname: short\ntaps: [vm1-tap]\nsnaplen: 64\noutputs: [{pcap: s}]\n",
            "version: 1\nname: whole\ntaps: [vm1-tap]\nmatch: {protocol: udp}\noutputs: [{pcap: w}, {interface: mon0, vlan: 9}]\n",
        ],
    ) else {
        return;
    };
    // (BPF_PROG_TEST_RUN takes at most about a page; jumbo frames are
    // covered end to end by capture_e2e.)
    for len in [60usize, 64, 65, 1000, 1514, 3000] {
        let f = frame(len);
        h.run(Dir::Egress, &f);
        let recs = drain(&mut ring);
        assert_eq!(recs.len(), 2, "one record per capture, len {len}");
        for (r, data) in &recs {
            assert_eq!(r.orig_len as usize, len);
            assert_eq!(r.ifindex, 1);
            assert_eq!(r.dir, Dir::Egress as u8);
            let (want_cap, policy) = if r.output == capture_id(&h, "s") {
                (len.min(64), "short")
            } else {
                assert_eq!(r.output, capture_id(&h, "w"));
                (len, "whole")
            };
            assert_eq!(r.cap_len as usize, want_cap, "len {len}");
            assert_eq!(&data[..], &f[..want_cap], "captured bytes, len {len}");
            let slot = h.assignment.policy_slots[policy] as usize;
            assert_eq!(r.policies.iter().collect::<Vec<_>>(), vec![slot]);
        }
    }
    let s = capture_stats(&h, capture_id(&h, "s"));
    assert_eq!((s.packets, s.ring_full), (6, 0));
    assert_eq!(s.cap_bytes, 60 + 64 + 64 + 64 + 64 + 64);
    // The interface output of `whole` still got its copies.
    let mon = *h
        .assignment
        .output_ids
        .iter()
        .find(|(k, _)| k.vlan == 9)
        .unwrap()
        .1;
    assert_eq!(h.output_stats("whole", mon).mirrored, 6);
    assert_eq!(h.output_stats("whole", capture_id(&h, "w")).mirrored, 6);
}

#[test]
fn two_policies_share_one_record_with_the_larger_snaplen() {
    let Some((h, mut ring)) = harness(
        1 << 20,
        &[
            "version: 1\nname: a\ntaps: [vm1-tap]\nsnaplen: 100\noutputs: [{pcap: c}]\n",
            "version: 1\nname: b\ntaps: [vm1-tap]\nmatch: {protocol: udp}\nsnaplen: 200\noutputs: [{pcap: c}]\n",
        ],
    ) else {
        return;
    };
    h.run(Dir::Ingress, &frame(500));
    let recs = drain(&mut ring);
    assert_eq!(recs.len(), 1, "a packet reaches a capture once");
    let (r, _) = &recs[0];
    assert_eq!(r.cap_len, 200);
    let mut slots: Vec<usize> = ["a", "b"]
        .iter()
        .map(|p| h.assignment.policy_slots[*p] as usize)
        .collect();
    slots.sort();
    assert_eq!(
        r.policies.iter().collect::<Vec<_>>(),
        slots,
        "both policies named"
    );
}

#[test]
fn a_full_ring_is_counted_as_ring_full_and_the_packet_passes() {
    // One page of ring: three records of a 1000-byte packet fit (each takes
    // the 1024-byte size class + headers); the rest find it full.
    let Some((h, mut ring)) = harness(
        4096,
        &["version: 1\nname: p\ntaps: [vm1-tap]\noutputs: [{pcap: c}]\n"],
    ) else {
        return;
    };
    let f = frame(1000);
    for _ in 0..10 {
        h.run(Dir::Ingress, &f); // asserts the frame passed unchanged
    }
    let id = capture_id(&h, "c");
    let s = capture_stats(&h, id);
    assert_eq!(s.packets, 3, "{s:?}");
    assert_eq!(s.ring_full, 7, "{s:?}");
    assert_eq!(h.drops("p").reason[drop_reason::RING_FULL], 7);
    let o = h.output_stats("p", id);
    assert_eq!((o.mirrored, o.failed), (3, 7));
    assert_eq!(drain(&mut ring).len(), 3);
    // Room again after the reader consumed the records.
    h.run(Dir::Ingress, &f);
    assert_eq!(capture_stats(&h, id).packets, 4);
}

#[test]
fn records_stay_reserved_until_released_and_read_whole_across_the_wrap() {
    // One page of ring, three 1000-byte records per round (1064 bytes of
    // ring each): every round after the first wraps around the end, and
    // records walked but not released still take their room.
    let Some((h, mut ring)) = harness(
        4096,
        &["version: 1\nname: p\ntaps: [vm1-tap]\noutputs: [{pcap: c}]\n"],
    ) else {
        return;
    };
    assert_eq!(ring.size(), 4096);
    let id = capture_id(&h, "c");
    let mut sent = 0u64;
    for round in 0..7u8 {
        let frames: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                let mut f = frame(1000);
                let n = f.len();
                f[n - 2] = round;
                f[n - 1] = i;
                f
            })
            .collect();
        for f in &frames {
            h.run(Dir::Ingress, f);
        }
        sent += 3;
        // A batch of two, then the rest: the walk resumes where it stopped.
        let (first, end) = walk(&mut ring, 2);
        assert_eq!((first.len(), end), (2, BatchEnd::Full), "round {round}");
        let (rest, end) = walk(&mut ring, usize::MAX);
        assert_eq!((rest.len(), end), (1, BatchEnd::Empty), "round {round}");
        // Walked, not released: the ring is still full.
        h.run(Dir::Ingress, &frames[0]);
        assert_eq!(capture_stats(&h, id).ring_full, round as u64 + 1);
        assert!(ring.unread() > 3000, "{}", ring.unread());
        ring.release();
        assert_eq!(ring.unread(), 0);
        for (k, (r, data)) in first.iter().chain(&rest).enumerate() {
            assert_eq!(r.cap_len, 1000);
            assert_eq!(&data[..], &frames[k][..], "round {round} record {k}");
        }
    }
    assert_eq!(capture_stats(&h, id).packets, sent);
    assert!(walk(&mut ring, usize::MAX).0.is_empty());
}
