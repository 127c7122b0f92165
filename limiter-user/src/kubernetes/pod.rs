//! A pod as the agent needs it: identity, labels, named ports, and whether it has a network of
//! its own; made from the API server's Pod once it runs with an IP.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;

/// A pod as the agent needs it: identity, labels, named ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its containers' ports: (name, containerPort), for a Service's named `targetPort`.
    pub ports: Vec<(String, u16)>,
    /// `hostNetwork: true`: its listeners are the node's, which a policy does not limit.
    pub host_network: bool,
}

/// A running pod with an IP (a `hostNetwork` one too: policies that select it are told it
/// cannot be limited by them).
pub fn enforceable(pod: &Pod) -> Option<(PodInfo, String, IpAddr)> {
    let spec = pod.spec.as_ref()?;
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    let info = PodInfo {
        namespace: pod.namespace()?,
        name: pod.name_any(),
        labels: pod.labels().clone(),
        ports,
        host_network: spec.host_network == Some(true),
    };
    Some((info, pod.uid()?, ip))
}
