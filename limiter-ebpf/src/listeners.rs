//! Which limited listener a local address and port belong to: the exact address, then the
//! family's wildcard (`0.0.0.0:P` / `[::]:P`), then the bare port. Used by both admission and
//! accounting so the two can never disagree.
//!
//! The config is returned by reference into the map, not copied: a copied `Option` of a
//! 24-byte struct leaves its payload undefined on the `None` path, and LLVM then spills an
//! undefined register, which the verifier rejects.
use limiter_common::{ListenerConfig, ListenerKey, family, port_entry};

use crate::maps::{LISTENERS, PORTS, SLOT_LISTENERS};

#[inline(always)]
pub fn lookup(addr_family: u16, addr: &[u32; 4], port: u16) -> Option<&'static ListenerConfig> {
    let entry = *PORTS.get(port as u32)?;
    match port_entry::listeners(entry) {
        0 => None,
        // The common case, one listener on the port: an array index and a compare, no hashing.
        1 => {
            let only = SLOT_LISTENERS.get(port_entry::only_slot(entry))?;
            let key = &only.key;
            // The port check also rejects an entry a reused slot has not been rewritten in yet.
            let matches = key.port == port
                && (key.family == family::ANY
                    || (key.family == addr_family && (key.addr == *addr || key.addr == [0; 4])));
            matches.then_some(&only.config)
        }
        _ => lookup_hashed(addr_family, addr, port),
    }
}

/// Several listeners on the port: the most specific one wins.
#[inline(always)]
fn lookup_hashed(addr_family: u16, addr: &[u32; 4], port: u16) -> Option<&'static ListenerConfig> {
    let mut key = ListenerKey {
        addr: *addr,
        port,
        family: addr_family,
    };
    // SAFETY (all three `get`s): the agent replaces values whole (a new element; the old one
    // stays readable while the program runs), so a value is either the old or the new setting.
    if let Some(config) = unsafe { LISTENERS.get(&key) } {
        return Some(config);
    }
    key.addr = [0; 4];
    if let Some(config) = unsafe { LISTENERS.get(&key) } {
        return Some(config);
    }
    key.family = family::ANY;
    unsafe { LISTENERS.get(&key) }
}
