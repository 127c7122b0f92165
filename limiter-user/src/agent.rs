//! `limiter run`: check the environment, load and attach (or adopt pinned state), enforce until
//! SIGINT/SIGTERM, detach. SIGHUP (or `limiter reload`) re-reads `--config` and applies the
//! difference without reloading programs.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{
        cli::RunArgs,
        listener::{LimitSpec, Listener, Scope},
        settings::{Change, Settings},
    },
    enforce::{
        features::Features,
        handshake,
        pins::PinDir,
        preflight, unbound,
        xdp_mode::{self, Attachment},
    },
    error::AgentError,
    netns::{
        Namespaces,
        enforcement::{AgentNamespace, Environment, NetnsEnforcement, Place},
        registry::{Source, WATCH_EVERY},
    },
    observe::{
        control::{self, ControlSocket, ControlTarget},
        metrics::{self, MetricsSource},
        stats::Report,
    },
    proxy::{Proxy, ProxyStats, UpstreamPolicy},
};

/// The proxy's default connect timeout (Istio's).
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `settings` are the flags merged over `--config` ([`Settings::load`]), already validated.
pub async fn run(args: RunArgs, mut settings: Settings) -> anyhow::Result<()> {
    // Everything that can be checked before touching the kernel is, so bad input or a missing
    // piece never leaves anything half-attached.
    preflight::check_capabilities(!settings.namespaces.is_empty() || args.kubernetes)?;
    settings.ifaces = preflight::resolve_interfaces(&settings.ifaces)?;
    for iface in &settings.ifaces {
        preflight::check_interface(iface)?;
    }
    let attachments = settings
        .ifaces
        .iter()
        .map(|iface| xdp_mode::choose(iface, args.xdp_mode, args.veth_peer_runs_xdp))
        .collect::<Result<Vec<_>, _>>()?;
    xdp_mode::check_actions_deliverable(&settings.limits, settings.over_limit, &attachments)?;
    preflight::check_btf()?;
    let cgroup = preflight::cgroup_root(args.cgroup.as_deref())?;
    let netns_cookie = preflight::netns_cookie()?;
    let control = ControlSocket::bind(&args.control.control_socket)?;
    // Bound before anything is loaded: a port in use is an error that leaves nothing behind.
    let proxies = bind_proxies(&settings)?;
    let metrics = match settings.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::MetricsBind { addr, source })?,
        ),
        None => None,
    };
    // Where the API server is (in-cluster, or KUBECONFIG) is known before anything is loaded.
    let kubernetes = match (args.kubernetes, &args.node_name) {
        (true, Some(node)) => Some((
            kube::Client::try_default()
                .await
                .map_err(|e| anyhow::anyhow!("--kubernetes: no API server to talk to: {e}"))?,
            node.clone(),
        )),
        _ => None,
    };
    let pins = args.pin_dir.as_deref().map(PinDir::open).transpose()?;

    let setup = Setup {
        args: &args,
        cgroup: &cgroup,
        netns_cookie,
        pins: pins.as_ref(),
        control: &control,
        attachments,
        kubernetes,
    };
    match enforce(setup, settings, proxies, metrics).await {
        Ok(keep) => {
            if let (Some(pins), false) = (&pins, keep) {
                pins.remove().map_err(|source| AgentError::PinDir {
                    dir: pins_dir(&args),
                    source,
                })?;
            }
            Ok(())
        }
        Err(e) => {
            // Pins we created for this run go; pins adopted from an earlier agent stay, so its
            // enforcement goes on exactly as it was found, and so do a takeover's.
            if let Some(pins) = pins.filter(|p| !p.keep_on_failure()) {
                let _ = pins.remove();
            }
            Err(e)
        }
    }
}

fn bind_proxies(settings: &Settings) -> Result<Vec<Proxy>, AgentError> {
    settings
        .proxies
        .iter()
        .map(|proxy| {
            let upstream = UpstreamPolicy::new(
                proxy.spec.upstream,
                proxy.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                proxy.keepalive,
                proxy.max_connections,
            );
            Proxy::bind(
                proxy.spec,
                Arc::new(upstream),
                proxy.delay_before_close.unwrap_or_default(),
            )
        })
        .collect()
}

/// What the control socket and the metrics endpoint read and change while the agent runs.
pub struct AgentState {
    /// The agent's own namespace.
    pub host: NetnsEnforcement,
    /// Every other network namespace limits are configured in (`--limit-in`, pods).
    pub namespaces: Arc<Mutex<Namespaces>>,
    pub proxies: Vec<(String, Arc<ProxyStats>)>,
    /// Programs attached (cleared when detaching): what /readyz reports.
    pub attached: AtomicBool,
    /// The flags, and the settings in force (flags over `--config`), for reloads.
    flags: RunArgs,
    settings: Mutex<Settings>,
}

impl MetricsSource for AgentState {
    fn report(&self) -> Result<Report, String> {
        Ok(ControlTarget::report(self))
    }

    fn attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }
}

impl ControlTarget for AgentState {
    fn report(&self) -> Report {
        let mut report = self.host.report();
        for netns in self.lock_namespaces().reports() {
            report.listeners.extend(netns.listeners);
            report.packets += &netns.packets;
        }
        report.proxies = self
            .proxies
            .iter()
            .map(|(name, stats)| stats.report(name.clone()))
            .collect();
        report.features = Features::get().all().into_iter().map(Into::into).collect();
        report
    }

    fn set(&self, netns: Option<&std::path::Path>, spec: &LimitSpec) -> Result<String, String> {
        let now = match netns {
            None => self.host.set(spec),
            Some(path) => self.lock_namespaces().set(path, spec),
        };
        now.map(|now| format!("limit set: {now}"))
            .map_err(|e| e.to_string())
    }

    fn unset(
        &self,
        netns: Option<&std::path::Path>,
        listener: &Listener,
        scope: Scope,
    ) -> Result<String, String> {
        let what = scope.noun();
        match netns {
            None => self
                .host
                .table()
                .unset(listener, scope)
                .map(|()| format!("{what} removed: {listener}")),
            Some(path) => self
                .lock_namespaces()
                .unset(path, listener, scope)
                .map(|()| format!("{what} removed: {listener} in {}", path.display())),
        }
        .map_err(|e| e.to_string())
    }

    fn reload(&self) -> Result<String, String> {
        AgentState::reload(self)
    }
}

impl AgentState {
    pub fn lock_namespaces(&self) -> std::sync::MutexGuard<'_, Namespaces> {
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads `--config`, validates all of it first (a bad file changes nothing), then applies
    /// only the difference: limits and keepalive policies, in place, without reloading programs
    /// or touching established connections. Returns what was done, for the log and the reply.
    pub fn reload(&self) -> Result<String, String> {
        let Some(path) = self.flags.config.as_ref() else {
            return Err("nothing to reload: the agent was started without --config".into());
        };
        let new = Settings::load(&self.flags)
            .map_err(|e| format!("reload rejected, nothing changed: {e}"))?;
        let mut current = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        let change = Change::between(&current, &new);
        let mut table = self.host.table();
        // The maps keep the size they were made with: limits beyond it could only be applied
        // in part.
        table
            .room_for(&change.unset, &change.set)
            .map_err(|e| format!("reload rejected, nothing changed: {e}"))?;
        let mut done = Vec::new();
        for (listener, scope) in &change.unset {
            table.unset(listener, *scope).map_err(|e| e.to_string())?;
            done.push(format!("{} removed: {listener}", scope.noun()));
        }
        for spec in &change.set {
            done.push(format!(
                "limit set: {}",
                table.set(spec).map_err(|e| e.to_string())?
            ));
        }
        drop(table);
        if !change.set.is_empty() {
            self.host.count_preexisting().map_err(|e| e.to_string())?;
        }
        let mut table = self.host.table();
        let mut namespaces = self.lock_namespaces();
        for destinations in &change.keepalive_removed {
            table
                .remove_keepalive_policy(destinations)
                .and_then(|()| namespaces.remove_keepalive_policy(destinations))
                .map_err(|e| e.to_string())?;
            done.push(format!("keepalive policy removed: {destinations}"));
        }
        for (destinations, keepalive) in &change.keepalive_set {
            table
                .set_keepalive_policy(destinations, keepalive)
                .and_then(|()| namespaces.set_keepalive_policy(destinations, keepalive))
                .map_err(|e| e.to_string())?;
            done.push(format!("keepalive policy set: {destinations} {keepalive}"));
        }
        done.extend(
            namespaces
                .apply_from(Source::Settings, &new.namespaces)
                .map_err(|e| e.to_string())?,
        );
        let mut summary = if done.is_empty() {
            format!("reloaded {}: no change", path.display())
        } else {
            format!("reloaded {}: {}", path.display(), done.join("; "))
        };
        if !change.needs_restart.is_empty() {
            summary.push_str(&format!(
                " (changed but not applied until restart: {})",
                change.needs_restart.join(", ")
            ));
        }
        // What is in force now: the new limits and policies, the old everything else.
        current.limits = new.limits;
        current.keepalive_for = new.keepalive_for;
        current.namespaces = new.namespaces;
        Ok(summary)
    }
}

fn pins_dir(args: &RunArgs) -> std::path::PathBuf {
    args.pin_dir.clone().unwrap_or_default()
}

/// What `run` checked and prepared before anything was loaded.
struct Setup<'a> {
    args: &'a RunArgs,
    cgroup: &'a std::path::Path,
    netns_cookie: u64,
    pins: Option<&'a PinDir>,
    control: &'a ControlSocket,
    /// The XDP mode of each interface.
    attachments: Vec<Attachment>,
    /// `--kubernetes`: the API server's client and this node's name.
    kubernetes: Option<(kube::Client, String)>,
}

/// Runs until a signal; returns whether the pins are to be kept.
async fn enforce(
    setup: Setup<'_>,
    settings: Settings,
    proxies: Vec<Proxy>,
    metrics: Option<tokio::net::TcpListener>,
) -> anyhow::Result<bool> {
    let Setup {
        args,
        cgroup,
        netns_cookie,
        pins,
        control,
        attachments,
        kubernetes,
    } = setup;
    // What this kernel can do decides how the programs are loaded: found once, said once.
    Features::probe().log();
    let env = Environment {
        xdp_mode: args.xdp_mode,
        veth_peer_runs_xdp: args.veth_peer_runs_xdp,
        over_limit: settings.over_limit,
        keepalive_for: settings.keepalive_for.clone(),
        pins: pins.cloned(),
    };
    // The agent's own namespace first: its accounting program on the cgroup is the one that
    // hands every other namespace's sockets to that namespace's copy. Any error (or the end of
    // this function) drops it, which detaches whatever is not pinned.
    let host = NetnsEnforcement::start(
        Place::Agent(AgentNamespace {
            cookie: netns_cookie,
            attachments,
            cgroup: cgroup.to_owned(),
            max_listeners: settings.max_listeners,
            proxied: settings.proxies.iter().map(|p| p.spec.listen).collect(),
        }),
        &settings.limits,
        &[],
        &env,
        None,
    )?;
    let mut namespaces = Namespaces::new(env, host.take_dispatch()?);
    namespaces.start(&settings.namespaces)?;
    // Every link of another layout's pins this agent uses is its own now (the host's, and each
    // configured namespace's): the rest of those pins go, and their maps and programs with them.
    if let Some(pins) = pins.filter(|p| p.taking_over()) {
        pins.remove_predecessors()
            .map_err(|source| AgentError::Pin {
                what: format!(
                    "removing the pins of map layout {}",
                    pins.predecessor_names()
                ),
                source,
            })?;
        tracing::info!(
            removed = pins.predecessor_names(),
            "took over the pins of another map layout"
        );
    }
    let handshake_timeout = settings.handshake_timeout;
    let ifaces = settings.ifaces.clone();
    let table = host.shared_table();
    let state = Arc::new(AgentState {
        host,
        namespaces: Arc::new(Mutex::new(namespaces)),
        proxies: proxies
            .iter()
            .map(|p| (p.spec.to_string(), p.stats.clone()))
            .collect(),
        attached: AtomicBool::new(true),
        flags: args.clone(),
        settings: Mutex::new(settings),
    });
    let metrics_task = metrics.map(|listener| {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%addr, "serving metrics and probes");
        tokio::spawn(metrics::serve(listener, state.clone()))
    });
    let mut proxy_tasks = tokio::task::JoinSet::new();
    for proxy in proxies {
        tracing::info!(proxy = %proxy.spec, "proxy listening");
        proxy_tasks.spawn(proxy.run(table.clone()));
    }

    let mut sigint =
        signal(SignalKind::interrupt()).map_err(AgentError::syscall("sigaction(SIGINT)"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(AgentError::syscall("sigaction(SIGTERM)"))?;
    let mut sighup =
        signal(SignalKind::hangup()).map_err(AgentError::syscall("sigaction(SIGHUP)"))?;
    let mut sweep = tokio::time::interval(handshake::sweep_interval(handshake_timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listening_check = tokio::time::interval(unbound::CHECK_EVERY);
    listening_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut netns_watch = tokio::time::interval(WATCH_EVERY);
    netns_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Kubernetes mode: the watches start once everything else is in place.
    let kubernetes_task = kubernetes.map(|(client, node)| {
        tokio::spawn(crate::kubernetes::watch::run(
            client,
            node,
            state.namespaces.clone(),
        ))
    });
    tracing::info!("ready");

    let signal_name = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => match state.reload() {
                Ok(summary) => tracing::info!(signal = "SIGHUP", "{summary}"),
                Err(error) => tracing::warn!(signal = "SIGHUP", "reload refused, the limits are unchanged: {error}"),
            },
            _ = sweep.tick() => {
                state.host.sweep(handshake_timeout);
                state.lock_namespaces().sweep(handshake_timeout);
            }
            _ = listening_check.tick() => {
                state.host.check_listening();
                state.lock_namespaces().check_listening();
            }
            _ = netns_watch.tick() => state.lock_namespaces().refresh(),
            accepted = control.accept() => match accepted {
                Ok(stream) => { tokio::spawn(control::serve(stream, state.clone() as Arc<dyn ControlTarget>)); }
                Err(e) => tracing::warn!(error = %e, "control socket: accept failed"),
            },
        }
    };
    state.attached.store(false, Ordering::Relaxed);
    if args.keep_pinned {
        tracing::info!(
            signal = signal_name,
            pin_dir = %pins_dir(args).display(),
            "exiting; programs stay attached and pinned"
        );
    } else {
        for iface in &ifaces {
            tracing::info!(signal = signal_name, %iface, "detaching");
        }
    }
    // What shares the agent's state ends first, so that the agent's own namespace can be
    // stopped last: its accounting program hands every other namespace's sockets on.
    if let Some(task) = kubernetes_task {
        task.abort();
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        task.abort();
        let _ = task.await;
    }
    state.lock_namespaces().stop_all(args.keep_pinned);
    proxy_tasks.abort_all();
    while proxy_tasks.join_next().await.is_some() {}
    drop(table);
    match Arc::try_unwrap(state) {
        Ok(state) => state.host.stop(args.keep_pinned, None),
        // A control connection still being answered: its end drops the last reference, and
        // that detaches the programs just the same.
        Err(_) => tracing::debug!("a control connection outlives the loop"),
    }
    Ok(args.keep_pinned)
}
