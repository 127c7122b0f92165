//! Part 10, a connection storm into a pod: part 3's storm of new connections at a listener at
//! its limit, with the listener in a pod that the node routes to, for limiter enforcing in the
//! pod (`--limit-in`, action reset, generic XDP on the pod's `eth0`) and for Envoy's
//! `connection_limit` in the pod, as a gateway pod runs it. The server's CPU is the node veth's
//! NAPI thread (which also runs the pod's receive, see `pods_flood.rs`) and the agent's or
//! Envoy's threads, all on the server CPU.
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::{
    Ctx,
    netns::TestBed,
    peers::Peers,
    pods::{self, POD_IP},
    report::Part,
    storm::{self, Config, Place, Samples},
};

const CONFIGS: [Config; 2] = [Config::LimiterReset, Config::Envoy];

/// Storms the pod under each configuration; the samples and the peers' versions.
pub(super) fn run(
    ctx: &Ctx,
    window: Duration,
    reps: usize,
) -> Result<(Samples, Vec<(String, String)>)> {
    let peers = Peers::prepare(ctx)?;
    let bed = TestBed::create()?;
    let pod = pods::build(&bed, false, 0)?;
    pods::route_client_to_pod(&bed)?;
    let place = Place {
        ns: pod.pod.clone(),
        addr: POD_IP,
        pod: Some(format!("/run/netns/{}", pod.pod)),
    };
    let samples = storm::storms(ctx, &peers, &bed, &place, &CONFIGS, window, reps)?;
    drop(pod);
    drop(bed);
    Ok((samples, peers.versions))
}

/// The storm's tables and target, added to part 10.
pub(super) fn report(part: &mut Part, samples: &Samples, versions: &[(String, String)]) {
    let envoy_version = versions
        .iter()
        .find(|(k, _)| k == "Envoy")
        .map_or("", |(_, v)| v.as_str());
    part.method.push(format!(
        "A connection storm into a pod: part 3's storm (the same clients, limit and held \
         connections) at {POD_IP}, the pod's address, routed by the node (no NodePort here \
         either), against limiter enforcing in the pod (`--limit-in /run/netns/POD \
         {POD_IP}:PORT=16:reset`: generic XDP on the pod's eth0 answers each SYN with a RST) \
         and against Envoy `connection_limit` + tcp_proxy running in the pod ({envoy_version}), \
         each in front of a server in the pod. Server CPU-seconds: the node veth's NAPI thread \
         (the node's forwarding both ways and the pod's receive) plus the agent's or Envoy's \
         threads, all on one CPU."
    ));
    let tables = storm::tables(samples);
    let mut rates = tables.rates;
    rates.caption = format!("Connection storm into a pod: {}", rates.caption);
    let mut outcomes = tables.outcomes;
    outcomes.caption = format!("Connection storm into a pod: {}", outcomes.caption);
    part.tables.push(rates);
    part.tables.push(outcomes);
    part.targets.push(storm::envoy_target(
        samples,
        "connection storm into a pod at its limit: refused attempts per server CPU-second, \
         limiter (reset) in the pod vs Envoy `connection_limit` in the pod",
    ));
    part.json["pod_storm"] = json!({ "configurations": tables.json });
}
