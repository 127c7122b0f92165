//! Part 4: legitimate clients during a SYN flood. The flood's test bed (part 2): a
//! listener held at its limit and flooded with spoofed SYNs from the generator; next to it, on
//! the same server, a second limited listener that real clients connect to within its limit.
//! Their connection rate and connect latency with and without the flood, for limiter and for
//! nftables `ct count`: a limiter that refuses the flood cheaply leaves the server's CPU to them.
use std::{
    io::Read as _,
    net::{SocketAddr, SocketAddrV4},
    sync::Barrier,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};

use super::{
    Ctx,
    flood::{self, Also, Config, GENERATOR_CPU, Generator, Pace, SERVER_CPU},
    netns::{OnAccept, SERVER_IP, Server, TestBed},
    order,
    report::{Bar, Chart, Part, Table, Target, number, spread},
    sys,
};
use crate::cmd;

/// The clients' listener, limited by the same configuration as the flooded one.
const PORT: u16 = 8100;
/// Never reached by the clients (they hold at most a few connections at once).
const LIMIT: usize = 64;
/// Connection attempts per second the clients offer, open loop: each of THREADS threads starts
/// one attempt every THREADS/RATE seconds by the clock, late ones at once.
const RATE: f64 = 1_000.0;
const THREADS: usize = 4;
/// A connect that takes longer than this counts as failed (a SYN dropped twice: 1 s + 2 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The flood: part 2's bursts, often enough to push nftables `ct count` past what one CPU
/// refuses (part 2: about 0.5 M SYN/s). The generator sleeps between bursts rather than spin,
/// as it shares its CPU with the clients.
const FLOOD: Pace = Pace {
    rate: 600_000.0,
    burst: flood::BURST,
    spin: false,
};

/// Real clients, open loop: `threads` threads together start `rate` connection attempts per
/// second to SERVER_IP:`port`, each failing after `timeout`.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    pub port: u16,
    pub rate: f64,
    pub threads: usize,
    pub timeout: Duration,
}

/// Part 4's clients.
const CLIENTS: Offer = Offer {
    port: PORT,
    rate: RATE,
    threads: THREADS,
    timeout: CONNECT_TIMEOUT,
};

/// One window of the clients, with or without the flood.
#[derive(Clone, Debug, Default)]
pub struct Window {
    window_s: f64,
    pub attempts: u64,
    pub connected: u64,
    failed: u64,
    /// Connect latency of each connected attempt, µs.
    latency_us: Vec<f64>,
    flood_offered: u64,
    napi_ns: u64,
    /// Drop and error counters of the server veth that moved during the window.
    server_veth_drops: Vec<(String, u64)>,
}

impl Window {
    /// Connections per second over the window the attempts were started in (an attempt still
    /// waiting for its connect when the window ends is not given more time than that).
    pub fn rate(&self) -> f64 {
        self.connected as f64 / self.window_s
    }

    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latency_us, p)
    }

    pub fn json(&self) -> Value {
        json!({
            "window_s": self.window_s,
            "attempts": self.attempts,
            "connected": self.connected,
            "failed": self.failed,
            "connections_per_s": self.rate(),
            "connect_latency_us": {
                "p50": self.percentile(0.50),
                "p90": self.percentile(0.90),
                "p99": self.percentile(0.99),
                "max": self.percentile(1.0),
            },
            "flood_offered_syns": self.flood_offered,
            "server_napi_cpu_ns": self.napi_ns,
            "server_veth_drops": self.server_veth_drops.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// The `p` quantile (nearest rank) of `values`; NaN when empty.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn run(ctx: &Ctx) -> Result<Part> {
    let (window, reps) = ctx.windows(5);
    let configs = [Config::Limiter, Config::NftCtCount];
    let bed = TestBed::create()?;
    // At normal priority: the clients share its CPU, and behind a SCHED_FIFO generator they
    // would wait for every burst (tens of ms at p99, a test-bed artifact, not the server's).
    let generator = Generator::start(ctx, &bed, false)?;
    // Warm-up (not measured), as in part 2: the first flood of a run is otherwise slower.
    bed.attach_xdp(true, &ctx.objects.drop_syn_flood)?;
    generator.run_paced(Duration::from_secs(1), Some(FLOOD))?;
    bed.detach_xdp(true)?;
    let mut results: Vec<(Config, Vec<Window>, Vec<Window>)> = configs
        .iter()
        .map(|c| (*c, Vec::new(), Vec::new()))
        .collect();
    let mut napi_pid = None;
    for rep in 0..reps {
        for i in order::balanced(configs.len(), rep) {
            let config = &configs[i];
            cmd::check_interrupted()?;
            println!("  legit {}/{reps}: {}", rep + 1, config.label());
            let setup = flood::set_up(
                ctx,
                &bed,
                *config,
                Some(Also {
                    port: PORT,
                    limit: LIMIT,
                }),
            )
            .with_context(|| format!("setting up {}", config.label()))?;
            let napi = bed.threaded_napi_anew(true, SERVER_CPU, napi_pid)?;
            napi_pid = Some(napi);
            let server = Server::start(&bed.server_ns, PORT, OnAccept::Reset)?;
            let quiet = measure(&bed, &generator, napi, window, false)?;
            let flooded = measure(&bed, &generator, napi, window, true)?;
            for (what, w) in [("no flood", &quiet), ("flood", &flooded)] {
                println!(
                    "    {what}: {:.0} connections/s ({} of {} attempts, {} failed), connect p50 {} µs, p99 {} µs, server NAPI {:.0}% busy, {:.0}k SYN/s flood offered, server veth drops {:?}",
                    w.rate(),
                    w.connected,
                    w.attempts,
                    w.failed,
                    number(w.percentile(0.5)),
                    number(w.percentile(0.99)),
                    w.napi_ns as f64 / (w.window_s * 1e9) * 100.0,
                    w.flood_offered as f64 / w.window_s / 1e3,
                    w.server_veth_drops
                );
            }
            if let Some(agent) = &setup.holding.agent {
                let listener = format!("{SERVER_IP}:{PORT}");
                let refused = agent.counter(&listener, "refused_total")?;
                if refused != 0 {
                    bail!("limiter refused {refused} of the clients' SYNs below their limit");
                }
            }
            server.stop()?;
            drop(setup);
            results[i].1.push(quiet);
            results[i].2.push(flooded);
        }
    }
    drop(generator);
    drop(bed);
    Ok(report(&results, window, reps))
}

/// One window of the clients; with `flood`, the generator floods the other listener for the
/// same window (started first, so the whole window is flooded).
fn measure(
    bed: &TestBed,
    generator: &Generator,
    napi: u32,
    window: Duration,
    flood: bool,
) -> Result<Window> {
    let napi0 = sys::task_cpu_ns(napi)?;
    let stats0 = bed.veth_stats(true)?;
    let (clients, offered) = thread::scope(|scope| -> Result<(Window, u64)> {
        let clients = scope.spawn(|| clients(&bed.client_ns, CLIENTS, window));
        let offered = if flood {
            // The flood outlasts the clients by a little, so none of their window is unflooded.
            generator.run_paced(window + Duration::from_millis(200), Some(FLOOD))?
        } else {
            0
        };
        let clients = clients
            .join()
            .unwrap_or_else(|_| bail!("the client threads panicked"))?;
        Ok((clients, offered))
    })?;
    let napi1 = sys::task_cpu_ns(napi)?;
    let stats1 = bed.veth_stats(true)?;
    let drops = stats1
        .iter()
        .filter(|(k, _)| k.contains("drop") || k.contains("err"))
        .filter_map(|(k, v1)| {
            let v0 = stats0.iter().find(|(k0, _)| k0 == k)?.1;
            (*v1 != v0).then(|| (k.clone(), v1 - v0))
        })
        .collect();
    Ok(Window {
        server_veth_drops: drops,
        flood_offered: offered,
        napi_ns: napi1 - napi0,
        ..clients
    })
}

/// The clients: THREADS threads in the client namespace on GENERATOR_CPU, open loop at RATE
/// together, for `window`. An attempt is a connect (timed) and the server's reset.
/// The clients for one `window`, all connected attempts' latencies and the failures.
pub fn clients(ns: &str, offer: Offer, window: Duration) -> Result<Window> {
    let Offer {
        port,
        rate,
        threads,
        timeout,
    } = offer;
    let target: socket2::SockAddr = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, port)).into();
    let barrier = Barrier::new(threads);
    let interval = Duration::from_secs_f64(threads as f64 / rate);
    let per_thread: Vec<Result<Window>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, target) = (&barrier, &target);
                scope.spawn(move || -> Result<Window> {
                    sys::enter_netns(ns)?;
                    sys::pin_this_thread(GENERATOR_CPU)?;
                    barrier.wait();
                    let start = Instant::now();
                    let end = start + window;
                    // Threads start staggered over one interval.
                    let mut next = start + interval.mul_f64(t as f64 / threads as f64);
                    let mut w = Window::default();
                    while next < end && !cmd::interrupted() {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                        next += interval;
                        w.attempts += 1;
                        match attempt(target, timeout) {
                            Ok(latency) => {
                                w.connected += 1;
                                w.latency_us.push(latency.as_secs_f64() * 1e6);
                            }
                            Err(_) => w.failed += 1,
                        }
                    }
                    w.window_s = window.as_secs_f64();
                    Ok(w)
                })
            })
            .collect();
        sys::join_all(handles)
    });
    let mut all = Window::default();
    for w in per_thread {
        let w = w?;
        all.window_s = all.window_s.max(w.window_s);
        all.attempts += w.attempts;
        all.connected += w.connected;
        all.failed += w.failed;
        all.latency_us.extend(w.latency_us);
    }
    Ok(all)
}

/// One connection: connect within CONNECT_TIMEOUT (its latency is the result), then wait for
/// the server's reset so the connection is over before the next.
fn attempt(target: &socket2::SockAddr, timeout: Duration) -> Result<Duration> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    let started = Instant::now();
    match socket.connect_timeout(target, timeout) {
        Ok(()) => {}
        // Accepted and reset by the server before connect looked at the socket.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Ok(started.elapsed());
        }
        Err(e) => return Err(e).context("connect"),
    }
    let latency = started.elapsed();
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 16];
    match (&socket).read(&mut buf) {
        Ok(0) => Ok(latency),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(latency),
        other => bail!("the connection did not end with the server's reset: {other:?}"),
    }
}

fn report(results: &[(Config, Vec<Window>, Vec<Window>)], window: Duration, reps: usize) -> Part {
    let mut part = Part::new(
        "legit_under_flood",
        "4. Legitimate clients during the SYN flood: connection rate and connect latency",
    );
    part.method = vec![
        format!(
            "Part 2's test bed and flood, with a second listener on the same server: \
             {SERVER_IP}:{} held at its limit of {} and flooded, and {SERVER_IP}:{PORT} limited \
             to {LIMIT} by the same configuration (limiter: a second `--limit`; nftables: a \
             second `ct count over {LIMIT}` rule), which real clients connect to within that \
             limit.",
            flood::PORT,
            flood::HELD
        ),
        format!(
            "Clients: {THREADS} threads in the client namespace, open loop at {RATE:.0} \
             connection attempts per second together (each starts an attempt every {} ms by the \
             clock, a late one at once). An attempt is a TCP connect, timed, and the server's \
             reset (SO_LINGER 0, no TIME_WAIT); a connect that takes over {} s fails. Windows of \
             {} s, first without and then with the flood, {reps} repetitions, configurations \
             interleaved in a balanced order.",
            THREADS as f64 / RATE * 1e3,
            CONNECT_TIMEOUT.as_secs(),
            window.as_secs()
        ),
        format!(
            "The flood: spoofed SYNs to the full listener as in part 2, aimed at {:.0}k SYN/s in \
             bursts of {}, about what one CPU refuses with nftables `ct count` (part 2, flat out) \
             and far below limiter's. The generator sleeps between bursts rather than spin, \
             and runs at normal priority (not SCHED_FIFO as in part 2), because it shares CPU \
             {GENERATOR_CPU} with the clients, which would otherwise wait behind each burst; it \
             then sends somewhat less than aimed at (the table gives what it sent). The server veth's NAPI thread (all of \
             the server's receive work) is pinned to CPU {SERVER_CPU}.",
            FLOOD.rate / 1e3,
            FLOOD.burst
        ),
    ];
    let mut table = Table::new(
        "Clients within their limit, without and with the flood (medians over repetitions; \
         latencies over every connect of the repetitions together)",
        &[
            "configuration",
            "connections/s, no flood",
            "connections/s, flood",
            "kept",
            "connect p50 / p99 (µs), no flood",
            "connect p50 / p99 (µs), flood",
            "failed connects, flood",
            "server NAPI busy, flood",
            "flood (k SYN/s sent)",
        ],
    );
    let mut bars = Vec::new();
    let mut json_configs = serde_json::Map::new();
    let mut kept_by_config = Vec::new();
    for (config, quiet, flooded) in results {
        let rate = |ws: &[Window]| spread(&ws.iter().map(Window::rate).collect::<Vec<_>>());
        let (_, q, _) = rate(quiet);
        let (lo, f, hi) = rate(flooded);
        let all = |ws: &[Window]| -> Vec<f64> {
            ws.iter()
                .flat_map(|w| w.latency_us.iter().copied())
                .collect()
        };
        let (ql, fl) = (all(quiet), all(flooded));
        let failed: u64 = flooded.iter().map(|w| w.failed).sum();
        let attempts: u64 = flooded.iter().map(|w| w.attempts).sum();
        let busy = spread(
            &flooded
                .iter()
                .map(|w| w.napi_ns as f64 / (w.window_s * 1e9))
                .collect::<Vec<_>>(),
        )
        .1;
        let kept = f / q;
        kept_by_config.push((*config, kept, q, f));
        table.row(vec![
            config.label().to_string(),
            format!("{q:.0}"),
            format!("**{f:.0}** ({lo:.0}–{hi:.0})"),
            format!("{:.0}%", kept * 100.0),
            format!(
                "{} / {}",
                number(percentile(&ql, 0.5)),
                number(percentile(&ql, 0.99))
            ),
            format!(
                "{} / {}",
                number(percentile(&fl, 0.5)),
                number(percentile(&fl, 0.99))
            ),
            format!("{failed} of {attempts}"),
            format!("{:.0}%", busy * 100.0),
            format!(
                "{:.0}",
                spread(
                    &flooded
                        .iter()
                        .map(|w| w.flood_offered as f64 / w.window_s / 1e3)
                        .collect::<Vec<_>>()
                )
                .1
            ),
        ]);
        let (qlo, _, qhi) = rate(quiet);
        bars.push(Bar {
            label: format!("{}, no flood", config.label()),
            value: q,
            low: qlo,
            high: qhi,
            ours: *config == Config::Limiter,
        });
        bars.push(Bar {
            label: format!("{}, flood", config.label()),
            value: f,
            low: lo,
            high: hi,
            ours: *config == Config::Limiter,
        });
        json_configs.insert(
            config.key().to_string(),
            json!({
                "label": config.label(),
                "no_flood": quiet.iter().map(Window::json).collect::<Vec<_>>(),
                "flood": flooded.iter().map(Window::json).collect::<Vec<_>>(),
                "kept_rate_share": kept,
            }),
        );
    }
    part.tables.push(table);
    if let Some((_, kept, q, f)) = kept_by_config.iter().find(|(c, ..)| *c == Config::Limiter) {
        part.targets.push(Target {
            what: "clients within the limit keep their connection rate during the flood (limiter)"
                .into(),
            goal: "≥ 90% of the no-flood rate".into(),
            measured: format!("{:.0}% ({f:.0} vs {q:.0} connections/s)", kept * 100.0),
            met: Some(kept.is_finite() && *kept >= 0.9),
        });
    }
    if let Some((_, kept, ..)) = kept_by_config
        .iter()
        .find(|(c, ..)| *c == Config::NftCtCount)
    {
        part.notes.push(format!(
            "nftables `ct count` kept {:.0}% of its clients' no-flood rate under the same flood.",
            kept * 100.0
        ));
    }
    part.notes.push(
        "The clients offer a fixed rate, so without the flood both configurations reach it; \
         what the flood changes is how many of those attempts connect in time and how long \
         they wait (a dropped SYN is retransmitted after 1 s, which is what p99 shows)."
            .into(),
    );
    part.json = json!({
        "window_s": window.as_secs_f64(), "repetitions": reps,
        "offered_connections_per_s": RATE, "client_threads": THREADS,
        "flood_offered_syn_per_s": FLOOD.rate, "flood_burst": FLOOD.burst,
        "clients_port": PORT, "clients_limit": LIMIT,
        "configurations": json_configs,
    });
    part.charts.push(Chart {
        title: "4. Legitimate clients during the flood: connections per second".into(),
        unit: "connections/s".into(),
        bars,
    });
    part
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
