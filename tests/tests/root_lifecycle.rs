//! Lifecycle (design.md semantics 9, interface.md): on SIGINT or SIGTERM the agent exits 0,
//! detaches its XDP program, removes its control socket, and enforces nothing any more.
//! Needs root.
use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
};

const PORT: u16 = 8000;

fn stops_cleanly_on(signal: i32, name: &str) {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=1:reset")]);
    let links = bed.srv_links();
    assert!(
        links.contains("xdp"),
        "XDP not attached while running:\n{links}"
    );
    assert!(
        agent.control_socket().exists(),
        "no control socket while running"
    );
    let held = Hold::open(&bed, 2, &server, 5000);
    assert_eq!(
        (held.result.connected, held.result.refused),
        (1, 1),
        "{:?}",
        held.result
    );

    let status = agent.stop(signal);
    assert_eq!(
        status.code(),
        Some(0),
        "exit on {name}: {status}; stderr {:?}",
        agent.stderr()
    );
    bed.assert_no_xdp(&format!("after {name}"));
    assert!(
        !agent.control_socket().exists(),
        "control socket left behind after {name}"
    );
    // Nothing enforces any more: connections beyond the old limit succeed.
    let after = Hold::open(&bed, 3, &server, 5000);
    assert_eq!(
        after.result.connected, 3,
        "after {name}: {:?}",
        after.result
    );
    // The connection held across the stop is untouched.
    let mut held = held;
    assert_eq!(held.ping().echoed, 1, "after {name}");
}

#[test]
fn root_sigterm_detaches_and_exits_0() {
    stops_cleanly_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn root_sigint_detaches_and_exits_0() {
    stops_cleanly_on(libc::SIGINT, "SIGINT");
}
