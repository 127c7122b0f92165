//! [`Agent`]: the real `limiter` binary, run the way a user would, in the bed's server
//! namespace, and driven through its documented CLI (`docs/interface.md`).
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    names,
    netns::TestBed,
    poll::{eventually, scaled},
    process::{Proc, run_bounded, stop},
};

/// How long the agent may take to load, attach and print `limiter: ready` (2 slow cores, other
/// builds running).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `limiter stats/set/unset` call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent may take to exit after SIGINT/SIGTERM, or after bad input.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// `<target dir>/debug`, found from the running test binary (`.../debug/deps/<test>-<hash>`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a directory");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// The agent binary: `$LIMITER_BIN`, else `<target dir>/debug/limiter`. Cargo does not build
/// another package's binaries for these tests; `cargo build -p limiter-user` does.
pub fn limiter_bin() -> PathBuf {
    let path = std::env::var_os("LIMITER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_profile_dir().join("limiter"));
    assert!(
        path.is_file(),
        "agent binary {} not found: run `cargo build -p limiter-user` first or set LIMITER_BIN",
        path.display()
    );
    path
}

fn zero_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

/// One listener's row of `limiter stats --json`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ListenerStats {
    pub listener: String,
    /// The network namespace's path (`--limit-in`); `None`: the agent's own.
    #[serde(default)]
    pub netns: Option<String>,
    /// The pod (`NAMESPACE/NAME`) whose namespace it is, in Kubernetes mode.
    #[serde(default)]
    pub pod: Option<String>,
    /// The listener's own limit; 0 when it has only a per-source limit (`null` in the JSON).
    #[serde(deserialize_with = "zero_if_null")]
    pub limit: u64,
    pub action: String,
    #[serde(default)]
    pub per_source_limit: Option<u64>,
    #[serde(default)]
    pub per_source_action: Option<String>,
    /// Client addresses holding connections now, and those at the per-source limit.
    #[serde(default)]
    pub sources: u64,
    #[serde(default)]
    pub sources_at_limit: u64,
    #[serde(default)]
    pub refused_per_source_total: u64,
    #[serde(default)]
    pub reset_after_handshake_per_source_total: u64,
    /// Connections established before the limit started, counted since.
    #[serde(default)]
    pub preexisting_total: u64,
    pub active: u64,
    pub pending: u64,
    pub admitted_total: u64,
    pub refused_total: u64,
    pub refused_drop_total: u64,
    pub refused_reset_total: u64,
    pub syn_retransmit_total: u64,
    pub handshake_timeout_total: u64,
    pub unreserved_total: u64,
    /// `close` listeners (proxy mode): connections held over the limit, never counted active.
    #[serde(default)]
    pub held_total: u64,
    /// The listener's admission mode: `reserve` (a slot per SYN) or `flood` (admitted when the
    /// handshake completes).
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub flood_mode_entered_total: u64,
    /// SYNs the flood path passed without taking a slot.
    #[serde(default)]
    pub proven_syn_passed_total: u64,
    /// Handshakes that never completed: reservations released by timeout or at the switch to
    /// flood mode, and, in flood mode, SYNs passed whose handshake did not complete.
    #[serde(default)]
    pub handshakes_not_completed_total: u64,
    /// Connections found over the limit when their handshake completed (flood mode): reset.
    #[serde(default)]
    pub reset_after_handshake_total: u64,
    /// `dry-run` listeners: connections over the limit let through.
    #[serde(default)]
    pub dry_run_would_refuse_total: u64,
    /// Whether a socket listens on the listener in the agent's namespace.
    #[serde(default)]
    pub listening: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct PacketStats {
    pub syn_not_limited_total: u64,
    pub malformed_total: u64,
    pub syn_passed_total: u64,
    pub syn_refused_total: u64,
    pub reset_fallback_drop_total: u64,
    pub pending_full_total: u64,
    /// Outgoing connections given keepalive by `--keepalive-for` (and those it failed on).
    #[serde(default)]
    pub keepalive_set_total: u64,
    #[serde(default)]
    pub keepalive_failed_total: u64,
}

/// One proxy's row of `limiter stats --json` (`--proxy LISTEN=UPSTREAM`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ProxyStats {
    /// `LISTEN=UPSTREAM`, the listener in canonical form.
    pub proxy: String,
    pub active: u64,
    pub held: u64,
    pub held_total: u64,
    pub accepted_total: u64,
    pub upstream_connect_failures_total: u64,
    pub upstream_connect_timeouts_total: u64,
    pub upstream_overflow_total: u64,
    pub upstream_keepalive_deaths_total: u64,
    pub bytes_to_upstream_total: u64,
    pub bytes_to_downstream_total: u64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub listeners: Vec<ListenerStats>,
    pub packets: PacketStats,
    #[serde(default)]
    pub proxies: Vec<ProxyStats>,
    #[serde(default)]
    pub features: Vec<FeatureStats>,
}

/// One kernel feature as the agent's start-up probe found it (`limiter stats --json`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct FeatureStats {
    pub name: String,
    pub on: bool,
    pub why: Option<String>,
    pub loss: Option<String>,
}

impl Stats {
    /// The row of `name` in the agent's own namespace.
    pub fn listener(&self, name: &str) -> Option<&ListenerStats> {
        self.listener_in(name, None)
    }

    /// The row of `name` in the namespace at `netns` (`None`: the agent's own).
    pub fn listener_in(&self, name: &str, netns: Option<&str>) -> Option<&ListenerStats> {
        self.listeners
            .iter()
            .find(|l| l.listener == name && l.netns.as_deref() == netns)
    }

    pub fn proxy(&self, name: &str) -> Option<&ProxyStats> {
        self.proxies.iter().find(|p| p.proxy == name)
    }
}

/// How a run of the agent that was expected to stop by itself ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stderr: Vec<String>,
    pub stdout: Vec<String>,
}

impl Finished {
    /// The lines starting with `limiter: error:`.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .iter()
            .map(String::as_str)
            .filter(|line| line.starts_with("limiter: error:"))
            .collect()
    }
}

pub struct Agent {
    proc: Proc,
    pub socket: PathBuf,
}

impl Agent {
    /// A fresh control socket path for one agent.
    pub fn socket_path() -> PathBuf {
        PathBuf::from(format!(
            "/tmp/{}.sock",
            names::unique("ctl", names::next_id())
        ))
    }

    /// The command that runs the agent in the bed's server namespace: `nsenter --net` only, so
    /// the host's cgroup2 and bpffs mounts stay visible (`ip netns exec` would hide them).
    /// `args` follow `limiter`.
    pub fn command(bed: &TestBed, args: &[&str]) -> Command {
        Agent::command_of(&limiter_bin(), bed, args)
    }

    /// [`Agent::command`] for another build of the agent (`binary`): an older release, say.
    pub fn command_of(binary: &Path, bed: &TestBed, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", bed.srv_netns_path().display()))
            .arg(binary)
            .args(args);
        cmd
    }

    /// `limiter run --iface <server veth> ARGS --control-socket <fresh>`, waiting for
    /// `limiter: ready`.
    pub fn start(bed: &TestBed, args: &[&str]) -> Agent {
        Agent::start_env(bed, args, &[])
    }

    /// An echo server on the server's IPv4 address at `port`, and an agent limiting that
    /// listener with `limit` (`N[:ACTION]`) and `extra` flags. Returns the server (keep it), the
    /// listener's name as stats print it, and the agent.
    pub fn with_echo_server(
        bed: &TestBed,
        port: u16,
        limit: &str,
        extra: &[&str],
    ) -> (crate::client::EchoServer, String, Agent) {
        let server = crate::client::EchoServer::start(
            bed,
            crate::Side::Server,
            &crate::client::addr(bed.srv_v4, port),
            crate::client::ServerMode::Echo,
        );
        let listener = format!("{}:{port}", bed.srv_v4);
        let spec = format!("{listener}={limit}");
        let mut args = vec!["--limit", spec.as_str()];
        args.extend_from_slice(extra);
        let agent = Agent::start(bed, &args);
        (server, listener, agent)
    }

    /// [`Agent::start`] with environment variables set for the agent (e.g. `KUBECONFIG`).
    pub fn start_env(bed: &TestBed, args: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_of(&limiter_bin(), bed, args, env)
    }

    /// [`Agent::start_env`] for another build of the agent (`binary`).
    pub fn start_of(binary: &Path, bed: &TestBed, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let socket = Agent::socket_path();
        let socket_arg = socket.display().to_string();
        let mut full = vec!["run", "--iface", &bed.srv_veth];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--control-socket", &socket_arg]);
        let mut command = Agent::command_of(binary, bed, &full);
        command.envs(env.iter().copied());
        let proc = bed.spawn("limiter run", command);
        let ready = proc
            .stderr
            .next_matching(scaled(READY_TIMEOUT), |line| line == "limiter: ready");
        if ready.is_none() {
            panic!(
                "agent not ready within {READY_TIMEOUT:?} (args {full:?}); exited: {:?}\n{}",
                proc.try_wait(),
                proc.transcript()
            );
        }
        Agent { proc, socket }
    }

    /// Runs the agent with ARGS (after `limiter`) and waits for it to exit by itself, e.g.
    /// after bad input. If it keeps running, it is stopped and the test fails.
    pub fn run_to_exit(bed: &TestBed, args: &[&str]) -> Finished {
        Agent::run_command_to_exit(bed, Agent::command(bed, args))
    }

    pub fn run_command_to_exit(bed: &TestBed, cmd: Command) -> Finished {
        let description = format!("{cmd:?}");
        let proc = bed.spawn("limiter", cmd);
        let status = match eventually_exit(&proc) {
            Some(status) => status,
            None => panic!(
                "{description} kept running for {EXIT_TIMEOUT:?}; it should have refused to start\n{}",
                proc.transcript()
            ),
        };
        Finished {
            status,
            stderr: proc.stderr.until_closed(Duration::from_secs(5)),
            stdout: proc.stdout.until_closed(Duration::from_secs(5)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The kernel maps the agent holds open (every copy: its own and each namespace's), as
    /// (name, max_entries), from its file descriptors (`/proc/PID/fdinfo`, `map_id`).
    pub fn maps(&self) -> Vec<(String, u32)> {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let mut ids: Vec<u32> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("map_id:"))
                    .and_then(|id| id.trim().parse().ok())
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| aya::maps::MapInfo::from_id(id).ok())
            .map(|info| {
                (
                    info.name_as_str().unwrap_or_default().to_string(),
                    info.max_entries(),
                )
            })
            .collect()
    }

    /// Everything the agent logged so far.
    pub fn stderr(&self) -> Vec<String> {
        self.proc.stderr.all()
    }

    /// Runs `limiter ARGS --control-socket <ours>` (bounded).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(limiter_bin());
        cmd.args(args).arg("--control-socket").arg(&self.socket);
        run_bounded(cmd, scaled(CLI_TIMEOUT))
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "`limiter {}` failed ({}): {}\nagent: {:?}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            self.stderr()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn stats(&self) -> Stats {
        let json = self.cli_ok(&["stats", "--json"]);
        serde_json::from_str(&json).unwrap_or_else(|err| {
            panic!("`limiter stats --json` printed unparsable JSON ({err}):\n{json}")
        })
    }

    /// `limiter stats`: the table a user reads.
    pub fn stats_table(&self) -> String {
        self.cli_ok(&["stats"])
    }

    /// The row of `listener` (canonical form) in the agent's namespace; panics if it is not
    /// listed.
    pub fn listener(&self, listener: &str) -> ListenerStats {
        self.listener_in(listener, None)
    }

    /// The row of `listener` in the namespace at `netns` (`None`: the agent's own).
    pub fn listener_in(&self, listener: &str, netns: Option<&str>) -> ListenerStats {
        let stats = self.stats();
        match stats.listener_in(listener, netns) {
            Some(row) => row.clone(),
            None => panic!("listener {listener} (netns {netns:?}) not in stats: {stats:#?}"),
        }
    }

    /// Polls the listener's row until `pred` holds; fails with the last row seen.
    pub fn wait_listener(
        &self,
        listener: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ListenerStats) -> bool,
    ) -> ListenerStats {
        self.wait_listener_in(listener, None, what, timeout, pred)
    }

    /// [`Agent::wait_listener`] for a listener in the namespace at `netns`.
    pub fn wait_listener_in(
        &self,
        listener: &str,
        netns: Option<&str>,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ListenerStats) -> bool,
    ) -> ListenerStats {
        // A listener of a namespace the agent is (re)starting in may not be listed yet.
        eventually(
            &format!("{listener} in {netns:?}: {what}"),
            timeout,
            || match self.stats().listener_in(listener, netns) {
                Some(row) if pred(row) => Ok(row.clone()),
                Some(row) => Err(format!("{row:?}")),
                None => Err("not listed".into()),
            },
        )
    }

    /// The row of proxy `name` (`LISTEN=UPSTREAM`, canonical); panics if it is not listed.
    pub fn proxy(&self, name: &str) -> ProxyStats {
        let stats = self.stats();
        match stats.proxy(name) {
            Some(row) => row.clone(),
            None => panic!("proxy {name} not in stats: {stats:#?}"),
        }
    }

    /// Polls the proxy's row until `pred` holds; fails with the last row seen.
    pub fn wait_proxy(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ProxyStats) -> bool,
    ) -> ProxyStats {
        eventually(&format!("proxy {name}: {what}"), timeout, || {
            let row = self.proxy(name);
            if pred(&row) {
                Ok(row)
            } else {
                Err(format!("{row:?}"))
            }
        })
    }

    /// `limiter set SPEC`, which must succeed.
    pub fn set(&self, spec: &str) {
        self.cli_ok(&["set", spec]);
    }

    /// `limiter unset LISTENER`, which must succeed.
    pub fn unset(&self, listener: &str) {
        self.cli_ok(&["unset", listener]);
    }

    /// Sends `signal` and waits for the agent to exit.
    pub fn stop(&self, signal: i32) -> ExitStatus {
        self.proc.signal(signal);
        self.proc.wait_exit(scaled(EXIT_TIMEOUT))
    }

    pub fn control_socket(&self) -> &Path {
        &self.socket
    }
}

fn eventually_exit(proc: &Proc) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + scaled(EXIT_TIMEOUT);
    loop {
        if let Some(status) = proc.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first so the agent detaches what it attached; SIGKILL only if it hangs.
        stop(&self.proc.shared());
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `GET http://127.0.0.1:9464PATH` from the server namespace (the agent's default metrics
/// address): the status and the body.
pub fn http_get(bed: &TestBed, path: &str) -> (u16, String) {
    match http_get_url(bed, &format!("http://127.0.0.1:9464{path}")) {
        (0, error) => panic!("bad HTTP answer: {error}"),
        answer => answer,
    }
}

/// `GET URL` from the server namespace: the status and the body; status 0 and the error when
/// nothing answered (a server still starting).
pub fn http_get_url(bed: &TestBed, url: &str) -> (u16, String) {
    let script = "import sys, urllib.request, urllib.error\n\
         try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n\
         except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n\
         except OSError as e:\n    print(0); print(e)\n";
    let out = bed.exec_ok(crate::Side::Server, "python3", &["-c", script, url]);
    let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
    (
        status
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad HTTP answer: {out}")),
        body.to_owned(),
    )
}
