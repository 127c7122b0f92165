//! Connections found over the limit when their handshake completed (flood mode), reset by the
//! agent at once.
//!
//! In flood mode a SYN takes no slot (so forged SYNs take none), and accounting admits the
//! connection when the kernel has completed its handshake. When more handshakes complete than
//! there are free slots, the ones too many are already ESTABLISHED in the kernel, and sock_ops
//! cannot abort a socket: it hands each to this task through the `OVER_LIMIT` ring buffer, and
//! the task destroys the socket with sock_diag's SOCK_DESTROY (what `ss -K` does; the kernel
//! sends the client a RST and closes the socket, also one still in the accept queue). So the
//! client never holds a connection that looks open and hangs, and nothing of it stays in the
//! server's queues.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use limiter_common::OverLimit;
use tokio::io::{Interest, unix::AsyncFd};

use crate::enforce::sock_diag::SockDiag;

/// What the task did, for stats and metrics.
#[derive(Debug, Default)]
pub struct ResetStats {
    pub reset: AtomicU64,
    pub failed: AtomicU64,
}

/// Reads the ring buffer until the agent stops, resetting each connection it names. `diag`
/// was opened in the network namespace whose sockets the ring buffer names (a socket can only
/// be destroyed through a sock_diag socket of its own namespace).
pub async fn reset_loop(
    ring: RingBuf<MapData>,
    diag: std::io::Result<SockDiag>,
    stats: Arc<ResetStats>,
) {
    let diag = match diag {
        Ok(diag) => diag,
        Err(error) => {
            tracing::warn!(%error, "over-limit connections cannot be reset: opening a sock_diag netlink socket failed");
            return;
        }
    };
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long as
    // the AsyncFd holds it.
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(ring) => ring,
        Err(error) => {
            let error = error.to_string();
            tracing::warn!(%error, "over-limit connections cannot be reset: polling the OVER_LIMIT ring buffer failed");
            return;
        }
    };
    loop {
        let Ok(mut ready) = ring.readable_mut().await else {
            return;
        };
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<OverLimit>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `OverLimit` (checked length); read unaligned.
            let event: OverLimit = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match diag.destroy(&event.flow, event.cookie) {
                Ok(()) => {
                    stats.reset.fetch_add(1, Ordering::Relaxed);
                }
                // Already gone (the client or the server closed it first): nothing to reset.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, flow = ?event.flow, "resetting a connection over the limit failed");
                }
            }
        }
        ready.clear_ready();
    }
}
