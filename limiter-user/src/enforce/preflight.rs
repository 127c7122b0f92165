//! Checks of the environment before anything is loaded, so that a missing privilege, interface
//! or mount is reported by name instead of as a failed syscall, and nothing is half-attached.
use std::{
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use crate::error::{AgentError, kernel_release};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// CAP_BPF (or CAP_SYS_ADMIN on its behalf) loads the programs; CAP_PERFMON lets the verifier
/// accept their pointer arithmetic on map values and packets (without it the load fails with a
/// verifier error); CAP_NET_ADMIN attaches XDP and cgroup programs. Checked up front so that a
/// missing one is named instead of surfacing as EPERM from the verifier. Enforcing inside other
/// network namespaces (`other_netns`) also needs CAP_SYS_ADMIN: `setns` into a namespace is
/// how the agent attaches XDP to its interfaces and opens its sock_diag socket.
pub fn check_capabilities(other_netns: bool) -> Result<(), AgentError> {
    use caps::{CapSet, Capability};
    let effective = caps::read(None, CapSet::Effective).map_err(|e| {
        AgentError::syscall("reading this process's capabilities")(io::Error::other(e))
    })?;
    let has = |cap: Capability| effective.contains(&cap);
    let admin = has(Capability::CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(Capability::CAP_BPF) && !admin {
        missing.push("CAP_BPF");
    }
    if !has(Capability::CAP_PERFMON) && !admin {
        missing.push("CAP_PERFMON");
    }
    if !has(Capability::CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if other_netns && !admin {
        missing.push("CAP_SYS_ADMIN (for --limit-in: entering another network namespace)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AgentError::Privileges {
            missing: missing.join(", "),
        })
    }
}

/// `--iface default-route`: the interface of this namespace's default route, so one DaemonSet
/// spec fits nodes whose NICs are named differently.
pub const DEFAULT_ROUTE: &str = "default-route";

/// Resolves `default-route` (IPv4 default route first, then IPv6) and drops repeats.
pub fn resolve_interfaces(ifaces: &[String]) -> Result<Vec<String>, AgentError> {
    let mut resolved: Vec<String> = Vec::new();
    for iface in ifaces {
        let name = if iface == DEFAULT_ROUTE {
            let v4 = fs::read_to_string("/proc/net/route").unwrap_or_default();
            let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
            default_route_v4(&v4)
                .or_else(|| default_route_v6(&v6))
                .ok_or(AgentError::NoDefaultRoute)?
        } else {
            iface.clone()
        };
        if !resolved.contains(&name) {
            resolved.push(name);
        }
    }
    Ok(resolved)
}

/// `/proc/net/route`: Iface, Destination, Gateway, Flags, RefCnt, Use, Metric, Mask, ...; the
/// default route has destination and mask 0. The lowest metric wins, as in the kernel.
fn default_route_v4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let up = u32::from_str_radix(f.get(3)?, 16).ok()? & 1 != 0;
            (up && *f.get(1)? == "00000000" && *f.get(7)? == "00000000")
                .then(|| Some((f.get(6)?.parse::<u32>().ok()?, f[0].to_owned())))?
        })
        .min()
        .map(|(_, iface)| iface)
}

/// `/proc/net/ipv6_route`: dest, dest prefix len, src, src len, next hop, metric, refcnt, use,
/// flags, iface. The default route is `::/0`; the loopback "unreachable" default is skipped.
fn default_route_v6(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let default = f.first()?.bytes().all(|b| b == b'0') && *f.get(1)? == "00";
            let iface = *f.get(9)?;
            (default && iface != "lo")
                .then(|| Some((u32::from_str_radix(f.get(5)?, 16).ok()?, iface.to_owned())))?
        })
        .min()
        .map(|(_, iface)| iface)
}

pub fn check_interface(iface: &str) -> Result<u32, AgentError> {
    let name =
        std::ffi::CString::new(iface).map_err(|_| AgentError::NoInterface(iface.to_owned()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(AgentError::NoInterface(iface.to_owned())),
        index => Ok(index),
    }
}

/// Where the kernel publishes its own type information (BTF), which the socket iterator and the
/// tracepoint program are loaded against.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF: without it (a kernel built without CONFIG_DEBUG_INFO_BTF) limiter does not
/// start, rather than start with half its programs.
pub fn check_btf() -> Result<(), AgentError> {
    if Path::new(VMLINUX_BTF).is_file() {
        return Ok(());
    }
    Err(AgentError::NoBtf {
        kernel: kernel_release(),
        path: VMLINUX_BTF,
    })
}

/// The cgroup v2 directory to attach sock_ops to: `--cgroup`, or the cgroup v2 root mount.
pub fn cgroup_root(flag: Option<&Path>) -> Result<PathBuf, AgentError> {
    match flag {
        Some(path) if is_cgroup2(path) => Ok(path.to_owned()),
        Some(path) => Err(AgentError::NotCgroup2(path.to_owned())),
        None => {
            let mounts = procfs::process::Process::myself()
                .and_then(|me| me.mountinfo())
                .map_err(|e| {
                    AgentError::syscall("reading /proc/self/mountinfo")(io::Error::other(e))
                })?;
            find_cgroup2_mount(&mounts)
                .filter(|path| is_cgroup2(path))
                .ok_or(AgentError::NoCgroup2)
        }
    }
}

/// The shortest cgroup2 mount point (the root of the hierarchy when several are mounted).
fn find_cgroup2_mount(mounts: &procfs::process::MountInfos) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|mount| mount.fs_type == "cgroup2")
        .map(|mount| mount.mount_point.clone())
        .min_by_key(|path| path.as_os_str().len())
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes into the zeroed struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe {
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// The cookie of the network namespace this process runs in (Linux 5.14+), which accounting
/// compares with each socket's.
pub fn netns_cookie() -> Result<u64, AgentError> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(AgentError::syscall("socket")(
            std::io::Error::last_os_error(),
        ));
    }
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(AgentError::syscall(
            "getsockopt(SO_NETNS_COOKIE) (needs Linux 5.14+)",
        )(err));
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_default_route_interface() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0112A8C6\t0003\t0\t0\t200\t00000000\t0\t0\t0
ens5\t00000000\t0112A8C6\t0003\t0\t0\t100\t00000000\t0\t0\t0
ens5\t0012A8C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0";
        assert_eq!(default_route_v4(v4).as_deref(), Some("ens5"));
        assert_eq!(default_route_v4("Iface\tDestination\n"), None);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd001e57000000000000000000000001 00000400 00000001 00000000 00000003     eth2";
        assert_eq!(default_route_v6(v6).as_deref(), Some("eth2"));
    }

    #[test]
    fn finds_the_cgroup2_root_in_mountinfo() {
        let hybrid = "\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd";
        let parse = |text: &str| {
            use procfs::FromBufRead as _;
            procfs::process::MountInfos::from_buf_read(text.as_bytes()).unwrap()
        };
        assert_eq!(
            find_cgroup2_mount(&parse(hybrid)),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let none = "25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw";
        assert_eq!(find_cgroup2_mount(&parse(none)), None);
    }
}
