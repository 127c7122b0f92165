//! Which sockets are counted: a [`TrackedSocket`] tag in each socket's own storage (`SOCKETS`,
//! BPF_MAP_TYPE_SK_STORAGE). Both writers, sock_ops and the `adopt` iterator, run holding the
//! socket's lock, so a tag is never written by two at once; the kernel frees it with the socket.
//!
//! A tag is counted from [`count`] until [`release`] at the socket's close: clearing its flags
//! there is what makes every decrement match exactly one increment.
use core::ptr;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE, cty::c_void, helpers::generated::bpf_sk_storage_get,
};
use limiter_common::{TrackedSocket, tracked};

use crate::maps::SOCKETS;

/// The socket's tag, or `None` if it has none.
#[inline(always)]
pub fn get(sk: *mut c_void) -> Option<&'static mut TrackedSocket> {
    storage(sk, ptr::null_mut(), 0)
}

/// The socket's tag, made (not counted) if it has none; `None` only when the kernel has no
/// memory for one.
#[inline(always)]
pub fn get_or_make(sk: *mut c_void) -> Option<&'static mut TrackedSocket> {
    let mut blank = TrackedSocket::default();
    storage(sk, &raw mut blank, BPF_SK_STORAGE_GET_F_CREATE as u64)
}

#[inline(always)]
fn storage(
    sk: *mut c_void,
    init: *mut TrackedSocket,
    flags: u64,
) -> Option<&'static mut TrackedSocket> {
    let map = ptr::from_ref(&SOCKETS).cast_mut().cast();
    // SAFETY: `sk` is a socket the kernel handed this program; the storage, if any, lives as
    // long as the socket, which outlives this program run.
    unsafe {
        bpf_sk_storage_get(map, sk, init.cast(), flags)
            .cast::<TrackedSocket>()
            .as_mut()
    }
}

/// Whether the tag says the socket is counted.
#[inline(always)]
pub fn is_counted(tag: &TrackedSocket) -> bool {
    tag.flags & tracked::COUNTED != 0
}

/// Tags the socket counted on `slot` (with `flags`' other bits, e.g. its place in its source's
/// count). False, changing nothing, if it was counted already.
#[inline(always)]
pub fn count(tag: &mut TrackedSocket, slot: u32, flags: u32) -> bool {
    if is_counted(tag) {
        return false;
    }
    tag.slot = slot;
    tag.flags = flags | tracked::COUNTED;
    true
}

/// At the socket's close: the tag as it was if the socket was counted, clearing it so that no
/// second close (or anything else) gives back what it held again. (No atomics: every writer
/// holds the socket's lock.)
#[inline(always)]
pub fn release(tag: &mut TrackedSocket) -> Option<TrackedSocket> {
    let was = *tag;
    tag.flags = 0;
    is_counted(&was).then_some(was)
}
