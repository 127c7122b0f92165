//! Per-source limits (`--limit-per-source`, nftables' `ct count` per saddr, nginx's limit_conn
//! per address): at most N active connections from one client address, an IPv4 address or an
//! IPv6 /64, exact, independent of the listener's own limit; forged sources never take a place.
//! Needs root.
use std::{net::IpAddr, time::Duration};

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
    flood::{Flood, probe},
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);

/// Two IPv4 clients against a per-source limit of 2: each gets exactly 2, one after the other
/// (the third is refused at the SYN) and all at once (the ones too many, found when their
/// handshake completes, are reset at once).
#[test]
fn root_each_ipv4_source_gets_exactly_its_limit() {
    let bed = TestBed::new();
    let second = second_client(&bed);
    let (_server, listener, agent) =
        per_source_agent(&bed, &addr(bed.srv_v4, PORT), "2:reset", &[]);
    let target = addr(bed.srv_v4, PORT);

    // One after the other: the third connect from a source is refused at XDP.
    let first = Hold::open(&bed, 1, &target, 2000);
    let first_again = Hold::open(&bed, 1, &target, 2000);
    assert_eq!(first.result.connected + first_again.result.connected, 2);
    let refused = Hold::open(&bed, 1, &target, 2000);
    assert_eq!(refused.result.refused, 1, "{:?}", refused.result);
    // Another client is not affected by the first one's connections, all at once.
    let mut burst = Hold::open_as(&bed, second, 6, &target, 2000);
    let ping = burst.ping();
    assert_eq!(ping.echoed, 2, "exactly 2 from the second source: {ping:?}");
    let row = agent.wait_listener(&listener, "4 active, 2 sources at the limit", SETTLE, |l| {
        l.active == 4 && l.sources_at_limit == 2
    });
    assert_eq!(row.sources, 2, "{row:?}");
    // The burst's 4 too many: refused at the SYN when the first two had completed their
    // handshakes already, reset when their handshakes completed together.
    assert_eq!(
        row.refused_per_source_total + row.reset_after_handshake_per_source_total,
        1 + 4,
        "{row:?}"
    );
    assert_eq!(row.refused_total, row.refused_per_source_total, "{row:?}");

    for held in [first, first_again, burst] {
        held.close();
    }
    let row = agent.wait_listener(&listener, "back to 0", SETTLE, |l| {
        l.active == 0 && l.pending == 0 && l.sources == 0
    });
    assert_eq!(row.sources_at_limit, 0, "{row:?}");
    // Every place was given back: the first source gets its 2 again.
    let again = Hold::open(&bed, 2, &target, 2000);
    let mut again = again;
    assert_eq!(again.ping().echoed, 2);
    again.close();
}

/// Connections whose SYNs all passed before any was counted (here: over loopback, where no
/// XDP runs, so only the count at the completed handshake decides) are held to the limit
/// exactly: the ones too many are reset at once, never left open.
#[test]
fn root_the_ones_too_many_are_reset_after_the_handshake() {
    let bed = TestBed::new();
    let (_server, listener, agent) = per_source_agent(&bed, &addr(bed.srv_v4, PORT), "2:drop", &[]);
    let mut burst = Hold::open_from(&bed, Side::Server, 5, &addr(bed.srv_v4, PORT), 2000);
    // The agent resets them from user space, as the kernel hands them over: wait until it says
    // it has (a ping sent before that can still be echoed on a loaded machine), then check that
    // they are really gone.
    let row = agent.wait_listener(&listener, "2 active", SETTLE, |l| {
        l.active == 2 && l.reset_after_handshake_per_source_total == 3
    });
    assert_eq!((row.sources, row.sources_at_limit), (1, 1), "{row:?}");
    let ping = burst.ping();
    assert_eq!(ping.echoed, 2, "exactly 2 stay open: {ping:?}");
    burst.close();
    agent.wait_listener(&listener, "back to 0", SETTLE, |l| {
        l.active == 0 && l.sources == 0
    });
}

/// IPv6 sources are /64s: two addresses in one /64 share its limit; another /64 has its own.
#[test]
fn root_an_ipv6_source_is_a_64() {
    let bed = TestBed::new();
    let mut segments = bed.cli_v6.segments();
    segments[7] = 3;
    let same_64 = IpAddr::from(std::net::Ipv6Addr::from(segments));
    let other_64: IpAddr = "fd00:1e:57:ffff::2".parse().unwrap();
    bed.add_client_address(same_64);
    bed.add_client_address(other_64);
    let (_server, listener, agent) =
        per_source_agent(&bed, &addr(bed.srv_v6, PORT), "2:reset", &[]);
    let target = addr(bed.srv_v6, PORT);

    let mut mine = Hold::open_as(&bed, bed.cli_v6.into(), 1, &target, 2000);
    let mut neighbour = Hold::open_as(&bed, same_64, 1, &target, 2000);
    assert_eq!(mine.ping().echoed + neighbour.ping().echoed, 2);
    let third = Hold::open_as(&bed, same_64, 1, &target, 2000);
    assert_eq!(
        third.result.refused, 1,
        "a third from the same /64: {:?}",
        third.result
    );
    let mut other = Hold::open_as(&bed, other_64, 2, &target, 2000);
    assert_eq!(other.ping().echoed, 2, "another /64 has its own 2");
    let row = agent.wait_listener(&listener, "4 active", SETTLE, |l| l.active == 4);
    assert_eq!((row.sources, row.sources_at_limit), (2, 2), "{row:?}");
    for held in [mine, neighbour, other] {
        held.close();
    }
    agent.wait_listener(&listener, "back to 0", SETTLE, |l| {
        l.active == 0 && l.sources == 0
    });
}

/// Both limits on one listener: either refuses. A per-source limit set, changed and removed
/// live; dry-run per source counts without refusing.
#[test]
fn root_per_source_and_listener_limits_together_and_live() {
    let bed = TestBed::new();
    let second = second_client(&bed);
    let (_server, listener, agent) = per_source_agent(
        &bed,
        &addr(bed.srv_v4, PORT),
        "1:dry-run",
        &["--limit", &format!("{}:{PORT}=3:reset", bed.srv_v4)],
    );
    let target = addr(bed.srv_v4, PORT);
    // Dry run per source: 2 from one source pass, one counted as would-be-refused.
    let mut mine = Hold::open(&bed, 1, &target, 2000);
    let mut mine_again = Hold::open(&bed, 1, &target, 2000);
    assert_eq!(mine.ping().echoed + mine_again.ping().echoed, 2);
    let row = agent.wait_listener(&listener, "2 active", SETTLE, |l| l.active == 2);
    assert_eq!(row.dry_run_would_refuse_total, 1, "{row:?}");
    assert_eq!(row.per_source_action.as_deref(), Some("dry-run"), "{row:?}");
    // The listener's own limit (3) refuses the second source's second connection.
    let mut theirs = Hold::open_as(&bed, second, 2, &target, 2000);
    assert_eq!(theirs.ping().echoed, 1, "{:?}", theirs.result);
    let row = agent.wait_listener(&listener, "3 active", SETTLE, |l| l.active == 3);
    assert_eq!(row.refused_per_source_total, 0, "{row:?}");
    assert!(row.refused_total >= 1, "{row:?}");

    // Live: a real per-source limit of 1; the first source holds 2 already, so it is refused.
    let set = agent.cli(&["set", "--per-source", &format!("{listener}=1:reset")]);
    assert!(set.status.success(), "{set:?}");
    theirs.close();
    let refused = Hold::open(&bed, 1, &target, 2000);
    assert_eq!(refused.result.refused, 1, "{:?}", refused.result);
    let row = agent.listener(&listener);
    assert_eq!(row.per_source_limit, Some(1), "{row:?}");
    assert_eq!(row.refused_per_source_total, 1, "{row:?}");
    // Removed live: the listener's own limit is all that is left.
    let unset = agent.cli(&["unset", "--per-source", &listener]);
    assert!(unset.status.success(), "{unset:?}");
    let row = agent.listener(&listener);
    assert_eq!((row.per_source_limit, row.limit), (None, 3), "{row:?}");
    let mut third = Hold::open(&bed, 1, &target, 2000);
    assert_eq!(third.ping().echoed, 1);
    for held in [mine, mine_again, third] {
        held.close();
    }
    agent.wait_listener(&listener, "back to 0", SETTLE, |l| {
        l.active == 0 && l.sources == 0
    });
}

/// A forged-source flood at a listener with a per-source limit, at 2,000 SYN/s and flat out:
/// forged sources never complete a handshake, so they never take a place, the listener (limited
/// per source only) reserves nothing for their SYNs, and a real client keeps connecting (one
/// connect every 100 ms, 1 s timeout, each closed at once).
#[test]
fn root_forged_sources_take_no_place() {
    for rate in [2_000, 100_000] {
        let bed = TestBed::new();
        let (_server, listener, agent) =
            per_source_agent(&bed, &addr(bed.srv_v4, PORT), "2:drop", &[]);
        let flood = Flood::start(&bed, &bed.srv_v4.to_string(), PORT, rate, 6);
        std::thread::sleep(Duration::from_millis(500));
        let result = probe(
            &bed,
            &addr(bed.srv_v4, PORT),
            Duration::from_millis(100),
            40,
            Duration::from_secs(1),
        );
        let row = agent.listener(&listener);
        let sent = flood.finish();
        assert!(
            result.success_rate() >= 0.9,
            "{rate} forged SYN/s ({sent:?}): the real client got {result:?}; {row:?}"
        );
        assert_eq!(row.pending, 0, "no reservation for a SYN: {row:?}");
        assert_eq!(row.refused_per_source_total, 0, "{row:?}");
        let stats = agent.stats();
        assert_eq!(stats.packets.pending_full_total, 0, "{stats:?}");
        agent.wait_listener(&listener, "no source left", SETTLE, |l| {
            l.active == 0 && l.sources == 0
        });
    }
}

/// A second IPv4 client address, outside the bed's own /30.
fn second_client(bed: &TestBed) -> IpAddr {
    let mut octets = bed.cli_v4.octets();
    octets[3] = octets[3].wrapping_add(128);
    let second = IpAddr::from(octets);
    bed.add_client_address(second);
    second
}

/// An echo server on `target` and an agent with `--limit-per-source LISTENER=limit` (and
/// `extra` flags).
fn per_source_agent(
    bed: &TestBed,
    target: &str,
    limit: &str,
    extra: &[&str],
) -> (EchoServer, String, Agent) {
    let server = EchoServer::start(bed, Side::Server, target, ServerMode::Echo);
    let spec = format!("{target}={limit}");
    let mut args = vec!["--limit-per-source", spec.as_str()];
    args.extend_from_slice(extra);
    let agent = Agent::start(bed, &args);
    (server, target.to_string(), agent)
}
