//! Copying bytes both ways between the client and the upstream with TCP half-close: when one
//! side finishes sending (FIN), the other side's write half is shut down and the other direction
//! keeps flowing. When either side fails, both are closed at once, so a client is never left
//! hanging on a dead upstream.
use std::io;

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::stats::{Counter, ProxyStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

#[derive(Debug)]
pub struct SpliceError {
    pub side: Side,
    pub error: io::Error,
}

const BUFFER: usize = 32 * 1024;

pub async fn splice(
    downstream: TcpStream,
    upstream: TcpStream,
    stats: &ProxyStats,
) -> Result<(), SpliceError> {
    let (mut down_read, mut down_write) = downstream.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let to_upstream = pipe(
        &mut down_read,
        &mut up_write,
        (Side::Downstream, Side::Upstream),
        &stats.bytes_to_upstream_total,
    );
    let to_downstream = pipe(
        &mut up_read,
        &mut down_write,
        (Side::Upstream, Side::Downstream),
        &stats.bytes_to_downstream_total,
    );
    tokio::pin!(to_upstream, to_downstream);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            result = &mut to_upstream, if !up_done => { result?; up_done = true; }
            result = &mut to_downstream, if !down_done => { result?; down_done = true; }
        }
    }
    // Returning drops all four halves: both sockets close.
    Ok(())
}

/// Copies until EOF, then passes the FIN on. `sides` = (the side read from, the side written to).
async fn pipe<R, W>(
    reader: &mut R,
    writer: &mut W,
    sides: (Side, Side),
    bytes: &Counter,
) -> Result<(), SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Read into spare capacity (`read_buf`): a new connection's buffers are never zeroed, a cost
    // paid per connection that short connections notice.
    let mut buffer = Vec::with_capacity(BUFFER);
    loop {
        buffer.clear();
        let n = reader
            .read_buf(&mut buffer)
            .await
            .map_err(|error| SpliceError {
                side: sides.0,
                error,
            })?;
        if n == 0 {
            return writer.shutdown().await.map_err(|error| SpliceError {
                side: sides.1,
                error,
            });
        }
        writer
            .write_all(&buffer)
            .await
            .map_err(|error| SpliceError {
                side: sides.1,
                error,
            })?;
        bytes.add(n as u64);
    }
}
