//! Differential test: the real BPF program and the Rust reference classifier
//! (`policy::reference`, written from the policy semantics, not from the C)
//! must agree on which policies fire, for ≥ 100k random frames against random
//! policy sets. Needs root; in CI never skips. `VTAP_DIFF_SEED` replays a run.
//!
//! About a third of the policies also sample and/or rate-limit
//! (`testgen::random_shaping`). Shaping is random per packet, so it is not
//! compared with the reference; what is checked is that it never changes
//! which policies *match* (the matched counter counts before shaping), and
//! that every matched packet is accounted for: over each set, for every
//! policy and each of its outputs,
//! `matched = sampled + rate_limited + mirrored + failed`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use vtap_abi::{Dir, MAX_POLICIES, PolicyStats, drop_reason};
use vtap_core::datapath::{stats, sys};
use vtap_core::policy::{reference, testgen};

use common::{Harness, TAP, private_netns, require_root};

const FRAMES: usize = 100_000;
const FRAMES_PER_SET: usize = 1_000;

/// Matched packets of every slot, both directions, in one batch syscall.
fn matched_all(h: &Harness) -> Vec<u64> {
    let n = (MAX_POLICIES * 2) as u32;
    let stride = std::mem::size_of::<PolicyStats>().div_ceil(8) * 8;
    let mut buf = vec![0u8; n as usize * stride * h.dp.ncpus];
    sys::lookup_batch_array(h.dp.maps.policy_stats.fd(), n, &mut buf).expect("batch lookup");
    let per_elem = stride * h.dp.ncpus;
    (0..n as usize)
        .map(|i| {
            (0..h.dp.ncpus)
                .map(|c| {
                    let o = i * per_elem + c * stride;
                    u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap())
                })
                .sum()
        })
        .collect()
}

/// Per policy: matched (both directions), sampled, rate_limited, and
/// (mirrored, failed) per output id.
struct Account {
    matched: u64,
    sampled: u64,
    rate_limited: u64,
    outputs: BTreeMap<u8, (u64, u64)>,
}

fn accounts(h: &Harness) -> BTreeMap<String, Account> {
    let mut out = BTreeMap::new();
    for p in &h.policies {
        let slot = h.assignment.policy_slots[&p.name] as u32;
        let m: Vec<(u32, PolicyStats)> =
            stats::sum_percpu_array(&h.dp, &h.dp.maps.policy_stats, [slot * 2, slot * 2 + 1])
                .unwrap();
        let d = h.drops(&p.name);
        let outputs = p
            .output_keys()
            .iter()
            .map(|k| {
                let id = h.assignment.output_ids[k];
                let s = h.output_stats(&p.name, id);
                (id, (s.mirrored, s.failed))
            })
            .collect();
        out.insert(
            p.name.clone(),
            Account {
                matched: m[0].1.packets + m[1].1.packets,
                sampled: d.reason[drop_reason::SAMPLED],
                rate_limited: d.reason[drop_reason::RATE_LIMITED],
                outputs,
            },
        );
    }
    out
}

#[test]
fn bpf_program_agrees_with_reference_classifier() {
    if !require_root() {
        return;
    }
    private_netns();
    let seed: u64 = std::env::var("VTAP_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    eprintln!("differential test seed: {seed} (replay with VTAP_DIFF_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut h = Harness::new(false);
    let mut fired_total = 0usize;
    let mut shaped_total = 0u64;
    let mut frames = 0usize;
    let mut sets = 0usize;
    let mut refused = 0usize;
    let mut retagged = 0usize;
    while frames < FRAMES {
        let n = rng.gen_range(1..=40);
        let mut policies =
            testgen::random_policy_set(&mut rng, n, &[TAP, "vm2-tap", "vm*"], &["mon0", "mon1"]);
        testgen::random_shaping(&mut rng, &mut policies);
        // Alternate the address lookup: exact-match hashes, LPM tries, mixed.
        h.hash_lens = [vtap_abi::MAX_LENS, 0, 2][sets % 3];
        h.apply(policies.clone());
        sets += 1;
        let slots: Vec<(String, usize)> = h
            .assignment
            .policy_slots
            .iter()
            .map(|(k, v)| (k.clone(), *v as usize))
            .collect();
        let mut before = matched_all(&h);
        let accounts_before = accounts(&h);
        for _ in 0..FRAMES_PER_SET {
            let (mut frame, _offloaded) = testgen::random_frame(&mut rng);
            if frame.len() < 14 {
                refused += 1;
                continue; // BPF_PROG_TEST_RUN needs a whole Ethernet header
            }
            if Harness::kernel_refuses(&frame) {
                // BPF_PROG_TEST_RUN refuses a short untagged IP header (see
                // Harness::try_run): test the same bytes behind a VLAN tag,
                // which no match field looks at.
                frame.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
                retagged += 1;
            }
            let dir = if rng.gen_bool(0.5) {
                Dir::Ingress
            } else {
                Dir::Egress
            };
            h.run(dir, &frame);
            let after = matched_all(&h);
            let got: BTreeSet<String> = slots
                .iter()
                .filter(|(_, s)| after[s * 2 + dir as usize] != before[s * 2 + dir as usize])
                .map(|(n, _)| n.clone())
                .collect();
            let want = reference::classify(&policies, TAP, dir, &frame, None);
            if got != want {
                let yaml: Vec<String> = policies
                    .iter()
                    .map(|p| serde_yaml::to_string(p).unwrap())
                    .collect();
                panic!(
                    "mismatch (seed {seed}, set {sets}, dir {dir:?})\nframe: {}\nbpf fired:       {got:?}\nreference fired: {want:?}\npolicies:\n{}",
                    frame.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    yaml.join("---\n")
                );
            }
            fired_total += got.len();
            frames += 1;
            before = after;
        }
        let accounts_after = accounts(&h);
        for (name, a) in &accounts_after {
            let b = &accounts_before[name];
            let d = |x: u64, y: u64| x - y;
            let matched = d(a.matched, b.matched);
            let (sampled, limited) = (d(a.sampled, b.sampled), d(a.rate_limited, b.rate_limited));
            shaped_total += sampled + limited;
            for (o, (m, f)) in &a.outputs {
                let (bm, bf) = b.outputs[o];
                assert_eq!(
                    sampled + limited + d(*m, bm) + d(*f, bf),
                    matched,
                    "seed {seed}, set {sets}, policy {name}, output {o}: sampled {sampled} + rate_limited {limited} + mirrored + failed != matched {matched}"
                );
            }
        }
    }
    // The generators must make frames that actually match, or the test
    // proves nothing.
    eprintln!(
        "{frames} frames, {sets} policy sets, {fired_total} policy firings ({shaped_total} sampled or rate-limited), {retagged} short IP frames re-tagged, {refused} frames under 14 bytes skipped"
    );
    assert!(
        shaped_total > frames as u64 / 100,
        "too few shaped firings ({shaped_total}) to check the accounting"
    );
    assert!(refused < frames / 10, "too many refused frames: {refused}");
    assert!(
        fired_total > frames / 10,
        "too few firings ({fired_total}) to be meaningful"
    );
}
