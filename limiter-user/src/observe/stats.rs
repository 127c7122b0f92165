//! What `limiter stats` shows: per-listener numbers and program-wide packet counters, as one
//! JSON object (`--json`) or an aligned table.
use serde::{Deserialize, Serialize};

use crate::config::listener::Action;
use limiter_common::packet_stat;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub listeners: Vec<ListenerReport>,
    pub packets: PacketReport,
    #[serde(default)]
    pub proxies: Vec<ProxyReport>,
    /// What this kernel can do (`features.rs`), each on or off with why and what is lost.
    #[serde(default)]
    pub features: Vec<FeatureReport>,
}

/// One kernel feature as the start-up probe found it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeatureReport {
    pub name: String,
    pub on: bool,
    /// Why it is off; `null` when on.
    #[serde(default)]
    pub why: Option<String>,
    /// What the user loses while it is off; `null` when on.
    #[serde(default)]
    pub loss: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenerReport {
    pub listener: String,
    /// The network namespace the listener is in, as its path was given (`--limit-in`);
    /// `null` for the agent's own.
    #[serde(default)]
    pub netns: Option<String>,
    /// The pod the namespace belongs to (`NAMESPACE/NAME`), in Kubernetes mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The listener's own limit; `null` when it is limited per source only.
    pub limit: Option<u64>,
    pub action: Action,
    /// Active connections one client address (IPv4 address, IPv6 /64) may hold; `null`: none.
    #[serde(default)]
    pub per_source_limit: Option<u64>,
    #[serde(default)]
    pub per_source_action: Option<Action>,
    /// Client addresses holding connections now (listeners with a per-source limit).
    #[serde(default)]
    pub sources: u64,
    /// Of those, the ones at their per-source limit now.
    #[serde(default)]
    pub sources_at_limit: u64,
    /// Established connections now (kernel TCP state).
    pub active: u64,
    /// Handshakes in flight holding a slot.
    pub pending: u64,
    /// Connections that reached ESTABLISHED and were counted.
    pub admitted_total: u64,
    pub refused_total: u64,
    pub refused_drop_total: u64,
    pub refused_reset_total: u64,
    /// Of `refused_total`, SYNs refused because their source held its per-source limit (the
    /// rest were refused by the listener's own limit).
    #[serde(default)]
    pub refused_per_source_total: u64,
    /// Connections whose handshake completed with their source already at its per-source limit
    /// (several SYNs from one client in flight at once): reset by the agent, never counted.
    #[serde(default)]
    pub reset_after_handshake_per_source_total: u64,
    /// Connections established before the listener was limited (an agent started without
    /// pins, a limit added live), counted since.
    #[serde(default)]
    pub preexisting_total: u64,
    pub syn_retransmit_total: u64,
    pub handshake_timeout_total: u64,
    /// Counted connections whose SYN held no reservation (came in on an interface the agent does
    /// not watch, e.g. loopback, or after their reservation expired).
    pub unreserved_total: u64,
    /// Connections the socket table had no room for (not counted).
    pub untracked_total: u64,
    /// `close` listeners: connections established over the limit and left to the proxy to hold
    /// and close (never counted as active).
    #[serde(default)]
    pub held_total: u64,
    /// Admission mode now: `reserve` (a SYN takes a slot) or `flood` (a connection is admitted
    /// when its handshake completes; see the README's "Floods").
    #[serde(default)]
    pub mode: String,
    /// Times the listener went into flood mode.
    #[serde(default)]
    pub flood_mode_entered_total: u64,
    /// SYNs flood mode passed without taking a slot.
    #[serde(default)]
    pub proven_syn_passed_total: u64,
    /// Handshakes that never completed: released by the handshake timeout or at the switch to
    /// flood mode, and, in flood mode, SYNs passed that no completed handshake followed.
    #[serde(default)]
    pub handshakes_not_completed_total: u64,
    /// Flood mode: connections whose handshake completed with the listener full, reset.
    #[serde(default)]
    pub reset_after_handshake_total: u64,
    /// `dry-run`: connections over the limit let through that another action would have
    /// refused.
    #[serde(default)]
    pub dry_run_would_refuse_total: u64,
    /// Whether a socket listens on the listener in the network namespace the agent enforces
    /// in; `false`: the limit cannot take effect (the agent's log says so too).
    #[serde(default = "yes")]
    pub listening: bool,
}

impl ListenerReport {
    /// The listener, with its network namespace when it is not the agent's:
    /// `8000 in /run/netns/pod-a`.
    pub fn qualified_name(&self) -> String {
        match (&self.netns, &self.pod) {
            (Some(netns), Some(pod)) => format!("{} in pod {pod} ({netns})", self.listener),
            (Some(netns), None) => format!("{} in {netns}", self.listener),
            (None, _) => self.listener.clone(),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PacketReport {
    /// SYNs to an address and port no listener limits. Frames that are not a SYN are not
    /// counted at all (`packet_stat`). Defaulted: an agent from before it sends none.
    #[serde(default)]
    pub syn_not_limited_total: u64,
    pub malformed_total: u64,
    pub syn_passed_total: u64,
    pub syn_refused_total: u64,
    pub reset_fallback_drop_total: u64,
    pub pending_full_total: u64,
    #[serde(default)]
    pub keepalive_set_total: u64,
    #[serde(default)]
    pub keepalive_failed_total: u64,
    /// Flood mode: connections over the limit the agent could not reset (sock_diag failed).
    #[serde(default)]
    pub reset_after_handshake_failed_total: u64,
}

impl std::ops::AddAssign<&PacketReport> for PacketReport {
    /// Sums two namespaces' counters (the report's packets are those of every namespace).
    fn add_assign(&mut self, other: &PacketReport) {
        self.syn_not_limited_total += other.syn_not_limited_total;
        self.malformed_total += other.malformed_total;
        self.syn_passed_total += other.syn_passed_total;
        self.syn_refused_total += other.syn_refused_total;
        self.reset_fallback_drop_total += other.reset_fallback_drop_total;
        self.pending_full_total += other.pending_full_total;
        self.keepalive_set_total += other.keepalive_set_total;
        self.keepalive_failed_total += other.keepalive_failed_total;
        self.reset_after_handshake_failed_total += other.reset_after_handshake_failed_total;
    }
}

impl PacketReport {
    pub fn from_counters(counter: impl Fn(u32) -> u64) -> Self {
        PacketReport {
            syn_not_limited_total: counter(packet_stat::SYN_NOT_LIMITED),
            malformed_total: counter(packet_stat::MALFORMED),
            syn_passed_total: counter(packet_stat::SYN_PASSED),
            syn_refused_total: counter(packet_stat::SYN_REFUSED),
            reset_fallback_drop_total: counter(packet_stat::RESET_FELL_BACK_TO_DROP),
            pending_full_total: counter(packet_stat::PENDING_TABLE_FULL),
            keepalive_set_total: counter(packet_stat::KEEPALIVE_SET),
            keepalive_failed_total: counter(packet_stat::KEEPALIVE_FAILED),
            reset_after_handshake_failed_total: 0,
        }
    }
}

impl Report {
    /// The aligned table of `limiter stats`.
    pub fn render_table(&self) -> String {
        const HEADER: [&str; 8] = [
            "LISTENER", "LIMIT", "ACTIVE", "PENDING", "USE", "ADMITTED", "REFUSED", "ACTION",
        ];
        let mut rows: Vec<[String; 8]> = vec![HEADER.map(String::from)];
        for l in &self.listeners {
            let utilisation = match l.limit {
                Some(limit) => format!(
                    "{:.0}%",
                    100.0 * (l.active + l.pending) as f64 / limit.max(1) as f64
                ),
                None => "-".to_owned(),
            };
            rows.push([
                l.qualified_name(),
                l.limit.map_or("-".to_owned(), |limit| limit.to_string()),
                l.active.to_string(),
                l.pending.to_string(),
                utilisation,
                l.admitted_total.to_string(),
                l.refused_total.to_string(),
                l.action.as_str().to_owned(),
            ]);
        }
        let widths: Vec<usize> = (0..HEADER.len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    // The listener column reads left to right; numbers line up on the right.
                    if c == 0 || c == HEADER.len() - 1 {
                        format!("{cell:<w$}", w = widths[c])
                    } else {
                        format!("{cell:>w$}", w = widths[c])
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        if self.listeners.is_empty() {
            out.push_str("(no limits set)\n");
        }
        for l in self.listeners.iter().filter(|l| !l.listening) {
            out.push_str(&format!(
                "{}: nothing listens on it in {}: the limit cannot take effect\n",
                l.listener,
                match &l.netns {
                    Some(netns) => format!("network namespace {netns}"),
                    None => "the agent's network namespace".to_owned(),
                }
            ));
        }
        for l in &self.listeners {
            let Some(limit) = l.per_source_limit else {
                continue;
            };
            out.push_str(&format!(
                "{}: per source {limit} ({}): {} sources hold connections, {} at the limit; \
                 refused {}, reset after handshake {}\n",
                l.qualified_name(),
                l.per_source_action.unwrap_or(Action::Drop).as_str(),
                l.sources,
                l.sources_at_limit,
                l.refused_per_source_total,
                l.reset_after_handshake_per_source_total
            ));
        }
        for l in self
            .listeners
            .iter()
            .filter(|l| l.action == Action::DryRun || l.per_source_action == Some(Action::DryRun))
        {
            out.push_str(&format!(
                "{}: dry run: {} over the limit let through (would have been refused)\n",
                l.qualified_name(),
                l.dry_run_would_refuse_total
            ));
        }
        // Floods, where there were any: the mode now and what they cost.
        for l in self
            .listeners
            .iter()
            .filter(|l| l.flood_mode_entered_total > 0)
        {
            out.push_str(&format!(
                "{}: {} mode (flood mode entered {} times); SYNs passed without a slot {}, \
                 handshakes not completed {}, reset after handshake {}\n",
                l.qualified_name(),
                l.mode,
                l.flood_mode_entered_total,
                l.proven_syn_passed_total,
                l.handshakes_not_completed_total,
                l.reset_after_handshake_total
            ));
        }
        for f in self.features.iter().filter(|f| !f.on) {
            out.push_str(&format!(
                "kernel feature {} off: {}; {}\n",
                f.name,
                f.why.as_deref().unwrap_or("unknown"),
                f.loss.as_deref().unwrap_or("")
            ));
        }
        let p = &self.packets;
        out.push_str(&format!(
            "\npackets: SYN not limited {}, malformed {}, SYN passed {}, SYN refused {}\n",
            p.syn_not_limited_total, p.malformed_total, p.syn_passed_total, p.syn_refused_total
        ));
        for proxy in &self.proxies {
            out.push_str(&format!(
                "proxy {}: active {}, held {}, upstream failures {}, timeouts {}, overflow {}, keepalive deaths {}\n",
                proxy.proxy,
                proxy.active,
                proxy.held,
                proxy.upstream_connect_failures_total,
                proxy.upstream_connect_timeouts_total,
                proxy.upstream_overflow_total,
                proxy.upstream_keepalive_deaths_total
            ));
        }
        out
    }
}

/// One proxy's numbers (`--proxy`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyReport {
    pub proxy: String,
    pub active: u64,
    pub held: u64,
    pub held_total: u64,
    pub accepted_total: u64,
    pub upstream_connect_failures_total: u64,
    pub upstream_connect_timeouts_total: u64,
    pub upstream_overflow_total: u64,
    pub upstream_keepalive_deaths_total: u64,
    pub bytes_to_upstream_total: u64,
    pub bytes_to_downstream_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, limit: u64, active: u64) -> ListenerReport {
        ListenerReport {
            listener: name.into(),
            netns: None,
            pod: None,
            limit: Some(limit),
            action: Action::Drop,
            per_source_limit: None,
            per_source_action: None,
            sources: 0,
            sources_at_limit: 0,
            active,
            pending: 0,
            admitted_total: 12345,
            refused_total: 7,
            refused_drop_total: 7,
            refused_reset_total: 0,
            refused_per_source_total: 0,
            reset_after_handshake_per_source_total: 0,
            preexisting_total: 0,
            syn_retransmit_total: 0,
            handshake_timeout_total: 0,
            unreserved_total: 0,
            untracked_total: 0,
            held_total: 0,
            mode: "reserve".into(),
            flood_mode_entered_total: 0,
            proven_syn_passed_total: 0,
            handshakes_not_completed_total: 0,
            reset_after_handshake_total: 0,
            dry_run_would_refuse_total: 0,
            listening: true,
        }
    }

    #[test]
    fn table_is_aligned_and_shows_utilisation() {
        let report = Report {
            listeners: vec![
                listener("8000", 10, 5),
                listener("[fd00:1e:57::1]:443", 1000, 1000),
            ],
            packets: PacketReport::default(),
            proxies: vec![],
            features: vec![],
        };
        let table = report.render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("LISTENER"));
        assert!(lines[1].contains("50%"), "{table}");
        assert!(lines[2].contains("100%"), "{table}");
        // Columns line up: every row's LIMIT column ends at the same offset.
        let end = |line: &str, word: &str| line.find(word).map(|i| i + word.len());
        assert_eq!(end(lines[0], "LIMIT"), end(lines[1], " 10"));
        assert_eq!(end(lines[0], "LIMIT"), end(lines[2], "1000"));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let report = Report {
            listeners: vec![listener("8000", 10, 5)],
            packets: PacketReport::default(),
            proxies: vec![],
            features: vec![],
        };
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        let l = &json["listeners"][0];
        for field in [
            "listener",
            "limit",
            "active",
            "admitted_total",
            "refused_total",
            "pending",
            "action",
        ] {
            assert!(!l[field].is_null(), "missing {field}");
        }
        assert_eq!(l["action"], "drop");
        assert_eq!(json["packets"]["syn_not_limited_total"], 0);
    }
}
