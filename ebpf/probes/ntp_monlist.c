// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ntp_monlist.c — library probe "NTP mode 7 (monlist) amplification": per
 * source IPv4 address, NTP packets and bytes, and those of mode 7
 * (spec: ntp_monlist.yaml).
 *
 * NTP: UDP with source or destination port 123 and at least one byte of
 * payload. Its first byte is LI(2) VN(3) Mode(3); mode 7 is the private
 * mode of ntpd's ntpdc queries, among them MON_GETLIST(_1) ("monlist"),
 * whose responses are up to ~200 times larger than the request: the
 * classic reflection/amplification vector. Every mode-7 packet is counted
 * (requests and responses, any request code); ordinary NTP (mode 3 client,
 * 4 server, 6 control, ...) only in the all-NTP counters, for comparison.
 *
 * Keyed by source: with both directions attached, the (often spoofed)
 * sources of mode-7 requests sent to a VM and a VM sending mode-7
 * responses (an amplifier) both show up. Bytes are skb->len (the whole
 * frame, from the Ethernet header on). IPv6 and non-first IPv4 fragments
 * are not counted.
 *
 * One per-CPU hash entry per source address, so counting needs no atomics.
 * When the map is full, new sources are not counted.
 */
#include "vtap_probe.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define NTP_PORT 123
#define NTP_MODE_PRIVATE 7

struct ntp_key {
	__be32 addr; /* source IPv4 address, network order */
};

struct ntp_val {
	__u64 packets; /* all NTP packets */
	__u64 bytes;
	__u64 mode7_packets; /* mode 7 (private: monlist, ...) packets */
	__u64 mode7_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ntp_key);
	__type(value, struct ntp_val);
} ntp_stats SEC(".maps");

/* The offset of the UDP payload of an IPv4 packet that vtap_probe_parse
 * parsed: Ethernet, at most one VLAN tag, the IPv4 header by its IHL, the
 * UDP header. 0 when it cannot be read. */
static __always_inline __u32 udp_payload_off(struct __sk_buff *skb)
{
	__u32 off = sizeof(struct ethhdr);
	__be16 proto;
	__u8 vihl;

	if (vtap_probe_load(skb, 12, &proto, sizeof(proto)) != 0)
		return 0;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		off += sizeof(struct vtap_probe_vlan);
	if (vtap_probe_load(skb, off, &vihl, sizeof(vihl)) != 0)
		return 0;
	return off + (vihl & 0xf) * 4 + sizeof(struct udphdr);
}

SEC("classifier")
int ntp_monlist(struct __sk_buff *skb)
{
	struct vtap_probe_pkt p;

	if (vtap_probe_parse(skb, &p) != 0 || p.ether_type != ETH_P_IP || p.proto != IPPROTO_UDP)
		return VTAP_PROBE_PASS;
	if (p.sport != NTP_PORT && p.dport != NTP_PORT)
		return VTAP_PROBE_PASS;

	__u32 off = udp_payload_off(skb);
	__u8 first;
	if (off == 0 || vtap_probe_load(skb, off, &first, sizeof(first)) != 0)
		return VTAP_PROBE_PASS; /* no payload */
	__u64 m7 = (first & 7) == NTP_MODE_PRIVATE;

	struct ntp_key key = { .addr = p.saddr4 };
	struct ntp_val *v = bpf_map_lookup_elem(&ntp_stats, &key);
	if (!v) {
		struct ntp_val init = {
			.packets = 1,
			.bytes = p.len,
			.mode7_packets = m7,
			.mode7_bytes = m7 ? p.len : 0,
		};
		if (bpf_map_update_elem(&ntp_stats, &key, &init, BPF_NOEXIST) == 0)
			return VTAP_PROBE_PASS;
		/* another CPU created it meanwhile (or the map is full) */
		v = bpf_map_lookup_elem(&ntp_stats, &key);
		if (!v)
			return VTAP_PROBE_PASS;
	}
	/* this CPU's slot: no other CPU writes it */
	v->packets += 1;
	v->bytes += p.len;
	if (m7) {
		v->mode7_packets += 1;
		v->mode7_bytes += p.len;
	}
	return VTAP_PROBE_PASS;
}
