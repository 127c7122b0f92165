/* xtask/src/bench/xdp_gen_rx.c: on the generator veth, drop what the server sends back to the
 * flood's made-up sources (IPv4 to 198.19.0.0/16: SYN-ACKs in the configurations that let the
 * flood through), pass everything else (the real client's connections). Its threaded NAPI runs
 * on the generator's CPU, so answering the flood costs the server CPU nothing beyond sending. */
#include "bpf.h"

SEC("xdp") int xdp_gen_rx(struct xdp_md *ctx)
{
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;
	if (data + ETH_HLEN + 20 > end)
		return XDP_PASS;
	if (data[12] != 0x08 || data[13] != 0x00)
		return XDP_PASS;
	__u8 *ip = data + ETH_HLEN;
	if (ip[16] == 198 && ip[17] == 19)
		return XDP_DROP;
	return XDP_PASS;
}
