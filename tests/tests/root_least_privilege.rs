//! Least privilege: the agent runs with exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (uid 0,
//! every other capability removed from the bounding, inheritable and ambient sets, as a
//! DaemonSet's `capabilities: {drop: [ALL], add: [BPF, NET_ADMIN, PERFMON]}` would give it), and
//! with one of them missing it names the missing one instead of failing in the verifier.
//! Needs root (to hand out the capabilities).
use std::{process::Command, time::Duration};

use limiter_tests::{
    Agent, Side, TestBed,
    agent::limiter_bin,
    client::{EchoServer, Hold, ServerMode, addr},
};

const PORT: u16 = 8000;
const CAP_NET_ADMIN: u32 = 12;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// `nsenter --net=<server ns> setpriv <only CAPS> limiter ARGS`.
fn with_only(bed: &TestBed, caps: &[&str], args: &[&str]) -> Command {
    let set = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", bed.srv_netns_path().display()))
        .arg("setpriv")
        .arg(format!("--bounding-set={set}"))
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg("--")
        .arg(limiter_bin())
        .args(args);
    cmd
}

fn effective_caps(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff line");
    u64::from_str_radix(hex.trim(), 16).expect("CapEff hex")
}

#[test]
fn root_runs_and_enforces_with_only_bpf_net_admin_perfmon() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let socket = Agent::socket_path();
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let limit = format!("{listener}=1");
    let socket_arg = socket.display().to_string();
    let args = [
        "run",
        "--iface",
        &bed.srv_veth,
        "--limit",
        &limit,
        "--control-socket",
        &socket_arg,
    ];
    let proc = bed.spawn(
        "limiter run (least privilege)",
        with_only(&bed, &["bpf", "net_admin", "perfmon"], &args),
    );
    let ready = proc
        .stderr
        .next_matching(Duration::from_secs(30), |l| l == "limiter: ready");
    assert!(
        ready.is_some(),
        "not ready with CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON:\n{}",
        proc.transcript()
    );

    // setpriv execs the agent itself, so the pid is the agent's.
    let caps = effective_caps(proc.pid());
    let expected = (1u64 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON);
    assert_eq!(
        caps, expected,
        "effective capabilities {caps:#x}, expected exactly {expected:#x}"
    );

    let held = Hold::open(&bed, 2, &server, 1500);
    assert_eq!(
        (held.result.connected, held.result.timed_out),
        (1, 1),
        "{:?}",
        held.result
    );
    let stats = Command::new(limiter_bin())
        .args(["stats", "--json", "--control-socket", &socket_arg])
        .output()
        .expect("limiter stats");
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    assert_eq!(json["listeners"][0]["active"], 1, "{json}");

    proc.signal(libc::SIGTERM);
    let status = proc.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status}\n{}", proc.transcript());
    bed.assert_no_xdp("after SIGTERM under least privilege");
}

#[test]
fn root_missing_capability_is_named() {
    let bed = TestBed::new();
    let socket = Agent::socket_path().display().to_string();
    let args = [
        "run",
        "--iface",
        &bed.srv_veth,
        "--limit",
        "8000=1",
        "--control-socket",
        &socket,
    ];
    for (caps, missing, present) in [
        (&["net_admin", "perfmon"][..], "CAP_BPF", "CAP_NET_ADMIN"),
        (&["bpf", "net_admin"][..], "CAP_PERFMON", "CAP_NET_ADMIN"),
        (&["bpf", "perfmon"][..], "CAP_NET_ADMIN", "CAP_PERFMON,"),
    ] {
        let out = Agent::run_command_to_exit(&bed, with_only(&bed, caps, &args));
        assert_eq!(out.status.code(), Some(1), "{caps:?}: {out:?}");
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{caps:?}: {out:?}");
        let line = errors[0];
        let named = line.split(':').nth(2).unwrap_or_default();
        assert!(named.contains(missing), "{caps:?}: {line}");
        assert!(
            !named.contains(present),
            "{caps:?}: names a capability it has: {line}"
        );
        bed.assert_no_xdp(&format!("after refusing to start with {caps:?}"));
    }
}

/// `--limit-in` enters another network namespace (`setns`), which needs CAP_SYS_ADMIN: with only
/// the three, the agent names it and attaches nothing, in either namespace.
#[test]
fn root_limit_in_needs_sys_admin_and_says_so() {
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let socket = Agent::socket_path().display().to_string();
    let netns = pod.netns_path().display().to_string();
    let args = [
        "run",
        "--iface",
        &bed.srv_veth,
        "--limit-in",
        &netns,
        "8000=1",
        "--control-socket",
        &socket,
    ];
    let out = Agent::run_command_to_exit(
        &bed,
        with_only(&bed, &["bpf", "net_admin", "perfmon"], &args),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(
        errors[0].contains("CAP_SYS_ADMIN") && errors[0].contains("--limit-in"),
        "{}",
        errors[0]
    );
    bed.assert_no_xdp("after refusing --limit-in without CAP_SYS_ADMIN");
    let links = bed.pod_links(&pod);
    assert!(!links.contains("xdp"), "{links}");
}
