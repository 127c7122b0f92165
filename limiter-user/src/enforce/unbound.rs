//! Limits no socket can hit: nothing listens on the limited address and port in the network
//! namespace the agent enforces in. The classic case is a Kubernetes Service port or NodePort
//! limited on the node while its sockets live in a pod's namespace: the limit looks set and
//! nothing is ever counted. The agent looks at the listening sockets (sock_diag) every
//! [`CHECK_EVERY`] and says so in its log, in `limiter stats` and in a metric, naming the
//! listener; when a socket appears, it says that too.
use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use crate::{
    config::listener::Listener,
    enforce::limits::LimitTable,
    enforce::sock_diag::{Listening, SockDiag},
};

/// How often the listening sockets are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Whether a socket listening on `socket` receives connections `listener` limits.
pub fn receives(listener: &Listener, socket: &Listening) -> bool {
    if listener.port() != socket.port {
        return false;
    }
    let wildcard_v6 = matches!(socket.addr, IpAddr::V6(a) if a.is_unspecified());
    match *listener {
        Listener::AnyAddress(_) => true,
        Listener::Address(IpAddr::V4(want), _) => match socket.addr {
            IpAddr::V4(have) => have == want || have.is_unspecified() || want.is_unspecified(),
            // A `[::]` socket is dual-stack unless it set IPV6_V6ONLY (not visible here: give
            // it the benefit of the doubt); an IPv4-mapped one is IPv4.
            IpAddr::V6(have) => {
                wildcard_v6
                    || have
                        .to_ipv4_mapped()
                        .is_some_and(|v4| v4 == want || want.is_unspecified())
            }
        },
        Listener::Address(IpAddr::V6(want), _) => match socket.addr {
            IpAddr::V6(have) => have == want || wildcard_v6 || want.is_unspecified(),
            IpAddr::V4(_) => false,
        },
    }
}

/// The listeners among `limits` that no socket in `sockets` receives connections for.
pub fn unbound(limits: &[Listener], sockets: &[Listening]) -> BTreeSet<Listener> {
    limits
        .iter()
        .filter(|l| !sockets.iter().any(|s| receives(l, s)))
        .copied()
        .collect()
}

/// Looks at the listening sockets and updates `table.unbound`, logging every change.
pub fn check(table: &mut LimitTable, diag: &SockDiag) {
    let sockets = match diag.listening() {
        Ok(sockets) => sockets,
        Err(error) => {
            tracing::warn!(%error, "listing the listening sockets (sock_diag) failed");
            return;
        }
    };
    let limits = table.listeners();
    let now = unbound(&limits, &sockets);
    let netns = table.netns.as_deref().unwrap_or("the agent's own");
    for listener in now.difference(&table.unbound) {
        tracing::warn!(
            %listener,
            netns,
            "nothing listens on this limited listener in the network namespace it is enforced \
             in, so the limit cannot take effect (is the server in another namespace, e.g. a pod \
             behind a Service or NodePort? see --limit-in)"
        );
    }
    for listener in table.unbound.difference(&now) {
        if limits.contains(listener) {
            tracing::info!(%listener, netns, "a socket now listens on this limited listener");
        }
    }
    table.unbound = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(addr: &str, port: u16) -> Listening {
        Listening {
            addr: addr.parse().unwrap(),
            port,
        }
    }

    fn l(text: &str) -> Listener {
        text.parse().unwrap()
    }

    #[test]
    fn which_sockets_a_limit_reaches() {
        let cases = [
            ("8000", "127.0.0.1", 8000, true),
            ("8000", "::", 8000, true),
            ("8000", "0.0.0.0", 8001, false),
            ("0.0.0.0:8000", "198.18.0.1", 8000, true),
            ("0.0.0.0:8000", "::", 8000, true),
            ("0.0.0.0:8000", "fd00::1", 8000, false),
            ("198.18.0.1:8000", "0.0.0.0", 8000, true),
            ("198.18.0.1:8000", "198.18.0.2", 8000, false),
            ("198.18.0.1:8000", "::ffff:198.18.0.1", 8000, true),
            ("198.18.0.1:8000", "::", 8000, true),
            ("[::]:8000", "fd00::1", 8000, true),
            ("[::]:8000", "0.0.0.0", 8000, false),
            ("[fd00::1]:8000", "::", 8000, true),
            ("[fd00::1]:8000", "fd00::2", 8000, false),
        ];
        for (listener, addr, port, want) in cases {
            assert_eq!(
                receives(&l(listener), &socket(addr, port)),
                want,
                "{listener} vs {addr}:{port}"
            );
        }
        let sockets = [socket("0.0.0.0", 8000)];
        assert_eq!(
            unbound(&[l("8000"), l("30080")], &sockets),
            [l("30080")].into()
        );
    }
}
