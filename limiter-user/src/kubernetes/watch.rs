//! Kubernetes mode (`--kubernetes`): the agent watches the Pods scheduled on its node and every
//! `ConnectionLimitPolicy`, and keeps each selected pod's limits enforced inside the pod's
//! network namespace ([`crate::netns`]), live: pods and policies that appear, change or go away
//! change what is enforced where, with no restart.
//!
//! The watches are kube-runtime's: a list, then a watch from its resourceVersion; a `410 Gone`
//! relists, a dropped watch is resumed with backoff, and the reflector stores replace their
//! contents atomically when a relist completes. Every change recomputes the whole picture (a
//! node has tens of pods) and hands it to the registry, which applies only the difference.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    runtime::{
        WatchStreamExt as _,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store, reflector},
        watcher,
    },
};

use crate::{
    agent::AgentState,
    kubernetes::{
        pod_netns,
        policy::{ConnectionLimitPolicy, PodInfo, PolicyKey, resolve},
    },
    netns::{NetnsLimits, registry::Source},
};

/// How often the pods' namespaces are checked again: pods whose namespace was not found (it
/// may appear after the pod object says Running), and namespaces that went away.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Runs until the agent stops.
pub async fn run(client: Client, node: String, state: Arc<AgentState>) {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let policies_api: Api<ConnectionLimitPolicy> = Api::all(client.clone());
    let (pods, pods_writer) = reflector::store();
    let (policies, policies_writer) = reflector::store();
    let pod_events = reflector(
        pods_writer,
        watcher(
            pods_api,
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        ),
    )
    .default_backoff();
    let policy_events = reflector(
        policies_writer,
        watcher(policies_api, watcher::Config::default()),
    )
    .default_backoff();
    let mut pod_events = std::pin::pin!(pod_events);
    let mut policy_events = std::pin::pin!(policy_events);
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "limiter".into(),
            instance: Some(node.clone()),
        },
    );
    let mut sync = Sync::default();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    tracing::info!(%node, "kubernetes: watching this node's pods and every ConnectionLimitPolicy");
    loop {
        tokio::select! {
            Some(event) = pod_events.next() => {
                if let Err(error) = event {
                    tracing::warn!(%error, "kubernetes: watching pods");
                    continue;
                }
            }
            Some(event) = policy_events.next() => {
                if let Err(error) = event {
                    tracing::warn!(%error, "kubernetes: watching ConnectionLimitPolicies");
                    continue;
                }
            }
            // Pods whose namespace is not found yet, and namespaces that went away under a pod
            // whose object has not changed (a sandbox recreated with the same IP).
            _ = retry.tick() => {}
        }
        sync.update(&pods, &policies, &state, &recorder).await;
    }
}

/// What the last update found, so that each finding is said once.
#[derive(Default)]
struct Sync {
    /// A pod (uid) at an IP, and the namespace holding that IP: its path and inode (a path
    /// such as /proc/PID/ns/net may later name another namespace).
    netns: BTreeMap<(String, IpAddr), (PathBuf, u64)>,
    /// Pods with limits whose namespace was not found (uid → what was said).
    unresolved: BTreeMap<String, String>,
    /// Per policy, the problems last reported.
    reported: BTreeMap<PolicyKey, Vec<String>>,
}

impl Sync {
    async fn update(
        &mut self,
        pods: &Store<Pod>,
        policies: &Store<ConnectionLimitPolicy>,
        state: &AgentState,
        recorder: &Recorder,
    ) {
        let running: Vec<(PodInfo, String, IpAddr)> = pods
            .state()
            .iter()
            .filter_map(|pod| enforceable(pod))
            .collect();
        let all_policies: Vec<(
            PolicyKey,
            crate::kubernetes::policy::ConnectionLimitPolicySpec,
        )> = policies
            .state()
            .iter()
            .map(|p| (policy_key(p), p.spec.clone()))
            .collect();
        let infos: Vec<PodInfo> = running.iter().map(|(info, _, _)| info.clone()).collect();
        let resolved = resolve(&infos, &all_policies);

        let mut desired: Vec<NetnsLimits> = Vec::new();
        let mut unresolved = BTreeMap::new();
        let selected: BTreeSet<&(String, String)> = resolved
            .limits
            .keys()
            .chain(resolved.keepalive.keys())
            .collect();
        for (namespace, name) in selected {
            let key = (namespace.clone(), name.clone());
            let limits = resolved.limits.get(&key).cloned().unwrap_or_default();
            let keepalive = resolved.keepalive.get(&key).cloned().unwrap_or_default();
            let Some((_, uid, ip)) = running
                .iter()
                .find(|(info, _, _)| info.namespace == *namespace && info.name == *name)
            else {
                continue;
            };
            let key = (uid.clone(), *ip);
            let cached = self
                .netns
                .get(&key)
                .filter(|(path, inode)| crate::netns::path::current_inode(path) == Some(*inode));
            let found = match cached {
                Some(found) => Some(found.clone()),
                None => pod_netns::find(*ip),
            };
            match found {
                Some((path, inode)) => {
                    self.netns.insert(key, (path.clone(), inode));
                    desired.push(NetnsLimits {
                        path,
                        limits,
                        keepalive,
                        pod: Some(format!("{namespace}/{name}")),
                    });
                }
                None => {
                    let said = format!(
                        "pod {namespace}/{name} ({ip}): no network namespace on this node holds \
                         its IP (is the agent's pod given hostPID or the host's /run/netns?); \
                         its limits apply once one does"
                    );
                    if self.unresolved.get(uid) != Some(&said) {
                        tracing::warn!("kubernetes: {said}");
                    }
                    unresolved.insert(uid.clone(), said);
                }
            }
        }
        self.unresolved = unresolved;
        // Forget namespaces of pods gone or moved to another IP.
        let live: BTreeSet<(String, IpAddr)> = running
            .iter()
            .map(|(_, uid, ip)| (uid.clone(), *ip))
            .collect();
        self.netns.retain(|key, _| live.contains(key));

        let applied = state
            .lock_namespaces()
            .apply_from(Source::Kubernetes, &desired);
        match applied {
            Ok(done) => {
                for line in done {
                    tracing::info!("kubernetes: {line}");
                }
            }
            Err(error) => tracing::warn!(%error, "kubernetes: applying the policies"),
        }
        self.report(&resolved.conflicts, policies, recorder).await;
    }

    /// Says each policy's new problems: in the log, and as a Warning Event on the policy
    /// (`kubectl describe clp NAME` shows it; one per node that finds it, which a status field
    /// written by every node could not hold without the nodes overwriting each other).
    async fn report(
        &mut self,
        conflicts: &BTreeMap<PolicyKey, Vec<String>>,
        policies: &Store<ConnectionLimitPolicy>,
        recorder: &Recorder,
    ) {
        for (key, problems) in conflicts {
            if self.reported.get(key) == Some(problems) {
                continue;
            }
            for problem in problems {
                tracing::warn!(policy = %key, "kubernetes: ConnectionLimitPolicy not applied in part: {problem}");
            }
            let policy = policies.state().into_iter().find(|p| policy_key(p) == *key);
            if let Some(policy) = policy {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "NotApplied".into(),
                    note: Some(problems.join("; ")),
                    action: "Resolve".into(),
                    secondary: None,
                };
                if let Err(error) = recorder.publish(&event, &policy.object_ref(&())).await {
                    tracing::warn!(policy = %key, %error, "kubernetes: recording an Event");
                }
            }
        }
        self.reported = conflicts.clone();
    }
}

/// A pod whose limits can be enforced: running, with its own network namespace and an IP.
fn enforceable(pod: &Pod) -> Option<(PodInfo, String, IpAddr)> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let info = PodInfo {
        namespace: pod.namespace()?,
        name: pod.name_any(),
        labels: pod.labels().clone(),
    };
    Some((info, pod.uid()?, ip))
}

fn policy_key(policy: &ConnectionLimitPolicy) -> PolicyKey {
    PolicyKey {
        created: policy
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        namespace: policy.namespace().unwrap_or_default(),
        name: policy.name_any(),
    }
}
