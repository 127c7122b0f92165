//! Limits inside pods (design.md "Where limits apply"): the agent runs on a node namespace as
//! the DaemonSet does, pods are namespaces behind veths with the node routing to them, a
//! NodePort is a DNAT rule on the node, and clients come from outside the node. Each pod's
//! limit is enforced with its own count, for clients via the pod's IP and via the NodePort;
//! a pod restart and an agent restart with pins keep it enforced; bad paths are refused and
//! leave nothing behind. Needs root.
use std::time::Duration;

use limiter::enforce::capacity::Capacity;
use limiter_common::MAX_LISTENERS;
use limiter_tests::{
    Agent, Side, TestBed,
    agent::http_get,
    client::{EchoServer, Hold, ServerMode, addr, churn, connect_sockopts_in},
    eventually,
    flood::{Flood, probe},
    node::Pod,
    pins::PinDir,
    refusal::check_refusal,
    sockopt::Keepalive,
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);
const CONNECT_MS: u64 = 2000;

fn netns_of(pod: &Pod) -> String {
    pod.netns_path().display().to_string()
}

fn serve(bed: &TestBed, pod: &Pod) -> EchoServer {
    EchoServer::start_in(bed, pod.ns(), &format!("0.0.0.0:{PORT}"), ServerMode::Echo)
}

/// `--limit-in POD 8000=N[:ACTION]` for each pod, on an agent on the node.
fn agent_for(bed: &TestBed, pods: &[(&Pod, &str)], extra: &[&str]) -> Agent {
    let paths: Vec<String> = pods.iter().map(|(pod, _)| netns_of(pod)).collect();
    let mut args: Vec<&str> = Vec::new();
    for ((_, limit), path) in pods.iter().zip(&paths) {
        args.extend_from_slice(&["--limit-in", path, limit]);
    }
    args.extend_from_slice(extra);
    Agent::start(bed, &args)
}

fn assert_pod_has_xdp(bed: &TestBed, pod: &Pod, context: &str) {
    let links = bed.pod_links(pod);
    assert!(
        links.contains("xdp"),
        "{context}: no XDP in {}:\n{links}",
        pod.ns()
    );
}

fn assert_pod_has_no_xdp(bed: &TestBed, pod: &Pod, context: &str) {
    let links = bed.pod_links(pod);
    assert!(
        !links.contains("xdp"),
        "{context}: XDP left in {}:\n{links}",
        pod.ns()
    );
}

/// Two pods with limits of their own, the same port in each: clients via the pod's IP and via
/// a NodePort fill each pod's own count; the one over it is refused as its action says.
#[test]
fn root_each_pod_its_own_limit_via_pod_ip_and_node_port() {
    let bed = TestBed::new();
    let (a, b) = (bed.add_pod(), bed.add_pod());
    let (_sa, _sb) = (serve(&bed, &a), serve(&bed, &b));
    bed.node_port(30080, &a, PORT);
    bed.node_port(30081, &b, PORT);
    let agent = agent_for(&bed, &[(&a, "8000=5:reset"), (&b, "8000=3")], &[]);
    assert_pod_has_xdp(&bed, &a, "after start");
    let (na, nb) = (netns_of(&a), netns_of(&b));

    // Pod A: 3 via its IP, 2 via the NodePort: full; the 6th (either way) is refused at once.
    let direct = Hold::open(&bed, 3, &a.addr(PORT), CONNECT_MS);
    let node_port = Hold::open(&bed, 2, &addr(bed.srv_v4, 30080), CONNECT_MS);
    assert_eq!(direct.result.connected, 3, "{:?}", direct.result);
    assert_eq!(node_port.result.connected, 2, "{:?}", node_port.result);
    for to in [a.addr(PORT), addr(bed.srv_v4, 30080)] {
        let over = Hold::open(&bed, 1, &to, CONNECT_MS);
        assert_eq!(
            over.result.refused, 1,
            "pod A is full ({to}): {:?}",
            over.result
        );
    }
    let row_a = agent.wait_listener_in("8000", Some(&na), "5 active", SETTLE, |l| l.active == 5);
    assert_eq!(row_a.refused_reset_total, 2, "{row_a:?}");
    assert_eq!(
        row_a.unreserved_total, 0,
        "every SYN was admitted in the pod: {row_a:?}"
    );

    // Pod B counts apart from A: 3 via the NodePort, the 4th silently dropped.
    let b_held = Hold::open(&bed, 3, &addr(bed.srv_v4, 30081), CONNECT_MS);
    assert_eq!(b_held.result.connected, 3, "{:?}", b_held.result);
    let over = Hold::open(&bed, 1, &b.addr(PORT), 1000);
    assert_eq!(over.result.timed_out, 1, "pod B is full: {:?}", over.result);
    let row_b = agent.wait_listener_in("8000", Some(&nb), "3 active", SETTLE, |l| l.active == 3);
    // Its SYN, and any retransmit of it the client's 1 s timer sent before it gave up (on a slow
    // machine, such as the kernel matrix's emulated CPUs, it does).
    assert!(
        (1..=2).contains(&row_b.refused_drop_total),
        "one connection refused: {row_b:?}"
    );
    assert_eq!(agent.listener_in("8000", Some(&na)).active, 5);

    // Stats say which namespace each listener is in.
    let table = agent.cli(&["stats"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("8000 in {na}")), "{table}");
    assert!(table.contains(&format!("8000 in {nb}")), "{table}");

    // Closing A's connections gives its slots back; B's count is untouched.
    direct.close();
    node_port.close();
    let row_a = agent.wait_listener_in("8000", Some(&na), "back to 0", SETTLE, |l| {
        l.active == 0 && l.pending == 0
    });
    assert_eq!(row_a.admitted_total, 5, "{row_a:?}");
    assert_eq!(agent.listener_in("8000", Some(&nb)).active, 3);
}

/// Exactness inside a pod: 300 simultaneous connects through the NodePort at limit 50 give
/// exactly 50; then churned connections bring the count back to exactly 0.
#[test]
fn root_pod_burst_is_exact_and_churn_returns_to_zero() {
    const LIMIT: u64 = 50;
    const CLIENTS: u32 = 300;
    const CHURN: u64 = 5_000;
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let _server = serve(&bed, &pod);
    bed.node_port(30080, &pod, PORT);
    let agent = agent_for(&bed, &[(&pod, "8000=50")], &[]);
    let netns = netns_of(&pod);

    let proc = Hold::spawn(
        &bed,
        Side::Client,
        CLIENTS,
        &addr(bed.srv_v4, 30080),
        CONNECT_MS,
    );
    let hold = Hold::wait(proc, CLIENTS, CONNECT_MS);
    assert_eq!(hold.result.connected, LIMIT, "{:?}", hold.result);
    assert_eq!(
        hold.result.timed_out,
        CLIENTS as u64 - LIMIT,
        "{:?}",
        hold.result
    );
    let row = agent.wait_listener_in("8000", Some(&netns), "50 active", SETTLE, |l| {
        l.active == LIMIT
    });
    assert_eq!(row.pending, 0, "{row:?}");
    hold.close();
    agent.wait_listener_in("8000", Some(&netns), "0 after the burst", SETTLE, |l| {
        l.active == 0 && l.pending == 0
    });

    agent.cli(&["set", "--netns", &netns, "8000=10:reset"]);
    let result = churn(
        &bed,
        CHURN,
        8,
        &pod.addr(PORT),
        3000,
        Duration::from_secs(180),
    );
    assert!(!result.stopped_by_time, "{result:?}");
    assert_eq!(result.succeeded, CHURN, "{result:?}");
    let row = agent.wait_listener_in(
        "8000",
        Some(&netns),
        "0 after churn",
        Duration::from_secs(60),
        |l| l.active == 0 && l.pending == 0,
    );
    assert_eq!(
        row.admitted_total,
        LIMIT + CHURN,
        "every success counted once: {row:?}"
    );
    assert_eq!(row.refused_reset_total, result.failed, "{result:?} {row:?}");
}

/// `limiter set --netns` / `unset --netns` change a pod's limit live, and reach a pod the agent
/// was not started with.
#[test]
fn root_set_and_unset_in_a_pod_live() {
    let bed = TestBed::new();
    let (a, b) = (bed.add_pod(), bed.add_pod());
    let (_sa, _sb) = (serve(&bed, &a), serve(&bed, &b));
    let agent = agent_for(&bed, &[(&a, "8000=1:reset")], &[]);
    let (na, nb) = (netns_of(&a), netns_of(&b));
    let first = Hold::open(&bed, 1, &a.addr(PORT), CONNECT_MS);
    assert_eq!(first.result.connected, 1, "{:?}", first.result);
    assert_eq!(
        Hold::open(&bed, 1, &a.addr(PORT), CONNECT_MS)
            .result
            .refused,
        1
    );

    let raised = agent.cli(&["set", "--netns", &na, "8000=2:reset"]);
    assert!(raised.status.success(), "{raised:?}");
    let second = Hold::open(&bed, 1, &a.addr(PORT), CONNECT_MS);
    assert_eq!(
        second.result.connected, 1,
        "after raising to 2: {:?}",
        second.result
    );

    // A pod not configured at start: `set` starts enforcing there.
    assert_pod_has_no_xdp(&bed, &b, "before set");
    let set_b = agent.cli(&["set", "--netns", &nb, "8000=1:reset"]);
    assert!(set_b.status.success(), "{set_b:?}");
    assert_pod_has_xdp(&bed, &b, "after set");
    let in_b = Hold::open(&bed, 1, &b.addr(PORT), CONNECT_MS);
    assert_eq!(in_b.result.connected, 1, "{:?}", in_b.result);
    assert_eq!(
        Hold::open(&bed, 1, &b.addr(PORT), CONNECT_MS)
            .result
            .refused,
        1
    );

    let unset = agent.cli(&["unset", "--netns", &na, "8000"]);
    assert!(unset.status.success(), "{unset:?}");
    let free = Hold::open(&bed, 3, &a.addr(PORT), CONNECT_MS);
    assert_eq!(
        free.result.connected, 3,
        "no limit in A any more: {:?}",
        free.result
    );

    // Unknown listener or namespace: a clear error.
    let wrong = agent.cli(&["unset", "--netns", &na, "9000"]);
    assert!(!wrong.status.success());
    let message = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        message.contains("9000") && message.contains(&na),
        "{message}"
    );
    let bad = agent.cli(&["set", "--netns", "/etc/hostname", "8000=1"]);
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(
        message.contains("/etc/hostname") && message.contains("not a network namespace"),
        "{message}"
    );
}

/// A pod restart (its namespace deleted and made again at the same path): the old namespace's
/// enforcement goes (its listener leaves stats), the new one is enforced without restarting
/// the agent. Then the agent restarts with pins and adopts the pod's live count.
#[test]
fn root_pod_restart_and_agent_restart_with_pins() {
    // Dropped last: removed (and with it whatever the agent left attached) even if the test
    // fails.
    let pins = PinDir::new();
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let netns = netns_of(&pod);
    let pin_dir = pins.arg();
    let server = serve(&bed, &pod);
    let agent = agent_for(
        &bed,
        &[(&pod, "8000=2:reset")],
        &["--pin-dir", &pin_dir, "--keep-pinned"],
    );
    let held = Hold::open(&bed, 2, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(held.result.connected, 2, "{:?}", held.result);

    drop(server);
    drop(held);
    bed.restart_pod(&pod);
    eventually("the agent to notice the restart", SETTLE, || {
        let log = agent.stderr().join("\n");
        if log.contains("was replaced") || log.contains("went away") {
            Ok(())
        } else {
            Err(log)
        }
    });
    // The new namespace is enforced with a count of its own, from 0.
    let row = agent.wait_listener_in("8000", Some(&netns), "the new pod enforced", SETTLE, |l| {
        l.active == 0 && l.admitted_total == 0
    });
    assert_eq!(row.limit, 2, "{row:?}");
    assert_pod_has_xdp(&bed, &pod, "after the pod restarted");
    let _server = serve(&bed, &pod);
    let held = Hold::open(&bed, 2, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(held.result.connected, 2, "{:?}", held.result);
    assert_eq!(
        Hold::open(&bed, 1, &pod.addr(PORT), CONNECT_MS)
            .result
            .refused,
        1
    );
    agent.wait_listener_in("8000", Some(&netns), "2 active", SETTLE, |l| l.active == 2);

    // The agent goes (pins kept) and comes back: the pod's count is adopted, still full.
    assert!(agent.stop(libc::SIGTERM).success());
    assert_pod_has_xdp(&bed, &pod, "kept pinned while no agent runs");
    assert_eq!(
        Hold::open(&bed, 1, &pod.addr(PORT), CONNECT_MS)
            .result
            .refused,
        1
    );
    let again = agent_for(&bed, &[(&pod, "8000=2:reset")], &["--pin-dir", &pin_dir]);
    let row = again.listener_in("8000", Some(&netns));
    assert_eq!(row.active, 2, "adopted count: {row:?}");
    assert_eq!(
        Hold::open(&bed, 1, &pod.addr(PORT), CONNECT_MS)
            .result
            .refused,
        1
    );
    held.close();
    again.wait_listener_in("8000", Some(&netns), "0 after close", SETTLE, |l| {
        l.active == 0
    });
    assert!(again.stop(libc::SIGTERM).success());
    assert_pod_has_no_xdp(&bed, &pod, "after the agent stopped without --keep-pinned");
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "pins left in {pin_dir}"
    );
}

/// Bad paths: not a namespace, another kind of namespace, missing. Each is refused with exit 2
/// naming the path, and nothing is left in the pod that was valid.
#[test]
fn root_bad_netns_paths_are_refused_and_leave_nothing() {
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let good = netns_of(&pod);
    for (bad, needle) in [
        ("/etc/hostname", "not a network namespace"),
        ("/proc/self/ns/mnt", "not a network namespace"),
        ("/run/netns/limiter-no-such-pod", "no such file"),
    ] {
        let finished = Agent::run_to_exit(
            &bed,
            &[
                "run",
                "--iface",
                &bed.srv_veth,
                "--limit-in",
                &good,
                "8000=5",
                "--limit-in",
                bad,
                "8000=5",
                "--control-socket",
                &Agent::socket_path().display().to_string(),
            ],
        );
        check_refusal(&bed, &finished, bad, 2, &[bad]);
        let line = finished.error_lines()[0].to_owned();
        assert!(line.contains(needle), "{bad}: {line}");
        assert_pod_has_no_xdp(&bed, &pod, bad);
    }
    // `close` needs the agent's proxy, which does not run in a pod.
    let finished = Agent::run_to_exit(
        &bed,
        &[
            "run",
            "--limit-in",
            &good,
            "8000=5:close",
            "--control-socket",
            &Agent::socket_path().display().to_string(),
        ],
    );
    check_refusal(
        &bed,
        &finished,
        "close in a pod",
        2,
        &["--limit-in", "close"],
    );
}

/// Each pod's copy of the kernel maps is sized for one workload (`capacity.rs`), not as the
/// agent's own copy: their memory is spent at load and charged to the agent's cgroup, and with
/// the agent's sizes every enforced pod cost about 26 MiB. A pod holds as many limited
/// listeners as its copy has slots: one more stops the agent at start with an error naming the
/// namespace and the number, and leaves nothing behind.
#[test]
fn root_a_pods_maps_are_sized_for_one_workload() {
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let _server = serve(&bed, &pod);
    let agent = agent_for(&bed, &[(&pod, "8000=1:reset")], &[]);
    let maps = agent.maps();
    let (own, pods) = (Capacity::agent(MAX_LISTENERS), Capacity::NETNS);
    for (name, own_entries, pod_entries) in [
        ("SLOT_STATS", own.listeners, pods.listeners),
        ("SLOT_USAGE", own.listeners, pods.listeners),
        ("LISTENERS", own.listeners, pods.listeners),
        ("PENDING", own.pending, pods.pending),
        ("SOURCES", own.sources, pods.sources),
        ("PREEXISTING", own.preexisting, pods.preexisting),
    ] {
        let mut sizes: Vec<u32> = maps
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, entries)| *entries)
            .collect();
        sizes.sort_unstable();
        let mut want = vec![own_entries, pod_entries];
        want.sort_unstable();
        assert_eq!(sizes, want, "{name}: the agent's maps {maps:?}");
    }
    // Enforced all the same.
    let first = Hold::open(&bed, 1, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(first.result.connected, 1, "{:?}", first.result);
    let over = Hold::open(&bed, 1, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(over.result.refused, 1, "{:?}", over.result);
    drop((first, over, agent));

    let path = netns_of(&pod);
    let limits: Vec<String> = (0..=pods.listeners)
        .map(|i| format!("{}=5", 10_000 + i))
        .collect();
    let socket = Agent::socket_path().display().to_string();
    let mut args = vec!["run", "--control-socket", &socket];
    for limit in &limits {
        args.extend_from_slice(&["--limit-in", &path, limit]);
    }
    let finished = Agent::run_to_exit(&bed, &args);
    // Exit 1: a capacity reached at load, not a malformed value (the agent's own slots are a
    // flag, --max-listeners, checked with the other flags: exit 2).
    check_refusal(
        &bed,
        &finished,
        "one limit more than a pod's slots",
        1,
        &[&pods.listeners.to_string()],
    );
    let line = finished.error_lines()[0].to_owned();
    assert!(line.contains(&path), "{line}");
    assert_pod_has_no_xdp(&bed, &pod, "after the refusal");
}

/// The classic mistake, reported: the NodePort limited on the node, where nothing listens on
/// it (the socket is in the pod); and a pod limit on a port nothing in the pod listens on.
#[test]
fn root_limits_nothing_listens_on_are_reported_with_their_namespace() {
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let _server = serve(&bed, &pod);
    bed.node_port(30080, &pod, PORT);
    let netns = netns_of(&pod);
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            "30080=5",
            "--limit-in",
            &netns,
            "8000=5",
            "--limit-in",
            &netns,
            "9000=5",
        ],
    );
    assert!(!agent.listener("30080").listening);
    assert!(agent.listener_in("8000", Some(&netns)).listening);
    assert!(!agent.listener_in("9000", Some(&netns)).listening);
    let log = agent.stderr().join("\n");
    assert!(
        log.lines()
            .any(|l| l.contains("nothing listens") && l.contains("9000") && l.contains(&netns)),
        "{log}"
    );
    let table = String::from_utf8_lossy(&agent.cli(&["stats"]).stdout).into_owned();
    assert!(
        table.contains(&format!(
            "9000: nothing listens on it in network namespace {netns}"
        )),
        "{table}"
    );
}

/// `--keepalive-for` reaches a pod's own outgoing connections (in Kubernetes the client that
/// needs keepalive is a pod).
#[test]
fn root_keepalive_for_reaches_a_pods_connections() {
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let to = addr(bed.cli_v4, 5432);
    let _db = EchoServer::start(&bed, Side::Client, &to, ServerMode::Echo);
    let netns = netns_of(&pod);
    let _agent = Agent::start(
        &bed,
        &[
            "--limit-in",
            &netns,
            "8000=5",
            "--keepalive-for",
            "198.18.0.0/15:5432",
            "time=60s,probes=3,interval=5s",
        ],
    );
    let got = connect_sockopts_in(&bed, pod.ns(), &to, 5000);
    assert_eq!(
        got,
        Keepalive {
            keepalive: 1,
            idle: 60,
            intvl: 5,
            cnt: 3,
        },
        "a plain client in the pod connecting to {to}"
    );
}

/// A forged-source SYN flood at a pod's listener below its limit does not keep real clients
/// out (flood mode works in a pod as on the node).
#[test]
fn root_spoofed_flood_at_a_pod_keeps_real_clients_in() {
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let _server = serve(&bed, &pod);
    bed.route_forged_sources();
    let netns = netns_of(&pod);
    let agent = agent_for(&bed, &[(&pod, "8000=100")], &[]);
    let flood = Flood::start(&bed, &pod.ip().to_string(), PORT, 2_000, 6);
    std::thread::sleep(Duration::from_millis(500));
    let probed = probe(
        &bed,
        &pod.addr(PORT),
        Duration::from_millis(100),
        40,
        Duration::from_secs(1),
    );
    let sent = flood.finish();
    let row = agent.listener_in("8000", Some(&netns));
    println!("flood {sent:?}; probe {probed:?}; {row:?}");
    assert!(probed.success_rate() >= 0.9, "{probed:?} {row:?}");
    assert!(row.flood_mode_entered_total >= 1, "{row:?}");
}

/// A pod that goes away for good: its listener leaves stats and metrics, its pins go, and the
/// agent lets go of the namespace (its veth disappears from the node), all without a restart.
#[test]
fn root_a_pod_that_goes_away_leaves_nothing_behind() {
    let pins = PinDir::new();
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let netns = netns_of(&pod);
    let pin_dir = pins.arg();
    let server = serve(&bed, &pod);
    let agent = agent_for(&bed, &[(&pod, "8000=3")], &["--pin-dir", &pin_dir]);
    let (status, metrics) = http_get(&bed, "/metrics");
    assert_eq!(status, 200);
    let labelled = format!("listener=\"8000\",netns=\"{netns}\"");
    assert!(
        metrics.contains(&format!(
            "limiter_listener_limit{{{labelled},action=\"drop\"}} 3"
        )),
        "{metrics}"
    );
    let pins = std::path::Path::new(&pin_dir)
        .join(format!("v{}/netns", limiter_common::MAP_LAYOUT_VERSION));
    assert_eq!(
        std::fs::read_dir(&pins).map(|d| d.count()).unwrap_or(0),
        1,
        "{}",
        pins.display()
    );

    drop(server);
    limiter_tests::process::run_ok("ip", &["netns", "del", pod.ns()]);
    eventually("the agent to let the namespace go", SETTLE, || {
        let links =
            limiter_tests::process::run_ok("ip", &["-n", &bed.srv_ns, "-o", "link", "show"]);
        if links.contains(&format!("{}@", pod.link.srv_veth)) {
            Err(links)
        } else {
            Ok(())
        }
    });
    let log = agent.stderr().join("\n");
    assert!(log.contains("went away") && log.contains(&netns), "{log}");
    assert!(agent.stats().listener_in("8000", Some(&netns)).is_none());
    let (_, metrics) = http_get(&bed, "/metrics");
    assert!(!metrics.contains(&netns), "{metrics}");
    assert_eq!(
        std::fs::read_dir(&pins).map(|d| d.count()).unwrap_or(0),
        0,
        "{}",
        pins.display()
    );
}

/// `namespaces:` in the config file, changed by a reload: a new namespace is enforced in, a
/// changed limit applies in place, and a namespace taken out of the file is let go.
#[test]
fn root_reload_changes_the_namespaces() {
    let bed = TestBed::new();
    let (a, b) = (bed.add_pod(), bed.add_pod());
    let (_sa, _sb) = (serve(&bed, &a), serve(&bed, &b));
    let (na, nb) = (netns_of(&a), netns_of(&b));
    let file = std::env::temp_dir().join(format!("{}.yaml", bed.srv_ns));
    let write = |namespaces: &[(&str, u32)]| {
        let mut text = String::from("overLimit: reset\nnamespaces:\n");
        for (path, limit) in namespaces {
            text.push_str(&format!(
                "  - path: {path}\n    listeners:\n      - listener: 8000\n        connection: {{ connectionLimit: {{ value: {limit} }} }}\n"
            ));
        }
        std::fs::write(&file, text).unwrap();
    };
    write(&[(&na, 1)]);
    let agent = Agent::start(&bed, &["--config", &file.display().to_string()]);
    let held_a = Hold::open(&bed, 1, &a.addr(PORT), CONNECT_MS);
    assert_eq!(held_a.result.connected, 1, "{:?}", held_a.result);
    assert_eq!(
        Hold::open(&bed, 1, &a.addr(PORT), CONNECT_MS)
            .result
            .refused,
        1
    );
    assert_pod_has_no_xdp(&bed, &b, "B not configured yet");

    write(&[(&na, 2), (&nb, 1)]);
    let reloaded = agent.cli(&["reload"]);
    let reply = String::from_utf8_lossy(&reloaded.stdout);
    assert!(reloaded.status.success(), "{reloaded:?}");
    assert!(reply.contains(&format!("enforcing in {nb}")), "{reply}");
    let second_a = Hold::open(&bed, 1, &a.addr(PORT), CONNECT_MS);
    assert_eq!(
        second_a.result.connected, 1,
        "A raised to 2: {:?}",
        second_a.result
    );
    let held_b = Hold::open(&bed, 1, &b.addr(PORT), CONNECT_MS);
    assert_eq!(held_b.result.connected, 1, "{:?}", held_b.result);
    assert_eq!(
        Hold::open(&bed, 1, &b.addr(PORT), CONNECT_MS)
            .result
            .refused,
        1
    );

    write(&[(&nb, 1)]);
    let reloaded = agent.cli(&["reload"]);
    let reply = String::from_utf8_lossy(&reloaded.stdout);
    assert!(
        reply.contains(&format!("stopped enforcing in {na}")),
        "{reply}"
    );
    assert_pod_has_no_xdp(&bed, &a, "A taken out of the file");
    assert!(agent.stats().listener_in("8000", Some(&na)).is_none());
    let free = Hold::open(&bed, 3, &a.addr(PORT), CONNECT_MS);
    assert_eq!(free.result.connected, 3, "{:?}", free.result);
    let _ = std::fs::remove_file(&file);
}

/// Clients that reach the pod through an overlay (VXLAN, decapsulated on the node, as between
/// nodes of a VXLAN CNI) are limited the same: the pod's XDP sees the inner packet.
#[test]
fn root_pod_limit_holds_through_an_overlay() {
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let _server = serve(&bed, &pod);
    let tunnel = bed.overlay_to_pod(&pod);
    let agent = agent_for(&bed, &[(&pod, "8000=2:reset")], &[]);
    let before = bed.rx_packets(&tunnel);
    let held = Hold::open(&bed, 2, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(held.result.connected, 2, "{:?}", held.result);
    let over = Hold::open(&bed, 1, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(over.result.refused, 1, "{:?}", over.result);
    assert!(
        bed.rx_packets(&tunnel) > before,
        "the connections did not come through the tunnel {tunnel}"
    );
    let row = agent.wait_listener_in("8000", Some(&netns_of(&pod)), "2 active", SETTLE, |l| {
        l.active == 2
    });
    assert_eq!(row.refused_reset_total, 1, "{row:?}");
}

/// Connections open in a pod before the agent starts count there too, and a per-source limit
/// inside the pod (`--limit-per-source-in`) counts their source: the next one from that client
/// is refused, and everything returns to 0 when they close.
#[test]
fn root_connections_open_in_a_pod_before_the_agent_count() {
    let bed = TestBed::new();
    let pod = bed.add_pod();
    let _server = serve(&bed, &pod);
    let mut before = Hold::open(&bed, 3, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(before.result.connected, 3, "{:?}", before.result);
    let path = netns_of(&pod);
    let agent = agent_for(
        &bed,
        &[(&pod, "8000=4:reset")],
        &["--limit-per-source-in", &path, "8000=3:reset"],
    );
    let row = agent.listener_in("8000", Some(&path));
    assert_eq!(
        (row.active, row.preexisting_total, row.sources_at_limit),
        (3, 3, 1),
        "{row:?}"
    );
    let refused = Hold::open(&bed, 1, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(refused.result.refused, 1, "{:?}", refused.result);
    assert_eq!(
        agent
            .listener_in("8000", Some(&path))
            .refused_per_source_total,
        1
    );
    assert_eq!(before.ping().echoed, 3);
    before.close();
    agent.wait_listener_in("8000", Some(&path), "back to 0", SETTLE, |l| {
        l.active == 0 && l.sources == 0
    });
}
