//! The limits the agent enforces, and the listener slots that hold their live counts.
//!
//! Each configured listener owns a slot (an index into SLOT_USAGE/SLOT_STATS). A limit changes
//! by replacing the listener's `ListenerConfig` in the kernel map: one map update, no program
//! reload, nothing established is touched. `unset` removes the listener from the map (new SYNs
//! pass), but its slot keeps counting the connections it already holds until they close; only
//! then can the slot serve another listener. Setting the same listener again takes its slot
//! back, counts intact.
//!
//! A listener has up to two limits, each with its action: its own (`--limit`), and the one each
//! client address has (`--limit-per-source`). The slot and the kernel's `ListenerConfig` carry
//! both; a listener with only a per-source limit has `NO_LIMIT` as its own.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use aya::maps::MapError;
use limiter_common::{
    FlowKey, ListenerConfig, NO_LIMIT, SlotListener, SlotStats, SourceKey, admission_mode, family,
    map_names, port_entry, tracked,
};

use crate::{
    config::coverage,
    config::keepalive::{Destinations, KeepaliveSpec},
    config::listener::{Action, LimitSpec, Listener, NO_CLOSE_PER_SOURCE, Scope},
    enforce::flood_state::FloodWatch,
    enforce::kernel::{self, Maps},
    enforce::over_limit::ResetStats,
    enforce::xdp_mode::{self, Attachment},
    error::AgentError,
};

#[derive(Clone, Copy, Debug)]
pub(super) struct Limit {
    /// The listener's own limit and action; `None`: limited per source only.
    pub(super) own: Option<(u32, Action)>,
    /// The limit and action of each client address.
    pub(super) per_source: Option<(u32, Action)>,
    pub(super) slot: u32,
}

impl Limit {
    fn get(&self, scope: Scope) -> Option<(u32, Action)> {
        match scope {
            Scope::Listener => self.own,
            Scope::PerSource => self.per_source,
        }
    }

    fn of(&mut self, scope: Scope) -> &mut Option<(u32, Action)> {
        match scope {
            Scope::Listener => &mut self.own,
            Scope::PerSource => &mut self.per_source,
        }
    }

    fn config(&self) -> ListenerConfig {
        let (source_limit, source_action) = self
            .per_source
            .map_or((0, 0), |(limit, action)| (limit, action.to_kernel()));
        ListenerConfig {
            limit: self.own.map_or(NO_LIMIT, |(limit, _)| limit as u64),
            slot: self.slot,
            // With no limit of its own nothing is refused for the listener: drop stands in.
            action: self
                .own
                .map_or(Action::Drop, |(_, action)| action)
                .to_kernel(),
            source_limit,
            source_action,
        }
    }
}

pub struct LimitTable {
    pub(super) maps: Maps,
    default_action: Action,
    pub(super) configured: BTreeMap<Listener, Limit>,
    /// Unset listeners whose slot still holds connections.
    draining: BTreeMap<Listener, u32>,
    /// Slots still holding connections of listeners an earlier agent removed (found in pinned
    /// maps): freed when they drain.
    orphans: Vec<u32>,
    free_slots: Vec<u32>,
    pub(super) next_slot: u32,
    /// Reservations released by the agent because the handshake never completed, per slot
    /// that had any (kept sparse, like `flood`: one table per enforced namespace).
    pub(super) handshake_timeouts: BTreeMap<u32, u64>,
    /// Listeners the agent runs a proxy on: the only ones the `close` action can apply to
    /// (the kernel lets every handshake of a `close` listener complete and relies on the proxy
    /// to close the held ones; without a proxy the limit would silently not be enforced).
    proxied: Vec<Listener>,
    /// The XDP mode of each interface: an action it cannot deliver is refused.
    attachments: Vec<Attachment>,
    /// Which listeners are in flood mode, and what the floods cost.
    pub flood: FloodWatch,
    /// Sweeps since the handshake sweep last walked PENDING ([`super::handshake::sweep`]).
    pub sweeps_without_walk: u32,
    /// Flood mode's connections over the limit the agent reset (or failed to), by the
    /// namespace's reset task ([`super::over_limit`]).
    pub resets: Arc<ResetStats>,
    /// Limited listeners nothing listens on in this namespace (`unbound`).
    pub unbound: BTreeSet<Listener>,
    /// The network namespace these limits apply in, as its path was given; `None`: the
    /// agent's own. Reports and logs name it.
    pub netns: Option<String>,
}

impl LimitTable {
    pub fn new(maps: Maps, default_action: Action) -> Self {
        LimitTable {
            maps,
            default_action,
            configured: BTreeMap::new(),
            draining: BTreeMap::new(),
            orphans: Vec::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            handshake_timeouts: BTreeMap::new(),
            proxied: Vec::new(),
            attachments: Vec::new(),
            flood: FloodWatch::default(),
            sweeps_without_walk: 0,
            resets: Arc::default(),
            unbound: BTreeSet::new(),
            netns: None,
        }
    }

    pub fn set_proxied(&mut self, listeners: Vec<Listener>) {
        self.proxied = listeners;
    }

    pub fn set_attachments(&mut self, attachments: Vec<Attachment>) {
        self.attachments = attachments;
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// Adds or changes a limit (the listener's own, or its per-source one). Returns the limit
    /// as now in force, for the log.
    pub fn set(&mut self, spec: &LimitSpec) -> Result<String, AgentError> {
        let action = spec.action.unwrap_or(self.default_action);
        let fail = |reason: String| AgentError::Listener {
            listener: spec.listener.to_string(),
            reason,
        };
        let listener = coverage::enforced_on(spec, action, &self.proxied).map_err(|mismatch| {
            fail(coverage::explain(&mismatch, spec, |p| {
                format!("the proxy on {p}")
            }))
        })?;
        if spec.scope == Scope::PerSource && action == Action::Close {
            return Err(fail(NO_CLOSE_PER_SOURCE.into()));
        }
        let mut written = *spec;
        written.action = Some(action);
        if let Some(reason) = xdp_mode::undeliverable(
            &self.attachments,
            action,
            &format!("{listener}={}:{}", spec.limit, action.as_str()),
        ) {
            return Err(fail(reason));
        }
        let existing = self.configured.get(&listener).copied();
        let draining = self.draining.remove(&listener);
        let mut limit = match existing {
            Some(limit) => limit,
            None => Limit {
                own: None,
                per_source: None,
                slot: match draining {
                    Some(slot) => slot,
                    None => self.allocate_slot().ok_or_else(|| {
                        fail(format!(
                            "no free listener slot ({} in use{})",
                            self.maps.usage.slots(),
                            if self.netns.is_some() {
                                ", the most a namespace's copy of the maps holds"
                            } else {
                                ", all the agent's maps hold: --max-listeners, or the size \
                                 pinned maps were made with"
                            }
                        ))
                    })?,
                },
            },
        };
        *limit.of(spec.scope) = Some((spec.limit, action));
        if let Err(e) = self.write(listener, limit, existing.is_none()) {
            // A slot taken back from draining still counts its connections: back it goes.
            match (existing, draining) {
                (Some(_), _) => {}
                (None, Some(slot)) => {
                    self.draining.insert(listener, slot);
                }
                (None, None) => self.free_slots.push(limit.slot),
            }
            return Err(fail(e));
        }
        written.listener = listener;
        let written = written.described();
        Ok(if listener == spec.listener {
            written
        } else {
            format!(
                "{written} (written {}: every client of the proxy, IPv4 and IPv6)",
                spec.listener
            )
        })
    }

    /// Puts `limit` in force for `listener` in the kernel maps, and in `configured`.
    fn write(&mut self, listener: Listener, limit: Limit, new: bool) -> Result<(), String> {
        let config = limit.config();
        let key = listener.key();
        // The slot's entry first: admission reads it as soon as PORTS names the slot.
        self.maps
            .slot_listeners
            .set(
                limit.slot,
                SlotListener {
                    key,
                    _pad: 0,
                    config,
                },
                0,
            )
            .map_err(|e| (map_names::SLOT_LISTENERS, e))
            .and_then(|()| {
                self.maps
                    .listeners
                    .insert(key, config, 0)
                    .map_err(|e| (map_names::LISTENERS, e))
            })
            .map_err(|(map, e)| format!("writing map {map}: {e}"))?;
        self.configured.insert(listener, limit);
        if new && let Err(e) = self.adjust_port(listener.port(), 1, limit.slot) {
            self.configured.remove(&listener);
            let _ = self.maps.listeners.remove(&key);
            return Err(format!("writing map {}: {e}", map_names::PORTS));
        }
        Ok(())
    }

    /// The listener a limit written as `written` is enforced on (a proxy's own listener stands
    /// for every client the proxy accepts).
    pub fn enforced_listener(&self, written: &Listener) -> Listener {
        let spec = LimitSpec {
            listener: *written,
            limit: 1,
            action: None,
            scope: Scope::Listener,
        };
        coverage::enforced_on(&spec, Action::Drop, &self.proxied).unwrap_or(*written)
    }

    /// Removes one of a listener's limits; with neither left, the listener is no longer
    /// limited (its slot drains).
    pub fn unset(&mut self, written: &Listener, scope: Scope) -> Result<(), AgentError> {
        let listener = &self.enforced_listener(written);
        let fail = |reason: String| AgentError::Listener {
            listener: listener.to_string(),
            reason,
        };
        let mut limit = self
            .configured
            .get(listener)
            .copied()
            .filter(|limit| limit.get(scope).is_some())
            .ok_or_else(|| fail(format!("has no {}", scope.noun())))?;
        *limit.of(scope) = None;
        if limit.own.is_some() || limit.per_source.is_some() {
            return self.write(*listener, limit, false).map_err(fail);
        }
        self.maps
            .listeners
            .remove(&listener.key())
            .map_err(|e| fail(format!("removing from map {}: {e}", map_names::LISTENERS)))?;
        let before = self.configured.remove(listener);
        if let Err(e) = self.adjust_port(listener.port(), -1, limit.slot) {
            self.configured.extend(before.map(|b| (*listener, b)));
            return Err(fail(format!("writing map {}: {e}", map_names::PORTS)));
        }
        self.draining.insert(*listener, limit.slot);
        Ok(())
    }

    /// Counts listener `slot` in (`delta` 1) or out (-1) of its port's PORTS entry, which also
    /// names the port's only listener when there is one (`configured` already holds the change).
    fn adjust_port(&mut self, port: u16, delta: i8, slot: u32) -> Result<(), MapError> {
        let before = self.maps.ports.get(&(port as u32), 0)?;
        let entry = if delta > 0 {
            port_entry::with_listener(before, slot)
        } else {
            let now = port_entry::listeners(before).saturating_sub(1);
            // Down to one: the one left (a walk over the limits, only on this change).
            let only = (now == 1)
                .then(|| {
                    self.configured
                        .iter()
                        .find(|(listener, _)| listener.port() == port)
                        .map(|(_, limit)| limit.slot)
                })
                .flatten()
                .unwrap_or(0);
            port_entry::pack(now, only)
        };
        self.maps.ports.set(port as u32, entry, 0)
    }

    /// Whether a reload's `unset`s then `set`s would all find a slot, worked out on the table
    /// as it is (limits set or unset live since the last reload included) before anything is
    /// changed: every listener limited afterwards holds one slot, and a slot still holding
    /// connections of a listener no longer limited (removed now or earlier) stays taken until
    /// they close. The maps' size is the one they were made with (`--max-listeners` at start,
    /// or the pinned maps'). A connection established between this look and the unsets can
    /// still make the last set of a reload at exactly full capacity fail.
    pub fn room_for(&self, unset: &[(Listener, Scope)], set: &[LimitSpec]) -> Result<(), String> {
        let unset: Vec<(Listener, Scope)> = unset
            .iter()
            .map(|(written, scope)| (self.enforced_listener(written), *scope))
            .collect();
        let kept = |listener: &Listener, limit: &Limit| {
            let mut after = *limit;
            for (_, scope) in unset.iter().filter(|(l, _)| l == listener) {
                *after.of(*scope) = None;
            }
            after.own.is_some() || after.per_source.is_some()
        };
        let limited: BTreeSet<Listener> = self
            .configured
            .iter()
            .filter(|(listener, limit)| kept(listener, limit))
            .map(|(listener, _)| *listener)
            .chain(
                set.iter()
                    .map(|spec| self.enforced_listener(&spec.listener)),
            )
            .collect();
        let usage = &self.maps.usage;
        let held = self
            .configured
            .iter()
            .map(|(listener, limit)| (listener, limit.slot))
            .chain(
                self.draining
                    .iter()
                    .map(|(listener, slot)| (listener, *slot)),
            )
            .filter(|(listener, _)| !limited.contains(listener))
            .map(|(_, slot)| slot)
            .chain(self.orphans.iter().copied())
            .filter(|&slot| usage.get(slot).reserved != 0)
            .count();
        let slots = usage.slots() as usize;
        if limited.len() + held > slots {
            return Err(format!(
                "{} listeners would be limited, and {held} slots still hold connections of \
                 listeners no longer limited: more than the {slots} listener slots these maps \
                 hold (the agent's own: --max-listeners at start; a new value takes effect on \
                 restart, and over kept pins once they are removed)",
                limited.len()
            ));
        }
        Ok(())
    }

    /// A never-used slot, or one whose listener was unset and whose connections have all
    /// closed. Its counters start again from zero.
    fn allocate_slot(&mut self) -> Option<u32> {
        self.reclaim_drained();
        if let Some(slot) = self.free_slots.pop() {
            self.reset_slot_stats(slot);
            return Some(slot);
        }
        (self.next_slot < self.maps.usage.slots()).then(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }

    fn reclaim_drained(&mut self) {
        let usage = &self.maps.usage;
        let (empty, busy): (Vec<u32>, Vec<u32>) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|slot| usage.get(*slot).reserved == 0);
        self.orphans = busy;
        self.free_slots.extend(empty);
        let (empty, busy): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.draining)
            .into_iter()
            .partition(|(_, slot)| usage.get(*slot).reserved == 0);
        self.draining = busy;
        self.free_slots.extend(empty.into_values());
    }

    fn reset_slot_stats(&mut self, slot: u32) {
        self.handshake_timeouts.remove(&slot);
        self.flood.reset(slot);
        self.maps.usage.set_mode(slot, admission_mode::RESERVE);
        if let Ok(zeros) = kernel::per_cpu_zeros::<SlotStats>() {
            let _ = self.maps.slot_stats.set(slot, zeros, 0);
        }
    }

    /// Puts `limits` and `keepalive` in force at start: after adopting what an earlier agent
    /// left in pinned maps (`adopting`), dropping the adopted limits no longer configured, so
    /// the configuration says what is in force. Logs each step, naming the namespace.
    pub fn configure<'a>(
        &mut self,
        adopting: bool,
        limits: &[LimitSpec],
        keepalive: impl IntoIterator<Item = &'a (Destinations, KeepaliveSpec)>,
    ) -> Result<(), AgentError> {
        let netns = self.netns.clone();
        let netns = netns.as_deref();
        if adopting {
            let adopted = self.adopt();
            tracing::info!(
                netns,
                "adopted {} limit(s) with their live counts",
                adopted.len()
            );
            for (listener, scope) in adopted {
                if !limits
                    .iter()
                    .any(|s| s.listener == listener && s.scope == scope)
                {
                    self.unset(&listener, scope)?;
                    tracing::info!(netns, %listener, ?scope, "limit removed (no longer configured)");
                }
            }
        }
        for spec in limits {
            let now = self.set(spec)?;
            tracing::info!(netns, "limit set: {now}");
        }
        for (destinations, keepalive) in keepalive {
            self.set_keepalive_policy(destinations, keepalive)?;
            tracing::info!(netns, %destinations, %keepalive, "keepalive policy set");
        }
        Ok(())
    }

    /// Takes over the limits and slots an earlier agent left in pinned maps; returns the
    /// limits found.
    pub fn adopt(&mut self) -> Vec<(Listener, Scope)> {
        let entries: Vec<_> = self.maps.listeners.iter().filter_map(Result::ok).collect();
        let mut found = Vec::new();
        for (key, config) in entries {
            if let Some(listener) = Listener::from_key(&key) {
                let limit = Limit {
                    own: (config.limit != NO_LIMIT).then(|| {
                        (
                            config.limit.min(u32::MAX as u64) as u32,
                            Action::from_kernel(config.action),
                        )
                    }),
                    per_source: (config.source_limit != 0).then(|| {
                        (
                            config.source_limit,
                            Action::from_kernel(config.source_action),
                        )
                    }),
                    slot: config.slot,
                };
                found.extend(limit.own.map(|_| (listener, Scope::Listener)));
                found.extend(limit.per_source.map(|_| (listener, Scope::PerSource)));
                self.configured.insert(listener, limit);
            }
        }
        let in_use: Vec<u32> = self.configured.values().map(|l| l.slot).collect();
        let holding = |slot: u32| self.maps.usage.get(slot).reserved != 0;
        self.next_slot = (0..self.maps.usage.slots())
            .filter(|&slot| in_use.contains(&slot) || holding(slot))
            .max()
            .map_or(0, |slot| slot + 1);
        for slot in (0..self.next_slot).filter(|slot| !in_use.contains(slot)) {
            if holding(slot) {
                self.orphans.push(slot)
            } else {
                self.free_slots.push(slot)
            }
        }
        found
    }

    /// The over-limit action of the listener's own limit for a local address, with the
    /// kernel's precedence: exact address, then the family's wildcard, then the bare port.
    pub fn action_for(&self, ip: std::net::IpAddr, port: u16) -> Option<Action> {
        let (_, limit) = self.limit_for(ip, port)?;
        limit.own.map(|(_, action)| action)
    }

    /// The limited listener a local address belongs to, with the kernel's precedence, and its
    /// slot and limits.
    fn limit_for(&self, ip: std::net::IpAddr, port: u16) -> Option<(Listener, Limit)> {
        let wildcard = match ip {
            std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        [
            Listener::Address(ip, port),
            Listener::Address(wildcard, port),
            Listener::AnyAddress(port),
        ]
        .into_iter()
        .find_map(|l| self.configured.get(&l).map(|limit| (l, *limit)))
    }

    /// The listener slot (and, for a listener with a per-source limit, the source) a connection
    /// of this namespace is counted on, as the `adopt` iterator wants it (`preexisting`);
    /// `None` for a connection to no limited listener, or to a `close` listener, whose
    /// connections over the limit are the proxy's to hold and must not count.
    pub fn counting_key(&self, flow: &FlowKey) -> Option<SourceKey> {
        let bytes: Vec<u8> = flow
            .local_addr
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let ip = match flow.family {
            family::V4 => std::net::IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?),
            family::V6 => std::net::IpAddr::from(<[u8; 16]>::try_from(&bytes[..]).ok()?),
            _ => return None,
        };
        let (_, limit) = self.limit_for(ip, flow.local_port)?;
        if limit.own.is_some_and(|(_, action)| action == Action::Close) {
            return None;
        }
        let mut key = SourceKey::of(limit.slot, flow);
        if limit.per_source.is_none() {
            key.family = 0;
        }
        Some(key)
    }

    /// Whether the kernel counted this connection (an accepted socket of this namespace).
    pub fn is_counted(&self, socket: &impl std::os::fd::AsRawFd) -> bool {
        self.maps
            .sockets
            .get(socket, 0)
            .is_ok_and(|tag| tag.flags & tracked::COUNTED != 0)
    }

    pub fn set_keepalive_policy(
        &mut self,
        destinations: &crate::config::keepalive::Destinations,
        spec: &crate::config::keepalive::KeepaliveSpec,
    ) -> Result<(), AgentError> {
        self.maps
            .keepalive
            .insert(&destinations.key(), spec.to_kernel(), 0)
            .map_err(|e| AgentError::KeepalivePolicy {
                destinations: destinations.to_string(),
                reason: format!("writing map {}: {e}", map_names::KEEPALIVE_POLICIES),
            })
    }

    pub fn remove_keepalive_policy(
        &mut self,
        destinations: &crate::config::keepalive::Destinations,
    ) -> Result<(), AgentError> {
        self.maps
            .keepalive
            .remove(&destinations.key())
            .map_err(|e| AgentError::KeepalivePolicy {
                destinations: destinations.to_string(),
                reason: format!("removing from map {}: {e}", map_names::KEEPALIVE_POLICIES),
            })
    }

    pub fn listeners(&self) -> Vec<Listener> {
        self.configured.keys().copied().collect()
    }

    /// Every listener with a limit of its own, with its slot and limit (per-source limits
    /// are not flooded: forged sources never take a place in them).
    pub fn limits(&self) -> impl Iterator<Item = (Listener, u32, u32)> + '_ {
        self.configured
            .iter()
            .filter_map(|(listener, limit)| limit.own.map(|(own, _)| (*listener, limit.slot, own)))
    }
}
