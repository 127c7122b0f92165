//! Over the limit (design.md semantics 3): `drop` is silent (the connect times out, no RST
//! comes back), `reset` answers from XDP so the client fails at once. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);

/// Fills the listener's single slot with one held connection.
fn fill(bed: &TestBed, agent: &Agent, listener: &str, server: &str) -> Hold {
    let hold = Hold::open(bed, 1, server, 5000);
    assert_eq!(hold.result.connected, 1, "{:?}", hold.result);
    agent.wait_listener(listener, "the slot taken", SETTLE, |l| l.active == 1);
    hold
}

#[test]
fn root_drop_times_out_without_rst() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=1:drop")]);
    let _first = fill(&bed, &agent, &listener, &server);

    let refused = Hold::open(&bed, 1, &server, 2000);
    // Timed out, not "connection refused": no RST arrived.
    assert_eq!(
        (
            refused.result.connected,
            refused.result.refused,
            refused.result.timed_out
        ),
        (0, 0, 1),
        "{:?}",
        refused.result
    );
    let row = agent.listener(&listener);
    assert!(row.refused_drop_total >= 1, "{row:?}");
    assert_eq!(row.refused_reset_total, 0, "{row:?}");
    assert_eq!(row.refused_total, row.refused_drop_total, "{row:?}");
    assert_eq!((row.active, row.admitted_total), (1, 1), "{row:?}");
}

fn reset_refuses_fast(v6: bool) {
    let bed = TestBed::new();
    let server = if v6 {
        addr(bed.srv_v6, PORT)
    } else {
        addr(bed.srv_v4, PORT)
    };
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = server.clone();
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=1:reset")]);
    let _first = fill(&bed, &agent, &listener, &server);

    // A long connect timeout: only a RST can make this fail fast.
    let refused = Hold::open(&bed, 1, &server, 10_000);
    assert_eq!(
        (
            refused.result.connected,
            refused.result.refused,
            refused.result.timed_out
        ),
        (0, 1, 0),
        "{:?}",
        refused.result
    );
    assert!(
        refused.result.max_refused_ms < 1000,
        "refused after {} ms",
        refused.result.max_refused_ms
    );
    let row = agent.listener(&listener);
    assert_eq!(row.refused_reset_total, 1, "{row:?}");
    assert_eq!(
        (row.refused_total, row.refused_drop_total),
        (1, 0),
        "{row:?}"
    );
    assert_eq!((row.active, row.admitted_total), (1, 1), "{row:?}");
    let packets = agent.stats().packets;
    assert_eq!(packets.reset_fallback_drop_total, 0, "{packets:?}");
}

#[test]
fn root_reset_refuses_at_once_ipv4() {
    reset_refuses_fast(false);
}

#[test]
fn root_reset_refuses_at_once_ipv6() {
    reset_refuses_fast(true);
}

/// `--over-limit reset` is the default action for limits without one.
#[test]
fn root_over_limit_flag_sets_the_default_action() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(
        &bed,
        &["--limit", &format!("{listener}=1"), "--over-limit", "reset"],
    );
    assert_eq!(agent.listener(&listener).action, "reset");
    let _first = fill(&bed, &agent, &listener, &server);
    let refused = Hold::open(&bed, 1, &server, 10_000);
    assert_eq!(refused.result.refused, 1, "{:?}", refused.result);
    assert_eq!(agent.listener(&listener).refused_reset_total, 1);
}
