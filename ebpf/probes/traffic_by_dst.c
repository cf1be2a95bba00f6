// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * traffic_by_dst.c — library probe "traffic accounting": packets and bytes
 * per destination IPv4 address (spec: traffic_by_dst.yaml).
 *
 * One per-CPU hash entry per destination address, so counting needs no
 * atomics; the daemon sums the CPUs when exporting. Bytes are skb->len: the
 * frame from its Ethernet header on, as seen at the hook. Non-IPv4 frames
 * are not counted. When the map is full, new destinations are not counted
 * (existing ones still are).
 */
#include "vtap_probe.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct dst_key {
	__be32 addr; /* destination IPv4 address, network order */
};

struct dst_val {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dst_key);
	__type(value, struct dst_val);
} dst_stats SEC(".maps");

SEC("classifier")
int traffic_by_dst(struct __sk_buff *skb)
{
	struct vtap_probe_pkt p;

	if (vtap_probe_parse(skb, &p) != 0 || p.ether_type != ETH_P_IP)
		return VTAP_PROBE_PASS;

	struct dst_key key = { .addr = p.daddr4 };
	struct dst_val *v = bpf_map_lookup_elem(&dst_stats, &key);
	if (!v) {
		struct dst_val first = { .packets = 1, .bytes = p.len };
		if (bpf_map_update_elem(&dst_stats, &key, &first, BPF_NOEXIST) == 0)
			return VTAP_PROBE_PASS;
		/* another CPU created it meanwhile (or the map is full) */
		v = bpf_map_lookup_elem(&dst_stats, &key);
		if (!v)
			return VTAP_PROBE_PASS;
	}
	/* this CPU's slot: no other CPU writes it */
	v->packets += 1;
	v->bytes += p.len;
	return VTAP_PROBE_PASS;
}
