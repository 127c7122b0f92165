//! Unique names for everything a test creates (pid + counter), so that parallel tests and
//! parallel runs on the same machine never share a namespace, interface or socket path.
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(1);

/// A number unique within this process.
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `lim-<what>-<pid>-<n>`: unique across processes too.
pub fn unique(what: &str, n: u32) -> String {
    format!("lim-{what}-{}-{n}", std::process::id())
}

/// An interface name (at most 15 bytes, IFNAMSIZ - 1) that still carries pid and counter.
pub fn ifname(side: char, n: u32) -> String {
    let name = format!("l{}{side}{n}", std::process::id());
    assert!(name.len() <= 15, "interface name {name} is too long");
    name
}
