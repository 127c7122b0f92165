/* xtask/src/bench/xdp_gen.c: the SYN flood generator (the xdp-trafficgen method). Run with
 * BPF_PROG_TEST_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES) with the generator veth as
 * the ingress device: every run rewrites the template SYN's source address (low 16 bits, inside
 * 198.19.0.0/16) and source port at random, fixes both checksums incrementally (RFC 1624), and
 * returns XDP_TX, which the kernel turns into a redirect out of the generator veth, so the frame
 * arrives at the server veth without any socket or skb on the sending side. Frames may persist
 * between runs (page pool), so the old values are always read from the frame itself. */
#include "bpf.h"

static __u32 (*bpf_get_prandom_u32)(void) = (void *)7;

static __attribute__((always_inline)) __u16 csum_replace(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check;
	sum += (__u16)~old;
	sum += new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

SEC("xdp") int xdp_gen(struct xdp_md *ctx)
{
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;
	/* The template has a 20-byte IPv4 header. */
	if (data + ETH_HLEN + 20 + 20 > end)
		return XDP_ABORTED;
	__u8 *ip = data + ETH_HLEN;
	__u8 *tcp = ip + 20;
	__u32 r = bpf_get_prandom_u32();
	__u16 new_addr = (__u16)r;
	__u16 new_port = (__u16)((r >> 16) | 0x0400);
	__u16 *addr_lo = (__u16 *)(ip + 14);
	__u16 *ip_check = (__u16 *)(ip + 10);
	__u16 *sport = (__u16 *)tcp;
	__u16 *tcp_check = (__u16 *)(tcp + 16);
	__u16 old_addr = *addr_lo;
	__u16 old_port = *sport;
	*ip_check = csum_replace(*ip_check, old_addr, new_addr);
	*tcp_check = csum_replace(csum_replace(*tcp_check, old_addr, new_addr), old_port, new_port);
	*addr_lo = new_addr;
	*sport = new_port;
	return XDP_TX;
}
