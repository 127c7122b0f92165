//! Connections that were there first: counting the connections already established on a
//! listener when its limit starts (an agent started without pins, a limit added with `set` or a
//! reload), and uncounting each exactly when it closes.
//!
//! sock_ops counts a connection as it becomes ESTABLISHED, and sees its close only if it asked
//! for state callbacks then, so a connection that was open before never passed through it: a
//! listener with N open would get N more. The agent lists the namespace's established
//! connections (sock_diag, with their socket cookies), keeps those on limited listeners, and
//! hands them to the `adopt` iterator (limiter-ebpf's `preexisting.rs`) through PREEXISTING.
//! Whether the kernel counts one already is in the socket's own tag, which only the iterator can
//! read; holding each socket's lock, it asks for the state callbacks of those not counted yet and
//! counts them as sock_ops would have; from then on their close is seen like any other.
use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::{Ebpf, programs::Iter};
use limiter_common::{map_names, program_names};

use crate::{enforce::limits::LimitTable, enforce::sock_diag::SockDiag, error::AgentError};

// bpf(2) commands and the attach type aya 0.14 does not let us reuse a link for.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// The `adopt` iterator, loaded and linked once per copy of the kernel object; each walk makes a
/// new iterator from the link, in the calling thread's network namespace.
pub struct Adopter {
    link: OwnedFd,
}

impl Adopter {
    /// Loads the iterator program (over TCP sockets, against the kernel's `btf`) and links it;
    /// nothing is walked yet.
    pub fn load(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<Adopter, AgentError> {
        let name = program_names::ADOPT;
        let load_error = |source| AgentError::LoadProgram {
            program: name,
            source,
        };
        let program: &mut Iter = ebpf
            .program_mut(name)
            .ok_or(AgentError::MissingFromObject {
                kind: "program",
                name,
            })?
            .try_into()
            .map_err(load_error)?;
        program.load("tcp", btf).map_err(load_error)?;
        let link = link_iterator(program).map_err(AgentError::syscall(
            "linking the TCP socket iterator (bpf BPF_LINK_CREATE)",
        ))?;
        Ok(Adopter { link })
    }

    /// Runs the iterator once over the TCP sockets of the calling thread's network namespace:
    /// how many connections it counted (those in PREEXISTING counted already it only takes
    /// out).
    fn walk(&self) -> io::Result<u64> {
        // Reading runs the program over every socket; it writes a counted one's cookie.
        Ok(walk(&self.link, io::sink())? / size_of::<u64>() as u64)
    }
}

/// Links a loaded iterator program over TCP sockets (aya 0.14 cannot make a link to walk more
/// than once).
fn link_iterator(program: &Iter) -> io::Result<OwnedFd> {
    let prog = program.fd().map_err(io::Error::other)?;
    // union bpf_attr for BPF_LINK_CREATE: prog_fd, target_fd, attach_type, flags (u32 each),
    // then the iterator's info (none for TCP sockets).
    let mut attr = [0u32; 16];
    attr[0] = prog.as_fd().as_raw_fd() as u32;
    attr[2] = BPF_TRACE_ITER;
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// Runs a linked iterator once over the TCP sockets of the calling thread's network namespace,
/// copying what its program writes to `output`; returns how many bytes it wrote.
fn walk(link: &OwnedFd, mut output: impl io::Write) -> io::Result<u64> {
    // union bpf_attr for BPF_ITER_CREATE: link_fd, flags.
    let mut attr = [link.as_raw_fd() as u32, 0];
    let mut walk = File::from(bpf(BPF_ITER_CREATE, &mut attr)?);
    io::copy(&mut walk, &mut output)
}

/// Links and runs a loaded TCP socket iterator once: what its program wrote.
pub fn run_iterator(program: &Iter) -> io::Result<Vec<u8>> {
    let mut output = Vec::new();
    walk(&link_iterator(program)?, &mut output)?;
    Ok(output)
}

fn bpf<const N: usize>(cmd: libc::c_long, attr: &mut [u32; N]) -> io::Result<OwnedFd> {
    // SAFETY: attr is a zero-padded bpf_attr for `cmd`, of its own length.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Counts the connections established on `table`'s limited listeners that the kernel programs
/// do not count yet, in the calling thread's network namespace (the table's). Returns how many
/// were counted; logs what could not be (enforcement goes on either way).
pub fn count(table: &mut LimitTable) -> u64 {
    let netns = table.netns.clone();
    let Some(adopter) = table.maps_mut().adopter.take() else {
        return 0;
    };
    let counted = count_with(table, &adopter);
    table.maps_mut().adopter = Some(adopter);
    let (counted, left) = match counted {
        Ok(counts) => counts,
        Err(error) => {
            tracing::warn!(
                netns,
                %error,
                "connections established before their listener was limited could not be counted"
            );
            return 0;
        }
    };
    if counted > 0 {
        tracing::info!(
            netns,
            counted,
            "counted connections established before their listener was limited"
        );
    }
    if left > 0 {
        tracing::warn!(
            netns,
            left,
            "connections established before their listener was limited could not be counted \
             (closed meanwhile, or the kernel refused their close callback): they do not count"
        );
    }
    counted
}

fn count_with(table: &mut LimitTable, adopter: &Adopter) -> Result<(u64, u64), AgentError> {
    let (connections, listening) = SockDiag::open()
        .and_then(|diag| Ok((diag.connections()?, diag.listening()?)))
        .map_err(AgentError::syscall(
            "listing established connections (sock_diag)",
        ))?;
    // Accepted connections only, as sock_ops counts (passive ones): a socket listens on their
    // local port. (An outgoing connection from a limited port is not the listener's.)
    let wanted: Vec<_> = connections
        .iter()
        .filter(|c| listening.iter().any(|l| l.port == c.flow.local_port))
        .filter_map(|c| Some((c.cookie, table.counting_key(&c.flow)?)))
        .collect();
    let (mut counted, mut left) = (0, 0);
    // PREEXISTING holds a bounded number at a time; most runs take one batch.
    for batch in wanted.chunks(table.maps().preexisting_batch.max(1) as usize) {
        let map = &mut table.maps_mut().preexisting;
        let walked = batch
            .iter()
            .try_for_each(|(cookie, source)| map.insert(cookie, source, 0))
            .map_err(AgentError::map(map_names::PREEXISTING))
            .and_then(|()| {
                adopter.walk().map_err(AgentError::syscall(
                    "walking the TCP sockets (adopt iterator)",
                ))
            });
        // The iterator removes what it counted, or found counted already; what is left was
        // not, and goes (a later run must not find stale entries).
        let map = &mut table.maps_mut().preexisting;
        for (cookie, _) in batch {
            if map.remove(cookie).is_ok() {
                left += 1;
            }
        }
        counted += walked?;
    }
    Ok((counted, left))
}
