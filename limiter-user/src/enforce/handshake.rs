//! Releasing reservations whose handshake never completed (a SYN flood, a client that vanished,
//! a SYN the kernel dropped after XDP let it through). Such a reservation would otherwise hold a
//! slot for ever.
//!
//! Ownership rule shared with the accounting program: whoever deletes the PENDING entry owns its
//! reservation. If the handshake completes while we sweep, either accounting deletes the entry
//! first (and the connection is counted) or we do (and accounting counts it as unreserved):
//! never both, never neither.
use std::time::Duration;

use crate::enforce::{flood, kernel::Reservation, limits::LimitTable};

/// Now on CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns()` reads.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// How often to sweep for a given timeout: often enough that a slot is back within about a
/// quarter of the timeout after it expires, and that a flood is noticed within
/// [`flood::CHECK_INTERVAL`].
pub fn sweep_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(20), flood::CHECK_INTERVAL)
}

/// A sweep walks PENDING at least this often (every this many sweeps), handshakes in flight
/// or not: a bound on how long [`LimitTable::handshakes_in_flight`]'s racy look can delay a
/// release.
pub const WALK_AT_LEAST_EVERY: u32 = 10;

impl LimitTable {
    /// Whether any slot in use holds a reservation that is not an established connection: a
    /// handshake in flight, with a PENDING entry the sweep may have to release. From the
    /// memory-mapped budgets, without a system call. Each slot's two words are read one after
    /// the other while the programs change them, so a connection established or closed between
    /// the two reads can hide a handshake for that one look (the sweep walks anyway every
    /// [`crate::enforce::handshake::WALK_AT_LEAST_EVERY`]th time); an entry made after them is younger
    /// than the look, so nothing is due for it yet.
    pub fn handshakes_in_flight(&self) -> bool {
        (0..self.next_slot).any(|slot| {
            let usage = self.maps.usage.get(slot);
            usage.reserved > usage.active
        })
    }

    pub fn count_handshake_timeout(&mut self, slot: u32) {
        self.maps.usage.release_reservation(slot);
        *self.handshake_timeouts.entry(slot).or_default() += 1;
    }
}

/// Releases every reservation older than `timeout` (returns how many), then lets the flood
/// watch look at the rest.
///
/// PENDING is walked only while some handshake is in flight (or every
/// [`WALK_AT_LEAST_EVERY`]th sweep): a walk visits every bucket of the table whether it holds
/// anything or not. Walking on every sweep cost about 0.11% of a CPU per enforced namespace
/// at rest (an agent enforcing in 16 pod namespaces, no traffic: 2.8% of a CPU, 1.2% with
/// this), which on a node of a hundred pods would be most of what an idle agent spends.
pub fn sweep(table: &mut LimitTable, timeout: Duration) -> usize {
    let now = monotonic_ns();
    table.sweeps_without_walk += 1;
    if table.sweeps_without_walk < WALK_AT_LEAST_EVERY && !table.handshakes_in_flight() {
        // Nothing to release, and no reservation to call stale.
        flood::watch(table, &[], now);
        return 0;
    }
    table.sweeps_without_walk = 0;
    let deadline = now.saturating_sub(timeout.as_nanos() as u64);
    let (expired, live): (Vec<Reservation>, Vec<Reservation>) = table
        .maps()
        .pending
        .iter()
        // An entry deleted by accounting mid-walk shows up as an error: it is not ours anyway.
        .filter_map(Result::ok)
        .partition(|(_, pending)| pending.since_ns < deadline);
    let mut released = 0;
    for (flow, pending) in expired {
        if table.maps_mut().pending.remove(&flow).is_ok() {
            table.count_handshake_timeout(pending.slot);
            released += 1;
        }
    }
    flood::watch(table, &live, now);
    released
}
