//! The `adopt` iterator over TCP sockets (limiter-ebpf's `preexisting.rs`): loaded and linked
//! once per copy of the kernel object, walked in the calling thread's network namespace each
//! time connections that were there first are counted ([`super::preexisting`]), and once at
//! start to probe the kernel ([`super::features`]). aya 0.14 links an iterator for one walk
//! only, so the link and the walks are made here with bpf(2).
use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::{Ebpf, programs::Iter};
use limiter_common::program_names;

use crate::error::AgentError;

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
    pub fn walk(&self) -> io::Result<u64> {
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
