//! The agent's errors. Each says what failed and on what (the flag, the interface, the map,
//! the path) and, for a missing piece of the environment, what to do about it.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "missing capabilities {missing}: run limiter as root, or grant it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    )]
    Privileges { missing: String },

    #[error("--iface {0}: no such interface in this network namespace")]
    NoInterface(String),

    #[error(
        "--iface default-route: this network namespace has no default route (name the interface instead)"
    )]
    NoDefaultRoute,

    #[error(
        "cgroup v2 is not mounted: mount it (e.g. `mount -t cgroup2 none /sys/fs/cgroup`) or pass --cgroup DIR"
    )]
    NoCgroup2,

    #[error("--cgroup {0}: not a cgroup v2 directory (mount -t cgroup2 none DIR, then pass DIR)")]
    NotCgroup2(PathBuf),

    #[error(
        "--control-socket {0}: another agent is already listening there (stop it, or pass another --control-socket)"
    )]
    ControlSocketInUse(PathBuf),

    #[error("--control-socket {path}: {source}")]
    ControlSocket { path: PathBuf, source: io::Error },

    #[error("{call}: {source}")]
    Syscall {
        call: &'static str,
        source: io::Error,
    },

    #[error("loading the kernel programs: {0}")]
    Load(#[from] aya::EbpfError),

    #[error("kernel object has no {kind} `{name}` (agent and object out of step?)")]
    MissingFromObject {
        kind: &'static str,
        name: &'static str,
    },

    #[error(
        "kernel {kernel} has no BTF ({path} is missing: a kernel built without CONFIG_DEBUG_INFO_BTF): limiter loads its programs against it; run a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf { kernel: String, path: &'static str },

    #[error(
        "loading program `{program}` on kernel {}: {}",
        kernel_release(),
        load_failure(source)
    )]
    LoadProgram {
        program: &'static str,
        source: aya::programs::ProgramError,
    },

    #[error("--iface {iface}: attaching XDP: {source}")]
    AttachXdp {
        iface: String,
        source: aya::programs::ProgramError,
    },

    #[error("--iface {iface}: reading its driver (ethtool): {source}")]
    InterfaceDriver { iface: String, source: io::Error },

    /// Flags (or config fields) that each make sense alone but not together: the message names
    /// both. A usage error (exit 2), found only once the interfaces could be looked at.
    #[error("{0}")]
    Combination(String),

    #[error("--cgroup {path}: attaching sock_ops: {source}")]
    AttachSockOps {
        path: PathBuf,
        source: aya::programs::ProgramError,
    },

    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },

    #[error("--pin-dir {0}: not on a bpf filesystem (mount it: `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs(PathBuf),

    #[error(
        "--pin-dir {dir}: holds `{found}`, which is not limiter's pins (limiter pins under `v<LAYOUT>` only); use a directory of limiter's own for --pin-dir"
    )]
    NotLimitersPins { dir: PathBuf, found: String },

    #[error(
        "--pin-dir {dir}: holds `{found}`, not pins this limiter can adopt; remove the directory (enforcement by the old pins stops) or use another --pin-dir"
    )]
    IncompatiblePins { dir: PathBuf, found: String },

    #[error(
        "--pin-dir: {0} holds the counts of another network namespace than the one enforced in now (it was replaced while no agent ran); remove the pin directory"
    )]
    PinsOfAnotherNetns(PathBuf),

    #[error("--pin-dir {dir}: {source}")]
    PinDir { dir: PathBuf, source: io::Error },

    /// Without the adopt walk the new programs would admit a whole limit on top of what is
    /// open: the old ones, whose counts can only be too high, are better left enforcing.
    #[error(
        "--pin-dir {dir}: pins of map layout {layouts} cannot be taken over without counting the open connections, and the adopt walk cannot run here (see the warning above); they go on enforcing as they are"
    )]
    TakeoverWithoutAdoption { dir: PathBuf, layouts: String },

    #[error("--pin-dir: {what}: {source}")]
    Pin { what: String, source: io::Error },

    #[error("--metrics-addr {addr}: cannot listen: {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },

    #[error("--proxy {spec}: cannot listen: {source}")]
    ProxyBind { spec: String, source: io::Error },

    #[error("--keepalive-for {destinations}: {reason}")]
    KeepalivePolicy {
        destinations: String,
        reason: String,
    },

    #[error("listener {listener}: {reason}")]
    Listener { listener: String, reason: String },

    /// A `--limit-in` path that is not (or no longer) a network namespace.
    #[error("--limit-in {0}")]
    Netns(#[from] NetnsError),

    /// Something that failed while enforcing inside another network namespace.
    #[error("in network namespace {netns}: {source}")]
    InNetns {
        netns: String,
        source: Box<AgentError>,
    },
}

/// A program's load error in one line: the verifier's output (hundreds of lines) goes to the
/// debug log instead ([`AgentError::log_details`]).
fn load_failure(source: &aya::programs::ProgramError) -> String {
    match source {
        aya::programs::ProgramError::LoadError { io_error, .. } => format!(
            "the kernel's verifier rejected it ({io_error}); its output is in the debug log (--log-level debug)"
        ),
        other => other.to_string(),
    }
}

impl AgentError {
    /// Logs at debug what the one-line message leaves out: a rejected program's verifier output.
    pub fn log_details(&self) {
        match self {
            AgentError::LoadProgram {
                program,
                source: aya::programs::ProgramError::LoadError { verifier_log, .. },
            } => tracing::debug!(program, verifier = %verifier_log, "the verifier's output"),
            AgentError::InNetns { source, .. } => source.log_details(),
            _ => {}
        }
    }

    /// Whether the user's flags or file are at fault (exit 2), not the environment.
    pub fn is_usage(&self) -> bool {
        match self {
            AgentError::Combination(_) | AgentError::Netns(NetnsError::NotNetns { .. }) => true,
            AgentError::InNetns { source, .. } => source.is_usage(),
            _ => false,
        }
    }

    pub fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| AgentError::Map { map, source }
    }

    pub fn syscall(call: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| AgentError::Syscall { call, source }
    }
}

/// Why a path is not (or no longer) a network namespace the agent can enforce in.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {reason}")]
    NotNetns { path: PathBuf, reason: String },
    #[error("network namespace {path}: {call}: {source}")]
    Syscall {
        path: PathBuf,
        call: &'static str,
        source: io::Error,
    },
}

/// This kernel's release (`uname -r`), for errors that are about the kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "(unknown release)".to_owned())
}
