/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * vtap_probe.h — the header of counting probes.
 *
 * A probe is a small TC program that the daemon compiles (probes/compile.rs
 * embeds this header, so a probe includes it as "vtap_probe.h" and may
 * otherwise include only linux/..., asm/... and bpf/... headers), loads and
 * attaches with TCX on tapped interfaces *after* vtap's own tap program.
 * Its maps are exported as metrics. A probe:
 *  - is a SEC("classifier") program taking a struct __sk_buff *
 *    (aya 0.14 does not know the section name "tc");
 *  - must return VTAP_PROBE_PASS, always: the packet's fate is not its
 *    business, later programs run and the packet goes on untouched;
 *  - must not write to the packet (no bpf_skb_store_bytes, no direct writes,
 *    no redirect, no change of skb->mark / priority / tc_classid);
 *  - declares its maps with BTF (__uint / __type in SEC(".maps")), so the
 *    daemon can decode keys and values.
 *
 * What this header gives:
 *  - VTAP_PROBE_PASS;
 *  - vtap_probe_load(): bounded copy of packet bytes, linear or not;
 *  - struct vtap_probe_pkt + vtap_probe_parse(): Ethernet, one optional VLAN
 *    tag, IPv4 (with options) or IPv6 (fixed header only), TCP/UDP ports and
 *    TCP flags.
 * Everything is __always_inline, loop-free and bounded, so it passes the
 * verifier as part of any probe.
 */
#ifndef VTAP_PROBE_H
#define VTAP_PROBE_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* What every probe returns: "no opinion" (TC_ACT_UNSPEC). With TCX the next
 * program in the chain runs, and when none is left the packet continues as
 * if no program were attached — vtap's tap and the VM's traffic are not
 * affected by probes. Any other value (TC_ACT_OK, TC_ACT_SHOT, redirects)
 * would change the packet's fate or skip the programs after the probe. */
#define VTAP_PROBE_PASS TC_ACT_UNSPEC

#include "vtap_abi.h"

/*
 * Parse once: when vtap's own TC program handled this packet on this hook
 * just before the probe (the interface is a vtap tap in that direction),
 * it left its parse result here — addresses, ports, protocol, TCP flags,
 * L3/L4 offsets, VLAN, direction, tap (struct vtap_parse in vtap_abi.h).
 * The daemon shares this map with every probe it loads.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vtap_parse_pub);
} vtap_parse_pub SEC(".maps");

/* vtap's parse result of this very packet, or NULL (vtap did not parse it:
 * parse it yourself, e.g. with vtap_probe_parse below). The entry is the
 * packet's when the sequence number vtap put in skb->cb[4], the interface
 * and the length all agree. */
static __always_inline const struct vtap_parse *vtap_probe_shared(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct vtap_parse_pub *pp = bpf_map_lookup_elem(&vtap_parse_pub, &zero);
	if (!pp || pp->seq == 0 || pp->seq != skb->cb[4] || pp->ifindex != skb->ifindex ||
	    pp->p.len != skb->len)
		return NULL;
	return &pp->p;
}

/* Packet offsets beyond this are not read (the verifier needs a bound on
 * variable offsets; headers never lie that deep). */
#define VTAP_PROBE_MAX_OFF 0x3fff

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/*
 * Copies len bytes at offset off of the packet (off 0 = the first byte of the
 * Ethernet header) into to: straight from the linear area when the bytes are
 * there, else with bpf_skb_load_bytes (non-linear skbs). Returns 0, or a
 * negative value when the packet is shorter than off + len or off is beyond
 * VTAP_PROBE_MAX_OFF (then *to is unspecified).
 * len must be a compile-time constant (the function is always inlined) and
 * to must point to the program's stack or a map value of at least len bytes.
 */
static __always_inline int vtap_probe_load_ctx(void *ctx, const int xdp, __u32 off, void *to,
					       __u32 len)
{
	void *data, *data_end;
	if (xdp) {
		data = (void *)(long)((struct xdp_md *)ctx)->data;
		data_end = (void *)(long)((struct xdp_md *)ctx)->data_end;
	} else {
		data = (void *)(long)((struct __sk_buff *)ctx)->data;
		data_end = (void *)(long)((struct __sk_buff *)ctx)->data_end;
	}

	if (off > VTAP_PROBE_MAX_OFF)
		return -1;
	if (data + off + len <= data_end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

/* TC probes (struct __sk_buff). */
static __always_inline int vtap_probe_load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	return vtap_probe_load_ctx(skb, 0, off, to, len);
}

/* XDP probes (struct xdp_md). */
static __always_inline int vtap_probe_load_xdp(struct xdp_md *ctx, __u32 off, void *to, __u32 len)
{
	return vtap_probe_load_ctx(ctx, 1, off, to, len);
}

/*
 * A parsed packet. Zero means "not present / not parsed".
 * Byte order: addresses in network order (as on the wire: a map key holding
 * saddr4/daddr4 or saddr6/daddr6 formats with the metric label formats ipv4 /
 * ipv6); ether_type, sport and dport in host order (compare them with plain
 * numbers: p.dport == 443, p.ether_type == ETH_P_IP).
 */
struct vtap_probe_pkt {
	__u16 ether_type; /* after the VLAN tag, if any: ETH_P_IP, ETH_P_IPV6, ... */
	__u8 proto; /* IPPROTO_* of IPv4 / IPv6 next header (0: not IP) */
	__u8 ipv6; /* 1: the IPv6 fields are set, 0: the IPv4 ones */
	__u32 saddr4, daddr4; /* IPv4 addresses, network order */
	__u8 saddr6[16], daddr6[16]; /* IPv6 addresses */
	__u16 sport, dport; /* TCP/UDP ports, host order (0 if not parsed) */
	__u8 tcp_flags; /* TCP flags byte (FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80) */
	__u8 _pad[3];
	__u32 len; /* skb->len: the frame's bytes at the hook, from the Ethernet header on */
};

/* The fixed parts of the headers, read in one piece each. */
struct vtap_probe_vlan {
	__be16 tci;
	__be16 proto;
};

/* TCP or UDP ports (host order) and, for TCP, the flags byte. */
static __always_inline void vtap_probe_parse_l4(void *ctx, const int xdp, struct vtap_probe_pkt *p,
						__u32 off)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr th;
		if (vtap_probe_load_ctx(ctx, xdp, off, &th, sizeof(th)) != 0)
			return;
		p->sport = bpf_ntohs(th.source);
		p->dport = bpf_ntohs(th.dest);
		/* byte 13 of the header: CWR ECE URG ACK PSH RST SYN FIN */
		p->tcp_flags = ((__u8 *)&th)[13];
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr uh;
		if (vtap_probe_load_ctx(ctx, xdp, off, &uh, sizeof(uh)) != 0)
			return;
		p->sport = bpf_ntohs(uh.source);
		p->dport = bpf_ntohs(uh.dest);
	}
}

/*
 * Parses the packet: Ethernet, at most one VLAN tag (802.1Q or 802.1ad) in
 * the data (a tag the NIC or kernel moved into skb metadata is not in the
 * data and needs no parsing), then IPv4 (options skipped by IHL; a non-first
 * fragment has no ports) or IPv6 (fixed header: the next header is the
 * protocol, extension headers are not followed, so ports are only set when
 * TCP/UDP comes right after it), then TCP/UDP ports and TCP flags.
 * Fills *p (zeroing it first) and returns 0 when at least the L3 header was
 * parsed, -1 otherwise (not IPv4/IPv6, or truncated: what was read before
 * is set, len always).
 */
static __always_inline int vtap_probe_parse_ctx(void *ctx, const int xdp, struct vtap_probe_pkt *p)
{
	struct ethhdr eth;
	__u32 off = sizeof(struct ethhdr);

	__builtin_memset(p, 0, sizeof(*p));
	p->len = xdp ? bpf_xdp_get_buff_len(ctx) : ((struct __sk_buff *)ctx)->len;
	if (vtap_probe_load_ctx(ctx, xdp, 0, &eth, sizeof(eth)) != 0)
		return -1;
	p->ether_type = bpf_ntohs(eth.h_proto);
	if (p->ether_type == ETH_P_8021Q || p->ether_type == ETH_P_8021AD) {
		struct vtap_probe_vlan vh;
		if (vtap_probe_load_ctx(ctx, xdp, off, &vh, sizeof(vh)) != 0)
			return -1;
		p->ether_type = bpf_ntohs(vh.proto);
		off += sizeof(vh);
	}

	if (p->ether_type == ETH_P_IP) {
		struct iphdr ip;
		if (vtap_probe_load_ctx(ctx, xdp, off, &ip, sizeof(ip)) != 0)
			return -1;
		if (ip.version != 4 || ip.ihl < 5)
			return -1;
		p->proto = ip.protocol;
		p->saddr4 = ip.saddr;
		p->daddr4 = ip.daddr;
		/* a non-first fragment carries no L4 header */
		if ((bpf_ntohs(ip.frag_off) & 0x1fff) == 0)
			vtap_probe_parse_l4(ctx, xdp, p, off + ip.ihl * 4);
		return 0;
	}
	if (p->ether_type == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (vtap_probe_load_ctx(ctx, xdp, off, &ip6, sizeof(ip6)) != 0)
			return -1;
		if (ip6.version != 6)
			return -1;
		p->ipv6 = 1;
		p->proto = ip6.nexthdr;
		__builtin_memcpy(p->saddr6, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr6, &ip6.daddr, 16);
		vtap_probe_parse_l4(ctx, xdp, p, off + sizeof(ip6));
		return 0;
	}
	return -1;
}

/* TC probes. */
static __always_inline int vtap_probe_parse(struct __sk_buff *skb, struct vtap_probe_pkt *p)
{
	return vtap_probe_parse_ctx(skb, 0, p);
}

/* XDP probes (len = the frame's bytes, all fragments). */
static __always_inline int vtap_probe_parse_xdp(struct xdp_md *ctx, struct vtap_probe_pkt *p)
{
	return vtap_probe_parse_ctx(ctx, 1, p);
}

/* What an XDP probe returns: the frame goes on to the stack untouched. */
#define VTAP_PROBE_XDP_PASS XDP_PASS

#endif /* VTAP_PROBE_H */
