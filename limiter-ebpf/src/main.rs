//! limiter's kernel programs, in one object:
//!
//! - [`admission`]: XDP on the watched interfaces. A SYN to a limited listener reserves a slot or
//!   is refused (dropped, or answered with a RST built in [`reset`]).
//! - [`accounting`]: sock_ops on the cgroup v2 root. The count goes up when the kernel moves a
//!   connection to ESTABLISHED and down when the socket reaches CLOSE; [`keepalive`] sets TCP
//!   keepalive on outgoing connections to selected destinations.
//!
//! - [`preexisting`]: an iterator over TCP sockets the agent runs to count connections that were
//!   established before their listener was limited.
//!
//! - [`close_watch`]: on kernels before 6.10, the close of the connections [`preexisting`]
//!   counted (sock_ops cannot be asked to see it there).
//!
//! Per-source limits live in [`sources`]. All share the maps declared once in [`maps`]; keys and values come from `limiter-common`.
#![no_std]
#![no_main]
// Atomic read-modify-write on the BPF target (see `atomic.rs`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod accounting;
mod admission;
mod atomic;
mod close_watch;
mod flow;
mod keepalive;
mod listeners;
mod maps;
mod packet;
mod preexisting;
mod reset;
mod socket_tags;
mod sources;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic at run time; the verifier rejects any path that could
    // reach here, so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
