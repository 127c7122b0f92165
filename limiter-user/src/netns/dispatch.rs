//! How the sockets of another network namespace reach the copy of the programs that enforces
//! there: the agent's own copy of the accounting program is the only one attached to the cgroup
//! root, and for a socket of another namespace it looks the namespace's cookie up in
//! `NETNS_INDEX` and tail-calls the program at that index of `NETNS_ACCOUNTING`. So every
//! connection event runs one sock_ops program whatever the number of namespaces (attaching a
//! program per namespace made each namespace cost every connection on the node ~0.9 µs; bench
//! part 10).
//!
//! An entry is written program first, then index (a socket never finds an index whose slot is
//! empty), and removed index first. Entries an earlier agent left in pinned maps are taken over
//! by cookie, so a restarted agent swaps each namespace's program in place without a moment in
//! which its closes go uncounted; the ones no namespace claims are removed by [`Dispatch::prune`].
use std::collections::BTreeMap;

use aya::{
    maps::{HashMap, MapData, ProgramArray},
    programs::ProgramFd,
};
use limiter_common::{MAX_NETNS, map_names};

use crate::error::AgentError;

pub struct Dispatch {
    index: HashMap<MapData, u64, u32>,
    programs: ProgramArray<MapData>,
    /// Cookie → index of every entry, ours or an earlier agent's not yet claimed.
    entries: BTreeMap<u64, u32>,
    /// Entries an earlier agent left (pinned maps), not claimed yet.
    adopted: Vec<u64>,
}

impl Dispatch {
    pub fn new(index: HashMap<MapData, u64, u32>, programs: ProgramArray<MapData>) -> Dispatch {
        let entries: BTreeMap<u64, u32> = index.iter().filter_map(Result::ok).collect();
        let adopted = entries.keys().copied().collect();
        Dispatch {
            index,
            programs,
            entries,
            adopted,
        }
    }

    /// Routes the sockets of the namespace with `cookie` to `program`.
    pub fn add(&mut self, cookie: u64, program: &ProgramFd) -> Result<(), AgentError> {
        self.adopted.retain(|c| *c != cookie);
        let index = match self.entries.get(&cookie) {
            Some(&index) => index,
            None => (0..MAX_NETNS)
                .find(|i| !self.entries.values().any(|used| used == i))
                .ok_or_else(|| {
                    AgentError::Combination(format!(
                        "more than {MAX_NETNS} network namespaces to enforce in"
                    ))
                })?,
        };
        self.programs
            .set(index, program, 0)
            .map_err(AgentError::map(map_names::NETNS_ACCOUNTING))?;
        self.index
            .insert(cookie, index, 0)
            .map_err(AgentError::map(map_names::NETNS_INDEX))?;
        self.entries.insert(cookie, index);
        Ok(())
    }

    /// Stops routing the namespace's sockets anywhere.
    pub fn remove(&mut self, cookie: u64) {
        let Some(index) = self.entries.remove(&cookie) else {
            return;
        };
        let _ = self.index.remove(&cookie);
        let _ = self.programs.clear_index(&index);
    }

    /// Removes the entries of an earlier agent that no namespace configured now has claimed.
    pub fn prune(&mut self) {
        for cookie in std::mem::take(&mut self.adopted) {
            self.remove(cookie);
        }
    }
}
