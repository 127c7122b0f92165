//! Containers of a real container runtime as pods: Debian's podman (netavark networking, runc)
//! runs a busybox echo server from a directory (no image registry is reachable), on a bridge
//! network of its own with a hostPort, the way a CNI plugin and kube-proxy wire a pod: the
//! container's namespace is bind-mounted at `/run/netns/netns-UUID`, the node reaches it over
//! a bridge, and the hostPort is a DNAT rule on the node. Clients connect from the node (this
//! process's own namespace, where podman's bridge is) to the pod IP or to the hostPort.
//!
//! Networks are only ever in 198.18.0.0/15 (podman's default network, 10.88.0.0/16, is a range
//! the tests must never send to), and every container, its root directory and its network are
//! removed when their guards drop, also when a test fails.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    names,
    process::{run_bounded, run_ok},
    require_root,
};

/// The port the containers' echo server listens on (the containerPort).
pub const CONTAINER_PORT: u16 = 8000;
/// The hostPort it is published on, in the range Kubernetes gives NodePorts. One port serves
/// every container: each is published on its own network's gateway address, and the DNAT rule
/// and the runtime's reservation are for that address and port.
pub const HOST_PORT: u16 = 30_080;
/// How long one podman command may take (a `run` starts conmon, netavark and runc).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);
/// The /24s tried for a network, in 198.18.0.0/15 and clear of the test beds' addresses
/// (those count up from 198.18.0.0).
const SUBNETS: std::ops::RangeInclusive<u8> = 200..=254;

/// `podman` with the options this kind of machine needs on every call: runc (crun refuses its
/// hybrid cgroups), cgroupfs (no systemd to manage cgroups) and file events (no journald).
fn podman(args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ])
    .args(args);
    cmd
}

/// Runs podman to completion; `Err(stderr)` when it fails.
fn try_podman(args: &[&str]) -> Result<String, String> {
    let out = run_bounded(podman(args), PODMAN_TIMEOUT);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`podman {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn podman_ok(args: &[&str]) -> String {
    try_podman(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A podman bridge network with a /24 of 198.18.0.0/15; removed (with anything still on it)
/// when dropped.
pub struct ContainerNetwork {
    pub name: String,
    /// The bridge's address on the node: the hostPorts are bound here.
    pub gateway: Ipv4Addr,
}

impl ContainerNetwork {
    /// Creates a network on the first free /24 of [`SUBNETS`] (parallel tests hold others).
    pub fn create() -> ContainerNetwork {
        require_root();
        let name = names::unique("ctr", names::next_id());
        let mut refused = Vec::new();
        for third in SUBNETS {
            let subnet = format!("198.18.{third}.0/24");
            let gateway = Ipv4Addr::new(198, 18, third, 1);
            let gateway_arg = gateway.to_string();
            // No DNS server (aardvark-dns): the containers resolve nothing.
            let args = [
                "network",
                "create",
                "--disable-dns",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway_arg,
                &name,
            ];
            match try_podman(&args) {
                Ok(_) => return ContainerNetwork { name, gateway },
                Err(e) => refused.push(e),
            }
        }
        panic!(
            "no free /24 for a podman network in 198.18.{}-{}.0: {refused:#?}",
            SUBNETS.start(),
            SUBNETS.end()
        );
    }
}

impl Drop for ContainerNetwork {
    fn drop(&mut self) {
        // -f also removes containers still attached (a test that panicked before theirs).
        let _ = try_podman(&["network", "rm", "-f", &self.name]);
    }
}

/// A running container: busybox's `nc` echoing on [`CONTAINER_PORT`], published on the node at
/// [`HOST_PORT`] of the network's gateway address. Removed when dropped.
pub struct Container {
    pub name: String,
    /// The pod IP: the container's address on its network.
    pub ip: Ipv4Addr,
    gateway: Ipv4Addr,
    network: String,
    rootfs: PathBuf,
}

impl Container {
    pub fn run(network: &ContainerNetwork) -> Container {
        let name = names::unique("ctr", names::next_id());
        let rootfs = std::env::temp_dir().join(format!("{name}-rootfs"));
        busybox_rootfs(&rootfs);
        let mut container = Container {
            name,
            ip: Ipv4Addr::UNSPECIFIED,
            gateway: network.gateway,
            network: network.name.clone(),
            rootfs,
        };
        let publish = format!("{}:{HOST_PORT}:{CONTAINER_PORT}", network.gateway);
        let port = CONTAINER_PORT.to_string();
        let rootfs = container.rootfs.display().to_string();
        // Every option before --rootfs DIR, which ends them; -ll keeps listening, one `cat`
        // per connection.
        podman_ok(&[
            "run",
            "-d",
            "--name",
            &container.name,
            "--network",
            &container.network,
            "-p",
            &publish,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
            &rootfs,
            "/bin/busybox",
            "nc",
            "-ll",
            "-p",
            &port,
            "-e",
            "/bin/cat",
        ]);
        container.ip = container.inspect_ip();
        container
    }

    fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.name])
    }

    fn inspect_ip(&self) -> Ipv4Addr {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        let ip = self.inspect(&format);
        ip.parse()
            .unwrap_or_else(|e| panic!("container {}: IP {ip:?}: {e}", self.name))
    }

    /// The namespace the runtime bind-mounted for the container (`/run/netns/netns-UUID`).
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(self.inspect("{{.NetworkSettings.SandboxKey}}"))
    }

    /// `POD_IP:8000`.
    pub fn pod_addr(&self) -> String {
        format!("{}:{CONTAINER_PORT}", self.ip)
    }

    /// `NODE_BRIDGE_IP:HOST_PORT`, DNATed by netavark to the pod.
    pub fn host_port_addr(&self) -> String {
        format!("{}:{HOST_PORT}", self.gateway)
    }

    /// `podman restart`: the container gets a new network namespace (a new path); its IP is
    /// read again (netavark's IPAM may give it the same one or another).
    pub fn restart(&mut self) {
        podman_ok(&["restart", "-t", "0", &self.name]);
        self.ip = self.inspect_ip();
    }

    /// Fails if an XDP program is still attached in the container's namespace.
    pub fn assert_no_xdp(&self, context: &str) {
        let netns = self.netns_path().display().to_string();
        let links = run_ok("nsenter", &[&format!("--net={netns}"), "ip", "-o", "link"]);
        assert!(
            !links.contains("xdp"),
            "{context}: XDP still attached in container {} ({netns}):\n{links}",
            self.name
        );
    }

    /// Connections the container's kernel holds ESTABLISHED on [`CONTAINER_PORT`].
    pub fn established(&self) -> usize {
        let netns = self.netns_path().display().to_string();
        let out = run_ok(
            "nsenter",
            &[
                &format!("--net={netns}"),
                "ss",
                "-Htn",
                "state",
                "established",
                &format!("( sport = :{CONTAINER_PORT} )"),
            ],
        );
        out.lines().filter(|l| !l.trim().is_empty()).count()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = try_podman(&["rm", "-f", "-t", "0", &self.name]);
        let _ = std::fs::remove_dir_all(&self.rootfs);
    }
}

/// A root directory with a static busybox (Debian's busybox-static) and the applets the echo
/// server uses.
fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("creating the container's root directory");
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("copying /bin/busybox (busybox-static) into the container's root");
    for applet in ["sh", "nc", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("linking a busybox applet");
    }
}
