//! limiter's agent: caps active TCP connections per listener in the kernel.
//!
//! - [`agent`]: `limiter run` (check, load, attach, enforce, detach).
//! - [`kernel`]: loading the object from `limiter-ebpf` and attaching its programs.
//! - [`limits`]: the limits in force and the listener slots that count for them.
//! - [`xdp_mode`]: the XDP mode of each interface, so that every action is delivered there.
//! - [`handshake`]: releasing reservations whose handshake never completed.
//! - [`control`]: the socket `limiter stats | set | unset` talk to.
//! - [`stats`], [`cli`], [`listener`], [`duration`], [`preflight`], [`error`].
pub mod agent;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod control;
pub mod duration;
pub mod error;
pub mod features;
pub mod flood;
pub mod handshake;
pub mod keepalive;
pub mod kernel;
pub mod kubernetes;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod over_limit;
pub mod pins;
pub mod preexisting;
pub mod preflight;
pub mod proxy;
pub mod settings;
pub mod sock_diag;
pub mod stats;
pub mod unbound;
pub mod usage;
pub mod xdp_mode;

/// The kernel object built by `build.rs` from `limiter-ebpf` (aligned as the ELF parser needs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/limiter"));
