//! A stand-in Kubernetes API server for Kubernetes-mode tests (`fake_apiserver.py`): it runs in
//! the node namespace next to the agent, serves list and watch JSON for Pods and
//! ConnectionLimitPolicies, and is driven from the test over its stdin. The pods it lists are
//! the bed's real pod namespaces, so a policy applied through it ends in real clients refused
//! in a real pod.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde_json::{Value, json};

use crate::{netns::TestBed, node::Pod, process::Proc};

/// The node name the agent is started with (`--node-name`).
pub const NODE: &str = "node-a";
const ANSWER: Duration = Duration::from_secs(10);

pub struct FakeApiServer {
    proc: Proc,
    /// A kubeconfig pointing at it, for the agent's `KUBECONFIG`.
    pub kubeconfig: PathBuf,
}

impl FakeApiServer {
    pub fn start(bed: &TestBed) -> FakeApiServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/fake_apiserver.py");
        let proc = bed.spawn(
            "fake API server",
            bed.command(crate::Side::Server, "python3", &["-u", script]),
        );
        let line = proc.expect_line("the fake API server's port", ANSWER, |l| {
            l.starts_with("listening ")
        });
        let port = line.trim_start_matches("listening ").trim();
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", bed.srv_ns));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: fake\n  user:\n    token: test\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
            ),
        )
        .expect("writing the kubeconfig");
        FakeApiServer { proc, kubeconfig }
    }

    fn command(&mut self, command: Value) -> String {
        self.proc.send_line(&command.to_string());
        self.proc
            .expect_line("the fake API server's answer", ANSWER, |l| {
                l.starts_with("ok")
            })
    }

    /// Adds or replaces a pod on this node, running, at `pod`'s IP.
    pub fn apply_pod(&mut self, namespace: &str, name: &str, pod: &Pod, labels: Value) {
        self.apply_pod_at(namespace, name, pod.ip().into(), labels);
    }

    /// Adds or replaces a pod on this node, running, at `ip` (a container's, say).
    pub fn apply_pod_at(&mut self, namespace: &str, name: &str, ip: IpAddr, labels: Value) {
        let pod = pod_object(namespace, name, ip, labels);
        self.command(json!({"apply": "pods", "object": pod}));
    }

    /// Adds or replaces a `hostNetwork` pod on this node: it shares the node's namespace, and
    /// its `podIP` is the node's address `node_ip`.
    pub fn apply_host_network_pod(
        &mut self,
        namespace: &str,
        name: &str,
        node_ip: IpAddr,
        labels: Value,
    ) {
        let mut pod = pod_object(namespace, name, node_ip, labels);
        pod["spec"]["hostNetwork"] = json!(true);
        pod["status"]["hostIP"] = json!(node_ip.to_string());
        self.command(json!({"apply": "pods", "object": pod}));
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.command(json!({"delete": "pods", "namespace": namespace, "name": name}));
    }

    /// Adds or replaces a Gateway (`gateway.networking.k8s.io/v1`) with `listeners` (name,
    /// port).
    pub fn apply_gateway(&mut self, namespace: &str, name: &str, listeners: &[(&str, u16)]) {
        let listeners: Vec<Value> = listeners
            .iter()
            .map(|(name, port)| json!({"name": name, "port": port, "protocol": "HTTP"}))
            .collect();
        self.command(json!({"apply": "gateways", "object": {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"gatewayClassName": "test", "listeners": listeners},
        }}));
    }

    pub fn delete_gateway(&mut self, namespace: &str, name: &str) {
        self.command(json!({"delete": "gateways", "namespace": namespace, "name": name}));
    }

    /// Adds or replaces a Service with `labels` and TCP `ports` (port, targetPort).
    pub fn apply_service(
        &mut self,
        namespace: &str,
        name: &str,
        labels: Value,
        ports: &[(u16, u16)],
    ) {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(port, target)| json!({"port": port, "targetPort": target, "protocol": "TCP"}))
            .collect();
        self.command(json!({"apply": "services", "object": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"type": "LoadBalancer", "ports": ports},
        }}));
    }

    /// Adds or replaces a ConnectionLimitPolicy with this `spec`.
    pub fn apply_policy(&mut self, namespace: &str, name: &str, spec: Value) {
        self.command(json!({"apply": "policies", "object": {
            "apiVersion": "limiter.dev/v1alpha1",
            "kind": "ConnectionLimitPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }}));
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        self.command(json!({"delete": "policies", "namespace": namespace, "name": name}));
    }

    /// Forgets the history and drops the watches: they resume from a resourceVersion the
    /// server no longer has, get 410 Gone, and must list again.
    pub fn compact(&mut self) {
        self.command(json!({"compact": true}));
    }

    /// Closes every open watch (a dropped connection).
    pub fn drop_watches(&mut self) {
        self.command(json!({"drop_watches": true}));
    }

    /// The Events the agent posted.
    pub fn events(&mut self) -> Vec<Value> {
        let line = self.command(json!({"events": true}));
        serde_json::from_str(line.trim_start_matches("ok ")).expect("events JSON")
    }

    /// The requests served so far ("GET path", "POST path").
    pub fn requests(&mut self) -> Vec<String> {
        let line = self.command(json!({"requests": true}));
        serde_json::from_str(line.trim_start_matches("ok ")).expect("requests JSON")
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn pod_object(namespace: &str, name: &str, ip: IpAddr, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "server", "image": "echo", "ports": [{"containerPort": 8000}]}],
        },
        "status": {"phase": "Running", "podIP": ip.to_string()},
    })
}
