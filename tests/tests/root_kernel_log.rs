//! The kernel programs' rare events reach the agent's log (aya-log), at the level
//! `--log-level` sets when the programs are loaded: a RST that fell back to a drop (a SYN with
//! IP options, which the RST builder does not reflect) is a debug line, logged with
//! `--log-level debug` and absent (removed by the verifier) at the default level. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, Side, TestBed,
    client::{Hold, addr, raw_syn_with},
    eventually,
};

const PORT: u16 = 8000;
const RAW_SPORT: u16 = 40_077;
const NEEDLE: &str = "reset fell back to a drop";

/// A listener full at 1 with `reset`, and a SYN with IP options sent to it.
fn refuse_a_syn_with_ip_options(bed: &TestBed, agent: &Agent) {
    let held = Hold::open(bed, 1, &addr(bed.srv_v4, PORT), 2000);
    assert_eq!(held.result.connected, 1, "{:?}", held.result);
    bed.drop_incoming_tcp_port(Side::Client, RAW_SPORT);
    raw_syn_with(
        bed,
        &bed.cli_v4.to_string(),
        RAW_SPORT,
        &bed.srv_v4.to_string(),
        PORT,
        1,
        &["ip-options"],
    );
    eventually(
        "the fallback counted",
        Duration::from_secs(10),
        || match agent.stats().packets.reset_fallback_drop_total {
            0 => Err("not yet".into()),
            _ => Ok(()),
        },
    );
    drop(held);
}

#[test]
fn root_a_kernel_event_reaches_the_agents_log_at_debug() {
    let bed = TestBed::new();
    let (_server, _, agent) =
        Agent::with_echo_server(&bed, PORT, "1:reset", &["--log-level", "debug"]);
    refuse_a_syn_with_ip_options(&bed, &agent);
    eventually(
        "the kernel's debug line in the agent's log",
        Duration::from_secs(10),
        || {
            let log = agent.stderr().join("\n");
            if log
                .lines()
                .any(|l| l.contains(NEEDLE) && l.contains("8000"))
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
}

#[test]
fn root_disabled_kernel_log_levels_log_nothing() {
    let bed = TestBed::new();
    let (_server, _, agent) = Agent::with_echo_server(&bed, PORT, "1:reset", &[]);
    refuse_a_syn_with_ip_options(&bed, &agent);
    std::thread::sleep(Duration::from_millis(500));
    let log = agent.stderr().join("\n");
    assert!(
        !log.contains(NEEDLE),
        "a debug line at the default level:\n{log}"
    );
}
