//! `--pin-dir` (design.md semantics 9): pinned maps and links outlive the agent; a restarted
//! agent adopts them with the counts intact and no gap in enforcement; pins of another layout
//! and a directory that is not on bpffs are refused with a clear error, and nothing is left
//! behind. Needs root.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use limiter_common::MAP_LAYOUT_VERSION;
use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
    names,
    pins::PinDir,
};

const PORT: u16 = 8000;
const LIMIT: u32 = 3;

fn pins_exist(dir: &Path) -> bool {
    let layout = dir.join(format!("v{MAP_LAYOUT_VERSION}"));
    layout.join("maps/LISTENERS").exists() && layout.join("links/accounting").exists()
}

#[test]
fn root_restart_after_sigkill_keeps_counts_and_enforcement() {
    let bed = TestBed::new();
    let pins = PinDir::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let args = [
        "--limit",
        &format!("{listener}={LIMIT}"),
        "--pin-dir",
        &pins.arg(),
    ];
    let agent = Agent::start(&bed, &args);

    let mut held = Hold::open(&bed, LIMIT, &server, 3000);
    assert_eq!(held.result.connected, LIMIT as u64, "{:?}", held.result);
    agent.wait_listener(&listener, "active == limit", Duration::from_secs(5), |l| {
        l.active == LIMIT as u64
    });

    let status = agent.stop(libc::SIGKILL);
    assert_eq!(status.code(), None, "SIGKILL: {status}");
    assert!(pins_exist(&pins.0), "pins gone after SIGKILL");
    assert!(
        bed.srv_links().contains("xdp"),
        "XDP detached by SIGKILL:\n{}",
        bed.srv_links()
    );

    // No agent runs, yet the limit holds: a new connection is refused (dropped).
    let refused = Hold::open(&bed, 1, &server, 1500);
    assert_eq!(
        (refused.result.connected, refused.result.timed_out),
        (0, 1),
        "{:?}",
        refused.result
    );

    let agent = Agent::start(&bed, &args);
    assert!(
        agent.stderr().iter().any(|l| l.contains("adopted 1 limit")),
        "restart did not adopt: {:?}",
        agent.stderr()
    );
    let row = agent.listener(&listener);
    assert_eq!(
        (row.active, row.limit),
        (LIMIT as u64, LIMIT as u64),
        "counts after restart: {row:?}"
    );
    assert_eq!(
        held.ping().echoed,
        LIMIT as u64,
        "held connections broken by the restart"
    );

    held.close();
    let row = agent.wait_listener(
        &listener,
        "active back to 0",
        Duration::from_secs(10),
        |l| l.active == 0 && l.pending == 0,
    );
    assert_eq!(row.admitted_total, LIMIT as u64, "{row:?}");
    // Capacity is back: exactly LIMIT new connections fit.
    let again = Hold::open(&bed, LIMIT + 1, &server, 1500);
    assert_eq!(again.result.connected, LIMIT as u64, "{:?}", again.result);
    drop(again);

    let status = agent.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status}; {:?}", agent.stderr());
    bed.assert_no_xdp("after SIGTERM without --keep-pinned");
    assert!(
        !pins.0.exists(),
        "pins left behind after SIGTERM without --keep-pinned"
    );
}

#[test]
fn root_keep_pinned_leaves_enforcement_running() {
    let bed = TestBed::new();
    let pins = PinDir::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let spec = format!("{listener}=1:reset");
    let agent = Agent::start(
        &bed,
        &["--limit", &spec, "--pin-dir", &pins.arg(), "--keep-pinned"],
    );
    let held = Hold::open(&bed, 1, &server, 3000);
    assert_eq!(held.result.connected, 1, "{:?}", held.result);

    let status = agent.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status}; {:?}", agent.stderr());
    assert!(pins_exist(&pins.0), "--keep-pinned removed the pins");
    let refused = Hold::open(&bed, 1, &server, 3000);
    assert_eq!(
        refused.result.refused, 1,
        "not enforced while no agent runs: {:?}",
        refused.result
    );

    // A new agent with other flags adopts the pins; the flags win.
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            &format!("{listener}=2"),
            "--pin-dir",
            &pins.arg(),
        ],
    );
    let row = agent.listener(&listener);
    assert_eq!(
        (row.limit, row.active, row.action.as_str()),
        (2, 1, "drop"),
        "{row:?}"
    );
    drop(held);
    agent.wait_listener(
        &listener,
        "active back to 0",
        Duration::from_secs(10),
        |l| l.active == 0,
    );
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
    assert!(!pins.0.exists(), "pins left behind");
    bed.assert_no_xdp("after the adopting agent stopped");
}

/// Pinned maps keep the size they were made with: an agent restarted with another
/// `--max-listeners` over kept pins says so in its log and goes by the pinned size, both ways
/// (the maps cannot be resized without ending enforcement): with more asked for, the pinned
/// slots are all there are; with fewer, every pinned slot still works, counted and enforced.
#[test]
fn root_max_listeners_changed_over_pins_is_warned_and_the_pinned_size_holds() {
    let bed = TestBed::new();
    let pins = PinDir::new();
    let pin_arg = pins.arg();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let warned = |agent: &Agent, asked: u32| {
        let log = agent.stderr();
        assert!(
            log.iter().any(
                |l| l.contains("another number of listener slots than asked for")
                    && l.contains("pinned=4")
                    && l.contains(&format!("asked={asked}"))
            ),
            "{log:#?}"
        );
    };
    let start = |max: &str| {
        Agent::start(
            &bed,
            &[
                "--max-listeners",
                max,
                "--limit",
                "9000=1",
                "--pin-dir",
                &pin_arg,
                "--keep-pinned",
            ],
        )
    };
    assert_eq!(start("4").stop(libc::SIGTERM).code(), Some(0));

    // More asked for than pinned: 4 slots all the same.
    let agent = start("64");
    warned(&agent, 64);
    for port in 9001..9004 {
        agent.set(&format!("{port}=1"));
    }
    let fifth = agent.cli(&["set", "9004=1"]);
    let stderr = String::from_utf8_lossy(&fifth.stderr);
    assert!(
        !fifth.status.success() && stderr.contains("no free listener slot (4 in use"),
        "{}: {stderr}",
        fifth.status
    );
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));

    // Fewer asked for than pinned: the slots beyond 2 still work.
    let agent = start("2");
    warned(&agent, 2);
    for port in 9001..9003 {
        agent.set(&format!("{port}=1"));
    }
    let listener = format!("{}:{PORT}", bed.srv_v4);
    agent.set(&format!("{listener}=1:reset"));
    let hold = Hold::open(&bed, 2, &server, 3000);
    assert_eq!(
        (hold.result.connected, hold.result.refused),
        (1, 1),
        "{:?}",
        hold.result
    );
    agent.wait_listener(&listener, "1 active", Duration::from_secs(5), |l| {
        l.active == 1 && l.refused_total == 1
    });
    drop(hold);
    assert_eq!(agent.stop(libc::SIGKILL).code(), None);
    let cleanup = Agent::start(&bed, &["--limit", "9000=1", "--pin-dir", &pin_arg]);
    assert_eq!(cleanup.stop(libc::SIGTERM).code(), Some(0));
    assert!(!pins.0.exists(), "pins left behind");
}

/// Pins left by an agent whose counter 0 meant something else (every frame not a SYN to a
/// limited listener; `AgentConfig::counters_revision` 0) are adopted with that counter zeroed,
/// not carried over as SYNs to no limited listener; the other counters keep their totals.
#[test]
fn root_counters_of_an_earlier_revision_are_not_carried_over() {
    use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
    use limiter_common::{AgentConfig, packet_stat};

    let bed = TestBed::new();
    let pins = PinDir::new();
    let pin_arg = pins.arg();
    let args = ["--limit", "9000=1", "--pin-dir", &pin_arg, "--keep-pinned"];
    assert_eq!(
        Agent::start(&bed, &args).stop(libc::SIGTERM).code(),
        Some(0)
    );
    // Make the pins look like an earlier agent's.
    let maps = pins.0.join(format!("v{MAP_LAYOUT_VERSION}/maps"));
    let mut config: Array<MapData, AgentConfig> = Array::try_from(aya::maps::Map::Array(
        MapData::from_pin(maps.join("AGENT_CONFIG")).expect("AGENT_CONFIG pin"),
    ))
    .unwrap();
    let old = AgentConfig {
        counters_revision: 0,
        ..config.get(&0, 0).unwrap()
    };
    config.set(0, old, 0).unwrap();
    let mut stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(
        MapData::from_pin(maps.join("PACKET_STATS")).expect("PACKET_STATS pin"),
    ))
    .unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    for index in [packet_stat::SYN_NOT_LIMITED, packet_stat::MALFORMED] {
        stats
            .set(
                index,
                PerCpuValues::try_from(vec![1000u64; cpus]).unwrap(),
                0,
            )
            .unwrap();
    }
    drop((config, stats));

    let agent = Agent::start(&bed, &args);
    let packets = agent.stats().packets;
    assert_eq!(
        (packets.syn_not_limited_total, packets.malformed_total),
        (0, 1000 * cpus as u64),
        "{packets:?}"
    );
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
    // The pins now say the new revision, and their counter 0 is this revision's: the next
    // agent keeps it.
    let config: Array<MapData, AgentConfig> = Array::try_from(aya::maps::Map::Array(
        MapData::from_pin(maps.join("AGENT_CONFIG")).expect("AGENT_CONFIG pin"),
    ))
    .unwrap();
    assert_eq!(
        config.get(&0, 0).unwrap().counters_revision,
        limiter_common::COUNTERS_REVISION
    );
    drop(config);
    let mut stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(
        MapData::from_pin(maps.join("PACKET_STATS")).expect("PACKET_STATS pin"),
    ))
    .unwrap();
    stats
        .set(
            packet_stat::SYN_NOT_LIMITED,
            PerCpuValues::try_from(vec![7u64; cpus]).unwrap(),
            0,
        )
        .unwrap();
    drop(stats);
    let agent = Agent::start(&bed, &["--limit", "9000=1", "--pin-dir", &pin_arg]);
    assert_eq!(agent.stats().packets.syn_not_limited_total, 7 * cpus as u64);
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
    assert!(!pins.0.exists(), "pins left behind");
}

#[test]
fn root_pin_dir_not_on_bpffs_is_refused() {
    let bed = TestBed::new();
    let dir = PathBuf::from(format!(
        "/tmp/{}",
        names::unique("notbpf", names::next_id())
    ));
    let dir_arg = dir.display().to_string();
    let socket = Agent::socket_path().display().to_string();
    let out = Agent::run_to_exit(
        &bed,
        &[
            "run",
            "--iface",
            &bed.srv_veth,
            "--limit",
            "8000=1",
            "--pin-dir",
            &dir_arg,
            "--control-socket",
            &socket,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(
        errors[0].contains("--pin-dir") && errors[0].contains("bpf filesystem"),
        "{}",
        errors[0]
    );
    assert!(
        !dir.exists(),
        "a directory was created on the wrong filesystem"
    );
    bed.assert_no_xdp("after a refused --pin-dir");
}

/// Pins of another layout are taken over (root_upgrade.rs); what is not limiter's at all is an
/// error, and left as it is.
#[test]
fn root_pins_that_are_not_limiters_are_refused_not_touched() {
    let bed = TestBed::new();
    let pins = PinDir::new();
    let foreign = pins.0.join("cilium");
    fs::create_dir_all(&foreign).expect("creating a foreign layout directory on bpffs");
    let socket = Agent::socket_path().display().to_string();
    let out = Agent::run_to_exit(
        &bed,
        &[
            "run",
            "--iface",
            &bed.srv_veth,
            "--limit",
            "8000=1",
            "--pin-dir",
            &pins.arg(),
            "--control-socket",
            &socket,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(
        errors[0].contains("--pin-dir")
            && errors[0].contains("`cilium`")
            && errors[0].contains("not limiter's"),
        "{}",
        errors[0]
    );
    assert!(foreign.exists(), "the foreign pins were touched");
    assert!(
        !pins.0.join(format!("v{MAP_LAYOUT_VERSION}")).exists(),
        "pins created next to a foreign layout"
    );
    bed.assert_no_xdp("after refusing foreign pins");
}

#[test]
fn root_bad_input_with_pin_dir_leaves_no_pins() {
    let bed = TestBed::new();
    let pins = PinDir::new();
    let socket = Agent::socket_path().display().to_string();
    for bad in [
        vec!["--iface", "lim-no-such-if0"],
        vec!["--iface", bed.srv_veth.as_str(), "--cgroup", "/tmp"],
    ] {
        let mut args = vec!["run"];
        args.extend(bad.iter().copied());
        args.extend([
            "--limit",
            "8000=1",
            "--pin-dir",
            pins.0.to_str().unwrap(),
            "--control-socket",
            &socket,
        ]);
        let out = Agent::run_to_exit(&bed, &args);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert_eq!(out.error_lines().len(), 1, "{args:?}: {out:?}");
        assert!(
            !pins.0.exists(),
            "{args:?} left {} behind",
            pins.0.display()
        );
        bed.assert_no_xdp(&format!("after {args:?}"));
    }
}
