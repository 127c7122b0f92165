//! Agents of other builds, for the upgrade and rollback tests (tests/tests/root_upgrade.rs):
//! built once and kept under `target/other-agents/`, and named to the tests by environment
//! variables. The tests run them as the DaemonSet's old pod would, then today's agent over
//! their pins.
//!
//! - [`V6_COMMIT`]: the last agent of map layout v6, built from its commit (`git archive`, so
//!   the checkout needs its history, as a clone has).
//! - Today's code under the next layout version (`LIMITER_MAP_LAYOUT_VERSION`): two agents that
//!   differ only in their layout, for the rollback from this change on.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use limiter_common::MAP_LAYOUT_VERSION;

use crate::cmd::{self, command};

/// A commit whose agent pins map layout v6.
pub const V6_COMMIT: &str = "5b1ff3c";
/// The variables the tests read the agents' paths from.
pub const V6_AGENT_ENV: &str = "LIMITER_V6_AGENT";
pub const NEXT_LAYOUT_AGENT_ENV: &str = "LIMITER_NEXT_LAYOUT_AGENT";

fn dir() -> PathBuf {
    cmd::target_dir().join("other-agents")
}

/// Builds (once) both agents; the environment the tests need to find them.
pub fn ensure() -> Result<Vec<(&'static str, PathBuf)>> {
    Ok(vec![
        (V6_AGENT_ENV, v6_agent()?),
        (NEXT_LAYOUT_AGENT_ENV, next_layout_agent()?),
    ])
}

/// The v6 agent: [`V6_COMMIT`]'s tree, built in a target directory of its own.
fn v6_agent() -> Result<PathBuf> {
    let binary = dir().join(format!("limiter-v6-{V6_COMMIT}"));
    if binary.is_file() {
        return Ok(binary);
    }
    println!(
        "other agents: building the v6 agent of commit {V6_COMMIT} (once; kept in {})",
        dir().display()
    );
    let source = dir().join(format!("src-{V6_COMMIT}"));
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(&source)?;
    let archive = dir().join(format!("{V6_COMMIT}.tar"));
    cmd::run(
        command("git")
            .args(["archive", "--format=tar", "-o"])
            .arg(&archive)
            .arg(V6_COMMIT),
    )
    .with_context(|| format!("extracting commit {V6_COMMIT} (the checkout needs its history)"))?;
    cmd::run(
        command("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&source),
    )?;
    build(&source, "target-v6", &[], &binary)?;
    let _ = std::fs::remove_dir_all(&source);
    let _ = std::fs::remove_file(&archive);
    Ok(binary)
}

/// Today's agent, built again with the layout version one above this build's.
fn next_layout_agent() -> Result<PathBuf> {
    let next = MAP_LAYOUT_VERSION + 1;
    let binary = dir().join(format!("limiter-v{next}-today"));
    // Rebuilt whenever today's code changes: cargo's own check is quick when nothing did.
    let version = next.to_string();
    build(
        cmd::workspace_root(),
        "target-next",
        &[("LIMITER_MAP_LAYOUT_VERSION", &version)],
        &binary,
    )?;
    Ok(binary)
}

/// `cargo build -p limiter-user` in `source`, into `target` under the other agents' directory,
/// then the binary copied to `binary`. Each tree has a target directory of its own: cargo names
/// a workspace crate's artifacts from its path inside the workspace, the same in both trees.
fn build(source: &Path, target: &str, env: &[(&str, &str)], binary: &Path) -> Result<()> {
    let target = dir().join(target);
    let mut build = cmd::cargo();
    build
        .current_dir(source)
        .env("CARGO_TARGET_DIR", &target)
        .envs(env.iter().copied())
        .args(["build", "-p", "limiter-user"]);
    cmd::run(&mut build).with_context(|| format!("building the agent in {}", source.display()))?;
    let built = target.join("debug").join("limiter");
    if !built.is_file() {
        bail!("the build succeeded but {} does not exist", built.display());
    }
    std::fs::copy(&built, binary)
        .with_context(|| format!("copying {} to {}", built.display(), binary.display()))?;
    Ok(())
}
