//! `--iface default-route` (for DaemonSets on nodes whose NICs are named differently): the agent
//! attaches to the interface of its namespace's default route, and says so when there is none.
//! Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
};

const PORT: u16 = 8000;

#[test]
fn root_default_route_keyword_picks_the_routed_interface() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let socket = Agent::socket_path().display().to_string();
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let limit = format!("{listener}=1");
    let args = [
        "run",
        "--iface",
        "default-route",
        "--limit",
        &limit,
        "--control-socket",
        &socket,
        "--metrics-addr",
        "off",
    ];

    // No default route yet: named as the problem, nothing attached.
    let out = Agent::run_to_exit(&bed, &args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let errors = out.error_lines();
    assert!(
        errors.len() == 1 && errors[0].contains("default-route"),
        "{out:?}"
    );
    bed.assert_no_xdp("without a default route");

    let gateway = bed.cli_v4.to_string();
    bed.exec_ok(
        Side::Server,
        "ip",
        &["route", "add", "default", "via", &gateway],
    );
    let proc = bed.spawn(
        "limiter run --iface default-route",
        Agent::command(&bed, &args),
    );
    let ready = proc
        .stderr
        .next_matching(Duration::from_secs(30), |l| l == "limiter: ready");
    assert!(ready.is_some(), "{}", proc.transcript());
    let attached = proc.stderr.all().join("\n");
    assert!(
        attached.contains(&format!("iface={}", bed.srv_veth)),
        "{attached}"
    );
    assert!(bed.srv_links().contains("xdp"), "{}", bed.srv_links());
    let held = Hold::open(&bed, 2, &server, 1500);
    assert_eq!(
        (held.result.connected, held.result.timed_out),
        (1, 1),
        "{:?}",
        held.result
    );
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(15)).code(), Some(0));
    bed.assert_no_xdp("after SIGTERM");
}
