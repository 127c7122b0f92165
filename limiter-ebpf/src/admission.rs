//! XDP admission: where a SYN is admitted or refused.
//!
//! Parse; pass everything that is not a SYN to a limited listener (and leave frames that are not
//! a SYN at all uncounted: they are nearly all of them); reserve a slot with one atomic
//! fetch-add and record the handshake by 4-tuple, or, at the limit, let a retransmitted SYN
//! that already holds a slot through and refuse the rest with the listener's action. A
//! reservation is handed to accounting when the handshake completes, or released by the agent
//! when it does not complete in time.
//!
//! A listener with a per-source limit first refuses a SYN whose source already holds that many
//! established connections: one hash lookup, no state (`sources.rs`).
//!
//! In flood mode (`limiter_common::admission_mode::FLOOD`, set by the agent when reservations
//! stop completing) a SYN takes nothing: a full listener still refuses it here, at the same
//! cost, and any other passes; accounting admits the connection once the kernel has completed
//! its handshake, which forged sources never do.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use limiter_common::{NO_LIMIT, Pending, SourceKey, action, packet_stat};

use crate::{
    atomic::Usage,
    listeners,
    maps::{PENDING, count_packet, count_slot},
    packet::{self, Frame, Syn},
    reset, sources,
};

const EEXIST: i32 = 17;

#[xdp]
pub fn admission(ctx: XdpContext) -> u32 {
    let syn = match packet::parse(&ctx) {
        Frame::Syn(syn) => syn,
        // Not a SYN: nearly every frame, passed without so much as a counter (`packet_stat`).
        Frame::NotSyn => return xdp_action::XDP_PASS,
        Frame::Malformed => return pass(packet_stat::MALFORMED),
    };
    let flow = &syn.flow;
    let Some(listener) = listeners::lookup(flow.family, &flow.local_addr, flow.local_port) else {
        return pass(packet_stat::SYN_NOT_LIMITED);
    };
    if listener.source_limit != 0
        && sources::at_limit(&SourceKey::of(listener.slot, flow), listener.source_limit)
    {
        // A dry run counts it and goes on to the listener's own limit.
        if listener.source_action == action::DRY_RUN {
            count_slot(listener.slot, |s| &mut s.dry_run_would_refuse);
        } else {
            count_slot(listener.slot, |s| &mut s.refused_per_source);
            return refuse(&ctx, &syn, listener.slot, listener.source_action);
        }
    }
    // Proxy mode (`close`): every handshake completes; accounting admits or holds the
    // connection once it is established, and the proxy closes held ones after its delay. A
    // listener limited per source only has no budget to reserve in: only established
    // connections count per source, so a SYN takes nothing (and a flood of them fills nothing).
    if listener.action == action::CLOSE || listener.limit == NO_LIMIT {
        return pass(packet_stat::SYN_PASSED);
    }
    // (Never None: the agent only writes slots below SLOT_USAGE's size; the verifier needs
    // the check.)
    let Some(usage) = Usage::of(listener.slot) else {
        return pass(packet_stat::SYN_NOT_LIMITED);
    };
    if usage.flood_mode() {
        if usage.full(listener.limit) {
            return refuse(&ctx, &syn, listener.slot, listener.action);
        }
        count_slot(listener.slot, |s| &mut s.proven_syn_passed);
        return pass(packet_stat::SYN_PASSED);
    }
    if !usage.try_reserve(listener.limit) {
        // At the limit. A retransmitted SYN whose first copy holds a slot still passes; there
        // can be none unless a handshake is in flight, so a listener held at its limit by
        // established connections (a flood's case) refuses without the 4-tuple lookup.
        if usage.handshakes_in_flight() && PENDING.get_ptr(flow).is_some() {
            count_slot(listener.slot, |s| &mut s.syn_retransmitted);
            return pass(packet_stat::SYN_PASSED);
        }
        return refuse(&ctx, &syn, listener.slot, listener.action);
    }
    // SAFETY: a helper without arguments or side effects.
    let since_ns = unsafe { bpf_ktime_get_ns() };
    let reservation = Pending {
        slot: listener.slot,
        per_source: (listener.source_limit != 0) as u32,
        since_ns,
    };
    match PENDING.insert(flow, &reservation, BPF_NOEXIST as u64) {
        Ok(()) => {
            count_slot(listener.slot, |s| &mut s.syn_admitted);
            pass(packet_stat::SYN_PASSED)
        }
        // A retransmitted SYN whose first copy holds a slot (or the same SYN that won a race on
        // another CPU): give back the slot just taken; neither a second slot nor a refusal.
        // (For that instant the listener may look one fuller than it is: a new SYN racing this
        // one on another CPU at the limit's edge is refused and retransmitted; never admitted
        // over the limit.)
        Err(err) if err as i32 == -EEXIST => {
            usage.release_reservation();
            count_slot(listener.slot, |s| &mut s.syn_retransmitted);
            pass(packet_stat::SYN_PASSED)
        }
        Err(_) => {
            usage.release_reservation();
            count_packet(packet_stat::PENDING_TABLE_FULL);
            // Per SYN under a flood, so debug (off unless --log-level debug).
            debug!(
                &ctx,
                "PENDING table full: SYN to port {} refused", flow.local_port
            );
            refuse(&ctx, &syn, listener.slot, listener.action)
        }
    }
}

#[inline(always)]
fn pass(counter: u32) -> u32 {
    count_packet(counter);
    xdp_action::XDP_PASS
}

/// Refuses a SYN for listener `slot` with the action `refusal` (the listener's, or its
/// per-source one).
#[inline(always)]
fn refuse(ctx: &XdpContext, syn: &Syn, slot: u32, refusal: u32) -> u32 {
    // Dry run: what would have been refused passes, counted; it takes no slot (accounting
    // counts the connection if it is established, so the count shows the real load).
    if refusal == action::DRY_RUN {
        count_slot(slot, |s| &mut s.dry_run_would_refuse);
        return pass(packet_stat::SYN_PASSED);
    }
    count_packet(packet_stat::SYN_REFUSED);
    if refusal == action::RESET {
        if reset::reply(ctx, syn) {
            count_slot(slot, |s| &mut s.refused_reset);
            return xdp_action::XDP_TX;
        }
        count_packet(packet_stat::RESET_FELL_BACK_TO_DROP);
        debug!(
            ctx,
            "reset fell back to a drop: no RST for a SYN with IP options or IPv6 extension headers (port {})",
            syn.flow.local_port
        );
    }
    count_slot(slot, |s| &mut s.refused_drop);
    xdp_action::XDP_DROP
}
