//! Live changes (design.md semantics 4): `limiter set` raises or lowers a limit at once,
//! lowering below the current count keeps established connections and refuses new ones, and
//! `limiter unset` lifts the limit. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);

#[test]
fn root_set_raises_and_lowers_at_once() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=2:reset")]);

    let mut a = Hold::open(&bed, 4, &server, 5000);
    assert_eq!(
        (a.result.connected, a.result.refused),
        (2, 2),
        "limit 2: {:?}",
        a.result
    );
    agent.wait_listener(&listener, "2 active", SETTLE, |l| l.active == 2);

    // Raise: in force as soon as `set` returns.
    agent.set(&format!("{listener}=5:reset"));
    assert_eq!(agent.listener(&listener).limit, 5);
    let mut b = Hold::open(&bed, 4, &server, 5000);
    assert_eq!(
        (b.result.connected, b.result.refused),
        (3, 1),
        "limit 5: {:?}",
        b.result
    );
    agent.wait_listener(&listener, "5 active", SETTLE, |l| l.active == 5);

    // Lower below the count: the 5 established connections stay and still echo...
    agent.set(&format!("{listener}=1:reset"));
    let row = agent.listener(&listener);
    assert_eq!((row.limit, row.active), (1, 5), "{row:?}");
    assert_eq!(a.ping().echoed, 2);
    assert_eq!(b.ping().echoed, 3);
    // ...and new ones are refused until the count falls under the limit.
    let c = Hold::open(&bed, 1, &server, 5000);
    assert_eq!(
        c.result.refused, 1,
        "over the lowered limit: {:?}",
        c.result
    );
    b.close();
    agent.wait_listener(&listener, "2 active", SETTLE, |l| l.active == 2);
    let d = Hold::open(&bed, 1, &server, 5000);
    assert_eq!(d.result.refused, 1, "still 2 >= 1: {:?}", d.result);
    a.close();
    agent.wait_listener(&listener, "0 active", SETTLE, |l| l.active == 0);
    let e = Hold::open(&bed, 2, &server, 5000);
    assert_eq!(
        (e.result.connected, e.result.refused),
        (1, 1),
        "limit 1 again: {:?}",
        e.result
    );
    let row = agent.wait_listener(&listener, "1 active", SETTLE, |l| l.active == 1);
    assert_eq!(row.admitted_total, 6, "{row:?}");
}

#[test]
fn root_unset_lifts_the_limit() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=1:reset")]);
    let first = Hold::open(&bed, 3, &server, 5000);
    assert_eq!(
        (first.result.connected, first.result.refused),
        (1, 2),
        "{:?}",
        first.result
    );

    agent.unset(&listener);
    let stats = agent.stats();
    assert!(
        stats.listener(&listener).is_none(),
        "unset listener still listed: {stats:?}"
    );
    let mut after = Hold::open(&bed, 20, &server, 5000);
    assert_eq!(
        after.result.connected, 20,
        "no limit any more: {:?}",
        after.result
    );
    assert_eq!(after.ping().echoed, 20);
    assert_eq!(
        agent.stats().packets.syn_refused_total,
        2,
        "only the two refusals before unset"
    );

    // Set again: the listener comes back and counts from the kernel's state onwards.
    agent.set(&format!("{listener}=2:reset"));
    assert_eq!(agent.listener(&listener).limit, 2);
}

/// `set` on a listener that had no limit adds one, live.
#[test]
fn root_set_adds_a_listener() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let other = format!("{}:{}", bed.srv_v4, PORT + 1);
    let agent = Agent::start(&bed, &["--limit", &format!("{other}=1")]);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    agent.set(&format!("{listener}=2:reset"));
    let hold = Hold::open(&bed, 4, &server, 5000);
    assert_eq!(
        (hold.result.connected, hold.result.refused),
        (2, 2),
        "{:?}",
        hold.result
    );
    let row = agent.wait_listener(&listener, "2 active", SETTLE, |l| l.active == 2);
    assert_eq!(row.admitted_total, 2, "{row:?}");
}

/// `--max-listeners` sizes the agent's own maps (their listener slots are per CPU): with 2, a
/// third listener set live is refused with an error naming the flag, nothing changes, and once
/// one is unset its slot takes another.
#[test]
fn root_max_listeners_sizes_the_maps_and_set_beyond_it_is_refused() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let agent = Agent::start(
        &bed,
        &[
            "--max-listeners",
            "2",
            "--limit",
            "9000=1",
            "--limit",
            "9001=1",
        ],
    );
    let slots: Vec<u32> = agent
        .maps()
        .into_iter()
        .filter(|(name, _)| name == "SLOT_STATS" || name == "SLOT_USAGE")
        .map(|(_, entries)| entries)
        .collect();
    assert_eq!(slots, [2, 2], "{:?}", agent.maps());

    let listener = format!("{}:{PORT}", bed.srv_v4);
    let refused = agent.cli(&["set", &format!("{listener}=1:reset")]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("no free listener slot (2 in use")
            && stderr.contains("--max-listeners"),
        "{}: {stderr}",
        refused.status
    );
    assert!(agent.stats().listener(&listener).is_none());
    let open = Hold::open(&bed, 2, &server, 5000);
    assert_eq!(open.result.connected, 2, "not limited: {:?}", open.result);
    drop(open);

    agent.unset("9001");
    agent.set(&format!("{listener}=1:reset"));
    let hold = Hold::open(&bed, 2, &server, 5000);
    assert_eq!(
        (hold.result.connected, hold.result.refused),
        (1, 1),
        "{:?}",
        hold.result
    );
}

/// Two listeners on one port (the exact address and the bare port), then each removed in turn:
/// the most specific one always decides, and the one left keeps limiting on its own (a port
/// with one listener is looked up by its slot, several by hash; the agent switches between
/// them as listeners come and go).
#[test]
fn root_listeners_sharing_a_port_come_and_go() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let exact = format!("{}:{PORT}", bed.srv_v4);
    let bare = PORT.to_string();
    let agent = Agent::start(&bed, &["--limit", &format!("{bare}=3:reset")]);
    // Opens `n` connections, closes them, and waits until `listeners` count none again.
    let open = |n: u32, listeners: &[&str]| {
        let hold = Hold::open(&bed, n, &server, 5000);
        let got = (hold.result.connected, hold.result.refused);
        drop(hold);
        for listener in listeners {
            agent.wait_listener(listener, "0 active", SETTLE, |l| l.active == 0);
        }
        got
    };

    assert_eq!(open(4, &[&bare]), (3, 1), "bare port alone, limit 3");
    agent.set(&format!("{exact}=1:reset"));
    assert_eq!(
        open(3, &[&exact, &bare]),
        (1, 2),
        "the exact address wins over the bare port"
    );
    agent.unset(&bare);
    assert_eq!(open(2, &[&exact]), (1, 1), "the exact address alone");
    agent.set(&format!("{bare}=2:reset"));
    agent.unset(&exact);
    assert_eq!(
        open(3, &[&bare]),
        (2, 1),
        "the bare port alone again, limit 2"
    );
    agent.unset(&bare);
    assert_eq!(open(5, &[]), (5, 0), "no listener on the port");
}
