//! Per-source limits: how many established connections one client (an IPv4 address, an IPv6
//! /64) holds on a listener (`SOURCES`).
//!
//! Only connections the kernel has established count, so a source that never completes a
//! handshake (a forged one) never takes an entry. Admission only reads a source's count: a SYN
//! from a source at its limit is refused at XDP without state. Several SYNs from one source in
//! flight at once can all pass that read; the count is taken exactly, with compare-and-exchange,
//! when each handshake completes, and the one too many is reset by the agent then.
//!
//! An entry lives while its source holds connections: made by the first, deleted by the last
//! close. The close marks it [`SOURCE_DYING`] (0 to dying, one exchange) before deleting it, so
//! a connection from that source arriving then never counts in an entry on its way out: it sees
//! the mark and makes a fresh entry once the old one is gone.
use aya_ebpf::bindings::BPF_NOEXIST;
use limiter_common::{SOURCE_DYING, SourceKey};

use crate::{atomic::Counter, maps::SOURCES};

const EEXIST: i64 = -17;
/// Tries before giving up on an entry another CPU is deleting or changing right now; each try
/// is a few instructions, and giving up only means the connection is treated as over its limit.
const ATTEMPTS: u32 = 8;

pub enum Take {
    Taken,
    /// The source holds its limit already.
    Over,
    /// No entry could be made or changed (the table full, or the entry kept changing under
    /// us): the connection cannot be counted for its source.
    Lost,
}

/// Whether `source` holds `limit` connections already: admission's read.
#[inline(always)]
pub fn at_limit(source: &SourceKey, limit: u32) -> bool {
    // SAFETY: the value is copied out at once.
    match unsafe { SOURCES.get(source) } {
        Some(&held) => held != SOURCE_DYING && held >= limit as u64,
        None => false,
    }
}

/// Takes a place in `source`'s count if it holds fewer than `limit`; with `None`, whatever it
/// holds (a dry run, or a connection the kernel holds already).
#[inline(always)]
pub fn take(source: &SourceKey, limit: Option<u64>) -> Take {
    for _ in 0..ATTEMPTS {
        let Some(entry) = SOURCES.get_ptr_mut(source) else {
            match SOURCES.insert(source, &1, BPF_NOEXIST as u64) {
                Ok(()) => return Take::Taken,
                // Another CPU made it first: count in theirs.
                Err(err) if err as i64 == EEXIST => continue,
                Err(_) => return Take::Lost,
            }
        };
        let held = Counter(entry);
        let now = held.load();
        if now == SOURCE_DYING {
            // Its last connection's close is deleting it: try again for a fresh one.
            continue;
        }
        if limit.is_some_and(|limit| now >= limit) {
            return Take::Over;
        }
        if held.compare_exchange(now, now + 1) {
            // A deleted entry's memory can be reused for another source's at once: make sure
            // the place was taken in this source's entry, and give it back otherwise.
            if SOURCES.get_ptr_mut(source) == Some(entry) {
                return Take::Taken;
            }
            held.fetch_sub(1);
        }
    }
    Take::Lost
}

/// Gives back a place `source` held; its last one deletes the entry.
#[inline(always)]
pub fn give_back(source: &SourceKey) {
    let Some(entry) = SOURCES.get_ptr_mut(source) else {
        return;
    };
    let held = Counter(entry);
    // A connection taking a place from 0 before the mark keeps the entry alive.
    if held.fetch_sub(1) != 1 || !held.compare_exchange(0, SOURCE_DYING) {
        return;
    }
    // Between the two, other CPUs may have taken and given back places, deleted the entry and
    // reused its memory for another source: delete only an entry that is still this source's,
    // and otherwise take the mark back off whoever's it is.
    if SOURCES.get_ptr_mut(source) == Some(entry) {
        let _ = SOURCES.remove(source);
    } else {
        held.compare_exchange(SOURCE_DYING, 0);
    }
}
