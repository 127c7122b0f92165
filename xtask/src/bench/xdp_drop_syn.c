/* xtask/src/bench/xdp_drop_syn.c: the minimal "drop SYN to port PORT" program, the baseline for
 * limiter's refusal: Ethernet without VLAN, IPv4 (any header length), TCP, SYN without ACK to
 * PORT -> XDP_DROP; everything else XDP_PASS. No maps, no state, no IPv6. */
#include "bpf.h"

#ifndef PORT
#define PORT 8000
#endif

SEC("xdp") int xdp_drop_syn(struct xdp_md *ctx)
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
	return XDP_DROP;
}
