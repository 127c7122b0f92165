//! Limits configured inside other network namespaces (`--limit-in`, `namespaces:` in the file,
//! a pod's from its policies), by the path that names each.
use std::path::PathBuf;

use crate::config::{
    keepalive::{Destinations, KeepaliveSpec},
    listener::LimitSpec,
};

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
