//! The agent's own CPU time when nothing happens: what a node pays for it just being there, with
//! one listener or 10,000 (part 8), in one namespace or sixteen (part 10). Its periodic work
//! (the handshake sweep and flood watch ten times a second per namespace, the check for limits
//! nothing listens on, the watch for namespaces that went away) runs whether or not a connection
//! comes, so this is its cost at rest on every node of a cluster.
use std::time::Duration;

use anyhow::Result;

use super::{
    agent::Agent,
    report::{Table, spread},
};

/// After `limiter: ready`, for what starting up left to do.
const SETTLE: Duration = Duration::from_secs(1);
/// How long each look lasts.
pub const WINDOW: Duration = Duration::from_secs(3);

/// One agent configuration's looks: fractions of one CPU.
pub struct Idle {
    pub label: String,
    pub cpu: Vec<f64>,
}

impl Idle {
    pub fn new(label: impl Into<String>) -> Idle {
        Idle {
            label: label.into(),
            cpu: Vec::new(),
        }
    }

    /// One look at `agent`, which is doing nothing else.
    pub fn look(&mut self, agent: &Agent) -> Result<()> {
        self.cpu.push(agent.idle_cpu(SETTLE, WINDOW)?);
        Ok(())
    }
}

/// The table of a part's idle agents, each set against the first row.
pub fn table(rows: &[Idle]) -> Table {
    let mut table = Table::new(
        &format!(
            "The agent's CPU time at rest: no connection, no change, {} s after it is ready, for \
             {} s (all its threads, /proc/PID/task/*/schedstat; % of one CPU, median, min–max in \
             brackets)",
            SETTLE.as_secs(),
            WINDOW.as_secs()
        ),
        &["agent", "% of one CPU", "× the first row"],
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
        ]);
    }
    table
}

/// The same figures for `report.json`.
pub fn json(rows: &[Idle]) -> serde_json::Value {
    rows.iter()
        .map(|r| serde_json::json!({"agent": r.label, "cpu_fraction_of_one": r.cpu}))
        .collect()
}
