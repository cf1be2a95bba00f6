/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * vtap_abi.h — the single source of truth for every structure and constant
 * shared between the C datapath (ebpf/ .c files) and user space (vtap/vtap-abi).
 *
 * Rules:
 *  - fixed-width types only, explicit _pad fields, no implicit padding;
 *  - every struct has a _Static_assert on its size;
 *  - the Rust mirror in vtap/vtap-abi/src/lib.rs is checked against the BTF
 *    of the built object by vtap-core's `abi_layout` test (sizes and offsets).
 *
 * Classification design (see ARCHITECTURE.md): every enabled policy owns a
 * slot 0..VTAP_MAX_POLICIES-1. Each match field has a lookup table that maps a
 * packet's value for that field to the bitmap of policy slots that accept the
 * value (policies that do not constrain the field are folded into every entry
 * and into the field's wildcard bitmap, used on a lookup miss). The datapath
 * ANDs one bitmap per field, so the cost does not depend on the number of
 * policies. All tables are keyed by a generation (0/1); user space writes the
 * inactive generation and then flips `vtap_global.active_gen`, so a packet is
 * always classified against exactly one complete policy set.
 */
#ifndef VTAP_ABI_H
#define VTAP_ABI_H

#ifdef __BPF__
#include <linux/types.h>
#else
#include <linux/types.h>
#endif
#include <linux/bpf.h> /* struct bpf_spin_lock */

#define VTAP_ABI_VERSION 1

#define VTAP_MAX_POLICIES 256
#define VTAP_BITMAP_WORDS (VTAP_MAX_POLICIES / 64)
#define VTAP_MAX_OUTPUTS 64 /* distinct (interface, vlan) outputs */
#define VTAP_MAX_POLICY_OUTPUTS 8 /* outputs of one policy */
#define VTAP_GENERATIONS 2
#define VTAP_MAX_TAPS 1024 /* tapped interfaces (tap slots) */
#define VTAP_MAX_CIDRS 16384 /* LPM entries per table, vtap_cidr entries (both generations) */
#define VTAP_MAX_ETHER_TYPES 1024 /* ether_type entries (both generations) */
#define VTAP_PORTS 65536
#define VTAP_NO_OUTPUT 0xff /* unused entry of vtap_policy_action.out_ids */
/* Largest capture of one packet (pcap outputs): a 9000-byte jumbo frame
 * with its Ethernet header and two VLAN tags fits whole. */
#define VTAP_PCAP_MAX_CAPLEN 9216

/* Direction of a packet relative to the VM behind the tapped interface. */
enum vtap_dir {
	VTAP_DIR_INGRESS = 0, /* from the VM (TC ingress on its tap) */
	VTAP_DIR_EGRESS = 1, /* to the VM (TC egress on its tap) */
	VTAP_DIR_COUNT = 2,
};

/* Match fields. Bit i of vtap_gen_config.used_fields is set when at least
 * one policy of that generation constrains field i; unused fields are not
 * looked up at all. */
enum vtap_field {
	VTAP_F_ETHER_TYPE = 0,
	VTAP_F_SRC = 1,
	VTAP_F_DST = 2,
	VTAP_F_PROTO = 3,
	VTAP_F_SPORT = 4,
	VTAP_F_DPORT = 5,
	VTAP_F_TCP_FLAGS = 6,
	VTAP_F_COUNT = 7,
};

/* Why a copy selected by a policy was not delivered. */
enum vtap_drop_reason {
	VTAP_DROP_CLONE_FAILED = 0, /* the copy could not be made (no memory, recursion) */
	VTAP_DROP_OUTPUT_DOWN = 1, /* the output interface does not exist now, or is down */
	VTAP_DROP_VLAN_FAILED = 2, /* the 802.1Q tag could not be pushed */
	VTAP_DROP_SAMPLED = 3, /* not selected by 1-in-N sampling (per packet) */
	VTAP_DROP_RATE_LIMITED = 4, /* over the policy's pps/bps limit (per packet) */
	VTAP_DROP_RING_FULL = 5, /* pcap output: no room in the ring buffer */
	VTAP_DROP_XMIT_DROPPED = 6, /* cloned, but the output's queue dropped it */
	VTAP_DROP_XDP_MODE = 7, /* an interface output of a tap in XDP mode (no copy from XDP) */
	VTAP_DROP_REASONS = 8,
};

/* Output kinds. */
enum vtap_output_kind {
	VTAP_OUT_NONE = 0,
	VTAP_OUT_IFACE = 1, /* clone-redirect to ifindex, optional 802.1Q tag */
	VTAP_OUT_PCAP = 2, /* a record in vtap_pcap_ring (a pcap capture) */
	VTAP_OUT_VXLAN = 3, /* clone-redirect to vtap's collect-metadata VXLAN device
			     * (ifindex), tunnel key set there by vtap_tunnel_tx */
};

/* Output flags (vtap_output.flags). */
enum vtap_output_flags {
	VTAP_OUTF_REMOTE6 = 1, /* VXLAN: remote is IPv6 (else IPv4 in remote[0]) */
};

/* A VXLAN copy carries its output in skb->mark from the tap program to
 * vtap_tunnel_tx on the VXLAN device: VTAP_TUNNEL_MARK | gen * MAX_OUTPUTS + id.
 * The original packet's mark is restored right after the clone. */
#define VTAP_TUNNEL_MARK 0x76740000u /* "vt" */
#define VTAP_TUNNEL_MARK_MASK 0xffff0000u

/* Parse flags (vtap_parse.flags). */
enum vtap_parse_flags {
	VTAP_P_IP = 1 << 0, /* saddr/daddr valid (IPv4, IPv6 or ARP/IPv4) */
	VTAP_P_IPV6 = 1 << 1, /* addresses are IPv6 (else IPv4 in the first 4 bytes) */
	VTAP_P_L4 = 1 << 2, /* proto valid */
	VTAP_P_PORTS = 1 << 3, /* sport/dport valid (TCP/UDP, first fragment) */
	VTAP_P_TCP_FLAGS = 1 << 4, /* tcp_flags valid */
	VTAP_P_FRAGMENT = 1 << 5, /* a non-first fragment: no L4 header */
	VTAP_P_TRUNCATED = 1 << 6, /* a header ended early; parsing stopped there */
	VTAP_P_TAGGED = 1 << 7, /* at least one VLAN tag (in data or offloaded) */
	VTAP_P_FIRST_FRAG = 1 << 8, /* the first fragment of a fragmented packet (has ports) */
};

/* Generation-independent state: array[1]. */
struct vtap_global {
	__u32 active_gen;
	__u32 abi_version;
	__u32 flags; /* enum vtap_global_flags */
	__u32 _pad;
};
_Static_assert(sizeof(struct vtap_global) == 16, "vtap_global size");

enum vtap_global_flags {
	/* Publish each packet's parse result in vtap_parse_pub for probes
	 * (set while at least one probe runs). */
	VTAP_G_SHARE_PARSE = 1 << 0,
};

struct vtap_bitmap {
	__u64 w[VTAP_BITMAP_WORDS];
};
_Static_assert(sizeof(struct vtap_bitmap) == 32, "vtap_bitmap size");

/* Address tables. Each one is looked up either in its LPM trie or — when its
 * prefixes use at most VTAP_MAX_LENS distinct lengths, the common case — in
 * the vtap_cidr hash, one exact-match lookup per length, longest first (the
 * first hit is the longest match; much cheaper than a trie walk). */
enum vtap_cidr_table {
	VTAP_T_SRC4 = 0,
	VTAP_T_DST4 = 1,
	VTAP_T_SRC6 = 2,
	VTAP_T_DST6 = 3,
	VTAP_T_COUNT = 4,
};
#define VTAP_MAX_LENS 7
#define VTAP_LENS_LPM 0xff /* vtap_lens.n: use the LPM trie */

struct vtap_lens {
	__u8 n; /* number of lengths, or VTAP_LENS_LPM */
	__u8 len[VTAP_MAX_LENS]; /* prefix lengths, longest first */
};
_Static_assert(sizeof(struct vtap_lens) == 8, "vtap_lens size");

/* Per-generation configuration: array[VTAP_GENERATIONS]. */
struct vtap_gen_config {
	__u32 used_fields; /* bit VTAP_F_x set when some policy constrains field x */
	__u32 flags; /* VTAP_GEN_ANY_BIDIR when bidir is not empty */
	struct vtap_bitmap bidir; /* policies with bidirectional: true */
	struct vtap_bitmap wildcard[VTAP_F_COUNT]; /* policies unconstrained on field x */
	struct vtap_lens lens[VTAP_T_COUNT]; /* how each address table is looked up */
};
#define VTAP_GEN_ANY_BIDIR 1
_Static_assert(sizeof(struct vtap_gen_config) == 8 + 32 + 32 * VTAP_F_COUNT + 8 * VTAP_T_COUNT,
	       "vtap_gen_config size");

/* vtap_cidr: hash (gen, table, prefix length, masked address) -> bitmap,
 * the same bitmap the LPM entry of that prefix would hold. */
struct vtap_cidr_key {
	__u8 generation;
	__u8 table; /* enum vtap_cidr_table */
	__u8 len;
	__u8 _pad;
	__u8 addr[16]; /* IPv4 in the first 4 bytes, host bits zero */
};
_Static_assert(sizeof(struct vtap_cidr_key) == 20, "vtap_cidr_key size");

/* vtap_tap_sel: hash (gen, ifindex, dir) -> struct vtap_tap_sel. */
struct vtap_tap_key {
	__u32 ifindex;
	__u8 dir;
	__u8 generation;
	__u16 _pad;
};
_Static_assert(sizeof(struct vtap_tap_key) == 8, "vtap_tap_key size");

struct vtap_tap_sel {
	struct vtap_bitmap policies; /* policies applying to this tap + direction */
	__u32 tap_slot; /* index of the tap's counters, stable while attached */
	__u32 _pad;
};
_Static_assert(sizeof(struct vtap_tap_sel) == 40, "vtap_tap_sel size");

/* vtap_ether_type: hash (gen, ether_type in host order) -> bitmap. */
struct vtap_ether_key {
	__u16 ether_type;
	__u8 generation;
	__u8 _pad;
};
_Static_assert(sizeof(struct vtap_ether_key) == 4, "vtap_ether_key size");

/* vtap_{src,dst}{4,6}: LPM tries. prefixlen = 32 (the generation) + CIDR length. */
struct vtap_lpm4_key {
	__u32 prefixlen;
	__u32 generation;
	__u8 addr[4];
};
_Static_assert(sizeof(struct vtap_lpm4_key) == 12, "vtap_lpm4_key size");

struct vtap_lpm6_key {
	__u32 prefixlen;
	__u32 generation;
	__u8 addr[16];
};
_Static_assert(sizeof(struct vtap_lpm6_key) == 24, "vtap_lpm6_key size");

/* vtap_proto, vtap_tcp_flags: arrays indexed gen * 256 + value.
 * vtap_sport, vtap_dport: arrays indexed gen * 65536 + port. */

/* Shaping of a policy's copies (vtap_policy_action.shape). */
enum vtap_shape_flags {
	/* 1-in-N by a symmetric hash of the flow (both directions of a
	 * conversation go the same way); without it, each packet is kept with
	 * probability 1/N (bpf_get_prandom_u32). */
	VTAP_SHAPE_SAMPLE_FLOW = 1 << 0,
};

/* Token buckets: credit is kept in units of 1e-9 packet / 1e-9 bit, refilled
 * by elapsed_ns * rate, capped at burst * VTAP_CREDIT_UNIT. */
#define VTAP_CREDIT_UNIT 1000000000ULL

/* vtap_actions: array indexed gen * VTAP_MAX_POLICIES + slot. The first 40
 * bytes are all a policy without shaping needs (sample_one_in == 1,
 * rate_pps == rate_bps == 0); the rest is read only by shaped policies. */
struct vtap_policy_action {
	__u64 outputs; /* bitmap of output ids */
	__u8 out_ids[VTAP_MAX_POLICY_OUTPUTS]; /* the same ids, VTAP_NO_OUTPUT = unused */
	__u32 sample_one_in; /* keep 1 packet in N (1 = every packet) */
	__u32 snaplen; /* bytes to capture (pcap outputs), 0 = all */
	__u64 rate_pps; /* packets per second, 0 = no packet limit */
	__u64 rate_bps; /* bits per second, 0 = no bit limit */
	__u32 shape; /* enum vtap_shape_flags */
	__u32 flow_seed; /* key of the flow hash (VTAP_SHAPE_SAMPLE_FLOW) */
	__u64 burst_pkts; /* packet bucket size (packets) */
	__u64 burst_bits; /* bit bucket size (bits) */
	__u64 fill_pkts_ns; /* ns to refill the packet bucket from empty (>= 1) */
	__u64 fill_bits_ns; /* ns to refill the bit bucket from empty (>= 1) */
};
_Static_assert(sizeof(struct vtap_policy_action) == 80, "vtap_policy_action size");

/* vtap_rate: array indexed by policy slot (not generational: a policy keeps
 * its buckets across policy changes). One bucket pair per policy, shared by
 * every CPU, updated under the spin lock. All zero = full buckets. */
struct vtap_rate_state {
	struct bpf_spin_lock lock;
	__u32 _pad;
	__s64 pkts; /* packet credit, in 1e-9 packet */
	__s64 bits; /* bit credit, in 1e-9 bit (below 0 after a packet larger than the bucket) */
	__u64 last_ns; /* bpf_ktime_get_ns() of the last refill */
};
_Static_assert(sizeof(struct vtap_rate_state) == 32, "vtap_rate_state size");

/* vtap_outputs: array indexed gen * VTAP_MAX_OUTPUTS + output id. */
struct vtap_output {
	__u32 ifindex; /* 0 = the interface does not exist now */
	__u16 vlan; /* 802.1Q VID to push, 0 = none */
	__u8 kind; /* enum vtap_output_kind */
	__u8 flags; /* enum vtap_output_flags */
	__u32 snaplen; /* pcap: bytes to keep, 1..VTAP_PCAP_MAX_CAPLEN */
	__u32 vni; /* VXLAN: the VNI (24 bits) */
	struct vtap_bitmap policies; /* pcap: the policies naming this capture */
	__u32 remote[4]; /* VXLAN: remote address, host byte order per word
			  * (IPv4: remote[0]), as struct bpf_tunnel_key wants */
};
_Static_assert(sizeof(struct vtap_output) == 64, "vtap_output size");

/* One record of vtap_pcap_ring (BPF_MAP_TYPE_RINGBUF), followed by cap_len
 * packet bytes (the reservation is rounded up to a size class). */
struct vtap_pcap_rec {
	__u64 ts_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u32 orig_len; /* skb->len / frame length */
	__u32 cap_len; /* bytes that follow, <= orig_len */
	__u32 ifindex;
	__u8 dir; /* enum vtap_dir */
	__u8 output; /* output id of the capture */
	__u16 _pad;
	struct vtap_bitmap policies; /* the firing policies that sent it here */
};
_Static_assert(sizeof(struct vtap_pcap_rec) == 56, "vtap_pcap_rec size");

/* --- counters (per-CPU, summed by user space; not generational) --------- */

/* vtap_tap_stats: per-CPU array indexed tap_slot * VTAP_DIR_COUNT + dir. */
struct vtap_tap_stats {
	__u64 packets;
	__u64 bytes;
	__u64 truncated; /* packets whose headers ended early (still passed) */
	__u64 classified; /* packets that matched at least one policy */
};
_Static_assert(sizeof(struct vtap_tap_stats) == 32, "vtap_tap_stats size");

/* vtap_policy_stats: per-CPU array indexed slot * VTAP_DIR_COUNT + dir. */
struct vtap_policy_stats {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct vtap_policy_stats) == 16, "vtap_policy_stats size");

/* vtap_output_stats: per-CPU array indexed slot * VTAP_MAX_OUTPUTS + output id.
 * A copy shared by several policies counts for each of them. */
struct vtap_output_stats {
	__u64 mirrored;
	__u64 failed; /* any drop reason, detailed in vtap_policy_drops */
};
_Static_assert(sizeof(struct vtap_output_stats) == 16, "vtap_output_stats size");

/* vtap_policy_drops: per-CPU array indexed by slot. The unit of the
 * `sampled` and `rate_limited` reasons is a packet of the policy (none of its
 * outputs got a copy); the other reasons count copies (one per output). So,
 * for every output o of a policy:
 *   matched = sampled + rate_limited + mirrored(o) + failed(o). */
struct vtap_policy_drops {
	__u64 reason[VTAP_DROP_REASONS];
};
_Static_assert(sizeof(struct vtap_policy_drops) == 64, "vtap_policy_drops size");

/* vtap_copy_stats: per-CPU array indexed by output id: copies really sent. */
struct vtap_copy_stats {
	__u64 sent;
	__u64 failed;
};
_Static_assert(sizeof(struct vtap_copy_stats) == 16, "vtap_copy_stats size");

/* vtap_capture_stats: per-CPU array indexed by output id (pcap outputs). */
struct vtap_capture_stats {
	__u64 packets; /* records submitted to the ring */
	__u64 bytes; /* their original lengths */
	__u64 cap_bytes; /* their captured lengths */
	__u64 ring_full; /* records that found no room */
};
_Static_assert(sizeof(struct vtap_capture_stats) == 32, "vtap_capture_stats size");

/* The parse result of one packet: what the classifier looks at. Also the
 * record the tap shares with probes (parse once). Offsets are from the start
 * of packet data; 0xffff = absent. */
struct vtap_parse {
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 ether_type; /* host order, after all VLAN tags */
	__u16 vlan_id; /* outermost tag's VID (offloaded or in data), 0 = none */
	__u16 sport; /* host order */
	__u16 dport;
	__u16 l3_off;
	__u16 l4_off;
	__u16 flags; /* enum vtap_parse_flags */
	__u8 proto;
	__u8 tcp_flags;
	__u32 ifindex;
	__u8 dir;
	__u8 _pad[3];
	__u32 len; /* skb->len */
	__u32 _pad2;
};
_Static_assert(sizeof(struct vtap_parse) == 64, "vtap_parse size");

/* vtap_parse_pub: per-CPU array[1], pinned for probes ("parse once"). The
 * TC programs write the parse result of the packet they handle and its
 * sequence number, and put the same number in skb->cb[4]; a probe attached
 * after them on the same hook finds the entry for *its* packet when
 * seq == skb->cb[4] and ifindex == skb->ifindex (see vtap_probe.h). */
struct vtap_parse_pub {
	__u32 seq;
	__u32 ifindex;
	struct vtap_parse p;
};
_Static_assert(sizeof(struct vtap_parse_pub) == 72, "vtap_parse_pub size");

#endif /* VTAP_ABI_H */
