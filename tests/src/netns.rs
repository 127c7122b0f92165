//! [`TestBed`]: a server namespace and a client namespace joined by a veth pair, with IPv4 and
//! IPv6 addresses, deleted (with everything started in it) when the guard drops, even on panic.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::Duration,
};

use crate::{
    names,
    poll::eventually,
    process::{Proc, SharedChild, run_bounded, run_ok, stop},
    require_root,
};

/// Which end of the bed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Where the agent and the servers run.
    Server,
    /// Where the clients run.
    Client,
}

pub struct TestBed {
    pub id: u32,
    pub srv_ns: String,
    pub cli_ns: String,
    pub srv_veth: String,
    pub cli_veth: String,
    pub srv_v4: Ipv4Addr,
    pub cli_v4: Ipv4Addr,
    pub srv_v6: Ipv6Addr,
    pub cli_v6: Ipv6Addr,
    /// Every process started in the bed, stopped when it drops.
    children: Mutex<Vec<SharedChild>>,
    /// Namespaces created so far (a half-built bed is cleaned up too).
    created: Mutex<Vec<String>>,
}

impl TestBed {
    /// Builds the two namespaces and the veth pair between them. Addresses: a distinct /30 of
    /// 198.18.0.0/15 and a distinct /64 of fd00:1e:57::/48 per bed (derived from the counter;
    /// the namespaces isolate them anyway, but distinct addresses keep logs unambiguous).
    pub fn new() -> TestBed {
        require_root();
        let id = names::next_id();
        let block = id % 32_768;
        let (second, third, fourth) = (18 + block / 16_384, (block / 64) % 256, (block % 64) * 4);
        let bed = TestBed {
            id,
            srv_ns: names::unique("srv", id),
            cli_ns: names::unique("cli", id),
            srv_veth: names::ifname('s', id),
            cli_veth: names::ifname('c', id),
            srv_v4: Ipv4Addr::new(198, second as u8, third as u8, fourth as u8 + 1),
            cli_v4: Ipv4Addr::new(198, second as u8, third as u8, fourth as u8 + 2),
            srv_v6: format!("fd00:1e:57:{id:x}::1").parse().unwrap(),
            cli_v6: format!("fd00:1e:57:{id:x}::2").parse().unwrap(),
            children: Mutex::new(Vec::new()),
            created: Mutex::new(Vec::new()),
        };
        for ns in [&bed.srv_ns, &bed.cli_ns] {
            run_ok("ip", &["netns", "add", ns]);
            bed.created.lock().unwrap().push(ns.clone());
        }
        // Created directly inside the namespaces: no interface of ours ever exists on the host.
        veth_pair(
            (&bed.srv_ns, &bed.srv_veth, bed.srv_v4, bed.srv_v6),
            (&bed.cli_ns, &bed.cli_veth, bed.cli_v4, bed.cli_v6),
        );
        // Nothing runs on the client's end: the agent must make its RSTs reach an ordinary
        // peer, as a pod or a client namespace is (auto mode attaches generic on a veth).
        let (ns, dev) = (bed.srv_ns.clone(), bed.srv_veth.clone());
        eventually("the veth pair to come up", Duration::from_secs(10), || {
            let link = run_ok("ip", &["-n", &ns, "-o", "link", "show", &dev]);
            if link.contains("LOWER_UP") {
                Ok(())
            } else {
                Err(link)
            }
        });
        bed
    }

    /// Gives the client a second address, `addr` (routed to it from the server over the veth),
    /// for tests that need two clients: [`crate::client::Hold::open_as`] connects from it.
    pub fn add_client_address(&self, addr: IpAddr) {
        let (prefix, nodad): (&str, &[&str]) = match addr {
            IpAddr::V4(_) => ("32", &[]),
            IpAddr::V6(_) => ("128", &["nodad"]),
        };
        let host = format!("{addr}/{prefix}");
        let mut add = vec![
            "-n",
            &self.cli_ns,
            "addr",
            "add",
            &host,
            "dev",
            &self.cli_veth,
        ];
        add.extend_from_slice(nodad);
        run_ok("ip", &add);
        run_ok(
            "ip",
            &[
                "-n",
                &self.srv_ns,
                "route",
                "add",
                &host,
                "dev",
                &self.srv_veth,
            ],
        );
    }

    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Server => &self.srv_ns,
            Side::Client => &self.cli_ns,
        }
    }

    /// `/run/netns/<srv>`, for `nsenter --net=` (the agent must keep the host's mounts).
    pub fn srv_netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.srv_ns)
    }

    /// A command to run inside a namespace (`ip netns exec`: fine for clients and servers,
    /// not for the agent, which needs the host's cgroup2 and bpffs mounts).
    pub fn command(&self, side: Side, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(side), program])
            .args(args);
        cmd
    }

    /// Runs a command inside a namespace to completion (bounded), asserting success.
    pub fn exec_ok(&self, side: Side, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.ns(side), program];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    /// Starts a long-running process that the bed stops when it drops.
    pub fn spawn(&self, name: &str, cmd: Command) -> Proc {
        let proc = Proc::spawn(name, cmd);
        self.track(proc.shared());
        proc
    }

    pub fn track(&self, child: SharedChild) {
        self.children.lock().unwrap().push(child);
    }

    /// Server-side sockets in ESTABLISHED on `port`, as the server namespace's kernel lists them.
    pub fn established_on(&self, port: u16) -> usize {
        let filter = format!("( sport = :{port} )");
        let out = self.exec_ok(
            Side::Server,
            "ss",
            &["-H", "-t", "-n", "state", "established", &filter],
        );
        out.lines().filter(|line| !line.trim().is_empty()).count()
    }

    /// `ip -o link show` in the server namespace: what shows whether XDP is attached.
    pub fn srv_links(&self) -> String {
        run_ok("ip", &["-n", &self.srv_ns, "-o", "link", "show"])
    }

    /// Asserts that no XDP program is attached to anything in the server namespace.
    pub fn assert_no_xdp(&self, context: &str) {
        let links = self.srv_links();
        assert!(
            !links.contains("xdp"),
            "{context}: XDP still attached in {}:\n{links}",
            self.srv_ns
        );
    }

    /// Routes [`crate::flood::FORGED_SOURCES`] from the server to the client namespace (once),
    /// so the server's SYN-ACKs to forged sources leave and are lost there, as on a real
    /// network; without a route the kernel would not even keep their handshakes.
    pub fn route_forged_sources(&self) {
        let routes = run_ok("ip", &["-n", &self.srv_ns, "route", "show"]);
        if routes.contains(crate::flood::FORGED_SOURCES) {
            return;
        }
        run_ok(
            "ip",
            &[
                "-n",
                &self.srv_ns,
                "route",
                "add",
                crate::flood::FORGED_SOURCES,
                "via",
                &self.cli_v4.to_string(),
                "dev",
                &self.srv_veth,
            ],
        );
    }

    /// Drops every TCP segment arriving in `side` for `port` (nftables, input hook). Used so a
    /// raw SYN's SYN-ACK is neither answered with a RST by the client kernel (there is no
    /// socket for it) nor delivered: the handshake then stays half-open on the server.
    pub fn drop_incoming_tcp_port(&self, side: Side, port: u16) {
        let table = format!("lim_drop_{port}");
        let port = port.to_string();
        self.exec_ok(side, "nft", &["add", "table", "inet", &table]);
        self.exec_ok(
            side,
            "nft",
            &[
                "add",
                "chain",
                "inet",
                &table,
                "input",
                "{ type filter hook input priority 0; policy accept; }",
            ],
        );
        self.exec_ok(
            side,
            "nft",
            &[
                "add", "rule", "inet", &table, "input", "tcp", "dport", &port, "drop",
            ],
        );
    }
}

/// A third namespace, "upstream", joined to the bed's server namespace by a second veth pair
/// with its own /30 of 198.18.0.0/15 and /64 of fd00:1e:57::/48: where a proxy's upstream
/// runs, so that it can be cut off (or made to ignore SYNs) without touching the client side.
/// Made by [`TestBed::add_upstream`]; its namespace is deleted with the bed (after the bed's
/// processes are stopped), so it needs no guard of its own.
#[derive(Clone, Debug)]
pub struct UpstreamNs {
    pub ns: String,
    /// The end in the server namespace.
    pub srv_veth: String,
    /// The end in the upstream namespace.
    pub ups_veth: String,
    /// The server namespace's addresses on this link (the proxy's upstream sockets use them).
    pub srv_v4: Ipv4Addr,
    pub srv_v6: Ipv6Addr,
    /// The upstream namespace's addresses (where upstream servers listen).
    pub ups_v4: Ipv4Addr,
    pub ups_v6: Ipv6Addr,
}

impl TestBed {
    /// Adds the "upstream" namespace ([`UpstreamNs`]); the server namespace reaches it over
    /// its directly connected /30 and /64, no routes needed.
    pub fn add_upstream(&self) -> UpstreamNs {
        let id = names::next_id();
        let block = id % 32_768;
        let (second, third, fourth) = (18 + block / 16_384, (block / 64) % 256, (block % 64) * 4);
        let ups = UpstreamNs {
            ns: names::unique("ups", id),
            srv_veth: names::ifname('p', id),
            ups_veth: names::ifname('u', id),
            srv_v4: Ipv4Addr::new(198, second as u8, third as u8, fourth as u8 + 1),
            ups_v4: Ipv4Addr::new(198, second as u8, third as u8, fourth as u8 + 2),
            srv_v6: format!("fd00:1e:57:{id:x}::1").parse().unwrap(),
            ups_v6: format!("fd00:1e:57:{id:x}::2").parse().unwrap(),
        };
        run_ok("ip", &["netns", "add", &ups.ns]);
        self.created.lock().unwrap().push(ups.ns.clone());
        veth_pair(
            (&self.srv_ns, &ups.srv_veth, ups.srv_v4, ups.srv_v6),
            (&ups.ns, &ups.ups_veth, ups.ups_v4, ups.ups_v6),
        );
        for (ns, dev) in [(&self.srv_ns, &ups.srv_veth), (&ups.ns, &ups.ups_veth)] {
            eventually(
                "the upstream veth pair to come up",
                Duration::from_secs(10),
                || {
                    let link = run_ok("ip", &["-n", ns, "-o", "link", "show", dev]);
                    if link.contains("LOWER_UP") {
                        Ok(())
                    } else {
                        Err(link)
                    }
                },
            );
        }
        ups
    }

    /// [`TestBed::command`] for any namespace of the bed by name (e.g. [`UpstreamNs::ns`]).
    pub fn command_in(&self, ns: &str, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]).args(args);
        cmd
    }

    /// [`TestBed::exec_ok`] for any namespace of the bed by name.
    pub fn exec_in_ok(&self, ns: &str, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }
}

impl UpstreamNs {
    /// Drops every packet in and out of the upstream namespace (nftables, input and output
    /// hooks, policy drop): the peer silently vanishes, nothing (not even a RST) comes back.
    pub fn cut_off(&self, bed: &TestBed) {
        let table = "lim_cut_off";
        bed.exec_in_ok(&self.ns, "nft", &["add", "table", "inet", table]);
        for hook in ["input", "output"] {
            bed.exec_in_ok(
                &self.ns,
                "nft",
                &[
                    "add",
                    "chain",
                    "inet",
                    table,
                    hook,
                    &format!("{{ type filter hook {hook} priority 0; policy drop; }}"),
                ],
            );
        }
    }

    /// Drops every TCP SYN (without ACK) arriving in the upstream namespace for `port`: an
    /// upstream that never answers a connect.
    pub fn drop_syns_to(&self, bed: &TestBed, port: u16) {
        let table = format!("lim_drop_syn_{port}");
        let port = port.to_string();
        bed.exec_in_ok(&self.ns, "nft", &["add", "table", "inet", &table]);
        bed.exec_in_ok(
            &self.ns,
            "nft",
            &[
                "add",
                "chain",
                "inet",
                &table,
                "input",
                "{ type filter hook input priority 0; policy accept; }",
            ],
        );
        bed.exec_in_ok(
            &self.ns,
            "nft",
            &[
                "add",
                "rule",
                "inet",
                &table,
                "input",
                "tcp",
                "dport",
                &port,
                "tcp",
                "flags",
                "&",
                "(syn|ack)",
                "==",
                "syn",
                "drop",
            ],
        );
    }

    /// Sockets in ESTABLISHED in the upstream namespace with local port `port` (the upstream
    /// server's side of each proxied connection).
    pub fn established_on(&self, bed: &TestBed, port: u16) -> usize {
        let filter = format!("( sport = :{port} )");
        let out = bed.exec_in_ok(
            &self.ns,
            "ss",
            &["-H", "-t", "-n", "state", "established", &filter],
        );
        out.lines().filter(|line| !line.trim().is_empty()).count()
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // Processes first (the agent gets SIGTERM and detaches), then the namespaces; deleting
        // a namespace deletes the veth pair in it.
        for child in self.children.lock().unwrap().drain(..) {
            stop(&child);
        }
        for ns in self.created.lock().unwrap().drain(..) {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "del", &ns]);
            let output = run_bounded(cmd, Duration::from_secs(30));
            if !output.status.success() {
                eprintln!(
                    "cleanup: ip netns del {ns} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
}

impl Default for TestBed {
    fn default() -> Self {
        TestBed::new()
    }
}

/// One end of a veth pair: namespace, interface, IPv4 (/30) and IPv6 (/64) address.
type VethEnd<'a> = (&'a str, &'a str, Ipv4Addr, Ipv6Addr);

/// Creates a veth pair with its ends directly inside two namespaces (no interface of ours ever
/// exists on the host), addresses both ends and brings them and `lo` up.
fn veth_pair(a: VethEnd<'_>, b: VethEnd<'_>) {
    run_ok(
        "ip",
        &[
            "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
        ],
    );
    for (ns, dev, v4, v6) in [a, b] {
        run_ok(
            "ip",
            &["-n", ns, "addr", "add", &format!("{v4}/30"), "dev", dev],
        );
        // nodad: the address is usable at once instead of after duplicate detection.
        run_ok(
            "ip",
            &[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ],
        );
        run_ok("ip", &["-n", ns, "link", "set", "lo", "up"]);
        run_ok("ip", &["-n", ns, "link", "set", dev, "up"]);
    }
}
