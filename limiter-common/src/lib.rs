//! The one definition of every map key, map value and constant that limiter's kernel programs
//! (`limiter-ebpf`) and its agent (`limiter-user`) share. Everything is `#[repr(C)]` with explicit
//! padding fields, because hash map keys are compared byte for byte: an uninitialised padding
//! byte would make two equal keys different.
//!
//! The `user` feature adds `aya::Pod` impls so the agent can read and write these through aya.
#![no_std]

/// Version of the map layout below. Bump it whenever a key or value changes shape; the agent
/// never reads pinned maps of another version: it takes over their links and counts anew
/// (limiter-user's `pins.rs`).
///
/// `LIMITER_MAP_LAYOUT_VERSION` at build time overrides it, for one purpose: the rollback test
/// builds today's code a second time under another version, so two agents that differ only in
/// their layout can each take over from the other (xtask `other_agents.rs`).
pub const MAP_LAYOUT_VERSION: u32 = match option_env!("LIMITER_MAP_LAYOUT_VERSION") {
    Some(version) => parse_version(version),
    None => 7,
};

/// A decimal version number, at compile time (a bad one fails the build).
const fn parse_version(text: &str) -> u32 {
    let bytes = text.as_bytes();
    assert!(!bytes.is_empty(), "LIMITER_MAP_LAYOUT_VERSION is empty");
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            bytes[i].is_ascii_digit(),
            "LIMITER_MAP_LAYOUT_VERSION must be a number"
        );
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

/// Listener slots: one per configured `--limit`, indexes into [`SLOT_USAGE`] and [`SLOT_STATS`].
pub const MAX_LISTENERS: u32 = 16_384;
/// Handshakes in flight (SYN admitted, final ACK not yet seen) across all listeners. The table
/// is preallocated (about 104 bytes an entry, 6.8 MB): a SYN's insert then takes an entry from
/// a free list instead of allocating (half the cost of an admitted SYN in bench part 1). Floods
/// do not fill it for long: flood mode releases their reservations.
pub const MAX_PENDING: u32 = 65_536;
/// Other network namespaces enforced in (`--limit-in`): each has its own copy of the programs,
/// whose accounting program the agent's own copy (the one attached to the cgroup) tail-calls
/// for that namespace's sockets, so a connection event runs one sock_ops program however many
/// namespaces there are.
pub const MAX_NETNS: u32 = 1024;
/// Client addresses holding connections on listeners with a per-source limit (`SOURCES`). An
/// entry exists only while its source holds an established connection, so forged sources, which
/// never complete a handshake, never take an entry; a connection whose source finds the table
/// full is reset by the agent rather than counted wrong.
pub const MAX_SOURCES: u32 = 1 << 20;
/// Connections that were established before their listener was limited, handed by the agent to
/// the `adopt` iterator to be counted (`PREEXISTING`); filled and emptied per run.
pub const MAX_PREEXISTING: u32 = 65_536;
/// One entry per TCP port: how many listeners use it, and the slot of the only one (see
/// [`port_entry`]). Lets XDP pass other ports after one array lookup, and find a port's only
/// listener by index instead of by hash.
pub const PORT_TABLE_SIZE: u32 = 65_536;

/// A `PORTS` value: the number of limited listeners on the port in the low 16 bits and, when
/// that number is 1, the listener's slot in the high 16 bits (slots < [`MAX_LISTENERS`] fit).
/// Admission then reads the listener from `SLOT_LISTENERS[slot]` (an array index) instead of
/// hashing its key up to three times in `LISTENERS`; with several listeners on a port it takes
/// the hash path.
pub mod port_entry {
    pub const fn pack(listeners: u32, only_slot: u32) -> u32 {
        (listeners & 0xFFFF) | (only_slot << 16)
    }

    pub const fn listeners(entry: u32) -> u32 {
        entry & 0xFFFF
    }

    /// Meaningful only when `listeners(entry) == 1`.
    pub const fn only_slot(entry: u32) -> u32 {
        entry >> 16
    }

    /// The entry once one more listener, in `slot`, uses the port.
    pub const fn with_listener(entry: u32, slot: u32) -> u32 {
        let now = listeners(entry) + 1;
        pack(now, if now == 1 { slot } else { 0 })
    }
}

/// Map names, as the kernel object declares them and the agent looks them up.
pub mod map_names {
    pub const LISTENERS: &str = "LISTENERS";
    pub const PORTS: &str = "PORTS";
    pub const SLOT_USAGE: &str = "SLOT_USAGE";
    pub const SLOT_STATS: &str = "SLOT_STATS";
    pub const PENDING: &str = "PENDING";
    pub const SOCKETS: &str = "SOCKETS";
    pub const PACKET_STATS: &str = "PACKET_STATS";
    pub const AGENT_CONFIG: &str = "AGENT_CONFIG";
    pub const KEEPALIVE_POLICIES: &str = "KEEPALIVE_POLICIES";
    pub const SLOT_LISTENERS: &str = "SLOT_LISTENERS";
    pub const OVER_LIMIT: &str = "OVER_LIMIT";
    pub const NETNS_INDEX: &str = "NETNS_INDEX";
    pub const NETNS_ACCOUNTING: &str = "NETNS_ACCOUNTING";
    pub const SOURCES: &str = "SOURCES";
    pub const PREEXISTING: &str = "PREEXISTING";
    pub const ALL: [&str; 15] = [
        LISTENERS,
        PORTS,
        SLOT_LISTENERS,
        SLOT_USAGE,
        SLOT_STATS,
        PENDING,
        SOCKETS,
        PACKET_STATS,
        AGENT_CONFIG,
        KEEPALIVE_POLICIES,
        OVER_LIMIT,
        NETNS_INDEX,
        NETNS_ACCOUNTING,
        SOURCES,
        PREEXISTING,
    ];
}

/// Program names, as the kernel object declares them.
pub mod program_names {
    /// XDP: where a SYN is admitted or refused.
    pub const ADMISSION: &str = "admission";
    /// sock_ops: where the count goes up (established) and down (closed), and where keepalive
    /// is set on connections of processes the agent does not own.
    pub const ACCOUNTING: &str = "accounting";
    /// iter/tcp: counts connections established before their listener was limited (an agent
    /// started without pins, a limit added live), run by the agent over each namespace's
    /// sockets.
    pub const ADOPT: &str = "adopt";
    /// tp_btf on `inet_sock_set_state`: the close of connections [`ADOPT`] counted on kernels
    /// whose sock_ops cannot be asked to see it (before Linux 6.10). Attached only there.
    pub const CLOSE_WATCH: &str = "close_watch";
    /// iter/tcp: the start-up probe of `bpf_getsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS)`; writes the
    /// helper's return code for each full TCP socket. Loaded, run once and dropped.
    pub const PROBE_CB_FLAGS: &str = "probe_cb_flags";
}

/// Globals of the kernel object the agent sets at load (`EbpfLoader::override_global`).
pub mod globals {
    /// Non-zero: the adopt walk counts connections for `close_watch` to uncount, rather than
    /// asking for their sock_ops state callbacks (which this kernel cannot give).
    pub const ADOPTED_CLOSE_BY_TRACEPOINT: &str = "ADOPTED_CLOSE_BY_TRACEPOINT";
}

/// Keepalive policies for connections of unmodified processes (`--keepalive-for`).
pub const MAX_KEEPALIVE_POLICIES: u32 = 1024;

/// Address family tags used in keys. Not the kernel's `AF_*` values, so that a zeroed key
/// (family 0) is never mistaken for a real IPv4 key.
pub mod family {
    /// A bare-port listener: every local address of both families.
    pub const ANY: u16 = 0;
    pub const V4: u16 = 4;
    pub const V6: u16 = 6;
}

/// What happens to a SYN over the limit.
pub mod action {
    /// Silently dropped at XDP; the client's own SYN backoff slows it down.
    pub const DROP: u32 = 0;
    /// Answered from XDP with a RST, so the client fails at once with "connection refused".
    pub const RESET: u32 = 1;
    /// Proxy mode (Envoy/Gloo semantics): the handshake completes, and the agent's proxy holds
    /// the connection for `delay-before-close`, then closes it. Admission happens when the
    /// connection is established (accounting), and a held connection is never counted.
    pub const CLOSE: u32 = 2;
    /// Dry run: a connection over the limit is let through and counted as one that would have
    /// been refused, so a limit can be rolled out and sized from real traffic.
    pub const DRY_RUN: u32 = 3;
}

/// A listener as the kernel programs see it: local address and port.
///
/// `addr` holds the address bytes exactly as they are on the wire (network order): an IPv4
/// address in `addr[0]` with the rest zero, an IPv6 address in all four words. An all-zero
/// `addr` is the wildcard for `family` (`0.0.0.0:P`, `[::]:P`); `family::ANY` with a zero
/// `addr` is a bare port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
}

/// Per-listener settings, written only by the agent. Replacing the whole value is how a limit
/// changes on a running agent; the live counts live elsewhere ([`SlotUsage`]) so that a change
/// never races with the kernel's atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerConfig {
    /// [`NO_LIMIT`] when the listener has only a per-source limit.
    pub limit: u64,
    /// Index into [`SLOT_USAGE`] / [`SLOT_STATS`].
    pub slot: u32,
    /// One of [`action`].
    pub action: u32,
    /// Active connections one client address ([`SourceKey`]) may hold; 0: no per-source limit.
    pub source_limit: u32,
    /// One of [`action`] (never `CLOSE`), for SYNs over the per-source limit.
    pub source_action: u32,
}

/// [`ListenerConfig::limit`] of a listener limited per source only.
pub const NO_LIMIT: u64 = u64::MAX;

/// One client of one listener, for per-source limits: an IPv4 address, or an IPv6 /64 (one
/// IPv6 client owns a whole /64, so counting addresses would let it take the listener).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The listener's slot: each listener counts its sources apart.
    pub slot: u32,
    /// [`family::V4`] or [`family::V6`].
    pub family: u16,
    pub _pad: u16,
    /// Network order: the IPv4 address in `addr[0]` (`addr[1]` zero), or the IPv6 /64.
    pub addr: [u32; 2],
}

impl SourceKey {
    /// The source of a connection, as both XDP and sock_ops build it from a [`FlowKey`].
    #[inline(always)]
    pub fn of(slot: u32, flow: &FlowKey) -> Self {
        SourceKey {
            slot,
            family: flow.family,
            _pad: 0,
            addr: [
                flow.remote_addr[0],
                if flow.family == family::V6 {
                    flow.remote_addr[1]
                } else {
                    0
                },
            ],
        }
    }
}

/// A `SOURCES` value (connections the source holds) while its last connection's close is
/// deleting the entry: a new connection from that source seeing it waits for the entry to go
/// and makes a fresh one, so no count lands in an entry being deleted.
pub const SOURCE_DYING: u64 = u64::MAX;

/// A socket's tag in `SOCKETS` (socket-local storage, freed with the socket): whether it is
/// counted, the slot it holds, and whether it holds a place in its source's count too (given back
/// at close only then, so a per-source limit set or removed while connections are open never
/// miscounts). Its close clears the flags: that is what makes every decrement match exactly one
/// increment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackedSocket {
    pub slot: u32,
    /// [`tracked`] bits; 0 for a socket not counted (or counted and closed).
    pub flags: u32,
}

pub mod tracked {
    /// The socket holds a place in its source's count.
    pub const COUNTED_PER_SOURCE: u32 = 1;
    /// The socket holds its slot: counted in its listener's active connections.
    pub const COUNTED: u32 = 2;
    /// Counted by the adopt walk on a kernel whose `bpf_setsockopt` cannot ask for its state
    /// callbacks (TCP_BPF_SOCK_OPS_CB_FLAGS, before Linux 6.10): its close is seen by the
    /// `close_watch` tracepoint program instead of sock_ops.
    pub const CLOSE_BY_TRACEPOINT: u32 = 4;
}

/// A slot's listener and settings, as in `LISTENERS`: where admission finds a port's only
/// listener by index (see [`port_entry`]). Written by the agent before the port's entry points
/// at it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotListener {
    pub key: ListenerKey,
    pub _pad: u32,
    pub config: ListenerConfig,
}

/// The live budget of one listener slot, shared by all CPUs and changed only with atomics.
///
/// `reserved` = established + handshakes in flight: the number admission compares with the
/// limit. `active` = established only: the gauge users see. `mode` is one of
/// [`admission_mode`], written only by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotUsage {
    pub reserved: u64,
    pub active: u64,
    pub mode: u64,
}

/// How a listener admits connections ([`SlotUsage::mode`]).
pub mod admission_mode {
    /// A SYN takes a slot at XDP and holds it until the handshake completes or times out:
    /// exact, and the client over the limit sees its action at once.
    pub const RESERVE: u64 = 0;
    /// Under a flood of SYNs whose handshakes never complete (forged sources), a SYN takes
    /// nothing: it passes while the listener is not full, and the connection is admitted when
    /// the kernel has completed its handshake (sock_ops), so only a client that answers our
    /// SYN-ACK can take a slot. One found over the limit there is reset by the agent.
    pub const FLOOD: u64 = 1;
}

/// Per-CPU, per-slot event counters (summed over CPUs by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// SYNs that took a slot at XDP.
    pub syn_admitted: u64,
    /// Retransmitted SYNs that already held a slot and passed again.
    pub syn_retransmitted: u64,
    /// SYNs refused and dropped.
    pub refused_drop: u64,
    /// SYNs refused and answered with a RST.
    pub refused_reset: u64,
    /// Connections that reached ESTABLISHED and were counted (the `admitted_total` users see).
    pub established: u64,
    /// Of those, connections that held no reservation (their SYN did not cross an interface the
    /// agent watches, e.g. loopback, or their reservation had already expired).
    pub established_unreserved: u64,
    /// Counted connections that reached CLOSE.
    pub closed: u64,
    /// Connections that could not be tracked because the socket table was full (not counted).
    pub untracked: u64,
    /// `close` listeners: connections established over the limit, left for the proxy to hold
    /// and close (not counted).
    pub held: u64,
    /// Flood mode: SYNs passed without taking a slot (the listener was not full).
    pub proven_syn_passed: u64,
    /// Flood mode: connections whose handshake completed with the listener full, handed to the
    /// agent to be reset (not counted).
    pub over_limit_established: u64,
    /// `dry-run` listeners: SYNs (and, in flood mode, completed handshakes) over the limit let
    /// through that any other action would have refused.
    pub dry_run_would_refuse: u64,
    /// SYNs refused (dropped or reset) because their source held its per-source limit; also
    /// counted in `refused_drop` / `refused_reset`.
    pub refused_per_source: u64,
    /// Connections whose handshake completed with their source already at its per-source limit
    /// (several SYNs from one client in flight at once), handed to the agent to be reset (not
    /// counted).
    pub per_source_over_limit_established: u64,
    /// Connections that were established before the listener was limited, counted by the agent
    /// at start or when the limit was set.
    pub preexisting: u64,
}

impl SlotStats {
    /// Adds another CPU's counters (the agent sums the per-CPU values).
    pub fn add(&mut self, other: &SlotStats) {
        self.syn_admitted += other.syn_admitted;
        self.syn_retransmitted += other.syn_retransmitted;
        self.refused_drop += other.refused_drop;
        self.refused_reset += other.refused_reset;
        self.established += other.established;
        self.established_unreserved += other.established_unreserved;
        self.closed += other.closed;
        self.untracked += other.untracked;
        self.held += other.held;
        self.proven_syn_passed += other.proven_syn_passed;
        self.dry_run_would_refuse += other.dry_run_would_refuse;
        self.over_limit_established += other.over_limit_established;
        self.refused_per_source += other.refused_per_source;
        self.per_source_over_limit_established += other.per_source_over_limit_established;
        self.preexisting += other.preexisting;
    }
}

/// A connection established over its listener's limit in flood mode, for the agent to reset
/// (`OVER_LIMIT` ring buffer): its 4-tuple and socket cookie, as sock_diag's SOCK_DESTROY wants
/// them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverLimit {
    pub flow: FlowKey,
    pub cookie: u64,
}

/// Size of the `OVER_LIMIT` ring buffer (a power of two, a multiple of the page size): room
/// for thousands of events between two reads by the agent.
pub const OVER_LIMIT_RING_BYTES: u32 = 256 * 1024;

/// A connection's 4-tuple from the server's point of view. The same key is built by XDP (from
/// the SYN) and by sock_ops (from the child socket), so a reservation can be handed over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network order, as in [`ListenerKey::addr`].
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub _pad: u16,
}

/// A reservation for a handshake in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub slot: u32,
    /// 1 when the listener had a per-source limit at the SYN: only then does accounting look
    /// the listener up again when the handshake completes (else 0).
    pub per_source: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the first SYN was admitted.
    pub since_ns: u64,
}

/// Destination of a keepalive policy, as the data of an LPM trie key. The prefix length counts
/// `family` and `port` (32 bits, always matched) plus the address prefix. `port` 0 is a policy
/// for every port (looked up second).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeepaliveTarget {
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// Network order, as in [`ListenerKey::addr`].
    pub addr: [u32; 4],
}

impl KeepaliveTarget {
    /// Bits of the LPM key before the address.
    pub const HEADER_BITS: u32 = 32;
}

/// What a keepalive policy sets; 0 leaves the kernel's default for that field
/// (`net.ipv4.tcp_keepalive_time` 7200 s, `_probes` 9, `_intvl` 75 s).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Idle seconds before the first probe (TCP_KEEPIDLE).
    pub time_secs: u32,
    /// Seconds between probes (TCP_KEEPINTVL).
    pub interval_secs: u32,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    pub probes: u32,
    pub _pad: u32,
}

/// Agent-wide settings read by the kernel programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// Cookie of the network namespace the agent enforces in; sockets of other namespaces are
    /// not counted. 0 disables accounting (not yet configured).
    pub netns_cookie: u64,
    pub layout_version: u32,
    /// What the program-wide counters in `PACKET_STATS` mean ([`COUNTERS_REVISION`]): an agent
    /// adopting pins of an earlier revision zeroes the counters whose meaning changed since,
    /// rather than carry their totals over under a new name. (Was padding, so pins from before
    /// it read 0.)
    pub counters_revision: u32,
}

/// Revision of `packet_stat`'s meanings. 1: index 0 counts SYNs to no limited listener, where
/// it counted every frame that was not a SYN to a limited listener.
pub const COUNTERS_REVISION: u32 = 1;

/// Indexes of the program-wide per-CPU packet counters in `PACKET_STATS`.
pub mod packet_stat {
    // Frames that are not a connection-opening SYN (every other segment, every other protocol,
    // fragments) are passed uncounted: that is nearly every frame, and one per-CPU increment is
    // a third of their whole path (bench part 1). The interface's own counters, or the program's
    // run count under `kernel.bpf_stats_enabled`, give how many frames there were.
    /// SYNs to an address and port no listener limits: passed untouched.
    pub const SYN_NOT_LIMITED: u32 = 0;
    /// Frames whose headers are truncated or invalid: passed untouched.
    pub const MALFORMED: u32 = 1;
    /// SYNs to a limited listener that were admitted (new slot or retransmit).
    pub const SYN_PASSED: u32 = 2;
    /// SYNs refused (dropped or reset).
    pub const SYN_REFUSED: u32 = 3;
    /// The outcomes: a counted frame (a SYN, or a malformed frame) ends in exactly one of these.
    pub const OUTCOMES: [u32; 4] = [SYN_NOT_LIMITED, MALFORMED, SYN_PASSED, SYN_REFUSED];
    /// Refusals that should have been a RST but were dropped, because the SYN carried IPv4
    /// options or IPv6 extension headers the RST builder does not reflect.
    pub const RESET_FELL_BACK_TO_DROP: u32 = 4;
    /// SYNs refused because the handshake table was full.
    pub const PENDING_TABLE_FULL: u32 = 5;
    /// Outgoing connections given keepalive by a `--keepalive-for` policy.
    pub const KEEPALIVE_SET: u32 = 6;
    /// Outgoing connections a policy matched but `bpf_setsockopt` refused.
    pub const KEEPALIVE_FAILED: u32 = 7;
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers, and have explicit padding
    // fields, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerConfig {}
    unsafe impl aya::Pod for SlotListener {}
    unsafe impl aya::Pod for SlotUsage {}
    unsafe impl aya::Pod for SlotStats {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Pending {}
    unsafe impl aya::Pod for AgentConfig {}
    unsafe impl aya::Pod for KeepaliveTarget {}
    unsafe impl aya::Pod for KeepaliveConfig {}
    unsafe impl aya::Pod for OverLimit {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for TrackedSocket {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    // Sizes the kernel sees; a change here is a map layout change (bump MAP_LAYOUT_VERSION).
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ListenerKey>(), 20);
        assert_eq!(size_of::<ListenerConfig>(), 24);
        assert_eq!(size_of::<SlotListener>(), 48);
        assert_eq!(size_of::<SlotUsage>(), 24);
        assert_eq!(size_of::<SlotStats>(), 120);
        assert_eq!(size_of::<SourceKey>(), 16);
        assert_eq!(size_of::<TrackedSocket>(), 8);
        assert_eq!(size_of::<OverLimit>(), 48);
        assert_eq!(size_of::<KeepaliveTarget>(), 20);
        assert_eq!(size_of::<KeepaliveConfig>(), 16);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<Pending>(), 16);
        assert_eq!(size_of::<AgentConfig>(), 16);
    }
}
