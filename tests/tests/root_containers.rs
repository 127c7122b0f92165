//! Pods of a real container runtime: Debian's podman (netavark bridge, runc) runs a busybox
//! echo server with a hostPort, its namespace at `/run/netns/netns-UUID`, as a CNI plugin and
//! kube-proxy would wire a pod. The agent enforces limits in it given the path (`--limit-in`)
//! and in Kubernetes mode, finding it by its IP; either way a client is refused by the pod IP
//! and through the hostPort's DNAT alike, and a restarted container (a new namespace) is found
//! again. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, TestBed,
    client::Hold,
    container::{Container, ContainerNetwork},
    eventually,
    kubernetes::{FakeApiServer, NODE},
};
use serde_json::json;

const CONNECT_MS: u64 = 2000;
const SETTLE: Duration = Duration::from_secs(30);

/// `limit` connections get in (through `first`), and one more is refused at once through
/// both the pod IP and the hostPort. Returns the held ones.
fn full_at(bed: &TestBed, container: &Container, limit: u32, first: &str) -> Hold {
    let held = Hold::open_from_host(bed, limit, first, CONNECT_MS);
    assert_eq!(
        held.result.connected, limit as u64,
        "{limit} through {first}: {:?}",
        held.result
    );
    for over in [container.pod_addr(), container.host_port_addr()] {
        let refused = Hold::open_from_host(bed, 1, &over, CONNECT_MS);
        assert_eq!(
            refused.result.refused, 1,
            "one over the limit of {limit}, through {over}: {:?}",
            refused.result
        );
    }
    held
}

#[test]
fn root_limit_in_a_containers_namespace_by_pod_ip_and_host_port() {
    let bed = TestBed::new();
    let network = ContainerNetwork::create();
    let container = Container::run(&network);
    let netns = container.netns_path().display().to_string();
    assert!(netns.starts_with("/run/netns/netns-"), "{netns}");
    let agent = Agent::start(&bed, &["--limit-in", &netns, "8000=3:reset"]);
    agent.wait_listener_in("8000", Some(&netns), "the limit of 3", SETTLE, |l| {
        l.limit == 3
    });

    let held = full_at(&bed, &container, 3, &container.pod_addr());
    assert_eq!(agent.listener_in("8000", Some(&netns)).active, 3);
    assert_eq!(container.established(), 3);
    held.close();
    eventually("the count to return to 0", SETTLE, || {
        match agent.listener_in("8000", Some(&netns)).active {
            0 => Ok(()),
            n => Err(format!("{n} active")),
        }
    });
    // The same limit through the hostPort: the DNAT happens before the pod's interface.
    let held = full_at(&bed, &container, 3, &container.host_port_addr());
    held.close();
    drop(agent);
    container.assert_no_xdp("after the agent stopped");
}

#[test]
fn root_kubernetes_mode_finds_containers_by_ip_and_again_after_a_restart() {
    let bed = TestBed::new();
    let network = ContainerNetwork::create();
    let mut container = Container::run(&network);
    let mut api = FakeApiServer::start(&bed);
    api.apply_pod_at("shop", "web", container.ip.into(), json!({"app": "web"}));
    api.apply_policy(
        "shop",
        "web-limit",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "listeners": [{"port": 8000, "maxActiveConnections": 2, "action": "reset"}]}),
    );
    let kubeconfig = api.kubeconfig.display().to_string();
    let agent = Agent::start_env(
        &bed,
        &["--kubernetes", "--node-name", NODE],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let netns = container.netns_path().display().to_string();
    agent.wait_listener_in(
        "8000",
        Some(&netns),
        "the policy's limit of 2",
        SETTLE,
        |l| l.limit == 2 && l.pod.as_deref() == Some("shop/web"),
    );
    full_at(&bed, &container, 2, &container.pod_addr()).close();
    full_at(&bed, &container, 2, &container.host_port_addr()).close();

    // A restart makes a new namespace; the pod object changes only if the IP did (as kubelet
    // would report it). The agent finds the new namespace by the IP.
    let ip_before = container.ip;
    container.restart();
    let renewed = container.netns_path().display().to_string();
    assert_ne!(renewed, netns, "podman restart made no new namespace");
    if container.ip != ip_before {
        api.apply_pod_at("shop", "web", container.ip.into(), json!({"app": "web"}));
    }
    agent.wait_listener_in(
        "8000",
        Some(&renewed),
        "the limit in the restarted container's namespace",
        SETTLE,
        |l| l.limit == 2,
    );
    eventually("the old namespace's row to go", SETTLE, || {
        match agent.stats().listener_in("8000", Some(&netns)) {
            None => Ok(()),
            Some(row) => Err(format!("{row:?}")),
        }
    });
    full_at(&bed, &container, 2, &container.host_port_addr()).close();
    drop(agent);
    container.assert_no_xdp("after the agent stopped");
}
