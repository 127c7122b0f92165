//! Part 7: proxy mode. limiter's own TCP proxy (`--proxy LISTEN=UPSTREAM`, with its XDP and
//! sock_ops programs attached and a limit that is never reached) against HAProxy, Envoy
//! `tcp_proxy` and nginx stream on the same path and the same single CPU: throughput of one
//! connection (iperf3) and connections per second, with the direct path (no proxy) as the
//! baseline.
use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    agent::Agent,
    iperf,
    netns::{self, Churn, OnAccept, SERVER_IP, Server, TestBed},
    order,
    peers::{Kind, Peer, Peers, Route},
    report::{Bar, Chart, Part, Table, Target, number, spread},
    sys,
};
use crate::cmd;

/// The proxies listen here for the connection-rate test and forward to the greeter on
/// GREETER_PORT.
const CPS_PORT: u16 = 8400;
const GREETER_PORT: u16 = 8401;
/// The proxies listen here for the throughput test and forward to iperf3 on IPERF_PORT.
const THROUGHPUT_PORT: u16 = 8402;
const IPERF_PORT: u16 = 8403;
/// limiter's limit on its proxy listeners: never reached (the bench checks it refused nothing).
const LIMIT: u32 = 1_000_000;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
const CLIENT_THREADS: usize = 8;
/// The connection-rate clients: only a connection that brought the upstream's greeting counts.
const CLIENTS: Churn = Churn {
    threads: CLIENT_THREADS,
    cpu: Some(CLIENT_CPU),
    server: OnAccept::Greet,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Direct,
    Limiter,
    Haproxy,
    Envoy,
    Nginx,
}

impl Config {
    fn key(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Limiter => "limiter_proxy",
            Config::Haproxy => "haproxy",
            Config::Envoy => "envoy_tcp_proxy",
            Config::Nginx => "nginx_stream",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::Direct => "direct to the upstream (no proxy)",
            Config::Limiter => "limiter `--proxy` (limit never reached)",
            Config::Haproxy => "HAProxy, TCP mode",
            Config::Envoy => "Envoy `tcp_proxy`",
            Config::Nginx => "nginx stream `proxy_pass`",
        }
    }

    fn peer(self) -> Option<Kind> {
        match self {
            Config::Haproxy => Some(Kind::Haproxy),
            Config::Envoy => Some(Kind::Envoy),
            Config::Nginx => Some(Kind::Nginx),
            Config::Direct | Config::Limiter => None,
        }
    }

    /// Where the client connects: (connection-rate port, throughput port).
    fn ports(self) -> (u16, u16) {
        match self {
            Config::Direct => (GREETER_PORT, IPERF_PORT),
            _ => (CPS_PORT, THROUGHPUT_PORT),
        }
    }
}

/// One repetition of one configuration.
#[derive(Clone, Debug, Default)]
struct Sample {
    cps_window_s: f64,
    connections: u64,
    failed: u64,
    /// The server's CPU (its NAPI thread and the proxy's threads) during the rate window.
    cps_server_ns: u64,
    throughput_bps: f64,
    throughput_window_s: f64,
    throughput_server_ns: u64,
    /// CPU 1's whole busy time during each window (/proc/stat), for context.
    cps_cpu1_busy_ns: u64,
    throughput_cpu1_busy_ns: u64,
}

impl Sample {
    fn cps(&self) -> f64 {
        self.connections as f64 / self.cps_window_s
    }

    fn gbps(&self) -> f64 {
        self.throughput_bps / 1e9
    }

    fn json(&self) -> Value {
        json!({
            "cps_window_s": self.cps_window_s,
            "connections": self.connections,
            "failed_connections": self.failed,
            "connections_per_s": self.cps(),
            "cps_server_cpu_ns": self.cps_server_ns,
            "cps_cpu1_busy_ns": self.cps_cpu1_busy_ns,
            "throughput_bits_per_s": self.throughput_bps,
            "throughput_window_s": self.throughput_window_s,
            "throughput_server_cpu_ns": self.throughput_server_ns,
            "throughput_cpu1_busy_ns": self.throughput_cpu1_busy_ns,
        })
    }
}

pub fn run(ctx: &Ctx) -> Result<Part> {
    let (window, reps) = ctx.windows(5);
    let configs = [
        Config::Direct,
        Config::Limiter,
        Config::Haproxy,
        Config::Envoy,
        Config::Nginx,
    ];
    let peers = Peers::prepare(ctx)?;
    let iperf_version = iperf::version()?;
    let bed = TestBed::create()?;
    // Replies to the client are received by the client veth's NAPI thread on the client's
    // CPU (it has NAPI only with an XDP program), not by a softirq on the server's.
    bed.attach_xdp(false, &ctx.objects.pass)?;
    bed.threaded_napi(false, CLIENT_CPU)?;
    // The upstreams, on the server's CPU like the proxies.
    let greeter = Server::start_on(
        &bed.server_ns,
        GREETER_PORT,
        OnAccept::Greet,
        Some(SERVER_CPU),
    )?;
    let iperf_server = iperf::Server::start(
        &bed.server_ns,
        &SERVER_IP.to_string(),
        IPERF_PORT,
        SERVER_CPU,
    )?;

    let mut samples: Vec<(Config, Vec<Sample>)> =
        configs.iter().map(|c| (*c, Vec::new())).collect();
    let mut napi = None;
    for rep in 0..reps {
        for i in order::balanced(configs.len(), rep) {
            let config = &configs[i];
            cmd::check_interrupted()?;
            println!("  proxy {}/{reps}: {}", rep + 1, config.label());
            let setup = Setup::new(ctx, &peers, &bed, *config, &mut napi)
                .with_context(|| format!("setting up {}", config.label()))?;
            let sample = setup
                .measure(&bed, window)
                .with_context(|| format!("measuring {}", config.label()))?;
            setup.finish()?;
            println!(
                "    {:.0} connections/s ({} failed), {:.2} Gbit/s",
                sample.cps(),
                sample.failed,
                sample.gbps()
            );
            samples[i].1.push(sample);
        }
    }
    drop(iperf_server);
    greeter.stop()?;
    drop(bed);
    let mut versions = peers.versions.clone();
    versions.push(("iperf3".into(), iperf_version));
    Ok(report(&samples, window, reps, &versions))
}

/// One configuration: the proxy (none for the direct path) with its XDP program, and the
/// server veth's NAPI thread on the server's CPU.
struct Setup<'a> {
    bed: &'a TestBed,
    config: Config,
    agent: Option<Agent>,
    peer: Option<Peer>,
    xdp: bool,
    napi: u32,
}

impl<'a> Setup<'a> {
    fn new(
        ctx: &Ctx,
        peers: &Peers,
        bed: &'a TestBed,
        config: Config,
        napi: &mut Option<u32>,
    ) -> Result<Setup<'a>> {
        let mut setup = Setup {
            bed,
            config,
            agent: None,
            peer: None,
            xdp: false,
            napi: 0,
        };
        let routes = [(CPS_PORT, GREETER_PORT), (THROUGHPUT_PORT, IPERF_PORT)];
        match (config, config.peer()) {
            (Config::Limiter, _) => {
                let mut args = vec![
                    "--iface".to_string(),
                    bed.server_veth.clone(),
                    "--xdp-mode".into(),
                    "native".into(),
                ];
                for (listen, upstream) in routes {
                    args.push("--proxy".into());
                    args.push(format!("{SERVER_IP}:{listen}={SERVER_IP}:{upstream}"));
                    args.push("--limit".into());
                    args.push(format!("{SERVER_IP}:{listen}={LIMIT}"));
                }
                let agent = Agent::in_server_ns(ctx, bed, &args)?;
                // One CPU, as the peers have: every thread of the agent (its tokio workers
                // included) on the server's CPU.
                sys::pin_process(agent.pid(), SERVER_CPU)?;
                setup.agent = Some(agent);
                for (listen, _) in routes {
                    netns::wait_listening(
                        &bed.server_ns,
                        listen,
                        "limiter's proxy",
                        Duration::from_secs(30),
                        String::new,
                    )?;
                }
            }
            (_, kind) => {
                // The server veth takes frames from its peer only with an XDP program (the
                // empty one; limiter brings its own).
                bed.attach_xdp(true, &ctx.objects.pass)?;
                setup.xdp = true;
                if let Some(kind) = kind {
                    let routes: Vec<Route> = routes
                        .iter()
                        .map(|(listen, upstream)| Route {
                            listen: SocketAddrV4::new(SERVER_IP, *listen),
                            upstream: SocketAddrV4::new(SERVER_IP, *upstream),
                            limit: None,
                        })
                        .collect();
                    setup.peer = Some(peers.start(kind, &bed.server_ns, &routes, SERVER_CPU)?);
                }
            }
        }
        setup.napi = bed.threaded_napi_anew(true, SERVER_CPU, *napi)?;
        *napi = Some(setup.napi);
        Ok(setup)
    }

    /// The server's CPU so far: its NAPI thread and the proxy's threads.
    fn server_ns(&self) -> Result<u64> {
        let process = match (&self.agent, &self.peer) {
            (Some(agent), _) => sys::process_tasks_cpu_ns(agent.pid())?,
            (_, Some(peer)) => sys::process_tasks_cpu_ns(peer.pid())?,
            _ => 0,
        };
        Ok(sys::task_cpu_ns(self.napi)? + process)
    }

    fn measure(&self, bed: &TestBed, window: Duration) -> Result<Sample> {
        let (cps_port, throughput_port) = self.config.ports();
        // Warm-up, not measured.
        netns::churn(
            &bed.client_ns,
            cps_port,
            CLIENTS,
            Duration::from_millis(500),
        )?;

        let (server0, cpu0) = (self.server_ns()?, sys::CpuTimes::read(SERVER_CPU)?);
        let started = Instant::now();
        let (connections, failed) = netns::churn(&bed.client_ns, cps_port, CLIENTS, window)?;
        let cps_window_s = started.elapsed().as_secs_f64();
        let (server1, cpu1) = (self.server_ns()?, sys::CpuTimes::read(SERVER_CPU)?);

        let started = Instant::now();
        let throughput_bps = iperf::throughput(
            &bed.client_ns,
            &SERVER_IP.to_string(),
            throughput_port,
            window.as_secs(),
            CLIENT_CPU,
        )?;
        let throughput_window_s = started.elapsed().as_secs_f64();
        let (server2, cpu2) = (self.server_ns()?, sys::CpuTimes::read(SERVER_CPU)?);

        if let Some(agent) = &self.agent {
            for port in [CPS_PORT, THROUGHPUT_PORT] {
                let refused = agent.counter(&format!("{SERVER_IP}:{port}"), "refused_total")?;
                if refused != 0 {
                    bail!(
                        "limiter refused {refused} connections to port {port}: its limit was reached, \
                         so this is not the proxy alone"
                    );
                }
            }
        }
        Ok(Sample {
            cps_window_s,
            connections,
            failed,
            cps_server_ns: server1 - server0,
            throughput_bps,
            throughput_window_s,
            throughput_server_ns: server2 - server1,
            cps_cpu1_busy_ns: cpu1.busy_ns_since(&cpu0),
            throughput_cpu1_busy_ns: cpu2.busy_ns_since(&cpu1),
        })
    }

    fn finish(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(peer) = self.peer.take() {
            result = result.and(peer.stop());
        }
        if let Some(agent) = self.agent.take() {
            result = result.and(agent.stop());
        }
        if std::mem::take(&mut self.xdp) {
            result = result.and(self.bed.detach_xdp(true));
        }
        result
    }
}

impl Drop for Setup<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("bench: cleanup: {}: {e:#}", self.config.label());
        }
    }
}

fn report(
    samples: &[(Config, Vec<Sample>)],
    window: Duration,
    reps: usize,
    versions: &[(String, String)],
) -> Part {
    let mut part = Part::new(
        "proxy",
        "7. Proxy mode: throughput and connections per second of limiter's proxy against HAProxy, Envoy and nginx",
    );
    let versions_text = versions
        .iter()
        .map(|(k, v)| format!("{k}: `{v}`"))
        .collect::<Vec<_>>()
        .join("; ");
    part.method = vec![
        format!(
            "The test bed of the other parts. Each proxy listens on {SERVER_IP}:{CPS_PORT} and \
             {SERVER_IP}:{THROUGHPUT_PORT} in the server namespace and forwards to two upstreams \
             there: a server on {GREETER_PORT} that writes one byte on every connection it \
             accepts and keeps it until the other end closes, and `iperf3 --server` on \
             {IPERF_PORT}. limiter: `limiter run --proxy {SERVER_IP}:{CPS_PORT}={SERVER_IP}:{GREETER_PORT} \
             --limit {SERVER_IP}:{CPS_PORT}={LIMIT}` (and the same for {THROUGHPUT_PORT}), \
             `--xdp-mode native`: its XDP and sock_ops programs run on every connection as they \
             would in use, and the bench checks that it refused nothing. HAProxy: TCP mode, \
             `nbthread 1`. Envoy: `tcp_proxy`, `--concurrency 1`. nginx: stream `proxy_pass`, \
             one process (`master_process off`). The direct path (the client straight to the \
             upstreams) is the baseline."
        ),
        format!(
            "One CPU each: the proxy (started with `taskset -c {SERVER_CPU}`; limiter's agent, \
             a multi-threaded tokio program, with every thread pinned to CPU {SERVER_CPU} after \
             start), the server veth's threaded-NAPI receive thread and both upstreams run on \
             CPU {SERVER_CPU}; the client and the client veth's NAPI thread on CPU {CLIENT_CPU}."
        ),
        format!(
            "Connections per second: {CLIENT_THREADS} client threads connect, read the \
             upstream's byte (only a connection that brought it counts: a proxy that accepts and \
             closes would otherwise look fast), close with a RST (SO_LINGER 0, so no side keeps \
             TIME_WAIT state), and connect again, for {} s windows after a 0.5 s warm-up. \
             Throughput: one iperf3 connection, client to server, for {} s (`iperf3 --client \
             --time {} --json`, the receiver's rate), TSO/GSO off on the veths as in every part. \
             {reps} repetitions, configurations interleaved in a balanced order.",
            window.as_secs(),
            window.as_secs(),
            window.as_secs().max(1)
        ),
        format!("Versions: {versions_text}."),
    ];
    let median = |c: Config, f: fn(&Sample) -> f64| {
        samples
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(f64::NAN, |(_, s)| {
                spread(&s.iter().map(f).collect::<Vec<_>>()).1
            })
    };
    let haproxy_cps = median(Config::Haproxy, Sample::cps);
    let haproxy_gbps = median(Config::Haproxy, Sample::gbps);
    let mut table = Table::new(
        "Connections per second and throughput (median over repetitions, min–max in brackets), \
         and how busy the server's CPU 1 was (the proxy, its NAPI thread and the upstreams; \
         /proc/stat, so anything else the shared machine ran there too; report.json also has \
         the proxy's and the NAPI thread's own run time)",
        &[
            "configuration",
            "connections/s",
            "× HAProxy",
            "failed",
            "CPU 1 busy (conn/s test)",
            "throughput (Gbit/s)",
            "× HAProxy",
            "CPU 1 busy (throughput test)",
        ],
    );
    let mut cps_bars = Vec::new();
    let mut gbps_bars = Vec::new();
    let mut json_configs = serde_json::Map::new();
    for (config, s) in samples {
        let (clo, cmed, chi) = spread(&s.iter().map(Sample::cps).collect::<Vec<_>>());
        let (tlo, tmed, thi) = spread(&s.iter().map(Sample::gbps).collect::<Vec<_>>());
        let busy = |f: fn(&Sample) -> f64| {
            format!(
                "{:.0}%",
                spread(&s.iter().map(f).collect::<Vec<_>>()).1 * 100.0
            )
        };
        table.row(vec![
            config.label().to_string(),
            format!("**{}** ({}–{})", number(cmed), number(clo), number(chi)),
            format!("{:.2}", cmed / haproxy_cps),
            s.iter().map(|x| x.failed).sum::<u64>().to_string(),
            busy(|x| x.cps_cpu1_busy_ns as f64 / (x.cps_window_s * 1e9)),
            format!("**{tmed:.2}** ({tlo:.2}–{thi:.2})"),
            format!("{:.2}", tmed / haproxy_gbps),
            busy(|x| x.throughput_cpu1_busy_ns as f64 / (x.throughput_window_s * 1e9)),
        ]);
        cps_bars.push(Bar {
            label: config.label().to_string(),
            value: cmed,
            low: clo,
            high: chi,
            ours: *config == Config::Limiter,
        });
        gbps_bars.push(Bar {
            label: config.label().to_string(),
            value: tmed,
            low: tlo,
            high: thi,
            ours: *config == Config::Limiter,
        });
        json_configs.insert(
            config.key().to_string(),
            json!({
                "label": config.label(),
                "connections_per_s_median": cmed,
                "throughput_gbit_per_s_median": tmed,
                "samples": s.iter().map(Sample::json).collect::<Vec<_>>(),
            }),
        );
    }
    part.tables.push(table);
    let lim_cps = median(Config::Limiter, Sample::cps);
    let lim_gbps = median(Config::Limiter, Sample::gbps);
    part.targets.push(Target::at_least(
        "proxy mode: connections per second, limiter's proxy vs HAProxy",
        lim_cps / haproxy_cps,
        1.0,
        &format!("{} vs {} conn/s", number(lim_cps), number(haproxy_cps)),
    ));
    part.targets.push(Target::at_least(
        "proxy mode: throughput of one connection, limiter's proxy vs HAProxy",
        lim_gbps / haproxy_gbps,
        1.0,
        &format!("{lim_gbps:.2} vs {haproxy_gbps:.2} Gbit/s"),
    ));
    let direct_cps = median(Config::Direct, Sample::cps);
    let direct_gbps = median(Config::Direct, Sample::gbps);
    part.notes.push(format!(
        "Against the direct path: limiter's proxy keeps {:.0}% of its connections per second and \
         {:.0}% of its throughput; HAProxy {:.0}% and {:.0}%. A proxy makes two connections of \
         every one, and copies every byte through user space on the one server CPU.",
        lim_cps / direct_cps * 100.0,
        lim_gbps / direct_gbps * 100.0,
        haproxy_cps / direct_cps * 100.0,
        haproxy_gbps / direct_gbps * 100.0
    ));
    part.notes.push(
        "limiter runs its XDP program on the server veth in its configuration; the other \
         configurations run the empty XDP program there (a veth needs one to receive through \
         its NAPI thread on the server CPU), so the comparison includes limiter's per-packet \
         and per-connection accounting."
            .into(),
    );
    part.json = json!({
        "window_s": window.as_secs_f64(), "repetitions": reps, "client_threads": CLIENT_THREADS,
        "limit": LIMIT, "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU,
        "versions": versions.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "configurations": json_configs,
    });
    part.charts.push(Chart {
        title: "7. Proxy mode: connections per second (one CPU)".into(),
        unit: "conn/s".into(),
        bars: cps_bars,
    });
    part.charts.push(Chart {
        title: "7. Proxy mode: throughput of one connection (one CPU)".into(),
        unit: "Gbit/s".into(),
        bars: gbps_bars,
    });
    part
}
