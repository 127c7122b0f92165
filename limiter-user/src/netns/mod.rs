//! Where limits apply besides the agent's own network namespace: other network namespaces
//! named by path (a pod's, `--limit-in /run/netns/NAME 8000=5`).
//!
//! - [`path`]: a namespace by path, and running work inside it.
//! - [`enforcement`]: everything the agent does in one namespace: its own copy of the kernel
//!   object (maps, so counts and slots are the namespace's own; XDP on its interfaces; an
//!   accounting program that counts only that namespace's sockets), its limit table, its
//!   sweeper, its flood watch and its unbound-listener check.
//! - [`dispatch`]: how the agent's accounting program on the cgroup root hands a namespace's
//!   sockets to that namespace's copy (a tail call), so namespaces cost connections nothing.
//! - [`registry`]: every namespace configured, which are enforced now, and the watch that drops
//!   a namespace when its path goes and picks a new one up when the path comes back.
pub mod dispatch;
pub mod enforcement;
pub mod path;
pub mod registry;

use std::path::PathBuf;

use crate::{
    config::keepalive::{Destinations, KeepaliveSpec},
    config::listener::LimitSpec,
};

pub use path::{Netns, NetnsError};
pub use registry::Namespaces;

/// What is configured inside one network namespace: listener limits, and keepalive policies of
/// its own (a pod's `ConnectionLimitPolicy.spec.keepalive`) on top of the agent's
/// `--keepalive-for`, which applies in every namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsLimits {
    pub path: PathBuf,
    pub limits: Vec<LimitSpec>,
    pub keepalive: Vec<(Destinations, KeepaliveSpec)>,
    /// The pod whose namespace it is (`NAMESPACE/NAME`), when Kubernetes mode found it: stats
    /// and metrics name it next to the path.
    pub pod: Option<String>,
}

/// Groups `(path, limit)` pairs by path, in the order paths first appear.
pub fn group(pairs: impl IntoIterator<Item = (PathBuf, LimitSpec)>) -> Vec<NetnsLimits> {
    let mut grouped: Vec<NetnsLimits> = Vec::new();
    for (path, spec) in pairs {
        match grouped.iter_mut().find(|n| n.path == path) {
            Some(entry) => entry.limits.push(spec),
            None => grouped.push(NetnsLimits {
                path,
                limits: vec![spec],
                keepalive: Vec::new(),
                pod: None,
            }),
        }
    }
    grouped
}
