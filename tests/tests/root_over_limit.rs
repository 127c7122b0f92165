//! Over the limit (design.md semantics 3): `drop` is silent (the connect times out, no RST
//! comes back), `reset` answers from XDP so the client fails at once. The client's end of the
//! veth runs nothing (as a pod or a client namespace): the agent itself must make its RSTs
//! arrive there, and refuses `reset` where it cannot. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
    refusal::{expect_refusal, refusal_line},
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);

/// An echo server on the server's IPv4 address: its address, which is also its listener.
fn v4_echo(bed: &TestBed) -> (String, EchoServer) {
    let server = addr(bed.srv_v4, PORT);
    let echo = EchoServer::start(bed, Side::Server, &server, ServerMode::Echo);
    (server, echo)
}

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
    let (server, _echo) = v4_echo(&bed);
    let listener = server.clone();
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
    // The log says how: generic mode on the veth, and why.
    let log = agent.stderr().join("\n");
    assert!(
        log.lines().any(|l| l.contains("attached: admitting SYNs")
            && l.contains(&bed.srv_veth)
            && l.contains("generic")
            && l.contains("veth")),
        "the agent should log that it attached generic on the veth, and why:\n{log}"
    );
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
    let (server, _echo) = v4_echo(&bed);
    let listener = server.clone();
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

/// `--xdp-mode native` on a veth cannot deliver a RST to a peer that runs no XDP: `reset` there,
/// by a limit's action or by `--over-limit`, is refused with an error naming both flags and the
/// interface, and nothing is left attached.
#[test]
fn root_reset_with_native_xdp_on_a_veth_is_refused() {
    for args in [
        &["--limit", "8000=1:reset", "--xdp-mode", "native"][..],
        &[
            "--limit",
            "8000=1",
            "--over-limit",
            "reset",
            "--xdp-mode",
            "native",
        ][..],
        &["--over-limit", "reset", "--xdp-mode", "native"][..],
    ] {
        expect_refusal(args, 2, &["--xdp-mode native on the veth"]);
    }
    // Each error names the flag that asked for reset, the interface, and what to do.
    let line = refusal_line(
        &["--limit", "8000=1:reset", "--xdp-mode", "native"],
        2,
        &["--xdp-mode native on the veth"],
    );
    for needle in ["--limit '8000=1:reset'", "--xdp-mode native", "generic"] {
        assert!(line.contains(needle), "{needle:?} missing from {line:?}");
    }
}

/// Native mode on a veth still serves `drop`; turning a limit to `reset` live is refused there,
/// and the limit stays as it was.
#[test]
fn root_live_reset_on_a_native_veth_is_refused() {
    let bed = TestBed::new();
    let (server, _echo) = v4_echo(&bed);
    let listener = server.clone();
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            &format!("{listener}=1:drop"),
            "--xdp-mode",
            "native",
        ],
    );
    let out = agent.cli(&["set", &format!("{listener}=1:reset")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "set to reset was accepted: {stderr}");
    assert!(
        stderr.contains("--xdp-mode native on the veth") && stderr.contains(&bed.srv_veth),
        "{stderr}"
    );
    assert_eq!(agent.listener(&listener).action, "drop");
    let _first = fill(&bed, &agent, &listener, &server);
    let refused = Hold::open(&bed, 1, &server, 2000);
    assert_eq!(refused.result.timed_out, 1, "{:?}", refused.result);
}

/// `--veth-peer-runs-xdp`: the user vouches that the peer runs XDP, so native mode may serve
/// `reset` on the veth; without native mode the flag is an error naming both flags.
#[test]
fn root_veth_peer_runs_xdp_allows_native_reset() {
    let bed = TestBed::new();
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            "8000=1:reset",
            "--xdp-mode",
            "native",
            "--veth-peer-runs-xdp",
        ],
    );
    let log = agent.stderr().join("\n");
    assert!(
        log.contains("mode=native") && log.contains("--veth-peer-runs-xdp"),
        "{log}"
    );
    drop(agent);
    expect_refusal(
        &["--limit", "8000=1:reset", "--veth-peer-runs-xdp"],
        2,
        &["--veth-peer-runs-xdp: only means something with --xdp-mode native"],
    );
}
