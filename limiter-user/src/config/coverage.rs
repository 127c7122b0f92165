//! Which clients a proxy accepts, and so which listener a limit on the proxy is enforced on.
//!
//! The kernel matches a SYN by its own family and address, but a proxy listening on `[::]:P`
//! (or a bare `P`) is one dual-stack socket that accepts IPv4 clients as well. A limit written
//! as the proxy's own listener (`[::]:8000` next to `--proxy '[::]:8000=…'`) means every client
//! that proxy accepts, so it is enforced on what the proxy covers: the bare port for a
//! dual-stack proxy. The `close` action relies on the proxy to hold what the kernel did not
//! count, so a `close` limit may cover only clients a proxy on that port accepts; anything else
//! would silently not be enforced, and is an error naming both.
use std::net::IpAddr;

use crate::config::listener::{Action, LimitSpec, Listener};

/// The listener matching exactly the clients a proxy listening on `listen` accepts. `[::]:P`
/// and a bare `P` bind one dual-stack socket (IPV6_V6ONLY off, set at bind).
pub fn clients_of(listen: Listener) -> Listener {
    match listen {
        Listener::Address(IpAddr::V6(ip), port) if ip.is_unspecified() => {
            Listener::AnyAddress(port)
        }
        other => other,
    }
}

/// The address a proxy listening on `listen` binds: a bare port binds `[::]`.
fn bound(listen: Listener) -> Listener {
    match listen {
        Listener::AnyAddress(port) => {
            Listener::Address(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port)
        }
        other => other,
    }
}

/// Whether every client `inner` matches is also matched by `outer`.
pub fn contains(outer: Listener, inner: Listener) -> bool {
    if outer.port() != inner.port() {
        return false;
    }
    match (outer, inner) {
        (Listener::AnyAddress(_), _) => true,
        (_, Listener::AnyAddress(_)) => false,
        (Listener::Address(o, _), Listener::Address(i, _)) => {
            o == i || (o.is_unspecified() && o.is_ipv4() == i.is_ipv4())
        }
    }
}

/// Why a limit cannot go with the proxies as written.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// `close` on a port no proxy listens on.
    NoProxy,
    /// `close` covering clients the proxy on that port does not accept.
    WiderThanProxy { proxy: Listener },
}

/// The listener `spec` is enforced on, given the listeners of the running proxies.
pub fn enforced_on(
    spec: &LimitSpec,
    action: Action,
    proxies: &[Listener],
) -> Result<Listener, Mismatch> {
    let on_port: Vec<Listener> = proxies
        .iter()
        .copied()
        .filter(|p| p.port() == spec.listener.port())
        .collect();
    // Written as the proxy's own listener (as the flag says, as it binds, or as what it
    // covers): every client the proxy accepts.
    if let Some(proxy) = on_port
        .iter()
        .find(|p| [**p, bound(**p), clients_of(**p)].contains(&spec.listener))
    {
        return Ok(clients_of(*proxy));
    }
    if action != Action::Close {
        return Ok(spec.listener);
    }
    if on_port
        .iter()
        .any(|p| contains(clients_of(*p), spec.listener))
    {
        return Ok(spec.listener);
    }
    match on_port.first() {
        Some(proxy) => Err(Mismatch::WiderThanProxy { proxy: *proxy }),
        None => Err(Mismatch::NoProxy),
    }
}

/// The user-facing reason for a mismatch. `proxy_flag` renders a proxy's listener as its flag
/// (`--proxy '[::]:8000=198.18.0.3:1025'`) where the caller knows it.
pub fn explain(
    mismatch: &Mismatch,
    spec: &LimitSpec,
    proxy_flag: impl Fn(Listener) -> String,
) -> String {
    match mismatch {
        Mismatch::NoProxy => format!(
            "the close action needs a --proxy listening on {} (without a proxy use drop or reset)",
            spec.listener
        ),
        Mismatch::WiderThanProxy { proxy } => format!(
            "the close action only works on clients a proxy accepts, and {} also covers clients \
             {} does not accept; limit the proxy's own listener ({}) instead",
            spec.listener,
            proxy_flag(*proxy),
            clients_of(*proxy)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(text: &str) -> Listener {
        text.parse().unwrap()
    }

    fn spec(text: &str) -> LimitSpec {
        text.parse().unwrap()
    }

    #[test]
    fn a_limit_written_as_a_dual_stack_proxy_covers_both_families() {
        for proxy in ["[::]:8000", "8000"] {
            for limit in ["[::]:8000=1:close", "8000=1:close", "[::]:8000=1:reset"] {
                let s = spec(limit);
                let action = s.action.unwrap();
                assert_eq!(
                    enforced_on(&s, action, &[l(proxy)]),
                    Ok(l("8000")),
                    "{limit} with proxy {proxy}"
                );
            }
        }
    }

    #[test]
    fn narrower_limits_on_a_proxy_are_kept_as_written() {
        let proxies = [l("[::]:8000")];
        for limit in [
            "0.0.0.0:8000=1:close",
            "198.18.0.1:8000=1:close",
            "[fd00::1]:8000=2:drop",
        ] {
            let s = spec(limit);
            assert_eq!(
                enforced_on(&s, s.action.unwrap(), &proxies),
                Ok(s.listener),
                "{limit}"
            );
        }
        let v4 = [l("0.0.0.0:8000")];
        let s = spec("198.18.0.1:8000=1:close");
        assert_eq!(enforced_on(&s, Action::Close, &v4), Ok(s.listener));
    }

    #[test]
    fn close_wider_than_the_proxy_or_without_one_is_refused() {
        let s = spec("8000=1:close");
        assert_eq!(
            enforced_on(&s, Action::Close, &[l("0.0.0.0:8000")]),
            Err(Mismatch::WiderThanProxy {
                proxy: l("0.0.0.0:8000")
            })
        );
        let message = explain(
            &Mismatch::WiderThanProxy {
                proxy: l("0.0.0.0:8000"),
            },
            &s,
            |p| format!("--proxy '{p}=198.18.0.3:1025'"),
        );
        assert!(
            message.contains("--proxy '0.0.0.0:8000=198.18.0.3:1025'"),
            "{message}"
        );
        assert_eq!(
            enforced_on(&s, Action::Close, &[l("[::]:9000")]),
            Err(Mismatch::NoProxy)
        );
        // drop and reset need no proxy, and are kept as written.
        let d = spec("8000=1:drop");
        assert_eq!(
            enforced_on(&d, Action::Drop, &[l("0.0.0.0:8000")]),
            Ok(l("8000"))
        );
    }
}
