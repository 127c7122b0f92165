//! Command-line interface: `limiter run | stats | set | unset`.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::duration,
    config::keepalive::{Destinations, KeepaliveSpec},
    config::listener::{Action, LimitSpec, Listener, Scope},
    config::proxy_spec::ProxySpec,
};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/limiter/limiter.sock";

#[derive(Debug, Parser)]
#[command(
    name = "limiter",
    version,
    about = "Caps active TCP connections per listener in the kernel: excess SYNs are refused at XDP, \
             the count comes from the kernel's own TCP state."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to interfaces and enforce limits until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Print live numbers from the running agent.
    Stats(StatsArgs),
    /// Add or change a limit on the running agent (no reload, established connections untouched).
    Set(SetArgs),
    /// Re-read the running agent's --config file and apply the difference (like SIGHUP).
    Reload(ControlArgs),
    /// Remove a listener's limit on the running agent.
    Unset(UnsetArgs),
    /// Print the ConnectionLimitPolicy CustomResourceDefinition (YAML) that --kubernetes
    /// watches, for `kubectl apply -f -` (deploy/kubernetes/crd.yaml is this output).
    Crd,
}

#[derive(Clone, Debug, Args)]
pub struct ControlArgs {
    /// Control socket of the running agent.
    #[arg(long, env = "LIMITER_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET, value_name = "PATH")]
    pub control_socket: PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Interface whose incoming SYNs are admitted or refused (repeat for several);
    /// `default-route` is the interface of this network namespace's default route.
    #[arg(
        long = "iface",
        value_name = "IFACE",
        required_unless_present_any = ["config", "limits_in", "limits_per_source_in", "kubernetes"]
    )]
    pub ifaces: Vec<String>,

    /// YAML file with interfaces, listeners, limits, proxies and keepalive policies, in the
    /// seeds' field names (see examples/). Flags win over the file; SIGHUP or `limiter reload`
    /// re-reads it and applies the difference.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A listener's limit: LISTENER=N[:ACTION] (repeatable). LISTENER is PORT (every local
    /// address), IPv4:PORT or [IPv6]:PORT (0.0.0.0:P and [::]:P: every address of that family).
    /// N is 1-4294967295 active connections (established + handshakes in flight). ACTION
    /// overrides --over-limit for this listener, e.g. --limit '[::]:443=100:reset'.
    #[arg(long = "limit", value_name = "LISTENER=N[:ACTION]")]
    pub limits: Vec<LimitSpec>,

    /// At most N active connections to LISTENER from one client address (an IPv4 address, or
    /// an IPv6 /64): LISTENER=N[:ACTION] (repeatable), as nftables' `ct count` per saddr or
    /// nginx's limit_conn per address. Independent of the listener's --limit (either refuses);
    /// ACTION drop, reset or dry-run. Only established connections count, so forged sources
    /// never take a place.
    #[arg(long = "limit-per-source", value_name = "LISTENER=N[:ACTION]")]
    pub limits_per_source: Vec<LimitSpec>,

    /// A listener's limit inside another network namespace (a pod's): NETNS LISTENER=N[:ACTION]
    /// (repeatable), NETNS a path such as /run/netns/NAME or /proc/PID/ns/net, e.g.
    /// --limit-in /run/netns/pod-a 8000=5:reset. SYNs are admitted on the namespace's own
    /// interfaces (a pod's eth0: after the node's DNAT or decapsulation) and its sockets are
    /// counted apart from every other namespace's. When the path goes away, enforcement there
    /// stops; when it names a namespace again (a pod restarted), it starts again.
    #[arg(long = "limit-in", num_args = 2, value_names = ["NETNS", "LISTENER=N[:ACTION]"])]
    pub limits_in: Vec<String>,

    /// A per-source limit (as --limit-per-source) inside another network namespace:
    /// NETNS LISTENER=N[:ACTION] (repeatable).
    #[arg(
        long = "limit-per-source-in",
        num_args = 2,
        value_names = ["NETNS", "LISTENER=N[:ACTION]"]
    )]
    pub limits_per_source_in: Vec<String>,

    /// Kubernetes mode: watch the Pods on this node (--node-name) and every
    /// ConnectionLimitPolicy (limiter.dev/v1alpha1), and enforce each policy's limits inside the
    /// network namespace of each pod it selects. The API server is found as kubectl finds it
    /// (in-cluster service account, or KUBECONFIG).
    #[arg(long, requires = "node_name")]
    pub kubernetes: bool,

    /// This node's name, for --kubernetes (the DaemonSet passes spec.nodeName through the
    /// downward API).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// What happens to a SYN over the limit: drop it silently, or answer with a RST so the
    /// client fails at once.
    /// [default: drop]
    #[arg(long, value_enum, value_name = "ACTION")]
    pub over_limit: Option<Action>,

    /// How long a SYN's reservation is held for a handshake that does not complete.
    /// [default: 3s]
    #[arg(long, value_parser = parse_handshake_timeout, value_name = "DURATION")]
    pub handshake_timeout: Option<Duration>,

    /// How many listeners the agent can limit at once in its own network namespace (1-16384).
    /// Their kernel maps are made at start, and one of them is per CPU: each listener slot costs
    /// about 124 bytes per CPU (16,384 slots: 1.9 MiB per CPU, 124 MiB on a 64-CPU node). Limits
    /// in pods' namespaces have maps of their own (256 listeners each).
    /// [default: 16384]
    #[arg(long, value_parser = parse_max_listeners, value_name = "N")]
    pub max_listeners: Option<u32>,

    /// How XDP runs: native (in the driver, fastest), generic (in the kernel stack, works on
    /// any device), or auto (native where the driver supports it).
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto, value_name = "MODE")]
    pub xdp_mode: XdpAttachMode,

    /// With --xdp-mode native on a veth: its peer runs an XDP program of its own, so the
    /// reset action's RSTs (XDP_TX) reach it and `reset` is allowed there. Without this flag,
    /// native mode on a veth refuses `reset` (the RSTs would be lost).
    #[arg(long)]
    pub veth_peer_runs_xdp: bool,

    /// cgroup v2 directory whose sockets are counted (default: the cgroup v2 root, found in
    /// /proc/self/mountinfo).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Run a forwarding proxy on LISTEN to UPSTREAM (repeatable), e.g.
    /// '[::]:8000=198.18.0.3:1025'. LISTEN is written like a LISTENER (a bare port listens on
    /// every address of both families); its limit is a --limit like any other.
    #[arg(long = "proxy", value_name = "LISTEN=UPSTREAM")]
    pub proxies: Vec<ProxySpec>,

    /// With the close action: how long an over-limit connection is held open before it is closed
    /// (Gloo's delayBeforeClose, Envoy Gateway's closeDelay). 0 closes at once.
    #[arg(long, default_value = "0s", value_parser = duration::parse, value_name = "DURATION")]
    pub delay_before_close: Duration,

    /// TCP keepalive on every proxy upstream socket: time=D,probes=N,interval=D (Istio's
    /// tcpKeepalive); fields left out keep the OS defaults (7200s, 9, 75s).
    #[arg(long, value_name = "time=D,probes=N,interval=D")]
    pub upstream_keepalive: Option<KeepaliveSpec>,

    /// How long the proxy waits for an upstream to accept a connection (Istio's connectTimeout).
    /// [default: 10s]
    #[arg(long, value_parser = parse_connect_timeout, value_name = "DURATION")]
    pub connect_timeout: Option<Duration>,

    /// Most upstream connections a proxy keeps at once (Istio's maxConnections); beyond it new
    /// downstream connections are closed at once, nothing is queued. Default: unlimited.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_upstream_connections: Option<u32>,

    /// Keepalive for connections of other processes in this network namespace to CIDR[:PORT]
    /// (repeatable), set in the kernel when they connect, e.g.
    /// --keepalive-for 198.18.0.0/15:5432 time=60s,probes=3,interval=5s
    #[arg(long, num_args = 2, value_names = ["CIDR[:PORT]", "KEEPALIVE"])]
    pub keepalive_for: Vec<String>,

    /// Where to serve Prometheus metrics (/metrics) and probes (/healthz, /readyz); `off` to
    /// serve none. Loopback by default: expose it on purpose.
    /// [default: 127.0.0.1:9464]
    #[arg(long, value_parser = parse_metrics_addr, value_name = "ADDR|off")]
    pub metrics_addr: Option<MetricsAddr>,

    /// Log lines as `limiter: message key=value` (human) or one JSON object each (json).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// The most detailed lines logged, the agent's and the kernel programs' (the programs get
    /// it at load time: their disabled statements are removed by the verifier). `debug` adds
    /// per-packet events such as a RST that fell back to a drop.
    #[arg(long, value_enum, default_value_t = LogLevel::Info, env = "LIMITER_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: LogLevel,

    /// Pin maps and links under this bpffs directory: a restarted agent adopts them with their
    /// counts, and with --keep-pinned (or after SIGKILL) enforcement continues while no agent runs.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,

    /// On SIGINT/SIGTERM leave the pinned programs attached and the maps pinned (needs --pin-dir),
    /// e.g. for a rolling update; by default everything is detached and unpinned.
    #[arg(long, requires = "pin_dir")]
    pub keep_pinned: bool,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// One JSON object instead of the table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,

    /// Redraw the table in place every --interval until interrupted (like `watch`).
    #[arg(long)]
    pub watch: bool,

    /// Refresh period for --watch.
    #[arg(long, default_value = "1s", value_parser = parse_connect_timeout, value_name = "DURATION", requires = "watch")]
    pub interval: Duration,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// LISTENER=N[:ACTION], as for `run --limit`.
    #[arg(value_name = "LISTENER=N[:ACTION]")]
    pub limit: LimitSpec,

    /// The network namespace the listener is in (as for `run --limit-in`); default: the
    /// agent's own.
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<PathBuf>,

    /// Set the listener's per-source limit (as `run --limit-per-source`) rather than its own.
    #[arg(long)]
    pub per_source: bool,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct UnsetArgs {
    /// PORT, IPv4:PORT or [IPv6]:PORT, exactly as it was set.
    #[arg(value_name = "LISTENER")]
    pub listener: Listener,

    /// The network namespace it was set in (as for `run --limit-in`); default: the agent's
    /// own.
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<PathBuf>,

    /// Remove the listener's per-source limit rather than its own.
    #[arg(long)]
    pub per_source: bool,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    Auto,
    Native,
    Generic,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `--log-level`: the agent's own lines and the kernel programs' (aya-log) alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// `--metrics-addr`: an address, or `off`.
pub type MetricsAddr = Option<std::net::SocketAddr>;

fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("'{text}' is not IP:PORT, [IPv6]:PORT or off"))
}

pub fn parse_connect_timeout(text: &str) -> Result<Duration, String> {
    let timeout = duration::parse(text)?;
    if timeout.is_zero() {
        return Err(format!("'{text}' must be more than 0"));
    }
    Ok(timeout)
}

pub fn parse_max_listeners(text: &str) -> Result<u32, String> {
    let max = limiter_common::MAX_LISTENERS;
    match text.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{text}' is not a number of listeners from 1 to {max}"
        )),
    }
}

const MIN_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);

pub fn parse_handshake_timeout(text: &str) -> Result<Duration, String> {
    let timeout = duration::parse(text)?;
    if !(MIN_HANDSHAKE_TIMEOUT..=MAX_HANDSHAKE_TIMEOUT).contains(&timeout) {
        return Err(format!(
            "'{text}' is out of range: expected {} to {}",
            duration::display(MIN_HANDSHAKE_TIMEOUT),
            duration::display(MAX_HANDSHAKE_TIMEOUT)
        ));
    }
    Ok(timeout)
}

impl RunArgs {
    /// `--keepalive-for` pairs, parsed; errors name the flag.
    pub fn keepalive_policies(&self) -> Result<Vec<(Destinations, KeepaliveSpec)>, String> {
        self.keepalive_for
            .chunks(2)
            .map(|pair| {
                let (dest, spec) = (&pair[0], pair.get(1).map(String::as_str).unwrap_or(""));
                let destinations = dest
                    .parse::<Destinations>()
                    .map_err(|e| format!("--keepalive-for: {e}"))?;
                let keepalive = spec
                    .parse::<KeepaliveSpec>()
                    .map_err(|e| format!("--keepalive-for {dest}: {e}"))?;
                Ok((destinations, keepalive))
            })
            .collect()
    }

    /// `--limit` and `--limit-per-source`, as one list of limits.
    pub fn all_limits(&self) -> Vec<LimitSpec> {
        self.limits
            .iter()
            .copied()
            .chain(self.limits_per_source.iter().map(|l| l.per_source()))
            .collect()
    }

    /// `--limit-in` and `--limit-per-source-in` pairs, parsed; errors name the flag.
    pub fn netns_limits(&self) -> Result<Vec<(PathBuf, LimitSpec)>, String> {
        let pairs = [
            ("--limit-in", &self.limits_in, Scope::Listener),
            (
                "--limit-per-source-in",
                &self.limits_per_source_in,
                Scope::PerSource,
            ),
        ]
        .into_iter()
        .flat_map(|(flag, values, scope)| {
            values.chunks(2).map(move |pair| {
                let (path, spec) = (&pair[0], pair.get(1).map(String::as_str).unwrap_or(""));
                if !path.starts_with('/') {
                    return Err(format!(
                        "{flag} '{path}': not a path to a network namespace (e.g. \
                         /run/netns/NAME or /proc/PID/ns/net)"
                    ));
                }
                let spec = spec
                    .parse::<LimitSpec>()
                    .map_err(|e| format!("{flag} {path} '{spec}': {e}"))?;
                Ok((PathBuf::from(path), LimitSpec { scope, ..spec }))
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
        for (i, (path, spec)) in pairs.iter().enumerate() {
            if pairs[..i]
                .iter()
                .any(|(p, s)| p == path && s.same_limit(spec))
            {
                return Err(format!(
                    "{}-in {} '{spec}': listener {} is given twice in that namespace",
                    spec.scope.flag(),
                    path.display(),
                    spec.listener
                ));
            }
        }
        Ok(pairs)
    }

    /// Checks that need all flags at once; each error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        self.netns_limits()?;
        for (flag, limits) in [
            ("--limit", &self.limits),
            ("--limit-per-source", &self.limits_per_source),
        ] {
            for (i, spec) in limits.iter().enumerate() {
                if limits[..i]
                    .iter()
                    .any(|earlier| earlier.listener == spec.listener)
                {
                    return Err(format!(
                        "{flag} '{spec}': listener {} is given twice",
                        spec.listener
                    ));
                }
            }
        }
        for (i, proxy) in self.proxies.iter().enumerate() {
            if self.proxies[..i]
                .iter()
                .any(|earlier| earlier.listen == proxy.listen)
            {
                return Err(format!(
                    "--proxy '{proxy}': {} already has a proxy",
                    proxy.listen
                ));
            }
        }
        self.keepalive_policies()?;
        if self.veth_peer_runs_xdp && self.xdp_mode != XdpAttachMode::Native {
            return Err(
                "--veth-peer-runs-xdp: only means something with --xdp-mode native (auto and \
                 generic already deliver reset on a veth)"
                    .into(),
            );
        }
        for (i, iface) in self.ifaces.iter().enumerate() {
            if self.ifaces[..i].contains(iface) {
                return Err(format!("--iface '{iface}': interface is given twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn run(args: &[&str]) -> Result<RunArgs, String> {
        let cli =
            Cli::try_parse_from([&["limiter", "run"], args].concat()).map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        run.validate()?;
        Ok(*run)
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags() {
        let args = run(&[
            "--iface",
            "eth0",
            "--iface",
            "eth1",
            "--limit",
            "8000=1",
            "--limit",
            "[::]:443=5:reset",
            "--over-limit",
            "reset",
            "--handshake-timeout",
            "500ms",
            "--max-listeners",
            "1024",
        ])
        .unwrap();
        assert_eq!(args.ifaces, ["eth0", "eth1"]);
        assert_eq!(args.limits.len(), 2);
        assert_eq!(args.over_limit, Some(Action::Reset));
        assert_eq!(args.handshake_timeout, Some(Duration::from_millis(500)));
        assert_eq!(run(&["--iface", "eth0"]).unwrap().handshake_timeout, None);
        assert_eq!(args.max_listeners, Some(1024));
        assert_eq!(run(&["--iface", "eth0"]).unwrap().max_listeners, None);
        let proxy = run(&[
            "--iface",
            "eth0",
            "--proxy",
            "[::]:8000=198.18.0.3:1025",
            "--limit",
            "[::]:8000=1",
            "--over-limit",
            "close",
            "--delay-before-close",
            "2s",
            "--upstream-keepalive",
            "time=700s,probes=20,interval=10s",
            "--connect-timeout",
            "10s",
            "--max-upstream-connections",
            "100",
            "--keepalive-for",
            "198.18.0.0/15:5432",
            "time=60s,probes=3,interval=5s",
        ])
        .unwrap();
        assert_eq!(proxy.delay_before_close, Duration::from_secs(2));
        assert_eq!(proxy.max_upstream_connections, Some(100));
        let policies = proxy.keepalive_policies().unwrap();
        assert_eq!(policies[0].0.to_string(), "198.18.0.0/15:5432");
        assert_eq!(policies[0].1.probes, Some(3));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (args, needle) in [
            (&["--iface", "eth0", "--limit", "8000=0"][..], "--limit"),
            (
                &["--iface", "eth0", "--limit-per-source", "8000=x"][..],
                "--limit-per-source",
            ),
            (
                &[
                    "--iface",
                    "eth0",
                    "--limit-per-source",
                    "8000=1",
                    "--limit-per-source",
                    "8000=2",
                ][..],
                "--limit-per-source '8000=2': listener 8000 is given twice",
            ),
            (
                &["--iface", "eth0", "--limit", "8000=1", "--limit", "8000=2"][..],
                "given twice",
            ),
            (
                &["--iface", "eth0", "--over-limit", "bounce"][..],
                "--over-limit",
            ),
            (
                &["--iface", "eth0", "--handshake-timeout", "0s"][..],
                "--handshake-timeout",
            ),
            (
                &["--iface", "eth0", "--max-listeners", "0"][..],
                "'0' is not a number of listeners from 1 to 16384",
            ),
            (
                &["--iface", "eth0", "--max-listeners", "16385"][..],
                "'16385' is not a number of listeners from 1 to 16384",
            ),
            (&["--limit", "8000=1"][..], "--iface"),
            (
                &[
                    "--iface",
                    "eth0",
                    "--proxy",
                    "8000=198.18.0.3:1",
                    "--proxy",
                    "8000=198.18.0.4:1",
                ][..],
                "already has a proxy",
            ),
            (
                &[
                    "--iface",
                    "eth0",
                    "--keepalive-for",
                    "198.18.0.0/15:5432",
                    "time=0s",
                ][..],
                "--keepalive-for",
            ),
            (
                &[
                    "--iface",
                    "eth0",
                    "--keepalive-for",
                    "198.18.0.0:5432",
                    "time=5s",
                ][..],
                "--keepalive-for",
            ),
            (
                &["--iface", "eth0", "--upstream-keepalive", "probes=0"][..],
                "--upstream-keepalive",
            ),
            (
                &["--iface", "eth0", "--connect-timeout", "0s"][..],
                "--connect-timeout",
            ),
            (
                &["--iface", "eth0", "--max-upstream-connections", "0"][..],
                "--max-upstream-connections",
            ),
        ] {
            let err = run(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
