//! limiter's agent: caps active TCP connections per listener in the kernel.
//!
//! The parts, each a folder:
//! - [`agent`]: `limiter run`: check, start enforcing in every namespace, serve, stop.
//! - [`enforce`]: enforcing limits in one network namespace: the kernel object and its maps,
//!   the limits and their listener slots, handshakes, floods, adoption, resets, XDP modes, pins.
//! - [`netns`] and [`kubernetes`]: where limits apply: the agent's own namespace, other
//!   namespaces by path, pods that policies select.
//! - [`config`]: what users write: flags, the config file, the settings they merge into.
//! - [`observe`]: what the agent tells: stats, metrics, logs, and the control socket.
//! - [`proxy`]: the forwarding proxy (`--proxy`).
//! - [`error`]: the agent's errors.
pub mod agent;
pub mod config;
pub mod enforce;
pub mod error;
pub mod kubernetes;
pub mod netns;
pub mod observe;
pub mod proxy;

/// The kernel object built by `build.rs` from `limiter-ebpf` (aligned as the ELF parser needs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/limiter"));
