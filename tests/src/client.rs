//! Servers and clients inside the bed's namespaces, run through the `netns-tool` helper binary
//! of this crate (sockets must live in the namespaces, so they cannot be the test's own).
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    agent::target_profile_dir,
    netns::{Side, TestBed},
    process::Proc,
};

/// How long a server may take to bind and print `listening`.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The helper: `$LIMITER_NETNS_TOOL`, else `<target dir>/debug/netns-tool` (cargo builds the
/// package's binaries before its integration tests).
pub fn netns_tool_bin() -> PathBuf {
    let path = std::env::var_os("LIMITER_NETNS_TOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_profile_dir().join("netns-tool"));
    assert!(
        path.is_file(),
        "{} not found: build it with `cargo build -p limiter-tests --bins`",
        path.display()
    );
    path
}

pub(crate) fn tool(bed: &TestBed, side: Side, args: &[&str]) -> std::process::Command {
    let bin = netns_tool_bin();
    bed.command(side, bin.to_str().expect("utf-8 path"), args)
}

/// `host:port` with IPv6 addresses in brackets.
pub fn addr(ip: impl Into<std::net::IpAddr>, port: u16) -> String {
    SocketAddr::new(ip.into(), port).to_string()
}

/// What the echo server does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// Echo until the client closes, then close (client closes first).
    Echo,
    /// Close as soon as the client sends anything (server closes first).
    CloseOnData,
    /// Read until the client's FIN, then answer `received N` (N = bytes read) and close: the
    /// reply only arrives if the half-closed connection still carries the other direction.
    CountAfterEof,
}

impl ServerMode {
    fn arg(self) -> &'static str {
        match self {
            ServerMode::Echo => "echo",
            ServerMode::CloseOnData => "close-on-data",
            ServerMode::CountAfterEof => "count-after-eof",
        }
    }
}

/// A threaded TCP echo server; stopped when dropped (or with the bed).
pub struct EchoServer {
    pub proc: Proc,
    pub addr: String,
}

impl EchoServer {
    pub fn start(bed: &TestBed, side: Side, addr: &str, mode: ServerMode) -> EchoServer {
        let mode_arg = mode.arg();
        let proc = bed.spawn(
            &format!("echo-server {addr}"),
            tool(bed, side, &["echo-server", addr, mode_arg]),
        );
        proc.expect_line("`listening`", START_TIMEOUT, |l| l.starts_with("listening"));
        EchoServer {
            proc,
            addr: addr.to_owned(),
        }
    }
}

impl EchoServer {
    /// [`EchoServer::start`] in any namespace of the bed by name (e.g. an
    /// [`UpstreamNs`](crate::netns::UpstreamNs)).
    pub fn start_in(bed: &TestBed, ns: &str, addr: &str, mode: ServerMode) -> EchoServer {
        let bin = netns_tool_bin();
        let cmd = bed.command_in(
            ns,
            bin.to_str().expect("utf-8 path"),
            &["echo-server", addr, mode.arg()],
        );
        let proc = bed.spawn(&format!("echo-server {addr} in {ns}"), cmd);
        proc.expect_line("`listening`", START_TIMEOUT, |l| l.starts_with("listening"));
        EchoServer {
            proc,
            addr: addr.to_owned(),
        }
    }
}

/// The first line `hold` prints, once every connect attempt has finished.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HoldResult {
    pub connected: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub other: u64,
    pub max_refused_ms: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PingResult {
    pub echoed: u64,
    pub failed: u64,
}

/// N connections opened at once from the client namespace and held open.
pub struct Hold {
    pub proc: Proc,
    pub result: HoldResult,
}

impl Hold {
    /// Starts `hold` in `side` and returns at once; [`Hold::wait`] gets the result. Lets a test sample
    /// the server while the connects are still in flight.
    pub fn spawn(bed: &TestBed, side: Side, count: u32, addr: &str, timeout_ms: u64) -> Proc {
        Hold::spawn_with(bed, side, count, addr, timeout_ms, &[])
    }

    fn spawn_with(
        bed: &TestBed,
        side: Side,
        count: u32,
        addr: &str,
        timeout_ms: u64,
        extra: &[&str],
    ) -> Proc {
        let (count, timeout) = (count.to_string(), timeout_ms.to_string());
        let mut args = vec!["hold", &count, addr, &timeout];
        args.extend_from_slice(extra);
        bed.spawn(&format!("hold {count} {addr}"), tool(bed, side, &args))
    }

    /// [`Hold::open`] from this process's own network namespace: the node of
    /// [`crate::container`]'s containers, where the runtime's bridge and hostPort rules are.
    pub fn open_from_host(bed: &TestBed, count: u32, addr: &str, timeout_ms: u64) -> Hold {
        let (count_arg, timeout) = (count.to_string(), timeout_ms.to_string());
        let mut cmd = std::process::Command::new(netns_tool_bin());
        cmd.args(["hold", &count_arg, addr, &timeout]);
        let proc = bed.spawn(&format!("hold {count} {addr} from the host"), cmd);
        Hold::wait(proc, count, timeout_ms)
    }

    /// [`Hold::open`] from the client's address `source` (one it has, see
    /// `TestBed::add_client_address`).
    pub fn open_as(bed: &TestBed, source: IpAddr, count: u32, addr: &str, timeout_ms: u64) -> Hold {
        let source = source.to_string();
        let proc = Hold::spawn_with(bed, Side::Client, count, addr, timeout_ms, &[&source]);
        Hold::wait(proc, count, timeout_ms)
    }

    /// Waits for the result line of a spawned `hold`.
    pub fn wait(proc: Proc, count: u32, timeout_ms: u64) -> Hold {
        // Every attempt ends by its connect timeout; spawning the threads takes a little on top.
        let limit = Duration::from_millis(timeout_ms) + Duration::from_secs(30 + count as u64 / 50);
        let line = proc.expect_line("the connect results", limit, |l| l.starts_with('{'));
        let result = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("bad hold output {line:?}: {err}"));
        Hold { proc, result }
    }

    /// Opens `count` connections to `addr` at once (each with a `timeout_ms` connect timeout)
    /// and holds the ones that connected.
    pub fn open(bed: &TestBed, count: u32, addr: &str, timeout_ms: u64) -> Hold {
        Hold::open_from(bed, Side::Client, count, addr, timeout_ms)
    }

    /// [`Hold::open`] from either namespace.
    pub fn open_from(bed: &TestBed, side: Side, count: u32, addr: &str, timeout_ms: u64) -> Hold {
        let proc = Hold::spawn(bed, side, count, addr, timeout_ms);
        Hold::wait(proc, count, timeout_ms)
    }

    /// Sends a byte on every held connection and waits for its echo.
    pub fn ping(&mut self) -> PingResult {
        self.proc.send_line("ping");
        let line = self
            .proc
            .expect_line("the ping result", Duration::from_secs(60), |l| {
                l.starts_with('{')
            });
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad ping output {line:?}: {err}"))
    }

    /// Closes every held connection normally (FIN) and waits for the tool to exit.
    pub fn close(mut self) {
        self.finish("close");
    }

    /// Closes every held connection with a RST (SO_LINGER 0).
    pub fn reset(mut self) {
        self.finish("rst");
    }

    fn finish(&mut self, command: &str) {
        self.proc.send_line(command);
        self.proc
            .expect_line("`closed`", Duration::from_secs(30), |l| l == "closed");
        self.proc.wait_exit(Duration::from_secs(30));
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ChurnResult {
    pub attempts: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub elapsed_ms: u64,
    pub stopped_by_time: bool,
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// `total` successful connect-then-close cycles by `concurrency` clients (a refused connect is
/// retried and counted in `failed`), stopping after `max` at the latest.
pub fn churn(
    bed: &TestBed,
    total: u64,
    concurrency: u32,
    addr: &str,
    timeout_ms: u64,
    max: Duration,
) -> ChurnResult {
    let max_ms = max.as_millis() as u64;
    let proc = bed.spawn(
        &format!("churn {total} {addr}"),
        tool(
            bed,
            Side::Client,
            &[
                "churn",
                &total.to_string(),
                &concurrency.to_string(),
                addr,
                &timeout_ms.to_string(),
                &max_ms.to_string(),
            ],
        ),
    );
    // Workers stop starting connects at `max`; the last ones end within their connect timeout.
    let limit = max + Duration::from_millis(timeout_ms) + Duration::from_secs(30);
    let line = proc.expect_line("the churn result", limit, |l| l.starts_with('{'));
    serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad churn output {line:?}: {err}"))
}

/// Sends `count` identical bare SYNs from `src:sport` (client namespace) to `dst:dport`. The
/// caller must first drop what comes back to `sport` ([`TestBed::drop_incoming_tcp_port`]),
/// or the client kernel answers the SYN-ACK with a RST.
pub fn raw_syn(bed: &TestBed, src: &str, sport: u16, dst: &str, dport: u16, count: u32) {
    raw_syn_with(bed, src, sport, dst, dport, count, &[]);
}

/// [`raw_syn`] with netns-tool's extra arguments (`ip-options`: 4 bytes of IPv4 options).
pub fn raw_syn_with(
    bed: &TestBed,
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    count: u32,
    extra: &[&str],
) {
    let (sport, dport, count) = (sport.to_string(), dport.to_string(), count.to_string());
    let mut args = vec!["raw-syn", src, &sport, dst, &dport, &count];
    args.extend_from_slice(extra);
    let proc = bed.spawn("raw-syn", tool(bed, Side::Client, &args));
    proc.expect_line("`sent`", Duration::from_secs(15), |l| l.starts_with("sent"));
    let status = proc.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "raw-syn failed: {}", proc.transcript());
}

/// A UDP echo server.
pub fn udp_echo_server(bed: &TestBed, side: Side, addr: &str) -> Proc {
    let proc = bed.spawn(
        &format!("udp-echo-server {addr}"),
        tool(bed, side, &["udp-echo-server", addr]),
    );
    proc.expect_line("`listening`", START_TIMEOUT, |l| l.starts_with("listening"));
    proc
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct UdpResult {
    pub sent: u64,
    pub replied: u64,
}

/// Sends `count` datagrams from the client namespace and counts the echoes.
pub fn udp_probe(bed: &TestBed, addr: &str, count: u32) -> UdpResult {
    let proc = bed.spawn(
        &format!("udp-probe {addr}"),
        tool(
            bed,
            Side::Client,
            &["udp-probe", addr, &count.to_string(), "2000"],
        ),
    );
    let limit = Duration::from_secs(30 + 2 * count as u64);
    let line = proc.expect_line("the UDP result", limit, |l| l.starts_with('{'));
    serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad udp-probe output {line:?}: {err}"))
}

/// What `session` printed after its connect.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SessionConnect {
    pub connected: bool,
    pub connect_ms: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SessionEcho {
    pub echoed: bool,
    pub received: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SessionSend {
    pub sent: u64,
    pub error: Option<String>,
}

/// How `read-eof` ended: `end` is `eof`, `reset`, `timeout` or `error: ...`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SessionRead {
    pub received: u64,
    /// The first 200 bytes received.
    pub text: String,
    pub end: String,
    /// From the `read-eof` command to the end.
    pub ms: u64,
    /// From the connect to the end.
    pub since_connect_ms: u64,
}

/// One client connection (netns-tool `session`), driven step by step: the test can act
/// between steps and time what the other end does.
pub struct Session {
    pub proc: Proc,
    pub connect: SessionConnect,
}

impl Session {
    /// Connects from `side` to `addr` (connect timeout `timeout_ms`) and waits for the result.
    pub fn open(bed: &TestBed, side: Side, addr: &str, timeout_ms: u64) -> Session {
        let proc = bed.spawn(
            &format!("session {addr}"),
            tool(bed, side, &["session", addr, &timeout_ms.to_string()]),
        );
        let limit = Duration::from_millis(timeout_ms) + START_TIMEOUT;
        let line = proc.expect_line("the connect result", limit, |l| l.starts_with('{'));
        let connect = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("bad session output {line:?}: {err}"));
        Session { proc, connect }
    }

    fn command<T: serde::de::DeserializeOwned>(&mut self, line: &str, limit: Duration) -> T {
        self.proc.send_line(line);
        let reply = self
            .proc
            .expect_line(&format!("the result of `{line}`"), limit, |l| {
                l.starts_with('{')
            });
        serde_json::from_str(&reply)
            .unwrap_or_else(|err| panic!("bad session output {reply:?} for {line:?}: {err}"))
    }

    /// Sends `n` bytes and waits (3 s) for all of them to come back.
    pub fn echo(&mut self, n: usize) -> SessionEcho {
        self.command(&format!("echo {n}"), Duration::from_secs(30))
    }

    /// Sends `n` bytes.
    pub fn send(&mut self, n: usize) -> SessionSend {
        self.command(&format!("send {n}"), Duration::from_secs(30))
    }

    /// shutdown(SHUT_WR): the client's FIN, the other direction stays open.
    pub fn shut_wr(&mut self) {
        #[derive(Deserialize)]
        struct Shut {
            shut: bool,
            error: Option<String>,
        }
        let shut: Shut = self.command("shut-wr", Duration::from_secs(30));
        assert!(
            shut.shut,
            "shutdown(SHUT_WR) failed: {:?}\n{}",
            shut.error,
            self.proc.transcript()
        );
    }

    /// Reads until EOF, an error, or `timeout` (at most 120 s).
    pub fn read_to_end(&mut self, timeout: Duration) -> SessionRead {
        let ms = timeout.as_millis() as u64;
        self.command(&format!("read-eof {ms}"), timeout + Duration::from_secs(30))
    }

    /// Closes the connection and waits for the tool to exit.
    pub fn close(mut self) {
        self.proc.send_line("close");
        self.proc
            .expect_line("`closed`", Duration::from_secs(30), |l| l == "closed");
        self.proc.wait_exit(Duration::from_secs(30));
    }
}

/// A plain client in `side` (a process that sets no socket option) connects to `addr` and
/// reports the keepalive settings its socket has once connected.
pub fn connect_sockopts(
    bed: &TestBed,
    side: Side,
    addr: &str,
    timeout_ms: u64,
) -> crate::sockopt::Keepalive {
    connect_sockopts_in(bed, bed.ns(side), addr, timeout_ms)
}

/// [`connect_sockopts`] from any namespace of the bed by name (e.g. a pod's).
pub fn connect_sockopts_in(
    bed: &TestBed,
    ns: &str,
    addr: &str,
    timeout_ms: u64,
) -> crate::sockopt::Keepalive {
    let bin = netns_tool_bin();
    let proc = bed.spawn(
        &format!("connect-sockopts {addr}"),
        bed.command_in(
            ns,
            bin.to_str().expect("utf-8 path"),
            &["connect-sockopts", addr, &timeout_ms.to_string()],
        ),
    );
    let limit = Duration::from_millis(timeout_ms) + START_TIMEOUT;
    let line = proc.expect_line("the socket options", limit, |l| l.starts_with('{'));
    serde_json::from_str(&line)
        .unwrap_or_else(|err| panic!("bad connect-sockopts output {line:?}: {err}"))
}
