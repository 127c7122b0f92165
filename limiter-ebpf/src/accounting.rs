//! sock_ops accounting: where the count goes up and down, from the kernel's own TCP state.
//!
//! Up: when a passive (server-side) connection becomes ESTABLISHED in the agent's network
//! namespace on a limited listener. The handshake's reservation is taken over if there is one
//! (deleting the PENDING entry is the hand-off). Without one, a listener in flood mode admits
//! here with the same atomic reservation XDP uses (over the limit the connection goes to the
//! agent, which resets it); otherwise a slot is taken unconditionally: the kernel already holds
//! the connection. The socket is then tagged in SOCKETS and asked for state callbacks.
//!
//! Down: when a tagged socket reaches CLOSE (FIN, RST or timeout, whichever side). Deleting the
//! tag is what makes every decrement match exactly one increment.
//!
//! Outgoing connections (ACTIVE_ESTABLISHED) go to [`keepalive`].
//!
//! Only sockets of this copy's network namespace are its business. The agent's own copy is the
//! one attached to the cgroup root, where every namespace's sockets show up; for a namespace
//! enforced in by another copy (`--limit-in`) it tail-calls that copy's program, which then
//! counts with its own maps.
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use limiter_common::{FlowKey, OverLimit, action, family};

use crate::{
    atomic::Usage,
    keepalive, listeners,
    maps::{AGENT_CONFIG, NETNS_ACCOUNTING, NETNS_INDEX, OVER_LIMIT, PENDING, SOCKETS, count_slot},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const TCP_CLOSE: u32 = 7;
/// `::ffff:0:0/96` in network order, as the third word of an IPv4-mapped IPv6 address.
const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xFF, 0xFF]);

#[sock_ops]
pub fn accounting(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    // Every other op (RTO, RTT, header options, ...) returns before any helper call.
    let close = op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == TCP_CLOSE;
    if !(close
        || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        || op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
    {
        return 1;
    }
    let Some(config) = AGENT_CONFIG.get(0) else {
        return 1;
    };
    // SAFETY: the helper only reads the socket's network namespace.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    if config.netns_cookie == 0 || netns != config.netns_cookie {
        // Another namespace's socket: the copy of these programs that enforces there counts it
        // (a tail call does not return); with none, it is not ours.
        if let Some(&index) = unsafe { NETNS_INDEX.get(&netns) } {
            // SAFETY: a tail call with this program's own context.
            unsafe { NETNS_ACCOUNTING.tail_call(&ctx, index) };
        }
        return 1;
    }
    match op {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => keepalive::apply(&ctx),
        _ => closed(&ctx),
    }
    1
}

/// A connection in this copy's network namespace became ESTABLISHED (the caller checked the
/// namespace).
#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let Some(flow) = flow_of(ctx) else {
        return;
    };
    let slot = match take_reservation(&flow) {
        Some(slot) => slot,
        None => {
            let Some(listener) = listeners::lookup(flow.family, &flow.local_addr, flow.local_port)
            else {
                return;
            };
            let Some(usage) = Usage::of(listener.slot) else {
                return;
            };
            if listener.action == action::CLOSE {
                // Proxy mode: admission happens here, with the same atomic reservation XDP
                // uses. Over the limit the connection is left untagged: the proxy sees that,
                // holds it for its delay and closes it, and it never counts as active.
                if !usage.try_reserve(listener.limit) {
                    count_slot(listener.slot, |s| &mut s.held);
                    return;
                }
            } else if usage.flood_mode() {
                // Flood mode: the SYN took nothing; the completed handshake proves the client
                // is real, and it is admitted now. One too many (more handshakes completed
                // than there were free slots) cannot be refused any more: the agent resets it.
                if !usage.try_reserve(listener.limit) {
                    if listener.action == action::DRY_RUN {
                        // Counted as would-be-refused, kept and counted as it really is.
                        count_slot(listener.slot, |s| &mut s.dry_run_would_refuse);
                        usage.reserve_unconditionally();
                    } else {
                        over_limit(ctx, &flow, listener.slot);
                        return;
                    }
                }
            } else {
                // The SYN crossed no watched interface (e.g. loopback) or its reservation
                // expired: the kernel holds the connection anyway, so it counts.
                usage.reserve_unconditionally();
                count_slot(listener.slot, |s| &mut s.established_unreserved);
            }
            listener.slot
        }
    };
    let Some(usage) = Usage::of(slot) else {
        return;
    };
    // SAFETY: the helper only reads the socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if SOCKETS.insert(&cookie, &slot, BPF_NOEXIST as u64).is_err() {
        usage.release_reservation();
        count_slot(slot, |s| &mut s.untracked);
        warn!(
            ctx,
            "a connection to port {} could not be tracked (SOCKETS full): not counted",
            flow.local_port
        );
        return;
    }
    if ctx
        .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .is_err()
    {
        // Without state callbacks the close would never be seen: do not count it at all.
        let _ = SOCKETS.remove(&cookie);
        usage.release_reservation();
        count_slot(slot, |s| &mut s.untracked);
        return;
    }
    usage.established();
    count_slot(slot, |s| &mut s.established);
}

/// Hands a connection established over the limit to the agent, which resets it (sock_ops
/// cannot abort a socket). If the ring is full the connection stays, uncounted, and the
/// agent's report shows the loss.
#[inline(always)]
fn over_limit(ctx: &SockOpsContext, flow: &FlowKey, slot: u32) {
    // SAFETY: the helper only reads the socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let event = OverLimit {
        flow: *flow,
        cookie,
    };
    if OVER_LIMIT.output::<OverLimit>(&event, 0).is_ok() {
        count_slot(slot, |s| &mut s.over_limit_established);
    } else {
        count_slot(slot, |s| &mut s.untracked);
        warn!(
            ctx,
            "flood mode: a connection over the limit on port {} could not be handed to the agent (OVER_LIMIT full): it stays, uncounted",
            flow.local_port
        );
    }
}

#[inline(always)]
fn closed(ctx: &SockOpsContext) {
    // SAFETY: the helper only reads the socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(&slot) = (unsafe { SOCKETS.get(&cookie) }) else {
        return;
    };
    if SOCKETS.remove(&cookie).is_ok() {
        if let Some(usage) = Usage::of(slot) {
            usage.closed();
        }
        count_slot(slot, |s| &mut s.closed);
    }
}

/// Hands the handshake's reservation over: whoever deletes the PENDING entry owns it (the
/// agent's sweeper may be deleting it at the same moment).
#[inline(always)]
fn take_reservation(flow: &FlowKey) -> Option<u32> {
    let pending = PENDING.get_ptr(flow)?;
    // SAFETY: the entry was just found; it is read before it is deleted.
    let slot = unsafe { (*pending).slot };
    PENDING.remove(flow).ok().map(|()| slot)
}

/// The connection's 4-tuple as XDP saw it. An IPv4 connection accepted by a dual-stack
/// (`[::]`) socket shows IPv4-mapped addresses here; it is folded back to IPv4.
#[inline(always)]
pub fn flow_of(ctx: &SockOpsContext) -> Option<FlowKey> {
    let (addr_family, local_addr, remote_addr) = match ctx.family() {
        AF_INET => (
            family::V4,
            [ctx.local_ip4(), 0, 0, 0],
            [ctx.remote_ip4(), 0, 0, 0],
        ),
        AF_INET6 => {
            let (local, remote) = (ctx.local_ip6(), ctx.remote_ip6());
            if is_v4_mapped(&local) && is_v4_mapped(&remote) {
                (family::V4, [local[3], 0, 0, 0], [remote[3], 0, 0, 0])
            } else {
                (family::V6, local, remote)
            }
        }
        _ => return None,
    };
    Some(FlowKey {
        local_addr,
        remote_addr,
        local_port: ctx.local_port() as u16,
        remote_port: remote_port(ctx.remote_port()),
        family: addr_family,
        _pad: 0,
    })
}

#[inline(always)]
fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX
}

/// `remote_port` is in network order; on little-endian kernels the 16-bit port sits in the
/// upper half of the word (kernel `sock_ops_convert_ctx_access` shifts it), on others it is
/// the lower half. A port is never 0, so the two layouts cannot be confused.
#[inline(always)]
fn remote_port(raw: u32) -> u16 {
    if raw > 0xFFFF {
        u32::from_be(raw) as u16
    } else {
        u16::from_be(raw as u16)
    }
}
