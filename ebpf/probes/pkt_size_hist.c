// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * pkt_size_hist.c — library probe "packet sizes": a histogram of frame
 * sizes (spec: pkt_size_hist.yaml).
 *
 * The size is skb->len: the frame from its Ethernet header on, as seen at
 * the hook (no FCS). Bucket i counts the frames with
 * bound[i-1] < len <= bound[i] (not cumulative), bounds 64, 128, 256, 512,
 * 1024, 1518, 9000, 65535 and +Inf:
 *
 *   bucket  0: len <= 64      (minimum frames)
 *   bucket  1: 65 .. 128
 *   bucket  2: 129 .. 256
 *   bucket  3: 257 .. 512
 *   bucket  4: 513 .. 1024
 *   bucket  5: 1025 .. 1518   (up to a full 1500-byte MTU frame + tag)
 *   bucket  6: 1519 .. 9000   (jumbo frames)
 *   bucket  7: 9001 .. 65535  (GSO/GRO aggregates: a TSO or GRO packet is
 *                              one skb, seen once with its total length)
 *   bucket  8: > 65535        (+Inf)
 *
 * Every frame is counted, IP or not. A per-CPU array: every bucket exists
 * from the start (zero), counting needs no atomics, the daemon sums the
 * CPUs. Each bucket also sums the bytes of its frames (the histogram's
 * _sum, per bucket).
 */
#include "vtap_probe.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SIZE_BUCKETS 9

struct size_val {
	__u64 packets; /* frames in this bucket */
	__u64 bytes; /* their bytes */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SIZE_BUCKETS);
	__type(key, __u32); /* bucket index, 0 .. 8 */
	__type(value, struct size_val);
} size_hist SEC(".maps");

/* The bucket of a frame of len bytes (see the table above). */
static __always_inline __u32 size_bucket(__u32 len)
{
	if (len <= 64)
		return 0;
	if (len <= 128)
		return 1;
	if (len <= 256)
		return 2;
	if (len <= 512)
		return 3;
	if (len <= 1024)
		return 4;
	if (len <= 1518)
		return 5;
	if (len <= 9000)
		return 6;
	if (len <= 65535)
		return 7;
	return 8;
}

SEC("classifier")
int pkt_size_hist(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	__u32 bucket = size_bucket(len);
	struct size_val *v = bpf_map_lookup_elem(&size_hist, &bucket);

	if (!v)
		return VTAP_PROBE_PASS;
	/* this CPU's slot: no other CPU writes it */
	v->packets += 1;
	v->bytes += len;
	return VTAP_PROBE_PASS;
}
