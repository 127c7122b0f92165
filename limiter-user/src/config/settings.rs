//! The settings in force: the command-line flags merged over the `--config` file (flags win),
//! checked as a whole, and the difference between two of them, which is all a reload applies.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    config::cli::RunArgs,
    config::coverage,
    config::file::{self, FileConfig, ProxyConfig},
    config::keepalive::{Destinations, KeepaliveSpec},
    config::listener::{Action, LimitSpec, Listener, NO_CLOSE_PER_SOURCE, Scope},
    config::namespaces::NetnsLimits,
};

pub const DEFAULT_OVER_LIMIT: Action = Action::Drop;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub ifaces: Vec<String>,
    pub over_limit: Action,
    pub handshake_timeout: Duration,
    /// Listener slots in the agent's own copy of the maps (`--max-listeners`).
    pub max_listeners: u32,
    pub metrics_addr: Option<SocketAddr>,
    /// Every limit with its action resolved.
    pub limits: Vec<LimitSpec>,
    pub proxies: Vec<ProxyConfig>,
    pub keepalive_for: Vec<(Destinations, KeepaliveSpec)>,
    /// Limits inside other network namespaces, actions resolved.
    pub namespaces: Vec<NetnsLimits>,
}

impl Settings {
    /// Reads `--config` (if any) and merges the flags over it.
    pub fn load(flags: &RunArgs) -> Result<Settings, String> {
        let file = match &flags.config {
            Some(path) => Some(file::load(path).map_err(|e| e.to_string())?),
            None => None,
        };
        Settings::merge(flags, file)
    }

    pub fn merge(flags: &RunArgs, file: Option<FileConfig>) -> Result<Settings, String> {
        let file = file.unwrap_or_default();
        let ifaces = if flags.ifaces.is_empty() {
            file.interfaces
        } else {
            flags.ifaces.clone()
        };
        let namespaces = netns_limits(file.namespaces, flags.netns_limits()?);
        if ifaces.is_empty() && namespaces.is_empty() && !flags.kubernetes {
            return Err(
                "--iface: no interface given (pass --iface, or `interfaces:` in --config)".into(),
            );
        }
        let over_limit = flags
            .over_limit
            .or(file.over_limit)
            .unwrap_or(DEFAULT_OVER_LIMIT);
        let handshake_timeout = flags
            .handshake_timeout
            .or(file.handshake_timeout)
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
        let max_listeners = flags
            .max_listeners
            .or(file.max_listeners)
            .unwrap_or(limiter_common::MAX_LISTENERS);
        let metrics_addr = match flags.metrics_addr {
            Some(flag) => flag,
            None => Some(
                file.metrics_addr
                    .unwrap_or_else(|| DEFAULT_METRICS_ADDR.parse().expect("valid default")),
            ),
        };

        // A listener's limit from the flags replaces the file's for that listener (its own
        // and its per-source one apart).
        let flag_limits = flags.all_limits();
        let mut limits: Vec<LimitSpec> = file
            .limits
            .into_iter()
            .filter(|l| !flag_limits.iter().any(|f| f.same_limit(l)))
            .chain(flag_limits.iter().copied())
            .collect();
        for limit in &mut limits {
            limit.action = Some(resolve_action(limit, over_limit)?);
        }
        let namespaces = resolve_netns_actions(namespaces, over_limit)?;
        if let Some(unadmitted) = limits
            .iter()
            .find(|l| ifaces.is_empty() && l.action != Some(Action::Close))
        {
            return Err(format!(
                "{} '{unadmitted}': no --iface to admit its SYNs on in the agent's \
                 namespace (pass --iface, or `interfaces:` in --config)",
                unadmitted.scope.flag()
            ));
        }

        let flag_proxies = flags.proxies.iter().map(|spec| ProxyConfig {
            spec: *spec,
            delay_before_close: Some(flags.delay_before_close),
            connect_timeout: flags.connect_timeout,
            max_connections: flags.max_upstream_connections,
            keepalive: flags.upstream_keepalive,
        });
        // A file proxy's `tcp` settings left out take the flags' values, as for flag proxies.
        let proxies: Vec<ProxyConfig> = file
            .proxies
            .into_iter()
            .filter(|p| !flags.proxies.iter().any(|f| f.listen == p.spec.listen))
            .map(|p| ProxyConfig {
                delay_before_close: p.delay_before_close.or(Some(flags.delay_before_close)),
                connect_timeout: p.connect_timeout.or(flags.connect_timeout),
                max_connections: p.max_connections.or(flags.max_upstream_connections),
                keepalive: p.keepalive.or(flags.upstream_keepalive),
                ..p
            })
            .chain(flag_proxies)
            .collect();

        let flag_policies = flags.keepalive_policies()?;
        let keepalive_for = file
            .keepalive_for
            .into_iter()
            .filter(|(d, _)| !flag_policies.iter().any(|(f, _)| f == d))
            .chain(flag_policies.clone())
            .collect();

        proxy_flags_need_a_proxy(flags, over_limit, &proxies)?;
        let limits = enforced_listeners(limits, &proxies)?;
        fits_max_listeners(&limits, max_listeners)?;
        let settings = Settings {
            ifaces,
            over_limit,
            handshake_timeout,
            max_listeners,
            metrics_addr,
            limits,
            proxies,
            keepalive_for,
            namespaces,
        };
        Ok(settings)
    }

    pub fn limit_for(&self, listener: &Listener, scope: Scope) -> Option<&LimitSpec> {
        self.limits
            .iter()
            .find(|l| l.listener == *listener && l.scope == scope)
    }
}

/// Every listener limited in the agent's own namespace takes one slot of its maps (its own
/// limit and its per-source one share it): more than `--max-listeners` could never all be
/// enforced, so the agent refuses to start (or a reload is rejected) rather than leave some
/// unlimited.
fn fits_max_listeners(limits: &[LimitSpec], max_listeners: u32) -> Result<(), String> {
    let listeners: std::collections::BTreeSet<Listener> =
        limits.iter().map(|l| l.listener).collect();
    if listeners.len() > max_listeners as usize {
        return Err(format!(
            "--max-listeners {max_listeners}: {} listeners are limited in the agent's network \
             namespace, more than its maps hold; raise --max-listeners (`maxListeners` in \
             --config; at most {})",
            listeners.len(),
            limiter_common::MAX_LISTENERS
        ));
    }
    Ok(())
}

/// What a reload changes: only limits and keepalive policies are applied live; anything else
/// that differs is reported as needing a restart.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    pub set: Vec<LimitSpec>,
    pub unset: Vec<(Listener, Scope)>,
    pub keepalive_set: Vec<(Destinations, KeepaliveSpec)>,
    pub keepalive_removed: Vec<Destinations>,
    /// Settings that differ but are not changed on a running agent.
    pub needs_restart: Vec<&'static str>,
}

impl Change {
    pub fn between(old: &Settings, new: &Settings) -> Change {
        let set = new
            .limits
            .iter()
            .filter(|l| old.limit_for(&l.listener, l.scope) != Some(l))
            .copied()
            .collect();
        let unset = old
            .limits
            .iter()
            .filter(|l| new.limit_for(&l.listener, l.scope).is_none())
            .map(|l| (l.listener, l.scope))
            .collect();
        let keepalive_set = new
            .keepalive_for
            .iter()
            .filter(|p| !old.keepalive_for.contains(p))
            .copied()
            .collect();
        let keepalive_removed = old
            .keepalive_for
            .iter()
            .filter(|(d, _)| !new.keepalive_for.iter().any(|(n, _)| n == d))
            .map(|(d, _)| *d)
            .collect();
        let mut needs_restart = Vec::new();
        for (differs, what) in [
            (old.ifaces != new.ifaces, "interfaces"),
            (old.proxies != new.proxies, "proxies"),
            (old.metrics_addr != new.metrics_addr, "metricsAddr"),
            (
                old.handshake_timeout != new.handshake_timeout,
                "handshakeTimeout",
            ),
            (
                old.max_listeners != new.max_listeners,
                "maxListeners (over kept pins: once they are removed)",
            ),
        ] {
            if differs {
                needs_restart.push(what);
            }
        }
        Change {
            set,
            unset,
            keepalive_set,
            keepalive_removed,
            needs_restart,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.unset.is_empty()
            && self.keepalive_set.is_empty()
            && self.keepalive_removed.is_empty()
    }
}

/// The file's namespaces with the flags' `--limit-in` over them: a flag's limit replaces the
/// file's for that listener in that namespace.
fn netns_limits(file: Vec<NetnsLimits>, flags: Vec<(PathBuf, LimitSpec)>) -> Vec<NetnsLimits> {
    let mut namespaces = file;
    for (path, spec) in flags {
        match namespaces.iter_mut().find(|n| n.path == path) {
            Some(netns) => {
                netns.limits.retain(|l| !l.same_limit(&spec));
                netns.limits.push(spec);
            }
            None => namespaces.push(NetnsLimits {
                path,
                limits: vec![spec],
                keepalive: Vec::new(),
                pod: None,
            }),
        }
    }
    namespaces
}

/// Each namespace limit's action, resolved; `close` needs the agent's proxy, which listens in
/// the agent's own namespace only.
fn resolve_netns_actions(
    mut namespaces: Vec<NetnsLimits>,
    over_limit: Action,
) -> Result<Vec<NetnsLimits>, String> {
    for netns in &mut namespaces {
        for limit in &mut netns.limits {
            let action = limit.action.unwrap_or(over_limit);
            if action == Action::Close {
                return Err(format!(
                    "{}-in {} '{limit}': the close action needs limiter's proxy, which \
                     runs in the agent's own network namespace only; use drop or reset",
                    limit.scope.flag(),
                    netns.path.display()
                ));
            }
            limit.action = Some(action);
        }
    }
    Ok(namespaces)
}

/// A limit's action: its own, or the `--over-limit` default. A per-source limit refuses at the
/// SYN, so the proxy's close cannot be its action.
fn resolve_action(limit: &LimitSpec, over_limit: Action) -> Result<Action, String> {
    match (limit.scope, limit.action) {
        (Scope::PerSource, Some(Action::Close)) => Err(format!(
            "--limit-per-source '{limit}': {NO_CLOSE_PER_SOURCE}"
        )),
        (Scope::PerSource, None) if over_limit == Action::Close => Err(format!(
            "--limit-per-source '{limit}': --over-limit is close, which a per-source limit \
             cannot do (it refuses at the SYN): give it :drop, :reset or :dry-run"
        )),
        (_, action) => Ok(action.unwrap_or(over_limit)),
    }
}

/// The file a reload re-reads.
pub fn config_path(flags: &RunArgs) -> Option<&PathBuf> {
    flags.config.as_ref()
}

/// Each limit (actions already resolved) on the listener it is enforced on: a limit written as
/// a proxy's own listener covers every client that proxy accepts (`proxy::coverage`). Two limits
/// that land on the same listener, or a `close` limit no proxy can hold for, are errors naming
/// the flags involved.
fn enforced_listeners(
    limits: Vec<LimitSpec>,
    proxies: &[ProxyConfig],
) -> Result<Vec<LimitSpec>, String> {
    let listens: Vec<Listener> = proxies.iter().map(|p| p.spec.listen).collect();
    let proxy_flag = |listen: Listener| {
        proxies
            .iter()
            .find(|p| p.spec.listen == listen)
            .map_or_else(
                || format!("the proxy on {listen}"),
                |p| format!("--proxy '{}'", p.spec),
            )
    };
    let mut enforced: Vec<(LimitSpec, LimitSpec)> = Vec::new();
    for written in limits {
        let action = written.action.unwrap_or(DEFAULT_OVER_LIMIT);
        let listener = coverage::enforced_on(&written, action, &listens).map_err(|mismatch| {
            format!(
                "{} '{written}': {}",
                written.scope.flag(),
                coverage::explain(&mismatch, &written, proxy_flag)
            )
        })?;
        if let Some((earlier, _)) = enforced
            .iter()
            .find(|(_, e)| e.listener == listener && e.scope == written.scope)
        {
            return Err(format!(
                "{flag} '{earlier}' and {flag} '{written}' both limit the clients of {clients}: give one",
                flag = written.scope.flag(),
                clients = listens
                    .iter()
                    .find(|p| coverage::clients_of(**p) == listener)
                    .map_or_else(|| listener.to_string(), |p| proxy_flag(*p))
            ));
        }
        enforced.push((
            written,
            LimitSpec {
                listener,
                ..written
            },
        ));
    }
    Ok(enforced.into_iter().map(|(_, e)| e).collect())
}

/// The proxy's flags (and `--over-limit close`) do nothing without a proxy: each is an error
/// naming the flag and `--proxy`, never a setting silently ignored.
fn proxy_flags_need_a_proxy(
    flags: &RunArgs,
    over_limit: Action,
    proxies: &[ProxyConfig],
) -> Result<(), String> {
    if !proxies.is_empty() {
        return Ok(());
    }
    let given = [
        (
            !flags.delay_before_close.is_zero(),
            format!(
                "--delay-before-close {}",
                crate::config::duration::display(flags.delay_before_close)
            ),
        ),
        (
            flags.upstream_keepalive.is_some(),
            "--upstream-keepalive".to_string(),
        ),
        (
            flags.connect_timeout.is_some(),
            "--connect-timeout".to_string(),
        ),
        (
            flags.max_upstream_connections.is_some(),
            "--max-upstream-connections".to_string(),
        ),
        (
            over_limit == Action::Close,
            "--over-limit close".to_string(),
        ),
    ];
    match given.into_iter().find(|(set, _)| *set) {
        Some((_, flag)) => Err(format!(
            "{flag}: applies only to a proxy, and no --proxy is given (on the command line or \
             in --config); add --proxy LISTEN=UPSTREAM or drop {}",
            flag.split(' ').next().unwrap_or(&flag)
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::cli::{Cli, Command};

    fn merge(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from([&["limiter", "run", "--iface", "eth0"], args].concat())
            .map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        Settings::merge(&run, None)
    }

    #[test]
    fn more_listeners_than_max_listeners_is_an_error() {
        // A listener's own and per-source limits share its slot: two listeners here.
        let two = [
            "--limit",
            "8000=1",
            "--limit-per-source",
            "8000=1",
            "--limit",
            "9000=1",
        ];
        assert_eq!(
            merge(&[&two[..], &["--max-listeners", "2"]].concat())
                .unwrap()
                .max_listeners,
            2
        );
        let error = merge(&[&two[..], &["--max-listeners", "1"]].concat()).unwrap_err();
        assert!(
            error.starts_with(
                "--max-listeners 1: 2 listeners are limited in the agent's network namespace"
            ),
            "{error}"
        );
        assert_eq!(
            merge(&[]).unwrap().max_listeners,
            limiter_common::MAX_LISTENERS
        );
        let old = merge(&[]).unwrap();
        let new = merge(&["--max-listeners", "64"]).unwrap();
        assert_eq!(
            Change::between(&old, &new).needs_restart,
            ["maxListeners (over kept pins: once they are removed)"]
        );
    }

    #[test]
    fn per_source_limits_beside_listener_limits() {
        let settings = merge(&[
            "--iface",
            "eth0",
            "--limit",
            "8000=100",
            "--limit-per-source",
            "8000=2:reset",
            "--limit-per-source-in",
            "/run/netns/a",
            "9000=1",
        ])
        .unwrap();
        assert_eq!(
            settings.limits,
            [
                "8000=100:drop".parse::<LimitSpec>().unwrap(),
                "8000=2:reset".parse::<LimitSpec>().unwrap().per_source()
            ]
        );
        assert_eq!(settings.namespaces[0].limits[0].scope, Scope::PerSource);
        // close is the proxy's; a per-source limit refuses at the SYN.
        for args in [
            &["--iface", "eth0", "--limit-per-source", "8000=2:close"][..],
            &[
                "--iface",
                "eth0",
                "--proxy",
                "8000=198.18.0.3:1025",
                "--over-limit",
                "close",
                "--limit-per-source",
                "8000=2",
            ][..],
        ] {
            let error = merge(args).unwrap_err();
            assert!(
                error.starts_with("--limit-per-source '8000=2") && error.contains("at the SYN"),
                "{error}"
            );
        }
        // A reload tells the two limits of a listener apart.
        let old = merge(&["--iface", "eth0", "--limit", "8000=100"]).unwrap();
        let change = Change::between(&old, &settings);
        assert_eq!(change.set.len(), 1);
        assert_eq!(change.set[0].scope, Scope::PerSource);
        let change = Change::between(&settings, &old);
        assert_eq!(
            change.unset,
            [(Listener::AnyAddress(8000), Scope::PerSource)]
        );
    }

    #[test]
    fn limits_in_other_namespaces() {
        let settings = merge(&[
            "--over-limit",
            "reset",
            "--limit-in",
            "/run/netns/a",
            "8000=5",
            "--limit-in",
            "/run/netns/b",
            "8000=3:drop",
            "--limit-in",
            "/run/netns/a",
            "9000=1",
        ])
        .unwrap();
        assert_eq!(
            settings.namespaces,
            [
                NetnsLimits {
                    path: "/run/netns/a".into(),
                    limits: vec![
                        "8000=5:reset".parse().unwrap(),
                        "9000=1:reset".parse().unwrap()
                    ],
                    keepalive: Vec::new(),
                    pod: None,
                },
                NetnsLimits {
                    path: "/run/netns/b".into(),
                    limits: vec!["8000=3:drop".parse().unwrap()],
                    keepalive: Vec::new(),
                    pod: None,
                },
            ]
        );
        for (args, needle) in [
            (
                &["--limit-in", "/run/netns/a", "8000=5:close"][..],
                "close action needs limiter's proxy",
            ),
            (
                &["--limit-in", "run/netns/a", "8000=5"][..],
                "not a path to a network namespace",
            ),
            (
                &["--limit-in", "/run/netns/a", "8000=0"][..],
                "--limit-in /run/netns/a '8000=0'",
            ),
            (
                &[
                    "--limit-in",
                    "/run/netns/a",
                    "8000=5",
                    "--limit-in",
                    "/run/netns/a",
                    "8000=6",
                ][..],
                "given twice in that namespace",
            ),
        ] {
            let err = merge(args).expect_err(needle);
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        // Pods only: the node needs no interface of its own.
        let cli = Cli::try_parse_from(["limiter", "run", "--limit-in", "/run/netns/a", "8000=5"])
            .unwrap();
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        assert!(Settings::merge(&run, None).unwrap().ifaces.is_empty());
        let cli = Cli::try_parse_from([
            "limiter",
            "run",
            "--limit-in",
            "/run/netns/a",
            "8000=5",
            "--limit",
            "9000=1",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        let err = Settings::merge(&run, None).unwrap_err();
        assert!(
            err.contains("--limit '9000=1") && err.contains("--iface"),
            "{err}"
        );
    }

    #[test]
    fn proxy_flags_without_a_proxy_are_refused_naming_both() {
        for (args, flag) in [
            (
                &["--delay-before-close", "2s"][..],
                "--delay-before-close 2s",
            ),
            (&["--connect-timeout", "10s"][..], "--connect-timeout"),
            (
                &["--max-upstream-connections", "5"][..],
                "--max-upstream-connections",
            ),
            (
                &["--upstream-keepalive", "time=60s"][..],
                "--upstream-keepalive",
            ),
            (&["--over-limit", "close"][..], "--over-limit close"),
        ] {
            let err = merge(args).unwrap_err();
            assert!(
                err.starts_with(flag) && err.contains("no --proxy"),
                "{args:?}: {err}"
            );
        }
        let with_proxy = merge(&[
            "--proxy",
            "8000=198.18.0.3:1025",
            "--delay-before-close",
            "2s",
            "--connect-timeout",
            "3s",
        ])
        .unwrap();
        assert_eq!(
            with_proxy.proxies[0].connect_timeout,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn limits_on_a_dual_stack_proxy_are_enforced_on_the_bare_port() {
        let settings = merge(&[
            "--proxy",
            "[::]:8000=198.18.0.3:1025",
            "--limit",
            "[::]:8000=1:close",
        ])
        .unwrap();
        assert_eq!(settings.limits[0].listener, Listener::AnyAddress(8000));
        let err = merge(&[
            "--proxy",
            "[::]:8000=198.18.0.3:1025",
            "--limit",
            "[::]:8000=1",
            "--limit",
            "8000=2",
        ])
        .unwrap_err();
        assert!(
            err.contains("--limit '[::]:8000=1:drop'") && err.contains("--limit '8000=2:drop'"),
            "{err}"
        );
    }
}
