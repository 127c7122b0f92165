//! Part 10: the pod path. Clients connect to the node's address, a NodePort-style DNAT on the
//! node sends them to a pod (a namespace behind a veth, routed by the node as a CNI does), and
//! limiter, running on the node, enforces the pod's limit inside the pod (`--limit-in`): XDP
//! (generic, as on any veth) on the pod's `eth0`, sock_ops counting the pod's sockets. Measured:
//! connections per second when not limiting, against no program and against the empty XDP
//! program on the pod's `eth0`, and one connection's throughput into the pod (iperf3: the
//! per-segment cost of admission's "not a SYN" path there); what enforcing in more namespaces
//! costs each connection (the agent's accounting program tail-calls the namespace's own, so it
//! should cost nothing); and
//! what a SYN refused in the pod costs under a flood (`pods_flood.rs`), and what a refused
//! connection attempt costs there against Envoy in the pod (`pods_storm.rs`).
use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use serde_json::json;

use super::{
    Ctx,
    agent::Agent,
    cps::{self, CLIENT_THREADS},
    exact_floor::{self, ExactFloor},
    idle::{self, Idle},
    iperf,
    netns::{OnAccept, SERVER_IP, Server, TestBed},
    order, pods_flood, pods_storm,
    report::{
        Chart, Part, Table, paired_rate_target, paired_ratio, rate_row, spread, throughput_row,
    },
};
use crate::cmd::{self, command};

pub const PORT: u16 = 8300;
/// iperf3's port in the pod, limited by limiter too, so its connection is counted and every one
/// of its segments goes through admission's "not a SYN" path in the pod.
const IPERF_PORT: u16 = 8301;
/// iperf3's client and server run on different CPUs.
const IPERF_CLIENT_CPU: usize = 0;
const IPERF_SERVER_CPU: usize = 1;
pub(super) const POD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const NODE_SIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Never reached.
const LIMIT: u32 = 1_000_000;
/// Namespaces enforced in besides the pod, for the "many namespaces" configuration.
const OTHER_NAMESPACES: usize = 15;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    NoProgram,
    EmptyXdpInPod,
    /// `exact_floor.c` on the pod's eth0: what any exact count costs per connection.
    ExactFloorInPod,
    LimiterInPod,
    LimiterInPodOf16,
}

impl Config {
    fn key(self) -> &'static str {
        match self {
            Config::NoProgram => "no_program",
            Config::EmptyXdpInPod => "empty_xdp_generic_in_pod",
            Config::ExactFloorInPod => "exact_floor_generic_in_pod",
            Config::LimiterInPod => "limiter_in_pod",
            Config::LimiterInPodOf16 => "limiter_in_pod_16_namespaces",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::NoProgram => "no program",
            Config::EmptyXdpInPod => "empty XDP_PASS program on the pod's eth0 (generic)",
            Config::ExactFloorInPod => "exact-count floor (C) on the pod's eth0 (generic)",
            Config::LimiterInPod => "limiter, --limit-in the pod, limit never reached",
            Config::LimiterInPodOf16 => "limiter in the pod and 15 other namespaces",
        }
    }
}

/// The pod and the idle namespaces, deleted when dropped (the bed deletes its own two).
pub(super) struct Pods {
    pub pod: String,
    others: Vec<String>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.pod).chain(&self.others) {
            let _ = cmd::run(command("ip").args(["netns", "del", ns]));
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::run(command("ip").args(args)).map(|_| ())
}

/// The pod behind a veth from the node, the node routing (and with `nodeport`, DNATing) to it,
/// and `idle` more namespaces (each with a veth pair of its own: interfaces to attach to).
pub(super) fn build(bed: &TestBed, nodeport: bool, idle: usize) -> Result<Pods> {
    let pid = std::process::id();
    let mut pods = Pods {
        pod: format!("lim-bench-pod-{pid}"),
        others: Vec::new(),
    };
    ip(&["netns", "add", &pods.pod])?;
    let node_veth = format!("lbN{pid}");
    ip(&[
        "-n",
        &bed.server_ns,
        "link",
        "add",
        &node_veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pods.pod,
    ])?;
    for (ns, dev, addr) in [
        (&bed.server_ns, node_veth.as_str(), NODE_SIDE_IP),
        (&pods.pod, "eth0", POD_IP),
    ] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n",
        &pods.pod,
        "route",
        "add",
        "default",
        "via",
        &NODE_SIDE_IP.to_string(),
    ])?;
    bed.exec(&bed.server_ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    if nodeport {
        bed.nft(&format!(
            "add table ip lim_bench_nodeport; add chain ip lim_bench_nodeport prerouting {{ type \
             nat hook prerouting priority -100; policy accept; }}; add rule ip lim_bench_nodeport \
             prerouting tcp dport {PORT} dnat to {POD_IP}:{PORT}"
        ))?;
    }
    for i in 0..idle {
        let ns = format!("lim-bench-idle-{pid}-{i}");
        ip(&["netns", "add", &ns])?;
        pods.others.push(ns.clone());
        // No dummy driver on every kernel: a veth pair inside the namespace.
        ip(&[
            "-n", &ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ])?;
        ip(&["-n", &ns, "link", "set", "v0", "up"])?;
    }
    Ok(pods)
}

/// A route in the client namespace to the pod's network via the node, for clients that connect
/// to the pod's address.
pub(super) fn route_client_to_pod(bed: &TestBed) -> Result<()> {
    let net = Ipv4Addr::from(POD_IP.to_bits() & !3);
    ip(&[
        "-n",
        &bed.client_ns,
        "route",
        "add",
        &format!("{net}/30"),
        "via",
        &SERVER_IP.to_string(),
    ])
}

/// Attaches `object`'s `xdp` section to the pod's eth0 in generic mode, as limiter does on a
/// pod's veth (None: detaches it).
pub(super) fn xdp_in_pod(bed: &TestBed, pod: &str, object: Option<&Path>) -> Result<()> {
    let mut args = vec!["ip", "link", "set", "dev", "eth0", "xdpgeneric"];
    let object = object.map(|o| o.display().to_string());
    match &object {
        Some(object) => args.extend(["obj", object, "sec", "xdp"]),
        None => args.push("off"),
    }
    bed.exec(pod, &args).map(|_| ())
}

pub fn run(ctx: &Ctx) -> Result<Part> {
    // As part 6: many short windows, limiter's compared with the empty program's in each.
    let (window, reps) = ctx.paired_windows(2, cps::REPETITIONS);
    let configs = [
        Config::NoProgram,
        Config::EmptyXdpInPod,
        Config::ExactFloorInPod,
        Config::LimiterInPod,
        Config::LimiterInPodOf16,
    ];
    let bed = TestBed::create()?;
    let pods = build(&bed, true, OTHER_NAMESPACES)?;
    let server = Server::start_at(&pods.pod, POD_IP, PORT, OnAccept::Reset, None)?;
    // iperf3 connects to the pod's own address (no DNAT), routed by the node.
    route_client_to_pod(&bed)?;
    let iperf_server =
        iperf::Server::start(&pods.pod, &POD_IP.to_string(), IPERF_PORT, IPERF_SERVER_CPU)?;
    let pod_path = format!("/run/netns/{}", pods.pod);
    let mut rates: Vec<Measured> = configs
        .iter()
        .map(|c| (*c, Vec::new(), 0, Vec::new()))
        .collect();
    let mut refused = 0;
    for rep in 0..reps {
        for i in order::balanced(configs.len(), rep) {
            let config = &configs[i];
            cmd::check_interrupted()?;
            let mut floor = None;
            let agent = match config {
                Config::NoProgram => None,
                Config::EmptyXdpInPod => {
                    xdp_in_pod(&bed, &pods.pod, Some(&ctx.objects.pass))?;
                    None
                }
                Config::ExactFloorInPod => {
                    floor = Some(ExactFloor::attach(
                        &ctx.objects.exact_floor_pod,
                        &pods.pod,
                        "eth0",
                        XdpMode::Skb,
                    )?);
                    None
                }
                Config::LimiterInPod => {
                    Some(Agent::in_server_ns(ctx, &bed, &agent_args(&pod_path, &[]))?)
                }
                Config::LimiterInPodOf16 => Some(Agent::in_server_ns(
                    ctx,
                    &bed,
                    &agent_args(&pod_path, &pods.others),
                )?),
            };
            let result = cps::churn(&bed, PORT, window);
            let bitrate = result.as_ref().ok().map(|_| {
                iperf::throughput(
                    &bed.client_ns,
                    &POD_IP.to_string(),
                    IPERF_PORT,
                    window.as_secs(),
                    IPERF_CLIENT_CPU,
                )
            });
            if let Some(agent) = agent {
                let stats = agent.stats()?;
                refused += stats["listeners"]
                    .as_array()
                    .context("stats without listeners")?
                    .iter()
                    .map(|l| l["refused_total"].as_u64().unwrap_or(0))
                    .sum::<u64>();
                agent.stop()?;
            }
            if *config == Config::EmptyXdpInPod {
                xdp_in_pod(&bed, &pods.pod, None)?;
            }
            if let Some(floor) = floor {
                floor.release(result.as_ref().map_or(0, |(ok, _)| *ok))?;
            }
            let (ok, failed) = result?;
            let bitrate = bitrate.context("iperf3 did not run")??;
            let rate = ok as f64 / window.as_secs_f64();
            println!(
                "  {}: {rate:.0} connections/s ({failed} failed), one connection {:.2} Gbit/s",
                config.label(),
                bitrate / 1e9
            );
            rates[i].1.push(rate);
            rates[i].2 += failed;
            rates[i].3.push(bitrate);
        }
    }
    let idle = idle_cpu(ctx, &bed, &pod_path, &pods.others)?;
    server.stop()?;
    drop(iperf_server);
    drop(pods);
    drop(bed);
    if refused != 0 {
        bail!(
            "limiter refused {refused} SYNs: its limit was reached, so this is not the not-limiting case"
        );
    }
    let mut part = report(&rates, window, reps);
    part.tables.push(idle::table(&idle));
    part.json["idle"] = idle::json(&idle);
    part.notes.push(format!(
        "At rest, each namespace the agent enforces in adds {:.3}% of one CPU and {:.2} MiB of \
         kernel memory (the table above: the {}-namespace agent less the 1-namespace one, ÷ {}; \
         a namespace's copy of the maps is sized for one workload, `limiter-user/src/enforce/capacity.rs`: \
         with the agent's own sizes it was about 26 MiB). Before commit b9f0fc8 every \
         namespace's handshake sweep walked its whole table of handshakes in flight (65,536 \
         buckets, empty or not) ten times a second, about 0.11% of a CPU per namespace \
         (measured by hand with 16 pod namespaces: 2.8% of a CPU in all, against 1.2% with the \
         walk skipped while no handshake is in flight); on a node of a hundred pods that walk \
         would be most of an idle agent's cost.",
        per_namespace(&idle, |i| spread(&i.cpu).1) * 100.0,
        per_namespace(&idle, Idle::megabytes),
        OTHER_NAMESPACES + 1,
        OTHER_NAMESPACES,
    ));
    // Many shorter windows than part 2's: the targets compare each with the floor's window of
    // the same repetition.
    let (flood_window, flood_reps) = ctx.paired_windows(5, 6);
    let flood = pods_flood::run(ctx, flood_window, flood_reps)?;
    pods_flood::report(&mut part, &flood, flood_window, flood_reps);
    let (storm_window, storm_reps) = ctx.windows(5);
    let (storms, versions) = pods_storm::run(ctx, storm_window, storm_reps)?;
    pods_storm::report(&mut part, &storms, &versions);
    Ok(part)
}

/// What one more namespace adds to the idle agent's figure `of` (the 16-namespace agent less
/// the 1-namespace one, per namespace added).
fn per_namespace(idle: &[Idle], of: fn(&Idle) -> f64) -> f64 {
    match idle {
        [one, all] => (of(all) - of(one)) / OTHER_NAMESPACES as f64,
        _ => f64::NAN,
    }
}

/// The agent's arguments enforcing in the pod (both of its ports) and in `others` (the churn's
/// port), limits never reached.
fn agent_args(pod_path: &str, others: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--limit-in".into(),
        pod_path.into(),
        format!("{PORT}={LIMIT}"),
        "--limit-in".into(),
        pod_path.into(),
        format!("{IPERF_PORT}={LIMIT}"),
    ];
    for ns in others {
        args.extend([
            "--limit-in".into(),
            format!("/run/netns/{ns}"),
            format!("{PORT}={LIMIT}"),
        ]);
    }
    args
}

/// The agent at rest enforcing in the pod alone and in the pod and `others`, alternately.
fn idle_cpu(ctx: &Ctx, bed: &TestBed, pod_path: &str, others: &[String]) -> Result<Vec<Idle>> {
    let (_, reps) = ctx.windows(0);
    let mut rows = [
        (Idle::new("enforcing in 1 namespace (the pod)"), &[][..]),
        (
            Idle::new(format!(
                "enforcing in {} namespaces (the pod and {} more)",
                others.len() + 1,
                others.len()
            )),
            others,
        ),
    ];
    for _ in 0..reps {
        for (row, others) in &mut rows {
            cmd::check_interrupted()?;
            let agent = Agent::in_server_ns(ctx, bed, &agent_args(pod_path, others))?;
            row.look(&agent)?;
            agent.stop()?;
        }
    }
    Ok(rows.into_iter().map(|(row, _)| row).collect())
}

/// One connection's throughput into the pod per configuration: what every segment's trip
/// through admission's "not a SYN" path in the pod costs.
fn throughput_table(rates: &[Measured]) -> Table {
    let gbits = |c: Config| {
        rates
            .iter()
            .find(|r| r.0 == c)
            .map_or(f64::NAN, |r| spread(&r.3).1 / 1e9)
    };
    let (none, empty) = (gbits(Config::NoProgram), gbits(Config::EmptyXdpInPod));
    let mut table = Table::new(
        &format!(
            "Throughput of one connection into the pod, iperf3 from the client namespace (CPU \
             {IPERF_CLIENT_CPU}) to `iperf3 -s` on {POD_IP}:{IPERF_PORT} in the pod (CPU \
             {IPERF_SERVER_CPU}), routed by the node without DNAT, after each connection-rate \
             window (Gbit/s; median over repetitions, min–max in brackets). limiter limits that \
             port too, so the connection is counted and its every segment goes through \
             admission in the pod."
        ),
        &[
            "configuration",
            "Gbit/s",
            "× no program",
            "× empty XDP in pod",
        ],
    );
    for (config, _, _, bits) in rates {
        // No chart for it: the table says it.
        let _ = throughput_row(&mut table, config.label(), bits, [none, empty], false);
    }
    table
}

/// A configuration's connections/s per window, failed connects, and iperf3 bits/s per window.
type Measured = (Config, Vec<f64>, u64, Vec<f64>);

fn report(rates: &[Measured], window: Duration, reps: usize) -> Part {
    let mut part = Part::new(
        "pods",
        "10. The pod path: connections per second into a pod, and refusing there",
    );
    part.method = vec![format!(
        "The test bed's server namespace is a node: it routes to a pod (a namespace behind a veth, \
         {POD_IP}/30, default route via the node) and DNATs {SERVER_IP}:{PORT} to \
         {POD_IP}:{PORT} (nftables nat prerouting, as kube-proxy writes a NodePort). A server in \
         the pod accepts and closes every connection at once with a RST; {CLIENT_THREADS} client \
         threads in the client namespace connect to the node's address, wait for the RST and \
         connect again, for {} s windows, {reps} repetitions, the configurations interleaved \
         in a balanced order (the targets take the median of the ratios of limiter's window to the empty program's \
         window in the same repetition, so the machine's slow swings cancel out of each ratio). \
         limiter runs on the node with `--limit-in /run/netns/POD {PORT}={LIMIT}` (never reached: \
         the bench checks that nothing was refused): generic XDP on the pod's eth0 (a veth) and \
         the pod's own accounting program, which the agent's sock_ops program on the cgroup root \
         tail-calls for the pod's sockets. The last configuration also enforces in \
         {OTHER_NAMESPACES} idle namespaces (each with a veth pair to attach to): still one \
         sock_ops program per connection event, one more lookup in the dispatch map, and the \
         agent's periodic work (handshake sweep, listening check) once per namespace.",
        window.as_secs()
    )];
    let median = |c: Config| {
        rates
            .iter()
            .find(|r| r.0 == c)
            .map_or(f64::NAN, |r| spread(&r.1).1)
    };
    let (none, empty) = (median(Config::NoProgram), median(Config::EmptyXdpInPod));
    let mut table = Table::new(
        "Connections per second into the pod through the NodePort (median over repetitions, \
         min–max in brackets)",
        &[
            "configuration",
            "connections/s",
            "× no program",
            "× empty XDP in pod",
            "failed connects",
        ],
    );
    let mut bars = Vec::new();
    let mut json_configs = serde_json::Map::new();
    for (config, r, failed, bits) in rates {
        rate_row(
            &mut table,
            &mut bars,
            config.label(),
            r,
            *failed,
            [none, empty],
            matches!(config, Config::LimiterInPod | Config::LimiterInPodOf16),
        );
        json_configs.insert(
            config.key().into(),
            json!({"label": config.label(), "connections_per_s": r, "failed": failed, "iperf3_bits_per_s": bits}),
        );
    }
    part.tables.push(table);
    part.tables.push(throughput_table(rates));
    let (one, many) = (
        median(Config::LimiterInPod),
        median(Config::LimiterInPodOf16),
    );
    let windows = |c: Config| {
        rates
            .iter()
            .find(|r| r.0 == c)
            .map_or(&[][..], |r| r.1.as_slice())
    };
    // A figure, not a target, for part 6's reason: the exact-count floor, measured here too,
    // takes much of the distance to the empty program by itself. This part does not measure the
    // programs' run time (part 6's extra windows do, for the same programs and agent), so the
    // target on limiter's own cost above the floor stays in part 6.
    let floor_share = paired_ratio(
        windows(Config::ExactFloorInPod),
        windows(Config::EmptyXdpInPod),
    )
    .1;
    part.figures.push(
        paired_rate_target(
            "connections/s into a pod with limiter enforcing there and never limiting, vs the \
             empty XDP program on the pod's eth0 (same mode, generic)"
                .into(),
            windows(Config::LimiterInPod),
            windows(Config::EmptyXdpInPod),
            0.97,
        )
        .into_figure(&format!(
            "the exact-count floor alone makes {:.1}% of the empty program's connections/s into \
             the pod in this run (median of paired ratios), so this ratio measures the primitives \
             any exact count needs more than limiter; limiter's own cost above that floor is \
             measured directly (program run time and agent CPU) in part 6, for the same programs \
             and agent, and is the target there — this part's rate windows alone cannot resolve \
             a cost of a few % of a connection",
            floor_share * 100.0
        )),
    );
    part.notes.push(exact_floor::DESCRIPTION.into());
    part.notes.push(exact_floor::note(
        "In the pod (generic)",
        windows(Config::ExactFloorInPod),
        windows(Config::EmptyXdpInPod),
        windows(Config::LimiterInPod),
        None,
    ));
    let per_connection_ns = |rate: f64| 1e9 * CLIENT_THREADS as f64 / rate;
    part.notes.push(format!(
        "Enforcing in {} namespaces instead of one: {:.1}% of the one-pod rate ({:.0} ns more \
         per connection, {:.0} ns per namespace, from {} client threads' connect loops). An \
         earlier design attached one sock_ops program per namespace to the cgroup root, and each \
         namespace then cost every connection on the node about 870 ns (16 namespaces: 82% of \
         the one-pod rate); the tail call from the agent's program made that cost flat.",
        OTHER_NAMESPACES + 1,
        many / one * 100.0,
        per_connection_ns(many) - per_connection_ns(one),
        (per_connection_ns(many) - per_connection_ns(one)) / OTHER_NAMESPACES as f64,
        CLIENT_THREADS
    ));
    part.json = json!({
        "window_s": window.as_secs_f64(), "repetitions": reps, "client_threads": CLIENT_THREADS,
        "other_namespaces": OTHER_NAMESPACES, "limit": LIMIT, "configurations": json_configs,
    });
    part.charts.push(Chart {
        title: "10. Connections per second into a pod when not limiting".into(),
        unit: "conn/s".into(),
        bars,
    });
    part
}
