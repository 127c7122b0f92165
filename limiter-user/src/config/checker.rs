//! Turns the file as serde read it ([`super::raw`]) into a [`FileConfig`], checking every rule
//! of [`super::file`]'s format, and names the field and position of each error (through
//! [`PathIndex`]).
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::{
    config::cli,
    config::duration,
    config::keepalive::{Destinations, KeepaliveSpec},
    config::listener::{Action, LimitSpec, Listener, ListenerParseError, NO_CLOSE_PER_SOURCE},
    config::proxy_spec::ProxySpec,
};

use super::{
    file_config::{ConfigError, FileConfig, ProxyConfig},
    path_index::{PathIndex, Pos},
    raw::*,
};

/// The longest interface name Linux takes (IFNAMSIZ less the NUL).
pub(super) const MAX_IFACE_NAME: usize = 15;

/// A limit as written in either gateway's style.
pub(super) struct RawLimit<'a> {
    pub(super) value: &'a str,
    pub(super) value_field: String,
    pub(super) delay: Option<(&'a str, String)>,
}

/// Turns the raw file into a [`FileConfig`], reporting errors with field and position.
pub(super) struct Checker<'a> {
    pub(super) origin: &'a str,
    pub(super) index: PathIndex,
}

impl Checker<'_> {
    pub(super) fn error(
        &self,
        field: Option<String>,
        position: Option<Pos>,
        message: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            position: position.map(|p| (p.line, p.column)),
            field,
            message,
        }
    }

    /// An error about `field`, placed where the file has it.
    pub(super) fn at(&self, field: &str, message: impl Into<String>) -> ConfigError {
        let position = self.index.position_of(field);
        self.error(Some(field.to_owned()), position, message.into())
    }

    /// serde-saphyr's error, with the field found from its position.
    pub(super) fn yaml_error(&self, error: &serde_saphyr::Error) -> ConfigError {
        let (field, position, message) = self.index.explain(error);
        self.error(field, position, message)
    }

    pub(super) fn config(&self, raw: &RawConfig) -> Result<FileConfig, ConfigError> {
        let mut config = FileConfig {
            interfaces: self.interfaces(raw.interfaces.as_deref().unwrap_or_default())?,
            ..FileConfig::default()
        };
        if let Some(text) = &raw.over_limit {
            config.over_limit = Some(
                text.parse::<Action>()
                    .map_err(|e| self.at("overLimit", e))?,
            );
        }
        if let Some(text) = &raw.handshake_timeout {
            config.handshake_timeout = Some(self.handshake_timeout(text)?);
        }
        if let Some(text) = &raw.max_listeners {
            config.max_listeners =
                Some(cli::parse_max_listeners(text).map_err(|e| self.at("maxListeners", e))?);
        }
        if let Some(text) = &raw.metrics_addr {
            config.metrics_addr = Some(self.metrics_addr(text)?);
        }
        // Every listener so far, by index: each may appear once.
        let mut seen = Vec::new();
        for (i, listener) in raw.listeners.iter().flatten().enumerate() {
            self.listener("listeners", i, listener, &mut seen, &mut config)?;
        }
        for (i, namespace) in raw.namespaces.iter().flatten().enumerate() {
            let namespace = self.namespace(i, namespace, &config)?;
            if let Some(first) = config
                .namespaces
                .iter()
                .position(|n| n.path == namespace.path)
            {
                return Err(self.at(
                    &format!("namespaces[{i}].path"),
                    format!(
                        "{} is already given in namespaces[{first}]",
                        namespace.path.display()
                    ),
                ));
            }
            config.namespaces.push(namespace);
        }
        for (i, policy) in raw.keepalive_policies.iter().flatten().enumerate() {
            let path = format!("keepalivePolicies[{i}]");
            let field = format!("{path}.destinations");
            let destinations = policy
                .destinations
                .parse::<Destinations>()
                .map_err(|e| self.at(&field, e))?;
            if let Some(first) = config
                .keepalive_for
                .iter()
                .position(|(d, _)| *d == destinations)
            {
                return Err(self.at(
                    &field,
                    format!("{destinations} is already given in keepalivePolicies[{first}]"),
                ));
            }
            let keepalive =
                self.keepalive(&format!("{path}.tcpKeepalive"), &policy.tcp_keepalive)?;
            config.keepalive_for.push((destinations, keepalive));
        }
        Ok(config)
    }

    pub(super) fn interfaces(&self, names: &[String]) -> Result<Vec<String>, ConfigError> {
        for (i, name) in names.iter().enumerate() {
            let field = format!("interfaces[{i}]");
            if name.is_empty() || name.len() > MAX_IFACE_NAME || name.contains(['/', ' ']) {
                return Err(self.at(
                    &field,
                    format!(
                        "'{name}' is not an interface name (1 to {MAX_IFACE_NAME} characters, \
                         no '/' or spaces)"
                    ),
                ));
            }
            if names[..i].contains(name) {
                return Err(self.at(&field, format!("interface '{name}' is given twice")));
            }
        }
        Ok(names.to_vec())
    }

    pub(super) fn handshake_timeout(&self, text: &str) -> Result<Duration, ConfigError> {
        cli::parse_handshake_timeout(text).map_err(|e| self.at("handshakeTimeout", e))
    }

    pub(super) fn metrics_addr(&self, text: &str) -> Result<SocketAddr, ConfigError> {
        match text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => Ok(addr),
            _ => Err(self.at(
                "metricsAddr",
                format!("'{text}' is not IP:PORT or [IPv6]:PORT (e.g. 127.0.0.1:9464)"),
            )),
        }
    }

    /// `namespaces[i]`: its path and its listeners, which take no proxy (limiter's proxy runs
    /// in the agent's own namespace).
    pub(super) fn namespace(
        &self,
        i: usize,
        raw: &RawNamespace,
        top: &FileConfig,
    ) -> Result<crate::config::namespaces::NetnsLimits, ConfigError> {
        let base = format!("namespaces[{i}]");
        if !raw.path.starts_with('/') {
            return Err(self.at(
                &format!("{base}.path"),
                format!(
                    "'{}' is not a path to a network namespace (e.g. /run/netns/NAME or \
                     /proc/PID/ns/net)",
                    raw.path
                ),
            ));
        }
        let list = format!("{base}.listeners");
        let mut seen = Vec::new();
        let mut inner = FileConfig {
            over_limit: top.over_limit,
            ..FileConfig::default()
        };
        for (j, listener) in raw.listeners.iter().enumerate() {
            if listener.proxy.is_some() {
                return Err(self.at(
                    &format!("{list}[{j}].proxy"),
                    "limiter's proxy runs in the agent's own network namespace only: move \
                     this listener to the top-level listeners",
                ));
            }
            self.listener(&list, j, listener, &mut seen, &mut inner)?;
        }
        Ok(crate::config::namespaces::NetnsLimits {
            path: raw.path.clone().into(),
            limits: inner.limits,
            keepalive: Vec::new(),
            pod: None,
        })
    }

    pub(super) fn listener(
        &self,
        list: &str,
        i: usize,
        raw: &RawListener,
        seen: &mut Vec<Listener>,
        config: &mut FileConfig,
    ) -> Result<(), ConfigError> {
        let path = format!("{list}[{i}]");
        let (listener, listener_field) = self.listener_address(&path, raw)?;
        if let Some(first) = seen.iter().position(|l| *l == listener) {
            return Err(self.at(
                &listener_field,
                format!("listener {listener} is already given in {list}[{first}]"),
            ));
        }
        seen.push(listener);

        let limit = match (&raw.options, &raw.connection) {
            (Some(_), Some(_)) => {
                return Err(self.at(
                    &format!("{path}.connection"),
                    "a listener has one limit: options.connectionLimit (Gloo Gateway) or \
                     connection.connectionLimit (Envoy Gateway), not both",
                ));
            }
            (Some(options), None) => {
                let base = format!("{path}.options.connectionLimit");
                let limit = &options.connection_limit;
                Some(RawLimit {
                    value: &limit.max_active_connections,
                    value_field: format!("{base}.maxActiveConnections"),
                    delay: limit
                        .delay_before_close
                        .as_deref()
                        .map(|d| (d, format!("{base}.delayBeforeClose"))),
                })
            }
            (None, Some(connection)) => {
                let base = format!("{path}.connection.connectionLimit");
                let limit = &connection.connection_limit;
                Some(RawLimit {
                    value: &limit.value,
                    value_field: format!("{base}.value"),
                    delay: limit
                        .close_delay
                        .as_deref()
                        .map(|d| (d, format!("{base}.closeDelay"))),
                })
            }
            (None, None) => None,
        };

        let action_field = format!("{path}.action");
        let action = match &raw.action {
            Some(text) => Some(
                text.parse::<Action>()
                    .map_err(|e| self.at(&action_field, e))?,
            ),
            None => None,
        };

        let proxy = match &raw.proxy {
            Some(proxy) => Some(self.proxy(&format!("{path}.proxy"), listener, proxy)?),
            None => None,
        };

        let limit = match limit {
            Some(limit) => Some(self.limit(listener, &limit, action, proxy.is_some())?),
            None => None,
        };
        let delay = limit.and_then(|(_, delay)| delay);
        let limit = limit.map(|(spec, _)| spec);
        let per_source = match &raw.per_source_limit {
            Some(per_source) => Some(self.per_source(listener, &path, per_source)?),
            None => None,
        };

        // What the listener amounts to, and whether the action in force can work here.
        match (&limit, proxy.is_some()) {
            (None, false) if per_source.is_none() => {
                return Err(self.at(
                    &path,
                    "nothing to do: give it a limit (options.connectionLimit or \
                     connection.connectionLimit), a perSourceLimit, a proxy, or a mix",
                ));
            }
            (None, true) if action.is_some() => {
                return Err(self.at(
                    &action_field,
                    "an action needs a limit on this listener (options.connectionLimit or \
                     connection.connectionLimit)",
                ));
            }
            (Some(spec), false) => {
                if spec.action == Some(Action::Close) {
                    return Err(self.at(
                        &action_field,
                        "the close action needs a proxy on this listener (proxy.upstream); \
                         without one limiter refuses the SYN itself: use drop or reset",
                    ));
                }
                if spec.action.is_none() && config.over_limit == Some(Action::Close) {
                    return Err(self.at(
                        &path,
                        "overLimit is close, which needs a proxy on this listener \
                         (proxy.upstream); give it one, or an action drop or reset",
                    ));
                }
            }
            _ => {}
        }

        config.limits.extend(limit);
        config.limits.extend(per_source);
        if let Some(mut proxy) = proxy {
            if let Some(earlier) = config
                .proxies
                .iter()
                .find(|p| p.spec.bind_addr() == proxy.spec.bind_addr())
            {
                return Err(self.at(
                    &format!("{path}.proxy"),
                    format!(
                        "a proxy on {} would bind {}, as the proxy on {} does",
                        proxy.spec.listen,
                        proxy.spec.bind_addr(),
                        earlier.spec.listen
                    ),
                ));
            }
            proxy.delay_before_close = delay;
            config.proxies.push(proxy);
        }
        Ok(())
    }

    /// The listener in either style, and the field that gives it (for later errors).
    pub(super) fn listener_address(
        &self,
        path: &str,
        raw: &RawListener,
    ) -> Result<(Listener, String), ConfigError> {
        match (&raw.listener, &raw.bind_address, &raw.bind_port) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(self.at(
                &format!("{path}.listener"),
                "give either listener, or bindPort with an optional bindAddress, not both",
            )),
            (Some(text), None, None) => {
                let field = format!("{path}.listener");
                let listener = text
                    .parse::<Listener>()
                    .map_err(|e| self.at(&field, e.to_string()))?;
                Ok((listener, field))
            }
            (None, Some(_), None) => Err(self.at(
                &format!("{path}.bindAddress"),
                "bindAddress needs a bindPort",
            )),
            (None, None, None) => Err(self.at(
                path,
                "missing listener (PORT, IPv4:PORT or [IPv6]:PORT) or bindPort (with an optional \
                 bindAddress)",
            )),
            (None, address, Some(port)) => {
                let port_field = format!("{path}.bindPort");
                // A bare port is a listener of its own (every address); anything else is not
                // a port.
                let port = match port.parse::<Listener>() {
                    Ok(Listener::AnyAddress(port)) => port,
                    Err(e @ ListenerParseError::Port(_)) => {
                        return Err(self.at(&port_field, e.to_string()));
                    }
                    _ => {
                        return Err(self.at(
                            &port_field,
                            format!("'{port}' is not a port: expected 1-65535"),
                        ));
                    }
                };
                match address {
                    None => Ok((Listener::AnyAddress(port), port_field)),
                    Some(address) => {
                        let ip = address.parse::<IpAddr>().map_err(|_| {
                            self.at(
                                &format!("{path}.bindAddress"),
                                format!(
                                    "'{address}' is not an IP address (e.g. '::', '0.0.0.0', \
                                     198.18.0.1)"
                                ),
                            )
                        })?;
                        // Gloo's (Envoy's) '::' listener is dual-stack: its connection limit
                        // covers IPv4 and IPv6 clients alike, which is limiter's bare port.
                        if ip == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
                            return Ok((Listener::AnyAddress(port), port_field));
                        }
                        Ok((Listener::Address(ip, port), port_field))
                    }
                }
            }
        }
    }

    /// A listener's `perSourceLimit`: a limit per client address, with its own action.
    pub(super) fn per_source(
        &self,
        listener: Listener,
        path: &str,
        raw: &RawPerSource,
    ) -> Result<LimitSpec, ConfigError> {
        let base = format!("{path}.perSourceLimit");
        let value_field = format!("{base}.maxActiveConnections");
        if raw.max_active_connections.contains([':', '=']) {
            return Err(self.at(
                &value_field,
                format!(
                    "limit '{}' is not a whole number",
                    raw.max_active_connections
                ),
            ));
        }
        let mut spec = format!("{listener}={}", raw.max_active_connections)
            .parse::<LimitSpec>()
            .map_err(|e| self.at(&value_field, e))?
            .per_source();
        let action_field = format!("{base}.action");
        spec.action = match &raw.action {
            Some(text) => match text.parse::<Action>() {
                Ok(Action::Close) => {
                    return Err(self.at(&action_field, NO_CLOSE_PER_SOURCE));
                }
                Ok(action) => Some(action),
                Err(e) => return Err(self.at(&action_field, e)),
            },
            None => None,
        };
        Ok(spec)
    }

    /// The limit of a listener and the delay that goes with it.
    pub(super) fn limit(
        &self,
        listener: Listener,
        raw: &RawLimit<'_>,
        action: Option<Action>,
        has_proxy: bool,
    ) -> Result<(LimitSpec, Option<Duration>), ConfigError> {
        // `--limit`'s own parser checks the number; a `:` or `=` would make it read an action
        // or another listener, so such a value is not a number here.
        if raw.value.contains([':', '=']) {
            return Err(self.at(
                &raw.value_field,
                format!("limit '{}' is not a whole number", raw.value),
            ));
        }
        let mut spec = format!("{listener}={}", raw.value)
            .parse::<LimitSpec>()
            .map_err(|e| self.at(&raw.value_field, e))?;
        spec.action = action;
        let Some((text, field)) = &raw.delay else {
            return Ok((spec, None));
        };
        let delay = duration::parse(text).map_err(|e| self.at(field, e))?;
        if !has_proxy {
            return Err(self.at(
                field,
                "a delay before close needs a proxy on this listener (proxy.upstream): without \
                 one limiter refuses the SYN itself (drop or reset), so nothing is held",
            ));
        }
        match action {
            Some(other @ (Action::Drop | Action::Reset)) => {
                return Err(self.at(
                    field,
                    format!(
                        "a delay before close applies to the close action only, and action is {}",
                        other.as_str()
                    ),
                ));
            }
            // The delay says what the gateways do over the limit: accept, wait, close.
            _ => spec.action = Some(Action::Close),
        }
        Ok((spec, Some(delay)))
    }

    pub(super) fn proxy(
        &self,
        path: &str,
        listener: Listener,
        raw: &RawProxy,
    ) -> Result<ProxyConfig, ConfigError> {
        let upstream_field = format!("{path}.upstream");
        if raw.upstream.contains('=') {
            return Err(self.at(
                &upstream_field,
                format!(
                    "'{}' is not an upstream IP:PORT or [IPv6]:PORT",
                    raw.upstream
                ),
            ));
        }
        let spec = format!("{listener}={}", raw.upstream)
            .parse::<ProxySpec>()
            .map_err(|e| self.at(&upstream_field, e))?;
        let mut proxy = ProxyConfig {
            spec,
            delay_before_close: None,
            connect_timeout: None,
            max_connections: None,
            keepalive: None,
        };
        let Some(tcp) = &raw.tcp else {
            return Ok(proxy);
        };
        if let Some(text) = &tcp.max_connections {
            let field = format!("{path}.tcp.maxConnections");
            proxy.max_connections = Some(match text.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(self.at(
                        &field,
                        format!(
                            "'{text}' is not a connection count: expected 1-{}",
                            u32::MAX
                        ),
                    ));
                }
            });
        }
        if let Some(text) = &tcp.connect_timeout {
            let field = format!("{path}.tcp.connectTimeout");
            proxy.connect_timeout =
                Some(cli::parse_connect_timeout(text).map_err(|e| self.at(&field, e))?);
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            proxy.keepalive = Some(self.keepalive(&format!("{path}.tcp.tcpKeepalive"), keepalive)?);
        }
        Ok(proxy)
    }

    /// Each field through `--upstream-keepalive`'s parser on its own, so an error names the
    /// field it is about.
    pub(super) fn keepalive(
        &self,
        path: &str,
        raw: &RawKeepalive,
    ) -> Result<KeepaliveSpec, ConfigError> {
        let mut spec = KeepaliveSpec::default();
        for (name, value) in [
            ("time", &raw.time),
            ("probes", &raw.probes),
            ("interval", &raw.interval),
        ] {
            let Some(value) = value else { continue };
            let field = format!("{path}.{name}");
            // `,` and `=` separate fields in the flag's syntax: not part of one value.
            if value.contains([',', '=']) {
                return Err(self.at(&field, format!("{name} '{value}' is not a single value")));
            }
            let one = format!("{name}={value}")
                .parse::<KeepaliveSpec>()
                .map_err(|e| self.at(&field, e))?;
            spec.time = spec.time.or(one.time);
            spec.probes = spec.probes.or(one.probes);
            spec.interval = spec.interval.or(one.interval);
        }
        Ok(spec)
    }
}
