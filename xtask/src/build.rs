//! `cargo xtask build`: setup (fast when already done), then build the agent. limiter-user's build
//! script builds the eBPF object itself (aya-build, toolchain `limiter-bpf`).
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn main(args: &Args) -> Result<()> {
    setup::run()?;
    build_agent(args.release)?;
    Ok(())
}

/// `cargo build -p limiter-user [--release]`; returns the path of the `limiter` binary.
pub fn build_agent(release: bool) -> Result<PathBuf> {
    let mut build = cmd::cargo();
    build.args(["build", "-p", "limiter-user"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build).context("building the agent (limiter-user) failed")?;
    let binary = agent_binary(release);
    if !binary.is_file() {
        anyhow::bail!(
            "the build succeeded but {} does not exist",
            binary.display()
        );
    }
    Ok(binary)
}

/// Where cargo puts the `limiter` binary.
pub fn agent_binary(release: bool) -> PathBuf {
    cmd::target_dir()
        .join(if release { "release" } else { "debug" })
        .join("limiter")
}
