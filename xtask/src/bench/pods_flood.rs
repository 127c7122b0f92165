//! Part 10, refusing in a pod: what a SYN refused inside a pod costs, for limiter enforcing in
//! the pod (`--limit-in`, generic XDP on the pod's `eth0`) against nftables `ct count` in the
//! pod and against the cheapest refusal there is in a pod (a bare drop-SYN XDP program on its
//! `eth0`). Part 2's generator floods the pod's address with SYNs from random sources; the node
//! forwards them to the pod (routing only: a NodePort's DNAT would put every forged SYN in the
//! node's conntrack table, which fills, and then the node drops the flood before any filter in
//! the pod sees it). The pod's listener is held at its limit by real connections.
//!
//! The node's veth runs an empty XDP program, which gives its receive work a NAPI thread pinned
//! to the server CPU: the forwarding and the pod's receive (its backlog, a softirq the thread
//! runs itself when it re-enables bottom halves) all happen in that thread, whose run time per
//! refused SYN is the figure. (Without IRQ time accounting, as on the bench machine, softirq
//! work a thread runs is charged to it; the CPU's tick-sampled busy time is shown beside.)
use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    agent::Agent,
    flood::{self, Generator, Holding, SERVER_CPU},
    netns::{self, OnAccept, Server, TestBed},
    order,
    pods::{self, POD_IP},
    report::{Part, Table, number, over_floor_target, paired_cost_target, spread},
    sys,
};
use crate::cmd;

const PORT: u16 = flood::PORT;
/// The pod listener's limit, and the connections held open to reach it.
const HELD: usize = flood::HELD;
/// Offered SYNs per second: part 2's paced rate, which every configuration takes in full.
const RATE: f64 = 100_000.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Config {
    XdpDrop,
    Limiter,
    NftCtCount,
}

impl Config {
    fn key(self) -> &'static str {
        match self {
            Config::XdpDrop => "xdp_drop_in_pod",
            Config::Limiter => "limiter_in_pod",
            Config::NftCtCount => "nft_ct_count_in_pod",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::XdpDrop => "bare XDP drop-SYN program on the pod's eth0 (generic)",
            Config::Limiter => "limiter, --limit-in the pod, at its limit (generic XDP)",
            Config::NftCtCount => "nftables `ct count over 16` in the pod",
        }
    }
}

/// One window of one configuration.
#[derive(Clone, Debug, Default)]
pub(super) struct Sample {
    window_s: f64,
    offered: u64,
    /// SYNs the node's veth received.
    received: u64,
    /// SYNs the filter says it refused (the bare program has no counter of its own).
    refused: Option<u64>,
    /// The node veth's NAPI thread: the forwarding and, run in the same thread as its softirq,
    /// the pod's receive.
    napi_ns: u64,
    cpu_busy_ns: u64,
    cpu_softirq_ns: u64,
    agent_cpu_ns: Option<u64>,
}

impl Sample {
    /// The NAPI thread's CPU time per SYN received (each one is refused in the pod).
    fn ns_per_syn(&self) -> f64 {
        if self.received == 0 {
            f64::NAN
        } else {
            self.napi_ns as f64 / self.received as f64
        }
    }

    /// The server CPU's busy time per SYN received (tick-based: coarse, and it has whatever
    /// else ran on that CPU).
    fn busy_ns_per_syn(&self) -> f64 {
        if self.received == 0 {
            f64::NAN
        } else {
            self.cpu_busy_ns as f64 / self.received as f64
        }
    }

    fn json(&self) -> Value {
        json!({
            "window_s": self.window_s,
            "offered_frames": self.offered,
            "received_frames": self.received,
            "refused_by_filter": self.refused,
            "server_napi_cpu_ns": self.napi_ns,
            "server_cpu_busy_ns": self.cpu_busy_ns,
            "server_cpu_softirq_ns": self.cpu_softirq_ns,
            "agent_cpu_ns": self.agent_cpu_ns,
            "ns_per_refused_syn": self.ns_per_syn(),
            "server_cpu_busy_ns_per_syn": self.busy_ns_per_syn(),
        })
    }
}

pub(super) type Samples = Vec<(Config, Vec<Sample>)>;

/// Floods the pod under each configuration, interleaved, `reps` windows of `window` each.
pub(super) fn run(ctx: &Ctx, window: Duration, reps: usize) -> Result<Samples> {
    let configs = [Config::XdpDrop, Config::Limiter, Config::NftCtCount];
    let bed = TestBed::create()?;
    let pod = pods::build(&bed, false, 0)?;
    // The held connections come from the client namespace to the pod's address.
    pods::route_client_to_pod(&bed)?;
    bed.attach_xdp(true, &ctx.objects.pass)?;
    let napi = bed.threaded_napi(true, SERVER_CPU)?;
    let generator = Generator::start_to(ctx, &bed, true, POD_IP)?;
    // Warm-up (not measured; nothing listens yet): the first window of a run is otherwise
    // slower.
    generator.run(Duration::from_secs(1), Some(RATE))?;
    let mut samples: Samples = configs.iter().map(|c| (*c, Vec::new())).collect();
    for rep in 0..reps {
        for i in order::balanced(configs.len(), rep) {
            let config = &configs[i];
            cmd::check_interrupted()?;
            println!("  pod flood {}/{reps}: {}", rep + 1, config.label());
            let sample = measure(ctx, &bed, &pod, *config, &generator, napi, window)
                .with_context(|| format!("flood into the pod against {}", config.label()))?;
            println!(
                "    {:.2} M SYNs offered, {:.2} M received, refused {:?}, {} ns of NAPI thread \
                 per SYN ({} ns of server CPU busy), agent {:?} ns",
                sample.offered as f64 / 1e6,
                sample.received as f64 / 1e6,
                sample.refused,
                number(sample.ns_per_syn()),
                number(sample.busy_ns_per_syn()),
                sample.agent_cpu_ns
            );
            samples[i].1.push(sample);
        }
    }
    drop(generator);
    drop(pod);
    drop(bed);
    Ok(samples)
}

/// What one configuration set up in the pod; torn down on drop.
struct Setup<'a> {
    bed: &'a TestBed,
    pod: &'a str,
    config: Config,
    /// With a server of its own: one holding every connection it accepted keeps them
    /// (CLOSE_WAIT) after the client closes, and the next agent would count them as already
    /// there.
    holding: Holding,
}

impl Drop for Setup<'_> {
    fn drop(&mut self) {
        self.holding.release();
        let undone = match self.config {
            Config::XdpDrop => pods::xdp_in_pod(self.bed, self.pod, None),
            Config::NftCtCount => self
                .bed
                .exec(self.pod, &["nft", "delete table inet limbench"])
                .map(|_| ()),
            Config::Limiter => Ok(()),
        };
        if let Err(e) = undone {
            eprintln!("bench: cleanup in the pod: {e:#}");
        }
    }
}

fn set_up<'a>(
    ctx: &Ctx,
    bed: &'a TestBed,
    pods: &'a pods::Pods,
    config: Config,
) -> Result<Setup<'a>> {
    let pod = pods.pod.as_str();
    let mut setup = Setup {
        bed,
        pod,
        config,
        holding: Holding {
            server: Some(Server::start_at(pod, POD_IP, PORT, OnAccept::Hold, None)?),
            ..Holding::default()
        },
    };
    match config {
        Config::XdpDrop => {
            pods::xdp_in_pod(bed, pod, Some(&ctx.objects.drop_syn_flood))?;
            return Ok(setup);
        }
        Config::Limiter => {
            setup.holding.agent = Some(Agent::in_server_ns(
                ctx,
                bed,
                &[
                    "--limit-in".into(),
                    format!("/run/netns/{pod}"),
                    format!("{PORT}={HELD}"),
                ],
            )?);
        }
        Config::NftCtCount => {
            bed.exec(
                pod,
                &[
                    "nft",
                    &format!(
                        "add table inet limbench; add chain inet limbench input {{ type filter \
                         hook input priority filter; policy accept; }}; add rule inet limbench \
                         input tcp dport {PORT} ct state new ct count over {HELD} counter drop"
                    ),
                ],
            )?;
        }
    }
    setup.holding.connections = netns::connect_many_to(
        &bed.client_ns,
        SocketAddrV4::new(POD_IP, PORT),
        HELD,
        1,
        Duration::from_secs(3),
    )?;
    if setup.holding.connections.len() != HELD {
        let eth0 = bed.exec(pod, &["ip", "-d", "link", "show", "eth0"])?;
        let sockets = bed.exec(pod, &["ss", "-tan"])?;
        let stats = setup.holding.agent.as_ref().map(Agent::stats);
        bail!(
            "only {} of {HELD} connections to hold were established; the pod's eth0:\n{eth0}\n\
             its sockets:\n{sockets}\nlimiter: {stats:?}",
            setup.holding.connections.len()
        );
    }
    netns::wait_established(pod, PORT, HELD)?;
    if let Some(agent) = &setup.holding.agent {
        cmd::poll_until(
            "limiter to count the held connections",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let active = total(agent, "active")?;
                Ok(if active == HELD as u64 {
                    cmd::Check::Done(())
                } else {
                    cmd::Check::NotYet(format!("active {active}"))
                })
            },
        )?;
    }
    Ok(setup)
}

/// A counter summed over the agent's listeners (it has one: the pod's).
fn total(agent: &Agent, field: &str) -> Result<u64> {
    Ok(agent.stats()?["listeners"]
        .as_array()
        .context("stats without listeners")?
        .iter()
        .map(|l| l[field].as_u64().unwrap_or(0))
        .sum())
}

fn refused(setup: &Setup<'_>) -> Result<Option<u64>> {
    Ok(match setup.config {
        Config::XdpDrop => None,
        Config::Limiter => Some(total(
            setup.holding.agent.as_ref().context("no agent")?,
            "refused_total",
        )?),
        Config::NftCtCount => {
            let text = setup
                .bed
                .exec(setup.pod, &["nft", "list chain inet limbench input"])?;
            let marker = "counter packets ";
            let at = text.find(marker).context("no nft counter")? + marker.len();
            Some(
                text[at..]
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("nft counter value")?,
            )
        }
    })
}

fn measure(
    ctx: &Ctx,
    bed: &TestBed,
    pod: &pods::Pods,
    config: Config,
    generator: &Generator,
    napi: u32,
    window: Duration,
) -> Result<Sample> {
    let setup = set_up(ctx, bed, pod, config)?;
    let agent = setup.holding.agent.as_ref().map(Agent::pid);
    let received = || bed.veth_stat(true, "rx_queue_0_xdp_packets");
    let (received0, refused0) = (received()?, refused(&setup)?);
    let cpu0 = sys::CpuTimes::read(SERVER_CPU)?;
    let napi0 = sys::task_cpu_ns(napi)?;
    let agent0 = agent.and_then(flood::process_cpu_ns);
    let started = Instant::now();
    let offered = generator.run(window, Some(RATE))?;
    let elapsed = started.elapsed();
    // Let the node and the pod drain their queues: the received count stops moving.
    let mut last = received()?;
    cmd::poll_until(
        "the node to drain its queue",
        Duration::from_secs(5),
        Duration::from_millis(30),
        || {
            let now = received()?;
            let settled = now == last;
            last = now;
            Ok(if settled {
                cmd::Check::Done(())
            } else {
                cmd::Check::NotYet(format!("{now} received"))
            })
        },
    )?;
    let cpu1 = sys::CpuTimes::read(SERVER_CPU)?;
    let napi1 = sys::task_cpu_ns(napi)?;
    let agent1 = agent.and_then(flood::process_cpu_ns);
    let (received1, refused1) = (received()?, refused(&setup)?);
    drop(setup);
    Ok(Sample {
        window_s: elapsed.as_secs_f64(),
        offered,
        received: received1 - received0,
        refused: refused1.zip(refused0).map(|(b, a)| b - a),
        napi_ns: napi1 - napi0,
        cpu_busy_ns: cpu1.busy_ns_since(&cpu0),
        cpu_softirq_ns: cpu1.softirq_ns_since(&cpu0),
        agent_cpu_ns: agent1.zip(agent0).map(|(b, a)| b - a),
    })
}

/// The table, the targets and the JSON of the pod flood, added to part 10.
pub(super) fn report(part: &mut Part, samples: &Samples, window: Duration, reps: usize) {
    part.method.push(format!(
        "Refusing in a pod: the same node and pod without the NodePort rule. Part 2's generator \
         sends {} SYN/s from random sources in 198.19.0.0/16 to the pod's address \
         {POD_IP}:{PORT} (frames to the node's veth, which routes them to the pod), for {} s \
         windows, {reps} repetitions, the configurations interleaved in a balanced order (the targets compare windows of \
         the same repetition: the median of their ratios or differences). The pod's listener is \
         held at its limit of {HELD} by {HELD} real connections (for the limiting \
         configurations), so every SYN is refused in the pod. The node's veth runs an empty XDP \
         program so that its receive work runs in a NAPI thread pinned to CPU {SERVER_CPU}; the \
         forwarding and the pod's receive (its backlog, a softirq the thread runs itself) run \
         in that thread too, and the figure is the thread's run time (/proc/PID/schedstat, in \
         ns) per SYN the node received; the CPU's busy time (/proc/stat, sampled at each tick, \
         with whatever else ran there) is shown beside it. Every configuration pays the node's \
         forwarding alike; the bare drop program is the floor. (No NodePort here: its DNAT would make a conntrack entry on the node for every \
         forged SYN, the table fills, and the node drops the flood before the pod sees it, \
         whatever filters there.)",
        number(RATE),
        window.as_secs()
    ));
    let per_syn = |c: Config| -> Vec<f64> {
        samples
            .iter()
            .find(|s| s.0 == c)
            .map(|s| s.1.iter().map(Sample::ns_per_syn).collect())
            .unwrap_or_default()
    };
    let median = |c: Config| spread(&per_syn(c)).1;
    let (floor, limiter) = (median(Config::XdpDrop), median(Config::Limiter));
    let mut table = Table::new(
        &format!(
            "SYN flood into a pod at {} SYN/s: server CPU per refused SYN (ns, median over \
             repetitions, min–max in brackets)",
            number(RATE)
        ),
        &[
            "configuration",
            "ns per refused SYN",
            "over the floor (ns)",
            "× limiter",
            "CPU busy per SYN (ns, ticks)",
            "SYNs received / refused by the filter",
        ],
    );
    for (config, s) in samples {
        let (lo, med, hi) = spread(&per_syn(*config));
        let busy = spread(&s.iter().map(Sample::busy_ns_per_syn).collect::<Vec<_>>()).1;
        let received: u64 = s.iter().map(|x| x.received).sum();
        let refused = s
            .iter()
            .map(|x| x.refused)
            .sum::<Option<u64>>()
            .map_or("–".to_string(), |r| r.to_string());
        table.row(vec![
            config.label().into(),
            format!("**{}** ({}–{})", number(med), number(lo), number(hi)),
            number(med - floor),
            format!("{:.2}", med / limiter),
            number(busy),
            format!("{received} / {refused}"),
        ]);
    }
    part.tables.push(table);
    // Window by window: each configuration against the floor's window of the same repetition
    // (next to each other in time, so the machine's slow swings cancel out).
    let (floors, limiters, nfts) = (
        per_syn(Config::XdpDrop),
        per_syn(Config::Limiter),
        per_syn(Config::NftCtCount),
    );
    part.targets.push(paired_cost_target(
        "SYN flood into a pod (100k SYN/s): limiter in the pod, CPU per refused SYN vs the bare \
         XDP drop program on the pod's eth0 (node forwarding included in both)"
            .into(),
        &limiters,
        &floors,
        1.3,
    ));
    // What each filter adds to the floor: the forwarding to the pod is the same for all.
    part.targets.push(over_floor_target(
        "SYN flood into a pod (100k SYN/s): nftables `ct count` in the pod vs limiter in the \
         pod, CPU each adds per refused SYN over the bare XDP drop (the node's forwarding, which \
         both pay alike, taken out)"
            .into(),
        &nfts,
        &limiters,
        &floors,
        6.0,
    ));
    part.json["pod_flood"] = json!({
        "rate_syn_per_s": RATE, "window_s": window.as_secs_f64(), "repetitions": reps,
        "held": HELD,
        "configurations": samples.iter().map(|(c, s)| (c.key().to_string(), json!({
            "label": c.label(), "samples": s.iter().map(Sample::json).collect::<Vec<_>>(),
        }))).collect::<serde_json::Map<_, _>>(),
    });
}
