/* xtask/src/bench/bpf.h: the little the bench's baseline XDP programs need, without kernel
 * headers (they are built with `clang -O2 -target bpf` at bench time). */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

#define XDP_ABORTED 0
#define XDP_DROP 1
#define XDP_PASS 2
#define XDP_TX 3

#define SEC(name) __attribute__((section(name), used))
#define ETH_HLEN 14

char LICENSE[] SEC("license") = "GPL";
