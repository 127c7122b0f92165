//! Spoofed SYNs never cost a real client its place (design.md, "Floods"). A forged-source SYN
//! flood (random sources in 198.19.0.0/16 that never answer, from a raw socket in the client
//! namespace) aimed at a listener below its limit, while a real client connects every 100 ms
//! with a 1 s connect timeout: at least 90% of its connects succeed, for a large limit and a
//! small one, with `drop` and with `reset`, at 2,000 SYN/s and flat out. The agent shows the
//! flood: the listener's mode, the SYNs its flood path passed, the handshakes that never
//! completed. Needs root.
//!
//! The floods use both CPUs of these machines, so the tests here run one at a time.
use std::{sync::Mutex, time::Duration};

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
    flood::{Flood, ProbeResult, probe},
};

const PORT: u16 = 8000;
/// The real client: one connect every 100 ms with a 1 s timeout, for 6 s of flood.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_COUNT: u64 = 60;
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The flood starts this long before the probe and ends after it.
const LEAD: Duration = Duration::from_millis(500);
const FLOOD_SECONDS: u64 = 8;
/// As fast as the generator goes on these machines (it sends in 1 ms ticks, bounded).
const FLAT_OUT: u64 = 100_000;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The real client's result during a flood of `rate` SYN/s, with limiter (`limit`, `action`)
/// or, with `None`, the kernel alone (its own SYN cookies).
fn during_flood(limit: Option<(u32, &str)>, rate: u64) -> (ProbeResult, Option<Agent>, TestBed) {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let agent = limit.map(|(limit, action)| {
        Agent::start(&bed, &["--limit", &format!("{server}={limit}:{action}")])
    });
    let flood = Flood::start(&bed, &bed.srv_v4.to_string(), PORT, rate, FLOOD_SECONDS);
    std::thread::sleep(LEAD);
    let result = probe(&bed, &server, PROBE_INTERVAL, PROBE_COUNT, PROBE_TIMEOUT);
    let sent = flood.finish();
    eprintln!("flood {rate}/s, limit {limit:?}: sent {sent:?}; real client {result:?}");
    if let Some(agent) = &agent {
        eprintln!("{:?}", agent.stats());
    }
    (result, agent, bed)
}

/// Asserts the contract for one flood; returns the real client's result.
fn real_clients_get_in(limit: u32, action: &str, rate: u64) -> ProbeResult {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (result, agent, _bed) = during_flood(Some((limit, action)), rate);
    let agent = agent.expect("agent");
    let listener = agent.stats().listeners.remove(0);
    assert!(
        result.success_rate() >= 0.9,
        "limit {limit}:{action}, {rate} forged SYN/s: the real client got in {} of {} times \
         ({result:?}); listener {listener:?}",
        result.ok,
        result.ok + result.failed
    );
    // Never over the limit, and the operator sees the flood.
    assert!(listener.active <= limit as u64, "{listener:?}");
    assert!(
        listener.flood_mode_entered_total >= 1 && listener.proven_syn_passed_total > 0,
        "the flood should show in the listener's stats: {listener:?}"
    );
    assert!(
        listener.handshakes_not_completed_total > 0,
        "handshakes that never completed should show: {listener:?}"
    );
    result
}

#[test]
fn root_flood_2000_per_second_limit_1000_drop() {
    real_clients_get_in(1000, "drop", 2_000);
}

#[test]
fn root_flood_2000_per_second_limit_1000_reset() {
    real_clients_get_in(1000, "reset", 2_000);
}

#[test]
fn root_flood_2000_per_second_limit_10_drop() {
    real_clients_get_in(10, "drop", 2_000);
}

#[test]
fn root_flood_2000_per_second_limit_10_reset() {
    real_clients_get_in(10, "reset", 2_000);
}

#[test]
fn root_flood_flat_out_limit_10_drop() {
    real_clients_get_in(10, "drop", FLAT_OUT);
}

#[test]
fn root_flood_flat_out_limit_10_reset() {
    real_clients_get_in(10, "reset", FLAT_OUT);
}

#[test]
fn root_flood_flat_out_limit_1000_drop() {
    real_clients_get_in(1000, "drop", FLAT_OUT);
}

/// Flat out, limiter serves at least 90% of what the kernel alone (no filter, its own SYN
/// cookies) serves under the same flood.
#[test]
fn root_flood_flat_out_limit_1000_reset_next_to_the_kernel_alone() {
    let kernel = {
        let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        during_flood(None, FLAT_OUT).0
    };
    let limited = real_clients_get_in(1000, "reset", FLAT_OUT);
    assert!(
        limited.ok as f64 >= 0.9 * kernel.ok as f64,
        "limiter: {limited:?}; kernel alone: {kernel:?}"
    );
}
/// In flood mode a SYN takes no slot, so more handshakes can complete than there are free
/// slots. The ones too many are reset at once: 30 handshakes completing together at a listener
/// of 10 in flood mode end with exactly 10 connections that work, the other 20 reset (never a
/// connection that looks open and hangs), and no more than 10 established on the server.
///
/// When handshakes stop going unanswered, the listener goes back to reserving at the SYN.
///
/// To make the 30 complete together, the client namespace holds back its handshake-completing
/// ACKs (nftables, output hook) while the 30 connect, then lets them go: the server's SYN-ACK
/// retransmission (1 s) is answered by all 30 at once.
#[test]
fn root_flood_mode_resets_the_connections_over_the_limit_at_once() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let agent = Agent::start(&bed, &["--limit", &format!("{server}=10:drop")]);
    let flood = Flood::start(&bed, &bed.srv_v4.to_string(), PORT, 2_000, 8);
    agent.wait_listener(&server, "flood mode", Duration::from_secs(10), |l| {
        l.mode == "flood"
    });
    let table = format!("lim_acks_{}", bed.id);
    bed.exec_ok(Side::Client, "nft", &["add", "table", "inet", &table]);
    bed.exec_ok(
        Side::Client,
        "nft",
        &[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ],
    );
    bed.exec_ok(
        Side::Client,
        "nft",
        &[
            "add",
            "rule",
            "inet",
            &table,
            "out",
            "tcp",
            "dport",
            &PORT.to_string(),
            "tcp",
            "flags",
            "&",
            "(syn|ack|fin|rst)",
            "==",
            "ack",
            "drop",
        ],
    );
    let holders = Hold::spawn(&bed, Side::Client, 30, &server, 3000);
    std::thread::sleep(Duration::from_millis(300));
    bed.exec_ok(Side::Client, "nft", &["delete", "table", "inet", &table]);
    let mut hold = Hold::wait(holders, 30, 3000);
    assert_eq!(
        hold.result.connected, 30,
        "every client saw its SYN-ACK: {:?}",
        hold.result
    );
    let row = agent.wait_listener(&server, "the burst settled", Duration::from_secs(10), |l| {
        l.active == 10 && l.reset_after_handshake_total == 20
    });
    // Give the resets time to reach the clients, then see which connections work.
    std::thread::sleep(Duration::from_millis(500));
    let ping = hold.ping();
    let established = bed.established_on(PORT);
    flood.finish();
    eprintln!(
        "burst in flood mode: {:?}; ping {ping:?}; {row:?}",
        hold.result
    );
    assert_eq!(
        (ping.echoed, ping.failed),
        (10, 20),
        "exactly the 10 admitted connections work, the 20 others were reset: {row:?}"
    );
    assert!(
        established <= 10,
        "{established} established on the server: {row:?}"
    );
    // Once no handshake goes unanswered (the flood has ended, or, as here, the full listener
    // refuses its SYNs at XDP), the listener reserves at the SYN again after a few seconds.
    let row = agent.wait_listener(&server, "flood mode off", Duration::from_secs(15), |l| {
        l.mode == "reserve"
    });
    assert_eq!(
        (row.active, row.flood_mode_entered_total),
        (10, 1),
        "{row:?}"
    );
    hold.close();
    agent.wait_listener(&server, "0 active", Duration::from_secs(20), |l| {
        l.active == 0
    });
}
