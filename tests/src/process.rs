//! Child processes: line-by-line stdout/stderr with deadlines, commands with time bounds, and
//! guards that stop what they started even when a test panics.
use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

/// A child shared between its guard and the test bed that tracks it, so whichever is dropped
/// first can stop it, and its pid stays reserved (unreaped) until then.
pub type SharedChild = Arc<Mutex<Child>>;

/// How long a process gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// The lines one pipe of a child produced, read by a thread so the child never blocks on a
/// full pipe.
pub struct Lines {
    /// In a mutex only so that guards holding a `Proc` can be shared with sampling threads.
    rx: Mutex<Receiver<String>>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn start(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let sink = all.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx: Mutex::new(rx),
            all,
        }
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.all.lock().unwrap().clone()
    }

    /// Waits (bounded) until the pipe closes, then returns every line it carried.
    pub fn until_closed(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.lock().unwrap().recv_timeout(left) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout) => break,
            }
        }
        self.all()
    }

    /// The next line matching `pred` (earlier non-matching lines are skipped), or `None` at
    /// the deadline or when the pipe closes.
    pub fn next_matching(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.lock().unwrap().recv_timeout(left) {
                Ok(line) if pred(&line) => return Some(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// A running child with its stdin held open (closing it tells netns-tool to exit) and its
/// output read line by line.
pub struct Proc {
    pub name: String,
    child: SharedChild,
    pid: u32,
    stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    /// Spawns `cmd` with all three pipes.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("{name}: cannot start {cmd:?}: {err}"));
        let stdin = child.stdin.take();
        let stdout = Lines::start(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::start(child.stderr.take().expect("piped stderr"));
        Proc {
            name: name.to_owned(),
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
            stdin,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn shared(&self) -> SharedChild {
        self.child.clone()
    }

    /// What the process printed so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "{} (pid {}):\n  stdout: {:?}\n  stderr: {:?}",
            self.name,
            self.pid,
            self.stdout.all(),
            self.stderr.all()
        )
    }

    /// Waits for a stdout line matching `pred`; panics with the transcript if none comes.
    pub fn expect_line(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        match self.stdout.next_matching(timeout, pred) {
            Some(line) => line,
            None => panic!(
                "{}: no {what} within {timeout:?}; exited: {:?}\n{}",
                self.name,
                self.try_wait(),
                self.transcript()
            ),
        }
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        if let Err(err) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!(
                "{}: cannot send {line:?}: {err}\n{}",
                self.name,
                self.transcript()
            );
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Waits for the process to exit by itself; panics at the deadline.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        match wait_deadline(&self.child, timeout) {
            Some(status) => status,
            None => panic!(
                "{}: still running after {timeout:?}\n{}",
                self.name,
                self.transcript()
            ),
        }
    }

    /// Sends `signal` to the process (by its pid; it is not reaped yet, so the pid is still
    /// ours).
    pub fn signal(&self, signal: i32) {
        if self.try_wait().is_none() {
            // SAFETY: kill(2) on a pid we own (our unreaped child).
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        stop(&self.child);
    }
}

fn wait_deadline(child: &SharedChild, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.lock().unwrap().try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a child: SIGTERM (so the agent can detach what it attached), then SIGKILL after a
/// grace period; always reaps it.
pub fn stop(child: &SharedChild) {
    {
        let mut guard = child.lock().unwrap();
        if let Ok(Some(_)) = guard.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(guard.id() as i32, libc::SIGTERM) };
    }
    if wait_deadline(child, TERM_GRACE).is_none() {
        let mut guard = child.lock().unwrap();
        let _ = guard.kill();
        let _ = guard.wait();
    }
}

/// Runs a command to completion within `timeout` (killed after it), capturing its output.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {cmd:?}: {err}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let shared = Arc::new(Mutex::new(child));
    let status = match wait_deadline(&shared, timeout) {
        Some(status) => status,
        None => {
            let mut child = shared.lock().unwrap();
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs a command that must succeed (within 30 s) and returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let output = run_bounded(cmd, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
