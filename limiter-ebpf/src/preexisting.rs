//! Connections that were there first: counting connections established before their listener
//! was limited (an agent started without pins, a limit added live).
//!
//! sock_ops counts a connection when it becomes ESTABLISHED, and sees its close only if it asked
//! for state callbacks then; a connection already open never passed through it. The agent finds
//! such connections on limited listeners (sock_diag) and puts their cookies in PREEXISTING with
//! the slot and source to count them on; it then runs this iterator over the namespace's TCP
//! sockets. For each listed socket it asks for the state callbacks (`bpf_setsockopt` of
//! TCP_BPF_SOCK_OPS_CB_FLAGS, Linux 6.10+), so that sock_ops sees its close, and counts it
//! exactly as sock_ops would have: tagged counted (`socket_tags.rs`), one slot, a place in its
//! source's count; it writes the cookie of each one it counted to the walk's output. On kernels
//! without that option the agent attaches `close_watch` and sets ADOPTED_CLOSE_BY_TRACEPOINT:
//! the walk then marks what it counts for that program to see its close instead.
//!
//! The iterator holds the socket's lock and skips sockets already unhashed (closed), so the
//! socket cannot close between being tagged and being asked for its callbacks; a socket that
//! sock_ops counted in the meantime (it became ESTABLISHED after the programs were attached) is
//! already tagged counted, and is left alone. A socket counted already, on a listener that has
//! since got a per-source limit, only takes its place in its source's count.
use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_STATE_CB_FLAG, seq_file},
    cty::c_void,
    helpers::generated::{
        bpf_get_socket_cookie, bpf_getsockopt, bpf_seq_write, bpf_setsockopt, bpf_skc_to_tcp_sock,
    },
};
use limiter_common::tracked;

use crate::{
    atomic::Usage,
    maps::{PREEXISTING, count_slot},
    socket_tags,
    sources::{self, Take},
};

const SOL_TCP: i32 = 6;
/// `bpf_setsockopt`'s option for a socket's sock_ops callback flags (Linux 6.10+).
const TCP_BPF_SOCK_OPS_CB_FLAGS: i32 = 1008;

/// The kernel's `struct bpf_iter_meta`: the start of it, the walk's output file.
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
}

/// The kernel's `struct bpf_iter__tcp`: the iterator's context.
#[repr(C)]
pub struct IterTcp {
    meta: *mut IterMeta,
    /// `struct sock_common *`, NULL at the end of the walk.
    sk_common: *mut c_void,
    uid: u32,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn adopt(ctx: *mut IterTcp) -> i32 {
    // SAFETY: the kernel passes a valid context; its socket pointer is checked for NULL.
    let sk = unsafe { (*ctx).sk_common };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: the helper only reads (or makes) the socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    // SAFETY: copied out at once.
    let Some(&source) = (unsafe { PREEXISTING.get(&cookie) }) else {
        return 0;
    };
    // SAFETY: the helper returns NULL for anything but a full TCP socket (time-wait, request).
    let tcp = unsafe { bpf_skc_to_tcp_sock(sk) }.cast::<c_void>();
    if tcp.is_null() {
        return 0;
    }
    // Without memory for a tag it stays in PREEXISTING, which the agent reports as not counted.
    let Some(tag) = socket_tags::get_or_make(tcp) else {
        return 0;
    };
    // The agent gives a family only for a listener with a per-source limit.
    let per_source = source.family != 0;
    if socket_tags::is_counted(tag) {
        // Counted already (by sock_ops, or an earlier run): what may be missing is its place in
        // its source's count. Counted whatever the source holds: the connection exists.
        let done = if !per_source || tag.flags & tracked::COUNTED_PER_SOURCE != 0 {
            true
        } else if tag.slot != source.slot {
            // Its close gives the place back on the slot it holds (a listener unset and set
            // again while it was open): not this one's source.
            false
        } else if matches!(sources::take(&source, None), Take::Taken) {
            tag.flags |= tracked::COUNTED_PER_SOURCE;
            report_counted(ctx, cookie);
            true
        } else {
            false
        };
        // What is left in PREEXISTING the agent reports as not counted.
        if done {
            let _ = PREEXISTING.remove(&cookie);
        }
        return 0;
    }
    // How its close will be seen: sock_ops' state callback, asked for here where the kernel
    // can (6.10+), or `close_watch` where it cannot (the agent attached it, and said so).
    let close_flag = if close_by_tracepoint() {
        tracked::CLOSE_BY_TRACEPOINT
    } else if ask_for_state_callbacks(tcp) {
        0
    } else {
        // Its close would never be seen: leave it uncounted (the agent reports those left).
        return 0;
    };
    let Some(usage) = Usage::of(source.slot) else {
        return 0;
    };
    // Counted whatever the source holds: the kernel holds the connection already.
    let per_source = per_source && matches!(sources::take(&source, None), Take::Taken);
    let tag_flags = close_flag
        | if per_source {
            tracked::COUNTED_PER_SOURCE
        } else {
            0
        };
    // Not counted yet (checked above, under the socket's lock): this cannot fail.
    socket_tags::count(tag, source.slot, tag_flags);
    // Counted: the agent takes what is left in PREEXISTING as not counted.
    let _ = PREEXISTING.remove(&cookie);
    usage.reserve_unconditionally();
    usage.established();
    count_slot(source.slot, |s| &mut s.preexisting);
    report_counted(ctx, cookie);
    0
}

/// Set by the agent at load: this kernel's `bpf_setsockopt` lacks TCP_BPF_SOCK_OPS_CB_FLAGS, and
/// `close_watch` is attached to see the close of what this walk counts. Read volatile: the
/// loader rewrites it in the object's read-only data.
#[unsafe(no_mangle)]
static ADOPTED_CLOSE_BY_TRACEPOINT: u8 = 0;

#[inline(always)]
fn close_by_tracepoint() -> bool {
    // SAFETY: a read of a global the loader initialised.
    unsafe { core::ptr::read_volatile(&raw const ADOPTED_CLOSE_BY_TRACEPOINT) != 0 }
}

/// Turns on sock_ops' state callbacks for `tcp` (a full TCP socket), keeping the flags it had;
/// false where the kernel cannot (before Linux 6.10).
#[inline(always)]
fn ask_for_state_callbacks(tcp: *mut c_void) -> bool {
    let mut flags: i32 = 0;
    // SAFETY: the option is an int, read into and written from a local of that size.
    unsafe {
        bpf_getsockopt(
            tcp,
            SOL_TCP,
            TCP_BPF_SOCK_OPS_CB_FLAGS,
            (&raw mut flags).cast(),
            4,
        ) == 0
            && {
                flags |= BPF_SOCK_OPS_STATE_CB_FLAG as i32;
                bpf_setsockopt(
                    tcp,
                    SOL_TCP,
                    TCP_BPF_SOCK_OPS_CB_FLAGS,
                    (&raw mut flags).cast(),
                    4,
                ) == 0
            }
    }
}

/// The start-up probe: `bpf_getsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS)`'s return code on each full
/// TCP socket of the namespace, written to the walk's output (0: the kernel has the option, and
/// the adopt walk can ask for state callbacks). It reads, and changes nothing.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn probe_cb_flags(ctx: *mut IterTcp) -> i32 {
    // SAFETY: the kernel passes a valid context; its socket pointer is checked for NULL.
    let sk = unsafe { (*ctx).sk_common };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: the helper returns NULL for anything but a full TCP socket.
    let tcp = unsafe { bpf_skc_to_tcp_sock(sk) }.cast::<c_void>();
    if tcp.is_null() {
        return 0;
    }
    let mut flags: i32 = 0;
    // SAFETY: as in `ask_for_state_callbacks`; the result is a local of 8 bytes.
    let result = unsafe {
        bpf_getsockopt(
            tcp,
            SOL_TCP,
            TCP_BPF_SOCK_OPS_CB_FLAGS,
            (&raw mut flags).cast(),
            4,
        )
    };
    // SAFETY: the kernel passes a valid meta; the result is a local of 8 bytes.
    unsafe {
        let seq = (*(*ctx).meta).seq;
        bpf_seq_write(seq, (&raw const result).cast(), 8);
    }
    0
}

/// Tells the agent this walk counted the connection (or its place in its source's count): its
/// cookie, written to the walk's output, which the agent reads. A connection counted before is
/// taken out of PREEXISTING without a word, so the agent can tell the two apart.
#[inline(always)]
fn report_counted(ctx: *mut IterTcp, cookie: u64) {
    // SAFETY: the kernel passes a valid context and meta; the cookie is a local of 8 bytes.
    unsafe {
        let seq = (*(*ctx).meta).seq;
        bpf_seq_write(seq, (&raw const cookie).cast(), 8);
    }
}
