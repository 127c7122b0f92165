//! Finding a pod's network namespace on the node: the namespace that holds the pod's IP.
//!
//! Candidates are the namespaces the container runtime bind-mounts (`/run/netns/*`,
//! `/var/run/netns/*`: containerd's and CRI-O's `cni-…`), then those of running processes
//! (`/proc/PID/ns/net`, with hostPID), each looked at once (by inode), the agent's own left out.
//! The one with an interface holding the pod's `status.podIP` is the pod's, as Istio's CNI node
//! agent checks it; the IP is what makes this independent of the runtime and cgroup layout. A
//! pod IP belongs to one pod of the cluster at a time, so it cannot name another pod's
//! namespace. (Opening another user's `/proc/PID/ns/net` takes CAP_SYS_PTRACE; the runtime's
//! bind mounts need nothing more than read access to the directory.)
use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::netns::{Netns, path::current_inode};

/// Where container runtimes bind-mount pod network namespaces.
pub const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// The path and inode of the network namespace holding `ip`, if any on this node.
pub fn find(ip: IpAddr) -> Option<(PathBuf, u64)> {
    let own = current_inode(Path::new("/proc/self/ns/net"));
    let mut seen: BTreeSet<u64> = own.into_iter().collect();
    candidates()
        .into_iter()
        .filter_map(|path| {
            let inode = current_inode(&path).filter(|inode| seen.insert(*inode))?;
            Some((path, inode))
        })
        .find(|(path, _)| holds(path, ip))
}

fn candidates() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for dir in NETNS_DIRS {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .collect();
        names.sort();
        paths.extend(names);
    }
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    paths.extend(
        pids.into_iter()
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))),
    );
    paths
}

/// Whether the namespace at `path` has an interface with address `ip`.
fn holds(path: &Path, ip: IpAddr) -> bool {
    let Ok(netns) = Netns::open(path) else {
        return false;
    };
    netns.run_in(|| addresses().contains(&ip)).unwrap_or(false)
}

/// Every address of this thread's network namespace.
fn addresses() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut entry = list;
    // SAFETY: walks the list getifaddrs made; each address is read as its family says.
    unsafe {
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() {
                match (*addr).sa_family as i32 {
                    libc::AF_INET => {
                        let v4 = &*(addr as *const libc::sockaddr_in);
                        found.push(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr as *const libc::sockaddr_in6);
                        found.push(IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_addresses_are_listed() {
        assert!(addresses().contains(&IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn an_address_nowhere_on_the_node_is_not_found() {
        // TEST-NET-3, never configured here.
        assert_eq!(find(IpAddr::from([203, 0, 113, 77])), None);
    }
}
