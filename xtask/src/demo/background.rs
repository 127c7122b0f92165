//! A process the demo started and owns: its output lines arrive on a channel (read by a thread),
//! and dropping it stops the process (by its PID, SIGTERM then SIGKILL) if it is still running.
use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, Check};

/// Which output stream to read lines from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Stdout,
    Stderr,
}

pub struct Background {
    label: String,
    child: Child,
    lines: Receiver<String>,
}

impl Background {
    /// Echo and spawn `command`, reading lines from the `watch` stream (the other one is
    /// inherited). With `echo_prefix`, each line is also printed with that prefix as it arrives.
    /// With `keep_stdin`, stdin is a pipe the process sees closed on [`Self::close_stdin`].
    pub fn spawn(
        label: &str,
        command: &mut Command,
        watch: Watch,
        echo_prefix: Option<&str>,
        keep_stdin: bool,
    ) -> Result<Self> {
        cmd::echo(command);
        command.stdin(if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        match watch {
            Watch::Stdout => command.stdout(Stdio::piped()),
            Watch::Stderr => command.stderr(Stdio::piped()),
        };
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {label}: `{}`", cmd::display(command)))?;
        let stream: Box<dyn Read + Send> = match watch {
            Watch::Stdout => Box::new(child.stdout.take().expect("stdout is piped")),
            Watch::Stderr => Box::new(child.stderr.take().expect("stderr is piped")),
        };
        let (sender, lines) = mpsc::channel();
        let prefix = echo_prefix.map(str::to_string);
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(prefix) = &prefix {
                    println!("{prefix}{line}");
                }
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            label: label.to_string(),
            child,
            lines,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line for which `wanted` holds (earlier lines are skipped), within `timeout`.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            cmd::check_interrupted().with_context(|| format!("waiting for {what}"))?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {:.1}s waiting for {what} from {}",
                    timeout.as_secs_f64(),
                    self.label
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait(Duration::from_secs(5))?;
                    bail!("{} ended ({status}) before {what}", self.label);
                }
            }
        }
    }

    /// Let the process see end-of-file on its stdin.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Has it exited? (Reaps it if so.)
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking whether {} is running", self.label))
    }

    /// Wait for it to exit by itself, within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} (pid {}) to exit", self.label, self.pid());
        cmd::poll_until(&what, timeout, Duration::from_millis(20), || {
            Ok(match self.exited()? {
                Some(status) => Check::Done(status),
                None => Check::NotYet("still running".into()),
            })
        })
    }

    /// Send `signal` to the process (only while it has not been reaped, so the PID is still ours).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.exited()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending signal {signal} to {}", self.label));
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.label))?;
        self.child
            .wait()
            .with_context(|| format!("waiting for {}", self.label))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        match self.exited() {
            Ok(Some(_)) => {}
            Ok(None) => {
                println!("cleanup: stopping {} (pid {})", self.label, self.pid());
                if let Err(e) = self.stop(Duration::from_secs(3)) {
                    eprintln!("cleanup: warning: {e:#}");
                }
            }
            Err(e) => eprintln!("cleanup: warning: {e:#}"),
        }
    }
}
