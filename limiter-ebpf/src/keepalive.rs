//! Keepalive for connections of processes the agent does not own (`--keepalive-for`): when an
//! outgoing connection in the agent's network namespace becomes ESTABLISHED towards a selected
//! destination, SO_KEEPALIVE and TCP_KEEPIDLE/INTVL/CNT are set on it with `bpf_setsockopt`
//! (Linux 5.9+ for the keepalive options), as if the process had called setsockopt itself.
use aya_ebpf::{helpers::generated::bpf_setsockopt, maps::lpm_trie::Key, programs::SockOpsContext};
use aya_log_ebpf::warn;
use limiter_common::{KeepaliveConfig, KeepaliveTarget, packet_stat};

use crate::{
    flow::flow_of,
    maps::{KEEPALIVE_POLICIES, count_packet},
};

const SOL_SOCKET: i32 = 1;
const SO_KEEPALIVE: i32 = 9;
const SOL_TCP: i32 = 6;
const TCP_KEEPIDLE: i32 = 4;
const TCP_KEEPINTVL: i32 = 5;
const TCP_KEEPCNT: i32 = 6;
/// Address bits of the key: the trie matches family and port exactly, then the address prefix.
const ADDRESS_BITS: u32 = 128;

/// An outgoing connection in this copy's network namespace became ESTABLISHED (the caller
/// checked the namespace).
#[inline(always)]
pub fn apply(ctx: &SockOpsContext) {
    let Some(flow) = flow_of(ctx) else {
        return;
    };
    // From the client's side the destination is the "remote" end.
    let mut target = KeepaliveTarget {
        family: flow.family,
        port: flow.remote_port,
        addr: flow.remote_addr,
    };
    let prefix_len = KeepaliveTarget::HEADER_BITS + ADDRESS_BITS;
    let policy = match KEEPALIVE_POLICIES.get(Key::new(prefix_len, target)) {
        Some(policy) => *policy,
        None => {
            // A policy for every port of the destination.
            target.port = 0;
            match KEEPALIVE_POLICIES.get(Key::new(prefix_len, target)) {
                Some(policy) => *policy,
                None => return,
            }
        }
    };
    if set_keepalive(ctx, &policy) {
        count_packet(packet_stat::KEEPALIVE_SET);
    } else {
        count_packet(packet_stat::KEEPALIVE_FAILED);
        warn!(
            ctx,
            "keepalive: bpf_setsockopt failed on a connection to port {}; it keeps the OS defaults",
            flow.remote_port
        );
    }
}

#[inline(always)]
fn set_keepalive(ctx: &SockOpsContext, policy: &KeepaliveConfig) -> bool {
    let mut ok = set(ctx, SOL_SOCKET, SO_KEEPALIVE, 1);
    // 0: leave the kernel's default for that field.
    if policy.time_secs != 0 {
        ok &= set(ctx, SOL_TCP, TCP_KEEPIDLE, policy.time_secs);
    }
    if policy.interval_secs != 0 {
        ok &= set(ctx, SOL_TCP, TCP_KEEPINTVL, policy.interval_secs);
    }
    if policy.probes != 0 {
        ok &= set(ctx, SOL_TCP, TCP_KEEPCNT, policy.probes);
    }
    ok
}

#[inline(always)]
fn set(ctx: &SockOpsContext, level: i32, name: i32, value: u32) -> bool {
    let mut value = value as i32;
    // SAFETY: a locked full TCP socket in an *_ESTABLISHED_CB; `value` lives across the call.
    unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            level,
            name,
            (&raw mut value).cast(),
            size_of::<i32>() as i32,
        ) == 0
    }
}
