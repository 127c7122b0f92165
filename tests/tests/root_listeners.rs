//! Listeners (design.md semantics 4 and 5): IPv6, a specific address over the family
//! wildcard, a bare port for both families, separate limits per listener, and everything else
//! (other ports, non-TCP) untouched. Needs root.
use std::{net::Ipv4Addr, time::Duration};

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr, udp_echo_server, udp_probe},
};

const PORT: u16 = 8000;
const OTHER_PORT: u16 = 9000;
const SETTLE: Duration = Duration::from_secs(20);
/// A second server address. Every bed has its own namespaces, so one fixed address (inside
/// 198.18.0.0/15) cannot clash between tests.
const EXTRA_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);

#[test]
fn root_ipv6_listener() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v6, PORT);
    let _server = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("[{}]:{PORT}", bed.srv_v6);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=3:reset")]);
    let hold = Hold::open(&bed, 5, &server, 5000);
    assert_eq!(
        (hold.result.connected, hold.result.refused),
        (3, 2),
        "{:?}",
        hold.result
    );
    let row = agent.wait_listener(&listener, "3 active", SETTLE, |l| l.active == 3);
    assert_eq!(
        (row.admitted_total, row.refused_reset_total),
        (3, 2),
        "{row:?}"
    );
    hold.close();
    let row = agent.wait_listener(&listener, "0 active", SETTLE, |l| l.active == 0);
    assert_eq!(row.admitted_total, 3, "{row:?}");
}

/// `198.18.x.1:P` and `0.0.0.0:P` together: connections to that address use the specific
/// limit, connections to any other IPv4 address of the node use the wildcard's.
#[test]
fn root_specific_address_wins_over_wildcard() {
    let bed = TestBed::new();
    bed.exec_ok(
        Side::Server,
        "ip",
        &[
            "addr",
            "add",
            &format!("{EXTRA_V4}/32"),
            "dev",
            &bed.srv_veth,
        ],
    );
    bed.exec_ok(
        Side::Client,
        "ip",
        &[
            "route",
            "add",
            &format!("{EXTRA_V4}/32"),
            "dev",
            &bed.cli_veth,
        ],
    );
    let _server = EchoServer::start(
        &bed,
        Side::Server,
        &addr(Ipv4Addr::UNSPECIFIED, PORT),
        ServerMode::Echo,
    );
    let specific = format!("{}:{PORT}", bed.srv_v4);
    let wildcard = format!("0.0.0.0:{PORT}");
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            &format!("{specific}=2:reset"),
            "--limit",
            &format!("{wildcard}=4:reset"),
        ],
    );
    let to_specific = Hold::open(&bed, 6, &addr(bed.srv_v4, PORT), 5000);
    let to_other = Hold::open(&bed, 6, &addr(EXTRA_V4, PORT), 5000);
    assert_eq!(to_specific.result.connected, 2, "{:?}", to_specific.result);
    assert_eq!(to_other.result.connected, 4, "{:?}", to_other.result);
    let row = agent.wait_listener(&specific, "2 active", SETTLE, |l| l.active == 2);
    assert_eq!((row.admitted_total, row.refused_total), (2, 4), "{row:?}");
    let row = agent.wait_listener(&wildcard, "4 active", SETTLE, |l| l.active == 4);
    assert_eq!((row.admitted_total, row.refused_total), (4, 2), "{row:?}");
}

/// A bare port covers every address of both families; IPv4 connections accepted by a
/// dual-stack `[::]` socket (IPv4-mapped) count for it too.
#[test]
fn root_bare_port_covers_both_families() {
    let bed = TestBed::new();
    let _server = EchoServer::start(
        &bed,
        Side::Server,
        &format!("[::]:{PORT}"),
        ServerMode::Echo,
    );
    let listener = PORT.to_string();
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=4:reset")]);
    let v4 = Hold::open(&bed, 3, &addr(bed.srv_v4, PORT), 5000);
    assert_eq!(v4.result.connected, 3, "{:?}", v4.result);
    agent.wait_listener(&listener, "3 active", SETTLE, |l| l.active == 3);
    let v6 = Hold::open(&bed, 3, &addr(bed.srv_v6, PORT), 5000);
    assert_eq!(
        (v6.result.connected, v6.result.refused),
        (1, 2),
        "{:?}",
        v6.result
    );
    let row = agent.wait_listener(&listener, "4 active", SETTLE, |l| l.active == 4);
    assert_eq!((row.admitted_total, row.refused_total), (4, 2), "{row:?}");
    assert_eq!(
        row.unreserved_total, 0,
        "IPv4-mapped connections found their reservations: {row:?}"
    );
    v4.close();
    v6.close();
    let row = agent.wait_listener(&listener, "0 active", SETTLE, |l| l.active == 0);
    assert_eq!(row.admitted_total, 4, "{row:?}");
}

#[test]
fn root_two_listeners_have_separate_limits() {
    let bed = TestBed::new();
    let _a = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, PORT),
        ServerMode::Echo,
    );
    let _b = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, OTHER_PORT),
        ServerMode::Echo,
    );
    let (a, b) = (
        format!("{}:{PORT}", bed.srv_v4),
        format!("{}:{OTHER_PORT}", bed.srv_v4),
    );
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            &format!("{a}=2:reset"),
            "--limit",
            &format!("{b}=3:reset"),
        ],
    );
    let to_a = Hold::open(&bed, 5, &addr(bed.srv_v4, PORT), 5000);
    let to_b = Hold::open(&bed, 5, &addr(bed.srv_v4, OTHER_PORT), 5000);
    assert_eq!(to_a.result.connected, 2, "{:?}", to_a.result);
    assert_eq!(to_b.result.connected, 3, "{:?}", to_b.result);
    let row_a = agent.wait_listener(&a, "2 active", SETTLE, |l| l.active == 2);
    let row_b = agent.wait_listener(&b, "3 active", SETTLE, |l| l.active == 3);
    assert_eq!(
        (row_a.limit, row_a.admitted_total, row_a.refused_total),
        (2, 2, 3),
        "{row_a:?}"
    );
    assert_eq!(
        (row_b.limit, row_b.admitted_total, row_b.refused_total),
        (3, 3, 2),
        "{row_b:?}"
    );
}

/// A port without a limit is untouched even while another port is full.
#[test]
fn root_port_without_limit_is_untouched() {
    const MANY: u64 = 200;
    let bed = TestBed::new();
    let _limited = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, PORT),
        ServerMode::Echo,
    );
    let _free = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, OTHER_PORT),
        ServerMode::Echo,
    );
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=1")]);
    let full = Hold::open(&bed, 1, &addr(bed.srv_v4, PORT), 5000);
    assert_eq!(full.result.connected, 1, "{:?}", full.result);
    let mut free = Hold::open(&bed, MANY as u32, &addr(bed.srv_v4, OTHER_PORT), 5000);
    assert_eq!(free.result.connected, MANY, "{:?}", free.result);
    let ping = free.ping();
    assert_eq!(ping.echoed, MANY, "{ping:?}");
    let row = agent.wait_listener(&listener, "1 active", SETTLE, |l| l.active == 1);
    assert_eq!((row.admitted_total, row.refused_total), (1, 0), "{row:?}");
    let stats = agent.stats();
    assert_eq!(stats.listeners.len(), 1, "{stats:?}");
    assert_eq!(stats.packets.syn_refused_total, 0, "{stats:?}");
    // The other port's SYNs are counted as SYNs to no limited listener.
    assert!(
        stats.packets.syn_not_limited_total >= MANY,
        "{:?}",
        stats.packets
    );
}

/// UDP to a limited port (full, with action reset) passes both ways, for both families.
#[test]
fn root_non_tcp_passes() {
    let bed = TestBed::new();
    let _tcp = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, PORT),
        ServerMode::Echo,
    );
    let _udp4 = udp_echo_server(&bed, Side::Server, &addr(bed.srv_v4, PORT));
    let _udp6 = udp_echo_server(&bed, Side::Server, &addr(bed.srv_v6, PORT));
    let listener = PORT.to_string();
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=1:reset")]);
    let full = Hold::open(&bed, 1, &addr(bed.srv_v4, PORT), 5000);
    assert_eq!(full.result.connected, 1, "{:?}", full.result);
    agent.wait_listener(&listener, "the slot taken", SETTLE, |l| l.active == 1);

    let v4 = udp_probe(&bed, &addr(bed.srv_v4, PORT), 20);
    let v6 = udp_probe(&bed, &addr(bed.srv_v6, PORT), 20);
    assert_eq!(v4.replied, 20, "{v4:?}");
    assert_eq!(v6.replied, 20, "{v6:?}");
    let stats = agent.stats();
    let row = stats.listener(&listener).expect("listener row");
    assert_eq!(
        (row.active, row.admitted_total, row.refused_total),
        (1, 1, 0),
        "{row:?}"
    );
    // UDP is passed on the uncounted path: no counter moved for it (the only SYNs here are to
    // the limited port).
    assert_eq!(
        (
            stats.packets.malformed_total,
            stats.packets.syn_refused_total,
            stats.packets.syn_not_limited_total
        ),
        (0, 0, 0),
        "{:?}",
        stats.packets
    );
}
