//! Flood mode: each listener switches to admitting proven clients only while its reservations
//! stop completing, and back when the flood is over.
//!
//! In the default mode a SYN takes a slot at XDP until its handshake completes (exact, and a
//! client over the limit hears its action at once). A forged-source SYN flood breaks that: its
//! handshakes never complete, so about limit / handshake-timeout forged SYNs per second would
//! hold every slot. The agent watches for it on every sweep: when reservations older than
//! [`STALE_AGE`] (a real client answers a SYN-ACK within a round trip) make up an eighth of the
//! limit while the listener turns SYNs away, it puts the listener in flood mode
//! (`admission_mode::FLOOD`) and releases its reservations. There a SYN takes nothing (a full
//! listener still refuses it at XDP, as cheaply as before), the kernel answers it (its SYN
//! cookies once its queue fills), and accounting admits the connection when the handshake
//! completes, which forged sources never do. A connection found over the limit there (more
//! handshakes completed than free slots) is reset by the agent ([`crate::over_limit`]). When
//! the SYNs passed and the handshakes completed agree again for [`QUIET_WINDOWS`] windows, the
//! listener goes back to reserving at the SYN.
use std::collections::BTreeMap;

use limiter_common::{SlotStats, admission_mode};

use crate::{handshake::Reservation, limits::LimitTable, listener::Listener};

/// A reservation this old has not seen its handshake complete in a round trip.
pub const STALE_AGE_NS: u64 = 250_000_000;
/// How often the agent looks (the sweep interval is at most this).
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// In flood mode, how long one window of SYNs passed vs handshakes completed lasts.
const WINDOW_NS: u64 = 1_000_000_000;
/// Windows in a row without a flood before leaving flood mode.
const QUIET_WINDOWS: u32 = 3;

/// How many stale reservations (or unanswered SYNs in a window) make a flood: an eighth of the
/// limit, at least one.
pub fn threshold(limit: u32) -> u64 {
    (limit as u64).div_ceil(8).max(1)
}

/// One listener slot's flood state.
#[derive(Clone, Debug, Default)]
pub struct SlotFlood {
    pub in_flood: bool,
    pub entered_total: u64,
    /// Handshakes that never completed and were not released by the handshake timeout:
    /// reservations released at the switch, and, in flood mode, SYNs passed that no completed
    /// handshake followed.
    pub not_completed: u64,
    /// Refusals seen when stale reservations were last looked at (the flood test needs the
    /// listener to be turning SYNs away).
    last_refused: Option<u64>,
    window_start_ns: u64,
    last_passed: u64,
    last_completed: u64,
    quiet_windows: u32,
}

/// Flood state of every slot.
#[derive(Debug)]
pub struct FloodWatch {
    slots: Vec<SlotFlood>,
}

impl FloodWatch {
    pub fn new(slots: usize) -> Self {
        FloodWatch {
            slots: vec![SlotFlood::default(); slots],
        }
    }

    pub fn slot(&self, slot: u32) -> &SlotFlood {
        &self.slots[slot as usize]
    }

    /// A slot given to another listener starts afresh.
    pub fn reset(&mut self, slot: u32) {
        self.slots[slot as usize] = SlotFlood::default();
    }
}

fn completed(stats: &SlotStats) -> u64 {
    stats.established + stats.over_limit_established
}

/// One look at every listener: `pending` is the PENDING table as just read (the reservations
/// the handshake timeout did not release), `now_ns` on the programs' clock.
pub fn watch(table: &mut LimitTable, pending: &[Reservation], now_ns: u64) {
    let mut stale: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, reservation) in pending {
        if now_ns.saturating_sub(reservation.since_ns) >= STALE_AGE_NS {
            *stale.entry(reservation.slot).or_default() += 1;
        }
    }
    for (listener, slot, limit) in table.limits() {
        // The mode lives in the (possibly pinned) map: a restarted agent adopts a listener an
        // earlier one left in flood mode, and watches for its end.
        if !table.flood.slot(slot).in_flood
            && table.maps().usage.get(slot).mode == admission_mode::FLOOD
        {
            let stats = table.slot_stats(slot);
            let state = &mut table.flood.slots[slot as usize];
            state.in_flood = true;
            state.window_start_ns = now_ns;
            state.last_passed = stats.proven_syn_passed;
            state.last_completed = completed(&stats);
        }
        if table.flood.slot(slot).in_flood {
            check_flood_over(table, listener, slot, limit, now_ns);
            continue;
        }
        let old = stale.get(&slot).copied().unwrap_or(0);
        if old < threshold(limit) {
            table.flood.slots[slot as usize].last_refused = None;
            continue;
        }
        // Stale reservations, and SYNs turned away since the last look: a flood.
        let stats = table.slot_stats(slot);
        let refused = stats.refused_drop + stats.refused_reset;
        let state = &mut table.flood.slots[slot as usize];
        let turned_away = state.last_refused.is_some_and(|before| refused > before);
        state.last_refused = Some(refused);
        if turned_away {
            enter(table, listener, slot, old, &stats, pending, now_ns);
        }
    }
}

fn enter(
    table: &mut LimitTable,
    listener: Listener,
    slot: u32,
    stale: u64,
    stats: &SlotStats,
    pending: &[Reservation],
    now_ns: u64,
) {
    table.maps().usage.set_mode(slot, admission_mode::FLOOD);
    // From now on no SYN of this listener reserves; give back what the flood holds. A real
    // handshake in flight loses its reservation too, and is admitted when it completes.
    let mut released = 0;
    for (flow, reservation) in pending.iter().filter(|(_, r)| r.slot == slot) {
        if table.maps_mut().pending.remove(flow).is_ok() {
            table.maps().usage.release_reservation(reservation.slot);
            released += 1;
        }
    }
    let state = &mut table.flood.slots[slot as usize];
    state.in_flood = true;
    state.entered_total += 1;
    state.not_completed += released;
    state.window_start_ns = now_ns;
    state.last_passed = stats.proven_syn_passed;
    state.last_completed = completed(stats);
    state.quiet_windows = 0;
    tracing::warn!(
        %listener,
        stale_handshakes = stale,
        released,
        "SYN flood: handshakes are not completing; flood mode on (a SYN takes no slot, a \
         connection is admitted when its handshake completes)"
    );
}

fn check_flood_over(
    table: &mut LimitTable,
    listener: Listener,
    slot: u32,
    limit: u32,
    now_ns: u64,
) {
    if now_ns.saturating_sub(table.flood.slot(slot).window_start_ns) < WINDOW_NS {
        return;
    }
    let stats = table.slot_stats(slot);
    let state = &mut table.flood.slots[slot as usize];
    let passed = stats.proven_syn_passed.saturating_sub(state.last_passed);
    let done = completed(&stats).saturating_sub(state.last_completed);
    let unanswered = passed.saturating_sub(done);
    state.not_completed += unanswered;
    state.window_start_ns = now_ns;
    state.last_passed = stats.proven_syn_passed;
    state.last_completed = completed(&stats);
    if unanswered >= threshold(limit) {
        state.quiet_windows = 0;
        return;
    }
    state.quiet_windows += 1;
    if state.quiet_windows < QUIET_WINDOWS {
        return;
    }
    state.in_flood = false;
    state.last_refused = None;
    table.maps().usage.set_mode(slot, admission_mode::RESERVE);
    tracing::info!(%listener, "SYN flood over: flood mode off (a SYN reserves its slot again)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eighth_of_the_limit_at_least_one() {
        assert_eq!(threshold(1), 1);
        assert_eq!(threshold(10), 2);
        assert_eq!(threshold(1000), 125);
        assert_eq!(threshold(u32::MAX), (u32::MAX as u64).div_ceil(8));
    }
}
