//! Listener specs as users write them (`8000`, `198.18.0.1:8000`, `0.0.0.0:8000`,
//! `[fd00::1]:8000`, `[::]:8000`) and the key the kernel programs look them up by.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use limiter_common::{ListenerKey, action, family};

/// A limited listener: a local address (or every address of a family, or of both) and a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Listener {
    /// `PORT`: every local address, IPv4 and IPv6.
    AnyAddress(u16),
    /// `0.0.0.0:PORT`, `[::]:PORT`, or a specific address.
    Address(IpAddr, u16),
}

impl Listener {
    pub fn port(&self) -> u16 {
        match *self {
            Listener::AnyAddress(port) | Listener::Address(_, port) => port,
        }
    }

    /// The listener a kernel key stands for (used when adopting pinned maps).
    pub fn from_key(key: &ListenerKey) -> Option<Self> {
        let bytes: Vec<u8> = key.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        match key.family {
            family::ANY => Some(Listener::AnyAddress(key.port)),
            family::V4 => {
                let octets: [u8; 4] = bytes[..4].try_into().ok()?;
                Some(Listener::Address(IpAddr::V4(octets.into()), key.port))
            }
            family::V6 => {
                let octets: [u8; 16] = bytes.try_into().ok()?;
                Some(Listener::Address(IpAddr::V6(octets.into()), key.port))
            }
            _ => None,
        }
    }

    pub fn key(&self) -> ListenerKey {
        match *self {
            Listener::AnyAddress(port) => ListenerKey {
                addr: [0; 4],
                port,
                family: family::ANY,
            },
            Listener::Address(IpAddr::V4(ip), port) => ListenerKey {
                addr: [u32::from_ne_bytes(ip.octets()), 0, 0, 0],
                port,
                family: family::V4,
            },
            Listener::Address(IpAddr::V6(ip), port) => {
                let o = ip.octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ListenerKey {
                    addr: [word(0), word(4), word(8), word(12)],
                    port,
                    family: family::V6,
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenerParseError {
    #[error("'{0}' is not a listener: expected PORT, IPv4:PORT or [IPv6]:PORT")]
    Syntax(String),
    #[error("'{0}' has an invalid port: expected 1-65535")]
    Port(String),
    #[error("'{0}' has an invalid address: {1}")]
    Address(String, String),
}

fn parse_port(spec: &str, port: &str) -> Result<u16, ListenerParseError> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(ListenerParseError::Port(spec.to_owned())),
        Ok(port) => Ok(port),
    }
}

impl FromStr for Listener {
    type Err = ListenerParseError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let syntax = || ListenerParseError::Syntax(spec.to_owned());
        if spec.is_empty() {
            return Err(syntax());
        }
        if spec.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Listener::AnyAddress(parse_port(spec, spec)?));
        }
        if let Some(rest) = spec.strip_prefix('[') {
            let (addr, port) = rest.split_once("]:").ok_or_else(syntax)?;
            let ip = Ipv6Addr::from_str(addr)
                .map_err(|e| ListenerParseError::Address(spec.to_owned(), e.to_string()))?;
            return Ok(Listener::Address(IpAddr::V6(ip), parse_port(spec, port)?));
        }
        let (addr, port) = spec.rsplit_once(':').ok_or_else(syntax)?;
        if addr.contains(':') {
            // An IPv6 address without brackets: the port would be ambiguous.
            return Err(syntax());
        }
        let ip = Ipv4Addr::from_str(addr)
            .map_err(|e| ListenerParseError::Address(spec.to_owned(), e.to_string()))?;
        Ok(Listener::Address(IpAddr::V4(ip), parse_port(spec, port)?))
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::AnyAddress(port) => write!(f, "{port}"),
            Listener::Address(IpAddr::V4(ip), port) => write!(f, "{ip}:{port}"),
            Listener::Address(IpAddr::V6(ip), port) => write!(f, "[{ip}]:{port}"),
        }
    }
}

/// What happens to a SYN over the limit.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Drop the SYN silently; the client's SYN backoff slows it down.
    Drop,
    /// Answer with a RST from XDP; the client fails at once with "connection refused".
    Reset,
    /// Proxy mode only: accept, hold for --delay-before-close, then close (Envoy/Gloo
    /// semantics); held connections do not count as active.
    Close,
    /// Let it through and count it as would-have-been-refused (nginx's limit_conn_dry_run):
    /// roll a limit out safely and size it from real traffic.
    DryRun,
}

impl Action {
    pub fn to_kernel(self) -> u32 {
        match self {
            Action::Drop => action::DROP,
            Action::Reset => action::RESET,
            Action::Close => action::CLOSE,
            Action::DryRun => action::DRY_RUN,
        }
    }

    pub fn from_kernel(action: u32) -> Self {
        match action {
            action::RESET => Action::Reset,
            action::CLOSE => Action::Close,
            action::DRY_RUN => Action::DryRun,
            _ => Action::Drop,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Reset => "reset",
            Action::Close => "close",
            Action::DryRun => "dry-run",
        }
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(Action::Drop),
            "reset" => Ok(Action::Reset),
            "close" => Ok(Action::Close),
            "dry-run" => Ok(Action::DryRun),
            other => Err(format!(
                "'{other}' is not an over-limit action: expected drop, reset, close or dry-run"
            )),
        }
    }
}

/// Which of a listener's two limits a [`LimitSpec`] sets: its own (active connections in all),
/// or the one each client address has (`--limit-per-source`). A listener may have both, and
/// either refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    #[default]
    Listener,
    /// Per client address: an IPv4 address, or an IPv6 /64.
    PerSource,
}

/// Why a per-source limit cannot take the `close` action, as every place that checks it says.
pub const NO_CLOSE_PER_SOURCE: &str = "close is the proxy's action for a listener's own limit; a \
     per-source limit refuses at the SYN: use drop, reset or dry-run";

impl Scope {
    /// What logs and errors call a limit of this scope.
    pub fn noun(self) -> &'static str {
        match self {
            Scope::Listener => "limit",
            Scope::PerSource => "per-source limit",
        }
    }

    /// The `run` flag that sets a limit of this scope (`-in` appended: inside a namespace).
    pub fn flag(self) -> &'static str {
        match self {
            Scope::Listener => "--limit",
            Scope::PerSource => "--limit-per-source",
        }
    }
}

/// `LISTENER=N[:ACTION]`, as given to `--limit` (and, per source, `--limit-per-source`) and
/// `limiter set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    pub listener: Listener,
    pub limit: u32,
    /// `None`: the agent's `--over-limit` default.
    pub action: Option<Action>,
    pub scope: Scope,
}

impl LimitSpec {
    /// The same limit, per client address.
    pub fn per_source(self) -> Self {
        LimitSpec {
            scope: Scope::PerSource,
            ..self
        }
    }

    /// The limit as logs show it: as written, then "per source" for a per-source limit.
    pub fn described(&self) -> String {
        match self.scope {
            Scope::Listener => self.to_string(),
            Scope::PerSource => format!("{self} per source"),
        }
    }

    /// Whether `self` and `other` set the same limit (listener and scope).
    pub fn same_limit(&self, other: &LimitSpec) -> bool {
        self.listener == other.listener && self.scope == other.scope
    }
}

impl FromStr for LimitSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (listener, rest) = spec.rsplit_once('=').ok_or_else(|| {
            format!("'{spec}' is not LISTENER=N[:ACTION] (e.g. 8000=100 or [::]:443=50:reset)")
        })?;
        let listener = listener.parse::<Listener>().map_err(|e| e.to_string())?;
        let (limit, action) = match rest.split_once(':') {
            Some((limit, action)) => (limit, Some(action.parse::<Action>()?)),
            None => (rest, None),
        };
        let limit = parse_limit(limit)?;
        Ok(LimitSpec {
            listener,
            limit,
            action,
            scope: Scope::Listener,
        })
    }
}

fn parse_limit(limit: &str) -> Result<u32, String> {
    let out_of_range = || format!("limit '{limit}' is out of range: expected 1-{}", u32::MAX);
    if let Some(digits) = limit.strip_prefix('-')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(out_of_range());
    }
    if limit.is_empty() || !limit.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("limit '{limit}' is not a whole number"));
    }
    match limit.parse::<u64>() {
        Ok(n) if (1..=u32::MAX as u64).contains(&n) => Ok(n as u32),
        _ => Err(out_of_range()),
    }
}

impl fmt::Display for LimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.listener, self.limit)?;
        // As written (the scope is the flag's): logs that need it say "per source" themselves.
        if let Some(action) = self.action {
            write!(f, ":{}", action.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_listener_form_and_prints_it_back() {
        for spec in [
            "8000",
            "198.18.0.1:8000",
            "0.0.0.0:80",
            "[::]:8000",
            "[fd00:1e:57::1]:443",
        ] {
            assert_eq!(spec.parse::<Listener>().unwrap().to_string(), spec);
        }
    }

    #[test]
    fn keys_map_back_to_listeners() {
        for spec in [
            "8000",
            "198.18.0.1:8000",
            "0.0.0.0:80",
            "[::]:8000",
            "[fd00:1e:57::1]:443",
        ] {
            let listener: Listener = spec.parse().unwrap();
            assert_eq!(Listener::from_key(&listener.key()), Some(listener));
        }
    }

    #[test]
    fn wildcard_and_bare_port_keys() {
        let any = Listener::AnyAddress(8000).key();
        assert_eq!(
            (any.family, any.addr, any.port),
            (family::ANY, [0; 4], 8000)
        );
        let v4any: Listener = "0.0.0.0:8000".parse().unwrap();
        assert_eq!(v4any.key().family, family::V4);
        assert_eq!(v4any.key().addr, [0; 4]);
        let v4: Listener = "198.18.0.1:8000".parse().unwrap();
        // Network order in memory: the bytes are the address's octets.
        assert_eq!(v4.key().addr[0].to_ne_bytes(), [198, 18, 0, 1]);
        let v6: Listener = "[fd00:1e:57::1]:8000".parse().unwrap();
        assert_eq!(v6.key().addr[0].to_ne_bytes(), [0xfd, 0, 0, 0x1e]);
        assert_eq!(v6.key().addr[3].to_ne_bytes(), [0, 0, 0, 1]);
    }

    #[test]
    fn rejects_bad_listeners_naming_them() {
        for bad in [
            "",
            "http",
            "0",
            "65536",
            "1.2.3.4",
            "1.2.3:80",
            "::1:80",
            "[::1]80",
            "[zz::]:80",
            "1.2.3.4:0",
            ":80",
        ] {
            let err = bad.parse::<Listener>().unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
        }
    }

    #[test]
    fn limit_specs() {
        let spec: LimitSpec = "[::]:8000=50:reset".parse().unwrap();
        assert_eq!(spec.limit, 50);
        assert_eq!(spec.action, Some(Action::Reset));
        assert_eq!(spec.to_string(), "[::]:8000=50:reset");
        assert_eq!("8000=1".parse::<LimitSpec>().unwrap().action, None);
        assert_eq!(
            "8000=4294967295".parse::<LimitSpec>().unwrap().limit,
            u32::MAX
        );
    }

    #[test]
    fn rejects_bad_limits() {
        for (bad, needle) in [
            ("8000=0", "out of range"),
            ("8000=-1", "out of range"),
            ("8000=4294967296", "out of range"),
            ("8000=99999999999999999999999", "out of range"),
            ("8000=ten", "not a whole number"),
            ("8000=", "not a whole number"),
            ("8000", "LISTENER=N"),
            ("8000=5:bounce", "not an over-limit action"),
            ("x=5", "not a listener"),
        ] {
            let err = bad.parse::<LimitSpec>().unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
