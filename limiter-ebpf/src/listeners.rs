//! Which limited listener a local address and port belong to: the exact address, then the
//! family's wildcard (`0.0.0.0:P` / `[::]:P`), then the bare port. Used by both admission and
//! accounting so the two can never disagree.
use limiter_common::{ListenerConfig, ListenerKey, family};

use crate::maps::{LISTENERS, PORTS};

#[inline(always)]
pub fn port_is_limited(port: u16) -> bool {
    matches!(PORTS.get(port as u32), Some(n) if *n != 0)
}

#[inline(always)]
pub fn lookup(addr_family: u16, addr: &[u32; 4], port: u16) -> Option<ListenerConfig> {
    let mut key = ListenerKey {
        addr: *addr,
        port,
        family: addr_family,
    };
    // SAFETY (all three `get`s): values are copied out at once; the agent replaces values
    // whole, so a copy is either the old or the new setting.
    if let Some(config) = unsafe { LISTENERS.get(&key) } {
        return Some(*config);
    }
    key.addr = [0; 4];
    if let Some(config) = unsafe { LISTENERS.get(&key) } {
        return Some(*config);
    }
    key.family = family::ANY;
    unsafe { LISTENERS.get(&key) }.copied()
}
