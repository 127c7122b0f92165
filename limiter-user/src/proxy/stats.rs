//! The proxy's counters, named as they will be exported (Prometheus conventions: `_total` for
//! counters, plain names for gauges).
use std::sync::atomic::{AtomicU64, Ordering};

use crate::observe::stats::ProxyReport;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections being forwarded now (gauge).
    pub active: Counter,
    /// Over-limit connections being held before their delayed close (gauge).
    pub held: Counter,
    pub held_total: Counter,
    /// Admitted connections (each then connects upstream or fails).
    pub accepted_total: Counter,
    pub upstream_connect_failures_total: Counter,
    pub upstream_connect_timeouts_total: Counter,
    /// Refused because `--max-upstream-connections` were in use.
    pub upstream_overflow_total: Counter,
    /// Upstreams found dead by keepalive (the connection timed out).
    pub upstream_keepalive_deaths_total: Counter,
    pub bytes_to_upstream_total: Counter,
    pub bytes_to_downstream_total: Counter,
}

impl ProxyStats {
    pub fn report(&self, proxy: String) -> ProxyReport {
        ProxyReport {
            proxy,
            active: self.active.get(),
            held: self.held.get(),
            held_total: self.held_total.get(),
            accepted_total: self.accepted_total.get(),
            upstream_connect_failures_total: self.upstream_connect_failures_total.get(),
            upstream_connect_timeouts_total: self.upstream_connect_timeouts_total.get(),
            upstream_overflow_total: self.upstream_overflow_total.get(),
            upstream_keepalive_deaths_total: self.upstream_keepalive_deaths_total.get(),
            bytes_to_upstream_total: self.bytes_to_upstream_total.get(),
            bytes_to_downstream_total: self.bytes_to_downstream_total.get(),
        }
    }
}
