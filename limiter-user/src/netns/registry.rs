//! Every network namespace limits are configured in (`--limit-in`, `namespaces:` in the file,
//! `limiter set --netns`), and which of them are enforced now.
//!
//! A namespace is enforced while its path names it. Every [`WATCH_EVERY`] the paths are looked
//! at again: a path that is gone (`ip netns del`, the pod's process exited) or names a new
//! namespace (a pod restarted) stops the old enforcement (programs detached, maps freed, pins
//! removed, its listeners gone from stats and metrics); a path that names a namespace again is
//! picked up with the limits configured for it, without restarting the agent.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    config::keepalive::{Destinations, KeepaliveSpec},
    config::listener::{LimitSpec, Listener, Scope},
    config::namespaces::NetnsLimits,
    enforce::pins::netns_dir_name,
    error::AgentError,
    netns::{
        Netns,
        dispatch::Dispatch,
        enforcement::{Environment, NetnsEnforcement, Place},
        path::current_inode,
    },
    observe::stats::Report,
};

/// How often the paths are looked at: how long a namespace that went away stays held (its
/// enforcement keeps it alive), and how soon a new one at the path is enforced.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

pub struct Namespaces {
    env: Environment,
    dispatch: Dispatch,
    configured: BTreeMap<PathBuf, Configured>,
}

struct Configured {
    limits: Vec<LimitSpec>,
    /// Keepalive policies of this namespace's own, over the agent's.
    keepalive: Vec<(Destinations, KeepaliveSpec)>,
    /// The pod it belongs to, if Kubernetes mode found it.
    pod: Option<String>,
    state: State,
    source: Source,
}

/// Who configured a namespace: a reload changes only the flags' and file's, the Kubernetes
/// watch only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--limit-in`, `namespaces:` in the file, `limiter set --netns`.
    Settings,
    /// `--kubernetes`: a pod selected by a ConnectionLimitPolicy.
    Kubernetes,
}

enum State {
    Enforcing(Box<NetnsEnforcement>),
    /// The path names no network namespace now; the last error, said once.
    Waiting {
        last_error: String,
    },
}

impl Namespaces {
    pub fn new(env: Environment, dispatch: Dispatch) -> Namespaces {
        Namespaces {
            env,
            dispatch,
            configured: BTreeMap::new(),
        }
    }

    /// Enforces in every namespace of `all` (each path must name a network namespace now), or
    /// in none: on an error what was started is stopped. Pins an earlier agent left for
    /// namespaces not configured any more are removed.
    pub fn start(&mut self, all: &[NetnsLimits]) -> Result<(), AgentError> {
        if let Some(pins) = &self.env.pins {
            for stale in pins
                .netns_dir_names()
                .into_iter()
                .filter(|name| !all.iter().any(|n| netns_dir_name(&n.path) == *name))
            {
                tracing::info!(pins = %stale, "removing the pins of a namespace no longer configured");
                pins.remove_netns_dir(&stale)
                    .map_err(|source| AgentError::Pin {
                        what: format!("removing {stale}"),
                        source,
                    })?;
            }
        }
        for netns in all {
            if let Err(e) = self.start_new(netns, Source::Settings) {
                let keep = self.env.pins.as_ref().is_some_and(|p| p.keep_on_failure());
                self.stop_all(keep);
                return Err(e);
            }
        }
        self.dispatch.prune();
        Ok(())
    }

    /// Opens the namespace at `netns.path`, starts enforcing there and records it.
    fn start_new(&mut self, netns: &NetnsLimits, source: Source) -> Result<(), AgentError> {
        let enforcement = NetnsEnforcement::start(
            Place::Netns(Netns::open(&netns.path)?),
            &netns.limits,
            &netns.keepalive,
            &self.env,
            Some(&mut self.dispatch),
        )?;
        self.configured.insert(
            netns.path.clone(),
            Configured {
                limits: netns.limits.clone(),
                keepalive: netns.keepalive.clone(),
                pod: netns.pod.clone(),
                state: State::Enforcing(Box::new(enforcement)),
                source,
            },
        );
        Ok(())
    }

    /// Whether any namespace is configured.
    pub fn is_empty(&self) -> bool {
        self.configured.is_empty()
    }

    /// Drops enforcements whose path went or names another namespace; picks up paths that name
    /// a namespace again.
    pub fn refresh(&mut self) {
        for (path, configured) in &mut self.configured {
            if let State::Enforcing(enforcement) = &configured.state {
                if enforcement.netns().is_some_and(Netns::still_at_path) {
                    continue;
                }
                let replaced = current_inode(path).is_some();
                tracing::warn!(
                    netns = %path.display(),
                    "the network namespace {}: its programs, counts and metrics are removed{}",
                    if replaced { "at this path was replaced" } else { "went away" },
                    match (configured.source, replaced) {
                        (Source::Kubernetes, _) => "; the pod's new namespace is looked for by its IP",
                        (Source::Settings, true) => "; enforcing in the new one",
                        (Source::Settings, false) => "; its limits apply again when the path names a namespace",
                    }
                );
                let State::Enforcing(old) = std::mem::replace(
                    &mut configured.state,
                    State::Waiting {
                        last_error: String::new(),
                    },
                ) else {
                    unreachable!("matched above");
                };
                old.stop(false, Some(&mut self.dispatch));
            }
            // A pod's path (Kubernetes mode) is not reused for its next namespace, and a
            // `/proc/PID/ns/net` may come to name another process's: the watch finds the pod's
            // new namespace by its IP and replaces the entry.
            if configured.source == Source::Kubernetes {
                continue;
            }
            let started = Netns::open(path)
                .map_err(AgentError::from)
                .and_then(|netns| {
                    NetnsEnforcement::start(
                        Place::Netns(netns),
                        &configured.limits,
                        &configured.keepalive,
                        &self.env,
                        Some(&mut self.dispatch),
                    )
                });
            match started {
                Ok(enforcement) => {
                    tracing::info!(netns = %path.display(), "enforcing in the network namespace at this path");
                    configured.state = State::Enforcing(Box::new(enforcement));
                }
                Err(error) => {
                    let error = error.to_string();
                    if let State::Waiting { last_error } = &mut configured.state
                        && *last_error != error
                    {
                        tracing::warn!(netns = %path.display(), "waiting: {error}");
                        *last_error = error;
                    }
                }
            }
        }
    }

    /// The sweeper's tick for every namespace enforced in.
    pub fn sweep(&mut self, timeout: Duration) {
        for enforcement in self.enforcing_mut() {
            enforcement.sweep(timeout);
        }
    }

    pub fn check_listening(&mut self) {
        for enforcement in self.enforcing_mut() {
            enforcement.check_listening();
        }
    }

    /// `limiter set --netns PATH`: a namespace not configured yet must be one now.
    pub fn set(&mut self, path: &Path, spec: &LimitSpec) -> Result<String, AgentError> {
        if !self.configured.contains_key(path) {
            let netns = NetnsLimits {
                path: path.to_owned(),
                limits: vec![*spec],
                ..NetnsLimits::default()
            };
            self.start_new(&netns, Source::Settings)?;
            let spec = LimitSpec {
                action: Some(spec.action.unwrap_or(self.env.over_limit)),
                ..*spec
            };
            return Ok(format!(
                "{} in {} (now enforcing in it)",
                spec.described(),
                path.display()
            ));
        }
        let configured = self.configured.get_mut(path).expect("checked just above");
        let now = match &mut configured.state {
            State::Enforcing(enforcement) => in_netns(path, enforcement.set(spec))?,
            State::Waiting { .. } => format!("{spec} (applied when the path names a namespace)"),
        };
        configured.limits.retain(|l| !l.same_limit(spec));
        configured.limits.push(*spec);
        Ok(format!("{now} in {}", path.display()))
    }

    /// `limiter unset --netns PATH`. The namespace stays enforced in (its other limits, and
    /// the connections the removed one still counts) until the agent stops or it goes away.
    pub fn unset(
        &mut self,
        path: &Path,
        listener: &Listener,
        scope: Scope,
    ) -> Result<(), AgentError> {
        let configured = self
            .configured
            .get_mut(path)
            .ok_or_else(|| AgentError::Listener {
                listener: listener.to_string(),
                reason: format!(
                    "has no limit in {} (no limit was set there)",
                    path.display()
                ),
            })?;
        if let State::Enforcing(enforcement) = &mut configured.state {
            in_netns(path, enforcement.table().unset(listener, scope))?;
        } else if !configured
            .limits
            .iter()
            .any(|l| l.listener == *listener && l.scope == scope)
        {
            return Err(AgentError::Listener {
                listener: listener.to_string(),
                reason: format!("has no limit in {}", path.display()),
            });
        }
        configured
            .limits
            .retain(|l| l.listener != *listener || l.scope != scope);
        Ok(())
    }

    /// A reload (`Source::Settings`) or the Kubernetes watch: namespaces `source` no longer
    /// names stop, new ones start, and the limits of the others change in place. Returns what
    /// was done.
    pub fn apply_from(
        &mut self,
        source: Source,
        new: &[NetnsLimits],
    ) -> Result<Vec<String>, AgentError> {
        let mut done = Vec::new();
        let gone: Vec<PathBuf> = self
            .configured
            .iter()
            .filter(|(path, c)| c.source == source && !new.iter().any(|n| n.path == **path))
            .map(|(path, _)| path.clone())
            .collect();
        for path in gone {
            if let Some(Configured {
                state: State::Enforcing(enforcement),
                ..
            }) = self.configured.remove(&path)
            {
                enforcement.stop(false, Some(&mut self.dispatch));
            }
            done.push(format!("stopped enforcing in {}", path.display()));
        }
        // A namespace that cannot be enforced in does not stop the others; all errors are
        // returned together at the end.
        let mut errors = Vec::new();
        for wanted in new {
            let NetnsLimits {
                path,
                limits,
                keepalive,
                ..
            } = wanted;
            let Some(configured) = self.configured.get(path) else {
                match self.start_new(wanted, source) {
                    Ok(()) => done.push(format!("enforcing in {}", path.display())),
                    Err(e) => errors.push(e.to_string()),
                }
                continue;
            };
            // A pod's entry whose namespace went: the watch has found the pod's namespace again.
            if source == Source::Kubernetes
                && configured.source == source
                && matches!(configured.state, State::Waiting { .. })
            {
                self.configured.remove(path);
                match self.start_new(wanted, source) {
                    Ok(()) => done.push(format!("enforcing in {}", path.display())),
                    Err(e) => errors.push(e.to_string()),
                }
                continue;
            }
            if configured.source != source {
                done.push(format!(
                    "not applied in {}: its limits are configured by {}",
                    path.display(),
                    match configured.source {
                        Source::Settings => "--limit-in or the config file",
                        Source::Kubernetes => "a ConnectionLimitPolicy",
                    }
                ));
                continue;
            }
            let removed: Vec<(Listener, Scope)> = configured
                .limits
                .iter()
                .filter(|old| !limits.iter().any(|l| l.same_limit(old)))
                .map(|old| (old.listener, old.scope))
                .collect();
            let changed: Vec<LimitSpec> = limits
                .iter()
                .filter(|l| !configured.limits.contains(l))
                .copied()
                .collect();
            for (listener, scope) in removed {
                match self.unset(path, &listener, scope) {
                    Ok(()) => done.push(format!(
                        "{} removed: {listener} in {}",
                        scope.noun(),
                        path.display()
                    )),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            for spec in changed {
                match self.set(path, &spec) {
                    Ok(now) => done.push(format!("limit set: {now}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            match self.set_own_keepalive(path, keepalive) {
                Ok(changes) => done.extend(changes),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(done)
        } else {
            Err(AgentError::Combination(format!(
                "{}{}",
                errors.join("; "),
                if done.is_empty() {
                    String::new()
                } else {
                    format!(" (done: {})", done.join("; "))
                }
            )))
        }
    }

    /// Replaces a namespace's own keepalive policies with `wanted`; where one goes, the
    /// agent's policy for the same destinations (if any) applies again.
    fn set_own_keepalive(
        &mut self,
        path: &Path,
        wanted: &[(Destinations, KeepaliveSpec)],
    ) -> Result<Vec<String>, AgentError> {
        let global = self.env.keepalive_for.clone();
        let Some(configured) = self.configured.get_mut(path) else {
            return Ok(Vec::new());
        };
        if configured.keepalive == wanted {
            return Ok(Vec::new());
        }
        let mut done = Vec::new();
        if let State::Enforcing(enforcement) = &mut configured.state {
            for (destinations, _) in configured
                .keepalive
                .iter()
                .filter(|(d, _)| !wanted.iter().any(|(w, _)| w == d))
            {
                let mut table = enforcement.table();
                let result = match global.iter().find(|(g, _)| g == destinations) {
                    Some((_, spec)) => table.set_keepalive_policy(destinations, spec),
                    None => table.remove_keepalive_policy(destinations),
                };
                in_netns(path, result)?;
                done.push(format!(
                    "keepalive policy removed: {destinations} in {}",
                    path.display()
                ));
            }
            for (destinations, spec) in wanted.iter().filter(|w| !configured.keepalive.contains(w))
            {
                in_netns(
                    path,
                    enforcement.table().set_keepalive_policy(destinations, spec),
                )?;
                done.push(format!(
                    "keepalive policy set: {destinations} {spec} in {}",
                    path.display()
                ));
            }
        }
        configured.keepalive = wanted.to_vec();
        Ok(done)
    }

    /// The agent's `--keepalive-for`, in every namespace but those with a policy of their own
    /// for the same destinations.
    pub fn set_keepalive_policy(
        &mut self,
        destinations: &Destinations,
        keepalive: &KeepaliveSpec,
    ) -> Result<(), AgentError> {
        self.env.keepalive_for.retain(|(d, _)| d != destinations);
        self.env.keepalive_for.push((*destinations, *keepalive));
        for (path, enforcement) in self.enforcing_without_own(destinations) {
            in_netns(
                &path,
                enforcement
                    .table()
                    .set_keepalive_policy(destinations, keepalive),
            )?;
        }
        Ok(())
    }

    pub fn remove_keepalive_policy(
        &mut self,
        destinations: &Destinations,
    ) -> Result<(), AgentError> {
        self.env.keepalive_for.retain(|(d, _)| d != destinations);
        for (path, enforcement) in self.enforcing_without_own(destinations) {
            in_netns(
                &path,
                enforcement.table().remove_keepalive_policy(destinations),
            )?;
        }
        Ok(())
    }

    fn enforcing_without_own(
        &mut self,
        destinations: &Destinations,
    ) -> impl Iterator<Item = (PathBuf, &mut NetnsEnforcement)> {
        let destinations = *destinations;
        self.configured
            .iter_mut()
            .filter(move |(_, c)| !c.keepalive.iter().any(|(d, _)| *d == destinations))
            .filter_map(|(path, c)| match &mut c.state {
                State::Enforcing(enforcement) => Some((path.clone(), enforcement.as_mut())),
                State::Waiting { .. } => None,
            })
    }

    /// Every namespace's report, in path order, each listener with its pod when known.
    pub fn reports(&self) -> Vec<Report> {
        self.configured
            .values()
            .filter_map(|c| match &c.state {
                State::Enforcing(enforcement) => {
                    let mut report = enforcement.report();
                    for listener in &mut report.listeners {
                        listener.pod = c.pod.clone();
                    }
                    Some(report)
                }
                State::Waiting { .. } => None,
            })
            .collect()
    }

    /// Stops enforcing everywhere (the agent is exiting).
    pub fn stop_all(&mut self, keep_pinned: bool) {
        for (_, configured) in std::mem::take(&mut self.configured) {
            if let State::Enforcing(enforcement) = configured.state {
                enforcement.stop(keep_pinned, Some(&mut self.dispatch));
            }
        }
    }

    fn enforcing_mut(&mut self) -> impl Iterator<Item = &mut NetnsEnforcement> {
        self.configured
            .values_mut()
            .filter_map(|c| match &mut c.state {
                State::Enforcing(enforcement) => Some(enforcement.as_mut()),
                State::Waiting { .. } => None,
            })
    }
}

/// An agent that stops on an error (after the namespaces started) detaches them as well, and
/// removes their pins unless they were adopted; after `stop_all` there is nothing left to do.
impl Drop for Namespaces {
    fn drop(&mut self) {
        let keep = self.env.pins.as_ref().is_some_and(|p| p.keep_on_failure());
        self.stop_all(keep);
    }
}

fn in_netns<T>(path: &Path, result: Result<T, AgentError>) -> Result<T, AgentError> {
    result.map_err(|source| AgentError::InNetns {
        netns: path.display().to_string(),
        source: Box::new(source),
    })
}
