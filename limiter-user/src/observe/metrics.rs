//! The agent's HTTP metrics endpoint: the numbers of `limiter stats` (a [`Report`]) exported as
//! Prometheus/OpenMetrics text on `GET /metrics`, plus `GET /healthz` (the process is up) and
//! `GET /readyz` (programs attached and maps readable) for the DaemonSet's probes.
//!
//! Nothing is kept between scrapes: each scrape asks the [`MetricsSource`] for a fresh [`Report`]
//! read from the kernel maps and the proxy's counters, and a [`Collector`] turns it into const
//! gauges and counters. The kernel's counters are the source of truth, so mirroring them into
//! live prometheus-client metrics would only add a second copy that can drift.
//!
//! Every `limiter_listener_*` sample of a listener inside another network namespace (`--limit-in`)
//! also carries `netns`, the path that names the namespace, and in Kubernetes mode `pod`
//! (`NAMESPACE/NAME`).
//!
//! Families (counter samples carry `_total`; OpenMetrics names the family without it):
//!
//! | sample | type | labels |
//! |---|---|---|
//! | `limiter_listener_active_connections` | gauge | `listener` |
//! | `limiter_listener_pending_handshakes` | gauge | `listener` |
//! | `limiter_listener_limit` | gauge | `listener`, `action` |
//! | `limiter_listener_admitted_connections_total` | counter | `listener` |
//! | `limiter_listener_refused_syns_total` | counter | `listener`, `action` = `drop`/`reset` |
//! | `limiter_listener_held_connections_total` | counter | `listener` |
//! | `limiter_listener_syn_retransmits_total` | counter | `listener` |
//! | `limiter_listener_handshake_timeouts_total` | counter | `listener` |
//! | `limiter_listener_unreserved_connections_total` | counter | `listener` |
//! | `limiter_listener_untracked_connections_total` | counter | `listener` |
//! | `limiter_listener_flood_mode` | gauge (1 in flood mode, else 0) | `listener` |
//! | `limiter_listener_listening` | gauge (0: nothing listens on it here, the limit cannot take effect) | `listener` |
//! | `limiter_listener_flood_mode_entered_total` | counter | `listener` |
//! | `limiter_listener_flood_syns_passed_total` | counter | `listener` |
//! | `limiter_listener_handshakes_not_completed_total` | counter | `listener` |
//! | `limiter_listener_reset_after_handshake_total` | counter | `listener` |
//! | `limiter_listener_dry_run_would_refuse_total` | counter | `listener` |
//! | `limiter_packets_total` | counter | `result` = `syn_not_limited`/`malformed`/`syn_passed`/`syn_refused` |
//! | `limiter_reset_fallback_drops_total` | counter | |
//! | `limiter_pending_table_full_total` | counter | |
//! | `limiter_reset_after_handshake_failures_total` | counter | |
//! | `limiter_keepalive_sockets_total` | counter | `result` = `set`/`failed` |
//! | `limiter_proxy_active_connections` | gauge | `proxy` |
//! | `limiter_proxy_holding_connections` | gauge | `proxy` |
//! | `limiter_proxy_held_connections_total` | counter | `proxy` |
//! | `limiter_proxy_accepted_connections_total` | counter | `proxy` |
//! | `limiter_proxy_upstream_connect_failures_total` | counter | `proxy` |
//! | `limiter_proxy_upstream_connect_timeouts_total` | counter | `proxy` |
//! | `limiter_proxy_upstream_overflow_total` | counter | `proxy` |
//! | `limiter_proxy_upstream_keepalive_deaths_total` | counter | `proxy` |
//! | `limiter_proxy_bytes_total` | counter (unit bytes) | `proxy`, `direction` = `to_upstream`/`to_downstream` |
//! | `limiter_feature` | gauge (1 on, 0 off: this kernel cannot) | `name` |
//! | `limiter_ready` | gauge (1 once the programs are attached, as `/readyz`) | |
//!
//! The proxy's held gauge is `limiter_proxy_holding_connections`, not
//! `limiter_proxy_held_connections`: in OpenMetrics the counter `..._held_connections_total`
//! belongs to the family `limiter_proxy_held_connections`, and family names must be unique.
use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{encoding::text, registry::Registry};

use crate::observe::{collector::ReportCollector, stats::Report};

/// What the endpoints read: a fresh Report at each scrape, and whether the agent is ready.
pub trait MetricsSource: Send + Sync + 'static {
    fn report(&self) -> Result<Report, String>; // Err = maps not readable
    fn attached(&self) -> bool; // programs attached
}

/// The content type of what [`text::encode`] writes (OpenMetrics 1.0 text, ending in `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes `/metrics`, `/healthz` and `/readyz`; anything else is 404 (axum's fallback).
pub fn router(source: Arc<dyn MetricsSource>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(source)
}

/// Serves [`router`] on `listener` until the task is dropped (the agent aborts it on shutdown).
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn MetricsSource>,
) -> std::io::Result<()> {
    axum::serve(listener, router(source)).await
}

/// The text exposition of `report`, as served on `/metrics`; `ready` is what `/readyz` says
/// (programs attached), exported as `limiter_ready` for alerts.
pub fn render(report: &Report, ready: bool) -> String {
    // The registry only prefixes and frames; the collector owns a copy because prometheus-client
    // wants `'static` collectors. A Report is a few hundred bytes per listener: cheap per scrape.
    let mut registry = Registry::with_prefix("limiter");
    registry.register_collector(Box::new(ReportCollector(report.clone(), ready)));
    let mut out = String::new();
    text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

async fn metrics(State(source): State<Arc<dyn MetricsSource>>) -> Response {
    // Reading the maps is a handful of bpf() syscalls per listener: fast enough to do inline
    // rather than on the blocking pool.
    match source.report() {
        Ok(report) => {
            let body = render(&report, source.attached());
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
        }
        // A failed scrape (Prometheus sets `up` to 0) says more than an empty page would.
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("maps not readable: {reason}\n"),
        )
            .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(source): State<Arc<dyn MetricsSource>>) -> Response {
    if !source.attached() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: programs not attached\n",
        )
            .into_response();
    }
    match source.report() {
        Ok(_) => "ready".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: maps not readable: {reason}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::listener::Action;
    use crate::observe::stats::ProxyReport;
    use crate::observe::stats::{ListenerReport, PacketReport};

    /// Every field a distinct number, so a value read under the wrong name cannot pass.
    fn listener(name: &str, action: Action, base: u64) -> ListenerReport {
        ListenerReport {
            listener: name.into(),
            netns: None,
            pod: None,
            limit: Some(base + 1),
            action,
            per_source_limit: Some(base + 18),
            per_source_action: Some(Action::Reset),
            sources: base + 19,
            sources_at_limit: base + 20,
            active: base + 2,
            pending: base + 3,
            admitted_total: base + 4,
            refused_total: 2 * base + 11,
            refused_drop_total: base + 5,
            refused_reset_total: base + 6,
            refused_per_source_total: base + 21,
            reset_after_handshake_per_source_total: base + 22,
            preexisting_total: base + 23,
            syn_retransmit_total: base + 7,
            handshake_timeout_total: base + 8,
            unreserved_total: base + 9,
            untracked_total: base + 10,
            held_total: base + 12,
            mode: if base.is_multiple_of(200) {
                "flood"
            } else {
                "reserve"
            }
            .into(),
            flood_mode_entered_total: base + 13,
            proven_syn_passed_total: base + 14,
            handshakes_not_completed_total: base + 15,
            reset_after_handshake_total: base + 16,
            dry_run_would_refuse_total: base + 17,
            listening: base.is_multiple_of(200),
        }
    }

    fn sample_report() -> Report {
        Report {
            listeners: vec![
                listener("8000", Action::Drop, 100),
                listener("[fd00:1e:57::1]:443", Action::Reset, 200),
            ],
            packets: PacketReport {
                syn_not_limited_total: 1002,
                malformed_total: 1003,
                syn_passed_total: 1004,
                syn_refused_total: 1005,
                reset_fallback_drop_total: 1006,
                pending_full_total: 1007,
                keepalive_set_total: 1008,
                keepalive_failed_total: 1009,
                reset_after_handshake_failed_total: 1010,
            },
            proxies: vec![ProxyReport {
                proxy: "[::]:8000=198.18.0.3:1025".into(),
                active: 2001,
                held: 2002,
                held_total: 2003,
                accepted_total: 2004,
                upstream_connect_failures_total: 2005,
                upstream_connect_timeouts_total: 2006,
                upstream_overflow_total: 2007,
                upstream_keepalive_deaths_total: 2008,
                bytes_to_upstream_total: 2009,
                bytes_to_downstream_total: 2010,
            }],
            features: vec![
                crate::observe::stats::FeatureReport {
                    name: "preexisting".into(),
                    on: true,
                    why: None,
                    loss: None,
                },
                crate::observe::stats::FeatureReport {
                    name: "socket_destroy".into(),
                    on: false,
                    why: Some("not built in".into()),
                    loss: Some("no resets".into()),
                },
            ],
        }
    }

    /// A sample line's name, labels (sorted) and value. Label values in these tests hold no
    /// `,`, `"` or `}`, so splitting is enough.
    type Sample = (String, BTreeMap<String, String>);

    fn parse_samples(text: &str) -> BTreeMap<Sample, u64> {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels close");
                    let labels = body
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label is k=v");
                            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                            (k.to_owned(), v.expect("quoted value").to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            let previous = samples.insert((name.to_owned(), labels), value.parse().unwrap());
            assert!(previous.is_none(), "duplicate sample {line}");
        }
        samples
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> Sample {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (name.to_owned(), labels)
    }

    fn expected_samples(report: &Report) -> BTreeMap<Sample, u64> {
        let mut want = BTreeMap::new();
        want.insert(key("limiter_ready", &[]), 1);
        for l in &report.listeners {
            let n = l.listener.as_str();
            let mut put = |name: &str, extra: &[(&str, &str)], v: u64| {
                let mut labels = vec![("listener", n)];
                labels.extend_from_slice(extra);
                want.insert(key(name, &labels), v);
            };
            put("limiter_listener_active_connections", &[], l.active);
            put("limiter_listener_pending_handshakes", &[], l.pending);
            if let Some(limit) = l.limit {
                put(
                    "limiter_listener_limit",
                    &[("action", l.action.as_str())],
                    limit,
                );
            }
            if let Some(limit) = l.per_source_limit {
                let action = l.per_source_action.unwrap_or(Action::Drop).as_str();
                put(
                    "limiter_listener_per_source_limit",
                    &[("action", action)],
                    limit,
                );
                put("limiter_listener_sources", &[], l.sources);
                put("limiter_listener_sources_at_limit", &[], l.sources_at_limit);
                put(
                    "limiter_listener_reset_after_handshake_per_source_total",
                    &[],
                    l.reset_after_handshake_per_source_total,
                );
            }
            put(
                "limiter_listener_refused_by_reason_total",
                &[("reason", "listener")],
                l.refused_total - l.refused_per_source_total,
            );
            put(
                "limiter_listener_refused_by_reason_total",
                &[("reason", "per_source")],
                l.refused_per_source_total,
            );
            put(
                "limiter_listener_preexisting_connections_total",
                &[],
                l.preexisting_total,
            );
            put(
                "limiter_listener_admitted_connections_total",
                &[],
                l.admitted_total,
            );
            put(
                "limiter_listener_refused_syns_total",
                &[("action", "drop")],
                l.refused_drop_total,
            );
            put(
                "limiter_listener_refused_syns_total",
                &[("action", "reset")],
                l.refused_reset_total,
            );
            put("limiter_listener_held_connections_total", &[], l.held_total);
            put(
                "limiter_listener_syn_retransmits_total",
                &[],
                l.syn_retransmit_total,
            );
            put(
                "limiter_listener_handshake_timeouts_total",
                &[],
                l.handshake_timeout_total,
            );
            put(
                "limiter_listener_unreserved_connections_total",
                &[],
                l.unreserved_total,
            );
            put(
                "limiter_listener_untracked_connections_total",
                &[],
                l.untracked_total,
            );
            put(
                "limiter_listener_flood_mode",
                &[],
                u64::from(l.mode == "flood"),
            );
            put("limiter_listener_listening", &[], u64::from(l.listening));
            put(
                "limiter_listener_flood_mode_entered_total",
                &[],
                l.flood_mode_entered_total,
            );
            put(
                "limiter_listener_flood_syns_passed_total",
                &[],
                l.proven_syn_passed_total,
            );
            put(
                "limiter_listener_handshakes_not_completed_total",
                &[],
                l.handshakes_not_completed_total,
            );
            put(
                "limiter_listener_reset_after_handshake_total",
                &[],
                l.reset_after_handshake_total,
            );
            put(
                "limiter_listener_dry_run_would_refuse_total",
                &[],
                l.dry_run_would_refuse_total,
            );
        }
        let p = &report.packets;
        for (result, v) in [
            ("syn_not_limited", p.syn_not_limited_total),
            ("malformed", p.malformed_total),
            ("syn_passed", p.syn_passed_total),
            ("syn_refused", p.syn_refused_total),
        ] {
            want.insert(key("limiter_packets_total", &[("result", result)]), v);
        }
        want.insert(
            key("limiter_reset_fallback_drops_total", &[]),
            p.reset_fallback_drop_total,
        );
        want.insert(
            key("limiter_pending_table_full_total", &[]),
            p.pending_full_total,
        );
        want.insert(
            key("limiter_reset_after_handshake_failures_total", &[]),
            p.reset_after_handshake_failed_total,
        );
        want.insert(
            key("limiter_keepalive_sockets_total", &[("result", "set")]),
            p.keepalive_set_total,
        );
        want.insert(
            key("limiter_keepalive_sockets_total", &[("result", "failed")]),
            p.keepalive_failed_total,
        );
        for f in &report.features {
            want.insert(
                key("limiter_feature", &[("name", f.name.as_str())]),
                u64::from(f.on),
            );
        }
        for x in &report.proxies {
            let n = x.proxy.as_str();
            let mut put = |name: &str, extra: &[(&str, &str)], v: u64| {
                let mut labels = vec![("proxy", n)];
                labels.extend_from_slice(extra);
                want.insert(key(name, &labels), v);
            };
            put("limiter_proxy_active_connections", &[], x.active);
            put("limiter_proxy_holding_connections", &[], x.held);
            put("limiter_proxy_held_connections_total", &[], x.held_total);
            put(
                "limiter_proxy_accepted_connections_total",
                &[],
                x.accepted_total,
            );
            put(
                "limiter_proxy_upstream_connect_failures_total",
                &[],
                x.upstream_connect_failures_total,
            );
            put(
                "limiter_proxy_upstream_connect_timeouts_total",
                &[],
                x.upstream_connect_timeouts_total,
            );
            put(
                "limiter_proxy_upstream_overflow_total",
                &[],
                x.upstream_overflow_total,
            );
            put(
                "limiter_proxy_upstream_keepalive_deaths_total",
                &[],
                x.upstream_keepalive_deaths_total,
            );
            put(
                "limiter_proxy_bytes_total",
                &[("direction", "to_upstream")],
                x.bytes_to_upstream_total,
            );
            put(
                "limiter_proxy_bytes_total",
                &[("direction", "to_downstream")],
                x.bytes_to_downstream_total,
            );
        }
        want
    }

    /// The family a sample belongs to, as OpenMetrics names it: counters without `_total`.
    fn family_of(sample: &str) -> &str {
        sample.strip_suffix("_total").unwrap_or(sample)
    }

    const GAUGES: [&str; 12] = [
        "limiter_ready",
        "limiter_feature",
        "limiter_listener_per_source_limit",
        "limiter_listener_sources",
        "limiter_listener_sources_at_limit",
        "limiter_listener_active_connections",
        "limiter_listener_listening",
        "limiter_listener_flood_mode",
        "limiter_listener_pending_handshakes",
        "limiter_listener_limit",
        "limiter_proxy_active_connections",
        "limiter_proxy_holding_connections",
    ];

    #[test]
    fn render_exports_every_number_under_its_name_and_labels() {
        let report = sample_report();
        let text = render(&report, true);
        assert_eq!(parse_samples(&text), expected_samples(&report), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let report = sample_report();
        let text = render(&report, true);
        let mut help = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, doc) = rest.split_once(' ').unwrap();
                assert!(doc.len() > 10, "{line}");
                assert!(
                    help.insert(name.to_owned(), ()).is_none(),
                    "repeated {line}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                // A repeated family name (e.g. a gauge `x` next to a counter `x_total`) is
                // invalid OpenMetrics.
                let previous = types.insert(name.to_owned(), kind.to_owned());
                assert!(previous.is_none(), "repeated {line}");
            }
        }
        let families: BTreeSet<&str> = types.keys().map(String::as_str).collect();
        assert_eq!(
            help.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            families
        );
        for ((sample, _), _) in parse_samples(&text) {
            let family = family_of(&sample);
            let want = if GAUGES.contains(&sample.as_str()) {
                "gauge"
            } else {
                assert!(sample.ends_with("_total"), "counter {sample}");
                "counter"
            };
            assert_eq!(
                types.get(family).map(String::as_str),
                Some(want),
                "{sample}"
            );
        }
        assert!(
            text.contains("# UNIT limiter_proxy_bytes bytes\n"),
            "{text}"
        );
    }

    #[test]
    fn empty_report_still_describes_every_family() {
        let full = render(&sample_report(), true);
        let empty = render(&Report::default(), true);
        let types = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("# TYPE "))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(types(&empty), types(&full));
        // Program-wide counters are always there, at zero.
        let samples = parse_samples(&empty);
        assert_eq!(samples[&key("limiter_pending_table_full_total", &[])], 0);
        assert_eq!(
            samples[&key("limiter_packets_total", &[("result", "syn_not_limited")])],
            0
        );
        assert!(!empty.contains("listener=\""), "{empty}");
    }

    struct Fake {
        attached: AtomicBool,
        readable: AtomicBool,
    }

    impl MetricsSource for Fake {
        fn report(&self) -> Result<Report, String> {
            if self.readable.load(Ordering::SeqCst) {
                Ok(sample_report())
            } else {
                Err("map limits: operation not permitted".into())
            }
        }

        fn attached(&self) -> bool {
            self.attached.load(Ordering::SeqCst)
        }
    }

    /// One HTTP/1.1 request over a raw socket: (status, lower-cased headers, body).
    async fn get(
        addr: std::net::SocketAddr,
        path: &str,
    ) -> (u16, BTreeMap<String, String>, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("header end");
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect::<BTreeMap<_, _>>();
        // Fixed-size bodies only: hyper sends Content-Length for these, never chunks.
        assert_eq!(
            headers["content-length"],
            body.len().to_string(),
            "{response}"
        );
        (status.parse().unwrap(), headers, body.to_owned())
    }

    #[tokio::test]
    async fn endpoints_over_http() {
        let fake = Arc::new(Fake {
            attached: AtomicBool::new(true),
            readable: AtomicBool::new(true),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, fake.clone()));

        let (status, headers, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], CONTENT_TYPE);
        assert_eq!(body, render(&sample_report(), true));

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready"));

        let (status, _, _) = get(addr, "/nope").await;
        assert_eq!(status, 404);

        // Not attached: not ready, but alive.
        fake.attached.store(false, Ordering::SeqCst);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("not attached"), "{body}");
        let (status, _, _) = get(addr, "/healthz").await;
        assert_eq!(status, 200);
        let (status, _, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("\nlimiter_ready 0\n"), "{body}");

        // Attached but the maps cannot be read: not ready, and scrapes fail with the reason.
        fake.attached.store(true, Ordering::SeqCst);
        fake.readable.store(false, Ordering::SeqCst);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("operation not permitted"), "{body}");
        let (status, _, body) = get(addr, "/metrics").await;
        assert_eq!(status, 503);
        assert!(body.contains("operation not permitted"), "{body}");

        server.abort();
    }
}
