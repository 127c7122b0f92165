//! sock_ops accounting: where the count goes up and down, from the kernel's own TCP state.
//!
//! Up: when a passive (server-side) connection becomes ESTABLISHED in the agent's network
//! namespace on a limited listener. The handshake's reservation is taken over if there is one
//! (deleting the PENDING entry is the hand-off). Without one, a listener in flood mode admits
//! here with the same atomic reservation XDP uses (over the limit the connection goes to the
//! agent, which resets it); otherwise a slot is taken unconditionally: the kernel already holds
//! the connection. A listener with a per-source limit then takes a place in the source's count
//! (`sources.rs`); a source found over its limit here (several handshakes in flight at once) has
//! its connection reset by the agent. The socket is then tagged counted (`socket_tags.rs`) and
//! asked for state callbacks.
//!
//! Down: when a counted socket reaches CLOSE (FIN, RST or timeout, whichever side). Clearing the
//! tag is what makes every decrement match exactly one increment, of the listener's count and,
//! if the tag says it holds one, of its source's.
//!
//! Outgoing connections (ACTIVE_ESTABLISHED) go to [`keepalive`].
//!
//! Only sockets of this copy's network namespace are its business. The agent's own copy is the
//! one attached to the cgroup root, where every namespace's sockets show up; for a namespace
//! enforced in by another copy (`--limit-in`) it tail-calls that copy's program, which then
//! counts with its own maps.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    cty::c_void,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use limiter_common::{
    FlowKey, ListenerConfig, NO_LIMIT, OverLimit, Pending, SlotStats, SourceKey, TrackedSocket,
    action, tracked,
};

use crate::{
    atomic::Usage,
    flow::flow_of,
    keepalive, listeners,
    maps::{AGENT_CONFIG, NETNS_ACCOUNTING, NETNS_INDEX, OVER_LIMIT, PENDING, count_slot},
    socket_tags,
    sources::{self, Take},
};

const TCP_CLOSE: u32 = 7;

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
    let (slot, listener) = match take_reservation(&flow) {
        // (Its listener may have been unset since the SYN: the slot counts it all the same.)
        // The listener is needed again only for a per-source limit.
        Some(pending) => (
            pending.slot,
            (pending.per_source != 0)
                .then(|| listeners::lookup(flow.family, &flow.local_addr, flow.local_port))
                .flatten(),
        ),
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
                        over_limit(ctx, &flow, listener.slot, |s| &mut s.over_limit_established);
                        return;
                    }
                }
            } else {
                // The SYN crossed no watched interface (e.g. loopback) or its reservation
                // expired (or its listener, limited per source only, reserves nothing): the
                // kernel holds the connection anyway, so it counts.
                usage.reserve_unconditionally();
                if listener.limit != NO_LIMIT {
                    count_slot(listener.slot, |s| &mut s.established_unreserved);
                }
            }
            (listener.slot, Some(listener))
        }
    };
    let Some(usage) = Usage::of(slot) else {
        return;
    };
    let Some(flags) = take_source_place(ctx, &flow, slot, listener) else {
        usage.release_reservation();
        return;
    };
    let Some(tag) = socket_of(ctx).and_then(socket_tags::get_or_make) else {
        untrack(&usage, &flow, slot, flags);
        warn!(
            ctx,
            "a connection to port {} could not be tracked (no memory for its tag): not counted",
            flow.local_port
        );
        return;
    };
    if !socket_tags::count(tag, slot, flags) {
        // Counted already (by the adopt iterator, under this same lock): never twice.
        untrack(&usage, &flow, slot, flags);
        return;
    }
    if ctx
        .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .is_err()
    {
        // Without state callbacks the close would never be seen: do not count it at all.
        let _ = socket_tags::release(tag);
        untrack(&usage, &flow, slot, flags);
        return;
    }
    usage.established();
    count_slot(slot, |s| &mut s.established);
}

/// The connection's place in its source's count, for a listener with a per-source limit: the
/// flags of its SOCKETS tag, or `None` when its source is over the limit (the connection is then
/// handed to the agent to be reset, and the caller gives back its listener slot).
#[inline(always)]
fn take_source_place(
    ctx: &SockOpsContext,
    flow: &FlowKey,
    slot: u32,
    listener: Option<&ListenerConfig>,
) -> Option<u32> {
    // A listener limited per source, still on the slot this connection holds.
    let Some(listener) = listener.filter(|l| l.source_limit != 0 && l.slot == slot) else {
        return Some(0);
    };
    // A dry run counts the source's connections as they are; XDP counted the SYN that would
    // have been refused.
    let limit = (listener.source_action != action::DRY_RUN).then_some(listener.source_limit as u64);
    match sources::take(&SourceKey::of(slot, flow), limit) {
        Take::Taken => Some(tracked::COUNTED_PER_SOURCE),
        Take::Over => {
            over_limit(ctx, flow, slot, |s| {
                &mut s.per_source_over_limit_established
            });
            None
        }
        Take::Lost => {
            // Too rare to cost a real client more than a retry; never an uncounted connection.
            warn!(
                ctx,
                "the source of a connection to port {} could not be counted (SOURCES full or busy): reset",
                flow.local_port
            );
            over_limit(ctx, flow, slot, |s| {
                &mut s.per_source_over_limit_established
            });
            None
        }
    }
}

/// Gives back what a connection that cannot be tracked took: its slot and, with `flags` saying
/// so, its place in its source's count.
#[inline(always)]
fn untrack(usage: &Usage, flow: &FlowKey, slot: u32, flags: u32) {
    usage.release_reservation();
    if flags & tracked::COUNTED_PER_SOURCE != 0 {
        sources::give_back(&SourceKey::of(slot, flow));
    }
    count_slot(slot, |s| &mut s.untracked);
}

/// The full socket sock_ops runs for (NULL only for a request socket, which never reaches the
/// ops handled here).
#[inline(always)]
fn socket_of(ctx: &SockOpsContext) -> Option<*mut c_void> {
    // SAFETY: reading the context's socket pointer; the verifier knows it may be NULL.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    (!sk.is_null()).then_some(sk.cast())
}

/// Hands a connection established over the limit to the agent, which resets it (sock_ops
/// cannot abort a socket). If the ring is full the connection stays, uncounted, and the
/// agent's report shows the loss.
#[inline(always)]
fn over_limit(
    ctx: &SockOpsContext,
    flow: &FlowKey,
    slot: u32,
    counter: fn(&mut SlotStats) -> &mut u64,
) {
    // SAFETY: the helper only reads the socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let event = OverLimit {
        flow: *flow,
        cookie,
    };
    if OVER_LIMIT.output::<OverLimit>(&event, 0).is_ok() {
        count_slot(slot, counter);
    } else {
        count_slot(slot, |s| &mut s.untracked);
        warn!(
            ctx,
            "a connection over the limit (flood mode or per source) on port {} could not be handed to the agent (OVER_LIMIT full): it stays, uncounted",
            flow.local_port
        );
    }
}

#[inline(always)]
fn closed(ctx: &SockOpsContext) {
    let Some(tag) = socket_of(ctx)
        .and_then(socket_tags::get)
        .and_then(socket_tags::release)
    else {
        return;
    };
    uncount(&tag, || flow_of(ctx));
}

/// Gives back what a counted connection held, once its tag is released at its close (here, or
/// in `close_watch` for one the adopt walk counted where sock_ops cannot see its close): its
/// slot and, if it holds one, its place in its source's count (`flow` gives the source).
#[inline(always)]
pub fn uncount(tag: &TrackedSocket, flow: impl FnOnce() -> Option<FlowKey>) {
    if let Some(usage) = Usage::of(tag.slot) {
        usage.closed();
    }
    if tag.flags & tracked::COUNTED_PER_SOURCE != 0
        && let Some(flow) = flow()
    {
        sources::give_back(&SourceKey::of(tag.slot, &flow));
    }
    count_slot(tag.slot, |s| &mut s.closed);
}

/// Hands the handshake's reservation over: whoever deletes the PENDING entry owns it (the
/// agent's sweeper may be deleting it at the same moment).
#[inline(always)]
fn take_reservation(flow: &FlowKey) -> Option<Pending> {
    let pending = PENDING.get_ptr(flow)?;
    // SAFETY: the entry was just found; it is read before it is deleted.
    let pending = unsafe { *pending };
    PENDING.remove(flow).ok().map(|()| pending)
}
