//! A Kubernetes node in namespaces: the bed's server namespace is the node (where the agent
//! runs, as a DaemonSet does), pods are namespaces of their own behind a veth each with the
//! node routing to them (as a CNI plugin sets up), a NodePort is a DNAT rule on the node (as
//! kube-proxy writes it), and clients come from the bed's client namespace, outside the node.
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use crate::{
    netns::{TestBed, UpstreamNs},
    poll::eventually,
    process::run_ok,
};

/// A pod: its namespace and its address (the node reaches it over their veth).
#[derive(Clone, Debug)]
pub struct Pod {
    pub link: UpstreamNs,
}

impl Pod {
    pub fn ns(&self) -> &str {
        &self.link.ns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.link.ups_v4
    }

    /// `/run/netns/<pod>`: what the agent is given.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(self.ns())
    }

    /// `POD_IP:PORT`.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip())
    }
}

impl TestBed {
    /// Makes the server namespace a node that routes: forwarding on, and the client reaching
    /// pods through it (once per bed).
    fn make_node(&self) {
        run_ok(
            "ip",
            &[
                "netns",
                "exec",
                &self.srv_ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
    }

    /// Adds a pod: a namespace behind a veth from the node, its default route via the node,
    /// and a route to it from the client namespace through the node.
    pub fn add_pod(&self) -> Pod {
        self.make_node();
        let pod = Pod {
            link: self.add_upstream(),
        };
        self.route_pod(&pod);
        pod
    }

    fn route_pod(&self, pod: &Pod) {
        run_ok(
            "ip",
            &[
                "-n",
                pod.ns(),
                "route",
                "add",
                "default",
                "via",
                &pod.link.srv_v4.to_string(),
            ],
        );
        let routes = run_ok("ip", &["-n", &self.cli_ns, "route", "show"]);
        let host_route = format!("{}/32", pod.ip());
        if !routes.contains(&pod.ip().to_string()) {
            run_ok(
                "ip",
                &[
                    "-n",
                    &self.cli_ns,
                    "route",
                    "add",
                    &host_route,
                    "via",
                    &self.srv_v4.to_string(),
                ],
            );
        }
    }

    /// A pod restart: its namespace deleted and made again at the same path, with the same
    /// interface names and address (a new network namespace: new inode, new cookie).
    ///
    /// The old namespace (and so its veth) lives on while anything holds it: the agent lets go
    /// of it within a second of its path going away, which this waits for (a CNI would name the
    /// new veth differently and not wait).
    pub fn restart_pod(&self, pod: &Pod) {
        let link = &pod.link;
        run_ok("ip", &["netns", "del", pod.ns()]);
        eventually(
            "the old pod namespace to be freed (its veth gone from the node)",
            Duration::from_secs(15),
            || {
                let out = run_ok("ip", &["-n", &self.srv_ns, "-o", "link", "show"]);
                if out.contains(&format!("{}@", link.srv_veth)) {
                    Err(out)
                } else {
                    Ok(())
                }
            },
        );
        run_ok("ip", &["netns", "add", pod.ns()]);
        run_ok(
            "ip",
            &[
                "link",
                "add",
                &link.srv_veth,
                "netns",
                &self.srv_ns,
                "type",
                "veth",
                "peer",
                "name",
                &link.ups_veth,
                "netns",
                &link.ns,
            ],
        );
        for (ns, dev, v4) in [
            (self.srv_ns.as_str(), &link.srv_veth, link.srv_v4),
            (link.ns.as_str(), &link.ups_veth, link.ups_v4),
        ] {
            run_ok(
                "ip",
                &["-n", ns, "addr", "add", &format!("{v4}/30"), "dev", dev],
            );
            run_ok("ip", &["-n", ns, "link", "set", "lo", "up"]);
            run_ok("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        eventually("the pod's veth to come up", Duration::from_secs(10), || {
            let out = run_ok(
                "ip",
                &["-n", &link.ns, "-o", "link", "show", &link.ups_veth],
            );
            if out.contains("LOWER_UP") {
                Ok(())
            } else {
                Err(out)
            }
        });
        self.route_pod(pod);
    }

    /// A NodePort: connections to the node's address on `node_port` are DNATed to the pod's
    /// `port` (nftables, nat prerouting, as kube-proxy's nftables mode does).
    pub fn node_port(&self, node_port: u16, pod: &Pod, port: u16) {
        let table = format!("lim_nodeport_{node_port}");
        self.exec_ok(crate::Side::Server, "nft", &["add", "table", "ip", &table]);
        self.exec_ok(
            crate::Side::Server,
            "nft",
            &[
                "add",
                "chain",
                "ip",
                &table,
                "prerouting",
                "{ type nat hook prerouting priority -100; policy accept; }",
            ],
        );
        self.exec_ok(
            crate::Side::Server,
            "nft",
            &[
                "add",
                "rule",
                "ip",
                &table,
                "prerouting",
                "tcp",
                "dport",
                &node_port.to_string(),
                "dnat",
                "to",
                &pod.addr(port),
            ],
        );
    }

    /// An overlay between the client and the node, as a VXLAN CNI builds one between nodes:
    /// the client reaches `pod` through a VXLAN tunnel over the bed's veth, and the node
    /// decapsulates and routes to the pod. Returns the node's VXLAN device.
    pub fn overlay_to_pod(&self, pod: &Pod) -> String {
        let (node_dev, client_dev) = (format!("vxn{}", self.id), format!("vxc{}", self.id));
        for (ns, dev, local, remote, underlay, addr) in [
            (
                &self.srv_ns,
                &node_dev,
                self.srv_v4,
                self.cli_v4,
                &self.srv_veth,
                "198.18.255.1",
            ),
            (
                &self.cli_ns,
                &client_dev,
                self.cli_v4,
                self.srv_v4,
                &self.cli_veth,
                "198.18.255.2",
            ),
        ] {
            run_ok(
                "ip",
                &[
                    "-n",
                    ns,
                    "link",
                    "add",
                    dev,
                    "type",
                    "vxlan",
                    "id",
                    "42",
                    "local",
                    &local.to_string(),
                    "remote",
                    &remote.to_string(),
                    "dstport",
                    "4789",
                    "dev",
                    underlay,
                ],
            );
            run_ok(
                "ip",
                &["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev],
            );
            run_ok("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        run_ok(
            "ip",
            &[
                "-n",
                &self.cli_ns,
                "route",
                "replace",
                &format!("{}/32", pod.ip()),
                "via",
                "198.18.255.1",
                "dev",
                &client_dev,
            ],
        );
        node_dev
    }

    /// Packets the node received on `dev`.
    pub fn rx_packets(&self, dev: &str) -> u64 {
        let out = run_ok("ip", &["-n", &self.srv_ns, "-s", "-o", "link", "show", dev]);
        // `-o` puts the counters on one line: "RX: bytes packets ... \ <bytes> <packets> ...".
        out.split("RX:")
            .nth(1)
            .and_then(|rx| rx.split('\\').nth(1))
            .and_then(|numbers| numbers.split_whitespace().nth(1))
            .and_then(|packets| packets.parse().ok())
            .unwrap_or_else(|| panic!("no RX counters in {out}"))
    }

    /// `ip -o link show` inside a pod: whether XDP is attached there.
    pub fn pod_links(&self, pod: &Pod) -> String {
        run_ok("ip", &["-n", pod.ns(), "-o", "link", "show"])
    }
}
