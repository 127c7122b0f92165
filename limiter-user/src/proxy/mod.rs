//! The forwarding proxy (`--proxy LISTEN=UPSTREAM`), as a Gloo TCP gateway or an Envoy Gateway
//! listener runs it: accept, connect upstream, copy both ways.
//!
//! Its listener is limited by the kernel programs like any other. With the `close` action the
//! kernel admits or holds each connection when it is established; the proxy asks the kernel
//! which (is the socket tagged as counted?), and holds an over-limit connection for
//! `--delay-before-close` before closing it, passing no bytes upstream (Envoy's
//! `connection_limit` behaviour, except that held connections never count as active).
pub mod copy;
pub mod stats;
pub mod upstream;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
};

use crate::{
    config::{listener::Action, proxy_spec::ProxySpec},
    enforce::limits::LimitTable,
    error::AgentError,
};

pub use stats::ProxyStats;
pub use upstream::UpstreamPolicy;

/// One running proxy.
pub struct Proxy {
    pub spec: ProxySpec,
    pub stats: Arc<ProxyStats>,
    listener: TcpListener,
    upstream: Arc<UpstreamPolicy>,
    delay_before_close: Duration,
}

impl Proxy {
    pub fn bind(
        spec: ProxySpec,
        upstream: Arc<UpstreamPolicy>,
        delay_before_close: Duration,
    ) -> Result<Self, AgentError> {
        let addr = spec.bind_addr();
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        let listener = socket
            .and_then(|s| {
                s.set_reuseaddr(true)?;
                if addr.ip().is_unspecified() && addr.is_ipv6() {
                    // Dual-stack whatever net.ipv6.bindv6only says: a limit on this listener
                    // covers IPv4 clients too (config::coverage::clients_of).
                    socket2::SockRef::from(&s).set_only_v6(false)?;
                }
                s.bind(addr)?;
                s.listen(1024)
            })
            .map_err(|source| AgentError::ProxyBind {
                spec: spec.to_string(),
                source,
            })?;
        Ok(Proxy {
            spec,
            stats: Arc::new(ProxyStats::default()),
            listener,
            upstream,
            delay_before_close,
        })
    }

    pub async fn run(self, table: Arc<Mutex<LimitTable>>) {
        let this = Arc::new(self);
        loop {
            let (stream, _) = match this.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(proxy = %this.spec, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let held = is_held(&stream, &table);
            let this = this.clone();
            tokio::spawn(async move {
                if held {
                    this.hold(stream).await;
                } else {
                    this.forward(stream).await;
                }
            });
        }
    }

    async fn forward(&self, downstream: TcpStream) {
        let stats = &self.stats;
        stats.accepted_total.inc();
        let Some(upstream) = self.upstream.connect(stats).await else {
            // Counted by `connect`; dropping the downstream closes it at once.
            return;
        };
        stats.active.inc();
        let result = copy::splice(downstream, upstream.stream, stats).await;
        stats.active.dec();
        if let Err(copy::SpliceError {
            side: copy::Side::Upstream,
            error,
        }) = &result
            && error.kind() == std::io::ErrorKind::TimedOut
        {
            // The kernel gave up on the upstream: keepalive probes (or retransmissions) went
            // unanswered. Both sides are closed by now.
            stats.upstream_keepalive_deaths_total.inc();
        }
    }

    /// Over the limit (`close`): accept, pass nothing upstream, close after the delay.
    async fn hold(&self, mut downstream: TcpStream) {
        let stats = &self.stats;
        stats.held.inc();
        stats.held_total.inc();
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(self.delay_before_close, async {
            // Swallow whatever the client sends (like Envoy) until the delay is over or it
            // goes away.
            while matches!(downstream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        stats.held.dec();
    }
}

/// Whether the kernel held (did not count) this connection: only for listeners whose action is
/// `close`; any other accepted connection was admitted.
fn is_held(stream: &TcpStream, table: &Mutex<LimitTable>) -> bool {
    let Ok(local) = stream.local_addr() else {
        return false;
    };
    let table = table.lock().unwrap_or_else(|p| p.into_inner());
    match table.action_for(local.ip().to_canonical(), local.port()) {
        Some(Action::Close) => !table.is_counted(stream),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_specs() {
        let spec: ProxySpec = "[::]:8000=198.18.0.3:1025".parse().unwrap();
        assert_eq!(spec.bind_addr(), "[::]:8000".parse().unwrap());
        assert_eq!(spec.to_string(), "[::]:8000=198.18.0.3:1025");
        let bare: ProxySpec = "8000=[fd00:1e:57::3]:1025".parse().unwrap();
        assert_eq!(bare.bind_addr(), "[::]:8000".parse().unwrap());
        for (bad, needle) in [
            ("8000", "LISTEN=UPSTREAM"),
            ("8000=198.18.0.3", "upstream IP:PORT"),
            ("8000=example.com:80", "upstream IP:PORT"),
            ("8000=198.18.0.3:0", "1-65535"),
            ("x=198.18.0.3:1", "not a listener"),
        ] {
            let err = bad.parse::<ProxySpec>().unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
