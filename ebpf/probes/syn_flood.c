// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * syn_flood.c — library probe "half-open TCP connections / SYN flood":
 * per destination IPv4 address, the connection attempts (SYNs) and the
 * server's answers (SYN-ACKs) (spec: syn_flood.yaml).
 *
 * The handshake's final ACK cannot be told from any other ACK without
 * per-connection state, so a connection counts as answered when its
 * SYN-ACK is seen: a SYN-ACK from X to Y counts for destination X (the
 * server the SYN was sent to). Attached in both directions, a tap sees a
 * VM's SYNs and the SYN-ACKs coming back (VM as client), or the SYNs sent
 * to the VM and its SYN-ACKs (VM as server). Half-open attempts per
 * destination = syn - synack; a SYN flood shows as syn growing much
 * faster than synack (or synack staying flat: the server no longer
 * answers).
 *
 * - SYN: SYN set, ACK and RST clear (ECE/CWR of an ECN setup, FIN, PSH,
 *   URG are ignored);
 * - SYN-ACK: SYN and ACK set, RST clear.
 * Retransmitted SYNs and SYN-ACKs count again. Non-first IPv4 fragments
 * carry no TCP header and are not counted; IPv6 is not counted.
 *
 * One per-CPU hash entry per destination, so counting needs no atomics
 * (the daemon sums the CPUs). When the map is full, new destinations are
 * not counted (existing ones still are).
 */
#include "vtap_probe.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

struct syn_key {
	__be32 addr; /* the destination (server): daddr of a SYN, saddr of a SYN-ACK */
};

struct syn_val {
	__u64 syn; /* SYNs sent to addr */
	__u64 synack; /* SYN-ACKs sent by addr */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct syn_key);
	__type(value, struct syn_val);
} syn_stats SEC(".maps");

SEC("classifier")
int syn_flood(struct __sk_buff *skb)
{
	struct vtap_probe_pkt p;

	if (vtap_probe_parse(skb, &p) != 0 || p.ether_type != ETH_P_IP || p.proto != IPPROTO_TCP)
		return VTAP_PROBE_PASS;

	__u8 f = p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST);
	struct syn_key key = {};
	int is_syn;
	if (f == TCP_SYN) {
		key.addr = p.daddr4;
		is_syn = 1;
	} else if (f == (TCP_SYN | TCP_ACK)) {
		key.addr = p.saddr4;
		is_syn = 0;
	} else {
		return VTAP_PROBE_PASS;
	}

	struct syn_val *v = bpf_map_lookup_elem(&syn_stats, &key);
	if (!v) {
		struct syn_val first = { .syn = is_syn, .synack = !is_syn };
		if (bpf_map_update_elem(&syn_stats, &key, &first, BPF_NOEXIST) == 0)
			return VTAP_PROBE_PASS;
		/* another CPU created it meanwhile (or the map is full) */
		v = bpf_map_lookup_elem(&syn_stats, &key);
		if (!v)
			return VTAP_PROBE_PASS;
	}
	/* this CPU's slot: no other CPU writes it */
	if (is_syn)
		v->syn += 1;
	else
		v->synack += 1;
	return VTAP_PROBE_PASS;
}
