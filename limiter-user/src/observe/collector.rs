//! One scrape's [`Report`] as Prometheus metric families: which numbers are gauges and which
//! counters, their names, help and labels (`limiter_listener_*` with `listener`, and `netns` and
//! `pod` inside other namespaces; `limiter_packets_*`, `limiter_proxy_*`, `limiter_feature`,
//! `limiter_ready`). What [`super::metrics`] serves.
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use crate::{config::listener::Action, observe::stats::Report};

/// One scrape's worth of numbers, encoded as const metrics.
#[derive(Debug)]
pub struct ReportCollector(pub Report, pub bool);

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn metric_type(self) -> MetricType {
        match self {
            Kind::Gauge => ConstGauge::<u64>::TYPE,
            Kind::Counter => ConstCounter::<u64>::TYPE,
        }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes one metric family: its HELP/TYPE (and UNIT) lines, then one sample per label set.
/// `name` is the family name without the registry prefix and without `_total`: the encoder adds
/// both (`limiter_` and, for counters, `_total`).
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: Kind,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind.metric_type())?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            Kind::Gauge => ConstGauge::new(value).encode(sample)?,
            Kind::Counter => ConstCounter::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// A listener's labels: `listener`, `netns` for a listener in another network namespace than
/// the agent's (the path it was named by), then `extra`.
fn listener_labels<'a, const N: usize>(
    l: &'a crate::observe::stats::ListenerReport,
    extra: [(&'static str, &'a str); N],
) -> Labels<'a> {
    let mut labels = vec![("listener", l.listener.as_str())];
    if let Some(netns) = &l.netns {
        labels.push(("netns", netns.as_str()));
    }
    if let Some(pod) = &l.pod {
        labels.push(("pod", pod.as_str()));
    }
    labels.extend(extra);
    labels
}

/// A program-wide counter with no labels (an empty label set would print `{}`).
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for ReportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let (report, ready) = (&self.0, self.1);
        let e = &mut encoder;

        // Per listener. Every family is described even with no listeners, so dashboards and
        // alerts can tell "no limits set" from "metric missing".
        let per_listener = |value: fn(&crate::observe::stats::ListenerReport) -> u64| {
            report
                .listeners
                .iter()
                .map(move |l| (listener_labels(l, []), value(l)))
        };
        // Only listeners with a per-source limit (the others have no sources to count).
        let per_source_listener = |value: fn(&crate::observe::stats::ListenerReport) -> u64| {
            report
                .listeners
                .iter()
                .filter(|l| l.per_source_limit.is_some())
                .map(move |l| (listener_labels(l, []), value(l)))
        };
        family(
            e,
            "listener_active_connections",
            "Established connections to the listener now, from the kernel's TCP state.",
            None,
            Kind::Gauge,
            per_listener(|l| l.active),
        )?;
        family(
            e,
            "listener_pending_handshakes",
            "Handshakes in flight holding one of the listener's slots.",
            None,
            Kind::Gauge,
            per_listener(|l| l.pending),
        )?;
        family(
            e,
            "listener_limit",
            "The listener's limit on active connections plus pending handshakes, with the action taken over it.",
            None,
            Kind::Gauge,
            report.listeners.iter().filter_map(|l| {
                let limit = l.limit?;
                Some((listener_labels(l, [("action", l.action.as_str())]), limit))
            }),
        )?;
        family(
            e,
            "listener_per_source_limit",
            "The active connections one client address (IPv4 address, IPv6 /64) may hold on the listener, with the action taken over it.",
            None,
            Kind::Gauge,
            report.listeners.iter().filter_map(|l| {
                let limit = l.per_source_limit?;
                let action = l.per_source_action.unwrap_or(Action::Drop).as_str();
                Some((listener_labels(l, [("action", action)]), limit))
            }),
        )?;
        family(
            e,
            "listener_sources",
            "Client addresses holding connections to a listener with a per-source limit now.",
            None,
            Kind::Gauge,
            per_source_listener(|l| l.sources),
        )?;
        family(
            e,
            "listener_sources_at_limit",
            "Client addresses at the listener's per-source limit now.",
            None,
            Kind::Gauge,
            per_source_listener(|l| l.sources_at_limit),
        )?;
        family(
            e,
            "listener_admitted_connections",
            "Connections to the listener that reached ESTABLISHED and were counted.",
            None,
            Kind::Counter,
            per_listener(|l| l.admitted_total),
        )?;
        family(
            e,
            "listener_refused_syns",
            "SYNs refused at XDP because the listener was at its limit, by action taken.",
            None,
            Kind::Counter,
            report.listeners.iter().flat_map(|l| {
                [
                    ("drop", l.refused_drop_total),
                    ("reset", l.refused_reset_total),
                ]
                .map(|(action, n)| (listener_labels(l, [("action", action)]), n))
            }),
        )?;
        family(
            e,
            "listener_refused_by_reason",
            "SYNs refused at XDP, by the limit that refused them: the listener's own (listener) or its per-source limit (per_source).",
            None,
            Kind::Counter,
            report.listeners.iter().flat_map(|l| {
                [
                    (
                        "listener",
                        l.refused_total.saturating_sub(l.refused_per_source_total),
                    ),
                    ("per_source", l.refused_per_source_total),
                ]
                .map(|(reason, n)| (listener_labels(l, [("reason", reason)]), n))
            }),
        )?;
        family(
            e,
            "listener_reset_after_handshake_per_source",
            "Connections whose handshake completed with their source already at its per-source limit (several in flight at once); reset by the agent.",
            None,
            Kind::Counter,
            per_source_listener(|l| l.reset_after_handshake_per_source_total),
        )?;
        family(
            e,
            "listener_preexisting_connections",
            "Connections established before the listener was limited (agent started without pins, limit added live), counted since.",
            None,
            Kind::Counter,
            per_listener(|l| l.preexisting_total),
        )?;
        family(
            e,
            "listener_held_connections",
            "Over-limit connections handed to the proxy to hold and close (action close); never counted as active.",
            None,
            Kind::Counter,
            per_listener(|l| l.held_total),
        )?;
        family(
            e,
            "listener_syn_retransmits",
            "Retransmitted SYNs that already held a reservation (neither a second slot nor refused).",
            None,
            Kind::Counter,
            per_listener(|l| l.syn_retransmit_total),
        )?;
        family(
            e,
            "listener_handshake_timeouts",
            "Reservations released because their handshake never completed in time.",
            None,
            Kind::Counter,
            per_listener(|l| l.handshake_timeout_total),
        )?;
        family(
            e,
            "listener_unreserved_connections",
            "Counted connections whose SYN held no reservation (unwatched interface such as loopback, or reservation expired).",
            None,
            Kind::Counter,
            per_listener(|l| l.unreserved_total),
        )?;
        family(
            e,
            "listener_untracked_connections",
            "Connections the socket table had no room for; they are not counted.",
            None,
            Kind::Counter,
            per_listener(|l| l.untracked_total),
        )?;
        family(
            e,
            "listener_flood_mode",
            "1 while the listener is in flood mode (a SYN takes no slot; a connection is admitted when its handshake completes), else 0.",
            None,
            Kind::Gauge,
            per_listener(|l| u64::from(l.mode == "flood")),
        )?;
        family(
            e,
            "listener_listening",
            "1 while a socket listens on the listener in the agent's network namespace; 0: nothing does, so the limit cannot take effect there.",
            None,
            Kind::Gauge,
            per_listener(|l| u64::from(l.listening)),
        )?;
        family(
            e,
            "listener_flood_mode_entered",
            "Times the listener went into flood mode because its handshakes stopped completing.",
            None,
            Kind::Counter,
            per_listener(|l| l.flood_mode_entered_total),
        )?;
        family(
            e,
            "listener_flood_syns_passed",
            "SYNs flood mode let through without taking a slot.",
            None,
            Kind::Counter,
            per_listener(|l| l.proven_syn_passed_total),
        )?;
        family(
            e,
            "listener_handshakes_not_completed",
            "Handshakes that never completed: released by timeout or at the switch to flood mode, or passed in flood mode and never answered.",
            None,
            Kind::Counter,
            per_listener(|l| l.handshakes_not_completed_total),
        )?;
        family(
            e,
            "listener_reset_after_handshake",
            "Flood mode: connections whose handshake completed with the listener full; reset by the agent.",
            None,
            Kind::Counter,
            per_listener(|l| l.reset_after_handshake_total),
        )?;
        family(
            e,
            "listener_dry_run_would_refuse",
            "dry-run listeners: connections over the limit let through that another action would have refused.",
            None,
            Kind::Counter,
            per_listener(|l| l.dry_run_would_refuse_total),
        )?;

        // Program-wide.
        let p = &report.packets;
        family(
            e,
            "packets",
            "Frames the XDP program counted, by how they ended: a SYN to no limited listener, malformed, SYN passed, SYN refused. Frames that are not a SYN are passed uncounted.",
            None,
            Kind::Counter,
            [
                ("syn_not_limited", p.syn_not_limited_total),
                ("malformed", p.malformed_total),
                ("syn_passed", p.syn_passed_total),
                ("syn_refused", p.syn_refused_total),
            ]
            .map(|(result, n)| (vec![("result", result)], n)),
        )?;
        counter(
            e,
            "reset_fallback_drops",
            "Refusals that should have been a RST but were dropped: the SYN carried IPv4 options or IPv6 extension headers the RST builder does not reflect.",
            p.reset_fallback_drop_total,
        )?;
        counter(
            e,
            "pending_table_full",
            "SYNs refused because the table of handshakes in flight was full.",
            p.pending_full_total,
        )?;
        counter(
            e,
            "reset_after_handshake_failures",
            "Flood mode: connections over the limit the agent could not reset (sock_diag failed).",
            p.reset_after_handshake_failed_total,
        )?;
        family(
            e,
            "keepalive_sockets",
            "Outgoing connections a --keepalive-for policy matched: keepalive set, or refused by bpf_setsockopt.",
            None,
            Kind::Counter,
            [
                ("set", p.keepalive_set_total),
                ("failed", p.keepalive_failed_total),
            ]
            .map(|(result, n)| (vec![("result", result)], n)),
        )?;

        // A scrape whose maps cannot be read fails (503), so 0 here means "not attached yet".
        let gauge = ConstGauge::new(u64::from(ready));
        gauge.encode(e.encode_descriptor(
            "ready",
            "1 once the agent's programs are attached (as GET /readyz says), 0 before.",
            None,
            gauge.metric_type(),
        )?)?;
        family(
            e,
            "feature",
            "1 if this kernel can do the feature, as probed at start; 0 if not (the log and `limiter stats` say why and what is lost).",
            None,
            Kind::Gauge,
            report
                .features
                .iter()
                .map(|f| (vec![("name", f.name.as_str())], u64::from(f.on))),
        )?;
        // Per proxy.
        let per_proxy = |value: fn(&crate::observe::stats::ProxyReport) -> u64| {
            report
                .proxies
                .iter()
                .map(move |x| (vec![("proxy", x.proxy.as_str())], value(x)))
        };
        family(
            e,
            "proxy_active_connections",
            "Connections the proxy is forwarding now.",
            None,
            Kind::Gauge,
            per_proxy(|x| x.active),
        )?;
        family(
            e,
            "proxy_holding_connections",
            "Over-limit connections the proxy is holding now before their delayed close.",
            None,
            Kind::Gauge,
            per_proxy(|x| x.held),
        )?;
        family(
            e,
            "proxy_held_connections",
            "Over-limit connections the proxy has held and closed (action close).",
            None,
            Kind::Counter,
            per_proxy(|x| x.held_total),
        )?;
        family(
            e,
            "proxy_accepted_connections",
            "Admitted connections the proxy accepted (each then connects upstream or fails).",
            None,
            Kind::Counter,
            per_proxy(|x| x.accepted_total),
        )?;
        family(
            e,
            "proxy_upstream_connect_failures",
            "Upstream connects that failed.",
            None,
            Kind::Counter,
            per_proxy(|x| x.upstream_connect_failures_total),
        )?;
        family(
            e,
            "proxy_upstream_connect_timeouts",
            "Upstream connects that timed out (--connect-timeout).",
            None,
            Kind::Counter,
            per_proxy(|x| x.upstream_connect_timeouts_total),
        )?;
        family(
            e,
            "proxy_upstream_overflow",
            "Connections refused because --max-upstream-connections were in use.",
            None,
            Kind::Counter,
            per_proxy(|x| x.upstream_overflow_total),
        )?;
        family(
            e,
            "proxy_upstream_keepalive_deaths",
            "Upstream connections found dead by TCP keepalive.",
            None,
            Kind::Counter,
            per_proxy(|x| x.upstream_keepalive_deaths_total),
        )?;
        // Declared with the unit so OpenMetrics carries `# UNIT limiter_proxy_bytes bytes`; the
        // encoder appends `_bytes` to the name, hence the bare "proxy".
        family(
            e,
            "proxy",
            "Bytes the proxy forwarded, by direction.",
            Some(&Unit::Bytes),
            Kind::Counter,
            report.proxies.iter().flat_map(|x| {
                [
                    ("to_upstream", x.bytes_to_upstream_total),
                    ("to_downstream", x.bytes_to_downstream_total),
                ]
                .map(|(direction, n)| {
                    (
                        vec![("proxy", x.proxy.as_str()), ("direction", direction)],
                        n,
                    )
                })
            }),
        )?;
        Ok(())
    }
}
