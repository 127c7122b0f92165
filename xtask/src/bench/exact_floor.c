/* xtask/src/bench/exact_floor.c: the least an exact count of connections costs with the
 * kernel's primitives, the floor under limiter's per-connection overhead (bench part 6).
 *
 * What exactness needs (docs/guide.md): a SYN takes a slot and records its 4-tuple, so that a
 * retransmitted SYN finds it and an unanswered handshake can be timed out; the completed
 * handshake takes the record over; the counted socket carries a tag, so that its close gives
 * back exactly what it took. Here that is all there is: one listener (PORT), no limit, no
 * listener table, no statistics, no namespaces, IPv4 only, the record keyed as limiter keys it
 * (both families' addresses).
 *
 * Its SYN test is xdp_drop_syn.c's, line for line, so that the two differ only in what
 * exactness adds. (Not a shared inline helper: that compiles the minimal program part 1
 * measures to other instructions, and its figures would no longer compare with earlier
 * reports.) */
#include "bpf.h"

#ifndef PORT
#define PORT 8000
#endif

struct flow {
	__u32 local_addr[4];
	__u32 remote_addr[4];
	__u16 local_port;
	__u16 remote_port;
	__u16 family;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow);
	__type(value, __u64);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} tags SEC(".maps");

/* [0]: slots taken (reserved or established), [1]: connections counted, so the bench can check
 * that the floor did its work: every connection counted, and every slot back after the churn. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} slots SEC(".maps");

static __u64 *slot_word(__u32 index)
{
	return bpf_map_lookup_elem(&slots, &index);
}

SEC("xdp") int floor_admission(struct xdp_md *ctx)
{
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;
	if (data + ETH_HLEN + 20 > end)
		return XDP_PASS;
	if (data[12] != 0x08 || data[13] != 0x00)
		return XDP_PASS;
	__u8 *ip = data + ETH_HLEN;
	if (ip[9] != 6)
		return XDP_PASS;
	__u32 ihl = (ip[0] & 0x0f) * 4;
	if (ihl < 20)
		return XDP_PASS;
	__u8 *tcp = ip + ihl;
	if (tcp + 20 > end)
		return XDP_PASS;
	if (tcp[2] != (PORT >> 8) || tcp[3] != (PORT & 0xff))
		return XDP_PASS;
	if ((tcp[13] & 0x12) != 0x02)
		return XDP_PASS;
	__u64 *taken = slot_word(0);
	if (!taken)
		return XDP_PASS;
	struct flow flow = {
		.local_addr = { *(__u32 *)(ip + 16) },
		.remote_addr = { *(__u32 *)(ip + 12) },
		.local_port = (tcp[2] << 8) | tcp[3],
		.remote_port = (tcp[0] << 8) | tcp[1],
		.family = 4,
	};
	__u64 since = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&pending, &flow, &since, BPF_NOEXIST) == 0)
		__sync_fetch_and_add(taken, 1);
	return XDP_PASS;
}

SEC("sockops") int floor_accounting(struct bpf_sock_ops *ops)
{
	if (ops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		if (ops->family != 2 || ops->local_port != PORT)
			return 1;
		__u32 remote_port = ops->remote_port;
		struct flow flow = {
			.local_addr = { ops->local_ip4 },
			.remote_addr = { ops->remote_ip4 },
			.local_port = PORT,
			.remote_port = ((remote_port >> 16) & 0xff) << 8 | remote_port >> 24,
			.family = 4,
		};
		/* The hand-off: whoever deletes the record owns its slot. */
		bpf_map_delete_elem(&pending, &flow);
		struct bpf_sock *sk = ops->sk;
		if (!sk)
			return 1;
		__u32 *tag = bpf_sk_storage_get(&tags, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!tag)
			return 1;
		*tag = 1;
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		__u64 *counted = slot_word(1);
		if (counted)
			__sync_fetch_and_add(counted, 1);
	} else if (ops->op == BPF_SOCK_OPS_STATE_CB && ops->args[1] == TCP_CLOSE) {
		struct bpf_sock *sk = ops->sk;
		if (!sk)
			return 1;
		__u32 *tag = bpf_sk_storage_get(&tags, sk, 0, 0);
		__u64 *taken = slot_word(0);
		if (tag && *tag && taken) {
			*tag = 0;
			__sync_fetch_and_add(taken, -1);
		}
	}
	return 1;
}
