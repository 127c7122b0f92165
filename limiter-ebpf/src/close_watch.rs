//! The close of connections the adopt walk counted, on kernels whose sock_ops cannot be asked to
//! see it: `bpf_setsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS)` came in Linux 6.10, and without it an
//! iterator has no way to turn on a socket's state callbacks. On those kernels (Debian 12's 6.1)
//! the agent attaches this program to the `inet_sock_set_state` tracepoint, which the kernel
//! fires from the same `tcp_set_state` call as sock_ops' state callback, with the socket locked
//! the same way; the adopt walk marks what it counts [`tracked::CLOSE_BY_TRACEPOINT`].
//!
//! Every TCP state change on the node runs it: it returns at once unless the new state is CLOSE
//! and the socket carries this copy's tag with that mark. Releasing the tag is what makes the
//! decrement happen once, as in sock_ops (`socket_tags::release`).
use aya_ebpf::{
    cty::c_void, helpers::bpf_probe_read_kernel, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use limiter_common::{FlowKey, tracked};

use crate::{accounting, flow, socket_tags};

const TCP_CLOSE: i32 = 7;

/// Offsets in `struct sock_common` (the start of every `struct sock`) of what a connection's
/// source is made of; unchanged since Linux 4.x on 64-bit kernels with network namespaces.
const SKC_DADDR: usize = 0;
const SKC_RCV_SADDR: usize = 4;
const SKC_DPORT: usize = 12;
const SKC_NUM: usize = 14;
const SKC_FAMILY: usize = 16;
const SKC_V6_DADDR: usize = 56;
const SKC_V6_RCV_SADDR: usize = 72;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn close_watch(ctx: BtfTracePointContext) -> i32 {
    // inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)
    let new_state: i32 = ctx.arg(2);
    if new_state != TCP_CLOSE {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let Some(tag) = socket_tags::get(sk) else {
        return 0;
    };
    if tag.flags & tracked::CLOSE_BY_TRACEPOINT == 0 {
        return 0;
    }
    if let Some(tag) = socket_tags::release(tag) {
        accounting::uncount(&tag, || flow_of(sk.cast()));
    }
    0
}

/// The connection's 4-tuple, as [`flow::flow_of`] gives it from sock_ops' context.
#[inline(always)]
fn flow_of(sk: *const u8) -> Option<FlowKey> {
    flow::socket_flow(
        u32::from(read::<u16>(sk, SKC_FAMILY)?),
        || Some((read(sk, SKC_RCV_SADDR)?, read(sk, SKC_DADDR)?)),
        || Some((read(sk, SKC_V6_RCV_SADDR)?, read(sk, SKC_V6_DADDR)?)),
        || {
            let remote = u16::from_be(read::<u16>(sk, SKC_DPORT)?);
            Some((read::<u16>(sk, SKC_NUM)?, remote))
        },
    )
}

#[inline(always)]
fn read<T>(sk: *const u8, offset: usize) -> Option<T> {
    // SAFETY: a read of kernel memory through the helper, which fails rather than faults.
    unsafe { bpf_probe_read_kernel(sk.wrapping_add(offset).cast::<T>()) }.ok()
}
