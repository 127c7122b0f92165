//! Hostile traffic for the flood tests: a forged-source SYN flood from the client namespace
//! (`netns-tool syn-flood`), and a real client probing the listener while it runs.
use std::time::Duration;

use serde::Deserialize;

use crate::{Side, TestBed, client::tool, process::Proc};

/// Where forged SYNs come from. The server namespace routes it back to the client namespace,
/// where nothing answers: the SYN-ACKs go out and die, as they do for a real spoofed flood.
pub const FORGED_SOURCES: &str = "198.19.0.0/16";

/// A flood running in the background; it stops by itself after its time.
pub struct Flood {
    proc: Proc,
    seconds: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct FloodResult {
    pub sent: u64,
    pub elapsed_ms: u64,
}

impl Flood {
    /// `rate` forged SYNs per second at `dst:port` (IPv4) for `seconds`.
    pub fn start(bed: &TestBed, dst: &str, port: u16, rate: u64, seconds: u64) -> Flood {
        bed.route_forged_sources();
        let proc = bed.spawn(
            &format!("syn-flood {dst}:{port} {rate}/s"),
            tool(
                bed,
                Side::Client,
                &[
                    "syn-flood",
                    dst,
                    &port.to_string(),
                    &rate.to_string(),
                    &seconds.to_string(),
                ],
            ),
        );
        Flood { proc, seconds }
    }

    /// Waits for the flood to end; what it sent.
    pub fn finish(self) -> FloodResult {
        let limit = crate::poll::scaled(Duration::from_secs(self.seconds + 30));
        let line = self
            .proc
            .expect_line("the flood's result", limit, |l| l.starts_with('{'));
        serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("bad syn-flood output {line:?}: {err}"))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProbeResult {
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl ProbeResult {
    pub fn success_rate(&self) -> f64 {
        self.ok as f64 / (self.ok + self.failed).max(1) as f64
    }
}

/// A real client: `count` connects to `addr`, one every `interval`, each with `timeout`, each
/// closed at once.
pub fn probe(
    bed: &TestBed,
    addr: &str,
    interval: Duration,
    count: u64,
    timeout: Duration,
) -> ProbeResult {
    let proc = bed.spawn(
        &format!("probe {addr}"),
        tool(
            bed,
            Side::Client,
            &[
                "probe",
                addr,
                &interval.as_millis().to_string(),
                &count.to_string(),
                &timeout.as_millis().to_string(),
            ],
        ),
    );
    let limit = crate::poll::scaled((interval + timeout) * count as u32 + Duration::from_secs(30));
    let line = proc.expect_line("the probe's result", limit, |l| l.starts_with('{'));
    serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad probe output {line:?}: {err}"))
}
