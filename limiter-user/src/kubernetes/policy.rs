//! `ConnectionLimitPolicy` (`limiter.dev/v1alpha1`, namespaced): which pods of its namespace
//! get which listener limits, written with the seeds' field names, and how the policies of a
//! namespace combine into each pod's limits.
//!
//! ```yaml
//! apiVersion: limiter.dev/v1alpha1
//! kind: ConnectionLimitPolicy
//! metadata: { name: gateway, namespace: gloo-system }
//! spec:
//!   podSelector:                    # as a NetworkPolicy's; {} selects every pod
//!     matchLabels: { gloo: gateway-proxy }
//!   listeners:
//!     - port: 8000                  # the container port
//!       maxActiveConnections: 1000  # Gloo's connectionLimit.maxActiveConnections, or
//!       # connectionLimit: { value: 1000 }   Envoy Gateway's connection.connectionLimit
//!       action: reset               # drop (default) | reset
//!   keepalive:                      # Gloo Mesh ConnectionPolicy's tcpKeepalive, for the pods'
//!     - destinations: 10.96.0.0/12:9080   # outgoing connections to these destinations
//!       tcpKeepalive: { time: 700s, probes: 20, interval: 10s }
//! ```
//!
//! Instead of `podSelector`, `targetRefs` to a Gateway of the namespace (Gateway API policy
//! attachment) selects the pods serving it, each listener at the pod's own port
//! ([`crate::kubernetes::gateway`]).
//!
//! Each selected pod gets the limits on its own (Envoy's per-instance counters). Two policies
//! that limit the same port of the same pod conflict: the older one (creation time, then
//! namespace/name) applies, and the other is reported in the log and as a Warning Event on it.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    config::keepalive::{Destinations, KeepaliveSpec},
    config::listener::{Action, LimitSpec, Listener, Scope},
    kubernetes::{
        gateway::{Gateways, TargetRef},
        pod::PodInfo,
    },
};

#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "limiter.dev",
    version = "v1alpha1",
    kind = "ConnectionLimitPolicy",
    namespaced,
    shortname = "clp"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionLimitPolicySpec {
    /// The pods of the policy's namespace it applies to, as a NetworkPolicy's podSelector;
    /// `{}` selects every pod. Give this or `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Gateways of the policy's namespace (Gateway API policy attachment, as Envoy Gateway's
    /// ClientTrafficPolicy): the limits apply to their listeners (one, with `sectionName`) on
    /// the pods that serve them. Give this or `podSelector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    /// Limits on the pods' listeners: by container port with `podSelector`; with `targetRefs`,
    /// on every targeted Gateway listener, or on the one whose port is `port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<PolicyListener>,
    /// TCP keepalive on the pods' outgoing connections, by destination (Gloo Mesh's
    /// ConnectionPolicy `tcpKeepalive`), set by the kernel when they connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keepalive: Vec<PolicyKeepalive>,
}

/// Keepalive for connections to some destinations.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyKeepalive {
    /// `CIDR[:PORT]`, as for `--keepalive-for`, e.g. `10.96.0.0/12:5432`.
    pub destinations: String,
    /// Istio's / Gloo Mesh's `tcpKeepalive`; a field left out keeps the OS default.
    pub tcp_keepalive: TcpKeepalive,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Idle time before the first probe, e.g. `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Unanswered probes before the connection is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 127))]
    pub probes: Option<u32>,
    /// Time between probes, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// One listener's limits. Give its own count one way: Gloo's `maxActiveConnections` or Envoy
/// Gateway's `connectionLimit.value`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyListener {
    /// With `podSelector`: the container port the pod listens on (every address of the pod),
    /// required. With `targetRefs`: a Gateway listener's port, to limit only that one of the
    /// targeted listeners; the pod's own port for it is found through the Gateway's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// Gloo Gateway's `connectionLimit.maxActiveConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub max_active_connections: Option<u32>,
    /// Envoy Gateway's `connection.connectionLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<ConnectionLimitValue>,
    /// Over the limit: `drop` (silent, the default), `reset` ("connection refused") or
    /// `dry-run` (let through, counted as would-have-been-refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<PolicyAction>,
    /// At most this many active connections from one client address (an IPv4 address, an
    /// IPv6 /64), beside or instead of the listener's own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_source_limit: Option<PerSourceLimit>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PerSourceLimit {
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub max_active_connections: u32,
    /// Over it: as the listener's `action`; default `drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<PolicyAction>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionLimitValue {
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub value: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyAction {
    Drop,
    Reset,
    /// Let it through and count it as would-have-been-refused.
    DryRun,
}

/// The CustomResourceDefinition, as YAML (`limiter crd`, deploy/kubernetes/crd.yaml).
pub fn crd_yaml() -> Result<String, String> {
    use kube::CustomResourceExt as _;
    let header = "# The ConnectionLimitPolicy custom resource `limiter run --kubernetes` watches. Generated by\n\
                  # `limiter crd` from limiter-user/src/kubernetes/policy.rs; a unit test keeps them equal.\n";
    serde_saphyr::to_string(&ConnectionLimitPolicy::crd())
        .map(|yaml| format!("{header}{yaml}"))
        .map_err(|e| format!("writing the CRD as YAML: {e}"))
}

/// A policy's identity and order: older first (creation time, then namespace/name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyKey {
    pub created: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Each pod's limits and keepalive policies from the policies, and what of each policy does
/// not apply.
#[derive(Debug, Default, PartialEq)]
pub struct Resolved {
    /// By (pod namespace, pod name).
    pub limits: BTreeMap<(String, String), Vec<LimitSpec>>,
    pub keepalive: BTreeMap<(String, String), Vec<(Destinations, KeepaliveSpec)>>,
    /// By policy: its listeners that do not apply, and why.
    pub conflicts: BTreeMap<PolicyKey, Vec<String>>,
}

/// Combines `policies` (each with its key) into limits for `pods`; `gateways` resolves
/// `targetRefs`.
pub fn resolve(
    pods: &[PodInfo],
    policies: &[(PolicyKey, ConnectionLimitPolicySpec)],
    gateways: &Gateways,
) -> Resolved {
    let mut resolved = Resolved::default();
    let mut ordered: Vec<&(PolicyKey, ConnectionLimitPolicySpec)> = policies.iter().collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0));
    // Which policy set each (pod, port), for the conflict message.
    let mut owner: BTreeMap<(String, String, u16), PolicyKey> = BTreeMap::new();
    let mut keepalive_owner: BTreeMap<(String, String, String), PolicyKey> = BTreeMap::new();
    for (key, spec) in ordered {
        let mut problems = Vec::new();
        if spec.listeners.is_empty() && spec.keepalive.is_empty() {
            problems.push("nothing to apply: give listeners, keepalive or both".to_string());
        }
        let keepalive: Vec<(Destinations, KeepaliveSpec)> = spec
            .keepalive
            .iter()
            .filter_map(|k| match keepalive_of(k) {
                Ok(policy) => Some(policy),
                Err(problem) => {
                    problems.push(format!("keepalive for {}: {problem}", k.destinations));
                    None
                }
            })
            .collect();
        for (pod, ports) in placements(key, spec, pods, gateways, &mut problems) {
            if pod.host_network {
                problems.push(format!(
                    "pod {} uses hostNetwork: its listeners are the node's, which a policy does \
                     not limit; limit them with the agent's own --limit or config file",
                    pod.name
                ));
                continue;
            }
            let mut limits: Vec<LimitSpec> = Vec::new();
            for (listener, port) in ports {
                match limit_of(&spec.listeners[listener], port) {
                    Ok(specs) => limits.extend(specs),
                    Err(problem) => problems.push(format!("port {port}: {problem}")),
                }
            }
            for limit in &limits {
                let port = limit.listener.port();
                let slot = (pod.namespace.clone(), pod.name.clone(), port);
                // (A policy's own two limits on one port, its own and per source, go together.)
                if let Some(first) = owner.get(&slot).filter(|first| *first != key) {
                    problems.push(format!(
                        "port {port} of pod {}: already limited by the older policy {first}",
                        pod.name
                    ));
                    continue;
                }
                owner.insert(slot, key.clone());
                let pod_limits = resolved
                    .limits
                    .entry((pod.namespace.clone(), pod.name.clone()))
                    .or_default();
                if !pod_limits.contains(limit) {
                    pod_limits.push(*limit);
                }
            }
            for (destinations, spec) in &keepalive {
                let slot = (
                    pod.namespace.clone(),
                    pod.name.clone(),
                    destinations.to_string(),
                );
                if let Some(first) = keepalive_owner.get(&slot) {
                    problems.push(format!(
                        "keepalive for {destinations} of pod {}: already set by the older policy {first}",
                        pod.name
                    ));
                    continue;
                }
                keepalive_owner.insert(slot, key.clone());
                resolved
                    .keepalive
                    .entry((pod.namespace.clone(), pod.name.clone()))
                    .or_default()
                    .push((*destinations, *spec));
            }
        }
        // The same problem for several pods (a bad listener) is said once.
        let mut said = std::collections::BTreeSet::new();
        problems.retain(|p| said.insert(p.clone()));
        if !problems.is_empty() {
            resolved.conflicts.insert(key.clone(), problems);
        }
    }
    resolved
}

/// The pods a policy applies to, each with what it limits there: (index of the policy's
/// listener, the pod's port). By `podSelector`, the listener's own port in the selected pods of
/// the policy's namespace; by `targetRefs`, each targeted Gateway listener in the pods serving
/// the Gateway, at the port the pod listens on for it.
fn placements<'a>(
    key: &PolicyKey,
    spec: &ConnectionLimitPolicySpec,
    pods: &'a [PodInfo],
    gateways: &Gateways,
    problems: &mut Vec<String>,
) -> Vec<(&'a PodInfo, Vec<(usize, u16)>)> {
    match (&spec.pod_selector, spec.target_refs.is_empty()) {
        (Some(_), false) => {
            problems.push("give podSelector or targetRefs, not both".to_string());
            Vec::new()
        }
        (None, true) => {
            problems.push("no pods: give podSelector or targetRefs".to_string());
            Vec::new()
        }
        (Some(selector), true) => {
            let mut ports = Vec::new();
            for (index, listener) in spec.listeners.iter().enumerate() {
                match listener
                    .port
                    .map(|p| (p, u16::try_from(p).ok().filter(|p| *p != 0)))
                {
                    Some((_, Some(port))) => ports.push((index, port)),
                    Some((port, None)) => {
                        problems.push(format!("port {port}: not a port (1-65535)"));
                    }
                    None => problems.push(format!(
                        "listener {}: give its port (the container port) with podSelector",
                        index + 1
                    )),
                }
            }
            pods.iter()
                .filter(|p| p.namespace == key.namespace && selects(selector, &p.labels))
                .map(|pod| (pod, ports.clone()))
                .collect()
        }
        (None, false) => {
            let mut placed: Vec<(&PodInfo, Vec<(usize, u16)>)> = Vec::new();
            let mut matched = vec![false; spec.listeners.len()];
            for target in &spec.target_refs {
                let listeners = match gateways.targeted(&key.namespace, target) {
                    Ok(listeners) => listeners,
                    Err(problem) => {
                        problems.push(problem);
                        continue;
                    }
                };
                for pod in pods
                    .iter()
                    .filter(|p| Gateways::serves(p, &key.namespace, &target.name))
                {
                    let mut ports = Vec::new();
                    for gateway_listener in &listeners {
                        for (index, listener) in spec.listeners.iter().enumerate() {
                            let port = i64::from(gateway_listener.port);
                            if listener.port.is_some_and(|p| i64::from(p) != port) {
                                continue;
                            }
                            matched[index] = true;
                            match gateways.pod_port(
                                pod,
                                &key.namespace,
                                &target.name,
                                gateway_listener.port,
                            ) {
                                Ok(pod_port) => ports.push((index, pod_port)),
                                Err(problem) => problems.push(problem),
                            }
                        }
                    }
                    // A pod of several targets (two listeners of one Gateway) is placed once.
                    match placed.iter_mut().find(|(p, _)| std::ptr::eq(*p, pod)) {
                        Some((_, existing)) => existing.extend(ports),
                        None => placed.push((pod, ports)),
                    }
                }
            }
            for (index, listener) in spec.listeners.iter().enumerate() {
                if let (false, Some(port)) = (matched[index], listener.port) {
                    problems.push(format!(
                        "port {port}: no targeted Gateway listener has this port"
                    ));
                }
            }
            placed
        }
    }
}

/// A listener of a policy as limits on the pod's `port` (every address, both families): its
/// own, its per-source one, or both.
fn limit_of(listener: &PolicyListener, port: u16) -> Result<Vec<LimitSpec>, String> {
    let own = match (
        listener.max_active_connections,
        listener.connection_limit.as_ref().map(|c| c.value),
    ) {
        (Some(_), Some(_)) => {
            return Err("give maxActiveConnections or connectionLimit.value, not both".to_string());
        }
        (Some(n), None) | (None, Some(n)) => Some((n, listener.action)),
        (None, None) => None,
    };
    let per_source = listener
        .per_source_limit
        .as_ref()
        .map(|p| (p.max_active_connections, p.action));
    if own.is_none() && per_source.is_none() {
        return Err(
            "no limit (maxActiveConnections, connectionLimit.value or perSourceLimit)".to_string(),
        );
    }
    [(own, Scope::Listener), (per_source, Scope::PerSource)]
        .into_iter()
        .filter_map(|(limit, scope)| limit.map(|(n, action)| (n, action, scope)))
        .map(|(limit, action, scope)| {
            if limit == 0 {
                return Err("a limit of 0 would refuse every connection".to_string());
            }
            Ok(LimitSpec {
                listener: Listener::AnyAddress(port),
                scope,
                limit,
                action: Some(match action {
                    Some(PolicyAction::Reset) => Action::Reset,
                    Some(PolicyAction::DryRun) => Action::DryRun,
                    Some(PolicyAction::Drop) | None => Action::Drop,
                }),
            })
        })
        .collect()
}

/// A keepalive entry of a policy, through the same parsers as `--keepalive-for`.
fn keepalive_of(policy: &PolicyKeepalive) -> Result<(Destinations, KeepaliveSpec), String> {
    let destinations = policy.destinations.parse::<Destinations>()?;
    let t = &policy.tcp_keepalive;
    let fields: Vec<String> = [
        t.time.as_ref().map(|v| format!("time={v}")),
        t.probes.map(|v| format!("probes={v}")),
        t.interval.as_ref().map(|v| format!("interval={v}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if fields.iter().any(|f| f.matches(['=', ',']).count() != 1) {
        return Err(format!(
            "'{}' is not a single value per field",
            fields.join(",")
        ));
    }
    let spec = if fields.is_empty() {
        KeepaliveSpec::default()
    } else {
        fields.join(",").parse::<KeepaliveSpec>()?
    };
    Ok((destinations, spec))
}

/// Whether `selector` selects a pod with `labels` (Kubernetes' label selector semantics).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| expression_holds(requirement, labels))
}

fn expression_holds(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        // An operator the API server would have rejected: select nothing rather than all.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::gateway::{
        ENVOY_GATEWAY_NAME_LABEL, ENVOY_GATEWAY_NAMESPACE_LABEL, GatewayListener,
    };

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..PodInfo::default()
        }
    }

    fn policy(
        created: &str,
        ns: &str,
        name: &str,
        yaml: &str,
    ) -> (PolicyKey, ConnectionLimitPolicySpec) {
        (
            PolicyKey {
                created: created.into(),
                namespace: ns.into(),
                name: name.into(),
            },
            serde_saphyr::from_str(yaml).unwrap(),
        )
    }

    /// [`resolve`] with no Gateways.
    fn resolve_pods(
        pods: &[PodInfo],
        policies: &[(PolicyKey, ConnectionLimitPolicySpec)],
    ) -> Resolved {
        resolve(pods, policies, &Gateways::default())
    }

    #[test]
    fn policies_select_pods_of_their_namespace_by_label() {
        let pods = [
            pod("gw", "a", &[("app", "gateway")]),
            pod("gw", "b", &[("app", "other")]),
            pod("other", "c", &[("app", "gateway")]),
        ];
        let resolved = resolve_pods(
            &pods,
            &[policy(
                "2026-01-01T00:00:00Z",
                "gw",
                "limit",
                "podSelector: { matchLabels: { app: gateway } }\nlisteners:\n  - { port: 8000, maxActiveConnections: 5, action: reset }\n  - { port: 9000, connectionLimit: { value: 2 } }\n",
            )],
        );
        assert_eq!(
            resolved.limits,
            BTreeMap::from([(
                ("gw".to_string(), "a".to_string()),
                vec![
                    "8000=5:reset".parse().unwrap(),
                    "9000=2:drop".parse().unwrap()
                ]
            )])
        );
        assert!(resolved.conflicts.is_empty());
    }

    #[test]
    fn per_source_limits_beside_or_instead_of_the_listeners() {
        let pods = [pod("gw", "a", &[])];
        let resolved = resolve_pods(
            &pods,
            &[policy(
                "2026-01-01T00:00:00Z",
                "gw",
                "limit",
                "podSelector: {}\nlisteners:\n  - { port: 8000, maxActiveConnections: 100, perSourceLimit: { maxActiveConnections: 2, action: reset } }\n  - { port: 9000, perSourceLimit: { maxActiveConnections: 3 } }\n  - { port: 9001 }\n",
            )],
        );
        assert_eq!(
            resolved.limits[&("gw".to_string(), "a".to_string())],
            vec![
                "8000=100:drop".parse::<LimitSpec>().unwrap(),
                "8000=2:reset".parse::<LimitSpec>().unwrap().per_source(),
                "9000=3:drop".parse::<LimitSpec>().unwrap().per_source(),
            ]
        );
        let problems = resolved.conflicts.values().next().unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("port 9001: no limit"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_older_policy_wins_a_port_and_the_other_is_told() {
        let pods = [pod("gw", "a", &[("app", "gateway")])];
        let resolved = resolve_pods(
            &pods,
            &[
                policy(
                    "2026-02-01T00:00:00Z",
                    "gw",
                    "newer",
                    "podSelector: {}\nlisteners: [{ port: 8000, maxActiveConnections: 9 }]\n",
                ),
                policy(
                    "2026-01-01T00:00:00Z",
                    "gw",
                    "older",
                    "podSelector: { matchExpressions: [{ key: app, operator: In, values: [gateway] }] }\nlisteners: [{ port: 8000, maxActiveConnections: 5 }]\n",
                ),
            ],
        );
        assert_eq!(
            resolved.limits[&("gw".to_string(), "a".to_string())],
            vec!["8000=5:drop".parse::<LimitSpec>().unwrap()]
        );
        let newer = resolved
            .conflicts
            .iter()
            .find(|(k, _)| k.name == "newer")
            .unwrap()
            .1;
        assert!(newer[0].contains("gw/older"), "{newer:?}");
    }

    #[test]
    fn bad_listeners_are_reported_not_applied() {
        let resolved = resolve_pods(
            &[pod("gw", "a", &[])],
            &[policy(
                "t",
                "gw",
                "bad",
                "podSelector: {}\nlisteners:\n  - { port: 8000 }\n  - { port: 70000, maxActiveConnections: 1 }\n  - { port: 8001, maxActiveConnections: 1, connectionLimit: { value: 2 } }\n  - { port: 8002, maxActiveConnections: 0 }\n",
            )],
        );
        assert!(resolved.limits.is_empty(), "{resolved:?}");
        let problems = resolved.conflicts.values().next().unwrap();
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn the_committed_crd_is_the_generated_one() {
        let committed = include_str!("../../../deploy/kubernetes/crd.yaml");
        assert_eq!(
            committed,
            crd_yaml().unwrap(),
            "deploy/kubernetes/crd.yaml is stale: regenerate it with `limiter crd`"
        );
    }

    #[test]
    fn the_sample_policies_parse_and_resolve() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/samples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let policy: ConnectionLimitPolicy =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let key = PolicyKey {
                created: String::new(),
                namespace: policy.metadata.namespace.clone().unwrap(),
                name: policy.metadata.name.clone().unwrap(),
            };
            // A pod the policy selects: by its podSelector's labels, or serving its Gateway
            // (Envoy Gateway's labels, in Envoy Gateway's namespace, behind its Service).
            let mut gateways = Gateways::default();
            let labels = match (&policy.spec.pod_selector, policy.spec.target_refs.first()) {
                (Some(selector), _) => selector.match_labels.clone().unwrap_or_default(),
                (None, Some(target)) => {
                    gateways.listeners.insert(
                        (key.namespace.clone(), target.name.clone()),
                        vec![GatewayListener {
                            name: target.section_name.clone().unwrap_or("http".into()),
                            port: 80,
                            protocol: "HTTP".into(),
                        }],
                    );
                    BTreeMap::from([
                        (ENVOY_GATEWAY_NAME_LABEL.to_string(), target.name.clone()),
                        (
                            ENVOY_GATEWAY_NAMESPACE_LABEL.to_string(),
                            key.namespace.clone(),
                        ),
                    ])
                }
                (None, None) => panic!("{}: selects no pods", path.display()),
            };
            let pod = PodInfo {
                namespace: key.namespace.clone(),
                name: "p".into(),
                labels,
                ..PodInfo::default()
            };
            let resolved = resolve(&[pod], &[(key, policy.spec)], &gateways);
            assert!(
                resolved.conflicts.is_empty(),
                "{}: {resolved:?}",
                path.display()
            );
            assert_eq!(
                resolved.limits.len() + resolved.keepalive.len(),
                1,
                "{}",
                path.display()
            );
            seen += 1;
        }
        assert_eq!(seen, 3, "one sample per seed guide");
    }

    #[test]
    fn keepalive_by_policy_goes_to_the_selected_pods() {
        let resolved = resolve_pods(
            &[pod("app", "client", &[("role", "db-client")])],
            &[
                policy(
                    "1",
                    "app",
                    "keepalive",
                    "podSelector: { matchLabels: { role: db-client } }\nkeepalive:\n  - destinations: 198.18.0.0/15:5432\n    tcpKeepalive: { time: 60s, probes: 3, interval: 5s }\n",
                ),
                policy(
                    "2",
                    "app",
                    "bad",
                    "podSelector: {}\nkeepalive:\n  - { destinations: 198.18.0.0, tcpKeepalive: { time: 1s } }\n  - { destinations: 198.18.0.0/15:5432, tcpKeepalive: { time: 9s } }\n",
                ),
            ],
        );
        let key = ("app".to_string(), "client".to_string());
        assert_eq!(
            resolved.keepalive[&key],
            vec![(
                "198.18.0.0/15:5432".parse().unwrap(),
                "time=60s,probes=3,interval=5s".parse().unwrap()
            )]
        );
        assert!(resolved.limits.is_empty());
        let bad = resolved
            .conflicts
            .iter()
            .find(|(k, _)| k.name == "bad")
            .unwrap()
            .1;
        assert_eq!(bad.len(), 2, "{bad:?}");
    }

    #[test]
    fn selector_operators() {
        let labels: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_labels: None,
        };
        assert!(selects(&req("In", &["1", "2"]), &labels));
        assert!(!selects(&req("NotIn", &["1"]), &labels));
        assert!(selects(&req("Exists", &[]), &labels));
        assert!(!selects(&req("DoesNotExist", &[]), &labels));
        assert!(!selects(&req("Bogus", &[]), &labels));
        assert!(selects(&LabelSelector::default(), &labels));
    }
    fn gateways() -> Gateways {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let listener = |name: &str, port| GatewayListener {
            name: name.into(),
            port,
            protocol: "HTTP".into(),
        };
        Gateways {
            listeners: BTreeMap::from([(
                ("default".to_string(), "eg".to_string()),
                vec![listener("http", 80), listener("admin", 9000)],
            )]),
            services: vec![crate::kubernetes::gateway::ServiceInfo {
                namespace: "envoy-gateway-system".into(),
                name: "envoy-default-eg".into(),
                labels: BTreeMap::from([
                    (ENVOY_GATEWAY_NAME_LABEL.to_string(), "eg".to_string()),
                    (
                        ENVOY_GATEWAY_NAMESPACE_LABEL.to_string(),
                        "default".to_string(),
                    ),
                ]),
                ports: vec![
                    (80, IntOrString::Int(10080)),
                    (9000, IntOrString::Int(9000)),
                ],
            }],
        }
    }

    fn envoy(name: &str) -> PodInfo {
        pod(
            "envoy-gateway-system",
            name,
            &[
                (ENVOY_GATEWAY_NAME_LABEL, "eg"),
                (ENVOY_GATEWAY_NAMESPACE_LABEL, "default"),
            ],
        )
    }

    #[test]
    fn target_refs_limit_a_gateways_listeners_on_its_pods_at_their_own_ports() {
        let pods = [envoy("e1"), envoy("e2"), pod("default", "app", &[])];
        let whole = policy(
            "1",
            "default",
            "whole",
            "targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: eg }]\nlisteners: [{ connectionLimit: { value: 5 } }]\n",
        );
        let resolved = resolve(&pods, &[whole], &gateways());
        assert!(resolved.conflicts.is_empty(), "{resolved:?}");
        let both: Vec<LimitSpec> = vec![
            "10080=5:drop".parse().unwrap(),
            "9000=5:drop".parse().unwrap(),
        ];
        for name in ["e1", "e2"] {
            assert_eq!(
                resolved.limits[&("envoy-gateway-system".to_string(), name.to_string())],
                both
            );
        }
        assert_eq!(resolved.limits.len(), 2, "{resolved:?}");
        // One listener by sectionName, or by its port.
        for spec in [
            "targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: eg, sectionName: http }]\nlisteners: [{ maxActiveConnections: 7, action: reset }]\n",
            "targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: eg }]\nlisteners: [{ port: 80, maxActiveConnections: 7, action: reset }]\n",
        ] {
            let resolved = resolve(&pods, &[policy("1", "default", "one", spec)], &gateways());
            assert!(resolved.conflicts.is_empty(), "{spec}: {resolved:?}");
            assert_eq!(
                resolved.limits[&("envoy-gateway-system".to_string(), "e1".to_string())],
                vec!["10080=7:reset".parse::<LimitSpec>().unwrap()],
                "{spec}"
            );
        }
    }

    #[test]
    fn target_refs_that_cannot_apply_are_reported() {
        let pods = [envoy("e1")];
        for (spec, want) in [
            (
                "targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: nope }]\nlisteners: [{ maxActiveConnections: 1 }]\n",
                "Gateway default/nope not found",
            ),
            (
                "targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: eg, sectionName: https }]\nlisteners: [{ maxActiveConnections: 1 }]\n",
                "no listener `https`",
            ),
            (
                "targetRefs: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: eg }]\nlisteners: [{ maxActiveConnections: 1 }]\n",
                "only a Gateway",
            ),
            (
                "targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: eg }]\nlisteners: [{ port: 443, maxActiveConnections: 1 }]\n",
                "port 443: no targeted Gateway listener",
            ),
            (
                "podSelector: {}\ntargetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: eg }]\nlisteners: [{ maxActiveConnections: 1 }]\n",
                "not both",
            ),
            (
                "listeners: [{ port: 80, maxActiveConnections: 1 }]\n",
                "give podSelector or targetRefs",
            ),
            (
                "podSelector: {}\nlisteners: [{ maxActiveConnections: 1 }]\n",
                "give its port",
            ),
        ] {
            let resolved = resolve(&pods, &[policy("1", "default", "p", spec)], &gateways());
            let problems = resolved
                .conflicts
                .values()
                .flatten()
                .cloned()
                .collect::<Vec<_>>();
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{spec}: want {want:?} in {problems:?}"
            );
        }
    }

    #[test]
    fn a_host_network_pod_is_reported_not_skipped() {
        let mut host = pod("gw", "node-proxy", &[("app", "proxy")]);
        host.host_network = true;
        let resolved = resolve_pods(
            &[host],
            &[policy(
                "1",
                "gw",
                "p",
                "podSelector: {}\nlisteners: [{ port: 8000, maxActiveConnections: 1 }]\n",
            )],
        );
        assert!(resolved.limits.is_empty(), "{resolved:?}");
        let problems = resolved.conflicts.values().flatten().collect::<Vec<_>>();
        assert!(
            problems.len() == 1 && problems[0].contains("pod node-proxy uses hostNetwork"),
            "{problems:?}"
        );
    }
}
