//! The machine and the kernel: what the report names, CPU time counters, CPU pinning, entering a
//! network namespace from one thread, and whether another heavy run is using the machine.
use std::{fs, os::fd::AsRawFd as _, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::cmd::{self, command};

/// What the report says about the machine it ran on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub hypervisor: bool,
    pub memory_gib: f64,
    pub kernel: String,
    pub kernel_version: String,
    pub git_commit: String,
    pub date_utc: String,
    pub tools: Vec<(String, String)>,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hypervisor = cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        let memory_gib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let read = |p: &str| {
            fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let first_line = |program: &str, args: &[&str]| {
            cmd::output_quiet(command(program).args(args))
                .ok()
                .and_then(|s| s.lines().next().map(str::to_string))
                .unwrap_or_else(|| "not available".into())
        };
        let mut git_commit = first_line("git", &["rev-parse", "--short=12", "HEAD"]);
        if let Ok(status) = cmd::output_quiet(command("git").args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            // The reports a run writes are not code.
            ":!bench/results",
        ])) && !status.trim().is_empty()
        {
            git_commit.push_str(" (with uncommitted changes)");
        }
        Machine {
            cpu_model,
            cores,
            hypervisor,
            memory_gib,
            kernel: read("/proc/sys/kernel/osrelease"),
            kernel_version: read("/proc/sys/kernel/version"),
            git_commit,
            date_utc: first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            tools: vec![
                ("clang".into(), first_line("clang", &["--version"])),
                ("nft".into(), first_line("nft", &["--version"])),
                ("iptables".into(), first_line("iptables", &["--version"])),
            ],
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "virtual_machine": self.hypervisor,
            "memory_gib": (self.memory_gib * 10.0).round() / 10.0,
            "kernel": self.kernel,
            "kernel_version": self.kernel_version,
            "git_commit": self.git_commit,
            "date_utc": self.date_utc,
            "tools": self.tools.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// The 1-minute load average and how many compiler / test processes run right now: how busy
/// the shared machine was around a measurement.
pub fn noise_snapshot() -> Value {
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(-1.0);
    let (mut rustc, mut tests) = (0, 0);
    for (_, cmdline) in processes() {
        if cmdline.contains("rustc") {
            rustc += 1;
        }
        if is_test_run(&cmdline) {
            tests += 1;
        }
    }
    json!({ "loadavg_1m": load, "rustc_processes": rustc, "test_processes": tests })
}

/// (pid, command line with spaces) of every process but this one.
fn processes() -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let raw = fs::read(e.path().join("cmdline")).ok()?;
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        Some((pid, line.trim().to_string()))
    })
    .collect()
}

fn is_test_run(cmdline: &str) -> bool {
    cmdline.contains("cargo test")
        || cmdline.contains("xtask test")
        || cmdline.contains("netns-tool")
        || (cmdline.contains("/target/")
            && cmdline.contains("/deps/")
            && !cmdline.contains("rustc"))
}

/// Heavy test runs of others on this machine (a benchmark next to one measures neither).
pub fn busy_with() -> Vec<String> {
    processes()
        .into_iter()
        .filter(|(_, c)| is_test_run(c))
        .map(|(pid, c)| format!("{pid} {}", c.chars().take(100).collect::<String>()))
        .collect()
}

/// Waits (bounded) until no other test run is going; fails if one still is.
pub fn wait_until_quiet(timeout: Duration) -> Result<()> {
    let mut announced = false;
    cmd::poll_until(
        "other test runs on this machine to finish",
        timeout,
        Duration::from_secs(5),
        || {
            let busy = busy_with();
            if busy.is_empty() {
                return Ok(cmd::Check::Done(()));
            }
            if !announced {
                println!(
                    "bench: waiting (up to {} s) for another test run to finish:\n  {}",
                    timeout.as_secs(),
                    busy.join("\n  ")
                );
                announced = true;
            }
            Ok(cmd::Check::NotYet(busy.join("; ")))
        },
    )
}

/// Pins the calling thread to one CPU.
pub fn pin_this_thread(cpu: usize) -> Result<()> {
    pin(0, cpu)
}

/// Pins a task (a thread or kernel thread, by id) to one CPU.
pub fn pin(pid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
    }
    // SAFETY: a valid set of the size passed.
    if unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning task {pid} to CPU {cpu}"));
    }
    Ok(())
}

/// Gives a task (a NAPI kernel thread) real-time priority, as packet processing in softirq
/// context has: it runs whenever it has work, ahead of the machine's other (build) tasks.
pub fn realtime(pid: u32) -> Result<()> {
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: a valid sched_param.
    if unsafe { libc::sched_setscheduler(pid as libc::pid_t, libc::SCHED_FIFO, &param) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("making task {pid} SCHED_FIFO"));
    }
    Ok(())
}

/// Moves the calling thread into network namespace `ns` (`/run/netns/NS`). Only ever called in
/// a thread of its own: the namespace is per thread, and the main thread must stay where it is.
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET changes only this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {ns}"));
    }
    Ok(())
}

/// Runs `f` in a new thread inside network namespace `ns` and returns what it returns.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(ns)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| bail!("a thread in namespace {ns} panicked"))
    })
}

/// Time a task has run on a CPU, in ns (`/proc/PID/schedstat`, first field).
pub fn task_cpu_ns(pid: u32) -> Result<u64> {
    schedstat(pid, 0)
}

/// How many times a task has been put on a CPU so far (/proc/PID/schedstat's third field): for
/// a NAPI thread, how many times it woke up to poll.
pub fn task_runs(pid: u32) -> Result<u64> {
    schedstat(pid, 2)
}

fn schedstat(pid: u32, field: usize) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .nth(field)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected {path}: {text:?}"))
}

/// One CPU's line of /proc/stat, in USER_HZ ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub softirq: u64,
}

impl CpuTimes {
    pub fn read(cpu: usize) -> Result<CpuTimes> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let times = cpu_line(&stat, &format!("cpu{cpu}"))?;
        Ok(CpuTimes {
            busy: busy_ticks(&times),
            softirq: times[6],
        })
    }

    /// Nanoseconds busy since `before`.
    pub fn busy_ns_since(&self, before: &CpuTimes) -> u64 {
        ticks_to_ns(self.busy.saturating_sub(before.busy))
    }

    pub fn softirq_ns_since(&self, before: &CpuTimes) -> u64 {
        ticks_to_ns(self.softirq.saturating_sub(before.softirq))
    }
}

/// The numbers of /proc/stat's line `label` (`cpu`, `cpu1`, `intr`, ...).
fn stat_line(stat: &str, label: &str) -> Result<Vec<u64>> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label))
        .with_context(|| format!("no {label} line in /proc/stat"))?;
    Ok(line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect())
}

/// A CPU line of /proc/stat (`cpu` for all of them together), with at least the eight times
/// [`busy_ticks`] reads.
fn cpu_line(stat: &str, label: &str) -> Result<Vec<u64>> {
    let times = stat_line(stat, label)?;
    if times.len() < 8 {
        bail!("short {label} line in /proc/stat: {times:?}");
    }
    Ok(times)
}

/// Ticks not idle: user nice system idle iowait irq softirq steal, less idle and iowait.
fn busy_ticks(times: &[u64]) -> u64 {
    times.iter().take(8).sum::<u64>() - times[3] - times[4]
}

/// The whole machine's busy time (every CPU; /proc/stat's `cpu` line, in USER_HZ ticks) and
/// interrupts so far (`intr`: device interrupts and, in a VM, the IPIs that wake another CPU).
#[derive(Clone, Copy, Debug)]
pub struct MachineLoad {
    busy: u64,
    interrupts: u64,
}

impl MachineLoad {
    pub fn read() -> Result<MachineLoad> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let interrupts = *stat_line(&stat, "intr")?
            .first()
            .context("empty intr line in /proc/stat")?;
        Ok(MachineLoad {
            busy: busy_ticks(&cpu_line(&stat, "cpu")?),
            interrupts,
        })
    }

    /// (busy ns over all CPUs, interrupts) since `before`.
    pub fn since(&self, before: &MachineLoad) -> (u64, u64) {
        (
            ticks_to_ns(self.busy.saturating_sub(before.busy)),
            self.interrupts.saturating_sub(before.interrupts),
        )
    }
}

fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

/// The kernel thread that runs a device's threaded NAPI (`napi/DEV-ID`), if there is one.
pub fn napi_thread(device: &str) -> Option<u32> {
    let prefix = format!("napi/{device}-");
    fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(e.path().join("comm")).ok()?;
        comm.starts_with(&prefix).then_some(pid)
    })
}

/// The thread ids of a process (`/proc/PID/task`).
fn tasks(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/task");
    Ok(fs::read_dir(&dir)
        .with_context(|| format!("listing {dir}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Pins every thread of a process to one CPU (a multi-threaded server started before it could
/// be pinned with `taskset`: the agent). Threads it starts later inherit the pinning.
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    for task in tasks(pid)? {
        pin(task as libc::pid_t, cpu).with_context(|| format!("pinning process {pid}"))?;
    }
    Ok(())
}

/// Time all threads of a process have run, in ns (the sum of /proc/PID/task/*/schedstat; a
/// thread that ended takes its time with it, so read this around long-lived threads only).
pub fn process_tasks_cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in tasks(pid)? {
        let path = format!("/proc/{pid}/task/{task}/schedstat");
        let Ok(text) = fs::read_to_string(&path) else {
            // Ended between the listing and now.
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("unexpected {path}: {text:?}"))?;
    }
    Ok(total)
}

/// Joins the client threads of a scope, each one's result in order; a thread that panicked is
/// an error.
pub fn join_all<T>(handles: Vec<std::thread::ScopedJoinHandle<'_, Result<T>>>) -> Vec<Result<T>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| anyhow::bail!("a client thread panicked"))
        })
        .collect()
}
