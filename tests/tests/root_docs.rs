//! docs/guide.md and README.md, run as written, so that neither can drift from what limiter
//! does.
//!
//! The documents' rules, which this test enforces:
//! - Every ```` ```sh ```` block is a step. Its first line says where it runs: `# lab setup` /
//!   `# lab cleanup` (the host), `# on the node` (the lab's node namespace, entered with
//!   `nsenter --net` so that the host's cgroup v2 and bpffs mounts stay visible), `# on a client`
//!   or `# on the backend` (`ip netns exec`). A block with no such line fails the test: every
//!   command in the documents is run. The one exception: README's quick start, marked `# what
//!   CI runs`, whose commands (`cargo xtask demo`, `cargo xtask test`) must be in `.ci/run`
//!   instead (this test is part of the second).
//! - `leave it running` on that line: the step stays in the foreground (a terminal of its own);
//!   here it runs in the background, in a process group of its own, and the next step starts
//!   once it is ready: once its expected output (below) has appeared, or, with none, once a new
//!   TCP socket exists in its namespace (a server listening). At the next heading (the guide says
//!   "stop ... with Ctrl-C" there) each group gets SIGINT, as a terminal's Ctrl-C would send,
//!   and the node must be left with no XDP program attached.
//! - A ```` ```text ```` block right after a step (blank lines between at most) is its
//!   expected output: each of its lines must appear in the step's output (stdout and stderr),
//!   in order, other lines allowed in between; runs of spaces compare equal and `...` stands
//!   for any text. Every step must exit 0: the lab blocks with `set -e` (any failing command
//!   fails them), the others as typed in a terminal (the last command's status).
//!
//! What the test changes and why: the lab's names (`lim-node`, `lim-client`, `lim-backend`)
//! get this run's unique suffix, and every step runs with
//! `LIMITER_CONTROL_SOCKET` set to a socket of its own (the agent's and the CLI's default is
//! /run/limiter/limiter.sock) and the built `limiter` first on `PATH`. Addresses and commands
//! are as written. Needs root.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use limiter_tests::{
    agent::limiter_bin,
    names,
    process::{Proc, run_bounded},
    require_root,
};

const GUIDE_PATH: &str = "docs/guide.md";
const GUIDE: &str = include_str!("../../docs/guide.md");
const README_PATH: &str = "README.md";
const README: &str = include_str!("../../README.md");
const CI_RUN: &str = include_str!("../../.ci/run");

/// How long one step may run (the longest, the 10-client loops, take about 4 s).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `leave it running` step may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped step's processes may take to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    LabSetup,
    LabCleanup,
    Node,
    Client,
    Backend,
    /// README's quick start: run by `.ci/run`, not here.
    Ci,
}

impl Place {
    fn from_comment(line: &str) -> Option<Place> {
        let text = line.strip_prefix('#')?.trim();
        [
            ("lab setup", Place::LabSetup),
            ("lab cleanup", Place::LabCleanup),
            ("on the node", Place::Node),
            ("on a client", Place::Client),
            ("on the backend", Place::Backend),
            ("what CI runs", Place::Ci),
        ]
        .into_iter()
        .find(|(prefix, _)| text.starts_with(prefix))
        .map(|(_, place)| place)
    }
}

#[derive(Debug)]
struct Step {
    /// 1-based line of the opening fence, for messages.
    line: usize,
    place: Place,
    background: bool,
    script: String,
    expected: Vec<String>,
}

#[derive(Debug)]
enum Item {
    Heading(String),
    Step(Step),
}

/// The guide as headings and steps, in order; an error names the first block that breaks the
/// rules above.
fn parse(path: &str, doc: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let lines: Vec<&str> = doc.lines().collect();
    let mut i = 0;
    // Index in `items` of the last step while only blank lines followed it.
    let mut last_step: Option<usize> = None;
    while i < lines.len() {
        let line = lines[i];
        if let Some(info) = line.strip_prefix("```") {
            let start = i + 1;
            let end = (start..lines.len())
                .find(|&j| lines[j].trim_end() == "```")
                .ok_or_else(|| format!("{path}:{start}: code block never closed"))?;
            let body = &lines[start..end];
            match info.trim() {
                "sh" => {
                    let first = body.first().copied().unwrap_or_default();
                    let place = Place::from_comment(first).ok_or_else(|| {
                        format!(
                            "{path}:{start}: a sh block must start with where it runs \
                             (`# lab setup`, `# lab cleanup`, `# on the node`, `# on a client`, \
                             `# on the backend`), found {first:?}"
                        )
                    })?;
                    if body.len() < 2 {
                        return Err(format!("{path}:{start}: a sh block with no command"));
                    }
                    items.push(Item::Step(Step {
                        line: start,
                        place,
                        background: first.contains("leave it running"),
                        script: body.join("\n"),
                        expected: Vec::new(),
                    }));
                    last_step = Some(items.len() - 1);
                }
                "text" => {
                    let Some(Item::Step(step)) = last_step.and_then(|k| items.get_mut(k)) else {
                        return Err(format!(
                            "{path}:{start}: a text block must follow a sh block (it is \
                             that command's output)"
                        ));
                    };
                    step.expected = body.iter().map(|l| l.to_string()).collect();
                    last_step = None;
                }
                _ => last_step = None,
            }
            i = end + 1;
            continue;
        }
        if let Some(heading) = line.strip_prefix('#').filter(|_| line.starts_with("##")) {
            items.push(Item::Heading(
                heading.trim_start_matches('#').trim().to_string(),
            ));
            last_step = None;
        } else if !line.trim().is_empty() {
            last_step = None;
        }
        i += 1;
    }
    Ok(items)
}

/// Runs of whitespace as one space, no leading or trailing space.
fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `pattern` with `...` standing for any text (possibly none).
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Every expected line (a line that is only `...` is decoration) matches an output line, in
/// order. `Err` names the first one that does not.
fn matches_in_order(expected: &[String], output: &[String]) -> Result<(), String> {
    let output: Vec<String> = output.iter().map(|l| normalize(l)).collect();
    let mut from = 0;
    for want in expected.iter().map(|l| normalize(l)) {
        if want.is_empty() || want == "..." {
            continue;
        }
        match output[from..].iter().position(|got| glob(&want, got)) {
            Some(at) => from += at + 1,
            None => return Err(format!("no line matching {want:?} (in order)")),
        }
    }
    Ok(())
}

/// A `leave it running` step: its process group, and what it printed.
struct Running {
    step_line: usize,
    proc: Proc,
}

impl Running {
    fn pgid(&self) -> i32 {
        self.proc.pid() as i32
    }
}

/// Processes of process group `pgid` that have not exited (zombies do not count: their
/// reaping is not ours).
fn group_members(pgid: i32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // `PID (COMM) STATE PPID PGRP ...`; COMM may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
        .count()
}

/// Signals a whole process group.
fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) on a process group this test created (the group of a child it spawned
    // with its own group); a stale id only yields ESRCH.
    unsafe { libc::kill(-pgid, signal) };
}

/// The lab of one run: unique names, the steps still running, and clean-up on drop (also
/// when the test panics).
struct Lab {
    node: String,
    client: String,
    backend: String,
    socket: PathBuf,
    path_env: String,
    running: Vec<Running>,
    /// The document being run, for messages.
    doc: &'static str,
}

impl Lab {
    fn new(doc: &'static str) -> Lab {
        let id = names::next_id();
        let bin_dir = limiter_bin()
            .parent()
            .expect("the agent binary has a directory")
            .to_path_buf();
        let path_env = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Lab {
            node: names::unique("node", id),
            client: names::unique("client", id),
            backend: names::unique("backend", id),
            socket: PathBuf::from(format!("/tmp/{}.sock", names::unique("guide", id))),
            path_env,
            running: Vec::new(),
            doc,
        }
    }

    /// The guide's lab names replaced by this run's.
    fn substitute(&self, script: &str) -> String {
        script
            .replace("lim-node", &self.node)
            .replace("lim-client", &self.client)
            .replace("lim-backend", &self.backend)
    }

    fn netns(&self, place: Place) -> Option<&str> {
        match place {
            Place::Node => Some(&self.node),
            Place::Client => Some(&self.client),
            Place::Backend => Some(&self.backend),
            Place::LabSetup | Place::LabCleanup | Place::Ci => None,
        }
    }

    /// `sh` running the step's script where the guide says, stderr merged into stdout.
    fn command(&self, step: &Step) -> Command {
        // The lab blocks stop at their first failure; the others run as typed in a terminal,
        // where a failing command in the middle does not end the shell.
        let errexit = match step.place {
            Place::LabSetup | Place::LabCleanup | Place::Ci => "set -e\n",
            Place::Node | Place::Client | Place::Backend => "",
        };
        let script = format!("exec 2>&1\n{errexit}{}", self.substitute(&step.script));
        let mut cmd = match step.place {
            Place::LabSetup | Place::LabCleanup | Place::Ci => Command::new("sh"),
            Place::Node => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{}", self.node)).arg("sh");
                cmd
            }
            Place::Client | Place::Backend => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", self.netns(step.place).unwrap(), "sh"]);
                cmd
            }
        };
        cmd.arg("-c")
            .arg(script)
            .current_dir(workspace_root())
            .env("PATH", &self.path_env)
            .env("LIMITER_CONTROL_SOCKET", &self.socket);
        cmd
    }

    /// TCP sockets in any state in a namespace of the lab.
    fn tcp_sockets(&self, netns: &str) -> usize {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "ss", "-Htan"]);
        let out = run_bounded(cmd, Duration::from_secs(15));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// What the steps still running printed, for failure messages.
    fn transcripts(&self) -> String {
        self.running
            .iter()
            .map(|r| format!("step at line {}: {}", r.step_line, r.proc.transcript()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn run(&mut self, step: &Step) {
        let doc = self.doc;
        if step.background {
            self.start(step);
            return;
        }
        let out = run_bounded(self.command(step), STEP_TIMEOUT);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let context = || {
            format!(
                "{doc}:{}:\n{}\n--- printed ({}):\n{text}--- still running:\n{}",
                step.line,
                step.script,
                out.status,
                self.transcripts()
            )
        };
        assert!(out.status.success(), "the step failed: {}", context());
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if let Err(why) = matches_in_order(&step.expected, &lines) {
            panic!("the step's output is not the guide's: {why}\n{}", context());
        }
    }

    fn start(&mut self, step: &Step) {
        let doc = self.doc;
        let netns = self.netns(step.place).map(str::to_string);
        let sockets_before = netns.as_deref().map(|ns| self.tcp_sockets(ns));
        let mut cmd = self.command(step);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let proc = Proc::spawn(&format!("{}:{}", self.doc, step.line), cmd);
        self.running.push(Running {
            step_line: step.line,
            proc,
        });
        let started = Instant::now();
        loop {
            let running = self.running.last().unwrap();
            let seen = if step.expected.is_empty() {
                match (netns.as_deref(), sockets_before) {
                    (Some(ns), Some(before)) => {
                        let now = self.tcp_sockets(ns);
                        (now > before)
                            .then_some(())
                            .ok_or(format!("{now} TCP sockets in {ns}, {before} before"))
                    }
                    _ => Ok(()),
                }
            } else {
                matches_in_order(&step.expected, &running.proc.stdout.all())
            };
            match seen {
                Ok(()) => return,
                Err(why) => {
                    let exited = running.proc.try_wait();
                    if exited.is_some() || started.elapsed() >= READY_TIMEOUT {
                        panic!(
                            "{doc}:{}: not ready after {:?} (exited: {exited:?}): {why}\n{}\n--- running:\n{}",
                            step.line,
                            started.elapsed(),
                            step.script,
                            self.transcripts()
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C for every step still running, newest first; each must be gone within
    /// [`STOP_TIMEOUT`], and the node left with no XDP program.
    fn stop_all(&mut self, at: &str) {
        let doc = self.doc;
        while let Some(running) = self.running.pop() {
            let pgid = running.pgid();
            signal_group(pgid, libc::SIGINT);
            let started = Instant::now();
            loop {
                if running.proc.try_wait().is_some() && group_members(pgid) == 0 {
                    break;
                }
                if started.elapsed() >= STOP_TIMEOUT {
                    signal_group(pgid, libc::SIGKILL);
                    panic!(
                        "{at}: the step at {doc}:{} still ran {STOP_TIMEOUT:?} after Ctrl-C (SIGINT)\n{}",
                        running.step_line,
                        running.proc.transcript()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.node, "-o", "link", "show"]);
        let out = run_bounded(cmd, Duration::from_secs(15));
        let links = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            assert!(
                !links.contains("xdp"),
                "{at}: XDP still attached on the node after Ctrl-C:\n{links}"
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for running in self.running.drain(..) {
            signal_group(running.pgid(), libc::SIGKILL);
        }
        for ns in [&self.node, &self.client, &self.backend] {
            if Path::new("/run/netns").join(ns).exists() {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "del", ns]);
                let out = run_bounded(cmd, Duration::from_secs(30));
                if !out.status.success() {
                    eprintln!(
                        "cleanup: ip netns del {ns}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
}

/// Runs every step of a document in a lab of its own.
fn run_document(path: &'static str, doc: &str) {
    require_root();
    let items = parse(path, doc).unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab::new(path);
    let mut heading = String::from("(start)");
    for item in &items {
        match item {
            Item::Heading(next) => {
                lab.stop_all(&format!("end of section {heading:?}"));
                heading = next.clone();
            }
            Item::Step(step) if step.place == Place::Ci => {}
            Item::Step(step) => lab.run(step),
        }
    }
    lab.stop_all(&format!("end of {path}"));
}

#[test]
fn root_every_command_in_the_guide_does_what_the_guide_says() {
    run_document(GUIDE_PATH, GUIDE);
}

#[test]
fn root_every_command_in_the_readme_does_what_the_readme_says() {
    run_document(README_PATH, README);
}

/// README's quick start is what CI runs: each of its commands is in `.ci/run`, and it is the
/// only block not run by this test.
#[test]
fn readme_quick_start_is_what_ci_runs() {
    let items = parse(README_PATH, README).unwrap_or_else(|e| panic!("{e}"));
    let ci: Vec<&Step> = items
        .iter()
        .filter_map(|i| match i {
            Item::Step(s) if s.place == Place::Ci => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(ci.len(), 1, "one quick start block: {ci:?}");
    for command in ci[0].script.lines().skip(1) {
        let command = command.split('#').next().unwrap_or_default().trim();
        assert!(
            command.is_empty() || CI_RUN.lines().any(|l| l.contains(command)),
            "README's quick start runs `{command}`, which .ci/run does not"
        );
    }
    let steps = items.iter().filter(|i| matches!(i, Item::Step(_))).count();
    assert!(
        steps > 5,
        "README has {steps} steps: its examples are missing"
    );
}

#[test]
fn guide_blocks_follow_the_rules() {
    let items = parse(GUIDE_PATH, GUIDE).unwrap_or_else(|e| panic!("{e}"));
    let steps: Vec<&Step> = items
        .iter()
        .filter_map(|i| match i {
            Item::Step(s) => Some(s),
            Item::Heading(_) => None,
        })
        .collect();
    // The lab is made first and removed last; each seed's resource is walked through.
    assert_eq!(steps.first().map(|s| s.place), Some(Place::LabSetup));
    assert_eq!(steps.last().map(|s| s.place), Some(Place::LabCleanup));
    for example in [
        "examples/gloo-gateway-connection-limit.yaml",
        "examples/envoy-gateway-connection-limit.yaml",
        "examples/gloo-mesh-tcp-connection-policy.yaml",
    ] {
        assert!(
            steps.iter().any(|s| s
                .script
                .contains(&format!("limiter run --config {example}"))),
            "the guide never runs `limiter run --config {example}`"
        );
    }
    // A step that stays running must say when it is ready: a printed line, or a server socket.
    for step in &steps {
        if step.background && step.expected.is_empty() {
            assert!(
                step.script.contains("echo_server.py"),
                "{GUIDE_PATH}:{}: a `leave it running` step needs its expected output",
                step.line
            );
        }
    }
}

#[test]
fn parse_rejects_blocks_that_do_not_say_where_they_run() {
    let err = parse("t.md", "# t\n\n```sh\nlimiter stats\n```\n").unwrap_err();
    assert!(err.contains(":3:"), "{err}");
    let err = parse("t.md", "```text\nhello\n```\n").unwrap_err();
    assert!(err.contains("must follow a sh block"), "{err}");
    let items = parse(
        "t.md",
        "## a\n```sh\n# on a client, leave it running\ncurl x\n```\n\n```text\nhello\n```\nprose\n```text\nnot output\n```\n",
    );
    assert!(
        items.is_err(),
        "a text block after prose was taken as output"
    );
    let items = parse(
        "t.md",
        "## a\n```sh\n# on the node\nlimiter stats\n```\n\n```text\nX\n```\n",
    )
    .unwrap();
    let Item::Step(step) = &items[1] else {
        panic!("{items:?}")
    };
    assert_eq!(
        (step.place, step.background, step.expected.as_slice()),
        (Place::Node, false, &["X".to_string()][..])
    );
}

#[test]
fn expected_output_matching() {
    assert!(glob("closed after 2... s", "closed after 2.002590 s"));
    assert!(!glob("closed after 2... s", "closed after 3.0 s"));
    assert!(glob(
        "... 198.18.0.1:... 198.18.0.5:9080 timer:(keepalive,11min...,0)",
        "0 0 198.18.0.1:43434 198.18.0.5:9080 timer:(keepalive,11min39sec,0)"
    ));
    assert!(glob("a...b...c", "abc"));
    assert!(!glob("ab...ba", "aba"));
    let output = ["x", "LISTENER  LIMIT", "8000     5  drop", "y"].map(String::from);
    assert!(
        matches_in_order(
            &["...".into(), "LISTENER LIMIT".into(), "8000 5 ...".into()],
            &output
        )
        .is_ok()
    );
    assert!(matches_in_order(&["8000 5 ...".into(), "LISTENER LIMIT".into()], &output).is_err());
}
