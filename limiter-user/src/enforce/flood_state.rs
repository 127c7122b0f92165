//! What the flood watch ([`super::flood`]) keeps per listener slot, in each namespace's limit
//! table: how often the slot entered flood mode, the handshakes that never completed, and the
//! windows it is judged by.
use limiter_common::SlotStats;

/// One listener slot's flood state. Whether the slot is in flood mode is not kept here: the
/// kernel map's `mode` says so (also for a mode a restarted agent finds in pinned maps).
#[derive(Clone, Debug)]
pub struct SlotFlood {
    pub entered_total: u64,
    /// Handshakes that never completed and were not released by the handshake timeout:
    /// reservations released at the switch, and, in flood mode, SYNs passed that no completed
    /// handshake followed.
    pub not_completed: u64,
    /// Refusals seen when stale reservations were last looked at (the flood test needs the
    /// listener to be turning SYNs away).
    pub(super) last_refused: Option<u64>,
    /// Start of the current window of flood mode; `None` until one is started (at the switch,
    /// or at the first look at a slot found in flood mode).
    pub(super) window_start_ns: Option<u64>,
    pub(super) last_passed: u64,
    pub(super) last_completed: u64,
    pub(super) quiet_windows: u32,
}

/// A slot no flood has been looked at on yet.
const UNWATCHED: SlotFlood = SlotFlood {
    entered_total: 0,
    not_completed: 0,
    last_refused: None,
    window_start_ns: None,
    last_passed: 0,
    last_completed: 0,
    quiet_windows: 0,
};

/// Flood state of every slot in use, grown as slots are: the agent keeps one of these per
/// namespace it enforces in, and a table for every possible slot (16,384 × 72 bytes) would cost
/// every namespace 1.2 MB whether it limits one listener or thousands.
#[derive(Debug, Default)]
pub struct FloodWatch {
    slots: Vec<SlotFlood>,
}

impl FloodWatch {
    pub fn slot(&self, slot: u32) -> &SlotFlood {
        self.slots.get(slot as usize).unwrap_or(&UNWATCHED)
    }

    pub(super) fn slot_mut(&mut self, slot: u32) -> &mut SlotFlood {
        let index = slot as usize;
        if index >= self.slots.len() {
            self.slots.resize(index + 1, UNWATCHED);
        }
        &mut self.slots[index]
    }

    /// A slot given to another listener starts afresh.
    pub fn reset(&mut self, slot: u32) {
        if let Some(state) = self.slots.get_mut(slot as usize) {
            *state = UNWATCHED;
        }
    }
}

/// Handshakes of the slot that completed, admitted or over the limit.
pub(super) fn completed(stats: &SlotStats) -> u64 {
    stats.established + stats.over_limit_established
}

impl SlotFlood {
    /// A window of SYNs passed vs handshakes completed starts now, from these counters.
    pub(super) fn start_window(&mut self, stats: &SlotStats, now_ns: u64) {
        self.window_start_ns = Some(now_ns);
        self.last_passed = stats.proven_syn_passed;
        self.last_completed = completed(stats);
    }
}
