// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * test_layouts.c — a test-only BPF object for the probe extraction layer
 * (vtap-core/src/probes, tests/probes_extract.rs). Not part of the datapath:
 * build.rs does not compile it; the test compiles it with clang-19.
 *
 * It declares one map of every type the extraction layer reads (hash,
 * array, LRU hash, per-CPU array/hash, LRU per-CPU hash, queue, stack) with
 * deliberately awkward key/value layouts: nested structs, a named and an
 * anonymous union, enums of several sizes and signs (one 64-bit), bitfields
 * (unsigned, signed, crossing bytes, 40 bits wide, of enum type), char
 * arrays, integers of 1..16 bytes, arrays of structs and 2-D arrays,
 * typedefs and const/volatile qualifiers, a pointer and floats; plus a
 * hash map bigger than one batch, an LPM trie (no batch syscalls) and a
 * map declared with sizes only.
 * The program does nothing: user space fills the maps.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum color { RED = 0, GREEN = 1, BLUE = 7 };
enum __attribute__((packed)) tiny { TINY_A = 1, TINY_B = 200 };
enum sign { SIGN_MINUS = -5, SIGN_ZERO = 0, SIGN_PLUS = 3 };
enum wide { WIDE_SMALL = 1, WIDE_HUGE = 0x123456789ULL };

/* A 5-tuple, network byte order, padded explicitly. */
struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 _pad[3];
};

struct inner {
	__u8 a;
	__s16 b;
	union {
		__u32 as_u32;
		__u8 as_bytes[4];
	} u;
	union { /* anonymous: its members belong to struct inner */
		__u16 x;
		__s8 y;
	};
};

struct pair {
	__u32 k;
	__s32 v;
};

typedef unsigned __int128 u128_t;
typedef const volatile __u32 cv_u32;

struct nasty {
	struct inner in;
	enum color color;
	enum tiny tiny;
	enum sign sign;
	enum wide wide;
	unsigned int f1 : 3;
	signed int f2 : 5;
	unsigned int f3 : 24;
	__u64 big_bf : 40;
	enum color cbf : 4;
	__s64 sbf : 12;
	_Bool flag;
	char name[16];
	char raw[4];
	__u8 mac[6];
	__u8 u8v;
	__s16 s16v;
	__u32 u32v;
	__s64 s64v;
	u128_t u128v;
	__int128 s128v;
	struct pair pairs[3];
	__u16 matrix[2][3];
	__u8 ip6[16];
	cv_u32 cv;
	float f32v;
	double f64v;
	void *ptr;
};
typedef struct nasty nasty_t;

/* Per-CPU value: 12 bytes, so the per-CPU stride (16) has padding. */
struct pc {
	__u32 packets;
	__s16 delta;
	__u8 tag;
	__u8 kind : 4, on : 1;
	enum tiny t;
	char nm[3];
};

/* Value of the 10k-entry benchmark map (seed 002's flow features). */
struct flow_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen;
	__u64 last_seen;
	__u8 tcp_flags;
	__u8 tos;
	__u16 _pad;
	__u32 _pad2;
};

struct qv {
	__u64 seq;
	enum color c;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct flow_key);
	__type(value, struct nasty);
} t_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, nasty_t);
} t_array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16);
	__type(key, struct flow_key);
	__type(value, struct nasty);
} t_lru_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct pc);
} t_percpu_array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16);
	__type(key, struct flow_key);
	__type(value, struct pc);
} t_percpu_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, struct pc);
} t_lru_percpu_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 8);
	__type(value, struct qv);
} t_queue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK);
	__uint(max_entries, 8);
	__type(value, struct qv);
} t_stack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
} t_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 20000);
	__type(key, __u32);
	__type(value, __u64);
} t_big_array SEC(".maps");

/* More entries than one batch syscall asks for (64Ki). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 100000);
	__type(key, __u32);
	__type(value, __u64);
} t_many SEC(".maps");

/* No batch operations in the kernel: read through the fallback. */
struct lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4);
	__type(value, __u32);
} t_lpm SEC(".maps");

/* Sizes only, no key/value types: decoded as opaque bytes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__uint(key_size, 4);
	__uint(value_size, 6);
} t_untyped SEC(".maps");

SEC("classifier")
int test_layouts_noop(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}
