//! Flood mode: each listener switches to admitting proven clients only while its reservations
//! stop completing, and back when the flood is over.
//!
//! In the default mode a SYN takes a slot at XDP until its handshake completes (exact, and a
//! client over the limit hears its action at once). A forged-source SYN flood breaks that: its
//! handshakes never complete, so about limit / handshake-timeout forged SYNs per second would
//! hold every slot. The agent watches for it on every sweep: when reservations older than
//! [`STALE_AGE_NS`] (a real client answers a SYN-ACK within a round trip) make up an eighth of the
//! limit while the listener turns SYNs away, it puts the listener in flood mode
//! (`admission_mode::FLOOD`) and releases its reservations. There a SYN takes nothing (a full
//! listener still refuses it at XDP, as cheaply as before), the kernel answers it (its SYN
//! cookies once its queue fills), and accounting admits the connection when the handshake
//! completes, which forged sources never do. A connection found over the limit there (more
//! handshakes completed than free slots) is reset by the agent ([`crate::enforce::over_limit`]). When
//! the SYNs passed and the handshakes completed agree again for [`QUIET_WINDOWS`] windows, the
//! listener goes back to reserving at the SYN.
use std::collections::BTreeMap;

use limiter_common::{SlotStats, admission_mode};

use crate::{
    config::listener::Listener,
    enforce::{flood_state::completed, kernel::Reservation, limits::LimitTable},
};

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

/// One look at every listener: `pending` is the PENDING table as just read (the reservations
/// the handshake timeout did not release), `now_ns` on the programs' clock.
pub fn watch(table: &mut LimitTable, pending: &[Reservation], now_ns: u64) {
    let mut stale: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, reservation) in pending {
        if now_ns.saturating_sub(reservation.since_ns) >= STALE_AGE_NS {
            *stale.entry(reservation.slot).or_default() += 1;
        }
    }
    let stale_at = |slot: u32| stale.get(&slot).copied().unwrap_or(0);
    // Most listeners, most of the time, have nothing to be looked at: not in flood mode, too few
    // stale reservations, no refusal count kept. They are passed over without a write or an
    // allocation each (with 10,000 limits, copying them all out and touching each one's state
    // was 60% of an idle agent's CPU).
    let due: Vec<(Listener, u32, u32, bool)> = table
        .limits()
        .map(|(listener, slot, limit)| {
            let flooded = table.maps().usage.get(slot).mode == admission_mode::FLOOD;
            (listener, slot, limit, flooded)
        })
        .filter(|&(_, slot, limit, flooded)| {
            flooded
                || stale_at(slot) >= threshold(limit)
                || table.flood.slot(slot).last_refused.is_some()
        })
        .collect();
    for (listener, slot, limit, flooded) in due {
        if flooded {
            check_flood_over(table, listener, slot, limit, now_ns);
            continue;
        }
        let old = stale_at(slot);
        if old < threshold(limit) {
            table.flood.slot_mut(slot).last_refused = None;
            continue;
        }
        // Stale reservations, and SYNs turned away since the last look: a flood.
        let stats = table.slot_stats(slot);
        let refused = stats.refused_drop + stats.refused_reset;
        let state = table.flood.slot_mut(slot);
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
    let state = table.flood.slot_mut(slot);
    state.entered_total += 1;
    state.not_completed += released;
    state.start_window(stats, now_ns);
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
    let started = table.flood.slot(slot).window_start_ns;
    if started.is_some_and(|start| now_ns.saturating_sub(start) < WINDOW_NS) {
        return;
    }
    let stats = table.slot_stats(slot);
    let state = table.flood.slot_mut(slot);
    if started.is_none() {
        // Found in flood mode (left by an earlier agent in pinned maps): watch from now.
        state.start_window(&stats, now_ns);
        return;
    }
    let passed = stats.proven_syn_passed.saturating_sub(state.last_passed);
    let done = completed(&stats).saturating_sub(state.last_completed);
    let unanswered = passed.saturating_sub(done);
    state.not_completed += unanswered;
    state.start_window(&stats, now_ns);
    if unanswered >= threshold(limit) {
        state.quiet_windows = 0;
        return;
    }
    state.quiet_windows += 1;
    if state.quiet_windows < QUIET_WINDOWS {
        return;
    }
    state.window_start_ns = None;
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
