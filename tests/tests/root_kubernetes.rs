//! Kubernetes mode: the agent watches Pods on its node and ConnectionLimitPolicies through an
//! API server (here a stand-in that speaks the API's list and watch JSON), finds each pod's
//! network namespace on the node by its IP, and enforces the policies there: a policy applied
//! through the API ends in a real client refused in a real pod. Changes, deletions, a 410 Gone
//! that forces a relist, a dropped watch, conflicting policies and pods whose namespace cannot
//! be found are all covered. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, TestBed,
    client::{EchoServer, Hold, ServerMode},
    eventually,
    kubernetes::{FakeApiServer, NODE},
    node::Pod,
};
use serde_json::json;

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);
const CONNECT_MS: u64 = 2000;

fn serve(bed: &TestBed, pod: &Pod) -> EchoServer {
    EchoServer::start_in(bed, pod.ns(), &format!("0.0.0.0:{PORT}"), ServerMode::Echo)
}

fn netns_of(pod: &Pod) -> String {
    pod.netns_path().display().to_string()
}

fn agent(bed: &TestBed, api: &FakeApiServer) -> Agent {
    let kubeconfig = api.kubeconfig.display().to_string();
    Agent::start_env(
        bed,
        &["--kubernetes", "--node-name", NODE],
        &[("KUBECONFIG", kubeconfig.as_str())],
    )
}

fn wait_limit(agent: &Agent, pod: &Pod, limit: u64) {
    agent.wait_listener_in(
        "8000",
        Some(&netns_of(pod)),
        &format!("limit {limit} from the policy"),
        SETTLE,
        |l| l.limit == limit,
    );
}

fn wait_unlimited(agent: &Agent, pod: &Pod) {
    let netns = netns_of(pod);
    eventually("the pod's limit to go", SETTLE, || {
        match agent.stats().listener_in("8000", Some(&netns)) {
            None => Ok(()),
            Some(row) => Err(format!("{row:?}")),
        }
    });
}

fn assert_full_at(bed: &TestBed, pod: &Pod, limit: u32) -> Hold {
    let held = Hold::open(bed, limit, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(held.result.connected, limit as u64, "{:?}", held.result);
    let over = Hold::open(bed, 1, &pod.addr(PORT), CONNECT_MS);
    assert_eq!(
        over.result.refused, 1,
        "one over the limit of {limit}: {:?}",
        over.result
    );
    held
}

/// A policy selecting two gateway pods by label gives each its own limit; a change to the
/// policy applies live; deleting it lifts the limits.
#[test]
fn root_a_policy_limits_each_selected_pod() {
    let bed = TestBed::new();
    let (a, b, other) = (bed.add_pod(), bed.add_pod(), bed.add_pod());
    let _servers = [serve(&bed, &a), serve(&bed, &b), serve(&bed, &other)];
    let mut api = FakeApiServer::start(&bed);
    api.apply_pod("gw", "gateway-a", &a, json!({"app": "gateway"}));
    api.apply_pod("gw", "gateway-b", &b, json!({"app": "gateway"}));
    api.apply_pod("gw", "web", &other, json!({"app": "web"}));
    let agent = agent(&bed, &api);
    api.apply_policy(
        "gw",
        "gateway-limit",
        json!({"podSelector": {"matchLabels": {"app": "gateway"}},
               "listeners": [{"port": 8000, "maxActiveConnections": 2, "action": "reset"}]}),
    );
    wait_limit(&agent, &a, 2);
    wait_limit(&agent, &b, 2);
    // Stats and metrics name the pod next to the namespace's path.
    let row = agent.listener_in("8000", Some(&netns_of(&a)));
    assert_eq!(row.pod.as_deref(), Some("gw/gateway-a"), "{row:?}");
    let (_, metrics) = limiter_tests::agent::http_get(&bed, "/metrics");
    assert!(
        metrics.contains(&format!(
            "limiter_listener_limit{{listener=\"8000\",netns=\"{}\",pod=\"gw/gateway-a\",action=\"reset\"}} 2",
            netns_of(&a)
        )),
        "{metrics}"
    );
    let held_a = assert_full_at(&bed, &a, 2);
    let held_b = assert_full_at(&bed, &b, 2);
    // Not selected: no limit.
    let free = Hold::open(&bed, 4, &other.addr(PORT), CONNECT_MS);
    assert_eq!(free.result.connected, 4, "{:?}", free.result);
    assert!(
        agent
            .stats()
            .listener_in("8000", Some(&netns_of(&other)))
            .is_none()
    );

    // Envoy Gateway's field name, a higher limit: applied live, counts kept.
    api.apply_policy(
        "gw",
        "gateway-limit",
        json!({"podSelector": {"matchLabels": {"app": "gateway"}},
               "listeners": [{"port": 8000, "connectionLimit": {"value": 3}, "action": "reset"}]}),
    );
    wait_limit(&agent, &a, 3);
    assert_eq!(agent.listener_in("8000", Some(&netns_of(&a))).active, 2);
    let third = Hold::open(&bed, 1, &a.addr(PORT), CONNECT_MS);
    assert_eq!(third.result.connected, 1, "{:?}", third.result);

    api.delete_policy("gw", "gateway-limit");
    wait_unlimited(&agent, &a);
    wait_unlimited(&agent, &b);
    let links = bed.pod_links(&a);
    assert!(!links.contains("xdp"), "{links}");
    drop((held_a, held_b, third));
}

/// The watches survive a 410 Gone (history compacted: the agent lists again) and a dropped
/// connection (it watches again): changes made after each still apply. A pod that goes away
/// takes its limits with it.
#[test]
fn root_watches_survive_410_gone_and_dropped_connections() {
    let bed = TestBed::new();
    let a = bed.add_pod();
    let _server = serve(&bed, &a);
    let mut api = FakeApiServer::start(&bed);
    api.apply_pod("gw", "gateway-a", &a, json!({"app": "gateway"}));
    api.apply_policy(
        "gw",
        "limit",
        json!({"podSelector": {}, "listeners": [{"port": 8000, "maxActiveConnections": 5}]}),
    );
    let agent = agent(&bed, &api);
    wait_limit(&agent, &a, 5);
    let lists_before = list_requests(&mut api);

    api.compact();
    api.apply_policy(
        "gw",
        "limit",
        json!({"podSelector": {}, "listeners": [{"port": 8000, "maxActiveConnections": 4}]}),
    );
    wait_limit(&agent, &a, 4);
    assert!(
        list_requests(&mut api) > lists_before,
        "no list after the 410 Gone: {:?}",
        api.requests()
    );

    api.drop_watches();
    api.apply_policy(
        "gw",
        "limit",
        json!({"podSelector": {}, "listeners": [{"port": 8000, "maxActiveConnections": 1, "action": "reset"}]}),
    );
    wait_limit(&agent, &a, 1);
    let _held = assert_full_at(&bed, &a, 1);

    api.delete_pod("gw", "gateway-a");
    wait_unlimited(&agent, &a);
}

/// Waits for a Warning Event on the policy `policy` whose note contains `needle`.
fn wait_event(api: &mut FakeApiServer, policy: &str, needle: &str) {
    eventually(&format!("a Warning Event on {policy}"), SETTLE, || {
        let events = api.events();
        let found = events.iter().any(|e| {
            e["regarding"]["name"] == policy
                && e["type"] == "Warning"
                && e["note"].as_str().is_some_and(|n| n.contains(needle))
        });
        if found {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    });
}

fn list_requests(api: &mut FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with("/apis/limiter.dev") && !r.contains("watch=true"))
        .count()
}

/// Two policies limiting the same port of the same pod: the older applies, the newer is
/// reported (log, and a Warning Event on it); a bad listener in a policy is reported and the
/// rest of it applies; a pod whose IP no namespace on the node holds is reported and waits.
#[test]
fn root_conflicts_bad_policies_and_unfindable_pods_are_reported() {
    let bed = TestBed::new();
    let (a, b) = (bed.add_pod(), bed.add_pod());
    let _servers = [serve(&bed, &a), serve(&bed, &b)];
    let mut api = FakeApiServer::start(&bed);
    api.apply_pod("gw", "gateway-a", &a, json!({"app": "gateway"}));
    let agent = agent(&bed, &api);
    api.apply_policy(
        "gw",
        "first",
        json!({"podSelector": {"matchLabels": {"app": "gateway"}},
               "listeners": [{"port": 8000, "maxActiveConnections": 2}]}),
    );
    wait_limit(&agent, &a, 2);
    // Created later: loses port 8000; its 9000 applies.
    std::thread::sleep(Duration::from_millis(1100));
    api.apply_policy(
        "gw",
        "second",
        json!({"podSelector": {}, "listeners": [
            {"port": 8000, "maxActiveConnections": 7},
            {"port": 9000, "maxActiveConnections": 3},
            {"port": 9001}]}),
    );
    agent.wait_listener_in(
        "9000",
        Some(&netns_of(&a)),
        "the second policy's 9000",
        SETTLE,
        |l| l.limit == 3,
    );
    assert_eq!(agent.listener_in("8000", Some(&netns_of(&a))).limit, 2);
    eventually("a Warning Event on the second policy", SETTLE, || {
        let events = api.events();
        let found = events.iter().any(|e| {
            e["regarding"]["name"] == "second"
                && e["type"] == "Warning"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("gw/first") && n.contains("9001"))
        });
        if found {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    });
    let log = agent.stderr().join("\n");
    assert!(
        log.contains("already limited by the older policy gw/first"),
        "{log}"
    );

    // A pod whose IP is in no namespace on this node.
    let mut ghost = b.clone();
    ghost.link.ups_v4 = "198.18.250.250".parse().unwrap();
    api.apply_pod("gw", "ghost", &ghost, json!({"app": "gateway"}));
    eventually("the unfindable pod reported", SETTLE, || {
        let log = agent.stderr().join("\n");
        if log.contains(
            "pod gw/ghost (198.18.250.250): no network namespace on this node holds its IP",
        ) {
            Ok(())
        } else {
            Err(log)
        }
    });
    // Nothing else changed.
    assert_eq!(agent.listener_in("8000", Some(&netns_of(&a))).limit, 2);
}

/// Keepalive by policy (Gloo Mesh's ConnectionPolicy): a plain client in a selected pod finds
/// its connection to a listed destination carrying the policy's keepalive, read back from its
/// own socket; a pod not selected keeps the OS defaults.
#[test]
fn root_keepalive_by_policy_reaches_the_selected_pods_sockets() {
    let bed = TestBed::new();
    let (client, other) = (bed.add_pod(), bed.add_pod());
    let to = limiter_tests::client::addr(bed.cli_v4, 5432);
    let _db = EchoServer::start(&bed, limiter_tests::Side::Client, &to, ServerMode::Echo);
    let mut api = FakeApiServer::start(&bed);
    api.apply_pod("app", "db-client", &client, json!({"role": "db-client"}));
    api.apply_pod("app", "other", &other, json!({"role": "web"}));
    let agent = agent(&bed, &api);
    api.apply_policy(
        "app",
        "db-keepalive",
        json!({"podSelector": {"matchLabels": {"role": "db-client"}},
               "keepalive": [{"destinations": "198.18.0.0/15:5432",
                              "tcpKeepalive": {"time": "60s", "probes": 3, "interval": "5s"}}]}),
    );
    eventually("the policy applied in the client pod", SETTLE, || {
        let log = agent.stderr().join("\n");
        if log.contains(&format!("enforcing in {}", netns_of(&client))) {
            Ok(())
        } else {
            Err(log)
        }
    });
    let got = limiter_tests::client::connect_sockopts_in(&bed, client.ns(), &to, 5000);
    assert_eq!(
        got,
        limiter_tests::sockopt::Keepalive {
            keepalive: 1,
            idle: 60,
            intvl: 5,
            cnt: 3
        },
        "a plain client in the selected pod"
    );
    let untouched = limiter_tests::client::connect_sockopts_in(&bed, other.ns(), &to, 5000);
    assert_eq!(untouched.keepalive, 0, "a pod not selected: {untouched:?}");
}

/// A pod whose sandbox is recreated (its namespace deleted and made again, same IP) is found
/// again by its IP and enforced in its new namespace, without the Pod object changing.
#[test]
fn root_a_recreated_pod_namespace_is_found_again() {
    let bed = TestBed::new();
    let a = bed.add_pod();
    let server = serve(&bed, &a);
    let mut api = FakeApiServer::start(&bed);
    api.apply_pod("gw", "gateway-a", &a, json!({"app": "gateway"}));
    api.apply_policy(
        "gw",
        "limit",
        json!({"podSelector": {}, "listeners": [{"port": 8000, "maxActiveConnections": 1, "action": "reset"}]}),
    );
    let agent = agent(&bed, &api);
    wait_limit(&agent, &a, 1);
    let held = assert_full_at(&bed, &a, 1);
    drop(held);
    drop(server);
    bed.restart_pod(&a);
    let _server = serve(&bed, &a);
    eventually("the pod's new namespace enforced", SETTLE, || {
        let log = agent.stderr().join("\n");
        let row = agent
            .stats()
            .listener_in("8000", Some(&netns_of(&a)))
            .cloned();
        match row {
            Some(row) if row.admitted_total == 0 && log.contains("looked for by its IP") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let _held = assert_full_at(&bed, &a, 1);
}

/// Gateway API policy attachment: a policy with `targetRefs` to a Gateway limits the
/// Gateway's listeners on the pods that serve it, found by the implementations' labels, at the
/// port each pod listens on: Envoy Gateway's envoy pod (its own namespace, `owning-gateway-*`
/// labels) listens on 10080 for the listener's port 80, as the Gateway's Service says;
/// GEP-1762's labelled pod (Istio) on the listener's own port. A Gateway that goes away takes
/// its limits with it and the policy is told; a hostNetwork pod a policy selects is reported,
/// not skipped in silence.
#[test]
fn root_target_refs_limit_a_gateways_pods_at_the_port_they_listen_on() {
    let bed = TestBed::new();
    let (envoy, istio, node_proxy) = (bed.add_pod(), bed.add_pod(), bed.add_pod());
    let _servers = [
        EchoServer::start_in(&bed, envoy.ns(), "0.0.0.0:10080", ServerMode::Echo),
        serve(&bed, &istio),
    ];
    let mut api = FakeApiServer::start(&bed);
    let envoy_labels = json!({
        "gateway.envoyproxy.io/owning-gateway-name": "eg",
        "gateway.envoyproxy.io/owning-gateway-namespace": "default",
    });
    api.apply_pod(
        "envoy-gateway-system",
        "envoy-eg",
        &envoy,
        envoy_labels.clone(),
    );
    api.apply_service(
        "envoy-gateway-system",
        "envoy-default-eg",
        envoy_labels,
        &[(80, 10080), (443, 10443)],
    );
    api.apply_gateway("default", "eg", &[("http", 80), ("https", 443)]);
    api.apply_pod(
        "default",
        "web-istio",
        &istio,
        json!({"gateway.networking.k8s.io/gateway-name": "web"}),
    );
    api.apply_gateway("default", "web", &[("http", PORT)]);
    let agent = agent(&bed, &api);
    api.apply_policy(
        "default",
        "eg-limit",
        json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg", "sectionName": "http"}],
               "listeners": [{"connectionLimit": {"value": 2}, "action": "reset"}]}),
    );
    api.apply_policy(
        "default",
        "web-limit",
        json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web"}],
               "listeners": [{"maxActiveConnections": 1, "action": "reset"}]}),
    );
    agent.wait_listener_in(
        "10080",
        Some(&netns_of(&envoy)),
        "eg's http listener at 10080",
        SETTLE,
        |l| l.limit == 2 && l.pod.as_deref() == Some("envoy-gateway-system/envoy-eg"),
    );
    wait_limit(&agent, &istio, 1);
    // Only the targeted listener: nothing at 10443.
    assert!(
        agent
            .stats()
            .listener_in("10443", Some(&netns_of(&envoy)))
            .is_none()
    );
    let held = Hold::open(&bed, 2, &envoy.addr(10080), CONNECT_MS);
    assert_eq!(held.result.connected, 2, "{:?}", held.result);
    let over = Hold::open(&bed, 1, &envoy.addr(10080), CONNECT_MS);
    assert_eq!(over.result.refused, 1, "{:?}", over.result);
    let held_istio = assert_full_at(&bed, &istio, 1);

    // The Gateway goes: its pods' limits go, and the policy is told why.
    api.delete_gateway("default", "eg");
    eventually("eg's limit to go", SETTLE, || {
        match agent.stats().listener_in("10080", Some(&netns_of(&envoy))) {
            None => Ok(()),
            Some(row) => Err(format!("{row:?}")),
        }
    });
    wait_event(&mut api, "eg-limit", "Gateway default/eg not found");

    // A hostNetwork pod selected by a policy: reported on the policy, nothing enforced.
    api.apply_host_network_pod(
        "default",
        "node-proxy",
        node_proxy.ip().into(),
        json!({"app": "node-proxy"}),
    );
    api.apply_policy(
        "default",
        "node-proxy-limit",
        json!({"podSelector": {"matchLabels": {"app": "node-proxy"}},
               "listeners": [{"port": 8000, "maxActiveConnections": 1}]}),
    );
    wait_event(
        &mut api,
        "node-proxy-limit",
        "pod node-proxy uses hostNetwork",
    );
    assert!(
        agent
            .stats()
            .listener_in("8000", Some(&netns_of(&node_proxy)))
            .is_none()
    );
    drop((held, held_istio));
}
