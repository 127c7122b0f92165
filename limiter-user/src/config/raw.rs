//! The `--config` file's shape, as serde reads it: every scalar as text, handed to the flag
//! parsers by [`super::checker`].
use serde::Deserialize;

// The file's shape. Scalars are read as text and handed to the flag parsers, so values and
// messages match the command line (and a quoted number is as good as a bare one).

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    pub(super) interfaces: Option<Vec<String>>,
    pub(super) over_limit: Option<String>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) max_listeners: Option<String>,
    pub(super) metrics_addr: Option<String>,
    pub(super) listeners: Option<Vec<RawListener>>,
    pub(super) keepalive_policies: Option<Vec<RawKeepalivePolicy>>,
    pub(super) namespaces: Option<Vec<RawNamespace>>,
}

/// Limits inside another network namespace (`--limit-in`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawNamespace {
    pub(super) path: String,
    pub(super) listeners: Vec<RawListener>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawListener {
    pub(super) listener: Option<String>,
    pub(super) bind_address: Option<String>,
    pub(super) bind_port: Option<String>,
    /// Gloo Gateway: `options.connectionLimit`.
    pub(super) options: Option<RawGlooOptions>,
    /// Envoy Gateway: `connection.connectionLimit`.
    pub(super) connection: Option<RawEnvoyConnection>,
    pub(super) action: Option<String>,
    pub(super) proxy: Option<RawProxy>,
    /// At most this many connections per client address (`--limit-per-source`).
    pub(super) per_source_limit: Option<RawPerSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPerSource {
    pub(super) max_active_connections: String,
    pub(super) action: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawGlooOptions {
    pub(super) connection_limit: RawGlooLimit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawGlooLimit {
    pub(super) max_active_connections: String,
    pub(super) delay_before_close: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawEnvoyConnection {
    pub(super) connection_limit: RawEnvoyLimit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawEnvoyLimit {
    pub(super) value: String,
    pub(super) close_delay: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawProxy {
    pub(super) upstream: String,
    pub(super) tcp: Option<RawTcp>,
}

/// Istio's `connectionPool.tcp` (as Gloo Mesh's ConnectionPolicy writes it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTcp {
    pub(super) max_connections: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) tcp_keepalive: Option<RawKeepalive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawKeepalive {
    pub(super) time: Option<String>,
    pub(super) probes: Option<String>,
    pub(super) interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawKeepalivePolicy {
    pub(super) destinations: String,
    pub(super) tcp_keepalive: RawKeepalive,
}
