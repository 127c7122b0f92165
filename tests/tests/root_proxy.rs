//! Proxy mode (design.md semantics 3 and 7; docs/interface.md `--proxy`): the agent's
//! forwarding proxy in the server namespace, clients in the client namespace, the upstream in a
//! third namespace. Echo over IPv4 and IPv6, half-close, the upstream closing, 50 concurrent
//! connections, the proxy's listener limited like any other, the `close` action's delayed
//! close (Gloo's `delayBeforeClose`, also set live), `--connect-timeout`, a refusing upstream,
//! `--max-upstream-connections`, SIGTERM with connections open, and the proxy flags'
//! validation (including `limiter set ...:close` on a listener without a proxy). Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, ProxyStats, Side, TestBed, UpstreamNs,
    client::{EchoServer, Hold, ServerMode, Session, addr},
    refusal::{expect_refusal, refusal_line},
};

const PORT: u16 = 8000;
const UPSTREAM_PORT: u16 = 1025;
const SETTLE: Duration = Duration::from_secs(20);
/// Connect timeout of clients that are expected to connect.
const CONNECT_MS: u64 = 5000;
/// Bound on every wait for the proxy to close a client connection.
const CLOSE_WAIT: Duration = Duration::from_secs(15);

/// A bed with an upstream namespace and an upstream server in it.
struct ProxyBed {
    bed: TestBed,
    ups: UpstreamNs,
    /// `ups_v4:1025`.
    upstream: String,
    server: Option<EchoServer>,
}

impl ProxyBed {
    fn new(mode: ServerMode) -> ProxyBed {
        let bed = TestBed::new();
        let ups = bed.add_upstream();
        let upstream = addr(ups.ups_v4, UPSTREAM_PORT);
        let server = EchoServer::start_in(&bed, &ups.ns, &upstream, mode);
        ProxyBed {
            bed,
            ups,
            upstream,
            server: Some(server),
        }
    }

    /// The proxy's name in `limiter stats`: `LISTEN=UPSTREAM`, LISTEN canonical.
    fn proxy_name(&self, listen: &str) -> String {
        format!("{listen}={}", self.upstream)
    }

    /// Connections the upstream server holds now.
    fn upstream_established(&self) -> usize {
        self.ups.established_on(&self.bed, UPSTREAM_PORT)
    }
}

fn connected(bed: &TestBed, to: &str) -> Session {
    let session = Session::open(bed, Side::Client, to, CONNECT_MS);
    assert!(
        session.connect.connected,
        "connect to {to} failed: {:?}",
        session.connect
    );
    session
}

fn assert_echoes(session: &mut Session, n: usize, what: &str) {
    let echo = session.echo(n);
    assert!(
        echo.echoed && echo.received == n as u64,
        "{what}: {n} bytes not echoed: {echo:?}\n{}",
        session.proc.transcript()
    );
}

fn wait_active(agent: &Agent, name: &str, n: u64) -> ProxyStats {
    agent.wait_proxy(name, &format!("{n} active"), SETTLE, |p| p.active == n)
}

/// IPv4 and IPv6 clients through one dual-stack proxy (bare port): bytes arrive unchanged both
/// ways, including more than one copy buffer's worth, and every byte is counted once.
#[test]
fn root_proxy_echoes_ipv4_and_ipv6() {
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    let spec = format!("{PORT}={}", pb.upstream);
    let agent = Agent::start(bed, &["--proxy", &spec]);
    let name = pb.proxy_name(&PORT.to_string());

    let mut v4 = connected(bed, &addr(bed.srv_v4, PORT));
    let mut v6 = connected(bed, &addr(bed.srv_v6, PORT));
    assert_echoes(&mut v4, 1, "IPv4");
    assert_echoes(&mut v6, 1, "IPv6");
    // 100 000 bytes: several 32 KiB copy buffers, and more than one socket buffer's worth.
    assert_echoes(&mut v4, 100_000, "IPv4, 100 000 bytes");
    assert_echoes(&mut v6, 100_000, "IPv6, 100 000 bytes");
    let row = wait_active(&agent, &name, 2);
    assert_eq!(
        (
            row.accepted_total,
            row.bytes_to_upstream_total,
            row.bytes_to_downstream_total
        ),
        (2, 200_002, 200_002),
        "{row:?}"
    );
    assert_eq!(
        (
            row.held,
            row.held_total,
            row.upstream_connect_failures_total,
            row.upstream_connect_timeouts_total,
            row.upstream_overflow_total,
            row.upstream_keepalive_deaths_total
        ),
        (0, 0, 0, 0, 0, 0),
        "{row:?}"
    );
    assert_eq!(pb.upstream_established(), 2, "upstream connections");

    v4.close();
    v6.close();
    let row = wait_active(&agent, &name, 0);
    assert_eq!(row.accepted_total, 2, "{row:?}");
    eventually_upstream(&pb, 0);
}

fn eventually_upstream(pb: &ProxyBed, n: usize) {
    limiter_tests::eventually(&format!("{n} upstream connections"), SETTLE, || {
        match pb.upstream_established() {
            seen if seen == n => Ok(()),
            seen => Err(format!("{seen} established on the upstream")),
        }
    });
}

/// Half-close: the client sends, then shutdown(SHUT_WR); the upstream reads to EOF and only
/// then answers, and the answer still reaches the client, followed by EOF.
#[test]
fn root_proxy_half_close_still_delivers_the_reply() {
    let pb = ProxyBed::new(ServerMode::CountAfterEof);
    let bed = &pb.bed;
    let spec = format!("{PORT}={}", pb.upstream);
    let agent = Agent::start(bed, &["--proxy", &spec]);
    let name = pb.proxy_name(&PORT.to_string());

    for (family, to, n) in [
        ("IPv4", addr(bed.srv_v4, PORT), 1000usize),
        ("IPv6", addr(bed.srv_v6, PORT), 70_000usize),
    ] {
        let mut session = connected(bed, &to);
        let sent = session.send(n);
        assert_eq!(sent.sent, n as u64, "{family}: {sent:?}");
        session.shut_wr();
        let read = session.read_to_end(CLOSE_WAIT);
        eprintln!("seen: {read:?}");
        assert_eq!(
            (read.text.as_str(), read.end.as_str()),
            (format!("received {n}").as_str(), "eof"),
            "{family}: the upstream's answer after the half-close: {read:?}\nagent: {:?}",
            agent.stderr()
        );
        session.close();
    }
    let row = wait_active(&agent, &name, 0);
    let replies = ("received 1000".len() + "received 70000".len()) as u64;
    assert_eq!(
        (
            row.accepted_total,
            row.bytes_to_upstream_total,
            row.bytes_to_downstream_total
        ),
        (2, 71_000, replies),
        "{row:?}"
    );
}

/// The upstream closes first (after the client's data, and by exiting while idle): the proxy
/// closes the client's connection too (the client reads EOF at once), and nothing stays active.
#[test]
fn root_proxy_upstream_close_closes_the_client() {
    let mut pb = ProxyBed::new(ServerMode::CloseOnData);
    let spec = format!("{PORT}={}", pb.upstream);
    let agent = Agent::start(&pb.bed, &["--proxy", &spec]);
    let name = pb.proxy_name(&PORT.to_string());

    // The upstream closes as soon as it gets a byte.
    let mut session = connected(&pb.bed, &addr(pb.bed.srv_v4, PORT));
    wait_active(&agent, &name, 1);
    assert_eq!(session.send(1).sent, 1);
    let read = session.read_to_end(CLOSE_WAIT);
    eprintln!("seen: {read:?}");
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "the upstream closed, the client should read EOF: {read:?}"
    );
    assert!(read.ms < 3000, "EOF took {} ms: {read:?}", read.ms);
    session.close();
    wait_active(&agent, &name, 0);

    // The upstream server exits while a proxied connection is idle.
    let mut idle = connected(&pb.bed, &addr(pb.bed.srv_v6, PORT));
    wait_active(&agent, &name, 1);
    eventually_upstream(&pb, 1);
    drop(pb.server.take());
    let read = idle.read_to_end(CLOSE_WAIT);
    eprintln!("seen: {read:?}");
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "the upstream exited, the client should read EOF: {read:?}"
    );
    assert!(read.ms < 3000, "EOF took {} ms: {read:?}", read.ms);
    idle.close();
    let row = wait_active(&agent, &name, 0);
    assert_eq!(row.accepted_total, 2, "{row:?}");
}

/// 50 connections opened at once all get through and echo; all are released afterwards.
#[test]
fn root_proxy_fifty_concurrent_connections() {
    const N: u32 = 50;
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    let spec = format!("{PORT}={}", pb.upstream);
    let agent = Agent::start(bed, &["--proxy", &spec]);
    let name = pb.proxy_name(&PORT.to_string());

    let mut hold = Hold::open(bed, N, &addr(bed.srv_v4, PORT), CONNECT_MS);
    assert_eq!(hold.result.connected, N as u64, "{:?}", hold.result);
    let ping = hold.ping();
    assert_eq!((ping.echoed, ping.failed), (N as u64, 0), "{ping:?}");
    let row = wait_active(&agent, &name, N as u64);
    assert_eq!(
        (
            row.accepted_total,
            row.bytes_to_upstream_total,
            row.bytes_to_downstream_total
        ),
        (N as u64, N as u64, N as u64),
        "{row:?}"
    );
    assert_eq!(pb.upstream_established(), N as usize);
    hold.close();
    wait_active(&agent, &name, 0);
    eventually_upstream(&pb, 0);
}

/// The proxy's listener is limited like any other listener: with `drop`, N connect and the
/// rest time out, and the kernel counts exactly N active.
#[test]
fn root_proxy_listener_is_limited_like_any_other() {
    const LIMIT: u64 = 3;
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    let spec = format!("{PORT}={}", pb.upstream);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(
        bed,
        &[
            "--proxy",
            &spec,
            "--limit",
            &format!("{listener}={LIMIT}:drop"),
        ],
    );
    let name = pb.proxy_name(&PORT.to_string());

    let mut hold = Hold::open(bed, LIMIT as u32 + 2, &addr(bed.srv_v4, PORT), 2000);
    assert_eq!(
        (
            hold.result.connected,
            hold.result.timed_out,
            hold.result.refused,
            hold.result.other
        ),
        (LIMIT, 2, 0, 0),
        "{:?}",
        hold.result
    );
    let ping = hold.ping();
    assert_eq!((ping.echoed, ping.failed), (LIMIT, 0), "{ping:?}");
    let row = agent.wait_listener(&listener, "3 active", SETTLE, |l| l.active == LIMIT);
    assert_eq!(
        (row.admitted_total, row.pending, row.held_total),
        (LIMIT, 0, 0),
        "{row:?}"
    );
    assert!(row.refused_drop_total >= 2, "{row:?}");
    assert_eq!(row.refused_total, row.refused_drop_total, "{row:?}");
    let proxy = wait_active(&agent, &name, LIMIT);
    assert_eq!(proxy.accepted_total, LIMIT, "{proxy:?}");

    hold.close();
    let row = agent.wait_listener(&listener, "0 active", SETTLE, |l| l.active == 0);
    assert_eq!(row.admitted_total, LIMIT, "{row:?}");
    wait_active(&agent, &name, 0);
}

/// The Gloo seed walkthrough: `maxActiveConnections: 1`, `delayBeforeClose: 2s`. The second
/// client's handshake completes, its bytes go nowhere, and it is closed after ~2 s while the
/// first keeps working; the held connection never counts as active.
#[test]
fn root_proxy_close_action_holds_then_closes_ipv6() {
    // As the README writes it: `--proxy '[::]:8000=…' --limit '[::]:8000=1:close'`. The proxy
    // is dual-stack, so the limit covers its IPv4 clients too (checked at the end).
    close_action_holds_then_closes(&format!("[::]:{PORT}"), &format!("[::]:{PORT}"), true);
}

/// The same with a bare-port listener (both families) and IPv4 clients, which the dual-stack
/// proxy socket sees as IPv4-mapped addresses.
#[test]
fn root_proxy_close_action_holds_then_closes_bare_port_ipv4() {
    close_action_holds_then_closes(&PORT.to_string(), &PORT.to_string(), false);
}

/// A bare-port limit next to a `[::]` proxy names the same clients: accepted, and enforced.
#[test]
fn root_proxy_close_action_bare_port_limit_on_a_dual_stack_proxy() {
    close_action_holds_then_closes(&format!("[::]:{PORT}"), &PORT.to_string(), false);
}

/// `proxy_listen` for `--proxy`, `limit_listener` for `--limit ...=1:close`; `v6`: the clients'
/// family. However it is written, the limit is enforced on every client of the dual-stack
/// proxy, and `limiter stats` names it by the bare port.
fn close_action_holds_then_closes(proxy_listen: &str, limit_listener: &str, v6: bool) {
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    let spec = format!("{proxy_listen}={}", pb.upstream);
    let agent = Agent::start(
        bed,
        &[
            "--proxy",
            &spec,
            "--limit",
            &format!("{limit_listener}=1:close"),
            "--delay-before-close",
            "2s",
        ],
    );
    let listener = &PORT.to_string();
    let name = pb.proxy_name(proxy_listen);
    let to = if v6 {
        addr(bed.srv_v6, PORT)
    } else {
        addr(bed.srv_v4, PORT)
    };

    let mut first = connected(bed, &to);
    assert_echoes(&mut first, 1, "client 1");
    agent.wait_listener(listener, "client 1 active", SETTLE, |l| l.active == 1);

    let mut second = connected(bed, &to);
    let sent = second.send(100);
    assert_eq!(sent.sent, 100, "client 2: {sent:?}");
    let row = agent.wait_proxy(&name, "client 2 held", SETTLE, |p| p.held == 1);
    assert_eq!(row.held_total, 1, "{row:?}");
    // Client 1 still works while client 2 is held.
    assert_echoes(&mut first, 1, "client 1 while client 2 is held");

    let read = second.read_to_end(CLOSE_WAIT);
    eprintln!("seen: {read:?}");
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "client 2 should get nothing back, then EOF: {read:?}"
    );
    assert!(
        (1800..=4000).contains(&read.since_connect_ms),
        "client 2 closed {} ms after its connect, want ~2000: {read:?}",
        read.since_connect_ms
    );

    let proxy = agent.wait_proxy(&name, "nothing held", SETTLE, |p| p.held == 0);
    assert_eq!(
        (
            proxy.held_total,
            proxy.accepted_total,
            proxy.active,
            proxy.bytes_to_upstream_total,
            proxy.bytes_to_downstream_total
        ),
        // Only client 1's two bytes went upstream; client 2's 100 went nowhere.
        (1, 1, 1, 2, 2),
        "{proxy:?}"
    );
    assert_eq!(
        pb.upstream_established(),
        1,
        "only client 1 reached the upstream"
    );
    let row = agent.listener(listener);
    assert_eq!(
        (row.active, row.admitted_total, row.held_total, row.pending),
        (1, 1, 1, 0),
        "{row:?}"
    );
    assert_echoes(&mut first, 1, "client 1 after client 2 was closed");
    first.close();
    let row = agent.wait_listener(listener, "0 active", SETTLE, |l| l.active == 0);
    assert_eq!((row.admitted_total, row.held_total), (1, 1), "{row:?}");

    // The slot is free again: the next client is forwarded, not held.
    let mut third = connected(bed, &to);
    assert_echoes(&mut third, 1, "client 3 after client 1 closed");
    let row = agent.wait_listener(listener, "client 3 active", SETTLE, |l| l.active == 1);
    assert_eq!((row.admitted_total, row.held_total), (2, 1), "{row:?}");
    let proxy = agent.proxy(&name);
    assert_eq!(
        (
            proxy.held,
            proxy.held_total,
            proxy.accepted_total,
            proxy.active
        ),
        (0, 1, 2, 1),
        "{proxy:?}"
    );
    // The other family shares the slot: with it taken by an IPv6 (or IPv4) client, a client
    // of the other family is held and closed too.
    let other_family = if v6 {
        addr(bed.srv_v4, PORT)
    } else {
        addr(bed.srv_v6, PORT)
    };
    let mut other = connected(bed, &other_family);
    assert_eq!(other.send(10).sent, 10);
    let read = other.read_to_end(CLOSE_WAIT);
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "a client of the other family should be held, then closed: {read:?}"
    );
    let proxy = agent.wait_proxy(&name, "nothing held", SETTLE, |p| p.held == 0);
    assert_eq!(
        (proxy.held_total, proxy.accepted_total, proxy.active),
        (2, 2, 1),
        "{proxy:?}"
    );
    third.close();
    agent.wait_listener(listener, "0 active", SETTLE, |l| l.active == 0);
}

/// The `close` action set on a running agent (`limiter set`) for a proxied listener that
/// started with `drop`: from then on, over-limit connections are held and closed after the
/// delay, and the one admitted connection is untouched.
#[test]
fn root_proxy_close_action_set_live() {
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let spec = format!("{listener}={}", pb.upstream);
    let agent = Agent::start(
        bed,
        &[
            "--proxy",
            &spec,
            "--limit",
            &format!("{listener}=5:drop"),
            "--delay-before-close",
            "1s",
        ],
    );
    let name = pb.proxy_name(&listener);
    let to = addr(bed.srv_v4, PORT);
    let mut first = connected(bed, &to);
    assert_echoes(&mut first, 1, "client 1");
    agent.wait_listener(&listener, "1 active", SETTLE, |l| l.active == 1);

    agent.set(&format!("{listener}=1:close"));
    let row = agent.listener(&listener);
    assert_eq!((row.limit, row.action.as_str()), (1, "close"), "{row:?}");
    let mut second = connected(bed, &to);
    assert_eq!(second.send(10).sent, 10);
    let read = second.read_to_end(CLOSE_WAIT);
    eprintln!("seen: {read:?}");
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "client 2 should be held, then closed: {read:?}"
    );
    assert!(
        (800..=3000).contains(&read.since_connect_ms),
        "client 2 closed {} ms after its connect, want ~1000: {read:?}",
        read.since_connect_ms
    );
    assert_echoes(&mut first, 1, "client 1 after the change");
    let proxy = agent.wait_proxy(&name, "nothing held", SETTLE, |p| p.held == 0);
    assert_eq!(
        (
            proxy.held_total,
            proxy.accepted_total,
            proxy.active,
            proxy.bytes_to_upstream_total
        ),
        (1, 1, 1, 2),
        "{proxy:?}"
    );
    let row = agent.listener(&listener);
    assert_eq!(
        (row.active, row.admitted_total, row.held_total),
        (1, 1, 1),
        "{row:?}"
    );
    first.close();
}

/// `--connect-timeout 1s` with an upstream that never answers a SYN: the client's connection
/// (accepted by the proxy) is closed after ~1 s, counted as a connect timeout.
#[test]
fn root_proxy_connect_timeout_closes_the_client() {
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    pb.ups.drop_syns_to(bed, UPSTREAM_PORT);
    let spec = format!("{PORT}={}", pb.upstream);
    let agent = Agent::start(bed, &["--proxy", &spec, "--connect-timeout", "1s"]);
    let name = pb.proxy_name(&PORT.to_string());

    let mut session = connected(bed, &addr(bed.srv_v4, PORT));
    let read = session.read_to_end(CLOSE_WAIT);
    eprintln!("seen: {read:?}");
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "the client should be closed after the upstream connect timed out: {read:?}"
    );
    assert!(
        (800..=3000).contains(&read.since_connect_ms),
        "closed {} ms after the connect, want ~1000: {read:?}",
        read.since_connect_ms
    );
    let row = agent.proxy(&name);
    assert_eq!(
        (
            row.upstream_connect_timeouts_total,
            row.upstream_connect_failures_total,
            row.accepted_total,
            row.active
        ),
        (1, 0, 1, 0),
        "{row:?}"
    );
    session.close();
}

/// An upstream that refuses the connection (nothing listens there): the client is closed at
/// once, counted as a connect failure.
#[test]
fn root_proxy_refused_upstream_closes_the_client() {
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    let refusing = addr(pb.ups.ups_v4, UPSTREAM_PORT + 1);
    let spec = format!("{PORT}={refusing}");
    let agent = Agent::start(bed, &["--proxy", &spec]);
    let name = format!("{PORT}={refusing}");

    let mut session = connected(bed, &addr(bed.srv_v6, PORT));
    let read = session.read_to_end(CLOSE_WAIT);
    eprintln!("seen: {read:?}");
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "the client should be closed when the upstream refuses: {read:?}"
    );
    assert!(
        read.since_connect_ms < 1000,
        "closed only {} ms after the connect: {read:?}",
        read.since_connect_ms
    );
    let row = agent.proxy(&name);
    assert_eq!(
        (
            row.upstream_connect_failures_total,
            row.upstream_connect_timeouts_total,
            row.accepted_total,
            row.active
        ),
        (1, 0, 1, 0),
        "{row:?}"
    );
    session.close();
}

/// `--max-upstream-connections 2`: with 2 proxied connections held, a 3rd client is closed at
/// once (overflow, nothing queued); once one of the 2 closes, a new client gets through.
#[test]
fn root_proxy_max_upstream_connections_overflow() {
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    let spec = format!("{PORT}={}", pb.upstream);
    let agent = Agent::start(bed, &["--proxy", &spec, "--max-upstream-connections", "2"]);
    let name = pb.proxy_name(&PORT.to_string());
    let to = addr(bed.srv_v4, PORT);

    let mut first = connected(bed, &to);
    let mut second = connected(bed, &to);
    assert_echoes(&mut first, 1, "client 1");
    assert_echoes(&mut second, 1, "client 2");
    wait_active(&agent, &name, 2);

    let mut third = connected(bed, &to);
    let read = third.read_to_end(CLOSE_WAIT);
    eprintln!("seen: {read:?}");
    assert_eq!(
        (read.received, read.end.as_str()),
        (0, "eof"),
        "client 3 should be closed at once: {read:?}"
    );
    assert!(
        read.since_connect_ms < 1000,
        "client 3 closed only after {} ms: {read:?}",
        read.since_connect_ms
    );
    third.close();
    let row = agent.proxy(&name);
    assert_eq!(
        (row.upstream_overflow_total, row.active, row.accepted_total),
        (1, 2, 3),
        "{row:?}"
    );
    assert_eq!(pb.upstream_established(), 2);

    first.close();
    wait_active(&agent, &name, 1);
    let mut fourth = connected(bed, &to);
    assert_echoes(&mut fourth, 1, "client 4 after client 1 closed");
    assert_echoes(&mut second, 1, "client 2 still");
    let row = wait_active(&agent, &name, 2);
    assert_eq!(
        (row.upstream_overflow_total, row.accepted_total),
        (1, 4),
        "{row:?}"
    );
    fourth.close();
    second.close();
    wait_active(&agent, &name, 0);
}

/// `limiter run` with a bad flag: exit 2, one `limiter: error:` line naming it, nothing left.
fn expect_usage_error(args: &[&str], needle: &str) {
    expect_refusal(args, 2, &[needle]);
}

#[test]
fn root_proxy_rejects_an_upstream_that_is_not_an_ip() {
    expect_usage_error(&["--proxy", "8000=not-an-ip:1"], "--proxy");
}

#[test]
fn root_proxy_close_action_needs_a_proxy() {
    expect_usage_error(&["--limit", "8000=1:close"], "--limit");
}

/// Flags that do not fit the proxy as written: each an error naming both flags.
#[test]
fn root_proxy_limits_that_do_not_fit_the_proxy_are_refused() {
    // close on every address of port 8000, but the proxy accepts only IPv4.
    let line = refusal_line(
        &[
            "--proxy",
            "0.0.0.0:8000=198.18.0.2:1025",
            "--limit",
            "8000=1:close",
        ],
        2,
        &["--limit"],
    );
    for needle in [
        "--limit '8000=1:close'",
        "--proxy '0.0.0.0:8000=198.18.0.2:1025'",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line:?}");
    }
    // Two limits written differently for the same dual-stack proxy.
    let line = refusal_line(
        &[
            "--proxy",
            "[::]:8000=198.18.0.2:1025",
            "--limit",
            "[::]:8000=1:close",
            "--limit",
            "8000=2:drop",
        ],
        2,
        &["--limit"],
    );
    for needle in [
        "--limit '[::]:8000=1:close'",
        "--limit '8000=2:drop'",
        "--proxy '",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line:?}");
    }
}

#[test]
fn root_proxy_rejects_a_zero_connect_timeout() {
    expect_usage_error(
        &["--proxy", "8000=198.18.0.2:1025", "--connect-timeout", "0s"],
        "--connect-timeout",
    );
}

/// The `close` action needs a proxy on the listener at run time too: `limiter set` must refuse
/// it for a listener without one (as `run --limit` does), because the kernel admits every
/// handshake of a `close` listener and leaves the over-limit ones to a proxy to close; without
/// a proxy nothing would, and the limit would silently stop being enforced.
#[test]
fn root_proxy_set_close_without_a_proxy_is_refused() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=5:drop")]);

    let output = agent.cli(&["set", &format!("{listener}=1:close")]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let row = agent.listener(&listener);
    // What the client sees when it is not refused: both connect, one of them uncounted.
    let seen = if output.status.success() {
        let hold = Hold::open(&bed, 2, &server, 2000);
        let now = agent.listener(&listener);
        format!("2 clients then: {:?}; listener row: {now:?}", hold.result)
    } else {
        String::new()
    };
    assert!(
        !output.status.success(),
        "`limiter set {listener}=1:close` without a --proxy on {listener} was accepted \
         (stdout {:?}); row after: {row:?}; {seen}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.starts_with("limiter: error:") && stderr.contains("close"),
        "the refusal should say why: {stderr:?}"
    );
    assert_eq!((row.limit, row.action.as_str()), (5, "drop"), "{row:?}");
}

/// SIGTERM while the proxy forwards one connection and holds another: the agent exits 0 in
/// time, detaches, and both clients see their connections end.
#[test]
fn root_proxy_sigterm_with_connections_open() {
    let pb = ProxyBed::new(ServerMode::Echo);
    let bed = &pb.bed;
    let listener = PORT.to_string();
    let spec = format!("{listener}={}", pb.upstream);
    let agent = Agent::start(
        bed,
        &[
            "--proxy",
            &spec,
            "--limit",
            &format!("{listener}=1:close"),
            "--delay-before-close",
            "60s",
        ],
    );
    let name = pb.proxy_name(&listener);
    let to = addr(bed.srv_v4, PORT);
    let mut forwarded = connected(bed, &to);
    assert_echoes(&mut forwarded, 1, "forwarded client");
    let mut held = connected(bed, &to);
    agent.wait_proxy(&name, "1 active, 1 held", SETTLE, |p| {
        p.active == 1 && p.held == 1
    });

    let status = agent.stop(libc::SIGTERM);
    assert!(
        status.success(),
        "agent exit status {status} after SIGTERM; stderr: {:?}",
        agent.stderr()
    );
    bed.assert_no_xdp("after SIGTERM");
    for (what, session) in [("forwarded", &mut forwarded), ("held", &mut held)] {
        let read = session.read_to_end(CLOSE_WAIT);
        assert!(
            read.end == "eof" || read.end == "reset",
            "{what} client's connection should end with the agent: {read:?}"
        );
    }
}
