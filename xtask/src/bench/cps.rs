//! Part 4: overhead when not limiting. Connections per second through the veth with limiter
//! attached and its limit never reached, against no program at all (and against the empty XDP
//! program, which isolates what attaching any XDP program to a veth costs).
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use super::{
    Ctx,
    agent::Agent,
    netns::{self, OnAccept, Server, TestBed},
    report::{Bar, Chart, Part, Table, number, spread},
};
use crate::cmd;

const PORT: u16 = 8200;
const LISTENER: &str = "198.18.0.1:8200";
/// Never reached.
const LIMIT: u32 = 1_000_000;
const CLIENT_THREADS: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    NoProgram,
    EmptyXdp,
    Limiter,
}

impl Config {
    fn key(self) -> &'static str {
        match self {
            Config::NoProgram => "no_program",
            Config::EmptyXdp => "empty_xdp",
            Config::Limiter => "limiter",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::NoProgram => "no program",
            Config::EmptyXdp => "empty XDP_PASS program (native)",
            Config::Limiter => "limiter attached, limit never reached",
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<Part> {
    let window = if ctx.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(4)
    };
    let reps = if ctx.quick { 1 } else { 3 };
    let configs = [Config::NoProgram, Config::EmptyXdp, Config::Limiter];
    let bed = TestBed::create()?;
    let server = Server::start(&bed.server_ns, PORT, OnAccept::Reset)?;
    let mut rates: Vec<(Config, Vec<f64>, u64)> =
        configs.iter().map(|c| (*c, Vec::new(), 0)).collect();
    let mut refused_by_limiter = 0;
    for _ in 0..reps {
        for (i, config) in configs.iter().enumerate() {
            cmd::check_interrupted()?;
            let mut agent = None;
            match config {
                Config::NoProgram => {}
                Config::EmptyXdp => bed.attach_xdp(true, &ctx.objects.pass)?,
                Config::Limiter => {
                    agent = Some(Agent::start(
                        &ctx.agent,
                        &ctx.scratch.dir,
                        &bed.server_ns,
                        &[
                            "--iface".into(),
                            bed.server_veth.clone(),
                            "--limit".into(),
                            format!("{LISTENER}={LIMIT}"),
                            "--xdp-mode".into(),
                            "native".into(),
                        ],
                    )?)
                }
            }
            let result = netns::churn(&bed.client_ns, PORT, CLIENT_THREADS, window);
            if let Some(agent) = &agent {
                refused_by_limiter += agent.counter(LISTENER, "refused_total")?;
            }
            match config {
                Config::EmptyXdp => bed.detach_xdp(true)?,
                Config::Limiter => agent.take().context("agent")?.stop()?,
                Config::NoProgram => {}
            }
            let (ok, failed) = result?;
            let rate = ok as f64 / window.as_secs_f64();
            println!(
                "  {}: {:.0} connections/s ({failed} failed)",
                config.label(),
                rate
            );
            rates[i].1.push(rate);
            rates[i].2 += failed;
        }
    }
    server.stop()?;
    drop(bed);
    if refused_by_limiter != 0 {
        bail!(
            "limiter refused {refused_by_limiter} SYNs: its limit was reached, so this is not the not-limiting case"
        );
    }
    Ok(report(&rates, window, reps))
}

fn report(rates: &[(Config, Vec<f64>, u64)], window: Duration, reps: usize) -> Part {
    let mut part = Part::new(
        "overhead",
        "4. Overhead when not limiting: connections per second",
    );
    part.method = vec![format!(
        "The same test bed; a server on 198.18.0.1:{PORT} accepts and closes every connection at \
         once with a RST (SO_LINGER 0: no TIME_WAIT, so the client never runs out of ports), and \
         {CLIENT_THREADS} client threads in the other namespace connect, wait for the RST, and \
         connect again, for {} s windows, {reps} repetitions, the configurations interleaved. \
         limiter runs with `--limit {LISTENER}={LIMIT}` (never reached: the bench checks that it \
         refused nothing), so every connection goes through XDP admission (a slot reserved, the \
         4-tuple recorded) and sock_ops accounting (counted at ESTABLISHED, released at CLOSE). \
         The empty XDP program shows what attaching any native XDP program to a veth costs by \
         itself (the veth then receives through its NAPI ring).",
        window.as_secs()
    )];
    let mut table = Table::new(
        "Connections per second (median over repetitions, min–max in brackets)",
        &[
            "configuration",
            "connections/s",
            "× no program",
            "× empty XDP",
            "failed connects",
        ],
    );
    let median = |c: Config| {
        rates
            .iter()
            .find(|r| r.0 == c)
            .map_or(f64::NAN, |r| spread(&r.1).1)
    };
    let none = median(Config::NoProgram);
    let empty = median(Config::EmptyXdp);
    let mut bars = Vec::new();
    let mut json_configs = serde_json::Map::new();
    for (config, r, failed) in rates {
        let (lo, med, hi) = spread(r);
        table.row(vec![
            config.label().to_string(),
            format!("**{}** ({}–{})", number(med), number(lo), number(hi)),
            format!("{:.3}", med / none),
            format!("{:.3}", med / empty),
            failed.to_string(),
        ]);
        bars.push(Bar {
            label: config.label().to_string(),
            value: med,
            low: lo,
            high: hi,
            ours: *config == Config::Limiter,
        });
        json_configs.insert(
            config.key().to_string(),
            json!({"label": config.label(), "connections_per_s": r, "failed": failed}),
        );
    }
    part.tables.push(table);
    let lim = median(Config::Limiter);
    part.notes.push(format!(
        "No target was set for this part. limiter keeps {:.1}% of the no-program rate and {:.1}% \
         of the empty-XDP rate.",
        lim / none * 100.0,
        lim / empty * 100.0
    ));
    part.json = json!({
        "window_s": window.as_secs_f64(), "repetitions": reps, "client_threads": CLIENT_THREADS,
        "limit": LIMIT, "configurations": json_configs,
    });
    part.charts.push(Chart {
        title: "4. Connections per second when not limiting".into(),
        unit: "conn/s".into(),
        bars,
    });
    part
}
