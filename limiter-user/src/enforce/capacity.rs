//! How many entries each copy of the kernel maps has: the agent's own copy, sized for a node's
//! worth of listeners, sources and namespaces, and the copy in each namespace it enforces in (a
//! pod's), sized for one workload.
//!
//! Map memory is spent at load for every preallocated map and for every hash map's bucket array
//! (BPF_F_NO_PREALLOC saves only the entries), and it is charged to the agent's memory cgroup.
//! With the agent's sizes in every pod's copy, each enforced pod cost about 26 MiB on a 2-CPU
//! machine (SOURCES' 1M buckets 16 MiB, PENDING 7.5 MiB even at an eighth, SLOT_STATS 4 MiB and
//! growing with the CPUs: 16,384 slots × 124 bytes per CPU, 127 MiB on 64 CPUs), so a
//! DaemonSet limited to 256 MiB ran out after about eight pods. A pod's copy now costs about
//! 3 MiB plus 31 KiB per CPU (measured: the agent enforcing in 16 namespaces holds 82.5 MiB of
//! maps, in 1 namespace 36.1 MiB; bench part 10 measures it in every run).
use aya::EbpfLoader;
use limiter_common::{MAX_NETNS, MAX_PENDING, MAX_PREEXISTING, MAX_SOURCES, map_names};

/// One copy's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Listener slots: LISTENERS, SLOT_LISTENERS, SLOT_USAGE, SLOT_STATS.
    pub listeners: u32,
    /// Handshakes in flight at once (PENDING, preallocated): each holds a slot, so only limits
    /// above this reach it.
    pub pending: u32,
    /// (listener, client address) pairs holding connections, for per-source limits (SOURCES).
    pub sources: u32,
    /// Connections adopted at once when a listener is limited (PREEXISTING); more are adopted
    /// in batches of this many.
    pub preexisting: u32,
    /// Other namespaces whose accounting this copy hands sockets to (NETNS_INDEX,
    /// NETNS_ACCOUNTING): only the agent's own copy does.
    pub namespaces: u32,
}

impl Capacity {
    /// The agent's own copy, attached to the node's interfaces and the cgroup root, with
    /// `listeners` slots (`--max-listeners`, at most `MAX_LISTENERS`): SLOT_STATS is per CPU,
    /// so on a large node the slots are most of this copy's memory (1.9 MiB per CPU at 16,384).
    pub const fn agent(listeners: u32) -> Capacity {
        Capacity {
            listeners,
            pending: MAX_PENDING,
            sources: MAX_SOURCES,
            preexisting: MAX_PREEXISTING,
            namespaces: MAX_NETNS,
        }
    }

    /// A namespace's copy (`--limit-in`, a pod in Kubernetes mode): one workload's listeners.
    pub const NETNS: Capacity = Capacity {
        listeners: 256,
        pending: MAX_PENDING / 8,
        sources: 1 << 16,
        preexisting: 4096,
        namespaces: 1,
    };

    /// The copy loaded only to probe the kernel (`features.rs`), and dropped at once.
    pub const PROBE: Capacity = Capacity {
        listeners: 1,
        pending: 1,
        sources: 1,
        preexisting: 1,
        namespaces: 1,
    };

    /// Sizes the object's maps as this copy's.
    pub fn apply(&self, loader: &mut EbpfLoader) {
        for name in [
            map_names::LISTENERS,
            map_names::SLOT_LISTENERS,
            map_names::SLOT_USAGE,
            map_names::SLOT_STATS,
        ] {
            loader.map_max_entries(name, self.listeners);
        }
        loader.map_max_entries(map_names::PENDING, self.pending);
        loader.map_max_entries(map_names::SOURCES, self.sources);
        loader.map_max_entries(map_names::PREEXISTING, self.preexisting);
        loader.map_max_entries(map_names::NETNS_INDEX, self.namespaces);
        loader.map_max_entries(map_names::NETNS_ACCOUNTING, self.namespaces);
    }
}
