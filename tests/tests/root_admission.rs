//! Admission (design.md semantics 2): a burst never admits more than the limit, a
//! retransmitted SYN keeps its one reservation, and a handshake that never completes gives its
//! slot back after the handshake timeout. Needs root.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr, raw_syn},
};

const PORT: u16 = 8000;
/// Source port of the raw SYNs; the client namespace drops what comes back to it.
const RAW_SPORT: u16 = 40_001;
const SETTLE: Duration = Duration::from_secs(20);

#[test]
fn root_burst_admits_exactly_the_limit() {
    const LIMIT: u64 = 50;
    const CLIENTS: u32 = 300;
    let bed = TestBed::new();
    let _server = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, PORT),
        ServerMode::Echo,
    );
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}={LIMIT}")]);

    // Sample the server's ESTABLISHED sockets while the burst runs: never more than the limit.
    let sampling = AtomicBool::new(true);
    let (hold, samples) = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            let started = Instant::now();
            // Bounded: stops when the burst is over, or after 2 minutes / 10,000 samples.
            while sampling.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(120)
                && samples.len() < 10_000
            {
                samples.push(bed.established_on(PORT));
            }
            samples
        });
        let proc = Hold::spawn(&bed, Side::Client, CLIENTS, &addr(bed.srv_v4, PORT), 2000);
        let hold = Hold::wait(proc, CLIENTS, 2000);
        sampling.store(false, Ordering::Relaxed);
        (hold, sampler.join().expect("sampler"))
    });
    let max_seen = samples.iter().copied().max().unwrap_or(0);
    println!(
        "burst: {:?}; ss samples: {} (max {max_seen})",
        hold.result,
        samples.len()
    );
    assert!(!samples.is_empty(), "no ss sample was taken");
    assert!(
        max_seen <= LIMIT as usize,
        "ss saw {max_seen} established > {LIMIT}: {samples:?}"
    );
    assert_eq!(hold.result.connected, LIMIT, "{:?}", hold.result);
    // `drop`: the others time out, none is refused with a RST.
    assert_eq!(
        hold.result.timed_out,
        CLIENTS as u64 - LIMIT,
        "{:?}",
        hold.result
    );
    assert_eq!(
        hold.result.refused + hold.result.other,
        0,
        "{:?}",
        hold.result
    );

    let row = agent.wait_listener(&listener, "50 active", SETTLE, |l| {
        l.active == LIMIT && l.pending == 0
    });
    println!("stats: {row:?}");
    assert_eq!(row.admitted_total, LIMIT, "{row:?}");
    assert!(
        row.refused_total >= CLIENTS as u64 - LIMIT,
        "every refused client's SYN was refused: {row:?}"
    );
    assert_eq!(row.refused_drop_total, row.refused_total, "{row:?}");
    assert_eq!(
        bed.established_on(PORT),
        LIMIT as usize,
        "ss after the burst"
    );
}

/// The same SYN twice: one reservation, one retransmit, nothing refused.
#[test]
fn root_syn_retransmit_keeps_its_reservation() {
    let bed = TestBed::new();
    let _server = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, PORT),
        ServerMode::Echo,
    );
    let listener = format!("{}:{PORT}", bed.srv_v4);
    // A long handshake timeout, so the reservation cannot expire between the two SYNs.
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            &format!("{listener}=5"),
            "--handshake-timeout",
            "60s",
        ],
    );
    bed.drop_incoming_tcp_port(Side::Client, RAW_SPORT);
    let (src, dst) = (bed.cli_v4.to_string(), bed.srv_v4.to_string());

    raw_syn(&bed, &src, RAW_SPORT, &dst, PORT, 1);
    let row = agent.wait_listener(&listener, "one pending handshake", SETTLE, |l| {
        l.pending == 1
    });
    assert_eq!(row.syn_retransmit_total, 0, "{row:?}");

    raw_syn(&bed, &src, RAW_SPORT, &dst, PORT, 1);
    let row = agent.wait_listener(&listener, "the retransmit seen", SETTLE, |l| {
        l.syn_retransmit_total == 1
    });
    assert_eq!(
        row.pending, 1,
        "a retransmit must not take a second slot: {row:?}"
    );
    assert_eq!(row.refused_total, 0, "{row:?}");
    assert_eq!((row.active, row.admitted_total), (0, 0), "{row:?}");
}

/// limit 1, `--handshake-timeout 1s`: a SYN whose handshake never completes holds the only
/// slot, then gives it back; a real connection succeeds afterwards.
#[test]
fn root_handshake_timeout_releases_the_slot() {
    let bed = TestBed::new();
    let _server = EchoServer::start(
        &bed,
        Side::Server,
        &addr(bed.srv_v4, PORT),
        ServerMode::Echo,
    );
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            &format!("{listener}=1"),
            "--handshake-timeout",
            "1s",
        ],
    );
    bed.drop_incoming_tcp_port(Side::Client, RAW_SPORT);

    let sent = Instant::now();
    raw_syn(
        &bed,
        &bed.cli_v4.to_string(),
        RAW_SPORT,
        &bed.srv_v4.to_string(),
        PORT,
        1,
    );
    agent.wait_listener(&listener, "the SYN's reservation", SETTLE, |l| {
        l.pending == 1
    });
    let row = agent.wait_listener(&listener, "the reservation released", SETTLE, |l| {
        l.pending == 0 && l.handshake_timeout_total == 1
    });
    let held = sent.elapsed();
    assert!(
        held >= Duration::from_secs(1),
        "released after {held:?}, before the 1 s timeout: {row:?}"
    );
    assert_eq!(row.active, 0, "{row:?}");

    let hold = Hold::open(&bed, 1, &addr(bed.srv_v4, PORT), 3000);
    assert_eq!(
        hold.result.connected, 1,
        "the freed slot admits a connection: {:?}",
        hold.result
    );
    let row = agent.wait_listener(&listener, "the connection counted", SETTLE, |l| {
        l.active == 1
    });
    assert_eq!(row.admitted_total, 1, "{row:?}");
    assert_eq!(row.handshake_timeout_total, 1, "{row:?}");
}
