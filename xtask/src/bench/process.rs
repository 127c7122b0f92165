//! A process the bench started and owns (the agent): its stderr lines arrive on a channel, the
//! last ones are kept for error messages, and dropping it stops the process by its PID (SIGTERM,
//! then SIGKILL) if it still runs.
use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

pub struct Process {
    label: String,
    child: Child,
    lines: Receiver<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

const TAIL_LINES: usize = 20;

impl Process {
    /// Starts `command` with stdin closed, stdout discarded and stderr read line by line.
    pub fn spawn(label: &str, command: &mut Command) -> Result<Process> {
        println!("  $ {}", cmd::display(command));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {label}: `{}`", cmd::display(command)))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (sender, lines) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let keep = Arc::clone(&tail);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut tail) = keep.lock() {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                }
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Process {
            label: label.to_string(),
            child,
            lines,
            tail,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines it wrote to stderr.
    pub fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Waits for a stderr line for which `wanted` holds; returns how long it took.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            cmd::check_interrupted().with_context(|| format!("waiting for {what}"))?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {:.1}s waiting for {what} from {}; it wrote:\n{}",
                    timeout.as_secs_f64(),
                    self.label,
                    self.tail()
                );
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) if wanted(&line) => return Ok(start.elapsed()),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} ended ({status:?}) before {what}; it wrote:\n{}",
                        self.label,
                        self.tail()
                    );
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().ok();
        Ok(self.child.wait()?)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        match self.child.try_wait() {
            Ok(Some(_)) => {}
            _ => {
                if let Err(e) = self.stop(Duration::from_secs(5)) {
                    eprintln!(
                        "bench: cleanup: stopping {} (pid {}): {e:#}",
                        self.label,
                        self.pid()
                    );
                }
            }
        }
    }
}
