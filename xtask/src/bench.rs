//! `cargo xtask bench`: measures limiter against baselines and other limiters in one run, on one
//! machine, and writes a report (Markdown, JSON, SVG chart) to `bench/results/`. Never part of
//! the test run.
//!
//! The parts, numbered as in the report (and as the items of the issue that asked for them):
//!
//! 1. Per-packet cost with BPF_PROG_TEST_RUN: limiter's XDP program on each of its paths next to
//!    an empty XDP_PASS program and a minimal "drop SYN to port P" program; again with 10,000
//!    listener limits configured ([`pktcost`]).
//! 2. SYN flood at the limit: server CPU time per refused SYN, frames generated with
//!    BPF_PROG_TEST_RUN live frames into a veth (or by raw sockets, [`raw_syn`]), for limiter,
//!    a bare XDP drop program, nftables `ct count`, iptables `connlimit`, a plain nftables drop
//!    and no filter ([`flood`]).
//! 3. Refusing at the SYN against accepting and closing: refused attempts per server CPU-second
//!    under a storm of connections at the limit, for limiter and Envoy `connection_limit`,
//!    HAProxy `maxconn` and nginx `limit_conn` ([`storm`], the proxies from [`peers`]).
//! 4. Legitimate clients during the flood: their connection rate and connect latency with and
//!    without it, for limiter and nftables `ct count` ([`legit`]).
//! 5. Exactness under a burst of connects: the most connections ever established at once with
//!    limit 50 and 300 simultaneous connects, for limiter and the netfilter limiters ([`burst`]).
//! 6. Overhead when not limiting: connections per second and one connection's throughput
//!    (iperf3) with limiter attached but never at its limit, against no program ([`cps`]).
//! 7. Proxy mode: connections per second and throughput of limiter's proxy against HAProxy,
//!    Envoy `tcp_proxy` and nginx stream, one CPU each, and the direct path ([`proxy`]).
//! 8. Scale: kernel map memory per tracked connection, handshake and listener; time to apply
//!    10,000 listener limits from a config file ([`scale`]).
//! 9. Spoofed flood below the limit: real clients' success during a forged-source flood
//!    ([`spoof`]).
//! 10. The pod path: connections per second into a pod through a NodePort DNAT with limiter
//!     enforcing inside the pod, and what each further namespace costs ([`pods`]).
//!
//! Every namespace, veth, rule set, program and process it makes is removed by a guard, also on
//! an error, a panic or Ctrl-C. Settings come from the environment (the task takes no flags):
//! `LIMITER_BENCH_PARTS=packet,flood,storm,legit,burst,cps,proxy,scale,spoof,pods` (which parts;
//! default all),
//! `LIMITER_BENCH_QUICK=1` (short windows and fewer repetitions, for trying it out; the report
//! says so), `LIMITER_BENCH_FORCE=1` (do not wait for other test runs to finish),
//! `LIMITER_BENCH_OUT=DIR` (default `bench/results`), `LIMITER_BENCH_AGENT=PATH` (run another
//! build of the agent, e.g. an older commit's, in the parts that start it),
//! `LIMITER_BENCH_GENERATOR=auto|live|raw` (the floods' SYN generator: BPF_PROG_TEST_RUN live
//! frames, falling back to raw AF_PACKET senders where the kernel refuses them; see
//! [`flood::GeneratorChoice`]).
mod agent;
mod burst;
mod cps;
mod exact_floor;
mod flood;
mod frames;
mod idle;
mod iperf;
mod legit;
mod netns;
mod order;
mod peers;
mod pktcost;
mod pods;
mod pods_flood;
mod pods_storm;
mod process;
mod progs;
mod proxy;
mod raw_syn;
mod report;
mod scale;
mod spoof;
mod storm;
mod sys;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use self::{
    progs::Scratch,
    report::{Part, Report},
};
use crate::{
    build,
    cmd::{self, command},
    setup,
};

/// Everything the parts share.
pub struct Ctx {
    /// `target/release/limiter`.
    pub agent: PathBuf,
    /// The eBPF object the agent embeds (from the release build's OUT_DIR).
    pub object: PathBuf,
    pub objects: Objects,
    pub scratch: Scratch,
    pub quick: bool,
    pub cores: usize,
    pub has_iptables: bool,
    /// `LIMITER_BENCH_GENERATOR`: which SYN generator the floods use.
    pub generator: flood::GeneratorChoice,
}

impl Ctx {
    /// A part's measuring window (`full_s` seconds) and repetitions (3); in quick mode 2 s and
    /// one.
    pub fn windows(&self, full_s: u64) -> (Duration, usize) {
        if self.quick {
            (Duration::from_secs(2), 1)
        } else {
            (Duration::from_secs(full_s), 3)
        }
    }

    /// [`Ctx::windows`] for a part whose targets compare configurations window by window:
    /// `reps` windows of `full_s` seconds (in quick mode 2 s and one).
    pub fn paired_windows(&self, full_s: u64, reps: usize) -> (Duration, usize) {
        if self.quick {
            self.windows(full_s)
        } else {
            (Duration::from_secs(full_s), reps)
        }
    }
}

/// The baseline programs, compiled at bench time.
pub struct Objects {
    pub pass: PathBuf,
    /// Drops SYNs to part 1's full port.
    pub drop_syn: PathBuf,
    /// Drops SYNs to the flood's port.
    pub drop_syn_flood: PathBuf,
    pub generator: PathBuf,
    pub generator_rx: PathBuf,
    /// The exact-count floor for part 6's port, and for part 10's.
    pub exact_floor: PathBuf,
    pub exact_floor_pod: PathBuf,
}

const ALL_PARTS: &[&str] = &[
    "packet", "flood", "storm", "legit", "burst", "cps", "proxy", "scale", "spoof", "pods",
];
/// The bench waits this long at most for other test runs on the machine to finish.
const QUIET_WAIT: Duration = Duration::from_secs(15 * 60);

pub fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Ok(true) when every selected part was measured (targets may still be missed: the report
/// says which).
fn run() -> Result<bool> {
    if !cmd::is_root() {
        bail!("the bench needs root (BPF programs, network namespaces, nftables)");
    }
    let quick = env_flag("LIMITER_BENCH_QUICK");
    let generator = flood::GeneratorChoice::from_env()?;
    let parts: Vec<String> = match std::env::var("LIMITER_BENCH_PARTS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|p| p.trim().to_string()).collect()
        }
        _ => ALL_PARTS.iter().map(|p| p.to_string()).collect(),
    };
    for p in &parts {
        if !ALL_PARTS.contains(&p.as_str()) {
            bail!(
                "LIMITER_BENCH_PARTS: unknown part `{p}` (parts: {})",
                ALL_PARTS.join(",")
            );
        }
    }
    let out = std::env::var_os("LIMITER_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("bench/results"));
    cmd::catch_interrupts()?;

    println!("==> Prerequisites");
    setup::run()?;
    let has_iptables = bench_packages()?;
    let mut agent = build::build_agent(true)?;
    // Another build of the agent (an older commit's, say) for the parts that run it, to compare
    // two builds on one machine; part 1 still loads this tree's eBPF object.
    if let Some(other) = std::env::var_os("LIMITER_BENCH_AGENT") {
        agent = PathBuf::from(other);
    }
    let object = ebpf_object()?;
    println!(
        "bench: agent {}, eBPF object {}",
        agent.display(),
        object.display()
    );

    if !env_flag("LIMITER_BENCH_FORCE") {
        sys::wait_until_quiet(QUIET_WAIT)?;
    }
    let machine = sys::Machine::probe();
    println!(
        "bench: {} ({} cores), Linux {}",
        machine.cpu_model, machine.cores, machine.kernel
    );
    let scratch = Scratch::new()?;
    println!("==> Baseline programs (clang -O2 -target bpf)");
    let objects = Objects {
        pass: scratch.compile(progs::XDP_PASS_C, 0, "xdp_pass")?,
        drop_syn: scratch.compile(
            progs::XDP_DROP_SYN_C,
            pktcost::PORT_FULL_DROP,
            "xdp_drop_syn",
        )?,
        drop_syn_flood: scratch.compile(
            progs::XDP_DROP_SYN_C,
            flood::PORT,
            "xdp_drop_syn_flood",
        )?,
        generator: scratch.compile(progs::XDP_GEN_C, 0, "xdp_gen")?,
        generator_rx: scratch.compile(progs::XDP_GEN_RX_C, 0, "xdp_gen_rx")?,
        exact_floor: scratch.compile(progs::EXACT_FLOOR_C, cps::PORT, "exact_floor")?,
        exact_floor_pod: scratch.compile(progs::EXACT_FLOOR_C, pods::PORT, "exact_floor_pod")?,
    };
    let ctx = Ctx {
        agent,
        object,
        objects,
        scratch,
        quick,
        cores: machine.cores,
        has_iptables,
        generator,
    };
    if ctx.cores < 2 {
        bail!("the bench needs at least 2 CPUs (generator and server on different ones)");
    }

    let started = Instant::now();
    let mut done: Vec<Part> = Vec::new();
    let mut missing: Vec<(String, String)> = Vec::new();
    let mut noise: Vec<(String, Value)> = Vec::new();
    let mut all_ok = true;
    for &name in ALL_PARTS {
        if !parts.iter().any(|p| p == name) {
            missing.push((
                name.to_string(),
                "not selected (LIMITER_BENCH_PARTS)".into(),
            ));
            continue;
        }
        if cmd::interrupted() {
            missing.push((name.to_string(), "interrupted before it started".into()));
            all_ok = false;
            continue;
        }
        println!("==> Part {name}");
        noise.push((format!("before {name}"), sys::noise_snapshot()));
        let _ = flood::generators_started();
        let t = Instant::now();
        let result = match name {
            "packet" => pktcost::run(&ctx),
            "flood" => flood::run(&ctx),
            "legit" => legit::run(&ctx),
            "burst" => burst::run(&ctx),
            "cps" => cps::run(&ctx),
            "scale" => scale::run(&ctx),
            "storm" => storm::run(&ctx),
            "proxy" => proxy::run(&ctx),
            "spoof" => spoof::run(&ctx),
            "pods" => pods::run(&ctx),
            _ => unreachable!("checked above"),
        };
        noise.push((format!("after {name}"), sys::noise_snapshot()));
        let generators = flood::generators_started();
        match result {
            Ok(mut part) => {
                if !generators.is_empty() {
                    part.generator = Some(generators.join("; "));
                }
                println!(
                    "bench: part {name} done in {:.0} s",
                    t.elapsed().as_secs_f64()
                );
                for target in &part.targets {
                    println!(
                        "  {}: {} {} -> {}",
                        target.what,
                        target.goal,
                        target.measured,
                        target.status()
                    );
                }
                done.push(part);
            }
            Err(e) => {
                eprintln!("bench: part {name} failed: {e:#}");
                let with = if generators.is_empty() {
                    String::new()
                } else {
                    format!(" (SYN generator: {})", generators.join("; "))
                };
                missing.push((name.to_string(), format!("failed: {e:#}{with}")));
                all_ok = false;
            }
        }
    }
    let mut settings = vec![(
        "mode".to_string(),
        if quick {
            "QUICK (LIMITER_BENCH_QUICK=1: short windows, few repetitions; not for comparison)"
                .to_string()
        } else {
            "full".to_string()
        },
    )];
    settings.push(("parts".into(), parts.join(", ")));
    settings.push((
        "SYN generator setting".into(),
        format!(
            "{} (LIMITER_BENCH_GENERATOR: auto, live or raw)",
            format!("{generator:?}").to_lowercase()
        ),
    ));
    let report = Report {
        machine,
        settings,
        parts: done,
        missing,
        noise,
        duration_s: started.elapsed().as_secs_f64(),
    };
    let files = report.write(&out)?;
    println!("==> Report");
    for t in report.targets() {
        println!("  [{}] {} {}: {}", t.status(), t.what, t.goal, t.measured);
    }
    for f in files {
        println!("bench: wrote {}", f.display());
    }
    drop(ctx);
    Ok(all_ok)
}

/// What the bench runs next to limiter, from Debian: (package, why). Envoy comes from PyPI
/// (`peers::envoy`).
const BENCH_APT_PACKAGES: &[(&str, &str)] = &[
    (
        "nftables",
        "nftables `ct count` and plain drop, measured side by side",
    ),
    ("iptables", "iptables `connlimit`"),
    (
        "haproxy",
        "HAProxy `maxconn`, and its TCP proxy next to limiter's",
    ),
    ("nginx", "nginx"),
    (
        "libnginx-mod-stream",
        "nginx's stream module (`limit_conn` on TCP)",
    ),
    (
        "iperf3",
        "throughput of one connection, with and without limiter",
    ),
];

/// The bench's peers and tools (BENCH_APT_PACKAGES), installed with apt when missing, with no
/// service started by the packages' install scripts (a policy-rc.d that says no, for the
/// install only, when the machine has none). Returns whether iptables (with the connlimit
/// match) is usable.
fn bench_packages() -> Result<bool> {
    let installed = |p: &str| {
        cmd::capture(command("dpkg-query").args(["-W", "-f=${Status}", p]))
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
            .unwrap_or(false)
    };
    let missing: Vec<&str> = BENCH_APT_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        println!("bench: installing {}", missing.join(" "));
        for (package, why) in BENCH_APT_PACKAGES
            .iter()
            .filter(|(p, _)| missing.contains(p))
        {
            println!("         {package}: {why}");
        }
        let _no_services = NoServiceStarts::install()?;
        let apt = |args: &[&str]| {
            let mut c = command("apt-get");
            c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
            c
        };
        cmd::run(&mut apt(&["update"]))?;
        cmd::run(apt(&["install", "-y", "--no-install-recommends"]).args(&missing))?;
    }
    for (package, _) in BENCH_APT_PACKAGES {
        if *package != "iptables" && !installed(package) {
            bail!("{package} is not installed");
        }
    }
    Ok(installed("iptables"))
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action not allowed") while packages install, so that
/// installing nginx or HAProxy does not start them on the host; removed again on drop. Leaves an
/// existing policy-rc.d alone.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn install() -> Result<NoServiceStarts> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(NoServiceStarts(None));
        }
        std::fs::write(
            &path,
            "#!/bin/sh\n# limiter bench: no services while installing\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(NoServiceStarts(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_file(&path)
        {
            eprintln!("bench: cleanup: removing {}: {e}", path.display());
        }
    }
}

/// The eBPF object of the release build: limiter-user's build script writes it to its OUT_DIR,
/// which cargo reports (`--message-format=json`).
fn ebpf_object() -> Result<PathBuf> {
    let text = cmd::output_quiet(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "limiter-user",
        "--message-format=json-render-diagnostics",
    ]))
    .context("asking cargo where the release build put the eBPF object")?;
    for line in text.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "build-script-executed"
            && msg["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("limiter-user"))
            && let Some(dir) = msg["out_dir"].as_str()
        {
            let object = PathBuf::from(dir).join("limiter");
            if object.is_file() {
                return Ok(object);
            }
            bail!("{} does not exist", object.display());
        }
    }
    bail!("cargo did not report limiter-user's build script output directory")
}
