//! The real agent (`target/release/limiter`), run the way a user runs it for a namespace:
//! `nsenter --net=/run/netns/NS limiter run ...`, with its own control socket in the bench's
//! scratch directory and no metrics listener. Dropping it stops it (SIGTERM; the agent detaches
//! everything it attached and removes its socket).
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Ctx, netns::TestBed, process::Process, sys};
use crate::cmd::{self, command};

static AGENTS: AtomicU32 = AtomicU32::new(0);

pub struct Agent {
    process: Process,
    binary: PathBuf,
    socket: PathBuf,
    /// From spawning the process to its `limiter: ready` line.
    pub ready_after: Duration,
}

pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Agent {
    /// [`Agent::start`] in the test bed's server namespace, with the bench's agent binary and
    /// scratch directory.
    pub fn in_server_ns(ctx: &Ctx, bed: &TestBed, args: &[String]) -> Result<Agent> {
        Agent::start(&ctx.agent, &ctx.scratch.dir, &bed.server_ns, args)
    }

    /// [`Agent::in_server_ns`] admitting on the server's veth: `--iface VETH ARGS`.
    pub fn on_server_veth(ctx: &Ctx, bed: &TestBed, args: &[String]) -> Result<Agent> {
        let mut all = vec!["--iface".to_string(), bed.server_veth.clone()];
        all.extend_from_slice(args);
        Agent::in_server_ns(ctx, bed, &all)
    }

    /// Starts `limiter run` in namespace `ns` with `args` (plus the bench's control socket,
    /// `--metrics-addr off`), and waits for `limiter: ready`.
    pub fn start(binary: &Path, scratch: &Path, ns: &str, args: &[String]) -> Result<Agent> {
        let n = AGENTS.fetch_add(1, Ordering::SeqCst);
        let socket = scratch.join(format!("agent-{n}.sock"));
        let mut command = command("nsenter");
        command
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(binary)
            .arg("run")
            .args(args)
            .arg("--control-socket")
            .arg(&socket)
            .args(["--metrics-addr", "off"]);
        let mut process = Process::spawn("the agent", &mut command)?;
        let ready_after = process.wait_for_line("`limiter: ready`", READY_TIMEOUT, |l| {
            l.trim() == "limiter: ready"
        })?;
        Ok(Agent {
            process,
            binary: binary.to_path_buf(),
            socket,
            ready_after,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `limiter stats --json` through the control socket.
    pub fn stats(&self) -> Result<Value> {
        let text = cmd::output_quiet(
            command(&self.binary)
                .args(["stats", "--json", "--control-socket"])
                .arg(&self.socket),
        )?;
        serde_json::from_str(&text).context("parsing `limiter stats --json`")
    }

    /// One listener's entry in `limiter stats --json`.
    pub fn listener(&self, name: &str) -> Result<Value> {
        let stats = self.stats()?;
        stats["listeners"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["listener"] == name))
            .cloned()
            .with_context(|| format!("no listener {name} in limiter stats"))
    }

    pub fn counter(&self, listener: &str, field: &str) -> Result<u64> {
        let l = self.listener(listener)?;
        l[field]
            .as_u64()
            .with_context(|| format!("`{field}` is not a number in {l}"))
    }

    /// Waits (up to 5 s) until `field` of `listener` reads `value`.
    pub fn wait_counter(&self, listener: &str, field: &str, value: u64) -> Result<()> {
        cmd::poll_until(
            &format!("limiter's `{field}` of {listener} to reach {value}"),
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let now = self.counter(listener, field)?;
                Ok(if now == value {
                    cmd::Check::Done(())
                } else {
                    cmd::Check::NotYet(format!("{field} {now}"))
                })
            },
        )
    }

    /// The agent's CPU time (all its threads) over `window` with nothing else asked of it, as a
    /// fraction of one CPU, after `settle` for what starting up left to do.
    pub fn idle_cpu(&self, settle: Duration, window: Duration) -> Result<f64> {
        std::thread::sleep(settle);
        let before = sys::process_tasks_cpu_ns(self.pid())?;
        std::thread::sleep(window);
        let after = sys::process_tasks_cpu_ns(self.pid())?;
        Ok((after - before) as f64 / window.as_nanos() as f64)
    }

    /// SIGTERM; the agent must exit 0 (it detached everything).
    pub fn stop(mut self) -> Result<()> {
        let status = self.process.stop(Duration::from_secs(10))?;
        if !status.success() {
            bail!("the agent exited with {status}:\n{}", self.process.tail());
        }
        Ok(())
    }
}
