//! Gateway API policy attachment: a `ConnectionLimitPolicy` with `targetRefs` to a Gateway (as
//! Envoy Gateway's `ClientTrafficPolicy` is written) limits the Gateway's listeners on the pods
//! that serve it.
//!
//! - **Which pods serve a Gateway**: the labels implementations put on them. GEP-1762 (Istio's
//!   automated deployments and others) labels them `gateway.networking.k8s.io/gateway-name:
//!   NAME`, in the Gateway's namespace; Envoy Gateway labels its envoy pods, in its own
//!   namespace, `gateway.envoyproxy.io/owning-gateway-name: NAME` and
//!   `gateway.envoyproxy.io/owning-gateway-namespace: NAMESPACE`.
//! - **Which port the pod listens on** for a Gateway listener's `port`: implementations expose
//!   the listener through a Service labelled as the pods are, whose port is the listener's and
//!   whose `targetPort` is the pod's (Envoy Gateway moves ports under 1024 up by 10000: 80 is
//!   10080 in the pod). A named `targetPort` is looked up in the pod's container ports. With no
//!   such Service the pod is taken to listen on the listener's port (Istio's does). Services
//!   that disagree are ambiguous and reported, not guessed.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::util::intstr::IntOrString};
use kube::{CustomResource, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kubernetes::pod::PodInfo;

/// GEP-1762's label on a Gateway's pods (and Services), in the Gateway's namespace.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Envoy Gateway's labels on its envoy pods (and Services) for the Gateway they serve.
pub const ENVOY_GATEWAY_NAME_LABEL: &str = "gateway.envoyproxy.io/owning-gateway-name";
pub const ENVOY_GATEWAY_NAMESPACE_LABEL: &str = "gateway.envoyproxy.io/owning-gateway-namespace";
/// The group of `targetRefs` the agent resolves.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The part of a Gateway (`gateway.networking.k8s.io/v1`) the agent reads: its listeners.
/// Other fields are ignored, so any Gateway the API serves reads.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub listeners: Vec<GatewayListener>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    pub name: String,
    pub port: i32,
    #[serde(default)]
    pub protocol: String,
}

/// A policy's reference to what it attaches to (Gateway API's `LocalPolicyTargetReference`
/// with a `sectionName`): a Gateway of the policy's namespace, or one listener of it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `gateway.networking.k8s.io`.
    pub group: String,
    /// `Gateway`.
    pub kind: String,
    /// The Gateway's name, in the policy's namespace.
    pub name: String,
    /// One listener of the Gateway, by its `name`; without it, every listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// A Service of a Gateway, as far as port mapping goes.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// (port, targetPort) of its TCP ports.
    pub ports: Vec<(i32, IntOrString)>,
}

impl ServiceInfo {
    pub fn of(service: &Service) -> ServiceInfo {
        let ports = service
            .spec
            .iter()
            .flat_map(|spec| spec.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .map(|p| {
                let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                (p.port, target)
            })
            .collect();
        ServiceInfo {
            namespace: service.namespace().unwrap_or_default(),
            name: service.name_any(),
            labels: service.labels().clone(),
            ports,
        }
    }
}

/// The Gateways and their Services the API server lists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gateways {
    /// By (namespace, name).
    pub listeners: BTreeMap<(String, String), Vec<GatewayListener>>,
    pub services: Vec<ServiceInfo>,
}

/// Whether something labelled `labels` in `namespace` belongs to the Gateway
/// `gateway_namespace/gateway`, by either implementation's labels.
fn belongs(
    labels: &BTreeMap<String, String>,
    namespace: &str,
    gateway_namespace: &str,
    gateway: &str,
) -> bool {
    let by_gep = namespace == gateway_namespace
        && labels.get(GATEWAY_NAME_LABEL).map(String::as_str) == Some(gateway);
    let by_envoy_gateway = labels.get(ENVOY_GATEWAY_NAME_LABEL).map(String::as_str)
        == Some(gateway)
        && labels
            .get(ENVOY_GATEWAY_NAMESPACE_LABEL)
            .map(String::as_str)
            == Some(gateway_namespace);
    by_gep || by_envoy_gateway
}

impl Gateways {
    /// The listeners `target` (of a policy in `namespace`) names, or why none.
    pub fn targeted(
        &self,
        namespace: &str,
        target: &TargetRef,
    ) -> Result<Vec<GatewayListener>, String> {
        if target.group != GATEWAY_GROUP || target.kind != "Gateway" {
            return Err(format!(
                "targetRefs: {}/{} {}: only a Gateway ({GATEWAY_GROUP}) can be targeted",
                target.group, target.kind, target.name
            ));
        }
        let key = (namespace.to_string(), target.name.clone());
        let listeners = self
            .listeners
            .get(&key)
            .ok_or_else(|| format!("Gateway {namespace}/{} not found", target.name))?;
        match &target.section_name {
            None => Ok(listeners.clone()),
            Some(section) => {
                let found: Vec<GatewayListener> = listeners
                    .iter()
                    .filter(|l| &l.name == section)
                    .cloned()
                    .collect();
                if found.is_empty() {
                    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                    return Err(format!(
                        "Gateway {namespace}/{} has no listener `{section}` (it has {names:?})",
                        target.name
                    ));
                }
                Ok(found)
            }
        }
    }

    /// Whether `pod` serves the Gateway `namespace/gateway`.
    pub fn serves(pod: &PodInfo, namespace: &str, gateway: &str) -> bool {
        belongs(&pod.labels, &pod.namespace, namespace, gateway)
    }

    /// The port `pod` (serving the Gateway `namespace/gateway`) listens on for the Gateway
    /// listener port `listener_port`: through the Gateway's Services in the pod's namespace
    /// (see the module's docs), or the listener's port when none maps it.
    pub fn pod_port(
        &self,
        pod: &PodInfo,
        namespace: &str,
        gateway: &str,
        listener_port: i32,
    ) -> Result<u16, String> {
        let mut found: BTreeSet<u16> = BTreeSet::new();
        let mut seen: Vec<String> = Vec::new();
        for service in self.services.iter().filter(|s| {
            s.namespace == pod.namespace && belongs(&s.labels, &s.namespace, namespace, gateway)
        }) {
            for (_, target) in service.ports.iter().filter(|(p, _)| *p == listener_port) {
                let port = match target {
                    IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
                    IntOrString::String(name) => pod
                        .ports
                        .iter()
                        .find(|(port_name, _)| port_name == name)
                        .map(|(_, port)| *port),
                };
                let port = port.ok_or_else(|| {
                    format!(
                        "Service {}/{}: targetPort {target:?} of port {listener_port} is no port of pod {}",
                        service.namespace, service.name, pod.name
                    )
                })?;
                found.insert(port);
                seen.push(format!("{}/{} -> {port}", service.namespace, service.name));
            }
        }
        match found.len() {
            0 => u16::try_from(listener_port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("listener port {listener_port} is not a port (1-65535)")),
            1 => Ok(found.into_iter().next().expect("one port")),
            _ => Err(format!(
                "Gateway {namespace}/{gateway}'s port {listener_port} maps to several ports of pod {} ({}): which one is ambiguous",
                pod.name,
                seen.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn envoy_pod() -> PodInfo {
        PodInfo {
            namespace: "envoy-gateway-system".into(),
            name: "envoy-default-eg-1".into(),
            labels: labels(&[
                (ENVOY_GATEWAY_NAME_LABEL, "eg"),
                (ENVOY_GATEWAY_NAMESPACE_LABEL, "default"),
            ]),
            ports: vec![("http-10080".into(), 10080)],
            host_network: false,
        }
    }

    fn service(
        namespace: &str,
        owner: &[(&str, &str)],
        ports: &[(i32, IntOrString)],
    ) -> ServiceInfo {
        ServiceInfo {
            namespace: namespace.into(),
            name: "svc".into(),
            labels: labels(owner),
            ports: ports.to_vec(),
        }
    }

    fn gateway(listeners: &[(&str, i32)]) -> Vec<GatewayListener> {
        listeners
            .iter()
            .map(|(name, port)| GatewayListener {
                name: name.to_string(),
                port: *port,
                protocol: "HTTP".into(),
            })
            .collect()
    }

    fn target(name: &str, section: Option<&str>) -> TargetRef {
        TargetRef {
            group: GATEWAY_GROUP.into(),
            kind: "Gateway".into(),
            name: name.into(),
            section_name: section.map(str::to_string),
        }
    }

    #[test]
    fn pods_are_found_by_either_implementations_labels() {
        assert!(Gateways::serves(&envoy_pod(), "default", "eg"));
        assert!(!Gateways::serves(&envoy_pod(), "other", "eg"));
        let istio = PodInfo {
            namespace: "default".into(),
            name: "eg-istio-1".into(),
            labels: labels(&[(GATEWAY_NAME_LABEL, "eg")]),
            ..PodInfo::default()
        };
        assert!(Gateways::serves(&istio, "default", "eg"));
        // GEP-1762's label holds only in the Gateway's own namespace.
        let elsewhere = PodInfo {
            namespace: "other".into(),
            ..istio
        };
        assert!(!Gateways::serves(&elsewhere, "default", "eg"));
    }

    #[test]
    fn the_listener_port_maps_through_the_gateways_service() {
        let owner = [
            (ENVOY_GATEWAY_NAME_LABEL, "eg"),
            (ENVOY_GATEWAY_NAMESPACE_LABEL, "default"),
        ];
        let mut gateways = Gateways::default();
        // No Service: the pod listens on the listener's port.
        assert_eq!(gateways.pod_port(&envoy_pod(), "default", "eg", 80), Ok(80));
        gateways.services = vec![service(
            "envoy-gateway-system",
            &owner,
            &[
                (80, IntOrString::Int(10080)),
                (443, IntOrString::Int(10443)),
            ],
        )];
        assert_eq!(
            gateways.pod_port(&envoy_pod(), "default", "eg", 80),
            Ok(10080)
        );
        // By name, through the pod's container ports.
        gateways.services[0].ports = vec![(80, IntOrString::String("http-10080".into()))];
        assert_eq!(
            gateways.pod_port(&envoy_pod(), "default", "eg", 80),
            Ok(10080)
        );
        gateways.services[0].ports = vec![(80, IntOrString::String("nope".into()))];
        assert!(
            gateways
                .pod_port(&envoy_pod(), "default", "eg", 80)
                .is_err()
        );
        // Two Services that disagree: ambiguous, reported.
        gateways.services = vec![
            service(
                "envoy-gateway-system",
                &owner,
                &[(80, IntOrString::Int(10080))],
            ),
            service(
                "envoy-gateway-system",
                &owner,
                &[(80, IntOrString::Int(8080))],
            ),
        ];
        let error = gateways
            .pod_port(&envoy_pod(), "default", "eg", 80)
            .unwrap_err();
        assert!(error.contains("ambiguous"), "{error}");
        // Another Gateway's Service changes nothing.
        gateways.services = vec![service(
            "envoy-gateway-system",
            &[
                (ENVOY_GATEWAY_NAME_LABEL, "other"),
                (ENVOY_GATEWAY_NAMESPACE_LABEL, "default"),
            ],
            &[(80, IntOrString::Int(9999))],
        )];
        assert_eq!(gateways.pod_port(&envoy_pod(), "default", "eg", 80), Ok(80));
    }

    #[test]
    fn targets_name_a_gateway_or_one_of_its_listeners() {
        let mut gateways = Gateways::default();
        gateways.listeners.insert(
            ("default".into(), "eg".into()),
            gateway(&[("http", 80), ("https", 443)]),
        );
        assert_eq!(
            gateways
                .targeted("default", &target("eg", None))
                .unwrap()
                .len(),
            2
        );
        let https = gateways
            .targeted("default", &target("eg", Some("https")))
            .unwrap();
        assert_eq!(https, gateway(&[("https", 443)]));
        assert!(
            gateways
                .targeted("default", &target("eg", Some("nope")))
                .is_err()
        );
        assert!(gateways.targeted("other", &target("eg", None)).is_err());
        let mut route = target("eg", None);
        route.kind = "HTTPRoute".into();
        let error = gateways.targeted("default", &route).unwrap_err();
        assert!(error.contains("only a Gateway"), "{error}");
    }
}
