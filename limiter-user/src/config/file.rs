//! `limiter run --config FILE`: the agent's settings as a YAML file, with field names lifted
//! from the gateway and mesh configurations users already have, so a Gloo Gateway `Gateway`,
//! an Envoy Gateway `ClientTrafficPolicy` or an Istio / Gloo Mesh `tcp` connection pool can be
//! copied over nearly as is. Every value goes through the same parser as the matching flag
//! (`listener`, `duration`, `keepalive`, `proxy`), so the file and the command line accept and
//! reject the same things, with the same messages.
//!
//! ```yaml
//! interfaces: [eth0]              # --iface
//! overLimit: drop                 # --over-limit: drop | reset | close
//! handshakeTimeout: 3s            # --handshake-timeout (100ms to 300s)
//! maxListeners: 1024              # --max-listeners (1 to 16384)
//! metricsAddr: 127.0.0.1:9464     # where /metrics listens (IP:PORT)
//! listeners:
//!   - bindAddress: '::'           # Gloo Gateway style: bindAddress (optional) + bindPort ...
//!     bindPort: 8000
//!     options:                    # ... with Gloo's connectionLimit,
//!       connectionLimit: { maxActiveConnections: 1, delayBeforeClose: 2s }
//!     proxy:
//!       upstream: 198.18.0.3:1025
//!       tcp:                      # Istio DestinationRule / Gloo Mesh connectionPool.tcp
//!         maxConnections: 100
//!         connectTimeout: 10s
//!         tcpKeepalive: { time: 700s, probes: 20, interval: 10s }
//!   - listener: 198.18.0.1:9000   # limiter style (as --limit) ...
//!     connection:                 # ... with Envoy Gateway's connectionLimit
//!       connectionLimit: { value: 5 }
//!     action: reset
//!     perSourceLimit:             # --limit-per-source: per client address (IPv4, IPv6 /64)
//!       maxActiveConnections: 2
//!       action: reset             # drop | reset | dry-run (not close)
//! keepalivePolicies:              # --keepalive-for
//!   - destinations: 198.18.0.0/15:5432
//!     tcpKeepalive: { time: 60s, probes: 3, interval: 5s }
//! namespaces:                     # --limit-in: limits inside another network namespace
//!   - path: /run/netns/pod-a      # /run/netns/NAME, /proc/PID/ns/net, a CNI's netns path
//!     listeners:                  # as above, without proxy
//!       - listener: 8000
//!         connection:
//!           connectionLimit: { value: 5 }
//! ```
//!
//! Semantics (each rule is checked, and a broken one is reported with the field it is about):
//!
//! - Every key is optional except where noted, and unknown keys are errors anywhere (a
//!   misspelled limit must not silently leave a listener unlimited). A file with no settings
//!   at all is an error too.
//! - A listener is written one of two ways, never both: `listener` (`PORT`, `IPv4:PORT` or
//!   `[IPv6]:PORT`, exactly as for `--limit`), or Gloo's `bindPort` with an optional
//!   `bindAddress`: `bindAddress: '::'` is the bare port `P` (Gloo's and Envoy's `'::'` listener
//!   is dual-stack, and its limit covers IPv4 and IPv6 clients alike), as is no `bindAddress`;
//!   `'0.0.0.0'` is `0.0.0.0:P`, another address is that address. To limit IPv6 clients only,
//!   write `listener: '[::]:P'`. (`'::'` must be quoted: unquoted it is not valid YAML.)
//! - The limit is Gloo Gateway's `options.connectionLimit {maxActiveConnections,
//!   delayBeforeClose}` or Envoy Gateway's `connection.connectionLimit {value, closeDelay}`, not
//!   both. The count is required and is 1 to 4294967295 (both gateways reject 0).
//! - The over-limit action of a listener is its `action` if given; else `close` if it has a
//!   delay (the delay only means something when an over-limit connection is accepted, then
//!   closed); else the file's `overLimit` (or `--over-limit`). `close` and a delay need a
//!   `proxy` on that listener: without one, limiter refuses the SYN itself and there is nothing
//!   to hold. A delay with `action: drop|reset` is a contradiction and an error. An `action`
//!   needs a limit, and a listener needs a limit, a `perSourceLimit` or a proxy (else it does
//!   nothing). `perSourceLimit` is a second limit with its own action, per client address.
//! - `proxy.upstream` is `IP:PORT` or `[IPv6]:PORT`; the proxy listens on the listener's address.
//!   `proxy.tcp` is per proxy what `--max-upstream-connections` (`maxConnections`, at least 1),
//!   `--connect-timeout` (`connectTimeout`, more than 0) and `--upstream-keepalive`
//!   (`tcpKeepalive`) are for all of them; left out, the flag's value applies.
//! - `tcpKeepalive` fields left out keep the OS default; `tcpKeepalive: {}` turns keepalive on
//!   with the OS defaults (as in Istio). `keepalivePolicies[].destinations` is `CIDR[:PORT]` as
//!   for `--keepalive-for` (quote a bracketed IPv6 one: `'[fd00:1e:57::/48]:5432'`).
//! - A listener, a proxy address and a keepalive destination may each appear only once.
//! - Durations are `500ms`, `3s`, `2m`, `1h` (a bare number is seconds); numbers may be quoted.
//!
//! How the file combines with flags is the agent's business; [`FileConfig`] keeps "not given"
//! (`None`, empty) apart from "given" so that flags can fill in or override.
//!
//! serde-saphyr reports where an error is (line, column), not which field; a second pass over
//! the document's parse events (`PathIndex`) maps positions to field paths and back, so every
//! error can say both.
use std::path::Path;

pub use super::file_config::{ConfigError, FileConfig, ProxyConfig};
use super::{checker::Checker, path_index::PathIndex, raw::RawConfig};

/// Reads, parses and checks a config file.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        origin: origin.clone(),
        source,
    })?;
    parse(&text, &origin)
}

/// Parses and checks config text; `origin` names it in errors (the file's path).
pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
    let index = PathIndex::build(text);
    let check = Checker { origin, index };
    if check.index.nodes.is_empty() && !check.index.broken {
        return Err(check.error(
            None,
            None,
            "the file has no settings: expected a mapping of interfaces, overLimit, \
             handshakeTimeout, maxListeners, metricsAddr, listeners, keepalivePolicies, \
             namespaces"
                .into(),
        ));
    }
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| check.yaml_error(&e))?;
    check.config(&raw)
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::time::Duration;

    use crate::config::{
        keepalive::KeepaliveSpec,
        listener::{Action, LimitSpec, Listener},
    };

    fn ok(yaml: &str) -> FileConfig {
        parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Asserts the error names `field` (exactly), is on `line`, and says `needle`.
    #[track_caller]
    fn fails(yaml: &str, field: Option<&str>, line: Option<u64>, needle: &str) -> ConfigError {
        let err = parse(yaml, "test.yaml").expect_err("should fail");
        let text = err.to_string();
        assert_eq!(err.field(), field, "{text}");
        assert_eq!(err.line(), line, "{text}");
        assert!(text.contains(needle), "{text} lacks {needle:?}");
        assert!(!text.contains('\n'), "{text}");
        if let Some(field) = field {
            assert!(text.contains(&format!("field `{field}`: ")), "{text}");
        }
        err
    }

    fn limit(spec: &str) -> LimitSpec {
        spec.parse().unwrap()
    }

    const GLOO: &str = include_str!("../../../examples/gloo-gateway-connection-limit.yaml");
    const ENVOY: &str = include_str!("../../../examples/envoy-gateway-connection-limit.yaml");
    const MESH: &str = include_str!("../../../examples/gloo-mesh-tcp-connection-policy.yaml");

    #[test]
    fn gloo_gateway_example() {
        let config = ok(GLOO);
        assert_eq!(
            config,
            FileConfig {
                interfaces: vec!["eth0".into()],
                limits: vec![limit("8000=1:close")],
                proxies: vec![ProxyConfig {
                    spec: "8000=198.18.0.3:1025".parse().unwrap(),
                    delay_before_close: Some(Duration::from_secs(2)),
                    connect_timeout: None,
                    max_connections: None,
                    keepalive: None,
                }],
                ..FileConfig::default()
            }
        );
    }

    #[test]
    fn envoy_gateway_example() {
        assert_eq!(
            ok(ENVOY),
            FileConfig {
                interfaces: vec!["eth0".into()],
                over_limit: Some(Action::Drop),
                limits: vec![limit("8000=5")],
                ..FileConfig::default()
            }
        );
    }

    #[test]
    fn gloo_mesh_example() {
        let config = ok(MESH);
        assert!(config.limits.is_empty());
        assert_eq!(
            config.proxies,
            [ProxyConfig {
                spec: "198.18.0.1:9080=198.18.0.5:9080".parse().unwrap(),
                delay_before_close: None,
                connect_timeout: Some(Duration::from_secs(10)),
                max_connections: Some(100),
                keepalive: Some("time=700s,probes=20,interval=10s".parse().unwrap()),
            }]
        );
        assert_eq!(
            config.keepalive_for,
            [(
                "198.18.0.0/15:5432".parse().unwrap(),
                "time=60s,probes=3,interval=5s".parse().unwrap()
            )]
        );
    }

    #[test]
    fn examples_load_from_disk() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        for path in names {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn module_doc_sample() {
        let config = ok("
interfaces: [eth0]
overLimit: drop
handshakeTimeout: 3s
metricsAddr: 127.0.0.1:9464
listeners:
  - bindAddress: '::'
    bindPort: 8000
    options:
      connectionLimit: { maxActiveConnections: 1, delayBeforeClose: 2s }
    proxy:
      upstream: 198.18.0.3:1025
      tcp:
        maxConnections: 100
        connectTimeout: 10s
        tcpKeepalive: { time: 700s, probes: 20, interval: 10s }
  - listener: 198.18.0.1:9000
    connection:
      connectionLimit: { value: 5 }
    action: reset
    perSourceLimit:
      maxActiveConnections: 2
      action: reset
keepalivePolicies:
  - destinations: 198.18.0.0/15:5432
    tcpKeepalive: { time: 60s, probes: 3, interval: 5s }
namespaces:
  - path: /run/netns/pod-a
    listeners:
      - listener: 8000
        connection:
          connectionLimit: { value: 5 }
");
        assert_eq!(
            config.namespaces,
            [crate::config::namespaces::NetnsLimits {
                path: "/run/netns/pod-a".into(),
                limits: vec![limit("8000=5")],
                keepalive: Vec::new(),
                pod: None,
            }]
        );
        assert_eq!(config.over_limit, Some(Action::Drop));
        assert_eq!(config.handshake_timeout, Some(Duration::from_secs(3)));
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            config.limits,
            [
                limit("8000=1:close"),
                limit("198.18.0.1:9000=5:reset"),
                limit("198.18.0.1:9000=2:reset").per_source()
            ]
        );
        assert_eq!(config.proxies[0].max_connections, Some(100));
        assert_eq!(config.keepalive_for.len(), 1);
    }

    #[test]
    fn namespaces_are_checked_like_listeners() {
        let config = ok("
namespaces:
  - path: /run/netns/pod-a
    listeners:
      - bindPort: 8000
        options: { connectionLimit: { maxActiveConnections: 2 } }
        action: reset
      - listener: 9000
        connection: { connectionLimit: { value: 1 } }
  - path: /proc/1/ns/net
    listeners: [{ listener: 8000, connection: { connectionLimit: { value: 3 } } }]
");
        assert_eq!(config.namespaces.len(), 2);
        assert_eq!(
            config.namespaces[0].limits,
            [limit("8000=2:reset"), limit("9000=1")]
        );
        fails(
            "namespaces:\n  - path: run/netns/a\n    listeners: []\n",
            Some("namespaces[0].path"),
            Some(2),
            "not a path to a network namespace",
        );
        fails(
            "namespaces:\n  - path: /run/netns/a\n    listeners:\n      - listener: 8000\n        connection: { connectionLimit: { value: 1 } }\n        proxy: { upstream: 198.18.0.3:1025 }\n",
            Some("namespaces[0].listeners[0].proxy"),
            Some(6),
            "agent's own network namespace only",
        );
        fails(
            "namespaces:\n  - path: /run/netns/a\n    listeners:\n      - listener: 8000\n        connection: { connectionLimit: { value: 1 } }\n      - listener: 8000\n        connection: { connectionLimit: { value: 2 } }\n",
            Some("namespaces[0].listeners[1].listener"),
            Some(6),
            "already given in namespaces[0].listeners[0]",
        );
        fails(
            "namespaces:\n  - path: /run/netns/a\n    listeners: []\n  - path: /run/netns/a\n    listeners: []\n",
            Some("namespaces[1].path"),
            Some(4),
            "already given in namespaces[0]",
        );
        fails(
            "namespaces:\n  - path: /run/netns/a\n    listners: []\n",
            Some("namespaces[0].listners"),
            Some(3),
            "unknown field",
        );
    }

    #[test]
    fn bind_address_and_port_make_the_cli_listener() {
        for (address, expected) in [
            ("bindAddress: '::'\n    ", "8000"),
            ("bindAddress: \"::\"\n    ", "8000"),
            ("bindAddress: 0.0.0.0\n    ", "0.0.0.0:8000"),
            ("bindAddress: 198.18.0.1\n    ", "198.18.0.1:8000"),
            ("bindAddress: 'fd00:1e:57::1'\n    ", "[fd00:1e:57::1]:8000"),
            ("", "8000"),
        ] {
            let yaml = format!(
                "listeners:\n  - {address}bindPort: 8000\n    options: {{connectionLimit: {{maxActiveConnections: 3}}}}\n"
            );
            assert_eq!(
                ok(&yaml).limits,
                [limit(&format!("{expected}=3"))],
                "{yaml}"
            );
        }
        assert_eq!(
            ok("listeners: [{bindPort: '8000', bindAddress: '::', connection: {connectionLimit: {value: 2}}}]")
                .limits[0]
                .listener,
            Listener::AnyAddress(8000)
        );
    }

    #[test]
    fn limiter_style_listeners() {
        for spec in [
            "8000",
            "0.0.0.0:80",
            "198.18.0.1:8000",
            "[::]:8000",
            "[fd00:1e:57::1]:443",
        ] {
            let yaml = format!(
                "listeners:\n  - listener: '{spec}'\n    connection: {{connectionLimit: {{value: 1}}}}\n"
            );
            assert_eq!(ok(&yaml).limits, [limit(&format!("{spec}=1"))]);
        }
        // A bare port needs no quotes.
        assert_eq!(
            ok("listeners: [{listener: 8000, connection: {connectionLimit: {value: 4294967295}}}]")
                .limits,
            [limit("8000=4294967295")]
        );
    }

    #[test]
    fn per_source_limits() {
        let both = ok(
            "listeners:\n  - listener: 8000\n    connection: {connectionLimit: {value: 100}}\n    perSourceLimit: {maxActiveConnections: 2, action: reset}\n",
        );
        assert_eq!(
            both.limits,
            [limit("8000=100"), limit("8000=2:reset").per_source()]
        );
        // A per-source limit alone is something to do; its action defaults like any limit's.
        let alone = ok("listeners: [{listener: 8000, perSourceLimit: {maxActiveConnections: 3}}]");
        assert_eq!(alone.limits, [limit("8000=3").per_source()]);
        fails(
            "listeners: [{listener: 8000, perSourceLimit: {maxActiveConnections: 0}}]",
            Some("listeners[0].perSourceLimit.maxActiveConnections"),
            Some(1),
            "out of range",
        );
        fails(
            "listeners: [{listener: 8000, perSourceLimit: {maxActiveConnections: 2, action: close}}]",
            Some("listeners[0].perSourceLimit.action"),
            Some(1),
            "refuses at the SYN",
        );
        fails(
            "listeners: [{listener: 8000, perSourceLimit: {maxActiveConnections: 2, per: ip}}]",
            Some("listeners[0].perSourceLimit.per"),
            Some(1),
            "unknown field",
        );
    }

    #[test]
    fn display_is_one_line_with_origin_position_and_field() {
        let err = fails(
            "interfaces: [eth0]\nlisteners:\n  - bindPort: 0\n",
            Some("listeners[0].bindPort"),
            Some(3),
            "invalid port",
        );
        assert_eq!(
            err.to_string(),
            "config test.yaml: line 3, column 15: field `listeners[0].bindPort`: '0' has an invalid port: expected 1-65535"
        );
        // A quoted value with a line break is still one line.
        fails(
            "listeners:\n  - listener: \"80\\n00\"\n",
            Some("listeners[0].listener"),
            Some(2),
            "not a listener",
        );
    }

    #[test]
    fn unknown_fields_anywhere_are_named() {
        fails(
            "interfaces: [eth0]\nlimits: []\n",
            Some("limits"),
            Some(2),
            "unknown field: expected one of interfaces, overLimit",
        );
        fails(
            "listeners:\n  - bindPort: 8000\n    tcpGateway: {}\n",
            Some("listeners[0].tcpGateway"),
            Some(3),
            "expected one of listener, bindAddress, bindPort, options, connection, action, proxy",
        );
        fails(
            "listeners:\n  - bindPort: 8000\n    options:\n      connectionLimit:\n        maxActiveConnections: 1\n        maxActiveConnection: 2\n",
            Some("listeners[0].options.connectionLimit.maxActiveConnection"),
            Some(6),
            "expected one of maxActiveConnections, delayBeforeClose",
        );
        // Gloo's field in Envoy Gateway's block.
        fails(
            "listeners:\n  - listener: 8000\n    connection:\n      connectionLimit: {value: 1, delayBeforeClose: 2s}\n",
            Some("listeners[0].connection.connectionLimit.delayBeforeClose"),
            Some(4),
            "expected one of value, closeDelay",
        );
        fails(
            "listeners:\n  - listener: 8000\n    proxy:\n      upstream: 198.18.0.3:1\n      tcp:\n        maxConnections: 1\n        idleTimeout: 1h\n",
            Some("listeners[0].proxy.tcp.idleTimeout"),
            Some(7),
            "unknown field",
        );
        fails(
            "keepalivePolicies:\n  - destinations: 198.18.0.0/15\n    tcpKeepalive: {time: 60s, retries: 3}\n",
            Some("keepalivePolicies[0].tcpKeepalive.retries"),
            Some(3),
            "expected one of time, probes, interval",
        );
    }

    #[test]
    fn unknown_field_column() {
        let err = fails(
            "listeners:\n  - listener: 8000\n    connection: {connectionLimit: {value: 1, bogus: 1}}\n",
            Some("listeners[0].connection.connectionLimit.bogus"),
            Some(3),
            "unknown field",
        );
        assert!(err.to_string().contains("line 3, column 46"), "{err}");
    }

    #[test]
    fn wrong_types_are_named() {
        fails(
            "interfaces: eth0\n",
            Some("interfaces"),
            Some(1),
            "expected a list",
        );
        fails(
            "interfaces: [eth0, [eth1]]\n",
            Some("interfaces[1]"),
            Some(1),
            "single value",
        );
        fails(
            "listeners: 8000\n",
            Some("listeners"),
            Some(1),
            "expected a list",
        );
        fails(
            "listeners:\n  - 8000\n",
            Some("listeners[0]"),
            Some(2),
            "expected a mapping",
        );
        fails(
            "listeners:\n  - bindPort: [8000]\n",
            Some("listeners[0].bindPort"),
            Some(2),
            "single value",
        );
        fails(
            "listeners:\n  - bindPort: 8000\n    options: 5\n",
            Some("listeners[0].options"),
            Some(3),
            "expected a mapping",
        );
        fails(
            "listeners:\n  - listener: 8000\n    proxy: 198.18.0.3:1025\n",
            Some("listeners[0].proxy"),
            Some(3),
            "expected a mapping",
        );
        fails(
            "keepalivePolicies:\n  - destinations: 198.18.0.0/15\n    tcpKeepalive:\n      time: {s: 5}\n",
            Some("keepalivePolicies[0].tcpKeepalive.time"),
            Some(4),
            "single value",
        );
        fails("- eth0\n", None, Some(1), "expected a mapping");
        fails(
            "overLimit:\n  - drop\n",
            Some("overLimit"),
            Some(2),
            "single value",
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        fails(
            "listeners:\n  - bindPort: 8000\n    options:\n      connectionLimit:\n        delayBeforeClose: 2s\n",
            Some("listeners[0].options.connectionLimit.maxActiveConnections"),
            Some(5),
            "missing: this field is required",
        );
        fails(
            "listeners:\n  - listener: 8000\n    connection: {connectionLimit: {closeDelay: 1s}}\n",
            Some("listeners[0].connection.connectionLimit.value"),
            Some(3),
            "required",
        );
        fails(
            "listeners:\n  - listener: 8000\n    options: {}\n",
            Some("listeners[0].options.connectionLimit"),
            Some(3),
            "required",
        );
        fails(
            "listeners:\n  - listener: 8000\n    proxy:\n      tcp: {maxConnections: 1}\n",
            Some("listeners[0].proxy.upstream"),
            Some(4),
            "required",
        );
        fails(
            "keepalivePolicies:\n  - tcpKeepalive: {time: 5s}\n",
            Some("keepalivePolicies[0].destinations"),
            Some(2),
            "required",
        );
        fails(
            "keepalivePolicies:\n  - destinations: 198.18.0.0/15\n",
            Some("keepalivePolicies[0].tcpKeepalive"),
            Some(2),
            "required",
        );
        fails(
            "listeners:\n  - listener: 8000\n    connection:\n      connectionLimit:\n        value:\n",
            Some("listeners[0].connection.connectionLimit.value"),
            Some(5),
            "has no value",
        );
    }

    #[test]
    fn limit_values_are_checked_like_the_flag() {
        for (value, needle) in [
            ("0", "limit '0' is out of range: expected 1-4294967295"),
            ("-1", "out of range"),
            ("4294967296", "out of range"),
            ("ten", "limit 'ten' is not a whole number"),
            ("1.5", "not a whole number"),
            ("'5:reset'", "limit '5:reset' is not a whole number"),
            ("''", "not a whole number"),
        ] {
            fails(
                &format!(
                    "listeners:\n  - bindPort: 8000\n    options:\n      connectionLimit:\n        maxActiveConnections: {value}\n"
                ),
                Some("listeners[0].options.connectionLimit.maxActiveConnections"),
                Some(5),
                needle,
            );
            fails(
                &format!(
                    "listeners:\n  - listener: 8000\n    connection:\n      connectionLimit:\n        value: {value}\n"
                ),
                Some("listeners[0].connection.connectionLimit.value"),
                Some(5),
                needle,
            );
        }
        // Quoted numbers are numbers.
        assert_eq!(
            ok("listeners: [{listener: 8000, connection: {connectionLimit: {value: '7'}}}]").limits,
            [limit("8000=7")]
        );
    }

    #[test]
    fn one_limit_style_per_listener() {
        fails(
            "listeners:\n  - listener: 8000\n    options: {connectionLimit: {maxActiveConnections: 1}}\n    connection: {connectionLimit: {value: 1}}\n",
            Some("listeners[0].connection"),
            Some(4),
            "not both",
        );
    }

    #[test]
    fn exactly_one_listener_style() {
        fails(
            "listeners:\n  - listener: 8000\n    bindPort: 8000\n    connection: {connectionLimit: {value: 1}}\n",
            Some("listeners[0].listener"),
            Some(2),
            "not both",
        );
        fails(
            "listeners:\n  - listener: 8000\n    bindAddress: '::'\n",
            Some("listeners[0].listener"),
            Some(2),
            "not both",
        );
        fails(
            "listeners:\n  - connection: {connectionLimit: {value: 1}}\n",
            Some("listeners[0]"),
            Some(2),
            "missing listener",
        );
        fails(
            "listeners:\n  - bindAddress: '::'\n    connection: {connectionLimit: {value: 1}}\n",
            Some("listeners[0].bindAddress"),
            Some(2),
            "needs a bindPort",
        );
    }

    #[test]
    fn bad_listeners_pass_the_parsers_message() {
        let limit = "    connection: {connectionLimit: {value: 1}}\n";
        for (port, needle) in [
            ("0", "'0' has an invalid port"),
            ("65536", "'65536' has an invalid port"),
            ("http", "'http' is not a port"),
            ("'198.18.0.1:80'", "is not a port"),
        ] {
            fails(
                &format!("listeners:\n  - bindPort: {port}\n{limit}"),
                Some("listeners[0].bindPort"),
                Some(2),
                needle,
            );
        }
        fails(
            &format!("listeners:\n  - bindAddress: 198.18.0\n    bindPort: 80\n{limit}"),
            Some("listeners[0].bindAddress"),
            Some(2),
            "'198.18.0' is not an IP address",
        );
        fails(
            &format!("listeners:\n  - bindAddress: '[::]'\n    bindPort: 80\n{limit}"),
            Some("listeners[0].bindAddress"),
            Some(2),
            "not an IP address",
        );
        for (spec, needle) in [
            ("'::1:80'", "is not a listener"),
            ("198.18.0.1:0", "invalid port"),
            ("'[zz::]:80'", "invalid address"),
        ] {
            fails(
                &format!("listeners:\n  - listener: {spec}\n{limit}"),
                Some("listeners[0].listener"),
                Some(2),
                needle,
            );
        }
    }

    #[test]
    fn durations_are_checked() {
        // Envoy Gateway's own golden error case.
        let err = fails(
            "listeners:\n  - listener: 8000\n    connection:\n      connectionLimit:\n        value: 5\n        closeDelay: 10mib\n    proxy: {upstream: 198.18.0.3:1025}\n",
            Some("listeners[0].connection.connectionLimit.closeDelay"),
            Some(6),
            "'10mib' is not a duration",
        );
        assert!(err.to_string().contains("column 21"), "{err}");
        fails(
            "listeners:\n  - listener: 8000\n    options: {connectionLimit: {maxActiveConnections: 1, delayBeforeClose: 1.5s}}\n    proxy: {upstream: 198.18.0.3:1025}\n",
            Some("listeners[0].options.connectionLimit.delayBeforeClose"),
            Some(3),
            "'1.5s' is not a duration",
        );
        fails(
            "\nmaxListeners: 0\n",
            Some("maxListeners"),
            Some(2),
            "'0' is not a number of listeners from 1 to 16384",
        );
        fails(
            "maxListeners: many\n",
            Some("maxListeners"),
            Some(1),
            "'many' is not a number of listeners from 1 to 16384",
        );
        assert_eq!(ok("maxListeners: 1024\n").max_listeners, Some(1024));
        assert_eq!(ok("maxListeners: '64'\n").max_listeners, Some(64));
        fails(
            "handshakeTimeout: soon\n",
            Some("handshakeTimeout"),
            Some(1),
            "not a duration",
        );
        fails(
            "handshakeTimeout: 50ms\n",
            Some("handshakeTimeout"),
            Some(1),
            "'50ms' is out of range: expected 100ms to 300s",
        );
        fails(
            "\nhandshakeTimeout: 10m\n",
            Some("handshakeTimeout"),
            Some(2),
            "out of range",
        );
        assert_eq!(
            ok("handshakeTimeout: 500ms\n").handshake_timeout,
            Some(Duration::from_millis(500))
        );
        // A bare number is seconds, as for the flags.
        assert_eq!(
            ok("handshakeTimeout: 5\n").handshake_timeout,
            Some(Duration::from_secs(5))
        );
        let proxy = "listeners:\n  - listener: 8000\n    proxy:\n      upstream: 198.18.0.3:1025\n      tcp:\n        connectTimeout: ";
        fails(
            &format!("{proxy}0s\n"),
            Some("listeners[0].proxy.tcp.connectTimeout"),
            Some(6),
            "'0s' must be more than 0",
        );
        fails(
            &format!("{proxy}fast\n"),
            Some("listeners[0].proxy.tcp.connectTimeout"),
            Some(6),
            "not a duration",
        );
        assert_eq!(
            ok(&format!("{proxy}1ms\n")).proxies[0].connect_timeout,
            Some(Duration::from_millis(1))
        );
    }

    #[test]
    fn delay_and_close_need_a_proxy() {
        fails(
            "listeners:\n  - bindPort: 8000\n    options:\n      connectionLimit:\n        maxActiveConnections: 1\n        delayBeforeClose: 2s\n",
            Some("listeners[0].options.connectionLimit.delayBeforeClose"),
            Some(6),
            "needs a proxy",
        );
        fails(
            "listeners:\n  - listener: 8000\n    connection: {connectionLimit: {value: 5, closeDelay: 1s}}\n",
            Some("listeners[0].connection.connectionLimit.closeDelay"),
            Some(3),
            "needs a proxy",
        );
        fails(
            "listeners:\n  - listener: 8000\n    connection: {connectionLimit: {value: 5}}\n    action: close\n",
            Some("listeners[0].action"),
            Some(4),
            "the close action needs a proxy",
        );
        fails(
            "overLimit: close\nlisteners:\n  - listener: 8000\n    connection: {connectionLimit: {value: 5}}\n",
            Some("listeners[0]"),
            Some(3),
            "overLimit is close",
        );
        // With its own action the listener does not depend on overLimit.
        assert_eq!(
            ok("overLimit: close\nlisteners:\n  - listener: 8000\n    connection: {connectionLimit: {value: 5}}\n    action: reset\n").limits,
            [limit("8000=5:reset")]
        );
    }

    #[test]
    fn a_delay_means_close_and_contradicts_drop() {
        let proxied = |extra: &str| {
            format!(
                "listeners:\n  - listener: 8000\n    options:\n      connectionLimit: {{maxActiveConnections: 1, delayBeforeClose: 0s}}\n    proxy: {{upstream: '[fd00:1e:57::3]:1025'}}\n{extra}"
            )
        };
        let config = ok(&proxied(""));
        assert_eq!(config.limits, [limit("8000=1:close")]);
        assert_eq!(config.proxies[0].delay_before_close, Some(Duration::ZERO));
        assert_eq!(
            config.proxies[0].spec.upstream,
            "[fd00:1e:57::3]:1025".parse().unwrap()
        );
        assert_eq!(
            ok(&proxied("    action: close\n")).limits,
            [limit("8000=1:close")]
        );
        fails(
            &proxied("    action: drop\n"),
            Some("listeners[0].options.connectionLimit.delayBeforeClose"),
            Some(4),
            "close action only, and action is drop",
        );
        // close without a delay: the flag's delay applies.
        let config = ok(
            "listeners:\n  - listener: 8000\n    options: {connectionLimit: {maxActiveConnections: 1}}\n    action: close\n    proxy: {upstream: 198.18.0.3:1}\n",
        );
        assert_eq!(config.limits, [limit("8000=1:close")]);
        assert_eq!(config.proxies[0].delay_before_close, None);
        // No action, no delay: the over-limit default, whatever it ends up being.
        let config = ok(
            "listeners:\n  - listener: 8000\n    options: {connectionLimit: {maxActiveConnections: 1}}\n    proxy: {upstream: 198.18.0.3:1}\n",
        );
        assert_eq!(config.limits[0].action, None);
    }

    #[test]
    fn a_listener_must_do_something() {
        fails(
            "listeners:\n  - listener: 8000\n",
            Some("listeners[0]"),
            Some(2),
            "nothing to do",
        );
        fails(
            "listeners:\n  - listener: 8000\n    action: reset\n    proxy: {upstream: 198.18.0.3:1}\n",
            Some("listeners[0].action"),
            Some(3),
            "an action needs a limit",
        );
        fails(
            "listeners:\n  - listener: 8000\n    action: bounce\n",
            Some("listeners[0].action"),
            Some(3),
            "'bounce' is not an over-limit action: expected drop, reset, close or dry-run",
        );
        // A proxy alone is fine: it forwards, and nothing is limited.
        let config = ok("listeners:\n  - listener: 8000\n    proxy: {upstream: 198.18.0.3:1}\n");
        assert!(config.limits.is_empty());
        assert_eq!(config.proxies.len(), 1);
    }

    #[test]
    fn duplicates_are_rejected() {
        fails(
            "listeners:\n  - listener: '8000'\n    connection: {connectionLimit: {value: 1}}\n  - bindAddress: '::'\n    bindPort: 8000\n    connection: {connectionLimit: {value: 2}}\n",
            Some("listeners[1].bindPort"),
            Some(5),
            "listener 8000 is already given in listeners[0]",
        );
        fails(
            "listeners:\n  - listener: 8000\n    proxy: {upstream: 198.18.0.3:1}\n  - listener: '[::]:8000'\n    proxy: {upstream: 198.18.0.3:2}\n",
            Some("listeners[1].proxy"),
            Some(5),
            "would bind [::]:8000, as the proxy on 8000 does",
        );
        fails(
            "keepalivePolicies:\n  - destinations: 198.18.0.0/15:5432\n    tcpKeepalive: {time: 5s}\n  - destinations: 198.19.1.1/15:5432\n    tcpKeepalive: {time: 6s}\n",
            Some("keepalivePolicies[1].destinations"),
            Some(4),
            "198.18.0.0/15:5432 is already given in keepalivePolicies[0]",
        );
        fails(
            "interfaces: [eth0, eth1, eth0]\n",
            Some("interfaces[2]"),
            Some(1),
            "interface 'eth0' is given twice",
        );
        fails(
            "listeners:\n  - listener: 8000\n    listener: 8001\n",
            Some("listeners[0].listener"),
            Some(3),
            "given twice in the same mapping",
        );
        // Different listeners on one port are different limits, as on the command line.
        assert_eq!(
            ok("listeners:\n  - {listener: 8000, connection: {connectionLimit: {value: 1}}}\n  - {listener: '0.0.0.0:8000', connection: {connectionLimit: {value: 2}}}\n").limits.len(),
            2
        );
    }

    #[test]
    fn keepalive_values_pass_the_parsers_message() {
        let policy = |keepalive: &str| {
            format!(
                "keepalivePolicies:\n  - destinations: 198.18.0.0/15\n    tcpKeepalive:\n      {keepalive}\n"
            )
        };
        for (field, keepalive, needle) in [
            (
                "time",
                "time: 500ms",
                "time '500ms' must be whole seconds from 1s to 32767s",
            ),
            ("time", "time: 10mib", "time: '10mib' is not a duration"),
            (
                "interval",
                "interval: 0s",
                "interval '0s' must be whole seconds",
            ),
            (
                "probes",
                "probes: 0",
                "probes 0 is out of range: expected 1-127",
            ),
            (
                "probes",
                "probes: many",
                "probes 'many' is not a whole number",
            ),
            (
                "time",
                "time: '5s,probes=3'",
                "time '5s,probes=3' is not a single value",
            ),
        ] {
            fails(
                &policy(keepalive),
                Some(&format!("keepalivePolicies[0].tcpKeepalive.{field}")),
                Some(4),
                needle,
            );
        }
        // The same parser under a proxy.
        fails(
            "listeners:\n  - listener: 8000\n    proxy:\n      upstream: 198.18.0.3:1\n      tcp:\n        tcpKeepalive: {time: 700s, probes: 200}\n",
            Some("listeners[0].proxy.tcp.tcpKeepalive.probes"),
            Some(6),
            "probes 200 is out of range",
        );
        // Fields left out keep the OS default; an empty one still turns keepalive on.
        let config = ok(&policy("{}"));
        assert_eq!(config.keepalive_for[0].1, KeepaliveSpec::default());
        let config = ok(&policy("probes: 4"));
        assert_eq!(config.keepalive_for[0].1, "probes=4".parse().unwrap());
    }

    #[test]
    fn destinations_pass_the_parsers_message() {
        for (destinations, needle) in [
            ("198.18.0.0", "'198.18.0.0' is not CIDR[:PORT]"),
            ("198.18.0.0/33", "invalid prefix length: expected 0-32"),
            ("198.18.0.0/15:0", "invalid port"),
            ("'[fd00:1e:57::/48]'", "is not CIDR[:PORT]"),
        ] {
            fails(
                &format!(
                    "keepalivePolicies:\n  - tcpKeepalive: {{time: 5s}}\n    destinations: {destinations}\n"
                ),
                Some("keepalivePolicies[0].destinations"),
                Some(3),
                needle,
            );
        }
        // Unquoted, a bracketed IPv6 destination is a YAML list.
        fails(
            "keepalivePolicies:\n  - destinations: [fd00:1e:57::/48]:5432\n    tcpKeepalive: {time: 5s}\n",
            Some("keepalivePolicies[0].destinations"),
            Some(2),
            "quote a value that starts with '['",
        );
        let config = ok(
            "keepalivePolicies:\n  - destinations: '[fd00:1e:57::/48]:5432'\n    tcpKeepalive: {time: 5s}\n",
        );
        assert_eq!(
            config.keepalive_for[0].0.to_string(),
            "[fd00:1e:57::/48]:5432"
        );
    }

    #[test]
    fn upstreams_and_pool_limits_are_checked() {
        let proxy = |upstream: &str| {
            format!("listeners:\n  - listener: 8000\n    proxy:\n      upstream: {upstream}\n")
        };
        for (upstream, needle) in [
            ("tcp-echo", "'tcp-echo' is not an upstream IP:PORT"),
            ("198.18.0.3", "not an upstream"),
            ("198.18.0.3:0", "upstream port must be 1-65535"),
            ("'a=b'", "not an upstream"),
        ] {
            fails(
                &proxy(upstream),
                Some("listeners[0].proxy.upstream"),
                Some(4),
                needle,
            );
        }
        let pool = |max: &str| {
            format!(
                "{}      tcp: {{maxConnections: {max}}}\n",
                proxy("198.18.0.3:1")
            )
        };
        for max in ["0", "-1", "4294967296", "lots"] {
            fails(
                &pool(max),
                Some("listeners[0].proxy.tcp.maxConnections"),
                Some(5),
                "is not a connection count: expected 1-4294967295",
            );
        }
        assert_eq!(
            ok(&pool("4294967295")).proxies[0].max_connections,
            Some(u32::MAX)
        );
    }

    #[test]
    fn top_level_values() {
        fails(
            "overLimit: bounce\n",
            Some("overLimit"),
            Some(1),
            "not an over-limit action",
        );
        assert_eq!(ok("overLimit: reset\n").over_limit, Some(Action::Reset));
        fails(
            "metricsAddr: localhost:9464\n",
            Some("metricsAddr"),
            Some(1),
            "'localhost:9464' is not IP:PORT",
        );
        fails(
            "metricsAddr: 127.0.0.1:0\n",
            Some("metricsAddr"),
            Some(1),
            "is not IP:PORT",
        );
        assert_eq!(
            ok("metricsAddr: '[::1]:9464'\n").metrics_addr,
            Some("[::1]:9464".parse().unwrap())
        );
        fails(
            "interfaces: ['']\n",
            Some("interfaces[0]"),
            Some(1),
            "not an interface name",
        );
        fails(
            "interfaces: [a-very-long-interface]\n",
            Some("interfaces[0]"),
            Some(1),
            "1 to 15 characters",
        );
        assert_eq!(
            ok("interfaces: [eth0, veth-a]\n").interfaces,
            ["eth0", "veth-a"]
        );
    }

    #[test]
    fn empty_and_broken_files() {
        for empty in ["", "\n", "# nothing yet\n"] {
            let err = fails(empty, None, None, "the file has no settings");
            assert!(
                err.to_string()
                    .starts_with("config test.yaml: the file has no settings"),
                "{err}"
            );
        }
        fails("~\n", None, Some(1), "expected a mapping");
        // Unquoted '::' is a YAML syntax error: pointed at, with the field it is in.
        fails(
            "listeners:\n  - bindAddress: ::\n    bindPort: 8000\n",
            Some("listeners[0].bindAddress"),
            Some(2),
            "must be quoted",
        );
        fails(
            "interfaces: [eth0\n",
            Some("interfaces"),
            Some(1),
            "interfaces",
        );
        fails(
            "interfaces: [eth0]\n---\ninterfaces: [eth1]\n",
            None,
            Some(3),
            "",
        );
    }

    #[test]
    fn anchors_and_aliases_work() {
        let config = ok(
            "keepalivePolicies:\n  - destinations: 198.18.0.0/15:5432\n    tcpKeepalive: &db {time: 60s, probes: 3}\n  - destinations: 198.18.0.0/15:6432\n    tcpKeepalive: *db\n",
        );
        assert_eq!(config.keepalive_for[0].1, config.keepalive_for[1].1);
    }

    #[test]
    fn load_names_the_file() {
        let err = load(Path::new("/nonexistent/limiter.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config /nonexistent/limiter.yaml: cannot read it: "),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("limiter-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(
            &path,
            "interfaces: [eth0]\nlisteners:\n  - bindPort: 8000\n",
        )
        .unwrap();
        let err = load(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            err,
            format!(
                "config {}: line 3, column 5: field `listeners[0]`: nothing to do: give it a limit (options.connectionLimit or connection.connectionLimit), a perSourceLimit, a proxy, or a mix",
                path.display()
            )
        );
    }
}
