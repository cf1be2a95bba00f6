/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h — the one packet parser of the datapath, shared by the TC programs
 * (and, later, by the probes through struct vtap_parse).
 *
 * Semantics (the Rust reference classifier in vtap-core/src/policy/reference.rs
 * implements the same ones, and a differential test compares them):
 *  - Ethernet; up to two VLAN tags in the data (0x8100 / 0x88a8, any order);
 *    a tag offloaded to skb metadata counts as the outermost one;
 *  - ARP for Ethernet/IPv4: sender IP = src, target IP = dst (non-IP for
 *    protocol and ports);
 *  - IPv4 with options; a non-first fragment has a protocol but no ports
 *    (VTAP_P_FRAGMENT), the first one is marked VTAP_P_FIRST_FRAG;
 *  - IPv6 with up to VTAP_MAX_EXT extension headers (hop-by-hop, routing,
 *    fragment, destination options); a non-first fragment has no ports; a
 *    longer chain leaves the protocol unknown;
 *  - TCP (ports and flags), UDP (ports), anything else: protocol only.
 * Every read is bounded: a header that ends early leaves its fields unknown
 * and sets VTAP_P_TRUNCATED. Nothing here rejects a packet.
 */
#ifndef VTAP_PARSE_H
#define VTAP_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "vtap_abi.h"

#define VTAP_MAX_EXT 8
#define VTAP_MAX_OFF 0x3fff /* larger header offsets are not parsed */

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* Every function takes the program's context and `xdp`, a constant at each
 * call site (all of them are inlined): 0 = ctx is a struct __sk_buff (TC),
 * 1 = a struct xdp_md (XDP). The compiler drops the other branch, so each
 * program only contains accesses valid for its context. */

/* Copies len bytes at off: straight from the linear area when it is there,
 * through bpf_skb_load_bytes / bpf_xdp_load_bytes otherwise (non-linear
 * skbs, multi-buffer XDP frames). */
static __always_inline int vtap_load(void *ctx, const int xdp, __u32 off, void *to, __u32 len)
{
	void *data, *data_end;
	if (xdp) {
		data = (void *)(long)((struct xdp_md *)ctx)->data;
		data_end = (void *)(long)((struct xdp_md *)ctx)->data_end;
	} else {
		data = (void *)(long)((struct __sk_buff *)ctx)->data;
		data_end = (void *)(long)((struct __sk_buff *)ctx)->data_end;
	}

	if (off > VTAP_MAX_OFF)
		return -1;
	if (data + off + len <= data_end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

struct vtap_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct vtap_ip4 {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct vtap_ip6 {
	__be32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct vtap_arp {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

static __always_inline void vtap_parse_l4(void *ctx, const int xdp, struct vtap_parse *p, __u32 off)
{
	p->l4_off = off;
	if (p->proto == IPPROTO_TCP) {
		__u8 h[14];
		if (vtap_load(ctx, xdp, off, h, 14) == 0) {
			p->sport = ((__u16)h[0] << 8) | h[1];
			p->dport = ((__u16)h[2] << 8) | h[3];
			p->tcp_flags = h[13];
			p->flags |= VTAP_P_PORTS | VTAP_P_TCP_FLAGS;
			return;
		}
		if (vtap_load(ctx, xdp, off, h, 4) == 0) {
			p->sport = ((__u16)h[0] << 8) | h[1];
			p->dport = ((__u16)h[2] << 8) | h[3];
			p->flags |= VTAP_P_PORTS;
		}
		p->flags |= VTAP_P_TRUNCATED;
	} else if (p->proto == IPPROTO_UDP) {
		__u8 h[4];
		if (vtap_load(ctx, xdp, off, h, 4) == 0) {
			p->sport = ((__u16)h[0] << 8) | h[1];
			p->dport = ((__u16)h[2] << 8) | h[3];
			p->flags |= VTAP_P_PORTS;
		} else {
			p->flags |= VTAP_P_TRUNCATED;
		}
	}
}

static __always_inline void vtap_parse_ip4(void *ctx, const int xdp, struct vtap_parse *p, __u32 off)
{
	struct vtap_ip4 ip;
	if (vtap_load(ctx, xdp, off, &ip, sizeof(ip)) != 0) {
		p->flags |= VTAP_P_TRUNCATED;
		return;
	}
	__builtin_memcpy(p->saddr, ip.saddr, 4);
	__builtin_memcpy(p->daddr, ip.daddr, 4);
	p->proto = ip.protocol;
	p->flags |= VTAP_P_IP | VTAP_P_L4;
	__u32 ihl = ip.ver_ihl & 0x0f;
	if (ihl < 5) {
		p->flags |= VTAP_P_TRUNCATED;
		return;
	}
	__u16 frag_off = bpf_ntohs(ip.frag_off);
	if (frag_off & 0x1fff) {
		p->flags |= VTAP_P_FRAGMENT;
		return;
	}
	if (frag_off & 0x2000) /* more fragments follow: the first one */
		p->flags |= VTAP_P_FIRST_FRAG;
	vtap_parse_l4(ctx, xdp, p, off + ihl * 4);
}

static __always_inline int vtap_ext_hdr(__u8 nh)
{
	return nh == 0 /* hop-by-hop */ || nh == 43 /* routing */ || nh == 44 /* fragment */ ||
	       nh == 60 /* destination options */;
}

static __always_inline void vtap_parse_ip6(void *ctx, const int xdp, struct vtap_parse *p, __u32 off)
{
	struct vtap_ip6 ip;
	if (vtap_load(ctx, xdp, off, &ip, sizeof(ip)) != 0) {
		p->flags |= VTAP_P_TRUNCATED;
		return;
	}
	__builtin_memcpy(p->saddr, ip.saddr, 16);
	__builtin_memcpy(p->daddr, ip.daddr, 16);
	p->flags |= VTAP_P_IP | VTAP_P_IPV6;
	__u8 nh = ip.nexthdr;
	off += sizeof(ip);

#pragma unroll
	for (int i = 0; i < VTAP_MAX_EXT; i++) {
		if (!vtap_ext_hdr(nh))
			break;
		__u8 h[8];
		if (vtap_load(ctx, xdp, off, h, 8) != 0) {
			p->flags |= VTAP_P_TRUNCATED;
			return;
		}
		if (nh == 44) {
			__u16 frag = ((__u16)h[2] << 8) | h[3];
			nh = h[0];
			off += 8;
			if (frag & 0xfff8) {
				p->proto = nh;
				p->flags |= VTAP_P_L4 | VTAP_P_FRAGMENT;
				/* a later fragment: what follows is payload */
				return;
			}
			if (frag & 1) /* M: the first fragment */
				p->flags |= VTAP_P_FIRST_FRAG;
		} else {
			nh = h[0];
			off += ((__u32)h[1] + 1) * 8;
		}
	}
	if (vtap_ext_hdr(nh))
		return; /* chain too long: protocol unknown */
	p->proto = nh;
	p->flags |= VTAP_P_L4;
	vtap_parse_l4(ctx, xdp, p, off);
}

static __always_inline void vtap_parse_arp(void *ctx, const int xdp, struct vtap_parse *p, __u32 off)
{
	struct vtap_arp a;
	if (vtap_load(ctx, xdp, off, &a, sizeof(a)) != 0) {
		p->flags |= VTAP_P_TRUNCATED;
		return;
	}
	if (a.htype != bpf_htons(1) || a.ptype != bpf_htons(ETH_P_IP) || a.hlen != 6 || a.plen != 4)
		return;
	__builtin_memcpy(p->saddr, a.spa, 4);
	__builtin_memcpy(p->daddr, a.tpa, 4);
	p->flags |= VTAP_P_IP;
}

/* Parses the packet of ctx (see vtap_load for `xdp`). */
static __always_inline void vtap_parse_ctx(void *ctx, const int xdp, struct vtap_parse *p,
					   __u32 dir)
{
	struct ethhdr eth;

	p->dir = dir;
	p->l3_off = 0xffff;
	p->l4_off = 0xffff;
	if (xdp) {
		struct xdp_md *x = ctx;
		p->ifindex = x->ingress_ifindex;
		p->len = bpf_xdp_get_buff_len(x);
	} else {
		struct __sk_buff *skb = ctx;
		p->ifindex = skb->ifindex;
		p->len = skb->len;
		if (skb->vlan_present) {
			p->vlan_id = skb->vlan_tci & 0x0fff;
			p->flags |= VTAP_P_TAGGED;
		}
	}
	if (vtap_load(ctx, xdp, 0, &eth, sizeof(eth)) != 0) {
		p->flags |= VTAP_P_TRUNCATED;
		return;
	}
	__be16 proto = eth.h_proto;
	__u32 off = sizeof(eth);

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vtap_vlan_hdr v;
		if (vtap_load(ctx, xdp, off, &v, sizeof(v)) != 0) {
			p->flags |= VTAP_P_TRUNCATED;
			p->ether_type = bpf_ntohs(proto);
			return;
		}
		if (!(p->flags & VTAP_P_TAGGED))
			p->vlan_id = bpf_ntohs(v.tci) & 0x0fff;
		p->flags |= VTAP_P_TAGGED;
		proto = v.proto;
		off += sizeof(v);
	}
	p->ether_type = bpf_ntohs(proto);
	p->l3_off = off;

	if (proto == bpf_htons(ETH_P_IP))
		vtap_parse_ip4(ctx, xdp, p, off);
	else if (proto == bpf_htons(ETH_P_IPV6))
		vtap_parse_ip6(ctx, xdp, p, off);
	else if (proto == bpf_htons(ETH_P_ARP))
		vtap_parse_arp(ctx, xdp, p, off);
}

/* The TC programs' parser. */
static __always_inline void vtap_parse_skb(struct __sk_buff *skb, struct vtap_parse *p, __u32 dir)
{
	vtap_parse_ctx(skb, 0, p, dir);
}

#endif /* VTAP_PARSE_H */
