//! A limit no socket can hit is reported (design.md: "never silence"): nothing listens on the
//! limited address and port in the agent's network namespace (the classic mistake: a Service
//! or NodePort limited on the node, whose sockets live in a pod). The log names the listener,
//! `limiter stats` shows `listening: false` and says so under the table, and when a server
//! starts listening the agent notices. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, ServerMode, addr},
};

#[test]
fn root_a_limit_nothing_listens_on_is_reported() {
    let bed = TestBed::new();
    let served = addr(bed.srv_v4, 8000);
    let unserved = addr(bed.srv_v4, 30080);
    let _echo = EchoServer::start(&bed, Side::Server, &served, ServerMode::Echo);
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            &format!("{served}=5"),
            "--limit",
            &format!("{unserved}=5"),
        ],
    );
    let stats = agent.stats();
    let (ok, missing) = (
        stats.listener(&served).expect("served listener"),
        stats.listener(&unserved).expect("unserved listener"),
    );
    assert!(ok.listening, "{ok:?}");
    assert!(!missing.listening, "{missing:?}");
    let log = agent.stderr().join("\n");
    assert!(
        log.lines()
            .any(|l| l.contains("nothing listens") && l.contains(&unserved)),
        "the log should name {unserved}:\n{log}"
    );
    // Before `ready`: the operator sees it with the start-up lines.
    let warned = log.find("nothing listens").unwrap();
    assert!(warned < log.find("limiter: ready").unwrap(), "{log}");
    let table = String::from_utf8_lossy(&agent.cli(&["stats"]).stdout).into_owned();
    assert!(
        table.contains(&format!("{unserved}: nothing listens on it")),
        "{table}"
    );

    // The server comes up later: the agent notices within its check interval.
    let _late = EchoServer::start(&bed, Side::Server, &unserved, ServerMode::Echo);
    let row = agent.wait_listener(&unserved, "listening", Duration::from_secs(10), |l| {
        l.listening
    });
    assert!(row.listening);
    let log = agent.stderr().join("\n");
    assert!(
        log.lines()
            .any(|l| l.contains("now listens") && l.contains(&unserved)),
        "{log}"
    );
}
