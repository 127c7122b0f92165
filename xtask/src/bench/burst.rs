//! Part 5: exactness under a burst. Limit 50, 300 connects released at once from two threads on
//! different CPUs, 20 repetitions: the largest number of connections ever established at once on
//! the server, for limiter and for the netfilter limiters, sampled continuously from the server
//! namespace's /proc/net/tcp while the burst runs.
use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use super::{
    Ctx,
    agent::Agent,
    netns::{self, OnAccept, Server, TestBed},
    report::{Bar, Chart, Part, Table, Target},
    sys,
};
use crate::cmd;

const PORT: u16 = 8100;
const LIMIT: usize = 50;
const CONNECTS: usize = 300;
/// Long enough for a dropped SYN's first retransmission (1 s), so a slot freed by mistake would
/// be taken.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_300);
const LISTENER: &str = "198.18.0.1:8100";

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Limiter,
    NftCtCount,
    IptConnlimit,
    /// The same rules, created afresh before every repetition (nothing left from the last).
    NftCtCountFresh,
    IptConnlimitFresh,
}

impl System {
    fn key(self) -> &'static str {
        match self {
            System::Limiter => "limiter",
            System::NftCtCount => "nft_ct_count",
            System::IptConnlimit => "iptables_connlimit",
            System::NftCtCountFresh => "nft_ct_count_fresh",
            System::IptConnlimitFresh => "iptables_connlimit_fresh",
        }
    }

    fn fresh(self) -> bool {
        matches!(self, System::NftCtCountFresh | System::IptConnlimitFresh)
    }

    fn iptables(self) -> bool {
        matches!(self, System::IptConnlimit | System::IptConnlimitFresh)
    }

    fn label(self) -> &'static str {
        match self {
            System::Limiter => "limiter (XDP admission, drop)",
            System::NftCtCount => "nftables `ct count over 50` drop",
            System::IptConnlimit => "iptables `connlimit --connlimit-above 50` drop",
            System::NftCtCountFresh => {
                "nftables `ct count over 50`, rule re-created each repetition"
            }
            System::IptConnlimitFresh => "iptables `connlimit`, rule re-created each repetition",
        }
    }
}

/// One repetition's outcome.
#[derive(Clone, Copy, Debug)]
struct Rep {
    /// Most server-side ESTABLISHED sockets seen at once.
    max_at_once: usize,
    /// Connects that succeeded on the client side.
    connected: usize,
    samples: usize,
    /// Conntrack entries for the port not in TIME_WAIT/CLOSE when the repetition started (what
    /// netfilter could still count from earlier repetitions).
    conntrack_live_at_start: usize,
}

pub fn run(ctx: &Ctx) -> Result<Part> {
    let reps = if ctx.quick { 3 } else { 20 };
    let mut systems = vec![System::Limiter, System::NftCtCount, System::NftCtCountFresh];
    if ctx.has_iptables {
        systems.push(System::IptConnlimit);
        systems.push(System::IptConnlimitFresh);
    }
    let bed = TestBed::create()?;
    let mut results = Vec::new();
    for system in &systems {
        cmd::check_interrupted()?;
        println!("  burst: {} ({reps} repetitions)", system.label());
        let r = measure(ctx, &bed, *system, reps)
            .with_context(|| format!("burst against {}", system.label()))?;
        println!(
            "    most established at once per repetition: {:?}",
            r.iter().map(|x| x.max_at_once).collect::<Vec<_>>()
        );
        results.push((*system, r));
    }
    drop(bed);
    Ok(report(&results, reps, ctx.has_iptables))
}

/// Installs the netfilter rule of `system` in the server namespace; returns the nft command
/// that removes it.
fn install_rules(bed: &TestBed, system: System) -> Result<&'static str> {
    let limit = LIMIT.to_string();
    if system.iptables() {
        bed.iptables_connlimit(PORT, &limit)?;
        Ok("delete table ip filter")
    } else {
        bed.nft(&format!(
            "add table inet limbench; add chain inet limbench input {{ type filter hook input priority filter; policy accept; }}; add rule inet limbench input tcp dport {PORT} ct state new ct count over {limit} counter drop"
        ))?;
        Ok("delete table inet limbench")
    }
}

fn measure(ctx: &Ctx, bed: &TestBed, system: System, reps: usize) -> Result<Vec<Rep>> {
    let mut agent = None;
    let mut rules = None;
    match system {
        System::Limiter => {
            agent = Some(Agent::on_server_veth(
                ctx,
                bed,
                &[
                    "--limit".into(),
                    format!("{LISTENER}={LIMIT}"),
                    "--xdp-mode".into(),
                    "native".into(),
                ],
            )?);
        }
        System::NftCtCount | System::IptConnlimit => rules = Some(install_rules(bed, system)?),
        System::NftCtCountFresh | System::IptConnlimitFresh => {}
    }
    let result = (|| -> Result<Vec<Rep>> {
        let mut out = Vec::new();
        for _ in 0..reps {
            cmd::check_interrupted()?;
            if system.fresh() {
                let remove = install_rules(bed, system)?;
                let rep = one(bed, None);
                bed.nft(remove)?;
                out.push(rep?);
            } else {
                out.push(one(bed, agent.as_ref())?);
            }
        }
        Ok(out)
    })();
    if let Some(agent) = agent {
        agent.stop()?;
    }
    if let Some(rules) = rules {
        bed.nft(rules)?;
    }
    result
}

fn one(bed: &TestBed, agent: Option<&Agent>) -> Result<Rep> {
    let conntrack_live_at_start = sys::in_netns(&bed.server_ns, || conntrack_live(PORT))?;
    let server = Server::start(&bed.server_ns, PORT, OnAccept::Hold)?;
    let stop = AtomicBool::new(false);
    let max = AtomicUsize::new(0);
    let samples = AtomicUsize::new(0);
    let connected = std::thread::scope(|scope| -> Result<usize> {
        let sampler = scope.spawn(|| -> Result<()> {
            sys::enter_netns(&bed.server_ns)?;
            // Bounded by the flag and by time.
            let end = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(5);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                let n = netns::established_here(PORT)?;
                max.fetch_max(n, Ordering::SeqCst);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        });
        let conns = netns::connect_many(&bed.client_ns, PORT, CONNECTS, 2, CONNECT_TIMEOUT);
        // One more look once every connect has finished one way or the other.
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::SeqCst);
        sampler
            .join()
            .unwrap_or_else(|_| bail!("the sampler panicked"))?;
        let conns = conns?;
        let n = conns.len();
        drop(conns);
        Ok(n)
    })?;
    let final_count = sys::in_netns(&bed.server_ns, || netns::established_here(PORT))?;
    max.fetch_max(final_count, Ordering::SeqCst);
    server.stop()?;
    settle(bed, agent)?;
    Ok(Rep {
        max_at_once: max.load(Ordering::SeqCst),
        connected,
        samples: samples.load(Ordering::Relaxed),
        conntrack_live_at_start,
    })
}

/// Conntrack entries with destination port `port` in this thread's namespace that are not in
/// TIME_WAIT or CLOSE (0 when conntrack is not in use there).
fn conntrack_live(port: u16) -> Result<usize> {
    let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/nf_conntrack") else {
        return Ok(0);
    };
    let wanted = format!("dport={port} ");
    Ok(text
        .lines()
        .filter(|l| l.contains(&wanted) && !l.contains("TIME_WAIT") && !l.contains(" CLOSE "))
        .count())
}

/// Waits until the previous repetition's connections are gone (no socket on PORT in either
/// namespace other than TIME_WAIT), and for limiter until its count is back to 0.
fn settle(bed: &TestBed, agent: Option<&Agent>) -> Result<()> {
    let (server_ns, client_ns) = (bed.server_ns.clone(), bed.client_ns.clone());
    cmd::poll_until(
        "the burst's connections to close",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            let left_server = sys::in_netns(&server_ns, || open_sockets(PORT))?;
            let left_client = sys::in_netns(&client_ns, || open_sockets(PORT))?;
            let counted = match agent {
                Some(a) => a.counter(LISTENER, "active")? + a.counter(LISTENER, "pending")?,
                None => 0,
            };
            Ok(if left_server + left_client == 0 && counted == 0 {
                cmd::Check::Done(())
            } else {
                cmd::Check::NotYet(format!(
                    "{left_server} server and {left_client} client sockets, limiter counts {counted}"
                ))
            })
        },
    )
}

/// Sockets with PORT at either end that are not in TIME_WAIT (06) or CLOSE (07).
fn open_sockets(port: u16) -> Result<usize> {
    let text = std::fs::read_to_string("/proc/thread-self/net/tcp")
        .context("reading /proc/thread-self/net/tcp")?;
    let wanted = format!(":{port:04X}");
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && (f[1].ends_with(&wanted) || f[2].ends_with(&wanted))
                && f[3] != "06"
                && f[3] != "07"
        })
        .count())
}

fn report(results: &[(System, Vec<Rep>)], reps: usize, has_iptables: bool) -> Part {
    let mut part = Part::new(
        "burst_exactness",
        "5. Exactness under a burst: limit 50, 300 simultaneous connects",
    );
    part.method = vec![
        format!(
            "A listener on 198.18.0.1:{PORT} with a limit of {LIMIT} (over the limit: drop), an \
             accepting server that holds every connection open, and {CONNECTS} connects released \
             at once by two client threads pinned to different CPUs (each sends its {} SYNs \
             non-blocking, then waits up to {} ms for the handshakes — past the first SYN \
             retransmission). {reps} repetitions per limiter; between repetitions everything is \
             closed and the bench waits until no connection on the port is left (and limiter's \
             count is 0).",
            CONNECTS / 2,
            CONNECT_TIMEOUT.as_millis()
        ),
        "While the burst runs, a thread in the server namespace reads /proc/net/tcp in a loop and \
         keeps the largest number of ESTABLISHED server sockets on the port it sees (accepted or \
         still in the accept queue); the count after the burst is taken too. Nothing closes \
         during a repetition, so the final count is also a lower bound of the largest."
            .to_string(),
    ];
    let mut table = Table::new(
        "Most connections established at once, per repetition",
        &[
            "system",
            "max over repetitions",
            "min",
            "repetitions over 50",
            "repetitions under 50",
            "all repetitions",
            "samples per repetition",
            "conntrack entries alive at start (max)",
        ],
    );
    let mut bars = Vec::new();
    let mut json_systems = serde_json::Map::new();
    for (system, r) in results {
        let maxes: Vec<usize> = r.iter().map(|x| x.max_at_once).collect();
        let hi = maxes.iter().copied().max().unwrap_or(0);
        let lo = maxes.iter().copied().min().unwrap_or(0);
        let over = maxes.iter().filter(|m| **m > LIMIT).count();
        let under = maxes.iter().filter(|m| **m < LIMIT).count();
        let samples = r.iter().map(|x| x.samples).min().unwrap_or(0);
        table.row(vec![
            system.label().to_string(),
            format!("**{hi}**"),
            lo.to_string(),
            over.to_string(),
            under.to_string(),
            format!("{maxes:?}"),
            format!("≥ {samples}"),
            r.iter()
                .map(|x| x.conntrack_live_at_start)
                .max()
                .unwrap_or(0)
                .to_string(),
        ]);
        let mut sorted = maxes.clone();
        sorted.sort_unstable();
        bars.push(Bar {
            label: system.label().to_string(),
            value: sorted.get(sorted.len() / 2).copied().unwrap_or(0) as f64,
            low: lo as f64,
            high: hi as f64,
            ours: *system == System::Limiter,
        });
        json_systems.insert(
            system.key().to_string(),
            json!({
                "label": system.label(),
                "max_established_at_once": maxes,
                "client_connected": r.iter().map(|x| x.connected).collect::<Vec<_>>(),
                "samples": r.iter().map(|x| x.samples).collect::<Vec<_>>(),
                "conntrack_live_at_start": r.iter().map(|x| x.conntrack_live_at_start).collect::<Vec<_>>(),
            }),
        );
        if *system == System::Limiter {
            part.targets.push(Target {
                what: "burst: limiter never has more than 50 established at once (and reaches 50)"
                    .into(),
                goal: "= 50 in every repetition".into(),
                measured: format!("max {hi}, min {lo} over {reps} repetitions"),
                met: Some(hi == LIMIT && lo == LIMIT),
            });
        }
    }
    part.tables.push(table);
    part.notes.push(
        "Under 50 means connections were refused below the limit. nftables `ct count` and \
         iptables `connlimit` share the kernel's nf_conncount: every new SYN the rule sees is \
         added to the rule's list before the count is compared, including those the rule then \
         drops; such an entry is only removed when a later evaluation walks the list (a few \
         entries per new connection, and never one from the current jiffy). After a burst the \
         list is full of stale entries, and the next burst is refused early, even though \
         conntrack itself holds no live connection for the port when it starts (last column). \
         The rows \"rule re-created each repetition\" start every repetition with an empty \
         list: they show how exact the count is within one burst, without what earlier bursts \
         left behind."
            .into(),
    );
    if !has_iptables {
        part.notes
            .push("Left out: iptables `connlimit` (iptables is not installed).".into());
    }
    part.json = json!({
        "limit": LIMIT, "connects": CONNECTS, "repetitions": reps,
        "connect_timeout_ms": CONNECT_TIMEOUT.as_millis() as u64,
        "systems": json_systems,
    });
    part.charts.push(Chart {
        title: format!("5. Most connections established at once (limit {LIMIT}, {CONNECTS} simultaneous connects)"),
        unit: "connections".into(),
        bars,
    });
    part
}
