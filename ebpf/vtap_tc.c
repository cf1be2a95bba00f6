// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * vtap_tc.c — the TC datapath of vtap.
 *
 * Attached with TCX to both directions of each tapped interface
 * (vtap_tc_ingress / vtap_tc_egress). For every packet it:
 *   1. counts the packet on its tap + direction;
 *   2. parses it once (parse.h) — never rejecting an odd or short frame;
 *   3. classifies it against every policy of the active generation by
 *      ANDing one bitmap per match field (see vtap_abi.h, ARCHITECTURE.md);
 *   4. for every firing policy counts the match, applies its 1-in-N
 *      sampling and rate limit (counting what they suppress), and collects
 *      the outputs of the policies that still want a copy;
 *   5. sends one copy per distinct output (push 802.1Q tag,
 *      bpf_clone_redirect, pop tag) and accounts every copy per policy,
 *      with a reason for each one that was not delivered.
 * It always returns TC_ACT_UNSPEC (TCX_NEXT): the packet goes on unchanged
 * and later programs on the hook still run. Nothing here can drop it.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "vtap_abi.h"
#include "parse.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---------------------------------------------------------------- maps */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vtap_global);
} vtap_global SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VTAP_GENERATIONS);
	__type(key, __u32);
	__type(value, struct vtap_gen_config);
} vtap_gen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VTAP_MAX_TAPS * VTAP_DIR_COUNT * VTAP_GENERATIONS);
	__type(key, struct vtap_tap_key);
	__type(value, struct vtap_tap_sel);
} vtap_tap_sel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VTAP_MAX_ETHER_TYPES);
	__type(key, struct vtap_ether_key);
	__type(value, struct vtap_bitmap);
} vtap_ether SEC(".maps");

#define LPM_MAP(name, keytype)                                  \
	struct {                                                \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);            \
		__uint(max_entries, VTAP_MAX_CIDRS);            \
		__uint(map_flags, BPF_F_NO_PREALLOC);           \
		__type(key, struct keytype);                    \
		__type(value, struct vtap_bitmap);              \
	} name SEC(".maps")

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VTAP_MAX_CIDRS);
	__type(key, struct vtap_cidr_key);
	__type(value, struct vtap_bitmap);
} vtap_cidr SEC(".maps");

LPM_MAP(vtap_src4, vtap_lpm4_key);
LPM_MAP(vtap_dst4, vtap_lpm4_key);
LPM_MAP(vtap_src6, vtap_lpm6_key);
LPM_MAP(vtap_dst6, vtap_lpm6_key);

#define ARRAY_MAP(name, n, vtype)                   \
	struct {                                    \
		__uint(type, BPF_MAP_TYPE_ARRAY);   \
		__uint(max_entries, n);             \
		__type(key, __u32);                 \
		__type(value, vtype);               \
	} name SEC(".maps")

ARRAY_MAP(vtap_proto, VTAP_GENERATIONS * 256, struct vtap_bitmap);
ARRAY_MAP(vtap_tcp_flags, VTAP_GENERATIONS * 256, struct vtap_bitmap);
ARRAY_MAP(vtap_sport, VTAP_GENERATIONS * VTAP_PORTS, struct vtap_bitmap);
ARRAY_MAP(vtap_dport, VTAP_GENERATIONS * VTAP_PORTS, struct vtap_bitmap);
ARRAY_MAP(vtap_actions, VTAP_GENERATIONS * VTAP_MAX_POLICIES, struct vtap_policy_action);
ARRAY_MAP(vtap_outputs, VTAP_GENERATIONS * VTAP_MAX_OUTPUTS, struct vtap_output);


#define PERCPU_ARRAY_MAP(name, n, vtype)                   \
	struct {                                           \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);   \
		__uint(max_entries, n);                    \
		__type(key, __u32);                        \
		__type(value, vtype);                      \
	} name SEC(".maps")

PERCPU_ARRAY_MAP(vtap_tap_stats, VTAP_MAX_TAPS * VTAP_DIR_COUNT, struct vtap_tap_stats);
PERCPU_ARRAY_MAP(vtap_policy_stats, VTAP_MAX_POLICIES * VTAP_DIR_COUNT, struct vtap_policy_stats);
PERCPU_ARRAY_MAP(vtap_output_stats, VTAP_MAX_POLICIES * VTAP_MAX_OUTPUTS, struct vtap_output_stats);
PERCPU_ARRAY_MAP(vtap_policy_drops, VTAP_MAX_POLICIES, struct vtap_policy_drops);
PERCPU_ARRAY_MAP(vtap_copy_stats, VTAP_MAX_OUTPUTS, struct vtap_copy_stats);

PERCPU_ARRAY_MAP(vtap_capture_stats, VTAP_MAX_OUTPUTS, struct vtap_capture_stats);

/* Pcap records for user space (struct vtap_pcap_rec + packet bytes). User
 * space sets the size at load time (--capture-ring-mib). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} vtap_pcap_ring SEC(".maps");

/* Parse results published for probes (see vtap_abi.h). */
PERCPU_ARRAY_MAP(vtap_parse_pub, 1, struct vtap_parse_pub);

/* Token buckets of the rate-limited policies, one per policy slot, shared by
 * every CPU (a struct bpf_spin_lock in the value). */
ARRAY_MAP(vtap_rate, VTAP_MAX_POLICIES, struct vtap_rate_state);

/* ------------------------------------------------------ bitmap helpers */

static __always_inline void bm_and(struct vtap_bitmap *m, const struct vtap_bitmap *o)
{
#pragma unroll
	for (int i = 0; i < VTAP_BITMAP_WORDS; i++)
		m->w[i] &= o->w[i];
}

static __always_inline void bm_or(struct vtap_bitmap *m, const struct vtap_bitmap *o)
{
#pragma unroll
	for (int i = 0; i < VTAP_BITMAP_WORDS; i++)
		m->w[i] |= o->w[i];
}

static __always_inline int bm_empty(const struct vtap_bitmap *m)
{
	__u64 acc = 0;
#pragma unroll
	for (int i = 0; i < VTAP_BITMAP_WORDS; i++)
		acc |= m->w[i];
	return acc == 0;
}

static __always_inline __u32 popcount64(__u64 x)
{
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (x * 0x0101010101010101ULL) >> 56;
}

static __always_inline __u32 bm_count(const struct vtap_bitmap *m)
{
	__u32 n = 0;
#pragma unroll
	for (int i = 0; i < VTAP_BITMAP_WORDS; i++)
		n += popcount64(m->w[i]);
	return n;
}

/* Index of the single set bit of b. Branch-free on purpose: a branchy
 * version hands the verifier one constant per path and it explores them all. */
static __always_inline __u32 bit_index(__u64 b)
{
	return popcount64(b - 1);
}

/* Removes the lowest slot from m and returns it (VTAP_MAX_POLICIES if empty). */
static __always_inline __u32 bm_pop(struct vtap_bitmap *m)
{
#pragma unroll
	for (int i = 0; i < VTAP_BITMAP_WORDS; i++) {
		__u64 w = m->w[i];
		if (w) {
			__u64 b = w & -w;
			m->w[i] = w ^ b;
			return i * 64 + bit_index(b);
		}
	}
	return VTAP_MAX_POLICIES;
}

/* ------------------------------------------------------ classification */

static __always_inline __u64 mask64(__u64 be, __u32 bits)
{
	/* be holds 8 address bytes in network order; keep the first `bits`. */
	if (bits >= 64)
		return be;
	if (bits == 0)
		return 0;
	__u64 m = ~0ULL << (64 - bits);
	return be & bpf_cpu_to_be64(m);
}

/* Exact-match lookups, one per prefix length, longest first. */
static __always_inline const struct vtap_bitmap *
cidr_hash_lookup(const struct vtap_lens *l, __u32 gen, __u32 table, const __u8 *addr, int v6)
{
	struct vtap_cidr_key k = { .generation = gen, .table = table };
	__u64 hi, lo = 0;
	__u32 n = l->n;

	__builtin_memcpy(&hi, addr, 8);
	if (v6)
		__builtin_memcpy(&lo, addr + 8, 8);
	else
		hi &= bpf_cpu_to_be64(0xffffffff00000000ULL);
#pragma unroll
	for (int i = 0; i < VTAP_MAX_LENS; i++) {
		if (i >= n)
			break;
		__u32 len = l->len[i];
		__u64 h = mask64(hi, len);
		__u64 o = len > 64 ? mask64(lo, len - 64) : 0;
		__builtin_memcpy(k.addr, &h, 8);
		__builtin_memcpy(k.addr + 8, &o, 8);
		k.len = len;
		const struct vtap_bitmap *b = bpf_map_lookup_elem(&vtap_cidr, &k);
		if (b)
			return b;
	}
	return NULL;
}

static __always_inline void and_lpm(struct vtap_bitmap *m, int v6, int dst, __u32 gen,
				    const __u8 *addr, const struct vtap_gen_config *cfg,
				    const struct vtap_bitmap *wild)
{
	const struct vtap_bitmap *b;
	__u32 table = v6 ? (dst ? VTAP_T_DST6 : VTAP_T_SRC6) : (dst ? VTAP_T_DST4 : VTAP_T_SRC4);
	const struct vtap_lens *l = &cfg->lens[table & (VTAP_T_COUNT - 1)];

	if (l->n != VTAP_LENS_LPM) {
		b = cidr_hash_lookup(l, gen, table, addr, v6);
	} else if (v6) {
		struct vtap_lpm6_key k = { .prefixlen = 32 + 128, .generation = gen };
		__builtin_memcpy(k.addr, addr, 16);
		b = bpf_map_lookup_elem(dst ? (void *)&vtap_dst6 : (void *)&vtap_src6, &k);
	} else {
		struct vtap_lpm4_key k = { .prefixlen = 32 + 32, .generation = gen };
		__builtin_memcpy(k.addr, addr, 4);
		b = bpf_map_lookup_elem(dst ? (void *)&vtap_dst4 : (void *)&vtap_src4, &k);
	}
	bm_and(m, b ? b : wild);
}

static __always_inline void and_port(struct vtap_bitmap *m, int dst, __u32 gen, __u16 port)
{
	__u32 idx = gen * VTAP_PORTS + port;
	const struct vtap_bitmap *b =
		bpf_map_lookup_elem(dst ? (void *)&vtap_dport : (void *)&vtap_sport, &idx);
	if (b)
		bm_and(m, b);
	else
		__builtin_memset(m, 0, sizeof(*m));
}

/* The address/port part of the match: fields that swap for bidirectional. */
static __noinline void and_endpoints(struct vtap_bitmap *m, const struct vtap_gen_config *cfg,
					  __u32 gen, const struct vtap_parse *p, int reverse)
{
	__u32 used = cfg->used_fields;
	int v6 = !!(p->flags & VTAP_P_IPV6);
	const __u8 *sa = reverse ? p->daddr : p->saddr;
	const __u8 *da = reverse ? p->saddr : p->daddr;
	__u16 sp = reverse ? p->dport : p->sport;
	__u16 dp = reverse ? p->sport : p->dport;

	/* Cheap array lookups first; stop as soon as no policy is left. */
	if (used & (1 << VTAP_F_SPORT)) {
		if (p->flags & VTAP_P_PORTS)
			and_port(m, 0, gen, sp);
		else
			bm_and(m, &cfg->wildcard[VTAP_F_SPORT]);
	}
	if (used & (1 << VTAP_F_DPORT)) {
		if (p->flags & VTAP_P_PORTS)
			and_port(m, 1, gen, dp);
		else
			bm_and(m, &cfg->wildcard[VTAP_F_DPORT]);
	}
	if (bm_empty(m))
		return;
	if (used & (1 << VTAP_F_SRC)) {
		if (p->flags & VTAP_P_IP)
			and_lpm(m, v6, 0, gen, sa, cfg, &cfg->wildcard[VTAP_F_SRC]);
		else
			bm_and(m, &cfg->wildcard[VTAP_F_SRC]);
		if (bm_empty(m))
			return;
	}
	if (used & (1 << VTAP_F_DST)) {
		if (p->flags & VTAP_P_IP)
			and_lpm(m, v6, 1, gen, da, cfg, &cfg->wildcard[VTAP_F_DST]);
		else
			bm_and(m, &cfg->wildcard[VTAP_F_DST]);
	}
}

static __always_inline void and_array(struct vtap_bitmap *m, void *map, __u32 idx)
{
	const struct vtap_bitmap *b = bpf_map_lookup_elem(map, &idx);
	if (b)
		bm_and(m, b);
	else
		__builtin_memset(m, 0, sizeof(*m));
}

/* Fields that do not swap for bidirectional: ether_type, protocol, flags. */
static __always_inline void and_base(struct vtap_bitmap *m, const struct vtap_gen_config *cfg,
				     __u32 gen, const struct vtap_parse *p)
{
	__u32 used = cfg->used_fields;

	if (used & (1 << VTAP_F_ETHER_TYPE)) {
		struct vtap_ether_key k = { .ether_type = p->ether_type, .generation = gen };
		const struct vtap_bitmap *b = bpf_map_lookup_elem(&vtap_ether, &k);
		bm_and(m, b ? b : &cfg->wildcard[VTAP_F_ETHER_TYPE]);
	}
	if (used & (1 << VTAP_F_PROTO)) {
		if (p->flags & VTAP_P_L4)
			and_array(m, &vtap_proto, gen * 256 + p->proto);
		else
			bm_and(m, &cfg->wildcard[VTAP_F_PROTO]);
	}
	if (used & (1 << VTAP_F_TCP_FLAGS)) {
		if (p->flags & VTAP_P_TCP_FLAGS)
			and_array(m, &vtap_tcp_flags, gen * 256 + p->tcp_flags);
		else
			bm_and(m, &cfg->wildcard[VTAP_F_TCP_FLAGS]);
	}
}

/* ------------------------------------------------------------- actions */

struct fire_ctx {
	struct vtap_bitmap left; /* policies still to visit */
	struct vtap_bitmap shaped_out; /* policies that sampled / rate-limited this packet */
	const struct vtap_parse *p; /* the packet, for flow sampling */
	__u64 want; /* outputs wanted by the visited policies */
	__u64 ok; /* outputs whose copy was delivered */
	__u32 gen;
	__u32 dir;
	__u32 len;
	__u32 _pad;
	/* why output i failed: 4 bits per output (reasons < 16), 16 per word;
	 * packed to keep the stack of the main program + the send path under
	 * the verifier's 512 bytes */
	__u64 reason[VTAP_MAX_OUTPUTS / 16];
};

/* Publishes the parse result of skb for probes (vtap_abi.h, "parse
 * once"). A global function, so its copy does not add to the main
 * program's stack. */
__noinline int vtap_publish_parse(struct __sk_buff *skb, const struct vtap_parse *p)
{
	__u32 zero = 0;
	if (!skb || !p)
		return 0;
	struct vtap_parse_pub *pp = bpf_map_lookup_elem(&vtap_parse_pub, &zero);
	if (!pp)
		return 0;
	pp->seq++;
	pp->ifindex = skb->ifindex;
	__builtin_memcpy(&pp->p, p, sizeof(*p));
	skb->cb[4] = pp->seq;
	return 0;
}

/* --------------------------------------------------------------- shaping
 *
 * Sampling and rate limits decide, per packet and policy, whether the policy
 * asks for copies at all. A policy that suppresses a packet counts it once as
 * `sampled` or `rate_limited` and wants none of its outputs (an output that
 * another firing policy wants still gets its one copy). Sampling comes first:
 * a sampled-out packet takes no tokens. A policy without shaping
 * (sample_one_in == 1, no rate) costs two compares on the action it reads
 * anyway: no map lookup, no helper call. The original packet is never
 * touched by any of this. */

static __always_inline __u64 mix64(__u64 h)
{
	/* MurmurHash3's 64-bit finalizer. */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

static __always_inline __u64 endpoint_hash(const __u8 *addr, __u16 port, __u64 key)
{
	__u64 hi, lo;
	__builtin_memcpy(&hi, addr, 8);
	__builtin_memcpy(&lo, addr + 8, 8);
	return mix64(mix64(mix64(hi ^ key) ^ lo) ^ port);
}

/* A hash of the flow that is the same in both directions: each endpoint
 * (address, port) is hashed on its own and the two are added, which does not
 * depend on their order; then protocol and EtherType are mixed in. Ports
 * count only when the packet has them and is not a fragment, so every
 * fragment of a datagram (the first one too) hashes alike. A non-IP packet
 * hashes by its EtherType only. */
static __always_inline __u32 flow_hash(const struct vtap_parse *p, __u32 seed)
{
	__u64 key = mix64(seed | 0x9e3779b900000000ULL);
	__u16 sp = 0, dp = 0;
	if ((p->flags & VTAP_P_PORTS) && !(p->flags & VTAP_P_FIRST_FRAG)) {
		sp = p->sport;
		dp = p->dport;
	}
	__u64 proto = (p->flags & VTAP_P_L4) ? p->proto : 0x100;
	__u64 h = endpoint_hash(p->saddr, sp, key) + endpoint_hash(p->daddr, dp, key);
	return mix64(h ^ (proto << 16) ^ ((__u64)p->ether_type << 32) ^ key) >> 32;
}

/* Whether a uniform 32-bit value x keeps the packet at 1-in-n:
 * x < 2^32 / n, probability 1/n (to within 2^-32). */
static __always_inline int sample_keep(__u32 x, __u32 n)
{
	return ((__u64)x * n) >> 32 == 0;
}

/* Refills a bucket by elapsed * rate, at most to cap. User space computed
 * fill_ns, the time to fill it from empty; a bucket in debt (after a packet
 * larger than the whole bucket) first needs -credit / rate more. Longer than
 * that is simply full, so elapsed * rate stays below cap + debt + rate and
 * cannot overflow. */
static __always_inline __s64 bucket_refill(__s64 credit, __u64 elapsed, __u64 rate, __u64 fill_ns,
					   __s64 cap)
{
	__u64 full_ns = fill_ns;
	if (credit < 0)
		full_ns += (__u64)(-credit) / rate + 1;
	if (elapsed >= full_ns)
		return cap;
	credit += (__s64)(elapsed * rate);
	return credit > cap ? cap : credit;
}

/* A packet costing more than the whole bucket (a GSO super-packet against a
 * small bit bucket) may pass when the bucket is full; it leaves the bucket in
 * debt, so the long-run rate still holds. */
static __always_inline int bucket_can_pay(__s64 credit, __s64 cost, __s64 cap)
{
	return credit >= (cost < cap ? cost : cap);
}

/* The policy's token buckets (packets and/or bits): 1 = within the limit
 * (tokens taken from both), 0 = over it (nothing taken). One bucket pair per
 * policy for all CPUs, under its spin lock: N CPUs together get the rate,
 * not N times it. */
static __always_inline int rate_admit(struct vtap_rate_state *st,
				      const struct vtap_policy_action *a, __u64 now, __u32 len)
{
	__s64 cap_p = (__s64)(a->burst_pkts * VTAP_CREDIT_UNIT);
	__s64 cap_b = (__s64)(a->burst_bits * VTAP_CREDIT_UNIT);
	__s64 cost_p = (__s64)VTAP_CREDIT_UNIT;
	__s64 cost_b = (__s64)((__u64)len * 8 * VTAP_CREDIT_UNIT);
	__u64 rate_p = a->rate_pps, rate_b = a->rate_bps;
	__u64 fill_p = a->fill_pkts_ns, fill_b = a->fill_bits_ns;
	int ok = 1;

	/* Over the limit, the common case under a flood, is decided without
	 * the lock: when even the credit earned since the last refill cannot
	 * pay, reject. The reads may race with another CPU's update; a wrong
	 * "no" leaves the token in the bucket for the next packet, a wrong
	 * "maybe" is decided under the lock. Rejected packets then only read
	 * the bucket's cache line, so CPUs flooding together do not bounce it. */
	__u64 last = *(volatile __u64 *)&st->last_ns;
	__u64 since = now > last ? now - last : 0;
	if (rate_p && since < fill_p &&
	    *(volatile __s64 *)&st->pkts + (__s64)(since * rate_p) < (cost_p < cap_p ? cost_p : cap_p))
		return 0;
	if (rate_b && since < fill_b &&
	    *(volatile __s64 *)&st->bits + (__s64)(since * rate_b) < (cost_b < cap_b ? cost_b : cap_b))
		return 0;

	bpf_spin_lock(&st->lock);
	/* Another CPU may have refilled with a later clock reading: then
	 * nothing elapsed for us. */
	__u64 elapsed = now > st->last_ns ? now - st->last_ns : 0;
	if (now > st->last_ns)
		st->last_ns = now;
	__s64 cp = st->pkts, cb = st->bits;
	if (rate_p) {
		cp = bucket_refill(cp, elapsed, rate_p, fill_p, cap_p);
		ok = bucket_can_pay(cp, cost_p, cap_p);
	}
	if (rate_b) {
		cb = bucket_refill(cb, elapsed, rate_b, fill_b, cap_b);
		ok = ok && bucket_can_pay(cb, cost_b, cap_b);
	}
	if (ok) {
		cp -= cost_p;
		cb -= cost_b;
	}
	if (rate_p)
		st->pkts = cp;
	if (rate_b)
		st->bits = cb;
	bpf_spin_unlock(&st->lock);
	return ok;
}

/* One firing policy: count the match; unless sampling or the rate limit
 * suppresses the packet, return the outputs the policy wants a copy on. When
 * it does suppress it: count the reason, set the policy's bit in *shaped_out
 * (pass 2 skips it) and return 0. A global function on purpose: the verifier
 * checks it once, on its own, instead of once per path of its callers (the
 * main program is close to the verifier's 1M-instruction budget). */
__noinline __u64 vtap_fire_policy(__u32 slot, __u32 gen_dir, __u32 len, const struct vtap_parse *p,
				  struct vtap_bitmap *shaped_out)
{
	__u32 gen = (gen_dir >> 1) & 1, dir = gen_dir & 1;
	slot &= VTAP_MAX_POLICIES - 1;

	__u32 sidx = slot * VTAP_DIR_COUNT + dir;
	struct vtap_policy_stats *ps = bpf_map_lookup_elem(&vtap_policy_stats, &sidx);
	if (ps) {
		ps->packets++;
		ps->bytes += len;
	}
	__u32 aidx = gen * VTAP_MAX_POLICIES + slot;
	struct vtap_policy_action *a = bpf_map_lookup_elem(&vtap_actions, &aidx);
	if (!a)
		return 0;
	if (a->sample_one_in <= 1 && !(a->rate_pps | a->rate_bps))
		return a->outputs; /* no shaping: the common case */

	__u32 reason = VTAP_DROP_REASONS;
	__u32 n = a->sample_one_in;
	if (n > 1) {
		__u32 x;
		if ((a->shape & VTAP_SHAPE_SAMPLE_FLOW) && p)
			x = flow_hash(p, a->flow_seed);
		else
			x = bpf_get_prandom_u32();
		if (!sample_keep(x, n))
			reason = VTAP_DROP_SAMPLED;
	}
	if (reason == VTAP_DROP_REASONS && (a->rate_pps | a->rate_bps)) {
		struct vtap_rate_state *st = bpf_map_lookup_elem(&vtap_rate, &slot);
		if (st && !rate_admit(st, a, bpf_ktime_get_ns(), len))
			reason = VTAP_DROP_RATE_LIMITED;
	}
	if (reason == VTAP_DROP_REASONS)
		return a->outputs;
	if (shaped_out)
		shaped_out->w[(slot >> 6) & (VTAP_BITMAP_WORDS - 1)] |= 1ULL << (slot & 63);
	struct vtap_policy_drops *d = bpf_map_lookup_elem(&vtap_policy_drops, &slot);
	if (d)
		d->reason[reason == VTAP_DROP_SAMPLED ? VTAP_DROP_SAMPLED : VTAP_DROP_RATE_LIMITED]++;
	return 0;
}

/* Pass 1 (bpf_loop callback): count the match, apply sampling and rate
 * limit, collect the outputs. */
static long visit_policy(__u64 i, void *arg)
{
	struct fire_ctx *c = arg;
	__u32 slot = bm_pop(&c->left);
	if (slot >= VTAP_MAX_POLICIES)
		return 1;

	c->want |= vtap_fire_policy(slot, c->gen * 2 + c->dir, c->len, c->p, &c->shaped_out);
	return 0;
}

/* Pass 2 (bpf_loop callback): account each of the policy's copies. */
static long account_policy(__u64 i, void *arg)
{
	struct fire_ctx *c = arg;
	__u32 slot = bm_pop(&c->left);
	if (slot >= VTAP_MAX_POLICIES)
		return 1;

	__u32 aidx = c->gen * VTAP_MAX_POLICIES + slot;
	struct vtap_policy_action *a = bpf_map_lookup_elem(&vtap_actions, &aidx);
	if (!a)
		return 0;
	struct vtap_policy_drops *d = NULL;
#pragma unroll
	for (int k = 0; k < VTAP_MAX_POLICY_OUTPUTS; k++) {
		__u32 o = a->out_ids[k];
		if (o >= VTAP_MAX_OUTPUTS)
			break;
		__u32 oidx = slot * VTAP_MAX_OUTPUTS + o;
		struct vtap_output_stats *os = bpf_map_lookup_elem(&vtap_output_stats, &oidx);
		if ((c->ok >> o) & 1) {
			if (os)
				os->mirrored++;
			continue;
		}
		if (os)
			os->failed++;
		if (!d)
			d = bpf_map_lookup_elem(&vtap_policy_drops, &slot);
		if (d) {
			__u32 r = (c->reason[(o >> 4) & 3] >> ((o & 15) * 4)) & 15;
			if (r < VTAP_DROP_REASONS)
				d->reason[r]++;
		}
	}
	return 0;
}


/* ------------------------------------------------------------ pcap sink
 *
 * A pcap output reserves one ring-buffer record: the header and the first
 * cap_len = min(snaplen, packet length) bytes. bpf_ringbuf_reserve needs a
 * constant size, so the record is rounded up to a size class; the smallest
 * class that holds cap_len is used, so a 64-byte snaplen costs 128 bytes of
 * ring, not 9 KiB. No room → VTAP_DROP_RING_FULL, counted per capture and
 * per policy; the packet itself is untouched. */

#define PCAP_CLASS(N, LOAD)                                                            \
	if (cap <= (N)) {                                                              \
		struct vtap_pcap_rec *r =                                              \
			bpf_ringbuf_reserve(&vtap_pcap_ring, sizeof(*r) + (N), 0);     \
		if (!r)                                                                \
			return pcap_count(hdr, 0, 0);                                  \
		*r = *hdr;                                                             \
		__u32 n = cap;                                                         \
		asm volatile("" : "+r"(n));                                            \
		if (n > (N))                                                           \
			n = (N);                                                       \
		if (n < 1 || LOAD(ctx, 0, (void *)(r + 1), n) != 0)                    \
			n = 0;                                                         \
		r->cap_len = n;                                                        \
		bpf_ringbuf_submit(r, pcap_wakeup(sizeof(*r) + (N)));                  \
		return pcap_count(hdr, n, 1);                                          \
	}

#define PCAP_CLASSES(LOAD)                          \
	PCAP_CLASS(64, LOAD)                        \
	PCAP_CLASS(128, LOAD)                       \
	PCAP_CLASS(256, LOAD)                       \
	PCAP_CLASS(512, LOAD)                       \
	PCAP_CLASS(1024, LOAD)                      \
	PCAP_CLASS(1536, LOAD)                      \
	PCAP_CLASS(2048, LOAD)                      \
	PCAP_CLASS(4096, LOAD)                      \
	PCAP_CLASS(VTAP_PCAP_MAX_CAPLEN, LOAD)      \
	return pcap_count(hdr, 0, 0);

/* Whether submitting a record of rec bytes should wake the reader. The
 * default (adaptive) wake-up fires whenever the reader has caught up, which
 * with a fast reader is almost every record: an irq_work and a cross-CPU
 * wake-up per packet. Instead the reader polls every few milliseconds, and
 * is woken early only when this record makes the unread data cross an
 * eighth of the ring (any eighth: a crossing two CPUs race over is still
 * caught by the next one), so a burst never waits for the poll timeout to
 * be drained. */
static __always_inline __u64 pcap_wakeup(__u64 rec)
{
	__u64 step = bpf_ringbuf_query(&vtap_pcap_ring, BPF_RB_RING_SIZE) >> 3;
	__u64 avail = bpf_ringbuf_query(&vtap_pcap_ring, BPF_RB_AVAIL_DATA);
	if (step == 0 || avail < rec)
		return BPF_RB_FORCE_WAKEUP;
	return avail / step != (avail - rec) / step ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* Counts one record of hdr->output: submitted with cap bytes (ok), or not,
 * for lack of room. Returns 0 or VTAP_DROP_RING_FULL. */
static __always_inline int pcap_count(const struct vtap_pcap_rec *hdr, __u32 cap, int ok)
{
	__u32 o = hdr->output & (VTAP_MAX_OUTPUTS - 1);
	struct vtap_capture_stats *st = bpf_map_lookup_elem(&vtap_capture_stats, &o);
	if (!ok) {
		if (st)
			st->ring_full++;
		return VTAP_DROP_RING_FULL;
	}
	if (st) {
		st->packets++;
		st->bytes += hdr->orig_len;
		st->cap_bytes += cap;
	}
	return 0;
}

/* Emits one record for hdr->output (hdr->cap_len = wanted caplen). Global
 * functions: verified once, whatever the number of paths into them. Return
 * 0 or VTAP_DROP_RING_FULL. */
__noinline int vtap_pcap_emit(struct __sk_buff *ctx, struct vtap_pcap_rec *hdr)
{
	if (!ctx || !hdr)
		return VTAP_DROP_RING_FULL;
	__u32 cap = hdr->cap_len;
	PCAP_CLASSES(bpf_skb_load_bytes)
}

__noinline int vtap_pcap_emit_xdp(struct xdp_md *ctx, struct vtap_pcap_rec *hdr)
{
	if (!ctx || !hdr)
		return VTAP_DROP_RING_FULL;
	__u32 cap = hdr->cap_len;
	PCAP_CLASSES(bpf_xdp_load_bytes)
}

/* The record header of a pcap output: the record names the live policies
 * that name this capture. */
static __always_inline void pcap_header(struct vtap_pcap_rec *hdr, const struct vtap_output *out,
					__u32 o, __u32 dir, __u32 ifindex, __u32 len,
					const struct vtap_bitmap *live)
{
	__u32 snap = out->snaplen;
	if (snap == 0 || snap > VTAP_PCAP_MAX_CAPLEN)
		snap = VTAP_PCAP_MAX_CAPLEN;
	hdr->ts_ns = bpf_ktime_get_ns();
	hdr->orig_len = len;
	hdr->cap_len = len < snap ? len : snap;
	hdr->ifindex = ifindex;
	hdr->dir = dir;
	hdr->output = o;
#pragma unroll
	for (int w = 0; w < VTAP_BITMAP_WORDS; w++)
		hdr->policies.w[w] = live->w[w] & out->policies.w[w];
}

/* One output of the packet (TC). A global function: the verifier checks it
 * once, not once per iteration and path of the send loop (the main program
 * is close to the verifier's budget). Returns VTAP_DROP_REASONS when the
 * copy was delivered, else the reason it was not. The original leaves
 * unchanged: a pushed tag is always popped again.
 *   gen_dir_o = gen << 16 | dir << 8 | output id
 *   live = the firing policies that were not sampled or rate-limited out */
__noinline int vtap_send_output(struct __sk_buff *skb, __u32 gen_dir_o,
				const struct vtap_bitmap *live)
{
	if (!skb || !live)
		return VTAP_DROP_CLONE_FAILED;
	__u32 o = gen_dir_o & (VTAP_MAX_OUTPUTS - 1);
	__u32 dir = (gen_dir_o >> 8) & 1;
	__u32 gen = (gen_dir_o >> 16) & 1;
	__u32 oidx = gen * VTAP_MAX_OUTPUTS + o;
	struct vtap_output *out = bpf_map_lookup_elem(&vtap_outputs, &oidx);
	if (!out)
		return VTAP_DROP_OUTPUT_DOWN;

	if (out->kind == VTAP_OUT_PCAP) {
		struct vtap_pcap_rec hdr = {};
		pcap_header(&hdr, out, o, dir, skb->ifindex, skb->len, live);
		return vtap_pcap_emit(skb, &hdr) ? VTAP_DROP_RING_FULL : VTAP_DROP_REASONS;
	}

	__u32 ifindex = out->ifindex;
	__u16 vlan = out->vlan;
	__u8 kind = out->kind;
	if ((kind != VTAP_OUT_IFACE && kind != VTAP_OUT_VXLAN) || ifindex == 0)
		return VTAP_DROP_OUTPUT_DOWN;
	if (vlan && bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), vlan) != 0)
		return VTAP_DROP_VLAN_FAILED;
	/* A VXLAN copy names its output in the mark (the clone keeps it); the
	 * tunnel key is set on the clone alone, by vtap_tunnel_tx, so the
	 * original never carries tunnel metadata. */
	__u32 mark = skb->mark;
	if (kind == VTAP_OUT_VXLAN)
		skb->mark = VTAP_TUNNEL_MARK | oidx;
	long r = bpf_clone_redirect(skb, ifindex, 0);
	if (kind == VTAP_OUT_VXLAN)
		skb->mark = mark;
	if (vlan)
		bpf_skb_vlan_pop(skb);
	/* < 0: the copy was not made or not handed to the device (-ENETDOWN:
	 * the device is down); > 0: the device's queue dropped it
	 * (NET_XMIT_DROP/CN). */
	if (r == -ENETDOWN)
		return VTAP_DROP_OUTPUT_DOWN;
	if (r > 0)
		return VTAP_DROP_XMIT_DROPPED;
	if (r < 0)
		return VTAP_DROP_CLONE_FAILED;
	return VTAP_DROP_REASONS;
}

/* One output of the packet (XDP): pcap outputs work as from TC; a copy to
 * an interface cannot be made from XDP without taking the packet, so it is
 * counted as VTAP_DROP_XDP_MODE. */
__noinline int vtap_send_output_xdp(struct xdp_md *ctx, __u32 gen_dir_o,
				    const struct vtap_bitmap *live)
{
	if (!ctx || !live)
		return VTAP_DROP_CLONE_FAILED;
	__u32 o = gen_dir_o & (VTAP_MAX_OUTPUTS - 1);
	__u32 dir = (gen_dir_o >> 8) & 1;
	__u32 gen = (gen_dir_o >> 16) & 1;
	__u32 oidx = gen * VTAP_MAX_OUTPUTS + o;
	struct vtap_output *out = bpf_map_lookup_elem(&vtap_outputs, &oidx);
	if (!out)
		return VTAP_DROP_OUTPUT_DOWN;
	if (out->kind != VTAP_OUT_PCAP)
		return VTAP_DROP_XDP_MODE;
	struct vtap_pcap_rec hdr = {};
	pcap_header(&hdr, out, o, dir, ctx->ingress_ifindex, bpf_xdp_get_buff_len(ctx), live);
	return vtap_pcap_emit_xdp(ctx, &hdr) ? VTAP_DROP_RING_FULL : VTAP_DROP_REASONS;
}

/* Sends one copy to every wanted output and counts it per output. */
static __always_inline void send_copies(void *ctx, const int xdp, struct fire_ctx *c,
					const struct vtap_bitmap *live)
{
	__u64 want = c->want;

#pragma clang loop unroll(disable)
	for (int i = 0; i < VTAP_MAX_OUTPUTS; i++) {
		if (!want)
			break;
		__u64 b = want & -want;
		want ^= b;
		__u32 o = bit_index(b);
		__u32 gdo = c->gen << 16 | c->dir << 8 | o;
		int reason = xdp ? vtap_send_output_xdp(ctx, gdo, live)
				 : vtap_send_output(ctx, gdo, live);

		__u32 cidx = o;
		struct vtap_copy_stats *cs = bpf_map_lookup_elem(&vtap_copy_stats, &cidx);
		if (reason == VTAP_DROP_REASONS) {
			c->ok |= b;
			if (cs)
				cs->sent++;
		} else {
			c->reason[(o >> 4) & 3] |= (__u64)(reason & 15) << ((o & 15) * 4);
			if (cs)
				cs->failed++;
		}
	}
}

/* ---------------------------------------------------------------- main */

/* The whole per-packet path for a TC (xdp = 0) or XDP (xdp = 1) context. */
static __always_inline void vtap_packet(void *ctx, const int xdp, __u32 dir)
{
	__u32 zero = 0;
	struct vtap_global *g = bpf_map_lookup_elem(&vtap_global, &zero);
	if (!g)
		return;
	__u32 gen = g->active_gen & 1;
	struct vtap_gen_config *cfg = bpf_map_lookup_elem(&vtap_gen_cfg, &gen);
	if (!cfg)
		return;

	__u32 ifindex, len;
	if (xdp) {
		ifindex = ((struct xdp_md *)ctx)->ingress_ifindex;
		len = bpf_xdp_get_buff_len(ctx);
	} else {
		ifindex = ((struct __sk_buff *)ctx)->ifindex;
		len = ((struct __sk_buff *)ctx)->len;
	}

	/* One lookup gives the tap's policies and its counters' slot. */
	struct vtap_tap_key tk = { .ifindex = ifindex, .dir = dir, .generation = gen };
	struct vtap_tap_sel *sel = bpf_map_lookup_elem(&vtap_tap_sel, &tk);
	if (!sel)
		return;
	__u32 tidx = (sel->tap_slot & (VTAP_MAX_TAPS - 1)) * VTAP_DIR_COUNT + dir;
	struct vtap_tap_stats *ts = bpf_map_lookup_elem(&vtap_tap_stats, &tidx);
	if (ts) {
		ts->packets++;
		ts->bytes += len;
	}

	struct vtap_parse p = {};
	vtap_parse_ctx(ctx, xdp, &p, dir);
	if (ts && (p.flags & VTAP_P_TRUNCATED))
		ts->truncated++;
	/* Parse once: probes after us on this hook read the result. */
	if (!xdp && (g->flags & VTAP_G_SHARE_PARSE))
		vtap_publish_parse(ctx, &p);

	struct fire_ctx c = {};
	struct vtap_bitmap base = sel->policies;
	and_base(&base, cfg, gen, &p);
	if (bm_empty(&base))
		return;

	c.left = base;
	and_endpoints(&c.left, cfg, gen, &p, 0);
	if (cfg->flags & VTAP_GEN_ANY_BIDIR) {
		struct vtap_bitmap rev = base;
		bm_and(&rev, &cfg->bidir);
		if (!bm_empty(&rev)) {
			and_endpoints(&rev, cfg, gen, &p, 1);
			bm_or(&c.left, &rev);
		}
	}
	if (bm_empty(&c.left))
		return;
	if (ts)
		ts->classified++;

	struct vtap_bitmap fired = c.left;
	__u32 n = bm_count(&fired);
	c.gen = gen;
	c.dir = dir;
	c.len = len;
	c.p = &p;
	/* One or two firing policies (the common case) without bpf_loop. */
	if (n <= 2) {
		visit_policy(0, &c);
		if (n == 2)
			visit_policy(1, &c);
	} else {
		bpf_loop(n, visit_policy, &c, 0);
	}

	/* Policies that sampled or rate-limited the packet have no copies. */
	c.left = fired;
#pragma unroll
	for (int w = 0; w < VTAP_BITMAP_WORDS; w++)
		c.left.w[w] &= ~c.shaped_out.w[w];
	if (c.want) {
		struct vtap_bitmap live = c.left;
		send_copies(ctx, xdp, &c, &live);
	}

	if (n <= 2) {
		account_policy(0, &c);
		if (n == 2)
			account_policy(1, &c);
	} else {
		bpf_loop(n, account_policy, &c, 0);
	}
}

static __always_inline int vtap_tc(struct __sk_buff *skb, __u32 dir)
{
	vtap_packet(skb, 0, dir);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int vtap_tc_ingress(struct __sk_buff *skb)
{
	return vtap_tc(skb, VTAP_DIR_INGRESS);
}

SEC("classifier")
int vtap_tc_egress(struct __sk_buff *skb)
{
	return vtap_tc(skb, VTAP_DIR_EGRESS);
}

/* TC egress of vtap's collect-metadata VXLAN device: a copy from
 * vtap_send_output gets the tunnel key of its output (remote, VNI) and loses
 * the mark. A packet without vtap's mark passes untouched (the device then
 * drops it for want of a key, as it would without this program). A marked
 * copy whose output is gone is dropped here; the tap program sees that as a
 * queue drop (VTAP_DROP_XMIT_DROPPED). */
SEC("classifier")
int vtap_tunnel_tx(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	if ((mark & VTAP_TUNNEL_MARK_MASK) != VTAP_TUNNEL_MARK)
		return TC_ACT_UNSPEC;
	__u32 oidx = mark & (2 * VTAP_MAX_OUTPUTS - 1);
	skb->mark = 0;
	struct vtap_output *out = bpf_map_lookup_elem(&vtap_outputs, &oidx);
	if (!out || out->kind != VTAP_OUT_VXLAN)
		return TC_ACT_SHOT;
	struct bpf_tunnel_key key = {};
	__u64 flags = 0;
	key.tunnel_id = out->vni;
	key.tunnel_ttl = 64;
	if (out->flags & VTAP_OUTF_REMOTE6) {
		key.remote_ipv6[0] = out->remote[0];
		key.remote_ipv6[1] = out->remote[1];
		key.remote_ipv6[2] = out->remote[2];
		key.remote_ipv6[3] = out->remote[3];
		flags = BPF_F_TUNINFO_IPV6;
	} else {
		key.remote_ipv4 = out->remote[0];
	}
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags) != 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* XDP mode (ingress only: packets from the VM, before any skb exists):
 * counting and pcap captures; never changes or drops the frame. */
SEC("xdp")
int vtap_xdp_ingress(struct xdp_md *ctx)
{
	vtap_packet(ctx, 1, VTAP_DIR_INGRESS);
	return XDP_PASS;
}
