//! The pin directory (`--pin-dir`): maps and links pinned on bpffs so that enforcement and the
//! live counts outlive the agent (SIGKILL, `--keep-pinned`, a DaemonSet rolling update), and a
//! restarted agent adopts them instead of starting from zero.
//!
//! Layout: `DIR/v<MAP_LAYOUT_VERSION>/maps/<MAP>` and `DIR/v<N>/links/{accounting,xdp-<IFACE>}`;
//! each other network namespace enforced in (`--limit-in`) has the same layout under
//! `DIR/v<N>/netns/<PATH with / as _>/`.
//! The version directory is what stops an agent from misreading maps of another layout.
//!
//! Pins of another layout (`DIR/v<M>`, older or newer: a rolling update or a rollback across a
//! layout change) are taken over, never read: the agent makes its own maps under its own
//! version directory, swaps its programs into the links pinned there (each link keeps its
//! attachment, so enforcement never stops), counts the established connections anew with the
//! adopt walk, and then removes the other layout's directory, whose maps go with it. Anything
//! else in `DIR` is not limiter's, and stays an error.
use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use limiter_common::MAP_LAYOUT_VERSION;

use crate::error::AgentError;

const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
    version_dir: PathBuf,
    /// Pins of an earlier agent were found: adopt them.
    pub adopting: bool,
    /// Version directories of other map layouts found beside this one, whose links this agent
    /// takes over ([`PinDir::predecessor_link`]) and which it then removes.
    predecessors: Vec<PathBuf>,
}

impl PinDir {
    /// Checks that `root` is on bpffs and holds nothing of another layout, and creates it.
    pub fn open(root: &Path) -> Result<Self, AgentError> {
        let existing_ancestor = root
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(existing_ancestor) {
            return Err(AgentError::NotBpffs(root.to_owned()));
        }
        let version_name = format!("v{MAP_LAYOUT_VERSION}");
        let mut predecessors = Vec::new();
        if let Ok(entries) = fs::read_dir(root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == version_name {
                    continue;
                }
                if layout_version(&name).is_none() {
                    return Err(AgentError::NotLimitersPins {
                        dir: root.to_owned(),
                        found: name,
                    });
                }
                predecessors.push(entry.path());
            }
        }
        predecessors.sort();
        let version_dir = root.join(&version_name);
        let adopting = version_dir.join("maps").is_dir();
        for sub in ["maps", "links"] {
            fs::create_dir_all(version_dir.join(sub)).map_err(|source| AgentError::PinDir {
                dir: root.to_owned(),
                source,
            })?;
        }
        Ok(PinDir {
            root: root.to_owned(),
            version_dir,
            adopting,
            predecessors,
        })
    }

    /// Whether this start's pins stay if it fails: adopted ones (their programs go on enforcing
    /// as found), and a takeover's own (the other layout's links may run this layout's
    /// programs already, with these maps: a retry resumes from them).
    pub fn keep_on_failure(&self) -> bool {
        self.adopting || self.taking_over()
    }

    /// The directory as it was given (`--pin-dir`, or a namespace's under it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether pins of another map layout are here to be taken over.
    pub fn taking_over(&self) -> bool {
        !self.predecessors.is_empty()
    }

    /// The other layouts' version directories, as `v6, v8`, for the log.
    pub fn predecessor_names(&self) -> String {
        self.predecessors
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The link `link` (as [`PinDir::link_path`] names it) pinned by an agent of another map
    /// layout, if one is: its attachment is taken over by swapping this agent's program in.
    pub fn predecessor_link(&self, link: &str) -> Option<PathBuf> {
        self.predecessors
            .iter()
            .map(|dir| dir.join("links").join(link))
            .find(|path| path.exists())
    }

    /// Removes the other layouts' pins, once every link this agent needs from them is its own
    /// (what nothing else holds, their maps and the programs of links not taken over, the
    /// kernel frees).
    pub fn remove_predecessors(&self) -> io::Result<()> {
        for dir in &self.predecessors {
            match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The pins of the enforcement inside another network namespace, in a directory of their
    /// own under this one (named from the namespace's path): removed with this directory.
    pub fn for_netns(&self, netns: &Path) -> Result<PinDir, AgentError> {
        let name = netns_dir_name(netns);
        let mut dir = PinDir::open(&self.netns_root().join(&name))?;
        // The same namespace's pins under another layout: `DIR/v<M>/netns/<NAME>/v<M>`.
        dir.predecessors = self
            .predecessors
            .iter()
            .flat_map(|p| {
                fs::read_dir(p.join("netns").join(&name))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .filter(|e| layout_version(&e.file_name().to_string_lossy()).is_some())
            .map(|e| e.path())
            .collect();
        dir.predecessors.sort();
        Ok(dir)
    }

    /// The namespaces' pin directories found here, by name: what an earlier agent left.
    pub fn netns_dir_names(&self) -> Vec<String> {
        fs::read_dir(self.netns_root())
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Removes the pins an earlier agent left for a namespace no longer configured (their
    /// programs detach once nothing holds them).
    pub fn remove_netns_dir(&self, name: &str) -> io::Result<()> {
        fs::remove_dir_all(self.netns_root().join(name))
    }

    fn netns_root(&self) -> PathBuf {
        self.version_dir.join("netns")
    }

    pub fn map_path(&self, map: &str) -> PathBuf {
        self.version_dir.join("maps").join(map)
    }

    pub fn link_path(&self, link: &str) -> PathBuf {
        self.version_dir.join("links").join(link)
    }

    /// Removes every pin (the caller has closed or is about to close its own fds, after which
    /// the kernel detaches and frees what nothing else holds).
    pub fn remove(&self) -> io::Result<()> {
        fs::remove_dir_all(&self.version_dir)?;
        match fs::remove_dir(&self.root) {
            // Someone else's files live there too: leave the directory.
            Err(e)
                if e.kind() != io::ErrorKind::NotFound
                    && e.raw_os_error() != Some(libc::ENOTEMPTY) =>
            {
                Err(e)
            }
            _ => Ok(()),
        }
    }
}

/// The layout version a pin directory entry is named for (`v7`), if it is one.
fn layout_version(name: &str) -> Option<u32> {
    name.strip_prefix('v')?.parse().ok()
}

/// A namespace's pin directory name: its path with `/` as `_` (`/run/netns/pod-a` is
/// `_run_netns_pod-a`), one directory per path.
pub fn netns_dir_name(netns: &Path) -> String {
    netns.to_string_lossy().replace('/', "_")
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes into the zeroed struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe { libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC }
}

// The bpf(2) commands aya 0.14 does not expose for links it did not create.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Opens a pinned link.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let fd = object_at(BPF_OBJ_GET, path, 0)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins `fd` (a link taken over from another layout's pin) at `path`.
pub fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    object_at(BPF_OBJ_PIN, path, fd.as_raw_fd() as u32).map(drop)
}

/// BPF_OBJ_GET or BPF_OBJ_PIN of the object at `path` (`fd`: what to pin; 0 to get).
fn object_at(cmd: libc::c_long, path: &Path, fd: u32) -> io::Result<libc::c_long> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // union bpf_attr for BPF_OBJ_*: pathname (u64), bpf_fd (u32), file_flags (u32), ...
    let mut attr = [0u64; 4];
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = u64::from(fd);
    // SAFETY: attr is a valid, zero-padded bpf_attr for `cmd`; c_path outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(&attr)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Atomically swaps the program behind a link (Linux 5.7+; XDP links 5.9+): enforcement never
/// stops while the agent is replaced.
pub fn update_link(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    // union bpf_attr for BPF_LINK_UPDATE: link_fd, new_prog_fd, flags, old_prog_fd (all u32).
    let mut attr = [0u32; 8];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = program.as_raw_fd() as u32;
    // SAFETY: attr is a valid, zero-padded bpf_attr for BPF_LINK_UPDATE.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = link.as_fd();
    Ok(())
}
