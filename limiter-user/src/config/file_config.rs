//! What a `--config` file sets ([`FileConfig`]), and what is wrong with one ([`ConfigError`]):
//! read and checked by [`super::file`].
use std::{net::SocketAddr, time::Duration};

use crate::{
    config::proxy_spec::ProxySpec,
    config::{
        keepalive::{Destinations, KeepaliveSpec},
        listener::{Action, LimitSpec},
    },
};

/// What a config file sets. Empty / `None`: not set in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileConfig {
    pub interfaces: Vec<String>,
    pub over_limit: Option<Action>,
    pub handshake_timeout: Option<Duration>,
    pub max_listeners: Option<u32>,
    pub metrics_addr: Option<SocketAddr>,
    /// In file order; `action: None` means the over-limit default.
    pub limits: Vec<LimitSpec>,
    pub proxies: Vec<ProxyConfig>,
    pub keepalive_for: Vec<(Destinations, KeepaliveSpec)>,
    /// `namespaces`: limits inside other network namespaces (`--limit-in`).
    pub namespaces: Vec<crate::config::namespaces::NetnsLimits>,
}

/// One proxy and its own settings; `None` fields fall back to the matching flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub spec: ProxySpec,
    /// Gloo's `delayBeforeClose` / Envoy Gateway's `closeDelay` (`--delay-before-close`).
    pub delay_before_close: Option<Duration>,
    /// `tcp.connectTimeout` (`--connect-timeout`).
    pub connect_timeout: Option<Duration>,
    /// `tcp.maxConnections` (`--max-upstream-connections`).
    pub max_connections: Option<u32>,
    /// `tcp.tcpKeepalive` (`--upstream-keepalive`).
    pub keepalive: Option<KeepaliveSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {origin}: cannot read it: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    /// Anything wrong with the content. Displayed as one line:
    /// `config FILE: line L, column C: field `PATH`: MESSAGE`, leaving out what is not known.
    #[error("{}", invalid_line(.origin, .position, .field.as_deref(), .message))]
    Invalid {
        origin: String,
        /// 1-based line and column (characters).
        position: Option<(u64, u64)>,
        /// The field's path, e.g. `listeners[0].bindPort`.
        field: Option<String>,
        message: String,
    },
}

impl ConfigError {
    /// The path of the field the error is about, e.g. `listeners[0].bindPort`.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => field.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }

    /// 1-based line the error is on.
    pub fn line(&self) -> Option<u64> {
        match self {
            ConfigError::Invalid { position, .. } => position.map(|(line, _)| line),
            ConfigError::Read { .. } => None,
        }
    }
}

fn invalid_line(
    origin: &str,
    position: &Option<(u64, u64)>,
    field: Option<&str>,
    message: &str,
) -> String {
    let mut line = format!("config {origin}");
    if let Some((l, c)) = position {
        line.push_str(&format!(": line {l}, column {c}"));
    }
    if let Some(field) = field {
        line.push_str(&format!(": field `{field}`"));
    }
    // Messages quote user input, which may hold line breaks (a quoted YAML scalar); the error
    // is one line.
    line.push_str(": ");
    line.push_str(&message.replace(['\n', '\r'], " "));
    line
}
