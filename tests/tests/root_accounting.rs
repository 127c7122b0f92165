//! Accounting (design.md semantics 1): a connection counts from ESTABLISHED until its kernel
//! socket reaches CLOSE, whichever side closes and however; every decrement matches one
//! increment, so the count returns to exactly 0; sockets of other namespaces never count.
//! Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr, churn},
    eventually,
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);

/// Bed, echo server on the server's IPv4 address, agent limiting that listener to `limit`.
fn setup(mode: ServerMode, limit: &str) -> (TestBed, EchoServer, Agent, String) {
    let bed = TestBed::new();
    let server = EchoServer::start(&bed, Side::Server, &addr(bed.srv_v4, PORT), mode);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}={limit}")]);
    (bed, server, agent, listener)
}

/// Opens `n` connections that must all succeed and waits until the agent counts them.
fn open_counted(bed: &TestBed, agent: &Agent, listener: &str, n: u64) -> Hold {
    let hold = Hold::open(bed, n as u32, &addr(bed.srv_v4, PORT), 5000);
    assert_eq!(hold.result.connected, n, "connects: {:?}", hold.result);
    agent.wait_listener(
        listener,
        &format!("{n} active, {n} admitted, none pending"),
        SETTLE,
        |l| l.active == n && l.admitted_total == n && l.pending == 0,
    );
    hold
}

fn assert_back_to_zero(bed: &TestBed, agent: &Agent, listener: &str, admitted: u64) {
    let row = agent.wait_listener(listener, "active back to 0", SETTLE, |l| l.active == 0);
    assert_eq!(
        row.admitted_total, admitted,
        "admitted_total after close: {row:?}"
    );
    assert_eq!(row.pending, 0, "pending after close: {row:?}");
    assert_eq!(row.refused_total, 0, "nothing was over the limit: {row:?}");
    eventually("no ESTABLISHED server sockets", SETTLE, || {
        match bed.established_on(PORT) {
            0 => Ok(()),
            n => Err(format!("{n} established")),
        }
    });
}

#[test]
fn root_client_closes_first() {
    let (bed, _server, agent, listener) = setup(ServerMode::Echo, "5");
    let hold = open_counted(&bed, &agent, &listener, 3);
    // FIN from the client; the echo server sees EOF and closes its end.
    hold.close();
    assert_back_to_zero(&bed, &agent, &listener, 3);
}

#[test]
fn root_server_closes_first() {
    let (bed, _server, agent, listener) = setup(ServerMode::CloseOnData, "5");
    let mut hold = open_counted(&bed, &agent, &listener, 3);
    // The server closes each connection when it gets a byte; the client still holds its end.
    let ping = hold.ping();
    assert_eq!(
        (ping.echoed, ping.failed),
        (0, 3),
        "server should have closed: {ping:?}"
    );
    // The server's sockets reach CLOSE (FIN_WAIT2 -> TIME_WAIT) without the client closing.
    let row = agent.wait_listener(&listener, "active 0 after the server closed", SETTLE, |l| {
        l.active == 0
    });
    assert_eq!(row.admitted_total, 3, "{row:?}");
    hold.close();
    assert_back_to_zero(&bed, &agent, &listener, 3);
}

#[test]
fn root_client_resets() {
    let (bed, _server, agent, listener) = setup(ServerMode::Echo, "5");
    let hold = open_counted(&bed, &agent, &listener, 3);
    // SO_LINGER 0: the client's close sends a RST; the server socket goes straight to CLOSE.
    hold.reset();
    assert_back_to_zero(&bed, &agent, &listener, 3);
}

/// 20,000 short connections from 8 concurrent clients against a limit of 10: some attempts are
/// refused (a server socket lingers a moment after its client closes) and retried, every
/// success is counted exactly once, and the count returns to exactly 0.
#[test]
fn root_churn_returns_to_zero() {
    const TOTAL: u64 = 20_000;
    // `reset` so refused connects fail at once instead of waiting for SYN retransmits.
    let (bed, _server, agent, listener) = setup(ServerMode::Echo, "10:reset");
    let result = churn(
        &bed,
        TOTAL,
        8,
        &addr(bed.srv_v4, PORT),
        3000,
        Duration::from_secs(300),
    );
    let row = agent.wait_listener(
        &listener,
        "active 0 after churn",
        Duration::from_secs(60),
        |l| l.active == 0 && l.pending == 0,
    );
    let stats = agent.stats();
    println!(
        "churn: {result:?}\nlistener: {row:?}\npackets: {:?}",
        stats.packets
    );
    assert!(
        !result.stopped_by_time,
        "churn did not finish in time: {result:?}"
    );
    assert_eq!(result.succeeded, TOTAL, "{result:?}");
    assert_eq!(
        row.admitted_total, result.succeeded,
        "admitted_total vs successful connects"
    );
    // Each failed connect is exactly one SYN answered with a RST.
    assert_eq!(
        row.refused_reset_total, result.failed,
        "refused vs failed connects: {result:?}"
    );
    assert_eq!(row.refused_total, row.refused_reset_total, "{row:?}");
    assert_eq!(
        row.unreserved_total, 0,
        "every counted connection had a reservation: {row:?}"
    );
    eventually("no ESTABLISHED server sockets", SETTLE, || {
        match bed.established_on(PORT) {
            0 => Ok(()),
            n => Err(format!("{n} established")),
        }
    });
}

/// A server on the same port in ANOTHER namespace (the client's) is not counted, with
/// connections to it from its own namespace and from the agent's.
#[test]
fn root_other_namespace_not_counted() {
    let bed = TestBed::new();
    let listener = PORT.to_string();
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=5")]);
    let _other = EchoServer::start(
        &bed,
        Side::Client,
        &addr(bed.cli_v4, PORT),
        ServerMode::Echo,
    );
    let other_addr = addr(bed.cli_v4, PORT);
    let from_inside = Hold::open_from(&bed, Side::Client, 2, &other_addr, 5000);
    let from_agent_ns = Hold::open_from(&bed, Side::Server, 2, &other_addr, 5000);
    assert_eq!(from_inside.result.connected, 2, "{:?}", from_inside.result);
    assert_eq!(
        from_agent_ns.result.connected, 2,
        "{:?}",
        from_agent_ns.result
    );

    // One connection that does count, so the agent has certainly processed the earlier events
    // by the time it shows this one.
    let _server = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, PORT),
        ServerMode::Echo,
    );
    let ours = Hold::open(&bed, 1, &addr(bed.srv_v4, PORT), 5000);
    assert_eq!(ours.result.connected, 1, "{:?}", ours.result);
    let row = agent.wait_listener(&listener, "our one connection counted", SETTLE, |l| {
        l.admitted_total >= 1
    });
    assert_eq!(row.active, 1, "only the agent's namespace counts: {row:?}");
    assert_eq!(
        row.admitted_total, 1,
        "only the agent's namespace counts: {row:?}"
    );
    assert_eq!(row.unreserved_total, 0, "{row:?}");
}
