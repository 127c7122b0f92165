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
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use limiter_common::{FlowKey, OverLimit, family};
use tokio::io::{Interest, unix::AsyncFd};

/// What the task did, for stats and metrics.
#[derive(Debug, Default)]
pub struct ResetStats {
    pub reset: AtomicU64,
    pub failed: AtomicU64,
}

/// Reads the ring buffer until the agent stops, resetting each connection it names.
pub async fn reset_loop(ring: RingBuf<MapData>, stats: Arc<ResetStats>) {
    let diag = match SockDiag::open() {
        Ok(diag) => diag,
        Err(error) => {
            tracing::error!(%error, "over-limit connections cannot be reset: opening a sock_diag netlink socket failed");
            return;
        }
    };
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long as
    // the AsyncFd holds it.
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(ring) => ring,
        Err(error) => {
            let error = error.to_string();
            tracing::error!(%error, "over-limit connections cannot be reset: polling the OVER_LIMIT ring buffer failed");
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

/// A NETLINK_SOCK_DIAG socket.
struct SockDiag(OwnedFd);

const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DESTROY` (linux/sock_diag.h).
const SOCK_DESTROY: u16 = 21;

/// `struct inet_diag_req_v2` (linux/inet_diag.h), after the netlink header.
#[repr(C)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

impl SockDiag {
    fn open() -> io::Result<SockDiag> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(SockDiag(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Destroys the TCP socket of `flow` (server's view: local = source) with `cookie`, and
    /// waits for the kernel's answer.
    fn destroy(&self, flow: &FlowKey, cookie: u64) -> io::Result<()> {
        let (af, words) = match flow.family {
            family::V4 => (libc::AF_INET, 1),
            _ => (libc::AF_INET6, 4),
        };
        let mut src = [0u32; 4];
        let mut dst = [0u32; 4];
        src[..words].copy_from_slice(&flow.local_addr[..words]);
        dst[..words].copy_from_slice(&flow.remote_addr[..words]);
        let request = Request {
            header: libc::nlmsghdr {
                nlmsg_len: size_of::<Request>() as u32,
                nlmsg_type: SOCK_DESTROY,
                nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                nlmsg_seq: 1,
                nlmsg_pid: 0,
            },
            body: InetDiagReqV2 {
                family: af as u8,
                protocol: libc::IPPROTO_TCP as u8,
                ext: 0,
                pad: 0,
                states: u32::MAX,
                sport: flow.local_port.to_be_bytes(),
                dport: flow.remote_port.to_be_bytes(),
                src,
                dst,
                interface: 0,
                cookie: [cookie as u32, (cookie >> 32) as u32],
            },
        };
        // SAFETY: sending a plain struct of the right length on our socket.
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                (&raw const request).cast(),
                size_of::<Request>(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        // The ack: a nlmsghdr then an nlmsgerr whose first field is 0 or -errno.
        let mut answer = [0u8; 256];
        // SAFETY: receiving into a buffer of the given length.
        let got = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                answer.as_mut_ptr().cast(),
                answer.len(),
                0,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let header = size_of::<libc::nlmsghdr>();
        if (got as usize) < header + 4 {
            return Err(io::Error::other("short sock_diag answer"));
        }
        let error = i32::from_ne_bytes(answer[header..header + 4].try_into().expect("4 bytes"));
        match error {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(-e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_what_the_kernel_reads() {
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<Request>(), 72);
    }
}
