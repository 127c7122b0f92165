//! `cargo xtask test`: the test command (CI runs it through `.ci/run`). Setup, build the agent
//! (the namespace tests run the real binary), then every test in the workspace.
use std::ffi::OsString;

use anyhow::{Context as _, Result};

use crate::{build, cmd, matrix, other_agents, setup};

/// Set to `off` to run the host's tests only (`cargo xtask test -- FILTER` while iterating).
pub const MATRIX_ENV: &str = "LIMITER_KERNEL_MATRIX";

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Passed on to `cargo test` as given (e.g. a test name filter, or `-- --nocapture`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_test_args: Vec<OsString>,
}

/// The arguments after `test`, exactly as typed. clap would swallow a leading `--`, which is what
/// a user types to reach the test binaries (`cargo xtask test -- --nocapture`); clap's parse only
/// serves `--help` and validation.
pub fn passthrough(argv: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    argv.into_iter()
        .skip(1)
        .skip_while(|arg| arg != "test")
        .skip(1)
        .collect()
}

pub fn main(cargo_test_args: Vec<OsString>) -> Result<()> {
    if !cmd::is_root() {
        eprintln!(
            "warning: not running as root: the kernel and namespace tests need root and will fail"
        );
    }
    setup::run()?;
    build::build_agent(false)?;
    // The upgrade tests run agents of other builds (an older layout's, the next one's).
    let other_agents = other_agents::ensure().context("building the other agents")?;
    let mut test = cmd::cargo();
    test.envs(other_agents.iter().map(|(name, path)| (*name, path)));
    // `--workspace` alone would include limiter-ebpf, which only builds for bpfel-unknown-none.
    test.args(["test", "--workspace", "--exclude", "limiter-ebpf"])
        .args(cargo_test_args);
    let host = cmd::run(&mut test).context("the tests failed on this machine's kernel");
    if std::env::var(MATRIX_ENV).is_ok_and(|v| v == "off") {
        println!("kernel matrix: skipped ({MATRIX_ENV}=off)");
        return host;
    }
    // The matrix runs even when the host's run failed: which kernels fail is the news.
    let kernels = matrix::run(&other_agents);
    match (host, kernels) {
        (Ok(()), kernels) => kernels,
        (Err(host), Ok(())) => Err(host),
        (Err(host), Err(kernels)) => Err(host.context(format!("{kernels:#}"))),
    }
}

/// `cargo xtask matrix`: the kernel matrix alone.
pub fn matrix_only() -> Result<()> {
    setup::run()?;
    build::build_agent(false)?;
    matrix::run(&other_agents::ensure().context("building the other agents")?)
}
