//! Enforcing limits inside one network namespace: the agent's own, or another one (a pod's).
//!
//! Every namespace gets its own copy of the kernel object, loaded with its cookie: its own maps
//! (so its counts, slots, handshakes in flight and flood mode are its own, and a port limited
//! in two pods is two listeners), XDP admission on its interfaces, and its own accounting
//! program. Every namespace is started, watched and stopped the same way ([`NetnsEnforcement`]):
//! load, configure, start counting, count what was there first, attach admission, then the
//! handshake sweeper, the flood watch, resets after a completed handshake, the unbound-listener
//! check and pins. Where they differ is the [`Place`]:
//!
//! - the agent's own namespace admits on `--iface` (XDP modes chosen before anything was
//!   loaded), counts with sock_ops attached to the cgroup (the program that also hands other
//!   namespaces' sockets to their copies, [`super::dispatch`]), is sized by `--max-listeners`,
//!   pins at the top of the pin directory, and knows the listeners the agent proxies;
//! - another namespace admits on its own interfaces (a pod's `eth0`: it sees the pod's traffic
//!   after the node's DNAT, routing or decapsulation, whichever way the client came), counts
//!   through an entry in the agent's copy's dispatch maps, is sized for one workload, and pins in
//!   a directory of its own under the agent's.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use crate::{
    config::{
        cli::XdpAttachMode,
        keepalive::{Destinations, KeepaliveSpec},
        listener::{Action, LimitSpec, Listener},
    },
    enforce::{
        capacity::Capacity,
        handshake,
        kernel::{self, Maps, Programs},
        limits::LimitTable,
        over_limit,
        pins::PinDir,
        preexisting,
        sock_diag::SockDiag,
        unbound,
        xdp_mode::{self, Attachment},
    },
    error::AgentError,
    netns::{Netns, dispatch::Dispatch},
    observe::stats::Report,
};

/// What every namespace is enforced with: the agent's flags.
#[derive(Clone, Debug)]
pub struct Environment {
    pub xdp_mode: XdpAttachMode,
    pub veth_peer_runs_xdp: bool,
    pub over_limit: Action,
    pub keepalive_for: Vec<(Destinations, KeepaliveSpec)>,
    /// The agent's pin directory; each namespace pins under it.
    pub pins: Option<PinDir>,
}

/// Where an enforcement is, and what only that place has.
pub enum Place {
    /// The agent's own network namespace.
    Agent(AgentNamespace),
    /// Another network namespace, by path.
    Netns(Netns),
}

/// What the agent's own namespace adds, all of it checked before anything is loaded.
pub struct AgentNamespace {
    pub cookie: u64,
    /// `--iface`, each with the XDP mode it gets.
    pub attachments: Vec<Attachment>,
    /// The cgroup v2 directory sock_ops counts the sockets of.
    pub cgroup: PathBuf,
    pub max_listeners: u32,
    /// Listeners the agent runs a proxy on (the only ones `close` can apply to).
    pub proxied: Vec<Listener>,
}

impl Place {
    /// How logs, stats and metrics name the namespace: `None` for the agent's own, the path as
    /// the user gave it for another.
    fn label(&self) -> Option<String> {
        match self {
            Place::Agent(_) => None,
            Place::Netns(netns) => Some(netns.path().display().to_string()),
        }
    }

    fn cookie(&self) -> Result<u64, AgentError> {
        match self {
            Place::Agent(agent) => Ok(agent.cookie),
            Place::Netns(netns) => Ok(netns.cookie()?),
        }
    }

    /// Runs `work` inside the namespace (the agent's own: right here).
    fn run_in<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, AgentError> {
        match self {
            Place::Agent(_) => Ok(work()),
            Place::Netns(netns) => Ok(netns.run_in(work)?),
        }
    }

    /// An error in another namespace names it; the agent's own need not.
    fn name_in(&self, source: AgentError) -> AgentError {
        match self.label() {
            None => source,
            Some(netns) => AgentError::InNetns {
                netns,
                source: Box::new(source),
            },
        }
    }

    /// The namespace's interfaces, each with the XDP mode it gets.
    fn attachments(&self, env: &Environment) -> Result<Vec<Attachment>, AgentError> {
        let netns = match self {
            Place::Agent(agent) => return Ok(agent.attachments.clone()),
            Place::Netns(netns) => netns,
        };
        let ifaces = netns.interfaces()?;
        if ifaces.is_empty() {
            return Err(AgentError::Combination(
                "it has no interface but lo, so no SYN arrives where limiter admits them \
                 (a pod's namespace has its eth0 once its network is set up)"
                    .into(),
            ));
        }
        netns.run_in(|| {
            ifaces
                .iter()
                .map(|iface| xdp_mode::choose(iface, env.xdp_mode, env.veth_peer_runs_xdp))
                .collect::<Result<Vec<_>, _>>()
        })?
    }

    /// Loads the namespace's copy of the kernel object, with its pins.
    fn load(
        &self,
        cookie: u64,
        env: &Environment,
    ) -> Result<(Programs, Maps, Option<PinDir>), AgentError> {
        let netns = match self {
            Place::Agent(agent) => {
                let capacity = Capacity::agent(agent.max_listeners);
                let (programs, maps) = kernel::load(cookie, &capacity, env.pins.as_ref())?;
                return Ok((programs, maps, env.pins.clone()));
            }
            Place::Netns(netns) => netns,
        };
        let open_pins = || {
            env.pins
                .as_ref()
                .map(|p| p.for_netns(netns.path()))
                .transpose()
        };
        let mut pins = open_pins()?;
        let (programs, maps) = match kernel::load(cookie, &Capacity::NETNS, pins.as_ref()) {
            // Pins of the namespace that was at this path before (a pod that restarted while
            // no agent ran): its counts mean nothing here.
            Err(AgentError::PinsOfAnotherNetns(_)) => {
                let stale = pins.take().expect("only pins can be of another namespace");
                tracing::info!(netns = %netns.path().display(), "removing the pins of the namespace this path named before");
                stale.remove().map_err(|source| AgentError::Pin {
                    what: "removing stale pins".into(),
                    source,
                })?;
                pins = open_pins()?;
                kernel::load(cookie, &Capacity::NETNS, pins.as_ref())?
            }
            loaded => loaded?,
        };
        Ok((programs, maps, pins))
    }
}

/// One namespace being enforced in. Dropping it (or [`NetnsEnforcement::stop`]) detaches
/// everything that is not pinned.
pub struct NetnsEnforcement {
    place: Place,
    /// The namespace's cookie: its copy's own, and its entry in the dispatch maps.
    cookie: u64,
    /// Shared with the proxies (in the agent's namespace), which ask it whether a connection
    /// is over its limit.
    table: Arc<Mutex<LimitTable>>,
    attachments: Vec<Attachment>,
    /// Listening sockets of this namespace, for the unbound check (opened inside it).
    diag: Option<SockDiag>,
    reset_task: Option<tokio::task::JoinHandle<()>>,
    pins: Option<PinDir>,
    // Last: dropped after everything that refers to its maps.
    programs: Programs,
}

impl NetnsEnforcement {
    /// Loads, configures and attaches everything for the namespace at `place`, or leaves
    /// nothing behind. Another namespace's sockets are handed to its copy through `dispatch`
    /// (the agent's copy's, which the agent's own namespace has none of yet).
    pub fn start(
        place: Place,
        limits: &[LimitSpec],
        keepalive: &[(Destinations, KeepaliveSpec)],
        env: &Environment,
        mut dispatch: Option<&mut Dispatch>,
    ) -> Result<NetnsEnforcement, AgentError> {
        let loaded = place.cookie().and_then(|cookie| {
            let attachments = place.attachments(env)?;
            xdp_mode::check_actions_deliverable(limits, env.over_limit, &attachments)?;
            Ok((cookie, attachments, place.load(cookie, env)?))
        });
        let (cookie, attachments, (programs, maps, pins)) = loaded.map_err(|e| match e {
            // Finding the namespace's cookie and interfaces: the error names its path already.
            AgentError::Netns(_) => e,
            e => place.name_in(e),
        })?;
        let mut table = LimitTable::new(maps, env.over_limit);
        table.netns = place.label();
        if let Place::Agent(agent) = &place {
            table.set_proxied(agent.proxied.clone());
        }
        let mut enforcement = NetnsEnforcement {
            place,
            cookie,
            table: Arc::new(Mutex::new(table)),
            attachments,
            diag: None,
            reset_task: None,
            pins,
            programs,
        };
        match enforcement.configure_and_attach(limits, keepalive, env, dispatch.as_deref_mut()) {
            Ok(()) => Ok(enforcement),
            Err(e) => {
                let e = enforcement.place.name_in(e);
                // Pins created for this start go (adopted ones stay, enforcing as found).
                let keep = enforcement
                    .pins
                    .as_ref()
                    .is_some_and(|p| p.keep_on_failure());
                enforcement.stop(keep, dispatch);
                Err(e)
            }
        }
    }

    fn configure_and_attach(
        &mut self,
        limits: &[LimitSpec],
        keepalive: &[(Destinations, KeepaliveSpec)],
        env: &Environment,
        dispatch: Option<&mut Dispatch>,
    ) -> Result<(), AgentError> {
        let label = self.label();
        let adopting = self.pins.as_ref().is_some_and(|p| p.adopting);
        {
            let mut table = self.table();
            table.set_attachments(self.attachments.clone());
            // The agent's keepalive policies, then this namespace's own (which win for the same
            // destinations).
            table.configure(adopting, limits, env.keepalive_for.iter().chain(keepalive))?;
            if let Some(pins) = self.pins.as_ref().filter(|p| p.taking_over()) {
                if table.maps().adopter.is_none() {
                    return Err(AgentError::TakeoverWithoutAdoption {
                        dir: pins.root().to_owned(),
                        layouts: pins.predecessor_names(),
                    });
                }
                tracing::info!(
                    netns = label.as_deref(),
                    found = pins.predecessor_names(),
                    "taking over the pins of another map layout: this agent's programs go into \
                     their links, the connections are counted anew, then those pins are removed"
                );
            }
        }
        // Counting starts here: the agent's copy on the cgroup counts its own namespace's
        // sockets, and from the dispatch entry on it hands this namespace's to this copy.
        match (&self.place, dispatch) {
            (Place::Agent(agent), _) => {
                self.programs
                    .attach_accounting(&agent.cgroup, self.pins.as_ref())?;
                tracing::info!(cgroup = %agent.cgroup.display(), "attached: counting connections (sock_ops)");
            }
            (Place::Netns(_), Some(dispatch)) => {
                let accounting = self.programs.load_accounting()?;
                dispatch.add(self.cookie, accounting)?;
            }
            (Place::Netns(_), None) => {
                unreachable!("another namespace is started with the agent's dispatch maps")
            }
        }
        // The connections that were there first count too, before this copy's admission
        // decides on a single SYN (over another layout's pins, its programs go on admitting
        // until then, from counts that can only have grown since its sock_ops left).
        self.count_preexisting()?;
        let (programs, attachments, pins) = (&mut self.programs, &self.attachments, &self.pins);
        self.place
            .run_in(|| programs.attach_admission(attachments, pins.as_ref()))??;
        self.programs.retire_old_counters(
            self.table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .maps_mut(),
        )?;
        for Attachment {
            iface, mode, why, ..
        } in &self.attachments
        {
            tracing::info!(netns = label.as_deref(), %iface, %mode, why, "attached: admitting SYNs (XDP)");
        }
        let (diag, reset_diag) = self.place.run_in(|| (SockDiag::open(), SockDiag::open()))?;
        self.diag = diag
            .inspect_err(|error| {
                tracing::warn!(netns = label.as_deref(), %error, "cannot list listening sockets (sock_diag): limits nothing listens on will not be reported");
            })
            .ok();
        // Limits nothing listens on are said before `ready` (and watched from then on).
        self.check_listening();
        // Flood mode's connections over the limit, reset as soon as sock_ops reports them.
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let resets = table.resets.clone();
        self.reset_task = table
            .maps_mut()
            .over_limit
            .take()
            .map(|ring| tokio::spawn(over_limit::reset_loop(ring, reset_diag, resets)));
        Ok(())
    }

    /// The namespace's limits, slots and counters.
    pub fn table(&self) -> MutexGuard<'_, LimitTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The same table, for what shares it while the agent runs (the proxies).
    pub fn shared_table(&self) -> Arc<Mutex<LimitTable>> {
        self.table.clone()
    }

    /// `limiter set` (and a reload's or a policy's new limit): the limit, then the connections
    /// its listener already holds, counted (the table is let go first: counting takes it).
    pub fn set(&self, spec: &LimitSpec) -> Result<String, AgentError> {
        let now = self.table().set(spec)?;
        self.count_preexisting()?;
        Ok(now)
    }

    /// Counts the connections established in the namespace before their listener was limited
    /// (`preexisting`); after every change of limits.
    pub fn count_preexisting(&self) -> Result<(), AgentError> {
        let mut table = self.table();
        let table = &mut *table;
        self.place.run_in(|| preexisting::count(table))?;
        Ok(())
    }

    /// How logs, stats and metrics name the namespace (`None`: the agent's own).
    pub fn label(&self) -> Option<String> {
        self.place.label()
    }

    /// The namespace, when it is not the agent's own.
    pub fn netns(&self) -> Option<&Netns> {
        match &self.place {
            Place::Agent(_) => None,
            Place::Netns(netns) => Some(netns),
        }
    }

    /// Releases expired reservations and watches for floods (the agent's sweeper tick).
    pub fn sweep(&self, timeout: Duration) {
        handshake::sweep(&mut self.table(), timeout);
    }

    /// Looks for limits nothing listens on in this namespace.
    pub fn check_listening(&self) {
        if let Some(diag) = &self.diag {
            unbound::check(&mut self.table(), diag);
        }
    }

    pub fn report(&self) -> Report {
        self.table().report()
    }

    /// Takes the agent's copy's dispatch maps, through which other namespaces' copies are
    /// handed their sockets.
    pub fn take_dispatch(&self) -> Result<Dispatch, AgentError> {
        let (index, programs) =
            self.table()
                .maps_mut()
                .netns_dispatch
                .take()
                .ok_or(AgentError::MissingFromObject {
                    kind: "map",
                    name: limiter_common::map_names::NETNS_INDEX,
                })?;
        Ok(Dispatch::new(index, programs))
    }

    /// Detaches everything; with `keep_pinned`, pinned programs stay attached (and in the
    /// dispatch maps) and their maps pinned, for a restarted agent to adopt; else the pins go
    /// too. The agent's own pins are the pin directory itself, which the agent removes once
    /// every namespace is detached.
    pub fn stop(self, keep_pinned: bool, dispatch: Option<&mut Dispatch>) {
        if let Some(task) = &self.reset_task {
            task.abort();
        }
        if let Place::Netns(_) = self.place {
            if let Some(dispatch) = dispatch.filter(|_| !keep_pinned || self.pins.is_none()) {
                dispatch.remove(self.cookie);
            }
            if let Some(pins) = self.pins.as_ref().filter(|_| !keep_pinned)
                && let Err(error) = pins.remove()
            {
                tracing::warn!(netns = self.label().as_deref(), %error, "removing the namespace's pins failed");
            }
        }
        drop(self);
    }
}
