//! Part 9: a spoofed flood below the limit. Part 2's generator floods one listener with SYNs
//! from forged sources (198.19.0.0/16, random ports; the server routes them back to the
//! generator side, where they are dropped: nobody ever answers a SYN-ACK) while real clients
//! connect to the same listener, below its limit of 1000. Without protection, every forged SYN
//! below the limit would hold a slot until its handshake times out, and the real clients would
//! be refused; the question is what share of them still get in, next to the kernel alone (no
//! filter: its own SYN cookies) and nftables `ct count`.
use std::{thread, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    Ctx,
    agent::Agent,
    flood::{Generator, PORT},
    legit::{self, Offer, Window},
    netns::{OnAccept, SERVER_IP, Server, TestBed},
    report::{Part, Table, Target, number, spread},
};
use crate::cmd;

const LIMIT: u32 = 1000;
/// The server veth's count of frames that came in by XDP redirect: the generator's.
const RECEIVED: &str = "rx_queue_0_xdp_packets";
/// The real clients: a connect every 100 ms from each of 4 threads (as the client,
/// one every 100 ms with a 1 s timeout, four times over for numbers worth a percentage).
const CLIENTS: Offer = Offer {
    port: PORT,
    rate: 40.0,
    threads: 4,
    timeout: Duration::from_secs(1),
};
/// Offered forged SYN/s: paced, and flat out (None).
const RATES: [Option<f64>; 3] = [Some(2_000.0), Some(100_000.0), None];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    NoFilter,
    Limiter,
    NftCtCount,
}

impl Config {
    fn key(self) -> &'static str {
        match self {
            Config::NoFilter => "no_filter",
            Config::Limiter => "limiter",
            Config::NftCtCount => "nft_ct_count",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::NoFilter => "no filter (the kernel's SYN cookies)",
            Config::Limiter => "limiter, limit 1000 (drop; --xdp-mode auto: generic on the veth)",
            Config::NftCtCount => "nftables `ct count over 1000` drop",
        }
    }
}

const CONFIGS: [Config; 3] = [Config::NoFilter, Config::Limiter, Config::NftCtCount];

fn rate_label(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{} SYN/s", number(r)),
        None => "flat out".into(),
    }
}

/// One window: the clients' result, forged SYNs that reached the server veth, and for limiter
/// whether flood mode was on.
struct Measured {
    clients: Window,
    received: u64,
    flood_mode_entered: Option<u64>,
}

pub fn run(ctx: &Ctx) -> Result<Part> {
    let (window, reps) = ctx.windows(5);
    let bed = TestBed::create()?;
    // The generator's frames reach the server veth by XDP redirect, which a veth takes only
    // with NAPI on its receive side: GRO gives it that without an XDP program of ours (with no
    // filter, nftables, and limiter in generic mode alike).
    bed.exec(
        &bed.server_ns,
        &["ethtool", "-K", &bed.server_veth, "gro", "on"],
    )?;
    let generator = Generator::start(ctx, &bed, false)?;
    let mut results: Vec<(Option<f64>, Config, Vec<Measured>)> = Vec::new();
    for rate in RATES {
        for config in CONFIGS {
            results.push((rate, config, Vec::new()));
        }
    }
    for rep in 0..reps {
        for entry in results.iter_mut() {
            cmd::check_interrupted()?;
            let (rate, config) = (entry.0, entry.1);
            println!(
                "  spoof {}/{reps}: {} at {}",
                rep + 1,
                config.label(),
                rate_label(rate)
            );
            let measured = measure(ctx, &bed, &generator, config, rate, window)
                .with_context(|| format!("{} at {}", config.label(), rate_label(rate)))?;
            println!(
                "    {} of {} real connects ({:.0}%), p99 {} µs, {:.0}k forged SYN/s received{}",
                measured.clients.connected,
                measured.clients.attempts,
                success(&measured.clients) * 100.0,
                number(measured.clients.percentile(0.99)),
                measured.received as f64 / (window.as_secs_f64() + 0.7) / 1e3,
                measured
                    .flood_mode_entered
                    .map(|n| format!(", flood mode entered {n} times"))
                    .unwrap_or_default()
            );
            entry.2.push(measured);
        }
    }
    drop(generator);
    drop(bed);
    Ok(report(&results, window, reps))
}

fn success(w: &Window) -> f64 {
    w.connected as f64 / w.attempts.max(1) as f64
}

/// One configuration for one window: the filter, a fresh server (no request sockets left from
/// the last flood), the flood and the clients side by side.
fn measure(
    ctx: &Ctx,
    bed: &TestBed,
    generator: &Generator,
    config: Config,
    rate: Option<f64>,
    window: Duration,
) -> Result<Measured> {
    let listener = format!("{SERVER_IP}:{PORT}");
    let agent = match config {
        Config::Limiter => Some(Agent::on_server_veth(
            ctx,
            bed,
            &["--limit".into(), format!("{listener}={LIMIT}")],
        )?),
        _ => None,
    };
    if config == Config::NftCtCount {
        bed.nft(&format!(
            "add table inet limbench; add chain inet limbench input {{ type filter hook input priority filter; policy accept; }}; \
             add rule inet limbench input tcp dport {PORT} ct state new ct count over {LIMIT} counter drop"
        ))?;
    }
    let server = Server::start(&bed.server_ns, PORT, OnAccept::Reset)?;
    let received0 = bed.veth_stat(true, RECEIVED)?;
    let (clients, _offered) = thread::scope(|scope| -> Result<(Window, u64)> {
        // The flood first: the clients meet it under way.
        let clients = scope.spawn(|| {
            thread::sleep(Duration::from_millis(500));
            legit::clients(&bed.client_ns, CLIENTS, window)
        });
        let offered = generator.run(window + Duration::from_millis(700), rate)?;
        let clients = clients
            .join()
            .unwrap_or_else(|_| anyhow::bail!("the client threads panicked"))?;
        Ok((clients, offered))
    })?;
    let received = bed.veth_stat(true, RECEIVED)?.saturating_sub(received0);
    let flood_mode_entered = match &agent {
        Some(agent) => Some(agent.counter(&listener, "flood_mode_entered_total")?),
        None => None,
    };
    server.stop()?;
    if let Some(agent) = agent {
        agent.stop()?;
    }
    if config == Config::NftCtCount {
        bed.nft("delete table inet limbench")?;
    }
    Ok(Measured {
        clients,
        received,
        flood_mode_entered,
    })
}

fn report(results: &[(Option<f64>, Config, Vec<Measured>)], window: Duration, reps: usize) -> Part {
    let mut part = Part::new(
        "spoof",
        "9. Spoofed flood below the limit: real clients' connects during a forged SYN flood",
    );
    part.method = vec![format!(
        "Part 2's test bed and generator: forged SYNs (sources random in 198.19.0.0/16, random \
         ports; the server routes them to the generator side, which drops the SYN-ACKs) at \
         {SERVER_IP}:{PORT}, a server that accepts and resets, limited to {LIMIT} and never near \
         it. Meanwhile {} client threads connect to the same listener, {} connects per second \
         in all, each with a {} s connect timeout. The flood starts 0.5 s before the clients' \
         {} s window and ends after it; {reps} repetitions, configurations interleaved, a fresh \
         server socket for each window. limiter runs as a user runs it (`--xdp-mode auto`: \
         generic XDP on the veth).",
        CLIENTS.threads,
        CLIENTS.rate,
        CLIENTS.timeout.as_secs(),
        window.as_secs()
    )];
    let mut table = Table::new(
        "Real clients' connects that succeeded during the flood (median over repetitions, \
         min–max in brackets), and their connect latency",
        &[
            "flood",
            "configuration",
            "connects succeeded",
            "p99 connect (µs)",
            "forged SYN/s received",
        ],
    );
    let mut json_rows = Vec::new();
    for rate in RATES {
        let of = |config: Config| -> Option<&Vec<Measured>> {
            results
                .iter()
                .find(|(r, c, _)| *r == rate && *c == config)
                .map(|(_, _, m)| m)
        };
        let median_success = |config: Config| {
            of(config).map_or(f64::NAN, |m| {
                spread(&m.iter().map(|x| success(&x.clients)).collect::<Vec<_>>()).1
            })
        };
        for config in CONFIGS {
            let Some(measured) = of(config) else { continue };
            let rates: Vec<f64> = measured.iter().map(|x| success(&x.clients)).collect();
            let (lo, med, hi) = spread(&rates);
            let p99: Vec<f64> = measured
                .iter()
                .map(|x| x.clients.percentile(0.99))
                .collect();
            let received: Vec<f64> = measured
                .iter()
                .map(|x| x.received as f64 / (window.as_secs_f64() + 0.7))
                .collect();
            table.row(vec![
                rate_label(rate),
                config.label().to_string(),
                format!(
                    "**{:.1}%** ({:.1}–{:.1}%)",
                    med * 100.0,
                    lo * 100.0,
                    hi * 100.0
                ),
                number(spread(&p99).1),
                number(spread(&received).1),
            ]);
            json_rows.push(json!({
                "rate": rate, "config": config.key(), "label": config.label(),
                "success": rates,
                "windows": measured.iter().map(|x| x.clients.json()).collect::<Vec<Value>>(),
                "forged_syns_received": measured.iter().map(|x| x.received).collect::<Vec<u64>>(),
                "flood_mode_entered": measured.iter().map(|x| x.flood_mode_entered).collect::<Vec<_>>(),
            }));
        }
        let (limiter, kernel) = (
            median_success(Config::Limiter),
            median_success(Config::NoFilter),
        );
        let kept = limiter / kernel;
        part.targets.push(Target {
            what: format!(
                "real clients' connects during a forged flood below the limit ({}), limiter vs \
                 no filter",
                rate_label(rate)
            ),
            goal: "≥ 90% of the no-filter success rate".into(),
            measured: format!(
                "{:.0}% ({:.1}% vs {:.1}%)",
                kept * 100.0,
                limiter * 100.0,
                kernel * 100.0
            ),
            met: Some(kept.is_finite() && kept >= 0.9),
        });
    }
    part.tables.push(table);
    part.notes.push(
        "limiter notices that its reservations stop completing and puts the listener in flood \
         mode (README, \"SYN floods\"): a SYN then takes no slot, and a connection is admitted \
         when the kernel has completed its handshake, which forged sources never do. Until it \
         notices (a quarter of a second or so), forged SYNs hold the slots, which is where the \
         few failed connects come from. nftables `ct count` has no such mode: every forged SYN \
         is a conntrack entry that counts until it times out."
            .into(),
    );
    part.json = json!({
        "window_s": window.as_secs_f64(), "repetitions": reps, "limit": LIMIT,
        "client_connects_per_s": CLIENTS.rate, "client_timeout_s": CLIENTS.timeout.as_secs_f64(),
        "rows": json_rows,
    });
    part
}
