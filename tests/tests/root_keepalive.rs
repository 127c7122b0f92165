//! TCP keepalive (design.md semantics 7): `--upstream-keepalive` on the proxy's upstream
//! sockets, read back from the agent's own live sockets (pidfd_getfd) and seen detecting a dead
//! upstream; `--keepalive-for` on the connections of a process the agent does not own, set by
//! the kernel (sock_ops `bpf_setsockopt`) and read back by that process; and the flags'
//! validation. Needs root.
use std::{net::SocketAddr, os::fd::AsFd as _, time::Duration};

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, ServerMode, Session, addr, connect_sockopts},
    refusal::expect_refusal,
    sockopt::{Keepalive, keepalive_of, sockets_connected_to},
};

const PORT: u16 = 8000;
const UPSTREAM_PORT: u16 = 1025;
const SETTLE: Duration = Duration::from_secs(20);
const CONNECT_MS: u64 = 5000;

fn connected(bed: &TestBed, to: &str) -> Session {
    let session = Session::open(bed, Side::Client, to, CONNECT_MS);
    assert!(
        session.connect.connected,
        "connect to {to} failed: {:?}",
        session.connect
    );
    session
}

fn assert_echoes(session: &mut Session, what: &str) {
    let echo = session.echo(1);
    assert!(
        echo.echoed,
        "{what}: not echoed: {echo:?}\n{}",
        session.proc.transcript()
    );
}

/// The keepalive options of the agent's socket(s) connected to `upstream`, read from the live
/// process: exactly one such socket is expected.
fn agent_upstream_keepalive(agent: &Agent, upstream: SocketAddr) -> Keepalive {
    let sockets = sockets_connected_to(agent.pid(), upstream).unwrap_or_else(|err| {
        panic!(
            "cannot read the sockets of the agent (pid {}): {err}",
            agent.pid()
        )
    });
    assert_eq!(
        sockets.len(),
        1,
        "want exactly one agent socket connected to {upstream}, found fds {:?} (exe {:?})",
        sockets.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        std::fs::read_link(format!("/proc/{}/exe", agent.pid()))
    );
    keepalive_of(sockets[0].1.as_fd()).expect("getsockopt on the agent's upstream socket")
}

/// `--upstream-keepalive time=700s,probes=20,interval=10s` (the Istio/Gloo Mesh seed values)
/// is what the agent's live upstream sockets carry, for an IPv4 and an IPv6 upstream.
#[test]
fn root_upstream_keepalive_is_set_on_the_upstream_sockets() {
    let bed = TestBed::new();
    let ups = bed.add_upstream();
    let up4: SocketAddr = addr(ups.ups_v4, UPSTREAM_PORT).parse().unwrap();
    let up6: SocketAddr = addr(ups.ups_v6, UPSTREAM_PORT).parse().unwrap();
    let _s4 = EchoServer::start_in(&bed, &ups.ns, &up4.to_string(), ServerMode::Echo);
    let _s6 = EchoServer::start_in(&bed, &ups.ns, &up6.to_string(), ServerMode::Echo);
    let agent = Agent::start(
        &bed,
        &[
            "--proxy",
            &format!("{PORT}={up4}"),
            "--proxy",
            &format!("{}={up6}", PORT + 1),
            "--upstream-keepalive",
            "time=700s,probes=20,interval=10s",
        ],
    );
    let mut via4 = connected(&bed, &addr(bed.srv_v4, PORT));
    let mut via6 = connected(&bed, &addr(bed.srv_v6, PORT + 1));
    assert_echoes(&mut via4, "to the IPv4 upstream");
    assert_echoes(&mut via6, "to the IPv6 upstream");

    let want = Keepalive {
        keepalive: 1,
        idle: 700,
        intvl: 10,
        cnt: 20,
    };
    for upstream in [up4, up6] {
        assert_eq!(
            agent_upstream_keepalive(&agent, upstream),
            want,
            "upstream socket to {upstream}"
        );
    }
    via4.close();
    via6.close();
}

/// A dead upstream (every packet to and from its namespace dropped) is found by keepalive
/// (`time=1s,probes=3,interval=1s`: ~4 s), and the proxy then closes the client's connection.
#[test]
fn root_upstream_keepalive_detects_a_dead_upstream() {
    let bed = TestBed::new();
    let ups = bed.add_upstream();
    let upstream = addr(ups.ups_v4, UPSTREAM_PORT);
    let _server = EchoServer::start_in(&bed, &ups.ns, &upstream, ServerMode::Echo);
    let agent = Agent::start(
        &bed,
        &[
            "--proxy",
            &format!("{PORT}={upstream}"),
            "--upstream-keepalive",
            "time=1s,probes=3,interval=1s",
        ],
    );
    let name = format!("{PORT}={upstream}");
    let mut session = connected(&bed, &addr(bed.srv_v4, PORT));
    assert_echoes(&mut session, "before the cut");
    agent.wait_proxy(&name, "1 active", SETTLE, |p| p.active == 1);

    ups.cut_off(&bed);
    // Bounded at 15 s; keepalive should end it after time + probes * interval = 4 s of silence.
    let read = session.read_to_end(Duration::from_secs(15));
    eprintln!("seen: {read:?}");
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "the proxy should close the client once the upstream is found dead: {read:?}\nagent: {:?}",
        agent.stderr()
    );
    assert!(
        (2500..=8000).contains(&read.ms),
        "closed {} ms after the cut, want ~4000 (time 1s + 3 probes x 1s): {read:?}",
        read.ms
    );
    let row = agent.wait_proxy(&name, "the death counted", SETTLE, |p| {
        p.upstream_keepalive_deaths_total == 1 && p.active == 0
    });
    assert_eq!(
        (row.accepted_total, row.upstream_connect_failures_total),
        (1, 0),
        "{row:?}"
    );
    session.close();
}

/// `--keepalive-for`: a plain client process in the agent's network namespace, which never
/// sets keepalive, finds its connections to the selected destinations (IPv4 and IPv6, port
/// 5432, and an IPv6 socket to an IPv4-mapped address) carrying the policy's settings; a
/// connection to another port keeps the OS defaults.
#[test]
fn root_keepalive_for_unmodified_processes() {
    const DB: u16 = 5432;
    const OTHER: u16 = 5433;
    let bed = TestBed::new();
    // Servers in the client namespace; the connecting process runs in the server namespace,
    // where the agent is.
    let _servers: Vec<EchoServer> = [
        addr(bed.cli_v4, DB),
        addr(bed.cli_v6, DB),
        addr(bed.cli_v4, OTHER),
        addr(bed.cli_v6, OTHER),
    ]
    .iter()
    .map(|a| EchoServer::start(&bed, Side::Client, a, ServerMode::Echo))
    .collect();
    let agent = Agent::start(
        &bed,
        &[
            "--keepalive-for",
            &format!("198.18.0.0/15:{DB}"),
            "time=60s,probes=3,interval=5s",
            "--keepalive-for",
            &format!("[fd00:1e:57::/48]:{DB}"),
            "time=60s,probes=3,interval=5s",
        ],
    );
    let policy = Keepalive {
        keepalive: 1,
        idle: 60,
        intvl: 5,
        cnt: 3,
    };
    for (to, want) in [
        (addr(bed.cli_v4, DB), policy),
        (addr(bed.cli_v6, DB), policy),
        (addr(bed.cli_v4, OTHER), Keepalive::OS_DEFAULT),
        (addr(bed.cli_v6, OTHER), Keepalive::OS_DEFAULT),
        // An IPv6 socket connecting to an IPv4 destination (IPv4-mapped): the IPv4 policy.
        (format!("[::ffff:{}]:{DB}", bed.cli_v4), policy),
    ] {
        let got = connect_sockopts(&bed, Side::Server, &to, CONNECT_MS);
        assert_eq!(got, want, "a plain client's connection to {to}");
    }
    let packets = agent.stats().packets;
    assert_eq!(
        (packets.keepalive_set_total, packets.keepalive_failed_total),
        (3, 0),
        "{packets:?}"
    );
}

/// A policy for every port of a destination (`CIDR` without a port) that gives only `time`:
/// SO_KEEPALIVE on, TCP_KEEPIDLE set, the other two keep the OS defaults.
#[test]
fn root_keepalive_for_every_port_with_only_time() {
    let bed = TestBed::new();
    let to = addr(bed.cli_v4, 5433);
    let _server = EchoServer::start(&bed, Side::Client, &to, ServerMode::Echo);
    let agent = Agent::start(&bed, &["--keepalive-for", "198.18.0.0/15", "time=30s"]);
    let got = connect_sockopts(&bed, Side::Server, &to, CONNECT_MS);
    assert_eq!(
        got,
        Keepalive {
            keepalive: 1,
            idle: 30,
            ..Keepalive::OS_DEFAULT
        },
        "a plain client's connection to {to}"
    );
    let packets = agent.stats().packets;
    assert_eq!(
        (packets.keepalive_set_total, packets.keepalive_failed_total),
        (1, 0),
        "{packets:?}"
    );
}

/// `limiter run` with a bad flag: exit 2, one `limiter: error:` line naming it, nothing left.
fn expect_usage_error(args: &[&str], needle: &str) {
    expect_refusal(args, 2, &[needle]);
}

#[test]
fn root_keepalive_rejects_a_time_below_one_second() {
    expect_usage_error(
        &["--upstream-keepalive", "time=500ms"],
        "--upstream-keepalive",
    );
}

#[test]
fn root_keepalive_rejects_zero_probes() {
    expect_usage_error(
        &["--upstream-keepalive", "probes=0"],
        "--upstream-keepalive",
    );
}

#[test]
fn root_keepalive_rejects_an_unknown_field() {
    expect_usage_error(&["--upstream-keepalive", "tme=5s"], "--upstream-keepalive");
}

#[test]
fn root_keepalive_for_rejects_a_destination_without_prefix() {
    expect_usage_error(
        &["--keepalive-for", "198.18.0.0:5432", "time=1s"],
        "--keepalive-for",
    );
}
