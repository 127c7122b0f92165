//! Enforcing limits inside one network namespace other than the agent's (a pod's).
//!
//! The namespace gets its own copy of the kernel object, loaded with its cookie: its own maps
//! (so its counts, slots, handshakes in flight and flood mode are its own, and a port limited
//! in two pods is two listeners), XDP admission on its interfaces (a pod's `eth0`: it sees the
//! pod's traffic after the node's DNAT, routing or decapsulation, whichever way the client
//! came), and its own accounting program, which the agent's copy on the cgroup root tail-calls
//! for this namespace's sockets ([`super::dispatch`]). Everything the
//! agent does for its own namespace is done here the same way: the handshake sweeper, the
//! flood watch, resets after a completed handshake, the unbound-listener check, pins.
use std::{sync::Arc, time::Duration};

use crate::{
    config::keepalive::{Destinations, KeepaliveSpec},
    config::listener::{Action, LimitSpec},
    enforce::capacity::Capacity,
    enforce::handshake,
    enforce::kernel::{self, Programs},
    enforce::limits::LimitTable,
    enforce::over_limit::{self, ResetStats},
    enforce::pins::PinDir,
    enforce::preexisting,
    enforce::sock_diag::SockDiag,
    enforce::unbound,
    enforce::xdp_mode::XdpAttachMode,
    enforce::xdp_mode::{self, Attachment},
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

/// One namespace being enforced in. Dropping it (or [`NetnsEnforcement::stop`]) detaches
/// everything that is not pinned.
pub struct NetnsEnforcement {
    netns: Netns,
    /// The namespace's cookie: its entry in the dispatch maps.
    cookie: u64,
    pub table: LimitTable,
    attachments: Vec<Attachment>,
    /// Listening sockets of this namespace, for the unbound check (opened inside it).
    diag: Option<SockDiag>,
    resets: Arc<ResetStats>,
    reset_task: Option<tokio::task::JoinHandle<()>>,
    pins: Option<PinDir>,
    // Last: dropped after everything that refers to its maps.
    programs: Programs,
}

impl NetnsEnforcement {
    /// Loads, configures and attaches everything for `netns`, or leaves nothing behind.
    pub fn start(
        netns: Netns,
        limits: &[LimitSpec],
        keepalive: &[(Destinations, KeepaliveSpec)],
        env: &Environment,
        dispatch: &mut Dispatch,
    ) -> Result<NetnsEnforcement, AgentError> {
        let label = netns.path().display().to_string();
        let in_netns = |source: AgentError| AgentError::InNetns {
            netns: label.clone(),
            source: Box::new(source),
        };
        let cookie = netns.cookie()?;
        let ifaces = netns.interfaces()?;
        if ifaces.is_empty() {
            return Err(in_netns(AgentError::Combination(
                "it has no interface but lo, so no SYN arrives where limiter admits them \
                 (a pod's namespace has its eth0 once its network is set up)"
                    .into(),
            )));
        }
        let attachments = netns
            .run_in(|| {
                ifaces
                    .iter()
                    .map(|iface| xdp_mode::choose(iface, env.xdp_mode, env.veth_peer_runs_xdp))
                    .collect::<Result<Vec<_>, _>>()
            })?
            .map_err(in_netns)?;
        crate::agent::check_actions_deliverable(limits, env.over_limit, &attachments)
            .map_err(in_netns)?;
        let open_pins = || {
            env.pins
                .as_ref()
                .map(|p| p.for_netns(netns.path()))
                .transpose()
                .map_err(in_netns)
        };
        let mut pins = open_pins()?;
        let (programs, maps) = match kernel::load(cookie, &Capacity::NETNS, pins.as_ref()) {
            // Pins of the namespace that was at this path before (a pod that restarted while
            // no agent ran): its counts mean nothing here.
            Err(AgentError::PinsOfAnotherNetns(_)) => {
                let stale = pins.take().expect("only pins can be of another namespace");
                tracing::info!(netns = %label, "removing the pins of the namespace this path named before");
                stale.remove().map_err(|source| {
                    in_netns(AgentError::Pin {
                        what: "removing stale pins".into(),
                        source,
                    })
                })?;
                pins = open_pins()?;
                kernel::load(cookie, &Capacity::NETNS, pins.as_ref()).map_err(in_netns)?
            }
            loaded => loaded.map_err(in_netns)?,
        };
        let mut enforcement = NetnsEnforcement {
            netns,
            cookie,
            table: LimitTable::new(maps, env.over_limit),
            attachments,
            diag: None,
            resets: Arc::new(ResetStats::default()),
            reset_task: None,
            pins,
            programs,
        };
        match enforcement.configure_and_attach(limits, keepalive, env, dispatch) {
            Ok(()) => Ok(enforcement),
            Err(e) => {
                // Pins created for this start go (adopted ones stay, enforcing as found).
                let keep = enforcement
                    .pins
                    .as_ref()
                    .is_some_and(|p| p.keep_on_failure());
                enforcement.stop(keep, dispatch);
                Err(in_netns(e))
            }
        }
    }

    fn configure_and_attach(
        &mut self,
        limits: &[LimitSpec],
        keepalive: &[(Destinations, KeepaliveSpec)],
        env: &Environment,
        dispatch: &mut Dispatch,
    ) -> Result<(), AgentError> {
        let label = self.label();
        self.table.netns = Some(label.clone());
        self.table.set_attachments(self.attachments.clone());
        // The agent's keepalive policies, then this namespace's own (which win for the same
        // destinations).
        self.table.configure(
            self.pins.as_ref().is_some_and(|p| p.adopting),
            limits,
            env.keepalive_for.iter().chain(keepalive),
        )?;
        // Counting starts with the dispatch entry: from then on the agent's accounting program
        // hands this namespace's sockets to this copy's.
        let accounting = self.programs.load_accounting()?;
        dispatch.add(self.cookie, accounting)?;
        self.count_preexisting()?;
        let (programs, attachments, pins) = (&mut self.programs, &self.attachments, &self.pins);
        self.netns
            .run_in(|| programs.attach_admission(attachments, pins.as_ref()))??;
        self.programs.retire_old_counters(self.table.maps_mut())?;
        for Attachment {
            iface, mode, why, ..
        } in &self.attachments
        {
            tracing::info!(netns = %label, %iface, %mode, why, "attached: admitting SYNs (XDP)");
        }
        let (diag, reset_diag) = self.netns.run_in(|| (SockDiag::open(), SockDiag::open()))?;
        self.diag = diag
            .inspect_err(|error| {
                tracing::warn!(netns = %label, %error, "cannot list listening sockets (sock_diag): limits nothing listens on will not be reported");
            })
            .ok();
        self.check_listening();
        self.reset_task = self.table.maps_mut().over_limit.take().map(|ring| {
            tokio::spawn(over_limit::reset_loop(
                ring,
                reset_diag,
                self.resets.clone(),
            ))
        });
        Ok(())
    }

    /// Counts the connections established in the namespace before their listener was limited
    /// (`preexisting`); after every change of limits.
    pub fn count_preexisting(&mut self) -> Result<(), AgentError> {
        let table = &mut self.table;
        self.netns.run_in(|| preexisting::count(table))?;
        Ok(())
    }

    /// The namespace's path, as the user gave it: how logs, stats and metrics name it.
    pub fn label(&self) -> String {
        self.netns.path().display().to_string()
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Releases expired reservations and watches for floods (the agent's sweeper tick).
    pub fn sweep(&mut self, timeout: Duration) {
        handshake::sweep(&mut self.table, timeout);
    }

    /// Looks for limits nothing listens on in this namespace.
    pub fn check_listening(&mut self) {
        if let Some(diag) = &self.diag {
            unbound::check(&mut self.table, diag);
        }
    }

    pub fn report(&self) -> Report {
        let mut report = self.table.report();
        report.packets.reset_after_handshake_failed_total = self
            .resets
            .failed
            .load(std::sync::atomic::Ordering::Relaxed);
        report
    }

    /// Detaches everything; with `keep_pinned`, pinned programs stay attached (and in the
    /// dispatch maps) and their maps pinned, for a restarted agent to adopt; else the pins go
    /// too.
    pub fn stop(self, keep_pinned: bool, dispatch: &mut Dispatch) {
        if let Some(task) = &self.reset_task {
            task.abort();
        }
        if !keep_pinned || self.pins.is_none() {
            dispatch.remove(self.cookie);
        }
        if let Some(pins) = self.pins.as_ref().filter(|_| !keep_pinned)
            && let Err(error) = pins.remove()
        {
            tracing::warn!(netns = %self.label(), %error, "removing the namespace's pins failed");
        }
        drop(self);
    }
}
