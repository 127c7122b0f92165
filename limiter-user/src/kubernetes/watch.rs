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
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Pod, Service};
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
    config::namespaces::NetnsLimits,
    kubernetes::{
        gateway::{ENVOY_GATEWAY_NAME_LABEL, GATEWAY_NAME_LABEL, Gateway, Gateways, ServiceInfo},
        pod::{PodInfo, enforceable},
        pod_netns,
        policy::{ConnectionLimitPolicy, PolicyKey, resolve},
    },
    netns::{Namespaces, registry::Source},
};

/// How often the pods' namespaces are checked again: pods whose namespace was not found (it
/// may appear after the pod object says Running), and namespaces that went away.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// A watch whose store the update reads, and the last failure it said (a failing watch is
/// retried with backoff; its error is logged when it changes, not at every retry).
struct Watched<K: kube::Resource + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    what: &'static str,
    store: Store<K>,
    said: Option<String>,
}

impl<K> Watched<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + std::marker::Sync
        + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    fn start(
        what: &'static str,
        api: Api<K>,
        config: watcher::Config,
    ) -> (
        Self,
        impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    ) {
        let (store, writer) = reflector::store();
        let events = reflector(writer, watcher(api, config)).default_backoff();
        let watched = Watched {
            what,
            store,
            said: None,
        };
        (watched, events)
    }

    fn note(&mut self, event: Result<watcher::Event<K>, watcher::Error>) {
        match event {
            Ok(_) => self.said = None,
            Err(error) => {
                let error = error.to_string();
                if self.said.as_ref() != Some(&error) {
                    tracing::warn!(%error, "kubernetes: watching {} (retrying)", self.what);
                    self.said = Some(error);
                }
            }
        }
    }
}

/// Runs until the agent stops.
pub async fn run(client: Client, node: String, namespaces: Arc<Mutex<Namespaces>>) {
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (mut pods, pod_events) = Watched::start("pods", Api::<Pod>::all(client.clone()), on_node);
    let (mut policies, policy_events) = Watched::start(
        "ConnectionLimitPolicies",
        Api::<ConnectionLimitPolicy>::all(client.clone()),
        watcher::Config::default(),
    );
    // Gateway API: the Gateways and the Services implementations label for them (Gateways
    // are few; the Services are only those labelled, one watch per implementation's label).
    // Without the Gateway API in the cluster the watch fails, is said once, and targetRefs
    // are reported unresolved.
    let (mut gateways, gateway_events) = Watched::start(
        "Gateways (gateway.networking.k8s.io/v1)",
        Api::<Gateway>::all(client.clone()),
        watcher::Config::default(),
    );
    let (mut gep_services, gep_service_events) = Watched::start(
        "Gateway Services",
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(GATEWAY_NAME_LABEL),
    );
    let (mut envoy_services, envoy_service_events) = Watched::start(
        "Envoy Gateway Services",
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(ENVOY_GATEWAY_NAME_LABEL),
    );
    let mut pod_events = std::pin::pin!(pod_events);
    let mut policy_events = std::pin::pin!(policy_events);
    let mut gateway_events = std::pin::pin!(gateway_events);
    let mut gep_service_events = std::pin::pin!(gep_service_events);
    let mut envoy_service_events = std::pin::pin!(envoy_service_events);
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
            Some(event) = pod_events.next() => pods.note(event),
            Some(event) = policy_events.next() => policies.note(event),
            Some(event) = gateway_events.next() => gateways.note(event),
            Some(event) = gep_service_events.next() => gep_services.note(event),
            Some(event) = envoy_service_events.next() => envoy_services.note(event),
            // Pods whose namespace is not found yet, and namespaces that went away under a pod
            // whose object has not changed (a sandbox recreated with the same IP).
            _ = retry.tick() => {}
        }
        let gateways = Gateways {
            listeners: gateways
                .store
                .state()
                .iter()
                .map(|g| {
                    let key = (g.namespace().unwrap_or_default(), g.name_any());
                    (key, g.spec.listeners.clone())
                })
                .collect(),
            services: gep_services
                .store
                .state()
                .iter()
                .chain(envoy_services.store.state().iter())
                .map(|s| ServiceInfo::of(s))
                .collect(),
        };
        sync.update(
            &pods.store,
            &policies.store,
            &gateways,
            &namespaces,
            &recorder,
        )
        .await;
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
        gateways: &Gateways,
        namespaces: &Mutex<Namespaces>,
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
        let resolved = resolve(&infos, &all_policies, gateways);

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

        let applied = namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
