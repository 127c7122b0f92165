//! The fallback SYN generator, for kernels that refuse BPF_PROG_TEST_RUN in live-frames mode
//! (EPERM on some builds of this machine kind): AF_PACKET sockets on the generator veth, each
//! sending a batch of ready-made frames with one `sendmmsg` (PACKET_QDISC_BYPASS, so a frame
//! goes straight to the veth's transmit). Every frame gets a random source address in
//! 198.19.0.0/16 and a random source port, both checksums fixed incrementally (RFC 1624), as
//! `xdp_gen.c` does. pktgen would be the other kernel-side generator, but it sends only UDP
//! (and this machine kind has no pktgen module). The frames reach the server veth as skbs
//! rather than XDP frames, so the server's per-SYN floor is higher than with live frames: ratios
//! compare configurations measured with the same generator only.
use std::{ffi::CString, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

/// Frames per `sendmmsg` call (the kernel takes at most UIO_MAXIOV, 1024).
pub const MAX_BATCH: usize = 1024;

/// One sender: an AF_PACKET socket bound to the generator veth and its own copies of the
/// template frame.
pub struct RawSender {
    socket: Socket,
    frames: Vec<Vec<u8>>,
    rng: u64,
}

impl RawSender {
    /// A socket on `iface` (looked up in the calling thread's network namespace; the socket
    /// stays in it whatever thread sends later) sending copies of `template`.
    pub fn open(iface: &str, template: &[u8], seed: u64) -> Result<RawSender> {
        // ETH_P_ALL is never received on: the socket only sends (protocol 0 receives nothing).
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
            .context("opening an AF_PACKET socket")?;
        let name = CString::new(iface)?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("if_nametoindex({iface})"));
        }
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: a valid socket and a sockaddr_ll of the size given.
        if unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("binding an AF_PACKET socket to {iface}"));
        }
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and an int option.
        if unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
        }
        if template.len() < 14 + 20 + 20 {
            bail!("the template frame is too short for Ethernet, IPv4 and TCP");
        }
        Ok(RawSender {
            socket,
            frames: vec![template.to_vec(); MAX_BATCH],
            rng: seed | 1,
        })
    }

    /// Sends `n` frames (at most MAX_BATCH) with one `sendmmsg`, each from a new random
    /// source; returns how many the kernel took (a full veth ring refuses the rest).
    pub fn send(&mut self, n: usize) -> Result<u64> {
        let n = n.min(MAX_BATCH);
        for i in 0..n {
            let r = self.next();
            randomize_source(&mut self.frames[i], r);
        }
        let mut iovecs: Vec<libc::iovec> = self.frames[..n]
            .iter_mut()
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: f.len(),
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; all zeros is a valid value.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: `messages` holds n valid headers whose buffers live until the call returns.
        let sent =
            unsafe { libc::sendmmsg(self.socket.as_raw_fd(), messages.as_mut_ptr(), n as u32, 0) };
        if sent < 0 {
            let e = std::io::Error::last_os_error();
            // The veth's ring was full (the server is behind): nothing taken this time.
            if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                return Ok(0);
            }
            return Err(e).context("sendmmsg on the AF_PACKET socket");
        }
        Ok(sent as u64)
    }

    /// xorshift64: fast, and random enough for source addresses.
    fn next(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 32) as u32
    }
}

/// A seed that differs between senders and runs.
pub fn seed(sender: usize) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    clock ^ ((sender as u64 + 1) * 0x9E37_79B9_7F4A_7C15)
}

/// Rewrites the frame's source address (low 16 bits) and source port from `r`, fixing both
/// checksums from the values in the frame (as `xdp_gen.c`).
fn randomize_source(frame: &mut [u8], r: u32) {
    const IP: usize = 14;
    const TCP: usize = IP + 20;
    let get = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let new_addr = r as u16;
    let new_port = ((r >> 16) as u16) | 0x0400;
    let (old_addr, old_port) = (get(frame, IP + 14), get(frame, TCP));
    let ip_check = csum_replace(get(frame, IP + 10), old_addr, new_addr);
    let tcp_check = csum_replace(
        csum_replace(get(frame, TCP + 16), old_addr, new_addr),
        old_port,
        new_port,
    );
    frame[IP + 10..IP + 12].copy_from_slice(&ip_check.to_be_bytes());
    frame[IP + 14..IP + 16].copy_from_slice(&new_addr.to_be_bytes());
    frame[TCP..TCP + 2].copy_from_slice(&new_port.to_be_bytes());
    frame[TCP + 16..TCP + 18].copy_from_slice(&tcp_check.to_be_bytes());
}

/// RFC 1624: the checksum `check` with one 16-bit word changed from `old` to `new`.
fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bench::frames::{self, Ends, TCP_SYN};

    #[test]
    fn rewritten_frames_have_the_checksums_of_freshly_built_ones() {
        let ends = |src| Ends {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src,
            dst: Ipv4Addr::new(198, 18, 0, 1),
        };
        let mut frame = frames::tcp(ends(Ipv4Addr::new(198, 19, 0, 1)), 1024, 8000, TCP_SYN);
        for r in [0x1234_abcd_u32, 0xffff_0000, 7] {
            randomize_source(&mut frame, r);
            let [a, b] = (r as u16).to_be_bytes();
            let port = ((r >> 16) as u16) | 0x0400;
            let fresh = frames::tcp(ends(Ipv4Addr::new(198, 19, a, b)), port, 8000, TCP_SYN);
            assert_eq!(frame, fresh);
        }
    }
}
