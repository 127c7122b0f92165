//! Loading the kernel object, taking its maps, and attaching its programs. Everything attached
//! is owned by [`Programs`]; dropping it detaches all of it (aya detaches links on drop), which
//! is how an error half-way through or a signal leaves nothing behind.
use std::{
    fs::File,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap as _, MapData, PerCpuArray, PerCpuValues, ProgramArray,
        RingBuf, SkStorage, lpm_trie::LpmTrie,
    },
    programs::{
        BtfTracePoint, CgroupAttachMode, ProgramFd, SockOps, Xdp,
        links::{FdLink, PinnedLink},
    },
};
use limiter_common::{
    AgentConfig, COUNTERS_REVISION, FlowKey, KeepaliveConfig, KeepaliveTarget, ListenerConfig,
    ListenerKey, MAP_LAYOUT_VERSION, Pending, SlotListener, SlotStats, SourceKey, TrackedSocket,
    globals, map_names, packet_stat, program_names,
};

use crate::{
    EBPF_OBJECT,
    enforce::capacity::Capacity,
    enforce::features::{AdoptedClose, Features},
    enforce::pins::{self, PinDir},
    enforce::usage::SlotUsageView,
    enforce::xdp_mode::Attachment,
    error::AgentError,
};

/// A PENDING entry: a handshake's 4-tuple and its reservation.
pub type Reservation = (FlowKey, Pending);

/// The maps the agent reads and writes while it runs.
pub struct Maps {
    pub listeners: HashMap<MapData, ListenerKey, ListenerConfig>,
    pub ports: Array<MapData, u32>,
    pub slot_listeners: Array<MapData, SlotListener>,
    pub slot_stats: PerCpuArray<MapData, SlotStats>,
    pub packet_stats: PerCpuArray<MapData, u64>,
    /// What `packet_stats` mean, as found in adopted pins (`AgentConfig::counters_revision`).
    pub counters_revision: u32,
    pub pending: HashMap<MapData, FlowKey, Pending>,
    /// Counted sockets' tags (socket-local storage, read by fd): how the proxy tells an
    /// admitted connection from a held one.
    pub sockets: SkStorage<MapData, TrackedSocket>,
    /// Per-source counts, read for the report (sources at their limit).
    pub sources: HashMap<MapData, SourceKey, u64>,
    /// Connections for the `adopt` iterator to count (`preexisting`).
    pub preexisting: HashMap<MapData, u64, SourceKey>,
    /// The `adopt` iterator; `None` where it cannot load (connections established before the
    /// limits are then not counted, and the log says so).
    pub adopter: Option<crate::enforce::adopt_iterator::Adopter>,
    pub keepalive: LpmTrie<MapData, KeepaliveTarget, KeepaliveConfig>,
    pub usage: SlotUsageView,
    /// How many connections PREEXISTING holds at once: the `adopt` iterator's batch.
    pub preexisting_batch: u32,
    /// Flood mode's connections over the limit, to reset; taken by the agent's reset task.
    pub over_limit: Option<RingBuf<MapData>>,
    /// Which other namespaces' accounting programs this copy tail-calls; taken by the agent
    /// for its own copy (`netns::dispatch`), unused in the namespaces' copies.
    pub netns_dispatch: Option<(HashMap<MapData, u64, u32>, ProgramArray<MapData>)>,
}

/// The loaded programs and their attachments.
pub struct Programs {
    ebpf: Ebpf,
    /// Forwards the programs' aya-log records to the agent's log; stopped with the programs.
    log_task: Option<tokio::task::JoinHandle<()>>,
    /// Links that live on a pin (or were adopted from one): they stay attached when this
    /// process exits, until their pins are removed.
    pinned_links: Vec<PinnedOrAdopted>,
}

#[allow(
    dead_code,
    reason = "held only to keep the link's fd open while the agent runs"
)]
enum PinnedOrAdopted {
    Pinned(PinnedLink),
    Adopted(OwnedFd),
}

/// Loads the object and configures it for the network namespace with this cookie; nothing is
/// attached yet. `capacity` sizes the maps (`capacity.rs`: their memory is spent at load). With
/// a pin directory, the maps are pinned there, or reused with their counts (and the sizes they
/// were made with) if an earlier agent pinned them for the same namespace.
pub fn load(
    netns_cookie: u64,
    capacity: &Capacity,
    pins: Option<&PinDir>,
) -> Result<(Programs, Maps), AgentError> {
    let capacity = match pins.filter(|p| p.adopting) {
        Some(pins) => pinned_capacity(capacity, pins)?,
        None => *capacity,
    };
    let mut loader = EbpfLoader::new();
    capacity.apply(&mut loader);
    let log_level = crate::observe::logging::level().kernel();
    loader.override_global(aya_log::LEVEL, &log_level, true);
    let adopted_close = Features::get().adopted_close();
    let close_by_tracepoint = u8::from(adopted_close == Some(AdoptedClose::Tracepoint));
    loader.override_global(
        globals::ADOPTED_CLOSE_BY_TRACEPOINT,
        &close_by_tracepoint,
        true,
    );
    let paths: Vec<(&str, std::path::PathBuf)> = match pins {
        Some(pins) => map_names::ALL
            .iter()
            .map(|name| (*name, pins.map_path(name)))
            .collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let mut config = agent_config(&mut ebpf)?;
    // Fresh maps start at zero; adopted ones keep their counts.
    let mut counters_revision = COUNTERS_REVISION;
    if let Some(pins) = pins.filter(|p| p.adopting) {
        let found = config
            .get(&0, 0)
            .map_err(AgentError::map(map_names::AGENT_CONFIG))?;
        if found.layout_version != MAP_LAYOUT_VERSION {
            return Err(AgentError::IncompatiblePins {
                dir: pins.map_path(map_names::AGENT_CONFIG),
                found: format!("map layout v{}", found.layout_version),
            });
        }
        // Counts of another namespace's sockets (the namespace was replaced, e.g. a pod
        // restarted, while no agent ran) would never drain here.
        if found.netns_cookie != netns_cookie {
            return Err(AgentError::PinsOfAnotherNetns(
                pins.map_path(map_names::AGENT_CONFIG),
            ));
        }
        counters_revision = found.counters_revision;
    }
    // An adopted revision stays until this copy's programs have replaced the old ones
    // (`Programs::retire_old_counters`).
    let agent = AgentConfig {
        netns_cookie,
        layout_version: MAP_LAYOUT_VERSION,
        counters_revision,
    };
    config
        .set(0, agent, 0)
        .map_err(AgentError::map(map_names::AGENT_CONFIG))?;
    let usage_map = ebpf
        .map(map_names::SLOT_USAGE)
        .ok_or(AgentError::MissingFromObject {
            kind: "map",
            name: map_names::SLOT_USAGE,
        })?;
    let aya::maps::Map::Array(usage_data) = usage_map else {
        return Err(AgentError::MissingFromObject {
            kind: "array map",
            name: map_names::SLOT_USAGE,
        });
    };
    let usage = SlotUsageView::map(
        usage_data.fd().as_fd(),
        max_entries(usage_data, map_names::SLOT_USAGE)?,
    )
    .map_err(AgentError::syscall("mmap(SLOT_USAGE)"))?;
    let preexisting: HashMap<MapData, u64, SourceKey> = take(&mut ebpf, map_names::PREEXISTING)?;
    let preexisting_batch = max_entries(preexisting.map(), map_names::PREEXISTING)?;
    let mut maps = Maps {
        listeners: take(&mut ebpf, map_names::LISTENERS)?,
        ports: take(&mut ebpf, map_names::PORTS)?,
        slot_listeners: take(&mut ebpf, map_names::SLOT_LISTENERS)?,
        slot_stats: take(&mut ebpf, map_names::SLOT_STATS)?,
        packet_stats: take(&mut ebpf, map_names::PACKET_STATS)?,
        counters_revision,
        pending: take(&mut ebpf, map_names::PENDING)?,
        sockets: take(&mut ebpf, map_names::SOCKETS)?,
        sources: take(&mut ebpf, map_names::SOURCES)?,
        preexisting,
        preexisting_batch,
        keepalive: take(&mut ebpf, map_names::KEEPALIVE_POLICIES)?,
        usage,
        over_limit: Some(take(&mut ebpf, map_names::OVER_LIMIT)?),
        netns_dispatch: Some((
            take(&mut ebpf, map_names::NETNS_INDEX)?,
            take(&mut ebpf, map_names::NETNS_ACCOUNTING)?,
        )),
        adopter: None,
    };
    let log_task = log_kernel_events(&mut ebpf);
    let mut programs = Programs {
        ebpf,
        pinned_links: Vec::new(),
        log_task,
    };
    // Only where the close of what the walk counts will be seen (the start-up log said why not).
    if let Some(how) = adopted_close {
        maps.adopter = programs
            .prepare_adoption(how, pins)
            .inspect_err(|error| {
                tracing::warn!(
                    %error,
                    "connections established before their listener is limited cannot be \
                     counted (they will not count against the limit)"
                );
            })
            .ok();
    }
    Ok((programs, maps))
}

/// Reads the programs' aya-log ring buffer as records arrive and logs them through the `log`
/// facade (the agent's tracing output). Without a tokio runtime (tools, tests) or a ring
/// buffer, the records are not read; the programs run the same.
fn log_kernel_events(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let logger = aya_log::EbpfLogger::init(ebpf)
        .inspect_err(|error| tracing::warn!(%error, "the kernel programs' log cannot be read"))
        .ok()?;
    let _guard = runtime.enter();
    // SAFETY: the logger owns the ring buffer's map fd, which stays open and the same for as
    // long as the AsyncFd holds it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = registered
        .inspect_err(|error| tracing::warn!(%error, "the kernel programs' log cannot be polled"))
        .ok()?;
    Some(runtime.spawn(async move {
        loop {
            let Ok(mut ready) = logger.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }))
}

impl Drop for Programs {
    fn drop(&mut self) {
        if let Some(task) = &self.log_task {
            task.abort();
        }
    }
}

/// `capacity` with the listener slots of the pinned maps about to be adopted. Pinned maps keep
/// the size they were made with (a map cannot be resized), and aya checks an array's index
/// against the size the object asks for, not the map's: asking for another size than the
/// pinned one would make every slot beyond the smaller of the two unreadable, or unwritable.
fn pinned_capacity(capacity: &Capacity, pins: &PinDir) -> Result<Capacity, AgentError> {
    let path = pins.map_path(map_names::SLOT_USAGE);
    if !path.exists() {
        // Pins adopted without it would be adopted at sizes nothing can check.
        return Err(AgentError::IncompatiblePins {
            dir: path,
            found: "an incomplete set of pinned maps (no SLOT_USAGE)".into(),
        });
    }
    let pinned = aya::maps::MapInfo::from_pin(&path)
        .map_err(AgentError::map(map_names::SLOT_USAGE))?
        .max_entries();
    if pinned != capacity.listeners {
        tracing::warn!(
            pinned,
            asked = capacity.listeners,
            pin = %path.display(),
            "the pinned maps hold another number of listener slots than asked for (the \
             agent's own maps: --max-listeners; a namespace's: 256); the pinned number holds \
             until the pins are removed"
        );
    }
    Ok(Capacity {
        listeners: pinned,
        ..*capacity
    })
}

/// AGENT_CONFIG, borrowed, not taken: the programs are loaded later and refer to every map's
/// fd, so no map may be closed before then.
fn agent_config(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, AgentConfig>, AgentError> {
    let name = map_names::AGENT_CONFIG;
    let map = ebpf
        .map_mut(name)
        .ok_or(AgentError::MissingFromObject { kind: "map", name })?;
    Array::try_from(map).map_err(AgentError::map(name))
}

/// A zero for every possible CPU: what resets a per-CPU map entry.
pub fn per_cpu_zeros<T: aya::Pod + Default + Clone>() -> Result<PerCpuValues<T>, AgentError> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| AgentError::syscall(what)(e))?;
    // One value per possible CPU, as the maps have: cannot fail.
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(AgentError::syscall("per-CPU values"))
}

/// A map's entries as the map is (pinned maps keep the size they were made with), not as the
/// loader asked.
fn max_entries(map: &MapData, name: &'static str) -> Result<u32, AgentError> {
    Ok(map.info().map_err(AgentError::map(name))?.max_entries())
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, AgentError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(AgentError::MissingFromObject { kind: "map", name })?;
    T::try_from(map).map_err(AgentError::map(name))
}

impl Programs {
    /// Loads the adopt walk; where sock_ops cannot be asked to see the close of what it counts
    /// (before Linux 6.10), first attaches `close_watch`, which sees it instead.
    fn prepare_adoption(
        &mut self,
        how: AdoptedClose,
        pins: Option<&PinDir>,
    ) -> Result<crate::enforce::adopt_iterator::Adopter, AgentError> {
        // Both programs load against the kernel's BTF: read once.
        let btf = aya::Btf::from_sys_fs().map_err(|e| AgentError::Syscall {
            call: "reading the kernel's BTF (/sys/kernel/btf/vmlinux)",
            source: std::io::Error::other(e),
        })?;
        if how == AdoptedClose::Tracepoint {
            self.attach_close_watch(&btf, pins)?;
        }
        crate::enforce::adopt_iterator::Adopter::load(&mut self.ebpf, &btf)
    }

    /// `close_watch` on the `inet_sock_set_state` tracepoint. With a pin directory its link is
    /// pinned, so that the close of connections counted before a restart is still seen while no
    /// agent runs. A tracing link cannot have its program replaced: over an earlier agent's pin,
    /// the new link is attached first, then takes the pin's place (the two, both attached for a
    /// moment, release a socket's tag only once).
    fn attach_close_watch(
        &mut self,
        btf: &aya::Btf,
        pins: Option<&PinDir>,
    ) -> Result<(), AgentError> {
        let name = program_names::CLOSE_WATCH;
        let load_error = |source| AgentError::LoadProgram {
            program: name,
            source,
        };
        let program: &mut BtfTracePoint = program(&mut self.ebpf, name)?;
        program
            .load("inet_sock_set_state", btf)
            .map_err(load_error)?;
        let link = program.attach().map_err(load_error)?;
        let Some(pin) = pins.map(|p| p.link_path("close-watch")) else {
            return Ok(());
        };
        let link = program.take_link(link).map_err(load_error)?;
        if pin.exists() {
            std::fs::remove_file(&pin).map_err(|e| pin_error(&pin, e))?;
        }
        self.pinned_links
            .push(pin_link(Ok(FdLink::from(link)), &pin)?);
        Ok(())
    }

    /// Once this copy's admission program has replaced an adopted older one: zeroes the
    /// counters whose meaning changed since the adopted pins' revision, and records the new
    /// revision. Not before: the old program, still attached until then, would go on adding
    /// its meaning to the zeroed counter (and a start that fails before then leaves the pins
    /// as it found them).
    pub fn retire_old_counters(&mut self, maps: &mut Maps) -> Result<(), AgentError> {
        if maps.counters_revision >= COUNTERS_REVISION {
            return Ok(());
        }
        let name = map_names::AGENT_CONFIG;
        let mut config = agent_config(&mut self.ebpf)?;
        maps.packet_stats
            .set(packet_stat::SYN_NOT_LIMITED, per_cpu_zeros()?, 0)
            .map_err(AgentError::map(map_names::PACKET_STATS))?;
        let found = config.get(&0, 0).map_err(AgentError::map(name))?;
        config
            .set(
                0,
                AgentConfig {
                    counters_revision: COUNTERS_REVISION,
                    ..found
                },
                0,
            )
            .map_err(AgentError::map(name))?;
        maps.counters_revision = COUNTERS_REVISION;
        tracing::info!(
            "adopted counters of an earlier revision: SYNs to no limited listener start from 0 \
             (the counter in their place counted every frame that was not a SYN to a limited \
             listener)"
        );
        Ok(())
    }

    /// Loads the accounting program without attaching it: for a namespace's copy, which the
    /// agent's own copy tail-calls (`netns::dispatch`).
    pub fn load_accounting(&mut self) -> Result<&ProgramFd, AgentError> {
        let name = program_names::ACCOUNTING;
        let program: &mut SockOps = program(&mut self.ebpf, name)?;
        program.load().map_err(|source| AgentError::LoadProgram {
            program: name,
            source,
        })?;
        program.fd().map_err(|source| AgentError::LoadProgram {
            program: name,
            source,
        })
    }

    /// sock_ops on the cgroup: from now on connections are counted.
    pub fn attach_accounting(
        &mut self,
        cgroup: &Path,
        pins: Option<&PinDir>,
    ) -> Result<(), AgentError> {
        let name = program_names::ACCOUNTING;
        self.load_accounting()?;
        let program: &mut SockOps = program(&mut self.ebpf, name)?;
        let pin = pins.map(|p| p.link_path("accounting"));
        if let Some(adopted) =
            adopt_link(pins, "accounting", program.fd().map(|fd| fd.as_fd()), name)?
        {
            self.pinned_links.push(adopted);
            return Ok(());
        }
        let dir = File::open(cgroup).map_err(|e| AgentError::AttachSockOps {
            path: cgroup.to_owned(),
            source: aya::programs::ProgramError::IOError(e),
        })?;
        // aya uses a bpf_link here (Linux 5.7+), and cgroup links always coexist with other
        // programs on the cgroup (Cilium's, systemd's); the kernel rejects any attach flag on a
        // link, so the mode must be the flag-less `Single`.
        let link = program
            .attach(dir, CgroupAttachMode::Single)
            .map_err(|source| AgentError::AttachSockOps {
                path: cgroup.to_owned(),
                source,
            })?;
        if let Some(pin) = pin {
            let link = program
                .take_link(link)
                .map_err(|source| AgentError::AttachSockOps {
                    path: cgroup.to_owned(),
                    source,
                })?;
            self.pinned_links
                .push(pin_link(FdLink::try_from(link), &pin)?);
        }
        Ok(())
    }

    /// XDP on each interface: from now on SYNs are admitted or refused there.
    pub fn attach_admission(
        &mut self,
        attachments: &[Attachment],
        pins: Option<&PinDir>,
    ) -> Result<(), AgentError> {
        let name = program_names::ADMISSION;
        let program: &mut Xdp = program(&mut self.ebpf, name)?;
        program.load().map_err(|source| AgentError::LoadProgram {
            program: name,
            source,
        })?;
        for Attachment { iface, mode, .. } in attachments {
            let link_name = format!("xdp-{iface}");
            let pin = pins.map(|p| p.link_path(&link_name));
            if let Some(adopted) =
                adopt_link(pins, &link_name, program.fd().map(|fd| fd.as_fd()), name)?
            {
                self.pinned_links.push(adopted);
                continue;
            }
            let link =
                program
                    .attach(iface, mode.to_aya())
                    .map_err(|source| AgentError::AttachXdp {
                        iface: iface.clone(),
                        source,
                    })?;
            if let Some(pin) = pin {
                let link = program
                    .take_link(link)
                    .map_err(|source| AgentError::AttachXdp {
                        iface: iface.clone(),
                        source,
                    })?;
                self.pinned_links
                    .push(pin_link(FdLink::try_from(link), &pin)?);
            }
        }
        Ok(())
    }
}

/// The program `name` of the object, as its type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, AgentError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(AgentError::MissingFromObject {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| AgentError::LoadProgram {
            program: name,
            source,
        })
}

/// Pins a freshly attached link so it outlives the agent. Only bpf_link attachments can be
/// pinned (XDP through netlink, before Linux 5.9, cannot).
fn pin_link(
    link: Result<FdLink, aya::programs::links::LinkError>,
    pin: &Path,
) -> Result<PinnedOrAdopted, AgentError> {
    let link =
        link.map_err(|e| pin_error(pin, std::io::Error::other(format!("{e} (not a bpf_link)"))))?;
    let pinned = link
        .pin(pin)
        .map_err(|e| pin_error(pin, std::io::Error::other(e.to_string())))?;
    Ok(PinnedOrAdopted::Pinned(pinned))
}

fn pin_error(path: &Path, source: std::io::Error) -> AgentError {
    AgentError::Pin {
        what: path.display().to_string(),
        source,
    }
}

/// If an earlier agent left this link pinned, swaps our freshly loaded program into it (no gap
/// in enforcement) and keeps it; otherwise `None` and the caller attaches anew. A link pinned by
/// an agent of another map layout is taken over the same way, and pinned again under this
/// layout's directory (the other layout's pins are removed once everything is taken over).
fn adopt_link(
    pins: Option<&PinDir>,
    link_name: &str,
    program: Result<std::os::fd::BorrowedFd<'_>, aya::programs::ProgramError>,
    name: &'static str,
) -> Result<Option<PinnedOrAdopted>, AgentError> {
    let Some(pins) = pins else {
        return Ok(None);
    };
    let own = pins.link_path(link_name);
    let (found, predecessor) = if own.exists() {
        (own.clone(), false)
    } else {
        match pins.predecessor_link(link_name) {
            Some(path) => (path, true),
            None => return Ok(None),
        }
    };
    let program = program.map_err(|source| AgentError::LoadProgram {
        program: name,
        source,
    })?;
    let link = pins::open_pinned(&found).map_err(|e| pin_error(&found, e))?;
    let updated = pins::update_link(link.as_fd(), program);
    if let (true, Err(error)) = (predecessor, &updated) {
        // The other layout's link of something gone since it was pinned (a pod's namespace
        // replaced while no agent ran: its XDP link is defunct): attach anew; the stale pin
        // goes with the rest of that layout's.
        tracing::info!(
            link = link_name,
            from = %found.display(),
            %error,
            "a link of another map layout cannot be taken over (what it was attached to is \
             gone): attaching anew"
        );
        return Ok(None);
    }
    updated.map_err(|e| pin_error(&found, e))?;
    if predecessor {
        pins::pin_fd(link.as_fd(), &own).map_err(|e| pin_error(&own, e))?;
        tracing::info!(
            link = link_name,
            from = %found.display(),
            "took over a link of another map layout: this agent's program now runs in it"
        );
    }
    Ok(Some(PinnedOrAdopted::Adopted(link)))
}
