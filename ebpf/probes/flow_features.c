// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * flow_features.c — library probe "flow features": NetFlow-like per-flow
 * records of IPv4 traffic (spec: flow_features.yaml).
 *
 * A flow is unidirectional, keyed by the 5-tuple (source and destination
 * address, source and destination port, protocol). Of the 15 NetFlow v9
 * features the fully-adaptive monitoring paper extracts, the record has:
 *
 *   1  INPUT_SNMP      in_ifindex: the interface the flow's first packet
 *                      came in on (skb->ingress_ifindex): the tap itself for
 *                      traffic from the VM (TC ingress), the host's receiving
 *                      interface for traffic to it (TC egress; 0 when the
 *                      host sent it itself)
 *   2  OUTPUT_SNMP     out_ifindex: the interface of the hook when it is not
 *                      the input one, i.e. the tap for traffic to the VM
 *                      (TC egress); 0 at TC ingress (not routed yet)
 *   5  IN_PKTS         packets
 *   6  IN_BYTES        bytes: skb->len, the frame from its Ethernet header
 *                      on (as every library probe counts), not IP bytes
 *   7  IPV4_SRC_ADDR   key saddr
 *   8  IPV4_DST_ADDR   key daddr
 *   9  PROTOCOL        key proto
 *  10  SRC_TOS         tos: the IPv4 TOS byte (DSCP << 2 | ECN) of the
 *                      flow's first packet
 *  11  L4_SRC_PORT     key sport (TCP/UDP; 0 for other protocols)
 *  12  L4_DST_PORT     key dport
 *  13  TCP_FLAGS       tcp_flags: OR of the TCP flags of the flow's packets
 *  14  FIRST_SWITCHED  first_seen_ns: bpf_ktime_get_ns() (CLOCK_MONOTONIC,
 *                      ns since boot, not wall-clock time) of the first packet
 *  15  LAST_SWITCHED   last_seen_ns: the same, of the latest packet
 *
 * 3 SRC_AS and 4 DST_AS need a BGP table a tap does not have (the paper
 * sets them to zero): they are left out. 1, 2 and 10 are one-time features,
 * set by the flow's first packet.
 *
 * Non-first IPv4 fragments have no ports: they form a flow of their own
 * with ports 0. IPv6 is not recorded.
 *
 * The table is an LRU hash (not per-CPU: a flow has one first/last time):
 * when it is full, the least recently updated flows are evicted, so new
 * flows are always recorded. packets and bytes are added atomically; the
 * last-seen time and the flags are plain stores (two CPUs updating one flow
 * at the same instant may lose a flag bit the other one set in that
 * instant: the BPF CPU v1 this build compiles for has no atomic OR).
 */
#include "vtap_probe.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct flow_key {
	__be32 saddr; /* IPv4 source, network order */
	__be32 daddr; /* IPv4 destination, network order */
	__u16 sport; /* host order (0: not TCP/UDP, or a non-first fragment) */
	__u16 dport;
	__u8 proto; /* IPPROTO_* */
	__u8 _pad[3];
};

struct flow_val {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns;
	__u64 last_seen_ns;
	__u32 in_ifindex;
	__u32 out_ifindex;
	__u8 tos;
	__u8 tcp_flags; /* FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80 */
	__u8 _pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

/* The TOS byte of an IPv4 packet that vtap_probe_parse parsed (Ethernet, at
 * most one VLAN tag). */
static __always_inline __u8 ipv4_tos(struct __sk_buff *skb)
{
	__u32 off = sizeof(struct ethhdr);
	__be16 proto;
	__u8 vihl_tos[2];

	if (vtap_probe_load(skb, 12, &proto, sizeof(proto)) != 0)
		return 0;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		off += sizeof(struct vtap_probe_vlan);
	if (vtap_probe_load(skb, off, vihl_tos, sizeof(vihl_tos)) != 0)
		return 0;
	return vihl_tos[1];
}

SEC("classifier")
int flow_features(struct __sk_buff *skb)
{
	struct vtap_probe_pkt p;

	if (vtap_probe_parse(skb, &p) != 0 || p.ether_type != ETH_P_IP)
		return VTAP_PROBE_PASS;

	struct flow_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.saddr = p.saddr4;
	key.daddr = p.daddr4;
	key.sport = p.sport;
	key.dport = p.dport;
	key.proto = p.proto;

	__u64 now = bpf_ktime_get_ns();
	struct flow_val *v = bpf_map_lookup_elem(&flows, &key);
	if (!v) {
		__u32 iif = skb->ingress_ifindex;
		__u32 dev = skb->ifindex;
		struct flow_val first;
		__builtin_memset(&first, 0, sizeof(first));
		first.packets = 1;
		first.bytes = p.len;
		first.first_seen_ns = now;
		first.last_seen_ns = now;
		first.in_ifindex = iif;
		first.out_ifindex = dev != iif ? dev : 0;
		first.tos = ipv4_tos(skb);
		first.tcp_flags = p.tcp_flags;
		if (bpf_map_update_elem(&flows, &key, &first, BPF_NOEXIST) == 0)
			return VTAP_PROBE_PASS;
		/* another CPU created it meanwhile (or it was evicted at once) */
		v = bpf_map_lookup_elem(&flows, &key);
		if (!v)
			return VTAP_PROBE_PASS;
	}
	/* one entry for every CPU: counters are added atomically */
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, p.len);
	v->last_seen_ns = now;
	if ((v->tcp_flags | p.tcp_flags) != v->tcp_flags)
		v->tcp_flags |= p.tcp_flags;
	return VTAP_PROBE_PASS;
}
