//! The XDP admission program, loaded from the agent's real embedded object
//! (`limiter::EBPF_OBJECT`) but never attached: frames are fed to it with BPF_PROG_TEST_RUN
//! and its maps are set up and read directly, as the agent would.
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use limiter_common::{
    AgentConfig, FlowKey, ListenerConfig, ListenerKey, MAP_LAYOUT_VERSION, Pending, SlotListener,
    SlotStats, SlotUsage, SourceKey, family, map_names, packet_stat, port_entry, program_names,
};

use crate::require_root;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Room for whatever the program sends back (it only ever shrinks a frame).
const OUT_BUFFER: usize = 4096;

pub fn verdict_name(verdict: u32) -> &'static str {
    match verdict {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// An IPv4 address as `ListenerKey`/`FlowKey` hold it: wire bytes in the first word.
pub fn v4_words(ip: Ipv4Addr) -> [u32; 4] {
    [u32::from_ne_bytes(ip.octets()), 0, 0, 0]
}

/// An IPv6 address as the keys hold it: wire bytes in all four words.
pub fn v6_words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

pub fn listener_v4(ip: Ipv4Addr, port: u16) -> ListenerKey {
    ListenerKey {
        addr: v4_words(ip),
        port,
        family: family::V4,
    }
}

pub fn listener_v6(ip: Ipv6Addr, port: u16) -> ListenerKey {
    ListenerKey {
        addr: v6_words(ip),
        port,
        family: family::V6,
    }
}

/// A bare-port listener (every local address of both families).
pub fn listener_port(port: u16) -> ListenerKey {
    ListenerKey {
        addr: [0; 4],
        port,
        family: family::ANY,
    }
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Run {
    pub verdict: u32,
    /// The frame as the program left it.
    pub out: Vec<u8>,
}

/// Program-wide packet counters, summed over CPUs, indexed by `packet_stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packets(pub [u64; packet_stat::COUNT as usize]);

impl Packets {
    pub fn get(&self, index: u32) -> u64 {
        self.0[index as usize]
    }

    /// Frames the program counted: a frame that is a SYN, or is malformed, ends in exactly one of
    /// these four outcomes; a frame that is not a SYN in none (it is passed uncounted).
    pub fn counted(&self) -> u64 {
        packet_stat::OUTCOMES.iter().map(|&i| self.get(i)).sum()
    }

    /// How much each counter grew since `before`.
    pub fn since(&self, before: &Packets) -> Packets {
        Packets(std::array::from_fn(|i| self.0[i] - before.0[i]))
    }
}

pub struct AdmissionProgram {
    ebpf: Ebpf,
}

impl AdmissionProgram {
    /// Loads the object (fresh maps, nothing pinned or attached) and the XDP program.
    pub fn load() -> AdmissionProgram {
        require_root();
        let mut ebpf = EbpfLoader::new()
            .load(limiter::EBPF_OBJECT)
            .expect("load limiter's eBPF object");
        let program: &mut Xdp = ebpf
            .program_mut(program_names::ADMISSION)
            .expect("object has the admission program")
            .try_into()
            .expect("admission is an XDP program");
        program
            .load()
            .expect("verifier accepts the admission program");
        let mut program = AdmissionProgram { ebpf };
        // As the agent does at start (XDP does not read it, accounting does).
        let mut config: Array<_, AgentConfig> =
            Array::try_from(program.map_mut(map_names::AGENT_CONFIG)).unwrap();
        config
            .set(
                0,
                AgentConfig {
                    netns_cookie: 0,
                    layout_version: MAP_LAYOUT_VERSION,
                    counters_revision: limiter_common::COUNTERS_REVISION,
                },
                0,
            )
            .expect("write AGENT_CONFIG");
        program
    }

    fn map_mut(&mut self, name: &str) -> &mut aya::maps::Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("object has no map {name}"))
    }

    fn map(&self, name: &str) -> &aya::maps::Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("object has no map {name}"))
    }

    /// Adds a limited listener in `slot`, as the agent does: its key and config in
    /// SLOT_LISTENERS and LISTENERS, and one more user of its port in PORTS.
    pub fn add_listener(&mut self, key: ListenerKey, slot: u32, limit: u64, action: u32) {
        self.add_listener_config(
            key,
            ListenerConfig {
                limit,
                slot,
                action,
                source_limit: 0,
                source_action: 0,
            },
        );
    }

    /// [`Self::add_listener`] with the whole config (a per-source limit).
    pub fn add_listener_config(&mut self, key: ListenerKey, config: ListenerConfig) {
        let slot = config.slot;
        let mut slots: Array<_, SlotListener> =
            Array::try_from(self.map_mut(map_names::SLOT_LISTENERS)).unwrap();
        slots
            .set(
                slot,
                SlotListener {
                    key,
                    _pad: 0,
                    config,
                },
                0,
            )
            .expect("write SLOT_LISTENERS");
        let mut listeners: HashMap<_, ListenerKey, ListenerConfig> =
            HashMap::try_from(self.map_mut(map_names::LISTENERS)).unwrap();
        listeners.insert(key, config, 0).expect("insert listener");
        let mut ports: Array<_, u32> = Array::try_from(self.map_mut(map_names::PORTS)).unwrap();
        let entry = ports.get(&(key.port as u32), 0).expect("read PORTS");
        ports
            .set(key.port as u32, port_entry::with_listener(entry, slot), 0)
            .expect("write PORTS");
    }

    /// Runs the program once on `frame`.
    pub fn run(&self, frame: &[u8]) -> Run {
        let program: &Xdp = self
            .ebpf
            .program(program_names::ADMISSION)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; OUT_BUFFER.max(frame.len())];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|err| {
                panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {err}", frame.len())
            });
        out.truncate(result.data_size_out as usize);
        Run {
            verdict: result.return_value,
            out,
        }
    }

    pub fn usage(&self, slot: u32) -> SlotUsage {
        let usage: Array<_, SlotUsage> = Array::try_from(self.map(map_names::SLOT_USAGE)).unwrap();
        usage.get(&slot, 0).expect("read SLOT_USAGE")
    }

    /// Overwrites a slot's budget, as connections counted by accounting would leave it.
    pub fn set_usage(&mut self, slot: u32, usage: SlotUsage) {
        let mut map: Array<_, SlotUsage> =
            Array::try_from(self.ebpf.map_mut(map_names::SLOT_USAGE).unwrap()).unwrap();
        map.set(slot, usage, 0).expect("write SLOT_USAGE");
    }

    /// A slot's event counters summed over CPUs.
    pub fn slot_stats(&self, slot: u32) -> SlotStats {
        let stats: PerCpuArray<_, SlotStats> =
            PerCpuArray::try_from(self.map(map_names::SLOT_STATS)).unwrap();
        let per_cpu = stats.get(&slot, 0).expect("read SLOT_STATS");
        per_cpu.iter().fold(SlotStats::default(), |mut sum, s| {
            sum.add(s);
            sum
        })
    }

    pub fn packets(&self) -> Packets {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(map_names::PACKET_STATS)).unwrap();
        Packets(std::array::from_fn(|i| {
            stats
                .get(&(i as u32), 0)
                .expect("read PACKET_STATS")
                .iter()
                .sum()
        }))
    }

    /// Sets the connections a source holds (SOURCES), as accounting would leave them.
    pub fn set_source(&mut self, source: SourceKey, held: u64) {
        let mut sources: HashMap<_, SourceKey, u64> =
            HashMap::try_from(self.map_mut(map_names::SOURCES)).unwrap();
        sources.insert(source, held, 0).expect("write SOURCES");
    }

    /// Every reservation held in PENDING.
    pub fn pending(&self) -> Vec<(FlowKey, Pending)> {
        let pending: HashMap<_, FlowKey, Pending> =
            HashMap::try_from(self.map(map_names::PENDING)).unwrap();
        pending
            .iter()
            .map(|entry| entry.expect("read PENDING"))
            .collect()
    }
}
