/* xtask/src/demo/xdp_pass.c: XDP_PASS for every frame, attached to the demo's client-side veth.
 *
 * A frame that the server side's XDP program sends back with XDP_TX (limiter's `reset` action)
 * is queued on the peer veth, and the kernel schedules the peer to receive it only when the peer
 * runs an XDP program itself: without this one the RST would never reach the client.
 * Build: clang -O2 -target bpf -c xdp_pass.c -o xdp_pass.o (no headers needed). */
#define XDP_PASS 2

__attribute__((section("xdp"), used)) int xdp_pass(void *ctx)
{
	return XDP_PASS;
}

char LICENSE[] __attribute__((section("license"), used)) = "GPL";
