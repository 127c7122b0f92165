//! Every map of the object, declared once. Sizes and layouts come from `limiter-common`.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, ProgramArray, RingBuf},
};
use limiter_common::{
    AgentConfig, FlowKey, KeepaliveConfig, KeepaliveTarget, ListenerConfig, ListenerKey,
    MAX_KEEPALIVE_POLICIES, MAX_LISTENERS, MAX_NETNS, MAX_PENDING, MAX_PREEXISTING, MAX_SOURCES,
    OVER_LIMIT_RING_BYTES, PORT_TABLE_SIZE, Pending, SlotListener, SlotStats, SlotUsage, SourceKey,
    TrackedSocket, packet_stat,
};

/// Limited listeners and their settings; written only by the agent.
#[map]
pub static LISTENERS: HashMap<ListenerKey, ListenerConfig> =
    HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Per port: how many listeners use it (0 = not ours) and the slot of the only one
/// (`limiter_common::port_entry`). One array lookup passes every other port.
#[map]
pub static PORTS: Array<u32> = Array::with_max_entries(PORT_TABLE_SIZE, 0);

/// Per slot: its listener's key and settings, for ports with one listener; written only by the
/// agent. An array value is copied in place, so a read racing a change of limit may see the new
/// limit with the old action for that instant (the hash map in LISTENERS swaps whole values).
#[map]
pub static SLOT_LISTENERS: Array<SlotListener> = Array::with_max_entries(MAX_LISTENERS, 0);

/// Live budgets, changed only with atomics. Mmapable so the agent can release an expired
/// handshake's slot with an atomic of its own.
#[map]
pub static SLOT_USAGE: Array<SlotUsage> = Array::with_max_entries(MAX_LISTENERS, BPF_F_MMAPABLE);

#[map]
pub static SLOT_STATS: PerCpuArray<SlotStats> = PerCpuArray::with_max_entries(MAX_LISTENERS, 0);

/// Handshakes in flight, keyed by 4-tuple. Whoever deletes an entry owns its reservation: the
/// accounting program (handshake completed) or the agent's sweeper (handshake timed out).
/// Preallocated (see `MAX_PENDING`).
#[map]
pub static PENDING: HashMap<FlowKey, Pending> = HashMap::with_max_entries(MAX_PENDING, 0);

/// Counted sockets: each one's tag in its own socket-local storage (`socket_tags.rs`), which the
/// kernel frees with the socket. A hash map by cookie cost about 2.3 µs per connection (insert,
/// then lookup and delete at close; bench part 6); the socket's storage is found from the socket.
#[btf_map]
pub static SOCKETS: SkStorage<TrackedSocket> = SkStorage::new();

/// Per-source limits: established connections each client address holds on each listener
/// (`sources.rs`). Entries are made by a source's first counted connection and deleted by its
/// last close; admission only reads them.
#[map]
pub static SOURCES: HashMap<SourceKey, u64> =
    HashMap::with_max_entries(MAX_SOURCES, BPF_F_NO_PREALLOC);

/// Connections established before their listener was limited, by socket cookie, with the
/// source (and slot) to count them on: written by the agent, read by the `adopt` iterator.
#[map]
pub static PREEXISTING: HashMap<u64, SourceKey> =
    HashMap::with_max_entries(MAX_PREEXISTING, BPF_F_NO_PREALLOC);

#[map]
pub static PACKET_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(packet_stat::COUNT, 0);

/// `--keepalive-for` policies: destination prefix and port → keepalive settings.
#[map]
pub static KEEPALIVE_POLICIES: LpmTrie<KeepaliveTarget, KeepaliveConfig> =
    LpmTrie::with_max_entries(MAX_KEEPALIVE_POLICIES, 0);

#[map]
pub static AGENT_CONFIG: Array<AgentConfig> = Array::with_max_entries(1, 0);

/// Flood mode: connections whose handshake completed with their listener full
/// (`limiter_common::OverLimit`), for the agent to reset; sock_ops cannot abort a socket.
#[map]
pub static OVER_LIMIT: RingBuf = RingBuf::with_byte_size(OVER_LIMIT_RING_BYTES, 0);

/// Other network namespaces enforced in, by netns cookie: the index of their accounting program
/// in NETNS_ACCOUNTING. Written by the agent in its own copy of the object only (the copy
/// attached to the cgroup); empty in the namespaces' copies.
#[map]
pub static NETNS_INDEX: HashMap<u64, u32> = HashMap::with_max_entries(MAX_NETNS, 0);

/// The namespaces' accounting programs, tail-called by index.
#[map]
pub static NETNS_ACCOUNTING: ProgramArray = ProgramArray::with_max_entries(MAX_NETNS, 0);

#[inline(always)]
pub fn count_packet(index: u32) {
    if let Some(counter) = PACKET_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Adds one to a field of this CPU's stats for `slot`.
#[inline(always)]
pub fn count_slot(slot: u32, field: fn(&mut SlotStats) -> &mut u64) {
    if let Some(stats) = SLOT_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { *field(&mut *stats) += 1 };
    }
}
