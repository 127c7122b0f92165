/* xtask/src/bench/xdp_pass.c: the empty program, XDP_PASS for every frame. The per-packet
 * baseline for limiter's pass paths, and what the server veth runs in the flood configurations
 * without an XDP filter (a veth only takes frames redirected into it when it runs XDP). */
#include "bpf.h"

SEC("xdp") int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
