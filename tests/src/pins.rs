//! [`PinDir`]: a unique pin directory on bpffs for an agent's `--pin-dir`, removed with whatever
//! an agent left in it (pinned links stay attached until their pins go) when dropped, also when
//! the test panics.
use std::{fs, path::PathBuf, process::Command};

use crate::names;

pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> PinDir {
        ensure_bpffs();
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/{}",
            names::unique("pins", names::next_id())
        )))
    }

    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Default for PinDir {
    fn default() -> Self {
        PinDir::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// bpffs is not mounted on a fresh machine; the test setup mounts it, as a node's would be.
fn ensure_bpffs() {
    let mounts = fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "mounting bpffs: {status:?}"
        );
    }
}
