//! Connections that were there first: an agent started without pins, or a limit added live,
//! counts the connections already established on the listener, and uncounts each exactly when
//! it closes. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);

/// Three connections open before the agent starts with a limit of 3: `stats` right after
/// `ready` shows them, a fourth is refused at once, and the count returns to 0 when they close.
#[test]
fn root_connections_open_before_the_agent_count() {
    let bed = TestBed::new();
    let target = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &target, ServerMode::Echo);
    let mut before = Hold::open(&bed, 3, &target, 2000);
    assert_eq!(before.result.connected, 3);
    let agent = Agent::start(&bed, &["--limit", &format!("{target}=3:reset")]);
    let row = agent.listener(&target);
    assert_eq!((row.active, row.preexisting_total), (3, 3), "{row:?}");
    let fourth = Hold::open(&bed, 1, &target, 2000);
    assert_eq!(fourth.result.refused, 1, "{:?}", fourth.result);
    assert_eq!(before.ping().echoed, 3);
    before.close();
    agent.wait_listener(&target, "back to 0", SETTLE, |l| {
        l.active == 0 && l.pending == 0
    });
    let mut after = Hold::open(&bed, 3, &target, 2000);
    assert_eq!(after.ping().echoed, 3, "the 3 places are free again");
    after.close();
    agent.wait_listener(&target, "back to 0", SETTLE, |l| l.active == 0);
}

/// The same for a limit added with `limiter set`, and for a per-source limit added live (the
/// source's connections count for it too).
#[test]
fn root_a_limit_set_live_counts_what_is_open() {
    let bed = TestBed::new();
    let target = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &target, ServerMode::Echo);
    let agent = Agent::start(&bed, &[]);
    let mut before = Hold::open(&bed, 3, &target, 2000);
    assert_eq!(before.result.connected, 3);
    agent.set(&format!("{target}=3:reset"));
    let row = agent.listener(&target);
    assert_eq!((row.active, row.preexisting_total), (3, 3), "{row:?}");
    let fourth = Hold::open(&bed, 1, &target, 2000);
    assert_eq!(fourth.result.refused, 1, "{:?}", fourth.result);

    // A per-source limit of 2 on a source that holds 3: it counts them, and refuses a new one
    // for the source even with the listener's own limit raised.
    agent.set(&format!("{target}=10:reset"));
    let set = agent.cli(&["set", "--per-source", &format!("{target}=2:reset")]);
    assert!(set.status.success(), "{set:?}");
    let row = agent.listener(&target);
    assert_eq!(
        (row.active, row.sources, row.sources_at_limit),
        (3, 1, 1),
        "{row:?}"
    );
    let refused = Hold::open(&bed, 1, &target, 2000);
    assert_eq!(refused.result.refused, 1, "{:?}", refused.result);
    assert_eq!(agent.listener(&target).refused_per_source_total, 1);

    assert_eq!(before.ping().echoed, 3);
    before.close();
    agent.wait_listener(&target, "back to 0", SETTLE, |l| {
        l.active == 0 && l.pending == 0 && l.sources == 0
    });
}
