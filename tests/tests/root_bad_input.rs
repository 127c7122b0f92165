//! Bad input and a bad environment (design.md semantics 8): one line on stderr starting with
//! `limiter: error:` that names the flag, value or missing piece, a non-zero exit (2 for bad
//! flags and values, 1 for the environment), and nothing attached afterwards. Needs root.
use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

use limiter_tests::{
    Agent, TestBed,
    agent::limiter_bin,
    names,
    refusal::{check_refusal, expect_refusal, run_args},
};

#[test]
fn root_bad_listener_syntax() {
    expect_refusal(
        &["--limit", "198.18.0.1:http=5"],
        2,
        &["--limit", "198.18.0.1:http"],
    );
}

#[test]
fn root_bad_listener_address() {
    expect_refusal(
        &["--limit", "198.18.0.300:8000=5"],
        2,
        &["--limit", "198.18.0.300"],
    );
}

#[test]
fn root_bad_listener_port() {
    expect_refusal(&["--limit", "70000=5"], 2, &["--limit", "70000"]);
}

#[test]
fn root_limit_zero() {
    expect_refusal(&["--limit", "8000=0"], 2, &["--limit", "8000=0"]);
}

#[test]
fn root_limit_negative() {
    expect_refusal(&["--limit", "8000=-1"], 2, &["--limit", "-1"]);
}

#[test]
fn root_limit_above_u32() {
    expect_refusal(
        &["--limit", "8000=4294967296"],
        2,
        &["--limit", "4294967296"],
    );
}

#[test]
fn root_limit_bad_action() {
    expect_refusal(&["--limit", "8000=5:explode"], 2, &["--limit", "explode"]);
}

#[test]
fn root_duplicate_listener() {
    expect_refusal(
        &["--limit", "8000=5", "--limit", "8000=6"],
        2,
        &["duplicate", "8000"],
    );
}

#[test]
fn root_bad_over_limit() {
    expect_refusal(
        &["--limit", "8000=5", "--over-limit", "maybe"],
        2,
        &["--over-limit", "maybe"],
    );
}

#[test]
fn root_bad_handshake_timeout() {
    expect_refusal(
        &["--limit", "8000=5", "--handshake-timeout", "soon"],
        2,
        &["--handshake-timeout", "soon"],
    );
}

#[test]
fn root_bad_max_listeners() {
    expect_refusal(
        &["--limit", "8000=5", "--max-listeners", "0"],
        2,
        &[
            "--max-listeners",
            "'0' is not a number of listeners from 1 to 16384",
        ],
    );
}

/// More listeners limited than the agent's maps would hold: refused before anything is loaded.
#[test]
fn root_more_limits_than_max_listeners() {
    expect_refusal(
        &[
            "--limit",
            "8000=5",
            "--limit",
            "8001=5",
            "--limit-per-source",
            "8001=1",
            "--max-listeners",
            "1",
        ],
        2,
        &["--max-listeners 1: 2 listeners are limited"],
    );
}

#[test]
fn root_unknown_interface() {
    let bed = TestBed::new();
    let socket = Agent::socket_path().display().to_string();
    let missing = format!("nope{}", names::next_id());
    let args = [
        "run",
        "--iface",
        &missing,
        "--limit",
        "8000=5",
        "--control-socket",
        &socket,
    ];
    let finished = Agent::run_to_exit(&bed, &args);
    check_refusal(&bed, &finished, "unknown interface", 1, &[&missing]);
}

/// A second, real interface after a missing one: the one that exists must not stay attached.
#[test]
fn root_unknown_second_interface_leaves_nothing_attached() {
    let bed = TestBed::new();
    let socket = Agent::socket_path().display().to_string();
    let missing = format!("nope{}", names::next_id());
    let args = [
        "run",
        "--iface",
        &bed.srv_veth,
        "--iface",
        &missing,
        "--limit",
        "8000=5",
        "--control-socket",
        &socket,
    ];
    let finished = Agent::run_to_exit(&bed, &args);
    check_refusal(&bed, &finished, "unknown second interface", 1, &[&missing]);
}

#[test]
fn root_cgroup_path_missing() {
    expect_refusal(
        &["--limit", "8000=5", "--cgroup", "/nonexistent-lim-cgroup"],
        1,
        &["cgroup v2", "cgroup2"],
    );
}

#[test]
fn root_cgroup_path_not_cgroup2() {
    expect_refusal(
        &["--limit", "8000=5", "--cgroup", "/tmp"],
        1,
        &["cgroup v2", "cgroup2"],
    );
}

/// The agent run as `refusal_line` runs it, inside a mount namespace of its own where `script`
/// (sh) has first changed what the kernel's file systems show: a node without BTF or without
/// cgroup v2, made on this machine.
fn refusal_in_mount_namespace(script: &str, needles: &[&str]) {
    let bed = TestBed::new();
    let socket = Agent::socket_path();
    let socket_arg = socket.display().to_string();
    let agent = Agent::command(&bed, &run_args(&bed, &["--limit", "8000=5"], &socket_arg));
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{script} && exec \"$@\""))
        .arg("sh")
        .arg(agent.get_program())
        .args(agent.get_args());
    let finished = Agent::run_command_to_exit(&bed, cmd);
    check_refusal(&bed, &finished, script, 1, needles);
    assert!(
        !socket.exists(),
        "control socket {} left behind",
        socket.display()
    );
}

/// A kernel without BTF (built without CONFIG_DEBUG_INFO_BTF): one line naming the kernel and
/// what is missing, nothing attached.
#[test]
fn root_kernel_without_btf() {
    refusal_in_mount_namespace(
        "mount -t tmpfs none /sys/kernel/btf",
        &["has no BTF (/sys/kernel/btf/vmlinux"],
    );
}

/// A node without cgroup v2 mounted: one line saying so and how to mount it, nothing attached.
#[test]
fn root_no_cgroup2_mounted() {
    refusal_in_mount_namespace(
        "for m in $(awk '$3 == \"cgroup2\" { print $2 }' /proc/mounts); do umount -l \"$m\"; done",
        &["cgroup v2 is not mounted"],
    );
}

/// Without root (uid 65534, no capabilities) the agent says it lacks privileges.
#[test]
fn root_no_privileges() {
    let bed = TestBed::new();
    // A copy any user can execute, whatever the permissions on the way to the target dir.
    let dir = PathBuf::from(format!("/tmp/{}", names::unique("bin", names::next_id())));
    fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = RemoveDir(dir.clone());
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("limiter");
    fs::copy(limiter_bin(), &bin).expect("copy agent");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod agent");
    let socket = dir.join("ctl.sock");

    // nsenter (as root) enters the namespace, then setpriv drops to nobody with no capabilities.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", bed.srv_netns_path().display()))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args([
            "run",
            "--iface",
            &bed.srv_veth,
            "--limit",
            "8000=5",
            "--control-socket",
        ])
        .arg(&socket);
    let finished = Agent::run_command_to_exit(&bed, cmd);
    check_refusal(&bed, &finished, "no privileges", 1, &["privilege", "cap_"]);
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
