//! TCP keepalive settings as Istio's DestinationRule and Gloo Mesh's ConnectionPolicy spell them
//! (`tcpKeepalive: {time, probes, interval}`), written `time=700s,probes=20,interval=10s` on the
//! command line. A field left out keeps the operating system's default (7200 s, 9 probes, 75 s);
//! giving the setting at all turns SO_KEEPALIVE on. Used for the proxy's upstream sockets
//! (setsockopt) and for `--keepalive-for` (the kernel's `bpf_setsockopt`).
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::Duration,
};

use limiter_common::{KeepaliveConfig, KeepaliveTarget, family};

use crate::{config::duration, config::listener::Listener};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepaliveSpec {
    /// Idle time before the first probe (TCP_KEEPIDLE).
    pub time: Option<Duration>,
    /// Unanswered probes before the peer is declared dead (TCP_KEEPCNT).
    pub probes: Option<u32>,
    /// Time between probes (TCP_KEEPINTVL).
    pub interval: Option<Duration>,
}

/// The kernel's limits for TCP_KEEPIDLE / TCP_KEEPINTVL (MAX_TCP_KEEPIDLE) and TCP_KEEPCNT.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_PROBES: u32 = 127;

impl FromStr for KeepaliveSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut spec = KeepaliveSpec::default();
        if text.is_empty() {
            return Err("empty keepalive: expected e.g. time=700s,probes=20,interval=10s".into());
        }
        for field in text.split(',') {
            let (name, value) = field.split_once('=').ok_or_else(|| {
                format!("'{field}' is not NAME=VALUE (time=, probes=, interval=)")
            })?;
            match name {
                "time" => spec.time = Some(seconds(name, value)?),
                "interval" => spec.interval = Some(seconds(name, value)?),
                "probes" => {
                    let probes: u32 = value
                        .parse()
                        .map_err(|_| format!("probes '{value}' is not a whole number"))?;
                    if !(1..=MAX_KEEPALIVE_PROBES).contains(&probes) {
                        return Err(format!(
                            "probes {probes} is out of range: expected 1-{MAX_KEEPALIVE_PROBES}"
                        ));
                    }
                    spec.probes = Some(probes);
                }
                other => {
                    return Err(format!(
                        "unknown keepalive field '{other}': expected time, probes or interval"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

/// A keepalive duration: whole seconds (the kernel's unit), at least 1 s.
fn seconds(name: &str, value: &str) -> Result<Duration, String> {
    let d = duration::parse(value).map_err(|e| format!("{name}: {e}"))?;
    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 || d.as_secs() > MAX_KEEPALIVE_SECS {
        return Err(format!(
            "{name} '{value}' must be whole seconds from 1s to {MAX_KEEPALIVE_SECS}s"
        ));
    }
    Ok(d)
}

impl KeepaliveSpec {
    pub fn to_kernel(self) -> KeepaliveConfig {
        KeepaliveConfig {
            time_secs: self.time.map_or(0, |d| d.as_secs() as u32),
            interval_secs: self.interval.map_or(0, |d| d.as_secs() as u32),
            probes: self.probes.unwrap_or(0),
            _pad: 0,
        }
    }

    /// Sets SO_KEEPALIVE and the given fields on a socket; unset fields keep the OS default.
    pub fn apply(&self, socket: socket2::SockRef<'_>) -> std::io::Result<()> {
        let mut keepalive = socket2::TcpKeepalive::new();
        if let Some(time) = self.time {
            keepalive = keepalive.with_time(time);
        }
        if let Some(interval) = self.interval {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(probes) = self.probes {
            keepalive = keepalive.with_retries(probes);
        }
        socket.set_tcp_keepalive(&keepalive)
    }
}

impl fmt::Display for KeepaliveSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields = Vec::new();
        if let Some(t) = self.time {
            fields.push(format!("time={}", duration::display(t)));
        }
        if let Some(p) = self.probes {
            fields.push(format!("probes={p}"));
        }
        if let Some(i) = self.interval {
            fields.push(format!("interval={}", duration::display(i)));
        }
        f.write_str(&fields.join(","))
    }
}

/// The destinations of a `--keepalive-for` policy: `CIDR:PORT` (`198.18.0.0/15:5432`,
/// `[fd00:1e:57::/48]:5432`) or a bare `CIDR` for every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destinations {
    pub network: IpAddr,
    pub prefix_len: u8,
    /// 0 = every port.
    pub port: u16,
}

impl FromStr for Destinations {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("'{text}' is not CIDR[:PORT] (e.g. 198.18.0.0/15:5432 or [fd00::/8]:5432)");
        let (cidr, port) = if let Some(rest) = text.strip_prefix('[') {
            let (cidr, port) = rest.split_once("]:").ok_or_else(bad)?;
            (cidr, Some(port))
        } else if text.contains('.') {
            match text.rsplit_once(':') {
                Some((cidr, port)) => (cidr, Some(port)),
                None => (text, None),
            }
        } else {
            (text, None)
        };
        let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 =
            len.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                format!("'{text}' has an invalid prefix length: expected 0-{max}")
            })?;
        let port = match port {
            None => 0,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{text}' has an invalid port: expected 1-65535"))?,
        };
        let network = mask(network, prefix_len);
        Ok(Destinations {
            network,
            prefix_len,
            port,
        })
    }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(ip) => {
            let bits = u32::from(ip) & u32::MAX.checked_shl(32 - prefix_len as u32).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(ip) => {
            let bits = u128::from(ip) & u128::MAX.checked_shl(128 - prefix_len as u32).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

impl Destinations {
    /// The LPM trie key: family and port always match, then the address prefix. IPv4 prefixes
    /// count from the start of the address words, like the key the kernel builds.
    pub fn key(&self) -> aya::maps::lpm_trie::Key<KeepaliveTarget> {
        let listener = Listener::Address(self.network, self.port);
        let key = listener.key();
        let target = KeepaliveTarget {
            family: if self.network.is_ipv4() {
                family::V4
            } else {
                family::V6
            },
            port: self.port,
            addr: key.addr,
        };
        aya::maps::lpm_trie::Key::new(
            KeepaliveTarget::HEADER_BITS + self.prefix_len as u32,
            target,
        )
    }
}

impl fmt::Display for Destinations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.network, self.port) {
            (IpAddr::V4(ip), 0) => write!(f, "{ip}/{}", self.prefix_len),
            (IpAddr::V4(ip), port) => write!(f, "{ip}/{}:{port}", self.prefix_len),
            (IpAddr::V6(ip), 0) => write!(f, "{ip}/{}", self.prefix_len),
            (IpAddr::V6(ip), port) => write!(f, "[{ip}/{}]:{port}", self.prefix_len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_fields() {
        let spec: KeepaliveSpec = "time=700s,probes=20,interval=10s".parse().unwrap();
        assert_eq!(spec.time, Some(Duration::from_secs(700)));
        assert_eq!(spec.probes, Some(20));
        assert_eq!(spec.interval, Some(Duration::from_secs(10)));
        assert_eq!(spec.to_string(), "time=700s,probes=20,interval=10s");
        let partial: KeepaliveSpec = "time=60s".parse().unwrap();
        assert_eq!(
            partial.to_kernel(),
            KeepaliveConfig {
                time_secs: 60,
                interval_secs: 0,
                probes: 0,
                _pad: 0
            }
        );
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        for (bad, needle) in [
            ("time=500ms", "time"),
            ("time=0s", "time"),
            ("interval=1.5s", "interval"),
            ("probes=0", "probes"),
            ("probes=x", "probes"),
            ("tme=5s", "unknown keepalive field 'tme'"),
            ("time", "NAME=VALUE"),
            ("", "empty"),
        ] {
            let err = bad.parse::<KeepaliveSpec>().unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn destinations() {
        let d: Destinations = "198.18.0.0/15:5432".parse().unwrap();
        assert_eq!((d.prefix_len, d.port), (15, 5432));
        assert_eq!(d.to_string(), "198.18.0.0/15:5432");
        let masked: Destinations = "198.19.7.7/15".parse().unwrap();
        assert_eq!(masked.to_string(), "198.18.0.0/15");
        let v6: Destinations = "[fd00:1e:57::/48]:5432".parse().unwrap();
        assert_eq!(v6.to_string(), "[fd00:1e:57::/48]:5432");
        assert_eq!(v6.key().prefix_len(), 32 + 48);
        for bad in [
            "198.18.0.0",
            "198.18.0.0/33",
            "1.2.3.4/8:0",
            "[fd00::/48]",
            "x/8",
        ] {
            assert!(bad.parse::<Destinations>().is_err(), "{bad}");
        }
    }
}
