//! Part 2: a SYN flood at the limit. A server namespace with a listener held at its limit by
//! real connections, and a flood of SYNs (random sources in 198.19.0.0/16) from the generator
//! namespace, made without sockets or skbs: BPF_PROG_TEST_RUN in live-frames mode runs
//! `xdp_gen.c` on the generator veth and its XDP_TX sends each frame into the server veth. The
//! server veth's receive work runs in its own threaded-NAPI kernel thread pinned to one CPU, the
//! generator (and the generator veth's NAPI thread) on the other, so the server's CPU time is
//! that thread's run time, read from /proc/PID/schedstat. Where the kernel refuses live frames
//! (or `LIMITER_BENCH_GENERATOR=raw`), raw AF_PACKET senders make the flood instead
//! ([`raw_syn`]).
use std::{
    ffi::CString,
    net::Ipv4Addr,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    agent::Agent,
    frames::{self, Ends, TCP_SYN},
    netns::{self, CLIENT_MAC, OnAccept, SERVER_IP, SERVER_MAC, Server, TestBed},
    order,
    progs::Loaded,
    raw_syn::{self, RawSender},
    report::{
        Bar, Chart, Figure, Part, Table, number, over_floor_target, paired_cost_target,
        paired_ratio, spread,
    },
    sys,
};
use crate::cmd;

pub const PORT: u16 = 8000;
/// Connections held open: the listener's limit.
pub const HELD: usize = 16;
const LISTENER: &str = "198.18.0.1:8000";
/// The generator and the generator veth's NAPI thread run here; the server veth's NAPI thread
/// on SERVER_CPU.
pub const GENERATOR_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;
/// Offered SYNs per second, the same for every configuration: low enough that each of them
/// takes every SYN (so all are compared at the same load, none saturated).
const RATE: f64 = 100_000.0;
/// Frames per BPF_PROG_TEST_RUN call of the generator (one batch, one flush into the veth: a
/// server wakes up to a burst of this many SYNs, as after a NIC interrupt).
pub const BURST: u32 = 128;
/// Frames per call when the generator runs flat out (about 20–50 ms of work).
const FLAT_OUT_CALL: u32 = 1 << 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Config {
    Limiter,
    XdpDrop,
    NftCtCount,
    IptConnlimit,
    NftDrop,
    NoFilter,
}

impl Config {
    pub fn key(self) -> &'static str {
        match self {
            Config::Limiter => "limiter",
            Config::XdpDrop => "xdp_drop",
            Config::NftCtCount => "nft_ct_count",
            Config::IptConnlimit => "iptables_connlimit",
            Config::NftDrop => "nft_drop",
            Config::NoFilter => "no_filter",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Config::Limiter => "limiter (native XDP, agent at its limit)",
            Config::XdpDrop => "bare XDP drop-SYN program",
            Config::NftCtCount => "nftables `ct count over 16`",
            Config::IptConnlimit => "iptables `connlimit --connlimit-above 16`",
            Config::NftDrop => "nftables plain drop (no conntrack)",
            Config::NoFilter => "no filter (kernel TCP answers every SYN)",
        }
    }

    /// Whether the configuration limits connections (and so is measured at its limit, with
    /// `HELD` real connections open).
    fn limits(self) -> bool {
        matches!(
            self,
            Config::Limiter | Config::NftCtCount | Config::IptConnlimit
        )
    }
}

/// One window of one configuration.
#[derive(Clone, Debug, Default)]
struct Sample {
    window_s: f64,
    offered: u64,
    received: u64,
    /// SYNs the filter refused, by its own counter (None: the configuration refuses nothing).
    refused: Option<u64>,
    napi_ns: u64,
    /// Times the NAPI thread was woken to poll.
    napi_runs: u64,
    cpu_busy_ns: u64,
    cpu_softirq_ns: u64,
    agent_cpu_ns: Option<u64>,
    server_stats: Vec<(String, i64)>,
}

impl Sample {
    /// How busy the server's NAPI thread was over the window.
    fn busy(&self) -> f64 {
        self.napi_ns as f64 / (self.window_s * 1e9)
    }

    /// Server CPU per SYN the filter refused (per SYN received without a filter).
    fn ns_per_syn(&self) -> f64 {
        let n = self.refused.unwrap_or(self.received);
        if n == 0 {
            f64::NAN
        } else {
            self.napi_ns as f64 / n as f64
        }
    }

    fn json(&self) -> Value {
        json!({
            "window_s": self.window_s,
            "offered_frames": self.offered,
            "received_frames": self.received,
            "refused_by_filter": self.refused,
            "server_napi_cpu_ns": self.napi_ns,
            "server_napi_runs": self.napi_runs,
            "server_cpu_busy_ns": self.cpu_busy_ns,
            "server_cpu_softirq_ns": self.cpu_softirq_ns,
            "agent_cpu_ns": self.agent_cpu_ns,
            "ns_per_refused_syn": self.ns_per_syn(),
            "server_veth_stats_delta": self.server_stats.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

pub fn run(ctx: &Ctx) -> Result<Part> {
    // Paired windows: the targets compare each configuration with the bare drop's window of the
    // same repetition, so more, shorter repetitions make them steadier.
    let (window, reps) = ctx.paired_windows(5, 6);
    let mut configs = vec![
        Config::Limiter,
        Config::XdpDrop,
        Config::NftCtCount,
        Config::IptConnlimit,
        Config::NftDrop,
        Config::NoFilter,
    ];
    let mut left_out = Vec::new();
    // For trying the part out: LIMITER_BENCH_FLOOD=limiter,xdp_drop,... measures only those.
    if let Ok(only) = std::env::var("LIMITER_BENCH_FLOOD") {
        configs.retain(|c| only.split(',').any(|o| o.trim() == c.key()));
    }
    if !ctx.has_iptables {
        configs.retain(|c| *c != Config::IptConnlimit);
        left_out.push("iptables `connlimit`: iptables is not installed".to_string());
    }
    let rate: f64 = std::env::var("LIMITER_BENCH_FLOOD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RATE);
    let bed = TestBed::create()?;
    let generator = Generator::start(ctx, &bed, true)?;
    // Warm-up (not measured): the first window of a run is otherwise slower.
    bed.attach_xdp(true, &ctx.objects.drop_syn_flood)?;
    generator.run(Duration::from_secs(1), Some(rate))?;
    bed.detach_xdp(true)?;
    let saturation_window = if ctx.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    let plan = Plan {
        window,
        rate,
        flat_out: saturation_window,
    };
    #[allow(clippy::type_complexity)]
    let mut samples: Vec<(Config, Vec<Sample>, Vec<Sample>)> = configs
        .iter()
        .map(|c| (*c, Vec::new(), Vec::new()))
        .collect();
    let mut napi_pid = None;
    for rep in 0..reps {
        for i in order::balanced(configs.len(), rep) {
            let config = &configs[i];
            cmd::check_interrupted()?;
            println!("  flood {}/{reps}: {}", rep + 1, config.label());
            let (paced, saturated) = measure(ctx, &bed, *config, &plan, &generator, &mut napi_pid)
                .with_context(|| format!("flood against {}", config.label()))?;
            for (what, sample) in [("paced", &paced), ("flat out", &saturated)] {
                println!(
                    "    {what}: {:.2} M SYNs offered, {:.2} M received, refused {:?}, server NAPI {:.0}% busy, {} ns per SYN, {:.2} NAPI runs per 1,000 SYNs",
                    sample.offered as f64 / 1e6,
                    sample.received as f64 / 1e6,
                    sample.refused,
                    sample.busy() * 100.0,
                    number(sample.ns_per_syn()),
                    sample.napi_runs as f64 * 1e3 / sample.received.max(1) as f64
                );
                if std::env::var_os("LIMITER_BENCH_VERBOSE").is_some() {
                    println!("    {sample:?}");
                }
            }
            samples[i].1.push(paced);
            samples[i].2.push(saturated);
        }
    }
    drop(generator);
    drop(bed);
    Ok(report(
        &samples,
        window,
        saturation_window,
        reps,
        rate,
        &left_out,
    ))
}

/// The windows of one configuration: `window` at `rate` SYN/s, then `flat_out` as fast as the
/// generator goes.
struct Plan {
    window: Duration,
    rate: f64,
    flat_out: Duration,
}

/// What a configuration runs beside its filter's rules: limiter's agent (when limiter is the
/// filter), the connections that hold the listener at its limit and the server holding them.
/// Part 10's flood into a pod holds the same.
#[derive(Default)]
pub struct Holding {
    pub agent: Option<Agent>,
    pub connections: Vec<socket2::Socket>,
    pub server: Option<Server>,
}

impl Holding {
    /// Closes the connections, then stops the server and the agent, in that order.
    pub fn release(&mut self) {
        self.connections.clear();
        if let Some(server) = self.server.take() {
            let _ = server.stop();
        }
        if let Some(agent) = self.agent.take()
            && let Err(e) = agent.stop()
        {
            eprintln!("bench: cleanup: {e:#}");
        }
    }
}

/// What is set up for one configuration; torn down in order on drop.
pub struct Setup<'a> {
    bed: &'a TestBed,
    config: Config,
    pub holding: Holding,
}

impl Drop for Setup<'_> {
    fn drop(&mut self) {
        self.holding.release();
        let _ = match self.config {
            Config::NftCtCount | Config::NftDrop => self.bed.nft("delete table inet limbench"),
            Config::IptConnlimit => self.bed.nft("delete table ip filter"),
            _ => Ok(String::new()),
        };
        if self.config != Config::Limiter {
            let _ = self.bed.detach_xdp(true);
        }
    }
}

/// A second listener limited by the same configuration (its own port and limit, no connections
/// held), for part "legit"'s clients.
#[derive(Clone, Copy)]
pub struct Also {
    pub port: u16,
    pub limit: usize,
}

/// Sets up `config` on the server: the filter (limiter's agent, an XDP program, nftables or
/// iptables rules) for the flood's port and for `also`, a server on the flood's port, and for
/// the limiting configurations HELD connections holding it at its limit.
pub fn set_up<'a>(
    ctx: &Ctx,
    bed: &'a TestBed,
    config: Config,
    also: Option<Also>,
) -> Result<Setup<'a>> {
    if also.is_some() && !matches!(config, Config::Limiter | Config::NftCtCount) {
        bail!("a second limited listener is only set up for limiter and nftables `ct count`");
    }
    let mut setup = Setup {
        bed,
        config,
        holding: Holding::default(),
    };
    let limit = HELD.to_string();
    match config {
        Config::Limiter => {
            let mut args = vec![
                "--iface".into(),
                bed.server_veth.clone(),
                "--limit".into(),
                format!("{LISTENER}={limit}"),
                "--xdp-mode".into(),
                "native".into(),
            ];
            if let Some(also) = also {
                args.push("--limit".into());
                args.push(format!("{SERVER_IP}:{}={}", also.port, also.limit));
            }
            setup.holding.agent = Some(Agent::in_server_ns(ctx, bed, &args)?);
        }
        Config::XdpDrop => bed.attach_xdp(true, &ctx.objects.drop_syn_flood)?,
        _ => bed.attach_xdp(true, &ctx.objects.pass)?,
    }
    let chain = "add table inet limbench; add chain inet limbench input { type filter hook input priority filter; policy accept; }";
    match config {
        Config::NftCtCount => {
            let rule = |port: u16, limit: &str| {
                format!(
                    "add rule inet limbench input tcp dport {port} ct state new ct count over {limit} counter drop"
                )
            };
            let mut script = format!("{chain}; {}", rule(PORT, &limit));
            if let Some(also) = also {
                script += &format!("; {}", rule(also.port, &also.limit.to_string()));
            }
            bed.nft(&script)?;
        }
        Config::NftDrop => {
            bed.nft(&format!(
                "{chain}; add rule inet limbench input tcp dport {PORT} tcp flags & (syn | ack) == syn counter drop"
            ))?;
        }
        Config::IptConnlimit => {
            bed.iptables_connlimit(PORT, &limit)?;
        }
        _ => {}
    }
    setup.holding.server = Some(Server::start(&bed.server_ns, PORT, OnAccept::Hold)?);
    if config.limits() {
        setup.holding.connections =
            netns::connect_many(&bed.client_ns, PORT, HELD, 1, Duration::from_secs(3))?;
        if setup.holding.connections.len() != HELD {
            bail!(
                "only {} of {HELD} connections to hold were established",
                setup.holding.connections.len()
            );
        }
        // At the limit: the server has them all, and limiter counts them.
        netns::wait_established(&bed.server_ns, PORT, HELD)?;
        if let Some(agent) = &setup.holding.agent {
            agent.wait_counter(LISTENER, "active", HELD as u64)?;
        }
    }
    Ok(setup)
}

fn refused_counter(bed: &TestBed, setup: &Setup<'_>) -> Result<Option<u64>> {
    Ok(match setup.config {
        Config::Limiter => Some(
            setup
                .holding
                .agent
                .as_ref()
                .context("no agent")?
                .counter(LISTENER, "refused_total")?,
        ),
        Config::XdpDrop => Some(bed.veth_stat(true, "rx_queue_0_xdp_drops")?),
        Config::NftCtCount | Config::NftDrop => {
            let text = bed.nft("list chain inet limbench input")?;
            Some(counter_after(&text, "counter packets ").context("no nft counter")?)
        }
        Config::IptConnlimit => {
            let text = bed.exec(&bed.server_ns, &["iptables", "-nvxL", "INPUT"])?;
            let line = text
                .lines()
                .find(|l| l.contains("DROP"))
                .with_context(|| format!("no DROP rule in iptables -L:\n{text}"))?;
            Some(
                line.split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("iptables packet counter")?,
            )
        }
        Config::NoFilter => None,
    })
}

fn counter_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000_000 / hz)
}

fn measure(
    ctx: &Ctx,
    bed: &TestBed,
    config: Config,
    plan: &Plan,
    generator: &Generator,
    napi_pid: &mut Option<u32>,
) -> Result<(Sample, Sample)> {
    let setup = set_up(ctx, bed, config, None)?;
    let napi = bed.threaded_napi_anew(true, SERVER_CPU, *napi_pid)?;
    *napi_pid = Some(napi);
    let agent_pid = setup.holding.agent.as_ref().map(Agent::pid);

    let paced = sample_window(bed, &setup, napi, agent_pid, || {
        generator.run(plan.window, Some(plan.rate))
    })?;
    let saturated = sample_window(bed, &setup, napi, agent_pid, || {
        generator.run(plan.flat_out, None)
    })?;
    drop(setup);
    Ok((paced, saturated))
}

/// One window: the counters before, the generator's run, the server's queue drained, the
/// counters after.
fn sample_window(
    bed: &TestBed,
    setup: &Setup<'_>,
    napi: u32,
    agent_pid: Option<u32>,
    run: impl FnOnce() -> Result<u64>,
) -> Result<Sample> {
    let stats0 = bed.veth_stats(true)?;
    let refused0 = refused_counter(bed, setup)?;
    let napi0 = sys::task_cpu_ns(napi)?;
    let runs0 = sys::task_runs(napi)?;
    let cpu0 = sys::CpuTimes::read(SERVER_CPU)?;
    let agent0 = agent_pid.and_then(process_cpu_ns);
    let started = Instant::now();

    let offered = run()?;
    let elapsed = started.elapsed();
    // Let the server's queue drain: the received count stops moving.
    let mut last = bed.veth_stat(true, "rx_queue_0_xdp_packets")?;
    cmd::poll_until(
        "the server to drain its queue",
        Duration::from_secs(5),
        Duration::from_millis(30),
        || {
            let now = bed.veth_stat(true, "rx_queue_0_xdp_packets")?;
            let settled = now == last;
            last = now;
            Ok(if settled {
                cmd::Check::Done(())
            } else {
                cmd::Check::NotYet(format!("{now} received"))
            })
        },
    )?;
    let napi1 = sys::task_cpu_ns(napi)?;
    let runs1 = sys::task_runs(napi)?;
    let cpu1 = sys::CpuTimes::read(SERVER_CPU)?;
    let agent1 = agent_pid.and_then(process_cpu_ns);
    let refused1 = refused_counter(bed, setup)?;
    let stats1 = bed.veth_stats(true)?;

    let delta: Vec<(String, i64)> = stats1
        .iter()
        .filter_map(|(k, v1)| {
            let v0 = stats0.iter().find(|(k0, _)| k0 == k)?.1;
            Some((k.clone(), *v1 as i64 - v0 as i64))
        })
        .collect();
    let received = delta
        .iter()
        .find(|(k, _)| k == "rx_queue_0_xdp_packets")
        .map_or(0, |(_, v)| (*v).max(0) as u64);
    Ok(Sample {
        window_s: elapsed.as_secs_f64(),
        offered,
        received,
        refused: match (refused0, refused1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        napi_ns: napi1 - napi0,
        napi_runs: runs1 - runs0,
        cpu_busy_ns: cpu1.busy_ns_since(&cpu0),
        cpu_softirq_ns: cpu1.softirq_ns_since(&cpu0),
        agent_cpu_ns: match (agent0, agent1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        server_stats: delta,
    })
}

/// Which SYN generator the floods use: `LIMITER_BENCH_GENERATOR=auto|live|raw`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GeneratorChoice {
    /// Live frames, or raw sockets where the kernel refuses BPF_PROG_TEST_RUN live frames.
    Auto,
    /// BPF_PROG_TEST_RUN live frames only (an error where the kernel refuses them).
    Live,
    /// AF_PACKET senders ([`raw_syn`]) only.
    Raw,
}

impl GeneratorChoice {
    pub fn from_env() -> Result<GeneratorChoice> {
        match std::env::var("LIMITER_BENCH_GENERATOR").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(GeneratorChoice::Auto),
            Ok("live") => Ok(GeneratorChoice::Live),
            Ok("raw") => Ok(GeneratorChoice::Raw),
            Ok(other) => bail!("LIMITER_BENCH_GENERATOR: `{other}` is none of auto, live, raw"),
        }
    }
}

/// Descriptions of the generators started since the last call (the bench tells each part's
/// report which generator made its floods).
static STARTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Which generators were started since the last call, each once.
pub fn generators_started() -> Vec<String> {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen: Vec<String> = Vec::new();
    for g in started.drain(..) {
        if !seen.contains(&g) {
            seen.push(g);
        }
    }
    seen
}

/// What sends the frames, owned by the generator thread.
enum Backend {
    /// `xdp_gen` run with BPF_PROG_TEST_RUN live frames on the generator veth.
    Live { program: Loaded, ifindex: u32 },
    /// One AF_PACKET sender per CPU in `cpus`, each in a thread of its own for a window.
    Raw {
        senders: Vec<RawSender>,
        cpus: Vec<usize>,
    },
}

/// Frames per `sendmmsg` when a raw sender runs flat out.
const RAW_FLAT_OUT_BATCH: usize = 256;

/// The generator: a thread in the generator namespace, pinned to GENERATOR_CPU, that owns the
/// loaded `xdp_gen` program (or, where the kernel refuses live frames, the raw senders) and
/// sends paced bursts on request.
///
/// The kernel adds a program to the XDP dispatcher around every BPF_PROG_TEST_RUN of an XDP
/// program unless it is already there (a fixed cost of milliseconds per call, and a pause in
/// the flood). Attaching the generator program to a spare veth in the generator namespace keeps
/// it in the dispatcher, so each call costs microseconds and bursts can be paced.
pub struct Generator {
    commands: mpsc::Sender<(Duration, Option<Pace>)>,
    results: mpsc::Receiver<Result<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Generator {
    /// Sets up the generator side of `bed` (the XDP program that drops replies to the flood,
    /// threaded NAPI on GENERATOR_CPU) and starts the generator thread, SCHED_FIFO if
    /// `realtime` (exact pacing; but then every other task on its CPU waits for each burst).
    pub fn start(ctx: &Ctx, bed: &TestBed, realtime: bool) -> Result<Generator> {
        Generator::start_to(ctx, bed, realtime, SERVER_IP)
    }

    /// [`Generator::start`] with the SYNs addressed to `dst` (still sent to the server veth's
    /// MAC: another address is one the server namespace routes on, as a node to its pods).
    pub fn start_to(ctx: &Ctx, bed: &TestBed, realtime: bool, dst: Ipv4Addr) -> Result<Generator> {
        bed.attach_xdp(false, &ctx.objects.generator_rx)?;
        bed.threaded_napi(false, GENERATOR_CPU)?;
        let object = &ctx.objects.generator;
        let spare = format!("{}g", bed.client_veth);
        bed.add_spare_veth(&bed.client_ns, &spare)?;
        let template = frames::tcp(
            Ends {
                src_mac: CLIENT_MAC,
                dst_mac: SERVER_MAC,
                src: Ipv4Addr::new(198, 19, 0, 1),
                dst,
            },
            1024,
            PORT,
            TCP_SYN,
        );
        // Raw senders on every CPU but the server's (up to 4), the first on GENERATOR_CPU.
        let raw_cpus: Vec<usize> = std::iter::once(GENERATOR_CPU)
            .chain((0..ctx.cores).filter(|&c| c != GENERATOR_CPU && c != SERVER_CPU))
            .take(4)
            .collect();
        let choice = ctx.generator;
        let (commands, inbox) = mpsc::channel::<(Duration, Option<Pace>)>();
        let (outbox, results) = mpsc::channel::<Result<u64>>();
        let (ready_tx, ready) = mpsc::channel::<Result<String>>();
        let (ns, veth, object) = (
            bed.client_ns.clone(),
            bed.client_veth.clone(),
            object.to_path_buf(),
        );
        let thread = std::thread::spawn(move || {
            let setup = (|| -> Result<(Backend, String)> {
                sys::enter_netns(&ns)?;
                sys::pin_this_thread(GENERATOR_CPU)?;
                // Real-time, so the bursts keep their schedule on a shared machine (the thread
                // sleeps between bursts: a few % of a CPU).
                if realtime {
                    sys::realtime(0)?;
                }
                let live = || -> Result<Backend> {
                    let mut program = Loaded::load(&object, "xdp_gen")?;
                    program.attach_native(&spare)?;
                    let name = CString::new(veth.clone())?;
                    // SAFETY: a valid C string.
                    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    if ifindex == 0 {
                        return Err(std::io::Error::last_os_error()).context("if_nametoindex");
                    }
                    // One frame, to learn whether this kernel runs live frames at all.
                    program.run_live(&template, 1, ifindex, 1)?;
                    Ok(Backend::Live { program, ifindex })
                };
                let raw = |why: &str| -> Result<(Backend, String)> {
                    let senders = (0..raw_cpus.len())
                        .map(|i| RawSender::open(&veth, &template, raw_syn::seed(i)))
                        .collect::<Result<Vec<_>>>()?;
                    let description = format!(
                        "raw sockets ({} AF_PACKET sender thread{} on CPU {}, sendmmsg of \
                         ready-made SYNs, qdisc bypassed){why}",
                        raw_cpus.len(),
                        if raw_cpus.len() == 1 { "" } else { "s" },
                        raw_cpus
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    Ok((
                        Backend::Raw {
                            senders,
                            cpus: raw_cpus.clone(),
                        },
                        description,
                    ))
                };
                let live_text = format!(
                    "live frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX into \
                     the server veth, one thread on CPU {GENERATOR_CPU})"
                );
                match choice {
                    GeneratorChoice::Live => Ok((live()?, live_text)),
                    GeneratorChoice::Raw => raw(" (LIMITER_BENCH_GENERATOR=raw)"),
                    GeneratorChoice::Auto => match live() {
                        Ok(backend) => Ok((backend, live_text)),
                        Err(e) => raw(&format!(
                            " — the kernel refused live frames ({e:#}), so the bench fell back \
                             to them"
                        )),
                    },
                }
            })();
            let mut backend = match setup {
                Ok((backend, description)) => {
                    let _ = ready_tx.send(Ok(description));
                    backend
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // Bounded: one window per command, and the sender goes away with the part.
            while let Ok((window, pace)) = inbox.recv() {
                let _ = outbox.send(send_window(&mut backend, &template, window, pace, realtime));
            }
        });
        let description = ready
            .recv_timeout(Duration::from_secs(30))
            .context("the generator thread did not start")??;
        println!("  generator: {description}");
        STARTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(description);
        Ok(Generator {
            commands,
            results,
            thread: Some(thread),
        })
    }

    /// Sends SYNs at `rate` in bursts of BURST (None: as fast as it can) for `window`; returns
    /// the number sent.
    pub fn run(&self, window: Duration, rate: Option<f64>) -> Result<u64> {
        self.run_paced(
            window,
            rate.map(|rate| Pace {
                rate,
                burst: BURST,
                spin: true,
            }),
        )
    }

    /// Sends SYNs as `pace` says (None: as fast as it can) for `window`; returns the number sent.
    pub fn run_paced(&self, window: Duration, pace: Option<Pace>) -> Result<u64> {
        self.commands
            .send((window, pace))
            .context("the generator thread is gone")?;
        self.results
            .recv_timeout(window + Duration::from_secs(30))
            .context("the generator did not finish its window")?
    }
}

/// One window of the generator: live frames from this thread, or every raw sender in a thread
/// of its own on its CPU, each with its share of the rate.
fn send_window(
    backend: &mut Backend,
    template: &[u8],
    window: Duration,
    pace: Option<Pace>,
    realtime: bool,
) -> Result<u64> {
    match backend {
        Backend::Live { program, ifindex } => {
            let ifindex = *ifindex;
            match pace {
                Some(pace) => paced(window, pace, |burst| {
                    program.run_live(template, burst, ifindex, burst)?;
                    Ok(u64::from(burst))
                }),
                None => flat_out(window, || {
                    program.run_live(template, FLAT_OUT_CALL, ifindex, 64)?;
                    Ok(u64::from(FLAT_OUT_CALL))
                }),
            }
        }
        Backend::Raw { senders, cpus } => {
            let n = senders.len() as f64;
            std::thread::scope(|scope| {
                let handles = senders
                    .iter_mut()
                    .zip(cpus.iter().copied())
                    .map(|(sender, cpu)| {
                        scope.spawn(move || -> Result<u64> {
                            sys::pin_this_thread(cpu)?;
                            if realtime {
                                sys::realtime(0)?;
                            }
                            match pace {
                                Some(pace) => paced(
                                    window,
                                    Pace {
                                        rate: pace.rate / n,
                                        ..pace
                                    },
                                    |burst| sender.send(burst as usize),
                                ),
                                None => flat_out(window, || sender.send(RAW_FLAT_OUT_BATCH)),
                            }
                        })
                    })
                    .collect();
                sys::join_all(handles).into_iter().sum()
            })
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        let (dead, _) = mpsc::channel();
        self.commands = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Offered SYNs per second, sent in bursts of `burst` frames.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub rate: f64,
    pub burst: u32,
    /// Spin for the last 200 µs before each burst (exact timing, but the CPU is busy); without,
    /// sleep until the burst is due (timing within the scheduler's wake-up latency, and the
    /// CPU free for others in between).
    pub spin: bool,
}

/// Runs the generator for `window`: a burst of `pace.burst` frames (`send`: one
/// BPF_PROG_TEST_RUN call or one sendmmsg, one flush into the veth) every burst/rate seconds by
/// the clock; the thread sleeps in between. Returns the number of frames sent.
fn paced(window: Duration, pace: Pace, mut send: impl FnMut(u32) -> Result<u64>) -> Result<u64> {
    let Pace { rate, burst, spin } = pace;
    let interval = Duration::from_secs_f64(f64::from(burst) / rate);
    let start = Instant::now();
    let end = start + window;
    let mut sent = 0u64;
    let mut next = start;
    while next < end && !cmd::interrupted() {
        let now = Instant::now();
        if now < next {
            let left = next - now;
            if !spin {
                std::thread::sleep(left);
            } else if left > Duration::from_micros(300) {
                std::thread::sleep(left - Duration::from_micros(200));
            }
            while spin && Instant::now() < next {
                std::hint::spin_loop();
            }
        } else if now - next > 4 * interval {
            // Far behind (preempted): start afresh rather than send a catch-up flood.
            next = now;
        }
        sent += send(burst)?;
        next += interval;
    }
    Ok(sent)
}

/// A row of the flat-out table: refused M SYN/s (min, median, max), its paired ratio to
/// limiter's, the NAPI thread's load, ns per refused SYN and offered M SYN/s.
fn table_row_flat(
    table: &mut Table,
    config: &Config,
    (lo, med, hi): (f64, f64, f64),
    times_limiter: f64,
    busy: f64,
    per: f64,
    offered: f64,
) {
    let bound = if busy < 0.9 { "≥ " } else { "" };
    table.row(vec![
        if config.limits() || matches!(config, Config::XdpDrop | Config::NftDrop) {
            config.label().to_string()
        } else {
            format!("{} (SYNs answered)", config.label())
        },
        format!("{bound}**{med:.2}** ({lo:.2}–{hi:.2})"),
        format!("{times_limiter:.2}"),
        format!("{:.0}%", busy * 100.0),
        number(per),
        format!("{offered:.2}"),
    ]);
}

/// As many frames as the generator can make, `send` after `send`, for `window`.
fn flat_out(window: Duration, mut send: impl FnMut() -> Result<u64>) -> Result<u64> {
    let end = Instant::now() + window;
    let mut sent = 0;
    while Instant::now() < end && !cmd::interrupted() {
        sent += send()?;
    }
    Ok(sent)
}

fn report(
    samples: &[(Config, Vec<Sample>, Vec<Sample>)],
    window: Duration,
    saturation_window: Duration,
    reps: usize,
    rate: f64,
    left_out: &[String],
) -> Part {
    let mut part = Part::new(
        "syn_flood",
        "2. SYN flood at the limit: server CPU per refused SYN",
    );
    part.method = vec![
        format!(
            "Test bed: a server and a generator network namespace joined by a veth pair, TSO/GSO \
             off on both ends. The server listens on {SERVER_IP}:{PORT}; for the limiting \
             configurations {HELD} real connections from the generator namespace hold the \
             listener at its limit of {HELD} before the flood starts (checked: the server has \
             {HELD} established, and limiter's `active` is {HELD})."
        ),
        format!(
            "The flood: SYNs to {SERVER_IP}:{PORT} from random sources in 198.19.0.0/16 with \
             random ports (so every SYN is a new connection attempt), generated without sockets \
             or skbs — BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (aya's \
             `TestRunAttrs::xdp_live_frames`) runs `xtask/src/bench/xdp_gen.c` on the generator \
             veth, which rewrites the source of a template SYN and returns XDP_TX, so the kernel \
             transmits it into the server veth (the xdp-trafficgen method). Paced: a burst of \
             {BURST} SYNs (one call, one flush into the veth, so the server wakes up to {BURST} \
             SYNs as after a NIC interrupt) every {:.0} µs, {:.0} SYN/s offered to every \
             configuration alike, a rate each of them absorbs (none saturated), for {} s windows, \
             {reps} repetitions, configurations interleaved in a balanced order (every \
             repetition measures each once; the targets compare windows of the same repetition: the median of their \
             ratios or differences). The generator program stays attached to a spare veth so that each \
             call costs microseconds (otherwise the kernel updates its XDP dispatcher around \
             every test run, milliseconds, and the flood stutters). Where the kernel refuses \
             live frames (or with LIMITER_BENCH_GENERATOR=raw), AF_PACKET senders make the same \
             SYNs and bursts instead, one `sendmmsg` per burst (the generator line above says \
             which ran); their frames reach the server as skbs, which the server veth copies \
             into a page for XDP, so every configuration's CPU per SYN is higher than with live \
             frames and the ratios compare configurations of the same run only.",
            f64::from(BURST) / rate * 1e6,
            rate,
            window.as_secs()
        ),
        format!(
            "Server CPU: the server veth runs threaded NAPI, so all of its receive work (XDP, and \
             for the netfilter configurations the whole IP/netfilter/TCP path) runs in one kernel \
             thread, pinned to CPU {SERVER_CPU} and made SCHED_FIFO (it runs whenever it has work, ahead \
             of other tasks, as softirq processing would); the generator and the generator veth's NAPI \
             thread run on CPU {GENERATOR_CPU}. CPU per refused SYN = that thread's run time \
             (/proc/PID/schedstat) over the window ÷ SYNs the filter refused by its own counter \
             (limiter's `refused_total`, the XDP program's drops, the nft/iptables rule counter). \
             The server veth needs an XDP program to receive redirected frames at all, so the \
             configurations without an XDP filter run the empty XDP_PASS program on it. Replies \
             (SYN-ACKs to the made-up sources) are dropped by an XDP program on the generator \
             veth, on the generator's CPU."
        ),
    ];
    let mut table = Table::new(
        "Server CPU time per refused SYN (ns; median over repetitions, min–max in brackets; × \
         limiter: the median of the per-repetition ratios to limiter's window of the same \
         repetition), rates and how busy the server's NAPI thread was",
        &[
            "configuration",
            "ns per refused SYN",
            "× limiter",
            "received (M SYN/s)",
            "refused / received",
            "server NAPI busy",
            "NAPI wake-ups per burst",
            "CPU 1 busy (all tasks)",
        ],
    );
    let median = |c: Config| {
        samples
            .iter()
            .find(|(k, _, _)| *k == c)
            .map_or(f64::NAN, |(_, s, _)| {
                spread(&s.iter().map(Sample::ns_per_syn).collect::<Vec<_>>()).1
            })
    };
    // "× limiter" columns on paired windows, as the targets: the median over repetitions of a
    // configuration's window against limiter's window of the same repetition.
    let windows_of = |c: Config, flat: bool, f: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .find(|x| x.0 == c)
            .map(|x| if flat { &x.2 } else { &x.1 }.iter().map(f).collect())
            .unwrap_or_default()
    };
    let vs_limiter = |c: Config, flat: bool, f: fn(&Sample) -> f64| {
        paired_ratio(
            &windows_of(c, flat, f),
            &windows_of(Config::Limiter, flat, f),
        )
        .1
    };
    let mut bars = Vec::new();
    let mut json_configs = serde_json::Map::new();
    for (config, s, _) in samples {
        let per: Vec<f64> = s.iter().map(Sample::ns_per_syn).collect();
        let (lo, med, hi) = spread(&per);
        let rate = spread(
            &s.iter()
                .map(|x| x.received as f64 / x.window_s / 1e6)
                .collect::<Vec<_>>(),
        )
        .1;
        let refused_share = spread(
            &s.iter()
                .filter_map(|x| Some(x.refused? as f64 / x.received.max(1) as f64))
                .collect::<Vec<_>>(),
        )
        .1;
        let busy = spread(
            &s.iter()
                .map(|x| x.napi_ns as f64 / (x.window_s * 1e9))
                .collect::<Vec<_>>(),
        )
        .1;
        let cpu = spread(
            &s.iter()
                .map(|x| x.cpu_busy_ns as f64 / (x.window_s * 1e9))
                .collect::<Vec<_>>(),
        )
        .1;
        // Each burst should wake the NAPI thread once, whatever filters: the per-SYN figures
        // then carry the same wake-up cost.
        let wakeups = spread(
            &s.iter()
                .map(|x| x.napi_runs as f64 * f64::from(BURST) / x.received.max(1) as f64)
                .collect::<Vec<_>>(),
        )
        .1;
        table.row(vec![
            config.label().to_string(),
            format!("**{}** ({}–{})", number(med), number(lo), number(hi)),
            format!("{:.2}", vs_limiter(*config, false, Sample::ns_per_syn)),
            format!("{rate:.2}"),
            if config.limits() || matches!(config, Config::XdpDrop | Config::NftDrop) {
                format!("{:.1}%", refused_share * 100.0)
            } else {
                "— (per SYN received)".into()
            },
            format!("{:.0}%", busy * 100.0),
            format!("{wakeups:.2}"),
            format!("{:.0}%", cpu * 100.0),
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
            json!({
                "label": config.label(),
                "ns_per_refused_syn_median": med,
                "samples": s.iter().map(Sample::json).collect::<Vec<_>>(),
                "flat_out_samples": samples.iter().find(|x| x.0 == *config).map(|x| x.2.iter().map(Sample::json).collect::<Vec<_>>()),
            }),
        );
    }
    part.tables.push(table);
    // Flat out: how many SYNs a second the server gets through with its CPU fully busy.
    let mut flat = Table::new(
        &format!(
            "Flat out ({} s windows right after each paced one, generator as fast as it goes): SYNs              per second the server took and refused, its NAPI thread's load, and CPU per refused              SYN at that load. Where the NAPI thread is not close to 100% busy, the generator was              the limit and the rate is a lower bound (≥).",
            saturation_window.as_secs()
        ),
        &[
            "configuration",
            "refused (M SYN/s)",
            "× limiter",
            "server NAPI busy",
            "ns per refused SYN",
            "offered (M SYN/s)",
        ],
    );
    let flat_rate = |x: &Sample| x.refused.unwrap_or(x.received) as f64 / x.window_s / 1e6;
    let mut flat_bars = Vec::new();
    for (config, _, f) in samples {
        let (lo, med, hi) = spread(&f.iter().map(flat_rate).collect::<Vec<_>>());
        let busy = spread(&f.iter().map(Sample::busy).collect::<Vec<_>>()).1;
        let per = spread(&f.iter().map(Sample::ns_per_syn).collect::<Vec<_>>()).1;
        let offered = spread(
            &f.iter()
                .map(|x| x.offered as f64 / x.window_s / 1e6)
                .collect::<Vec<_>>(),
        )
        .1;
        let times_limiter = paired_ratio(
            &f.iter().map(flat_rate).collect::<Vec<_>>(),
            &windows_of(Config::Limiter, true, flat_rate),
        )
        .1;
        table_row_flat(
            &mut flat,
            config,
            (lo, med, hi),
            times_limiter,
            busy,
            per,
            offered,
        );
        flat_bars.push(Bar {
            label: config.label().to_string(),
            value: med,
            low: lo,
            high: hi,
            ours: *config == Config::Limiter,
        });
    }
    part.tables.push(flat);
    let xdp = median(Config::XdpDrop);
    let per_syn = |c: Config| -> Vec<f64> {
        samples
            .iter()
            .find(|x| x.0 == c)
            .map(|x| x.1.iter().map(Sample::ns_per_syn).collect())
            .unwrap_or_default()
    };
    let (floors, limiters) = (per_syn(Config::XdpDrop), per_syn(Config::Limiter));
    part.targets.push(paired_cost_target(
        format!(
            "flood at {}k SYN/s: limiter CPU per refused SYN vs bare XDP drop program",
            rate / 1000.0
        ),
        &limiters,
        &floors,
        1.3,
    ));
    // Against nftables, what each filter adds to the bare drop: the floor is the test bed's
    // (a veth taking redirected frames and waking its NAPI thread for every burst), paid alike
    // by both, and a ratio of totals would measure it more than either filter.
    part.targets.push(over_floor_target(
        format!(
            "flood at {}k SYN/s: nftables `ct count` vs limiter, CPU each adds per refused SYN over \
             the bare XDP drop (the test bed's own cost, which both pay alike, taken out)",
            rate / 1000.0
        ),
        &per_syn(Config::NftCtCount),
        &limiters,
        &floors,
        6.0,
    ));
    // Flat out, limiter against the bare drop on paired windows, counting only the
    // repetitions where both kept their NAPI thread busy (no idle wake-ups in the figure);
    // with none, not decided.
    let saturated_pairs = |other: Config| -> (Vec<f64>, Vec<f64>) {
        let busy = |c: Config| windows_of(c, true, Sample::busy);
        let (lim_busy, other_busy) = (busy(Config::Limiter), busy(other));
        let (lim, oth) = (
            windows_of(Config::Limiter, true, Sample::ns_per_syn),
            windows_of(other, true, Sample::ns_per_syn),
        );
        (0..lim.len().min(oth.len()))
            .filter(|&i| lim_busy[i] >= 0.9 && other_busy[i] >= 0.9)
            .map(|i| (lim[i], oth[i]))
            .unzip()
    };
    let busy_text = |c: Config| spread(&windows_of(c, true, Sample::busy)).1 * 100.0;
    let (lim_sat, drop_sat) = saturated_pairs(Config::XdpDrop);
    let mut target = paired_cost_target(
        "flood flat out: limiter CPU per refused SYN vs bare XDP drop program".into(),
        &lim_sat,
        &drop_sat,
        1.3,
    );
    if lim_sat.is_empty() {
        target.met = None;
        target.measured = format!(
            "not comparable: in no repetition were both servers saturated (the generator was \
             the limit): NAPI busy {:.0}% vs {:.0}% (medians)",
            busy_text(Config::Limiter),
            busy_text(Config::XdpDrop)
        );
    } else {
        target.measured += &format!(
            "; repetitions with both NAPI threads ≥ 90% busy: {} of {}",
            lim_sat.len(),
            windows_of(Config::Limiter, true, Sample::busy).len()
        );
    }
    part.targets.push(target);
    // nftables against limiter flat out: a ratio of totals, each carrying the test bed's floor;
    // a figure (the paced comparison over the floor is the target).
    let (lim_sat, nft_sat) = saturated_pairs(Config::NftCtCount);
    let (lo, times, hi) = paired_ratio(&nft_sat, &lim_sat);
    part.figures.push(Figure {
        what: "flood flat out: nftables `ct count` CPU per refused SYN vs limiter's (totals)"
            .into(),
        measured: if lim_sat.is_empty() {
            format!(
                "not comparable: in no repetition were both servers saturated: NAPI busy {:.0}% \
                 vs {:.0}%",
                busy_text(Config::Limiter),
                busy_text(Config::NftCtCount)
            )
        } else {
            format!(
                "{times:.2}× (median of {} paired repetitions with both NAPI threads ≥ 90% busy, \
                 {lo:.2}–{hi:.2}×)",
                lim_sat.len()
            )
        },
        why: "a ratio of totals carries the test bed's own cost per SYN (the bare drop's, a \
              veth taking frames and waking its NAPI thread) on both sides, so it moves with the \
              test bed from machine to machine; the target is the paced comparison of what each \
              adds over that floor"
            .into(),
    });
    part.notes.push(format!(
        "Why nftables is compared with limiter over the floor: the bare drop's own {} ns per \
         SYN are the test bed's (a veth receiving redirected frames: ring, frame conversion, \
         returning the page to the generator's pool, and waking its NAPI thread for each \
         burst), paid alike by every configuration; the program itself is a few ns (part 1). A \
         ratio of totals measures that floor as much as either filter, and swings with it from \
         machine to machine (the same commit gave 9.54× on one and 5.82× on another); what each \
         filter adds to it does not. Part 10 compares the two inside a pod the same way.",
        number(xdp)
    ));
    part.notes.push(
        "The whole-CPU figure (CPU 1 busy, from /proc/stat) includes whatever else ran on that \
         CPU (the machine is shared); the NAPI thread's own run time is the measurement."
            .into(),
    );
    part.notes.push(
        "The empty XDP_PASS program on the server veth in the netfilter and no-filter \
         configurations is what a veth needs to take redirected frames; on a physical NIC those \
         configurations would not run it. It costs them a few tens of ns per frame at most (see \
         part 1), small next to their totals."
            .into(),
    );
    for l in left_out {
        part.notes.push(format!("Left out: {l}."));
    }
    part.json = json!({
        "window_s": window.as_secs_f64(), "repetitions": reps, "held_connections": HELD,
        "offered_syn_per_s": rate, "burst": BURST,
        "server_cpu": SERVER_CPU, "generator_cpu": GENERATOR_CPU,
        "configurations": json_configs,
    });
    part.charts.push(Chart {
        title: "2. SYN flood at the limit: server CPU per refused SYN".into(),
        unit: "ns".into(),
        bars,
    });
    part.charts.push(Chart {
        title: "2. SYN flood, generator flat out: SYNs per second the server got through".into(),
        unit: "M SYN/s".into(),
        bars: flat_bars,
    });
    part
}
