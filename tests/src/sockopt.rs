//! Reading the socket options of another process's live sockets: `pidfd_open` +
//! `pidfd_getfd` (Linux 5.6+, needs ptrace rights over the process: root) duplicate its socket
//! fds into the test, where `getpeername` picks the one connected to a given address and
//! `getsockopt` reads what the process set on it. The duplicate refers to the same socket, so
//! what is read is exactly what the process's socket has.
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// SO_KEEPALIVE and TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT of one socket, as the kernel
/// reports them (OS defaults: 0 / 7200 / 75 / 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Keepalive {
    pub keepalive: i32,
    pub idle: i32,
    pub intvl: i32,
    pub cnt: i32,
}

impl Keepalive {
    /// The kernel's defaults for a socket nobody set keepalive on.
    pub const OS_DEFAULT: Keepalive = Keepalive {
        keepalive: 0,
        idle: 7200,
        intvl: 75,
        cnt: 9,
    };
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd and out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The keepalive settings of a TCP socket.
pub fn keepalive_of(fd: BorrowedFd<'_>) -> io::Result<Keepalive> {
    Ok(Keepalive {
        keepalive: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE)?,
        idle: getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)?,
        intvl: getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL)?,
        cnt: getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT)?,
    })
}

/// The peer address of a connected socket (`None` for a listener or an unconnected one).
pub fn peer_of(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    let peer = socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()?;
    // A dual-stack socket reports an IPv4 peer as IPv4-mapped; fold it back.
    Some(SocketAddr::new(peer.ip().to_canonical(), peer.port()))
}

/// A pidfd for `pid` (closed when dropped).
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(pid, 0) has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A duplicate of the process's file descriptor `target` (same open file).
fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(pidfd, targetfd, 0) has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Duplicates of every socket fd of process `pid` whose peer is `peer`, with the fd number it
/// has in that process. A socket is listed in `/proc/PID/fd` as `socket:[INODE]`; fds that
/// close while we look are skipped.
pub fn sockets_connected_to(pid: u32, peer: SocketAddr) -> io::Result<Vec<(i32, OwnedFd)>> {
    let pidfd = pidfd_open(pid)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(dup) = pidfd_getfd(pidfd.as_fd(), number) else {
            continue;
        };
        if peer_of(dup.as_fd()) == Some(peer) {
            found.push((number, dup));
        }
    }
    Ok(found)
}
