//! The upstream side, with the settings of Istio's DestinationRule `connectionPool.tcp` /
//! Gloo Mesh's ConnectionPolicy: `connectTimeout`, `maxConnections` (beyond it new downstream
//! connections fail fast, nothing is queued, as Envoy's circuit breaker overflows), and
//! `tcpKeepalive` on every upstream socket.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use super::stats::ProxyStats;
use crate::config::keepalive::KeepaliveSpec;

pub struct UpstreamPolicy {
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    pub keepalive: Option<KeepaliveSpec>,
    /// `None`: unlimited.
    slots: Option<Arc<Semaphore>>,
}

/// A connected upstream; holds its place in the pool until dropped.
pub struct Upstream {
    pub stream: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
}

impl UpstreamPolicy {
    pub fn new(
        address: SocketAddr,
        connect_timeout: Duration,
        keepalive: Option<KeepaliveSpec>,
        max_connections: Option<u32>,
    ) -> Self {
        let slots = max_connections.map(|n| Arc::new(Semaphore::new(n as usize)));
        UpstreamPolicy {
            address,
            connect_timeout,
            keepalive,
            slots,
        }
    }

    /// Connects, or counts why not and returns `None`.
    pub async fn connect(&self, stats: &ProxyStats) -> Option<Upstream> {
        let permit = match &self.slots {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    stats.upstream_overflow_total.inc();
                    return None;
                }
            },
            None => None,
        };
        let socket = match self.address {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        let socket = match socket {
            Ok(socket) => socket,
            Err(_) => {
                stats.upstream_connect_failures_total.inc();
                return None;
            }
        };
        if let Some(keepalive) = &self.keepalive
            && keepalive.apply(socket2::SockRef::from(&socket)).is_err()
        {
            stats.upstream_connect_failures_total.inc();
            return None;
        }
        match tokio::time::timeout(self.connect_timeout, socket.connect(self.address)).await {
            Ok(Ok(stream)) => Some(Upstream {
                stream,
                _permit: permit,
            }),
            Ok(Err(_)) => {
                stats.upstream_connect_failures_total.inc();
                None
            }
            Err(_) => {
                stats.upstream_connect_timeouts_total.inc();
                None
            }
        }
    }
}
