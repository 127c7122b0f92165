//! A network namespace named by a path (`/run/netns/NAME`, `/proc/PID/ns/net`, a CNI's
//! `/var/run/netns/cni-…`), and how the agent does something inside it.
//!
//! Interfaces, ifindexes, sockets and sock_diag all answer for the network namespace of the
//! *thread* that asks. So everything that must happen inside a namespace runs on a short-lived
//! thread of its own that first `setns`es into it ([`Netns::run_in`]): never on a tokio worker,
//! whose namespace every other task would then share. What such a thread creates (a socket, a
//! bpf_link on an ifindex) stays bound to that namespace after the thread is gone.
use std::{
    ffi::CString,
    fmt, fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use crate::error::NetnsError;

/// `ioctl(NS_GET_NSTYPE)` (Linux 4.11): which kind of namespace an nsfs file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace: the path it was found at and the inode that identifies it.
/// Holding it keeps the namespace alive, so it is dropped as soon as the path goes.
pub struct Netns {
    path: PathBuf,
    fd: OwnedFd,
    inode: u64,
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace.
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let not_netns = |reason: String| NetnsError::NotNetns {
            path: path.to_owned(),
            reason,
        };
        if !path.is_absolute() {
            return Err(not_netns(
                "not an absolute path (e.g. /run/netns/NAME or /proc/PID/ns/net)".into(),
            ));
        }
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| not_netns("the path holds a NUL byte".into()))?;
        // SAFETY: a valid NUL-terminated path; the fd is owned below.
        let raw = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            let error = io::Error::last_os_error();
            return Err(match error.kind() {
                io::ErrorKind::NotFound => not_netns("no such file".into()),
                _ => NetnsError::Syscall {
                    path: path.to_owned(),
                    call: "open",
                    source: error,
                },
            });
        }
        // SAFETY: `raw` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the ioctl takes no argument and only reads the file's namespace type.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
        if kind < 0 {
            let what = match fs::metadata(path) {
                Ok(m) if m.is_dir() => "a directory",
                Ok(m) if m.is_file() => "a regular file",
                _ => "not a namespace file",
            };
            return Err(not_netns(format!(
                "not a network namespace ({what}; expected /run/netns/NAME or /proc/PID/ns/net)"
            )));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(not_netns(
                "a namespace, but not a network namespace (expected /run/netns/NAME or \
                 /proc/PID/ns/net)"
                    .into(),
            ));
        }
        let inode = fs::File::from(fd.try_clone().map_err(|source| NetnsError::Syscall {
            path: path.to_owned(),
            call: "dup",
            source,
        })?)
        .metadata()
        .map_err(|source| NetnsError::Syscall {
            path: path.to_owned(),
            call: "fstat",
            source,
        })?
        .ino();
        Ok(Netns {
            path: path.to_owned(),
            fd,
            inode,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number: the same for every path to it, new for a new namespace.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Whether `path` still names this namespace (it is gone, or names a new one, when a pod
    /// restarted or `ip netns del` ran).
    pub fn still_at_path(&self) -> bool {
        current_inode(&self.path) == Some(self.inode)
    }

    /// Runs `work` on a thread of its own inside this namespace and returns what it returns.
    pub fn run_in<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `fd` is an open network namespace file for the whole scope; setns
                    // moves only this thread, which ends with the scope.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .map_err(|source| NetnsError::Syscall {
            path: self.path.clone(),
            call: if source.raw_os_error() == Some(libc::EPERM) {
                "setns (entering another network namespace needs CAP_SYS_ADMIN)"
            } else {
                "setns"
            },
            source,
        })
    }

    /// The namespace's cookie, as sock_ops sees it for its sockets.
    pub fn cookie(&self) -> Result<u64, NetnsError> {
        self.run_in(crate::enforce::preflight::netns_cookie)?
            .map_err(|e| NetnsError::NotNetns {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    /// The namespace's interfaces other than loopback: where its SYNs arrive (a pod has one,
    /// `eth0`).
    pub fn interfaces(&self) -> Result<Vec<String>, NetnsError> {
        self.run_in(|| {
            // SAFETY: if_nameindex returns a list terminated by a zero entry, freed below.
            let list = unsafe { libc::if_nameindex() };
            if list.is_null() {
                return Err(io::Error::last_os_error());
            }
            let mut names = Vec::new();
            let mut entry = list;
            // SAFETY: walks the list up to its terminating entry; names are NUL-terminated.
            unsafe {
                while (*entry).if_index != 0 {
                    let name = std::ffi::CStr::from_ptr((*entry).if_name)
                        .to_string_lossy()
                        .into_owned();
                    if name != "lo" {
                        names.push(name);
                    }
                    entry = entry.add(1);
                }
                libc::if_freenameindex(list);
            }
            Ok(names)
        })?
        .map_err(|source| NetnsError::Syscall {
            path: self.path.clone(),
            call: "if_nameindex",
            source,
        })
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

/// The inode of the network namespace `path` names now, if it names one.
pub fn current_inode(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_network_namespaces_are_named() {
        let relative = Netns::open(Path::new("run/netns/a")).err().unwrap();
        assert!(
            relative.to_string().contains("not an absolute path"),
            "{relative}"
        );
        let missing = Netns::open(Path::new("/nonexistent/netns")).err().unwrap();
        assert!(missing.to_string().contains("no such file"), "{missing}");
        let file = Netns::open(Path::new("/proc/self/status")).err().unwrap();
        assert!(
            file.to_string().contains("not a network namespace"),
            "{file}"
        );
        assert!(file.to_string().contains("/proc/self/status"), "{file}");
    }

    #[test]
    fn another_kind_of_namespace_is_not_taken() {
        let mnt = Netns::open(Path::new("/proc/self/ns/mnt")).err().unwrap();
        assert!(
            mnt.to_string().contains("but not a network namespace"),
            "{mnt}"
        );
    }

    #[test]
    fn the_agents_own_namespace_opens() {
        let own = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert!(own.still_at_path());
        assert_eq!(
            own.run_in(|| current_inode(Path::new("/proc/thread-self/ns/net")))
                .unwrap(),
            Some(own.inode())
        );
    }
}
