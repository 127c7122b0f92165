//! Connections that were there first: counting the connections already established on a
//! listener when its limit starts (an agent started without pins, a limit added with `set` or a
//! reload), and uncounting each exactly when it closes.
//!
//! sock_ops counts a connection as it becomes ESTABLISHED, and sees its close only if it asked
//! for state callbacks then, so a connection that was open before never passed through it: a
//! listener with N open would get N more. The agent lists the namespace's established
//! connections (sock_diag, with their socket cookies), keeps those on limited listeners, and
//! hands them to the `adopt` iterator (limiter-ebpf's `preexisting.rs`) through PREEXISTING.
//! Whether the kernel counts one already is in the socket's own tag, which only the iterator can
//! read; holding each socket's lock, it asks for the state callbacks of those not counted yet and
//! counts them as sock_ops would have; from then on their close is seen like any other.
use limiter_common::map_names;

use crate::{
    enforce::{adopt_iterator::Adopter, limits::LimitTable, sock_diag::SockDiag},
    error::AgentError,
};

/// Counts the connections established on `table`'s limited listeners that the kernel programs
/// do not count yet, in the calling thread's network namespace (the table's). Returns how many
/// were counted; logs what could not be (enforcement goes on either way).
pub fn count(table: &mut LimitTable) -> u64 {
    let netns = table.netns.clone();
    let Some(adopter) = table.maps_mut().adopter.take() else {
        return 0;
    };
    let counted = count_with(table, &adopter);
    table.maps_mut().adopter = Some(adopter);
    let (counted, left) = match counted {
        Ok(counts) => counts,
        Err(error) => {
            tracing::warn!(
                netns,
                %error,
                "connections established before their listener was limited could not be counted"
            );
            return 0;
        }
    };
    if counted > 0 {
        tracing::info!(
            netns,
            counted,
            "counted connections established before their listener was limited"
        );
    }
    if left > 0 {
        tracing::warn!(
            netns,
            left,
            "connections established before their listener was limited could not be counted \
             (closed meanwhile, or the kernel refused their close callback): they do not count"
        );
    }
    counted
}

fn count_with(table: &mut LimitTable, adopter: &Adopter) -> Result<(u64, u64), AgentError> {
    let (connections, listening) = SockDiag::open()
        .and_then(|diag| Ok((diag.connections()?, diag.listening()?)))
        .map_err(AgentError::syscall(
            "listing established connections (sock_diag)",
        ))?;
    // Accepted connections only, as sock_ops counts (passive ones): a socket listens on their
    // local port. (An outgoing connection from a limited port is not the listener's.)
    let wanted: Vec<_> = connections
        .iter()
        .filter(|c| listening.iter().any(|l| l.port == c.flow.local_port))
        .filter_map(|c| Some((c.cookie, table.counting_key(&c.flow)?)))
        .collect();
    let (mut counted, mut left) = (0, 0);
    // PREEXISTING holds a bounded number at a time; most runs take one batch.
    for batch in wanted.chunks(table.maps().preexisting_batch.max(1) as usize) {
        let map = &mut table.maps_mut().preexisting;
        let walked = batch
            .iter()
            .try_for_each(|(cookie, source)| map.insert(cookie, source, 0))
            .map_err(AgentError::map(map_names::PREEXISTING))
            .and_then(|()| {
                adopter.walk().map_err(AgentError::syscall(
                    "walking the TCP sockets (adopt iterator)",
                ))
            });
        // The iterator removes what it counted, or found counted already; what is left was
        // not, and goes (a later run must not find stale entries).
        let map = &mut table.maps_mut().preexisting;
        for (cookie, _) in batch {
            if map.remove(cookie).is_ok() {
                left += 1;
            }
        }
        counted += walked?;
    }
    Ok((counted, left))
}
