//! The harness for limiter's integration tests: real programs, real sockets, network
//! namespaces. Everything here needs root (see `/work/shared/testing.md` for the rules these
//! follow: unique names, guards that clean up on panic, bounded loops, polling with deadlines).
//!
//! - [`netns`]: [`TestBed`], a server and a client namespace joined by a veth pair.
//! - [`pins`]: a pin directory on bpffs, removed even when a test panics.
//! - [`node`]: the bed as a Kubernetes node: pods behind veths, a NodePort DNAT.
//! - [`container`]: containers of a real runtime (podman) as pods, with a hostPort.
//! - [`kubernetes`]: a stand-in API server (list/watch JSON) for Kubernetes mode.
//! - [`agent`]: [`Agent`], the real `limiter` binary running in the server namespace.
//! - [`client`]: servers and clients (the `netns-tool` helper) run inside the namespaces.
//! - [`process`]: child processes with line-by-line output and kill-on-drop.
//! - [`poll`]: waiting for a condition with a deadline.
//! - [`flood`]: a forged-source SYN flood and a real client probing during it.
//! - [`frames`]: crafted Ethernet frames and a reference parser, for program tests.
//! - [`refusal`]: how bad input must be refused (one error line, nothing left behind).
//! - [`prometheus`]: a real Prometheus scraping the agent and evaluating rule files.
//! - [`program`]: the XDP program loaded from the real object and run with BPF_PROG_TEST_RUN.
//! - [`sockopt`]: another process's sockets (pidfd_getfd) and their keepalive options.

pub mod agent;
pub mod client;
pub mod container;
pub mod flood;
pub mod frames;
pub mod kubernetes;
pub mod names;
pub mod netns;
pub mod node;
pub mod pins;
pub mod poll;
pub mod process;
pub mod program;
pub mod prometheus;
pub mod refusal;
pub mod sockopt;

pub use agent::{Agent, ListenerStats, ProxyStats, Stats};
pub use netns::{Side, TestBed, UpstreamNs};
pub use poll::eventually;

/// Namespace and program tests need root; without it they fail (a skipped kernel test is a
/// test that did not run).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)"
    );
}
