//! The kernel matrix: the kernel-facing tests, run again inside VMs of the kernels users' nodes
//! run (Debian 12's 6.1 and Debian's 6.12 LTS, [`kernels::MATRIX`]), after the host's own run.
//! `cargo xtask test` runs it; `cargo xtask matrix` runs it alone. A failure names the kernel.
//!
//! Inside each VM: the program tests (BPF_PROG_TEST_RUN, the fuzz included) and the namespace
//! tests of what touches a kernel program ([`PLAN`]). The rest of the suite (CLI, config, docs,
//! proxy, Kubernetes discovery) does not depend on the kernel and runs on the host only.
pub mod kernels;
pub mod vm;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Test binary of the `tests` crate, and the tests of it to run in each VM (all if empty).
pub struct Entry {
    pub binary: &'static str,
    pub tests: &'static [&'static str],
    /// Tests at once: a forged flood wants the guest's two CPUs to itself.
    pub threads: u32,
}

pub const PLAN: &[Entry] = &[
    // Every program test: verdicts, maps, RSTs, VLANs, IPv6 headers, the 100,000-frame fuzz.
    Entry {
        binary: "root_program",
        tests: &[],
        threads: 2,
    },
    // Admission with both actions; burst exactness (300 at limit 50); handshake timeouts.
    Entry {
        binary: "root_admission",
        tests: &[],
        threads: 2,
    },
    Entry {
        binary: "root_over_limit",
        tests: &[
            "root_drop_times_out_without_rst",
            "root_reset_refuses_at_once_ipv4",
            "root_reset_refuses_at_once_ipv6",
        ],
        threads: 2,
    },
    // Churn back to 0, whichever side closes.
    Entry {
        binary: "root_accounting",
        tests: &[],
        threads: 2,
    },
    // Connections there first, at start and on a limit set live.
    Entry {
        binary: "root_preexisting",
        tests: &[],
        threads: 2,
    },
    // Per-source limits. Not root_forged_sources_take_no_place: its 100,000 forged SYN/s drop
    // so much of an emulated guest's traffic that a real connection can outlive the test's
    // wait for 0 (seen once on 6.12); the forged flood runs here in root_flood, at 2,000/s.
    Entry {
        binary: "root_per_source",
        tests: &[
            "root_each_ipv4_source_gets_exactly_its_limit",
            "root_the_ones_too_many_are_reset_after_the_handshake",
            "root_an_ipv6_source_is_a_64",
            "root_per_source_and_listener_limits_together_and_live",
        ],
        threads: 2,
    },
    // sock_ops keepalive on an unmodified process's connections.
    Entry {
        binary: "root_keepalive",
        tests: &[
            "root_keepalive_for_unmodified_processes",
            "root_keepalive_for_every_port_with_only_time",
        ],
        threads: 2,
    },
    // Pins: SIGKILL and a restart keep counts and enforcement.
    Entry {
        binary: "root_pins",
        tests: &[
            "root_restart_after_sigkill_keeps_counts_and_enforcement",
            "root_keep_pinned_leaves_enforcement_running",
            "root_pin_dir_not_on_bpffs_is_refused",
        ],
        threads: 2,
    },
    // A pod (`--limit-in`): its own XDP, tail-called accounting, connections there first.
    Entry {
        binary: "root_pods",
        tests: &[
            "root_pod_burst_is_exact_and_churn_returns_to_zero",
            "root_each_pod_its_own_limit_via_pod_ip_and_node_port",
            "root_connections_open_in_a_pod_before_the_agent_count",
        ],
        threads: 2,
    },
    // The forged flood: real clients get in; flood mode resets what is over the limit.
    Entry {
        binary: "root_flood",
        tests: &[
            "root_flood_2000_per_second_limit_10_reset",
            "root_flood_mode_resets_the_connections_over_the_limit_at_once",
        ],
        threads: 1,
    },
    Entry {
        binary: "root_lifecycle",
        tests: &[],
        threads: 2,
    },
    // What the kernel can do, probed and reported; a kernel without BTF or cgroup v2.
    Entry {
        binary: "root_features",
        tests: &[],
        threads: 2,
    },
    Entry {
        binary: "root_bad_input",
        tests: &["root_kernel_without_btf", "root_no_cgroup2_mounted"],
        threads: 2,
    },
    // A rollout and rollback across map layouts (today's code under two layout versions). The
    // v6 agent's own XDP program does not load on these kernels (the bug this matrix found).
    Entry {
        binary: "root_upgrade",
        tests: &["root_rollback_and_rollout_across_layouts_take_over_each_way"],
        threads: 1,
    },
];

/// How long one kernel's VM may run before it is stopped (a hung guest must not eat CI's time).
const VM_LIMIT: Duration = Duration::from_secs(40 * 60);

/// Outcome of one kernel's run.
struct KernelRun {
    release: String,
    series: &'static str,
    passed: u64,
    failed: u64,
    /// Test binaries that failed (or never finished), each with its log.
    failures: Vec<(String, PathBuf)>,
    seconds: u64,
}

/// Runs [`PLAN`] in a VM of each matrix kernel; an error names each kernel that failed.
/// `env` names other builds of the agent the tests run (`other_agents.rs`), copied into the
/// snapshot with the rest.
pub fn run(env: &[(&'static str, PathBuf)]) -> Result<()> {
    let binaries = snapshot(&test_binaries()?)?;
    let env = snapshot_env(env)?;
    let kernels: Vec<_> = kernels::MATRIX
        .iter()
        .map(|series| {
            series.extracted().with_context(|| {
                format!(
                    "{}: no kernel extracted under {} (run `cargo xtask setup`)",
                    series.name,
                    kernels::KERNELS_DIR
                )
            })
        })
        .collect::<Result<_>>()?;
    let mut runs = Vec::new();
    for kernel in &kernels {
        cmd::check_interrupted()?;
        println!(
            "\nkernel matrix: {} ({}): booting a VM (TCG) and running the kernel tests",
            kernel.release, kernel.series
        );
        let run = run_kernel(kernel, &binaries, &env)?;
        for (name, log) in &run.failures {
            println!(
                "---- kernel {}: {name} failed; its output ({}):",
                run.release,
                log.display()
            );
            println!("{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        runs.push(run);
    }
    println!("\nkernel matrix:");
    for run in &runs {
        println!(
            "  {} ({}): {} passed, {} failed, in {} s{}",
            run.release,
            run.series,
            run.passed,
            run.failed,
            run.seconds,
            if run.failures.is_empty() {
                String::new()
            } else {
                format!(
                    " (failed: {})",
                    run.failures
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let (passed, failed) = runs
        .iter()
        .fold((0, 0), |(p, f), r| (p + r.passed, f + r.failed));
    println!("matrix: {passed} passed, {failed} failed");
    let failing: Vec<String> = runs
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| format!("{} ({})", r.release, r.series))
        .collect();
    if !failing.is_empty() {
        bail!(
            "the kernel tests failed on kernel {}",
            failing.join(" and ")
        );
    }
    Ok(())
}

fn run_kernel(
    kernel: &kernels::Kernel,
    binaries: &BTreeMap<String, PathBuf>,
    env: &str,
) -> Result<KernelRun> {
    let out = cmd::target_dir().join("matrix").join(&kernel.release);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut plan = String::new();
    for entry in PLAN {
        let binary = binaries
            .get(entry.binary)
            .with_context(|| format!("no test binary `{}` was built", entry.binary))?;
        plan.push_str(&format!(
            "{} {} --test-threads={}",
            entry.binary,
            binary.display(),
            entry.threads
        ));
        for test in entry.tests {
            plan.push_str(&format!(" {test}"));
        }
        if !entry.tests.is_empty() {
            plan.push_str(" --exact");
        }
        plan.push('\n');
    }
    std::fs::write(out.join("plan"), plan)?;
    std::fs::write(out.join("env"), env)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/matrix/guest.sh");
    let tests_dir = cmd::workspace_root().join("tests");
    let start = Instant::now();
    vm::run(
        kernel,
        &script,
        &[&out, &tests_dir],
        &out.join("console.log"),
        &out,
        VM_LIMIT,
    )?;
    let seconds = start.elapsed().as_secs();
    let status = std::fs::read_to_string(out.join("status")).unwrap_or_default();
    let mut run = KernelRun {
        release: kernel.release.clone(),
        series: kernel.series,
        passed: 0,
        failed: 0,
        failures: Vec::new(),
        seconds,
    };
    let finished: BTreeMap<&str, i32> = status
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?.parse().ok()?))
        })
        .collect();
    for entry in PLAN {
        let log = out.join(format!("{}.log", entry.binary));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let (passed, failed) = summary(&text);
        run.passed += passed;
        run.failed += failed;
        match finished.get(entry.binary) {
            Some(0) => {}
            Some(_) => run.failures.push((entry.binary.to_string(), log)),
            None => {
                run.failed += 1;
                run.failures.push((
                    format!(
                        "{} (never finished: see {})",
                        entry.binary,
                        out.join("console.log").display()
                    ),
                    log,
                ));
            }
        }
    }
    if !status.lines().any(|l| l == "done") && run.failures.is_empty() {
        run.failures.push((
            "the guest (it stopped before the end of its plan)".into(),
            out.join("console.log"),
        ));
    }
    Ok(run)
}

/// Passed and failed counts from libtest's `test result:` lines.
fn summary(log: &str) -> (u64, u64) {
    let count = |line: &str, word: &str| -> u64 {
        line.split(';')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(word)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    log.lines()
        .filter(|l| l.starts_with("test result:"))
        .fold((0, 0), |(p, f), l| {
            (p + count(l, "passed"), f + count(l, "failed"))
        })
}

/// Copies the test binaries of [`PLAN`], the agent and the tests' helper to `target/matrix/bin`
/// (laid out as cargo does, so the tests find the agent beside their own directory): the VMs
/// read them through a share of the host's files, and a build while they run must not change
/// what they test.
fn snapshot(binaries: &BTreeMap<String, PathBuf>) -> Result<BTreeMap<String, PathBuf>> {
    let bin = cmd::target_dir().join("matrix").join("bin");
    let _ = std::fs::remove_dir_all(&bin);
    let deps = bin.join("deps");
    std::fs::create_dir_all(&deps).with_context(|| format!("creating {}", deps.display()))?;
    let copy = |from: &Path, to: PathBuf| -> Result<PathBuf> {
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(to)
    };
    let built = cmd::target_dir().join("debug");
    for helper in ["limiter", "netns-tool"] {
        copy(&built.join(helper), bin.join(helper))?;
    }
    PLAN.iter()
        .map(|entry| {
            let binary = binaries
                .get(entry.binary)
                .with_context(|| format!("no test binary `{}` was built", entry.binary))?;
            Ok((
                entry.binary.to_string(),
                copy(binary, deps.join(entry.binary))?,
            ))
        })
        .collect()
}

/// Copies each of `env`'s binaries into the snapshot; the shell lines that name them there.
fn snapshot_env(env: &[(&'static str, PathBuf)]) -> Result<String> {
    let bin = cmd::target_dir().join("matrix").join("bin");
    let mut lines = String::new();
    for (name, path) in env {
        let file_name = path
            .file_name()
            .context("an agent path without a file name")?;
        let copy = bin.join(file_name);
        std::fs::copy(path, &copy)
            .with_context(|| format!("copying {} to {}", path.display(), copy.display()))?;
        lines.push_str(&format!("export {name}={}\n", copy.display()));
    }
    Ok(lines)
}

/// The `tests` crate's test binaries, by name, as `cargo test --no-run` built them.
fn test_binaries() -> Result<BTreeMap<String, PathBuf>> {
    let out = cmd::output_quiet(cmd::cargo().args([
        "test",
        "-p",
        "limiter-tests",
        "--no-run",
        "--message-format=json",
    ]))
    .context("building the test binaries (cargo test --no-run)")?;
    let mut binaries = BTreeMap::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            binaries.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(binaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_libtest_summaries() {
        let log = "test result: ok. 20 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 44.78s\n\
                   test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(summary(log), (21, 2));
    }
}
