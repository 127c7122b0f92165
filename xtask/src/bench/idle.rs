//! What the agent costs when nothing happens, on every node of a cluster whether or not a
//! connection comes, with one listener or 10,000 (part 8), in one namespace or sixteen (part
//! 10): its CPU time (the handshake sweep and flood watch ten times a second per namespace, the
//! check for limits nothing listens on, the watch for namespaces that went away) and the kernel
//! memory of its maps (spent at load, charged to its cgroup).
use std::time::Duration;

use anyhow::Result;

use super::{
    agent::Agent,
    report::{Table, spread},
    scale,
};

/// After `limiter: ready`, for what starting up left to do.
const SETTLE: Duration = Duration::from_secs(1);
/// How long each look lasts.
pub const WINDOW: Duration = Duration::from_secs(3);

/// One agent configuration's looks.
pub struct Idle {
    pub label: String,
    /// Fractions of one CPU.
    pub cpu: Vec<f64>,
    /// Its maps' `bytes_memlock`, all copies.
    pub map_bytes: Vec<u64>,
}

impl Idle {
    pub fn new(label: impl Into<String>) -> Idle {
        Idle {
            label: label.into(),
            cpu: Vec::new(),
            map_bytes: Vec::new(),
        }
    }

    /// One look at `agent`, which is doing nothing else.
    pub fn look(&mut self, agent: &Agent) -> Result<()> {
        self.cpu.push(agent.idle_cpu(SETTLE, WINDOW)?);
        self.map_bytes
            .push(scale::total(&scale::agent_maps(agent.pid())?));
        Ok(())
    }

    /// The maps' memory, MiB (the same in every look: it is spent at load).
    pub fn megabytes(&self) -> f64 {
        self.map_bytes.iter().copied().max().unwrap_or(0) as f64 / (1 << 20) as f64
    }
}

/// The table of a part's idle agents, each set against the first row.
pub fn table(rows: &[Idle]) -> Table {
    let mut table = Table::new(
        &format!(
            "The agent at rest: no connection, no change, {} s after it is ready, its CPU time \
             for {} s (all its threads, /proc/PID/task/*/schedstat; % of one CPU, median, min–max \
             in brackets) and the kernel memory of its maps (every copy: `bpftool map show`'s \
             bytes_memlock of the maps among its open files)",
            SETTLE.as_secs(),
            WINDOW.as_secs()
        ),
        &[
            "agent",
            "% of one CPU",
            "× the first row",
            "kernel memory of its maps (MiB, bytes_memlock)",
        ],
    );
    let first = rows.first().map_or(f64::NAN, |r| spread(&r.cpu).1);
    for row in rows {
        let (lo, med, hi) = spread(&row.cpu);
        table.row(vec![
            row.label.clone(),
            format!(
                "**{:.2}** ({:.2}–{:.2})",
                med * 100.0,
                lo * 100.0,
                hi * 100.0
            ),
            format!("{:.2}", med / first),
            format!("{:.1}", row.megabytes()),
        ]);
    }
    table
}

/// The same figures for `report.json`.
pub fn json(rows: &[Idle]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            serde_json::json!({"agent": r.label, "cpu_fraction_of_one": r.cpu, "map_bytes_memlock": r.map_bytes})
        })
        .collect()
}
