//! Booting a matrix kernel with virtme-ng: the host's root filesystem shared read-only (writes go
//! to an overlay), so the binaries built on the host run inside as they are. KVM hangs at boot on
//! these machines (README "Kernels"), so the guest runs under TCG: slower CPU, real kernel.
use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::kernels::Kernel;
use crate::cmd::command;

/// virtme-ng from PyPI, in a venv of its own (setup installs it).
pub const VNG_VENV: &str = "/opt/limiter-vng";
pub const VNG_VERSION: &str = "1.42";
/// The guest's size: what a small node gives a DaemonSet pod, and what 2 host cores can run.
const GUEST_MEMORY: &str = "2G";
const GUEST_CPUS: &str = "2";

/// Boots `kernel`, runs `script ARGS...` inside, and waits for the guest to power off, at most
/// `limit`. The guest's console goes to `console` (the kernel's messages, for a failure).
pub fn run(
    kernel: &Kernel,
    script: &Path,
    args: &[&Path],
    console: &Path,
    shared: &Path,
    limit: Duration,
) -> Result<()> {
    let log = std::fs::File::create(console)
        .with_context(|| format!("creating {}", console.display()))?;
    let mut guest_command = vec![script.display().to_string()];
    guest_command.extend(args.iter().map(|a| a.display().to_string()));
    let mut vng = command("vng");
    vng
        // virtme-ng starts its helpers (virtme-run, qemu) from PATH.
        .env(
            "PATH",
            format!(
                "{VNG_VENV}/bin:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args([
            "--verbose",
            "--disable-kvm",
            "--memory",
            GUEST_MEMORY,
            "--cpus",
            GUEST_CPUS,
        ])
        .arg("--run")
        .arg(kernel.image())
        .arg(format!("--rwdir={}", shared.display()))
        .arg("--")
        .arg(guest_command.join(" "))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = vng.spawn().context("starting virtme-ng (vng)")?;
    wait(child, limit, &kernel.release)
}

fn wait(mut child: Child, limit: Duration, release: &str) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            // vng's own exit code is not the guest's: the caller reads what the guest wrote.
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the VM of kernel {release} was still running after {limit:?}: stopped");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
