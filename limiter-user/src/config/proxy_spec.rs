//! `--proxy LISTEN=UPSTREAM` (and a listener's `proxy:` in the file): where a forwarding proxy
//! listens and where it forwards to.
use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use crate::config::listener::Listener;

/// `LISTEN=UPSTREAM`: `[::]:8000=198.18.0.3:1025`, `8000=[fd00::3]:1025`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    pub listen: Listener,
    pub upstream: SocketAddr,
}

impl FromStr for ProxySpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (listen, upstream) = text.split_once('=').ok_or_else(|| {
            format!("'{text}' is not LISTEN=UPSTREAM (e.g. '[::]:8000=198.18.0.3:1025')")
        })?;
        let listen = listen.parse::<Listener>().map_err(|e| e.to_string())?;
        let upstream = upstream
            .parse::<SocketAddr>()
            .map_err(|_| format!("'{upstream}' is not an upstream IP:PORT or [IPv6]:PORT"))?;
        if upstream.port() == 0 {
            return Err(format!("'{upstream}': upstream port must be 1-65535"));
        }
        Ok(ProxySpec { listen, upstream })
    }
}

impl fmt::Display for ProxySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.listen, self.upstream)
    }
}

impl ProxySpec {
    /// Where to bind: a bare port listens on every address of both families (`[::]`,
    /// dual-stack).
    pub fn bind_addr(&self) -> SocketAddr {
        match self.listen {
            Listener::AnyAddress(port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            Listener::Address(ip, port) => SocketAddr::new(ip, port),
        }
    }
}
