//! A DaemonSet rolling update or rollback across map layouts (README "Upgrades and rollbacks"):
//! the agent that comes up over pins of another layout takes over their links, counts the
//! established connections anew, and removes the other layout's pins; enforcement never stops.
//! The old agents are real builds (xtask `other_agents.rs`): the v6 agent of an older commit,
//! and today's code built under the next layout version. Needs root; `cargo xtask test` builds
//! the other agents and names them in `LIMITER_V6_AGENT` and `LIMITER_NEXT_LAYOUT_AGENT`.
use std::{
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use limiter_common::MAP_LAYOUT_VERSION;
use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
    node::Pod,
    pins::PinDir,
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);
const CONNECT_MS: u64 = 2000;

/// An agent build named by `var` (set by `cargo xtask test`).
fn other_agent(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with `cargo xtask test`, which builds that agent")
    });
    assert!(path.is_file(), "{var}={} does not exist", path.display());
    path
}

/// The pin directory's entries (`v7`, ...).
fn layouts_in(pins: &PinDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&pins.0)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A node as the DaemonSet's pod sees it: a listener on the host namespace and one in a pod,
/// each limited to 3 with reset, the agent pinning with `--keep-pinned`.
struct Node {
    bed: TestBed,
    pod: Pod,
    host_listener: String,
    _servers: [EchoServer; 2],
}

impl Node {
    fn new() -> Node {
        let bed = TestBed::new();
        let pod = bed.add_pod();
        let host_listener = format!("{}:{PORT}", bed.srv_v4);
        let servers = [
            EchoServer::start(
                &bed,
                Side::Server,
                &addr(bed.srv_v4, PORT),
                ServerMode::Echo,
            ),
            EchoServer::start_in(&bed, pod.ns(), &format!("0.0.0.0:{PORT}"), ServerMode::Echo),
        ];
        Node {
            bed,
            pod,
            host_listener,
            _servers: servers,
        }
    }

    fn netns(&self) -> String {
        self.pod.netns_path().display().to_string()
    }

    /// The agent `binary` as the DaemonSet runs it, over `pins`.
    fn agent(&self, binary: &Path, pins: &PinDir) -> Agent {
        let (limit, netns, pin_dir) = (
            format!("{}=3:reset", self.host_listener),
            self.netns(),
            pins.arg(),
        );
        let args = [
            "--limit",
            &limit,
            "--limit-in",
            &netns,
            "8000=3:reset",
            "--pin-dir",
            &pin_dir,
            "--keep-pinned",
        ];
        Agent::start_of(binary, &self.bed, &args, &[])
    }

    fn hold_3_each(&self) -> [Hold; 2] {
        let host = Hold::open(&self.bed, 3, &addr(self.bed.srv_v4, PORT), CONNECT_MS);
        let pod = Hold::open(&self.bed, 3, &self.pod.addr(PORT), CONNECT_MS);
        for held in [&host, &pod] {
            assert_eq!(held.result.connected, 3, "{:?}", held.result);
        }
        [host, pod]
    }

    /// Both listeners full: a 4th connection is refused at once, here and in the pod.
    fn assert_full(&self, context: &str) {
        for target in [addr(self.bed.srv_v4, PORT), self.pod.addr(PORT)] {
            let extra = Hold::open(&self.bed, 1, &target, CONNECT_MS);
            assert_eq!(
                (extra.result.connected, extra.result.refused),
                (0, 1),
                "{context}: a 4th connection to {target}: {:?}",
                extra.result
            );
        }
    }

    /// The agent that took over: 3 active in both places at once, refuses a 4th, back to 0
    /// when the 3 close, and only its own layout's pins left. Then 3 new connections get in
    /// and a 4th does not: the new admission decides (the old one, whose counts can only have
    /// grown since its accounting was replaced, would refuse them all).
    fn assert_taken_over(&self, agent: &Agent, held: [Hold; 2], pins: &PinDir, context: &str) {
        let netns = self.netns();
        let stats = agent.stats();
        let host = stats.listener(&self.host_listener).expect("host listener");
        let pod = stats
            .listener_in("8000", Some(&netns))
            .expect("pod listener");
        assert_eq!((host.active, pod.active), (3, 3), "{context}: {stats:?}");
        self.assert_full(context);
        assert_eq!(
            layouts_in(pins),
            [format!("v{MAP_LAYOUT_VERSION}")],
            "{context}: the other layout's pins should be gone"
        );
        self.close_and_wait_for_0(agent, held);
        let again = self.hold_3_each();
        self.assert_full(&format!("{context}, with 3 new connections each"));
        self.close_and_wait_for_0(agent, again);
        let log = agent.stderr().join("\n");
        assert!(
            log.contains("took over the pins of another map layout"),
            "{context}: {log}"
        );
    }
}

impl Node {
    /// `agent` shows `active` connections on the host's listener.
    fn assert_host_active(&self, agent: &Agent, active: u64, context: &str) {
        let stats = agent.stats();
        assert_eq!(
            stats.listener(&self.host_listener).map(|l| l.active),
            Some(active),
            "{context}: {stats:?}"
        );
    }

    fn close_and_wait_for_0(&self, agent: &Agent, held: [Hold; 2]) {
        let netns = self.netns();
        for held in held {
            held.close();
        }
        agent.wait_listener(&self.host_listener, "0 after close", SETTLE, |l| {
            l.active == 0
        });
        agent.wait_listener_in("8000", Some(&netns), "0 after close", SETTLE, |l| {
            l.active == 0
        });
    }
}

/// The rolling update from the last v6 release: SIGKILLed with 3 connections held on the host
/// and in the pod, its programs go on enforcing; today's agent comes up over its pins.
#[test]
fn root_update_from_a_v6_agent_keeps_enforcing_with_exact_counts() {
    let pins = PinDir::new();
    let node = Node::new();
    let old = node.agent(&other_agent("LIMITER_V6_AGENT"), &pins);
    let held = node.hold_3_each();
    assert_eq!(old.stop(libc::SIGKILL).signal(), Some(libc::SIGKILL));
    node.assert_full("with no agent, the v6 programs enforcing");
    assert_eq!(layouts_in(&pins), ["v6"]);
    let started = std::time::Instant::now();
    let new = node.agent(&limiter_tests::agent::limiter_bin(), &pins);
    // The takeover's figure (README "Upgrades and rollbacks"): start to `limiter: ready`.
    eprintln!("takeover of v6 pins: ready in {:?}", started.elapsed());
    node.assert_taken_over(&new, held, &pins, "today's agent over v6 pins");
}

/// A rollout and its rollback between two layouts of today's code: each agent takes over from
/// the other. The connections are open before the first agent starts, so the first counts them
/// with the adopt walk (on kernels before 6.10 their close is then seen by `close_watch`), and
/// each agent after it counts them anew.
#[test]
fn root_rollback_and_rollout_across_layouts_take_over_each_way() {
    let pins = PinDir::new();
    let node = Node::new();
    let today = limiter_tests::agent::limiter_bin();
    let next = other_agent("LIMITER_NEXT_LAYOUT_AGENT");
    let held = node.hold_3_each();
    let first = node.agent(&today, &pins);
    node.assert_host_active(&first, 3, "the walk counts what was open");
    node.assert_full("the first agent, over connections that were there first");
    assert_eq!(first.stop(libc::SIGKILL).signal(), Some(libc::SIGKILL));
    // The rollout to the next layout: it shows the same counts.
    let rolled_out = node.agent(&next, &pins);
    node.assert_host_active(&rolled_out, 3, "the next layout's agent");
    assert_eq!(layouts_in(&pins), [format!("v{}", MAP_LAYOUT_VERSION + 1)]);
    node.assert_full("the next layout's agent");
    assert_eq!(rolled_out.stop(libc::SIGKILL).signal(), Some(libc::SIGKILL));
    // And back.
    let rolled_back = node.agent(&today, &pins);
    node.assert_taken_over(
        &rolled_back,
        held,
        &pins,
        "rolled back over the next layout",
    );
}
