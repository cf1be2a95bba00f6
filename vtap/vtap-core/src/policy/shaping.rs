//! Shaping the mirror stream: 1-in-N sampling and pps/bps rate limits of a
//! policy's copies (issue 7). What the datapath does with these numbers is in
//! `ebpf/vtap_tc.c` (`vtap_fire_policy`); this module holds the limits the
//! validator enforces, the token-bucket sizes, and how a policy's shaping is
//! written into its `vtap_policy_action`.
//!
//! Decisions (documented for users in `mirror-policies/README.md`):
//!
//! * `sample_by: packet` (default) keeps each packet with probability 1/N,
//!   independently (`bpf_get_prandom_u32`): no shared state between CPUs, no
//!   aliasing with periodic traffic. Over M packets the number kept is
//!   binomial(M, 1/N).
//! * `sample_by: flow` keeps 1 flow in N: a hash of the flow that does not
//!   depend on the direction (addresses, ports, protocol, EtherType) decides,
//!   so both directions of a conversation, and every packet of it, are kept
//!   or dropped together — what an IDS needs. The hash key is derived from
//!   the kernel's boot id ([`flow_seed`]): decisions survive daemon restarts
//!   and policy changes, are the same for every policy (a flow kept at 1-in-10
//!   is kept by every 1-in-N policy with N <= 10), and cannot be predicted
//!   from outside the host.
//! * Rate limits are token buckets, one pair (packets, bits) per policy shared
//!   by every CPU under a `bpf_spin_lock`. Bucket size (the burst): 10 ms of
//!   the rate, at least 1 packet / one 1,514-byte frame. A packet larger than
//!   the whole bit bucket (a GSO super-packet) passes when the bucket is full
//!   and leaves it in debt, so the long-run rate holds.
//! * Sampling comes first; a sampled-out packet takes no tokens.

use std::sync::OnceLock;

use serde::Serialize;
use vtap_abi::{PolicyAction, shape};

use super::model::{Policy, SampleBy};

/// Largest N of `sample_one_in`.
pub const MAX_SAMPLE_ONE_IN: u64 = 1_000_000_000;
/// Largest `rate_limit.pps` (100 Mpps: more than a 100 Gbit/s link of
/// minimum-size frames).
pub const MAX_RATE_PPS: u64 = 100_000_000;
/// Largest `rate_limit.bps` (100 Gbit/s). Also what keeps the datapath's
/// credit arithmetic (1e-9 bit units, 64 bits) far from overflowing.
pub const MAX_RATE_BPS: u64 = 100_000_000_000;
/// The bucket holds this much of the rate: 10 ms.
pub const BURST_NS: u64 = 10_000_000;
/// Smallest packet bucket: one packet.
pub const MIN_BURST_PKTS: u64 = 1;
/// Smallest bit bucket: one full-size Ethernet frame (1,514 bytes).
pub const MIN_BURST_BITS: u64 = 1514 * 8;

/// The sampling and rate limit of one (validated) policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Shaping {
    /// Keep 1 packet (or flow) in N; 1 = all.
    pub sample_one_in: u32,
    /// Sample whole flows instead of single packets.
    pub by_flow: bool,
    /// Packets per second, 0 = no packet limit.
    pub pps: u64,
    /// Bits per second, 0 = no bit limit.
    pub bps: u64,
}

impl Shaping {
    /// The shaping of a policy (invalid values read as "none": validate
    /// first).
    pub fn of(p: &Policy) -> Shaping {
        Shaping {
            sample_one_in: p
                .sample_one_in
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .unwrap_or(1),
            by_flow: p.sample_by == SampleBy::Flow,
            pps: p.rate_limit.pps(),
            bps: p.rate_limit.bps(),
        }
    }

    /// Whether every packet gets its copies (no sampling, no limit).
    pub fn is_none(&self) -> bool {
        self.sample_one_in <= 1 && self.pps == 0 && self.bps == 0
    }

    /// Packet bucket size (packets): 10 ms of the rate, at least 1.
    pub fn burst_pkts(&self) -> u64 {
        burst(self.pps, MIN_BURST_PKTS)
    }

    /// Bit bucket size (bits): 10 ms of the rate, at least one 1,514-byte
    /// frame.
    pub fn burst_bits(&self) -> u64 {
        burst(self.bps, MIN_BURST_BITS)
    }

    /// Writes the shaping into a policy's action (the datapath reads it
    /// only when `sample_one_in > 1` or a rate is set).
    pub fn write(&self, a: &mut PolicyAction, seed: u32) {
        a.sample_one_in = self.sample_one_in.max(1);
        a.shape = if self.by_flow { shape::SAMPLE_FLOW } else { 0 };
        a.flow_seed = seed;
        a.rate_pps = self.pps;
        a.rate_bps = self.bps;
        a.burst_pkts = self.burst_pkts();
        a.burst_bits = self.burst_bits();
        a.fill_pkts_ns = fill_ns(a.burst_pkts, self.pps);
        a.fill_bits_ns = fill_ns(a.burst_bits, self.bps);
    }

    /// Human-readable (`1/10 by flow, 1000 pps, 8000000 bps`), empty when
    /// there is no shaping.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.sample_one_in > 1 {
            parts.push(format!(
                "1/{} by {}",
                self.sample_one_in,
                if self.by_flow { "flow" } else { "packet" }
            ));
        }
        if self.pps > 0 {
            parts.push(format!("{} pps", self.pps));
        }
        if self.bps > 0 {
            parts.push(format!("{} bps", self.bps));
        }
        parts.join(", ")
    }
}

fn burst(rate: u64, min: u64) -> u64 {
    if rate == 0 {
        0
    } else {
        ((rate as u128 * BURST_NS as u128 / 1_000_000_000) as u64).max(min)
    }
}

/// Nanoseconds to fill a bucket of `burst` units at `rate` units/s, rounded
/// up (at least 1; 0 when there is no rate). The datapath refills a bucket
/// idle for this long to full without multiplying, so `elapsed * rate` never
/// overflows.
pub fn fill_ns(burst: u64, rate: u64) -> u64 {
    if rate == 0 {
        return 0;
    }
    let ns = (burst as u128 * 1_000_000_000).div_ceil(rate as u128);
    u64::try_from(ns).unwrap_or(u64::MAX).max(1)
}

/// The key of the flow hash: derived from the kernel's boot id
/// (`/proc/sys/kernel/random/boot_id`), so it is the same for every policy
/// and every daemon run until the host reboots, and unknown outside the
/// host. (Without a boot id, a fixed key.)
pub fn flow_seed() -> u32 {
    static SEED: OnceLock<u32> = OnceLock::new();
    *SEED.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        seed_of(id.trim())
    })
}

/// FNV-1a of `text`, folded to 32 bits.
fn seed_of(text: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes().chain(*b"vtap flow sampling") {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(n: u32, pps: u64, bps: u64) -> Shaping {
        Shaping {
            sample_one_in: n,
            by_flow: false,
            pps,
            bps,
        }
    }

    #[test]
    fn bursts_are_ten_ms_with_floors() {
        assert_eq!(sh(1, 1000, 0).burst_pkts(), 10);
        assert_eq!(sh(1, 10_000, 0).burst_pkts(), 100);
        assert_eq!(sh(1, 50, 0).burst_pkts(), 1);
        assert_eq!(sh(1, 0, 0).burst_pkts(), 0);
        assert_eq!(sh(1, 0, 8_000_000).burst_bits(), 80_000);
        assert_eq!(sh(1, 0, 1_000_000).burst_bits(), MIN_BURST_BITS);
        assert_eq!(
            sh(1, 0, MAX_RATE_BPS).burst_bits(),
            MAX_RATE_BPS / 100,
            "largest bucket"
        );
        // The datapath's credit (1e-9 units in an i64) cannot overflow.
        let cap = sh(1, 0, MAX_RATE_BPS).burst_bits() as u128 * 1_000_000_000;
        assert!(cap * 3 < i64::MAX as u128);
        let cap = sh(1, MAX_RATE_PPS, 0).burst_pkts() as u128 * 1_000_000_000;
        assert!(cap * 3 < i64::MAX as u128);
    }

    #[test]
    fn fill_times() {
        assert_eq!(fill_ns(10, 1000), 10_000_000);
        assert_eq!(fill_ns(1, 1), 1_000_000_000);
        assert_eq!(fill_ns(1, 3), 333_333_334, "rounded up");
        assert_eq!(fill_ns(0, 0), 0);
        assert_eq!(fill_ns(1, MAX_RATE_PPS), 10, "at least 1");
        // elapsed < fill_ns => elapsed * rate < burst * 1e9 + rate: no overflow.
        let s = sh(1, 0, MAX_RATE_BPS);
        let f = fill_ns(s.burst_bits(), s.bps) as u128;
        assert!(
            f * MAX_RATE_BPS as u128
                <= s.burst_bits() as u128 * 1_000_000_000 + MAX_RATE_BPS as u128
        );
    }

    #[test]
    fn writes_the_action() {
        let mut a = PolicyAction::default();
        sh(1, 0, 0).write(&mut a, 7);
        assert_eq!((a.sample_one_in, a.rate_pps, a.rate_bps), (1, 0, 0));
        let mut a = PolicyAction::default();
        Shaping {
            sample_one_in: 10,
            by_flow: true,
            pps: 1000,
            bps: 8_000_000,
        }
        .write(&mut a, 7);
        assert_eq!(a.sample_one_in, 10);
        assert_eq!(a.shape, shape::SAMPLE_FLOW);
        assert_eq!(a.flow_seed, 7);
        assert_eq!((a.burst_pkts, a.fill_pkts_ns), (10, 10_000_000));
        assert_eq!((a.burst_bits, a.fill_bits_ns), (80_000, 10_000_000));
    }

    #[test]
    fn seed_is_stable_and_keyed() {
        assert_eq!(flow_seed(), flow_seed());
        assert_ne!(seed_of("a"), seed_of("b"));
    }
}
