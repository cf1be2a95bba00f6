//! Rust view of `ebpf/include/vtap_abi.h`, the single source of truth for every
//! structure shared between the C datapath and user space.
//!
//! Every type here is `#[repr(C)]` with the same fields, in the same order, as
//! its C counterpart. The `abi_layout` test of `vtap-core` reads the BTF of the
//! built object and checks each struct's size and every field's offset, so a
//! change on one side that is not made on the other fails the build's tests.

#![deny(missing_docs)]

/// ABI version written to `vtap_global.abi_version` by user space.
pub const ABI_VERSION: u32 = 1;
/// Policy slots (bits of a [`Bitmap`]).
pub const MAX_POLICIES: usize = 256;
/// 64-bit words of a [`Bitmap`].
pub const BITMAP_WORDS: usize = MAX_POLICIES / 64;
/// Distinct (interface, vlan) outputs.
pub const MAX_OUTPUTS: usize = 64;
/// Outputs of one policy.
pub const MAX_POLICY_OUTPUTS: usize = 8;
/// Generations of the classification tables.
pub const GENERATIONS: usize = 2;
/// Tapped interfaces (tap slots; counters are indexed `slot * 2 + dir`).
pub const MAX_TAPS: u32 = 1024;
/// Capacity of each LPM table (both generations).
pub const MAX_CIDRS: u32 = 16384;
/// Capacity of the ether_type table (both generations).
pub const MAX_ETHER_TYPES: u32 = 1024;
/// Entries of a port table per generation.
pub const PORTS: usize = 65536;
/// Largest capture of one packet (pcap outputs).
pub const PCAP_MAX_CAPLEN: u32 = 9216;
/// Unused entry of [`PolicyAction::out_ids`].
pub const NO_OUTPUT: u8 = 0xff;
/// `GenConfig::flags`: some policy is bidirectional.
pub const GEN_ANY_BIDIR: u32 = 1;
/// Distinct prefix lengths an address table may use and still be looked up
/// by exact-match hashes (`vtap_cidr`) instead of its LPM trie.
pub const MAX_LENS: usize = 7;
/// `Lens::n`: this table is looked up in its LPM trie.
pub const LENS_LPM: u8 = 0xff;

/// Address tables (`enum vtap_cidr_table`).
#[allow(missing_docs)]
pub mod cidr_table {
    pub const SRC4: u8 = 0;
    pub const DST4: u8 = 1;
    pub const SRC6: u8 = 2;
    pub const DST6: u8 = 3;
    pub const COUNT: usize = 4;
}

/// Direction of a packet relative to the VM behind the tapped interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Dir {
    /// From the VM: TC ingress on its tap.
    Ingress = 0,
    /// To the VM: TC egress on its tap.
    Egress = 1,
}

impl Dir {
    /// Both directions, ingress first.
    pub const ALL: [Dir; 2] = [Dir::Ingress, Dir::Egress];
    /// Label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

/// Match fields (`enum vtap_field`): bit numbers of `GenConfig::used_fields`.
#[allow(missing_docs)]
pub mod field {
    pub const ETHER_TYPE: usize = 0;
    pub const SRC: usize = 1;
    pub const DST: usize = 2;
    pub const PROTO: usize = 3;
    pub const SPORT: usize = 4;
    pub const DPORT: usize = 5;
    pub const TCP_FLAGS: usize = 6;
    pub const COUNT: usize = 7;
}

/// Reasons a selected copy was not delivered (`enum vtap_drop_reason`).
#[allow(missing_docs)]
pub mod drop_reason {
    pub const CLONE_FAILED: usize = 0;
    pub const OUTPUT_DOWN: usize = 1;
    pub const VLAN_FAILED: usize = 2;
    pub const SAMPLED: usize = 3;
    pub const RATE_LIMITED: usize = 4;
    pub const RING_FULL: usize = 5;
    pub const XMIT_DROPPED: usize = 6;
    pub const XDP_MODE: usize = 7;
    pub const COUNT: usize = 8;
    /// Label values, indexed by reason (`None` = unused slot).
    pub const NAMES: [Option<&str>; COUNT] = [
        Some("clone_failed"),
        Some("output_down"),
        Some("vlan_failed"),
        Some("sampled"),
        Some("rate_limited"),
        Some("ring_full"),
        Some("xmit_dropped"),
        Some("xdp_mode"),
    ];
}

/// Output kinds (`enum vtap_output_kind`).
#[allow(missing_docs)]
pub mod output_kind {
    pub const NONE: u8 = 0;
    pub const IFACE: u8 = 1;
    pub const PCAP: u8 = 2;
    pub const VXLAN: u8 = 3;
}

/// Output flags (`enum vtap_output_flags`).
#[allow(missing_docs)]
pub mod output_flags {
    pub const REMOTE6: u8 = 1;
}

/// A VXLAN copy's mark: `TUNNEL_MARK | gen * MAX_OUTPUTS + id`.
pub const TUNNEL_MARK: u32 = 0x7674_0000;
/// The bits of [`TUNNEL_MARK`].
pub const TUNNEL_MARK_MASK: u32 = 0xffff_0000;

/// Parse flags (`enum vtap_parse_flags`).
#[allow(missing_docs)]
pub mod parse_flags {
    pub const IP: u16 = 1 << 0;
    pub const IPV6: u16 = 1 << 1;
    pub const L4: u16 = 1 << 2;
    pub const PORTS: u16 = 1 << 3;
    pub const TCP_FLAGS: u16 = 1 << 4;
    pub const FRAGMENT: u16 = 1 << 5;
    pub const TRUNCATED: u16 = 1 << 6;
    pub const TAGGED: u16 = 1 << 7;
    pub const FIRST_FRAG: u16 = 1 << 8;
}

/// `struct vtap_global`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Global {
    /// Generation the datapath classifies with.
    pub active_gen: u32,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// [`GLOBAL_SHARE_PARSE`], ….
    pub flags: u32,
    /// Zero.
    pub _pad: u32,
}

/// `Global::flags`: publish parse results for probes.
pub const GLOBAL_SHARE_PARSE: u32 = 1;

/// `struct vtap_parse_pub`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParsePub {
    /// Sequence number (also in `skb->cb[4]`).
    pub seq: u32,
    /// Interface index.
    pub ifindex: u32,
    /// The parse result.
    pub p: Parse,
}

/// `struct vtap_bitmap`: a set of policy slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct Bitmap {
    /// Bit `s % 64` of word `s / 64` is slot `s`.
    pub w: [u64; BITMAP_WORDS],
}

impl Bitmap {
    /// The empty set.
    pub const EMPTY: Bitmap = Bitmap {
        w: [0; BITMAP_WORDS],
    };
    /// Adds a slot.
    pub fn set(&mut self, slot: usize) {
        self.w[slot / 64] |= 1u64 << (slot % 64);
    }
    /// Removes a slot.
    pub fn clear(&mut self, slot: usize) {
        self.w[slot / 64] &= !(1u64 << (slot % 64));
    }
    /// Whether a slot is in the set.
    pub fn test(&self, slot: usize) -> bool {
        self.w[slot / 64] & (1u64 << (slot % 64)) != 0
    }
    /// Set intersection.
    pub fn and(&self, o: &Bitmap) -> Bitmap {
        let mut r = *self;
        for (a, b) in r.w.iter_mut().zip(o.w.iter()) {
            *a &= *b;
        }
        r
    }
    /// Set union.
    pub fn or(&self, o: &Bitmap) -> Bitmap {
        let mut r = *self;
        for (a, b) in r.w.iter_mut().zip(o.w.iter()) {
            *a |= *b;
        }
        r
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.w.iter().all(|w| *w == 0)
    }
    /// The slots in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_POLICIES).filter(|s| self.test(*s))
    }
}

/// `struct vtap_lens`: how one address table is looked up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Lens {
    /// Number of lengths, or [`LENS_LPM`].
    pub n: u8,
    /// Prefix lengths, longest first.
    pub len: [u8; MAX_LENS],
}

/// `struct vtap_gen_config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GenConfig {
    /// Bit `field::X` set when some policy constrains field X.
    pub used_fields: u32,
    /// [`GEN_ANY_BIDIR`].
    pub flags: u32,
    /// Bidirectional policies.
    pub bidir: Bitmap,
    /// Per field: policies that do not constrain it (used on a lookup miss).
    pub wildcard: [Bitmap; field::COUNT],
    /// Per address table ([`cidr_table`]): hash lengths or LPM.
    pub lens: [Lens; cidr_table::COUNT],
}

/// `struct vtap_cidr_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct CidrKey {
    /// Generation.
    pub generation: u8,
    /// [`cidr_table`].
    pub table: u8,
    /// Prefix length.
    pub len: u8,
    /// Zero.
    pub _pad: u8,
    /// Masked address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}

/// `struct vtap_tap_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct TapKey {
    /// Interface index.
    pub ifindex: u32,
    /// [`Dir`] as u8.
    pub dir: u8,
    /// Generation (0 in `vtap_tap_stats`).
    pub generation: u8,
    /// Zero.
    pub _pad: u16,
}

/// `struct vtap_tap_sel`: the value of `vtap_tap_sel`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TapSel {
    /// Policies applying to this tap + direction.
    pub policies: Bitmap,
    /// Index of the tap's counters.
    pub tap_slot: u32,
    /// Zero.
    pub _pad: u32,
}

/// `struct vtap_ether_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct EtherKey {
    /// EtherType, host order.
    pub ether_type: u16,
    /// Generation.
    pub generation: u8,
    /// Zero.
    pub _pad: u8,
}

/// `struct vtap_lpm4_key` (without aya's `Key` wrapper: the whole struct).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Lpm4Key {
    /// 32 (generation) + CIDR length.
    pub prefixlen: u32,
    /// Generation.
    pub generation: u32,
    /// Address, network order.
    pub addr: [u8; 4],
}

/// `struct vtap_lpm6_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Lpm6Key {
    /// 32 (generation) + CIDR length.
    pub prefixlen: u32,
    /// Generation.
    pub generation: u32,
    /// Address, network order.
    pub addr: [u8; 16],
}

/// Shaping flags (`enum vtap_shape_flags`, [`PolicyAction::shape`]).
pub mod shape {
    /// 1-in-N by a symmetric hash of the flow, else random per packet.
    pub const SAMPLE_FLOW: u32 = 1 << 0;
}

/// Token-bucket credit is kept in units of 1/`CREDIT_UNIT` packet or bit.
pub const CREDIT_UNIT: u64 = 1_000_000_000;

/// `struct vtap_policy_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct PolicyAction {
    /// Bitmap of output ids.
    pub outputs: u64,
    /// The same ids, [`NO_OUTPUT`] when unused.
    pub out_ids: [u8; MAX_POLICY_OUTPUTS],
    /// Keep one packet in N (1 = every packet).
    pub sample_one_in: u32,
    /// Reserved (0).
    pub snaplen: u32,
    /// Packets per second, 0 = no packet limit.
    pub rate_pps: u64,
    /// Bits per second, 0 = no bit limit.
    pub rate_bps: u64,
    /// [`shape`] flags.
    pub shape: u32,
    /// Key of the flow hash ([`shape::SAMPLE_FLOW`]).
    pub flow_seed: u32,
    /// Packet bucket size, packets.
    pub burst_pkts: u64,
    /// Bit bucket size, bits.
    pub burst_bits: u64,
    /// Nanoseconds to refill the packet bucket from empty.
    pub fill_pkts_ns: u64,
    /// Nanoseconds to refill the bit bucket from empty.
    pub fill_bits_ns: u64,
}

impl Default for PolicyAction {
    fn default() -> Self {
        PolicyAction {
            outputs: 0,
            out_ids: [NO_OUTPUT; MAX_POLICY_OUTPUTS],
            sample_one_in: 1,
            snaplen: 0,
            rate_pps: 0,
            rate_bps: 0,
            shape: 0,
            flow_seed: 0,
            burst_pkts: 0,
            burst_bits: 0,
            fill_pkts_ns: 0,
            fill_bits_ns: 0,
        }
    }
}

/// `struct vtap_rate_state`: the token buckets of one policy (`vtap_rate`,
/// indexed by slot). All zero = full buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RateState {
    /// `struct bpf_spin_lock` (the kernel never copies it to or from user space).
    pub lock: u32,
    /// Zero.
    pub _pad: u32,
    /// Packet credit, 1/[`CREDIT_UNIT`] packets.
    pub pkts: i64,
    /// Bit credit, 1/[`CREDIT_UNIT`] bits.
    pub bits: i64,
    /// `bpf_ktime_get_ns()` of the last refill.
    pub last_ns: u64,
}

/// `struct vtap_output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Output {
    /// Interface index, 0 = absent now.
    pub ifindex: u32,
    /// VID to push, 0 = none.
    pub vlan: u16,
    /// [`output_kind`].
    pub kind: u8,
    /// [`output_flags`].
    pub flags: u8,
    /// Pcap: bytes to keep, 1..=[`PCAP_MAX_CAPLEN`].
    pub snaplen: u32,
    /// VXLAN: the VNI.
    pub vni: u32,
    /// Pcap: the enabled policies naming this capture.
    pub policies: Bitmap,
    /// VXLAN: the remote address, host byte order per 32-bit word (IPv4 in
    /// word 0), as `struct bpf_tunnel_key` takes it.
    pub remote: [u32; 4],
}

/// `struct vtap_pcap_rec`: header of one ring-buffer record; `cap_len`
/// packet bytes follow it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PcapRec {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Packet length.
    pub orig_len: u32,
    /// Bytes that follow.
    pub cap_len: u32,
    /// Interface index.
    pub ifindex: u32,
    /// [`Dir`] as u8.
    pub dir: u8,
    /// Output id of the capture.
    pub output: u8,
    /// Zero.
    pub _pad: u16,
    /// The firing policies that sent the packet to this capture.
    pub policies: Bitmap,
}

/// `struct vtap_capture_stats` (per CPU, indexed by output id).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Records submitted to the ring.
    pub packets: u64,
    /// Their original lengths.
    pub bytes: u64,
    /// Their captured lengths.
    pub cap_bytes: u64,
    /// Records that found no room in the ring.
    pub ring_full: u64,
}

/// `struct vtap_tap_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TapStats {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (skb->len).
    pub bytes: u64,
    /// Packets whose headers ended early.
    pub truncated: u64,
    /// Packets that matched at least one policy.
    pub classified: u64,
}

/// `struct vtap_policy_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PolicyStats {
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
}

/// `struct vtap_output_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct OutputStats {
    /// Copies delivered for this policy to this output.
    pub mirrored: u64,
    /// Copies not delivered (any reason).
    pub failed: u64,
}

/// `struct vtap_policy_drops`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PolicyDrops {
    /// Indexed by [`drop_reason`].
    pub reason: [u64; drop_reason::COUNT],
}

/// `struct vtap_copy_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CopyStats {
    /// Copies sent to this output.
    pub sent: u64,
    /// Copies that failed.
    pub failed: u64,
}

/// `struct vtap_parse`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Parse {
    /// Source address (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// EtherType after all VLAN tags, host order.
    pub ether_type: u16,
    /// Outermost VID, 0 = none.
    pub vlan_id: u16,
    /// Source port, host order.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Offset of the L3 header.
    pub l3_off: u16,
    /// Offset of the L4 header.
    pub l4_off: u16,
    /// [`parse_flags`].
    pub flags: u16,
    /// IP protocol.
    pub proto: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// Interface index.
    pub ifindex: u32,
    /// [`Dir`] as u8.
    pub dir: u8,
    /// Zero.
    pub _pad: [u8; 3],
    /// skb->len.
    pub len: u32,
    /// Zero.
    pub _pad2: u32,
}

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: #[repr(C)], only integer fields and arrays of them, no
            // implicit padding (checked against BTF by the abi_layout test).
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pod!(
    Global,
    Bitmap,
    GenConfig,
    Lens,
    CidrKey,
    TapKey,
    TapSel,
    EtherKey,
    Lpm4Key,
    Lpm6Key,
    PolicyAction,
    RateState,
    Output,
    TapStats,
    PolicyStats,
    OutputStats,
    PolicyDrops,
    CopyStats,
    PcapRec,
    CaptureStats,
    Parse,
    ParsePub,
);

/// One struct's layout: (C struct name, size, [(field, offset)]).
pub type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

/// Layout facts the `abi_layout` test compares with BTF: (C struct name, size,
/// [(field, offset)]). `Parse` joins when the datapath publishes it to probes
/// (only types used by maps or globals are in the object's BTF).
pub fn layouts() -> Vec<Layout> {
    use std::mem::{offset_of, size_of};
    macro_rules! l {
        ($c:literal, $t:ty, [$($f:ident),*]) => {
            ($c, size_of::<$t>(), vec![$((stringify!($f), offset_of!($t, $f))),*])
        };
    }
    vec![
        l!(
            "vtap_global",
            Global,
            [active_gen, abi_version, flags, _pad]
        ),
        l!("vtap_parse_pub", ParsePub, [seq, ifindex, p]),
        l!("vtap_bitmap", Bitmap, [w]),
        l!(
            "vtap_gen_config",
            GenConfig,
            [used_fields, flags, bidir, wildcard, lens]
        ),
        l!("vtap_lens", Lens, [n, len]),
        l!(
            "vtap_cidr_key",
            CidrKey,
            [generation, table, len, _pad, addr]
        ),
        l!("vtap_tap_key", TapKey, [ifindex, dir, generation, _pad]),
        l!("vtap_tap_sel", TapSel, [policies, tap_slot, _pad]),
        l!("vtap_ether_key", EtherKey, [ether_type, generation, _pad]),
        l!("vtap_lpm4_key", Lpm4Key, [prefixlen, generation, addr]),
        l!("vtap_lpm6_key", Lpm6Key, [prefixlen, generation, addr]),
        l!(
            "vtap_policy_action",
            PolicyAction,
            [
                outputs,
                out_ids,
                sample_one_in,
                snaplen,
                rate_pps,
                rate_bps,
                shape,
                flow_seed,
                burst_pkts,
                burst_bits,
                fill_pkts_ns,
                fill_bits_ns
            ]
        ),
        l!(
            "vtap_rate_state",
            RateState,
            [lock, _pad, pkts, bits, last_ns]
        ),
        l!(
            "vtap_output",
            Output,
            [ifindex, vlan, kind, flags, snaplen, vni, policies, remote]
        ),
        l!(
            "vtap_pcap_rec",
            PcapRec,
            [
                ts_ns, orig_len, cap_len, ifindex, dir, output, _pad, policies
            ]
        ),
        l!(
            "vtap_capture_stats",
            CaptureStats,
            [packets, bytes, cap_bytes, ring_full]
        ),
        l!(
            "vtap_tap_stats",
            TapStats,
            [packets, bytes, truncated, classified]
        ),
        l!("vtap_policy_stats", PolicyStats, [packets, bytes]),
        l!("vtap_output_stats", OutputStats, [mirrored, failed]),
        l!("vtap_policy_drops", PolicyDrops, [reason]),
        l!("vtap_copy_stats", CopyStats, [sent, failed]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_ops() {
        let mut a = Bitmap::EMPTY;
        a.set(0);
        a.set(65);
        a.set(255);
        assert!(a.test(65) && !a.test(64));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 65, 255]);
        let mut b = Bitmap::EMPTY;
        b.set(65);
        assert_eq!(a.and(&b).iter().collect::<Vec<_>>(), vec![65]);
        a.clear(65);
        assert!(a.and(&b).is_empty());
        assert_eq!(a.or(&b).iter().count(), 3);
    }
}
