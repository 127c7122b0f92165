//! What a namespace's limit table reports: each listener's limits, counts and events, and the
//! program-wide packet counters, read from its maps (`limiter stats`, metrics).
use std::{collections::BTreeMap, sync::atomic::Ordering};

use limiter_common::{SOURCE_DYING, SlotStats, SlotUsage, admission_mode};

use crate::{
    config::listener::Action,
    enforce::limits::LimitTable,
    observe::stats::{ListenerReport, PacketReport, Report},
};

impl LimitTable {
    pub fn report(&self) -> Report {
        let sources = self.sources_by_slot();
        let listeners = self
            .configured
            .iter()
            .map(|(listener, limit)| {
                let SlotUsage {
                    reserved,
                    active,
                    mode,
                } = self.maps.usage.get(limit.slot);
                let stats = self.slot_stats(limit.slot);
                let flood = self.flood.slot(limit.slot);
                let timeouts = self
                    .handshake_timeouts
                    .get(&limit.slot)
                    .copied()
                    .unwrap_or(0);
                let held = sources.get(&limit.slot).map_or(&[][..], Vec::as_slice);
                ListenerReport {
                    listener: listener.to_string(),
                    netns: self.netns.clone(),
                    pod: None,
                    limit: limit.own.map(|(own, _)| own as u64),
                    action: limit.own.map_or(Action::Drop, |(_, action)| action),
                    per_source_limit: limit.per_source.map(|(n, _)| n as u64),
                    per_source_action: limit.per_source.map(|(_, action)| action),
                    sources: held.len() as u64,
                    sources_at_limit: limit.per_source.map_or(0, |(n, _)| {
                        held.iter().filter(|&&h| h >= n as u64).count() as u64
                    }),
                    active,
                    pending: reserved.saturating_sub(active),
                    admitted_total: stats.established,
                    refused_total: stats.refused_drop + stats.refused_reset,
                    refused_drop_total: stats.refused_drop,
                    refused_reset_total: stats.refused_reset,
                    refused_per_source_total: stats.refused_per_source,
                    reset_after_handshake_per_source_total: stats.per_source_over_limit_established,
                    preexisting_total: stats.preexisting,
                    syn_retransmit_total: stats.syn_retransmitted,
                    handshake_timeout_total: timeouts,
                    unreserved_total: stats.established_unreserved,
                    untracked_total: stats.untracked,
                    held_total: stats.held,
                    mode: if mode == admission_mode::FLOOD {
                        "flood"
                    } else {
                        "reserve"
                    }
                    .to_string(),
                    flood_mode_entered_total: flood.entered_total,
                    proven_syn_passed_total: stats.proven_syn_passed,
                    handshakes_not_completed_total: timeouts + flood.not_completed,
                    reset_after_handshake_total: stats.over_limit_established,
                    dry_run_would_refuse_total: stats.dry_run_would_refuse,
                    listening: !self.unbound.contains(listener),
                }
            })
            .collect();
        let mut packets = PacketReport::from_counters(|i| self.packet_stat(i));
        packets.reset_after_handshake_failed_total = self.resets.failed.load(Ordering::Relaxed);
        Report {
            listeners,
            packets,
            proxies: Vec::new(),
            features: Vec::new(),
        }
    }

    /// The connections each source holds, by listener slot (one walk over SOURCES).
    fn sources_by_slot(&self) -> BTreeMap<u32, Vec<u64>> {
        let mut by_slot: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (source, held) in self.maps.sources.iter().filter_map(Result::ok) {
            if held != SOURCE_DYING && held > 0 {
                by_slot.entry(source.slot).or_default().push(held);
            }
        }
        by_slot
    }

    /// A slot's event counters, summed over CPUs.
    pub fn slot_stats(&self, slot: u32) -> SlotStats {
        let Ok(per_cpu) = self.maps.slot_stats.get(&slot, 0) else {
            return SlotStats::default();
        };
        per_cpu.iter().fold(SlotStats::default(), |mut sum, cpu| {
            sum.add(cpu);
            sum
        })
    }

    fn packet_stat(&self, index: u32) -> u64 {
        self.maps
            .packet_stats
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}
