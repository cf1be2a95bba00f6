// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * dns_flows.c — library probe "DNS per client": DNS over UDP port 53,
 * per client IPv4 address, queries by query type and responses by response
 * code (spec: dns_flows.yaml).
 *
 * A UDP datagram from or to port 53 whose payload holds at least the
 * 12-byte DNS header is a DNS message:
 * - the client is the side that is not port 53 (when both are, e.g.
 *   server to server: the sender of a query, the receiver of a response);
 * - the QR bit of the header tells a query (0) from a response (1);
 * - a response is counted under its RCODE (the header's low 4 bits:
 *   0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED, ...; the EDNS extended
 *   RCODE bits are not read);
 * - a query is counted under the QTYPE of its first question (1 A,
 *   28 AAAA, 5 CNAME, 15 MX, 16 TXT, 255 ANY, ...). To find it, the first
 *   QNAME is walked label by label with a bounded loop: any name up to the
 *   DNS maximum of 255 bytes (encoded, i.e. at most 127 labels) is
 *   followed. A query whose QTYPE cannot be read is counted under code 0
 *   (reserved, never a real QTYPE): no question (QDCOUNT 0), a compression
 *   pointer or reserved label type in the first name, a name longer than
 *   255 bytes, or a message cut short before the QTYPE.
 * Every opcode is counted (a NOTIFY or UPDATE is a "query" too). DNS over
 * TCP, IPv6 and non-first IPv4 fragments are not counted. Bytes are
 * skb->len (the whole frame, from the Ethernet header on).
 *
 * One per-CPU hash entry per (client, kind, code), so counting needs no
 * atomics. When the map is full, new keys are not counted.
 */
#include "vtap_probe.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define DNS_PORT 53
/* Longest domain name on the wire (RFC 1035 2.3.4): length bytes, labels
 * and the root byte. */
#define DNS_MAX_NAME 255
/* Labels of the longest name: 1-byte labels take 2 bytes each. */
#define DNS_MAX_LABELS 128

/* The label kind shows these names. */
enum dns_kind {
	query = 0,
	response = 1,
};

struct dns_key {
	__be32 client; /* the client's IPv4 address, network order */
	enum dns_kind kind; /* query or response */
	__u32 code; /* query: QTYPE of the first question (0: unknown); response: RCODE */
};

struct dns_val {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dns_key);
	__type(value, struct dns_val);
} dns_stats SEC(".maps");

/* The fixed DNS header (RFC 1035 4.1.1). */
struct dns_hdr {
	__be16 id;
	__be16 flags; /* QR(1) OPCODE(4) AA TC RD RA Z(3) RCODE(4) */
	__be16 qdcount;
	__be16 ancount;
	__be16 nscount;
	__be16 arcount;
};

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

/* The QTYPE of the question whose QNAME starts at off (0: unknown). */
static __always_inline __u32 dns_qtype(struct __sk_buff *skb, __u32 off)
{
	__u32 name = 0;

	for (int i = 0; i < DNS_MAX_LABELS; i++) {
		__u8 len;

		if (off > VTAP_PROBE_MAX_OFF || bpf_skb_load_bytes(skb, off, &len, sizeof(len)) != 0)
			return 0;
		off += 1;
		name += 1;
		if (len == 0) {
			/* the root label: QTYPE follows */
			__be16 qtype;
			if (vtap_probe_load(skb, off, &qtype, sizeof(qtype)) != 0)
				return 0;
			return bpf_ntohs(qtype);
		}
		if (len > 63)
			return 0; /* compression pointer (0xc0) or reserved label type */
		off += len;
		name += len;
		if (name >= DNS_MAX_NAME)
			return 0; /* no room left for the root byte */
	}
	return 0;
}

SEC("classifier")
int dns_flows(struct __sk_buff *skb)
{
	struct vtap_probe_pkt p;

	if (vtap_probe_parse(skb, &p) != 0 || p.ether_type != ETH_P_IP || p.proto != IPPROTO_UDP)
		return VTAP_PROBE_PASS;
	if (p.sport != DNS_PORT && p.dport != DNS_PORT)
		return VTAP_PROBE_PASS;

	__u32 off = udp_payload_off(skb);
	struct dns_hdr h;
	if (off == 0 || vtap_probe_load(skb, off, &h, sizeof(h)) != 0)
		return VTAP_PROBE_PASS; /* shorter than a DNS header */

	__u16 flags = bpf_ntohs(h.flags);
	int qr = flags >> 15;
	struct dns_key key;
	__builtin_memset(&key, 0, sizeof(key));
	if (p.dport == DNS_PORT && p.sport != DNS_PORT)
		key.client = p.saddr4;
	else if (p.sport == DNS_PORT && p.dport != DNS_PORT)
		key.client = p.daddr4;
	else
		key.client = qr ? p.daddr4 : p.saddr4;
	if (qr) {
		key.kind = response;
		key.code = flags & 0xf;
	} else {
		key.kind = query;
		key.code = h.qdcount ? dns_qtype(skb, off + sizeof(h)) : 0;
	}

	struct dns_val *v = bpf_map_lookup_elem(&dns_stats, &key);
	if (!v) {
		struct dns_val first = { .packets = 1, .bytes = p.len };
		if (bpf_map_update_elem(&dns_stats, &key, &first, BPF_NOEXIST) == 0)
			return VTAP_PROBE_PASS;
		/* another CPU created it meanwhile (or the map is full) */
		v = bpf_map_lookup_elem(&dns_stats, &key);
		if (!v)
			return VTAP_PROBE_PASS;
	}
	/* this CPU's slot: no other CPU writes it */
	v->packets += 1;
	v->bytes += p.len;
	return VTAP_PROBE_PASS;
}
