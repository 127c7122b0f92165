//! The shared per-listener budget, changed only with atomic read-modify-write instructions
//! (BPF_ATOMIC | BPF_FETCH, Linux 5.12+), so SYNs on several CPUs can never over-admit.
use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use limiter_common::{SlotUsage, admission_mode};

use crate::maps::SLOT_USAGE;

pub struct Usage(*mut SlotUsage);

impl Usage {
    #[inline(always)]
    pub fn of(slot: u32) -> Option<Self> {
        SLOT_USAGE.get_ptr_mut(slot).map(Usage)
    }

    #[inline(always)]
    fn reserved(&self) -> Counter {
        // SAFETY: the pointer is a live array element, 8-byte aligned.
        Counter(unsafe { &raw mut (*self.0).reserved })
    }

    #[inline(always)]
    fn active(&self) -> Counter {
        // SAFETY: as for `reserved`.
        Counter(unsafe { &raw mut (*self.0).active })
    }

    /// Takes one slot if fewer than `limit` are reserved. A plain read first keeps a flood
    /// at the limit from bouncing the cache line between CPUs; the fetch-add gives every CPU a
    /// unique old value, so exactly `limit` reservations can win.
    #[inline(always)]
    pub fn try_reserve(&self, limit: u64) -> bool {
        let reserved = self.reserved();
        if reserved.load() >= limit {
            return false;
        }
        if reserved.fetch_add(1) >= limit {
            reserved.fetch_sub(1);
            return false;
        }
        true
    }

    /// Whether the agent has put this listener in flood mode (`admission_mode::FLOOD`).
    #[inline(always)]
    pub fn flood_mode(&self) -> bool {
        // SAFETY: as for `reserved`; the agent writes the word whole.
        unsafe { core::ptr::read_volatile(&raw const (*self.0).mode) == admission_mode::FLOOD }
    }

    /// Whether every slot is taken (a plain read: flood mode's SYNs only need a hint, the
    /// exact check is made when the handshake completes).
    #[inline(always)]
    pub fn full(&self, limit: u64) -> bool {
        self.reserved().load() >= limit
    }

    /// Whether any reservation of this listener is a handshake still in flight (reserved but
    /// not yet counted as active). Two plain reads, not one snapshot: a connection closing or
    /// completing between them can make it answer `false` for a moment, which only means a
    /// retransmitted SYN arriving in that instant is refused and retransmitted again.
    #[inline(always)]
    pub fn handshakes_in_flight(&self) -> bool {
        let active = self.active().load();
        self.reserved().load() > active
    }

    /// Takes a slot regardless of the limit: the kernel already holds the connection.
    #[inline(always)]
    pub fn reserve_unconditionally(&self) {
        self.reserved().fetch_add(1);
    }

    #[inline(always)]
    pub fn release_reservation(&self) {
        self.reserved().fetch_sub(1);
    }

    #[inline(always)]
    pub fn established(&self) {
        self.active().fetch_add(1);
    }

    /// A counted connection reached CLOSE: give back both its slot and its place in `active`.
    #[inline(always)]
    pub fn closed(&self) {
        self.active().fetch_sub(1);
        self.reserved().fetch_sub(1);
    }
}

/// A u64 in a map value, changed only atomically by the programs and the agent. (`AtomicU64`
/// has no read-modify-write methods on the BPF target, so the intrinsics are used directly.)
///
/// SeqCst, not Relaxed: LLVM's BPF backend selects a relaxed `atomicrmw add` as the plain
/// `lock +=` (BPF_ADD without BPF_FETCH) even when the result is used, so the "old value" would be
/// the addend. SeqCst selects `atomic_fetch_add` (BPF_ADD | BPF_FETCH), which also acts as a
/// full barrier in the kernel.
pub struct Counter(pub *mut u64);

impl Counter {
    #[inline(always)]
    pub fn load(&self) -> u64 {
        // A plain (volatile) 64-bit load is single-copy atomic on BPF; the BPF backend has no
        // instruction for an LLVM atomic load.
        // SAFETY: `self.0` points into a live map value (see `Usage::of`).
        unsafe { core::ptr::read_volatile(self.0) }
    }

    #[inline(always)]
    pub fn fetch_add(&self, n: u64) -> u64 {
        // SAFETY: as for `load`.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(self.0, n) }
    }

    /// Returns the value before.
    #[inline(always)]
    pub fn fetch_sub(&self, n: u64) -> u64 {
        // BPF has no atomic sub: add the two's complement.
        // SAFETY: as for `load`.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(self.0, n.wrapping_neg()) }
    }

    /// Replaces `current` with `new` if the word still holds `current` (BPF_CMPXCHG).
    #[inline(always)]
    pub fn compare_exchange(&self, current: u64, new: u64) -> bool {
        // SAFETY: as for `load`.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                self.0, current, new,
            )
        }
        .1
    }
}
