//! Loading the kernel object, taking its maps, and attaching its programs. Everything attached
//! is owned by [`Programs`]; dropping it detaches all of it (aya detaches links on drop), which
//! is how an error half-way through or a signal leaves nothing behind.
use std::{fs::File, os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{CgroupAttachMode, SockOps, Xdp, XdpMode},
};
use limiter_common::{
    AgentConfig, FlowKey, ListenerConfig, ListenerKey, MAP_LAYOUT_VERSION, Pending, SlotStats,
    map_names, program_names,
};

use crate::{EBPF_OBJECT, cli::XdpAttachMode, error::AgentError, usage::SlotUsageView};

/// The maps the agent reads and writes while it runs.
pub struct Maps {
    pub listeners: HashMap<MapData, ListenerKey, ListenerConfig>,
    pub ports: Array<MapData, u32>,
    pub slot_stats: PerCpuArray<MapData, SlotStats>,
    pub packet_stats: PerCpuArray<MapData, u64>,
    pub pending: HashMap<MapData, FlowKey, Pending>,
    pub usage: SlotUsageView,
}

/// The loaded programs and their attachments.
pub struct Programs {
    ebpf: Ebpf,
}

/// Loads the object and configures it for this network namespace; nothing is attached yet.
pub fn load(netns_cookie: u64) -> Result<(Programs, Maps), AgentError> {
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
    // Borrowed, not taken: the programs are loaded later and refer to every map's fd, so no map
    // may be closed before then.
    let config_map = ebpf
        .map_mut(map_names::AGENT_CONFIG)
        .ok_or(AgentError::MissingFromObject { kind: "map", name: map_names::AGENT_CONFIG })?;
    let mut config: Array<&mut MapData, AgentConfig> =
        Array::try_from(config_map).map_err(AgentError::map(map_names::AGENT_CONFIG))?;
    let agent = AgentConfig { netns_cookie, layout_version: MAP_LAYOUT_VERSION, _pad: 0 };
    config.set(0, agent, 0).map_err(AgentError::map(map_names::AGENT_CONFIG))?;
    let usage_map = ebpf
        .map(map_names::SLOT_USAGE)
        .ok_or(AgentError::MissingFromObject { kind: "map", name: map_names::SLOT_USAGE })?;
    let usage_fd = match usage_map {
        aya::maps::Map::Array(data) => data.fd().as_fd(),
        _ => return Err(AgentError::MissingFromObject { kind: "array map", name: map_names::SLOT_USAGE }),
    };
    let usage = SlotUsageView::map(usage_fd).map_err(AgentError::syscall("mmap(SLOT_USAGE)"))?;
    let maps = Maps {
        listeners: take(&mut ebpf, map_names::LISTENERS)?,
        ports: take(&mut ebpf, map_names::PORTS)?,
        slot_stats: take(&mut ebpf, map_names::SLOT_STATS)?,
        packet_stats: take(&mut ebpf, map_names::PACKET_STATS)?,
        pending: take(&mut ebpf, map_names::PENDING)?,
        usage,
    };
    Ok((Programs { ebpf }, maps))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, AgentError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(AgentError::MissingFromObject { kind: "map", name })?;
    T::try_from(map).map_err(AgentError::map(name))
}

impl Programs {
    /// sock_ops on the cgroup: from now on connections are counted.
    pub fn attach_accounting(&mut self, cgroup: &Path) -> Result<(), AgentError> {
        let name = program_names::ACCOUNTING;
        let program: &mut SockOps = self
            .ebpf
            .program_mut(name)
            .ok_or(AgentError::MissingFromObject { kind: "program", name })?
            .try_into()
            .map_err(|source| AgentError::LoadProgram { program: name, source })?;
        program.load().map_err(|source| AgentError::LoadProgram { program: name, source })?;
        let dir = File::open(cgroup).map_err(|e| AgentError::AttachSockOps {
            path: cgroup.to_owned(),
            source: aya::programs::ProgramError::IOError(e),
        })?;
        // aya uses a bpf_link here (Linux 5.7+), and cgroup links always coexist with other
        // programs on the cgroup (Cilium's, systemd's); the kernel rejects any attach flag on a
        // link, so the mode must be the flag-less `Single`.
        program
            .attach(dir, CgroupAttachMode::Single)
            .map_err(|source| AgentError::AttachSockOps { path: cgroup.to_owned(), source })?;
        Ok(())
    }

    /// XDP on each interface: from now on SYNs are admitted or refused there.
    pub fn attach_admission(&mut self, ifaces: &[String], mode: XdpAttachMode) -> Result<(), AgentError> {
        let name = program_names::ADMISSION;
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(AgentError::MissingFromObject { kind: "program", name })?
            .try_into()
            .map_err(|source| AgentError::LoadProgram { program: name, source })?;
        program.load().map_err(|source| AgentError::LoadProgram { program: name, source })?;
        for iface in ifaces {
            let mode = match mode {
                // The kernel chooses: native where the driver has it, generic otherwise.
                XdpAttachMode::Auto => XdpMode::Default,
                XdpAttachMode::Native => XdpMode::Driver,
                XdpAttachMode::Generic => XdpMode::Skb,
            };
            program
                .attach(iface, mode)
                .map_err(|source| AgentError::AttachXdp { iface: iface.clone(), source })?;
        }
        Ok(())
    }
}
