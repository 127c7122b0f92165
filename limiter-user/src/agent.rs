//! `limiter run`: check the environment, load and attach (or adopt pinned state), enforce until
//! SIGINT/SIGTERM, detach.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    control::{self, ControlSocket},
    error::AgentError,
    handshake, kernel,
    limits::LimitTable,
    metrics::{self, MetricsSource},
    pins::PinDir,
    preflight,
    proxy::{Proxy, ProxySpec, ProxyStats, UpstreamPolicy},
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Everything that can be checked before touching the kernel is, so a bad flag or a missing
    // piece never leaves anything half-attached.
    preflight::check_capabilities()?;
    for iface in &args.ifaces {
        preflight::check_interface(iface)?;
    }
    let cgroup = preflight::cgroup_root(args.cgroup.as_deref())?;
    let netns_cookie = preflight::netns_cookie()?;
    let control = ControlSocket::bind(&args.control.control_socket)?;
    // Bound before anything is loaded: a port in use is an error that leaves nothing behind.
    let proxies = bind_proxies(&args)?;
    let metrics = match args.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::MetricsBind { addr, source })?,
        ),
        None => None,
    };
    let pins = args.pin_dir.as_deref().map(PinDir::open).transpose()?;

    match enforce(
        &args,
        &cgroup,
        netns_cookie,
        pins.as_ref(),
        &control,
        proxies,
        metrics,
    )
    .await
    {
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
            // enforcement goes on exactly as it was found.
            if let Some(pins) = pins.filter(|p| !p.adopting) {
                let _ = pins.remove();
            }
            Err(e)
        }
    }
}

fn bind_proxies(args: &RunArgs) -> Result<Vec<Proxy>, AgentError> {
    let upstream_for = |spec: &ProxySpec| {
        Arc::new(UpstreamPolicy::new(
            spec.upstream,
            args.connect_timeout,
            args.upstream_keepalive,
            args.max_upstream_connections,
        ))
    };
    args.proxies
        .iter()
        .map(|spec| Proxy::bind(*spec, upstream_for(spec), args.delay_before_close))
        .collect()
}

/// What the control socket and the metrics endpoint read and change while the agent runs.
pub struct AgentState {
    pub table: Arc<Mutex<LimitTable>>,
    pub proxies: Vec<(String, Arc<ProxyStats>)>,
    /// Programs attached (cleared when detaching): what /readyz reports.
    pub attached: AtomicBool,
}

impl MetricsSource for AgentState {
    fn report(&self) -> Result<crate::stats::Report, String> {
        Ok(AgentState::report(self))
    }

    fn attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }
}

impl AgentState {
    pub fn report(&self) -> crate::stats::Report {
        let mut report = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report();
        report.proxies = self
            .proxies
            .iter()
            .map(|(name, stats)| stats.report(name.clone()))
            .collect();
        report
    }
}

fn pins_dir(args: &RunArgs) -> std::path::PathBuf {
    args.pin_dir.clone().unwrap_or_default()
}

/// Runs until a signal; returns whether the pins are to be kept.
async fn enforce(
    args: &RunArgs,
    cgroup: &std::path::Path,
    netns_cookie: u64,
    pins: Option<&PinDir>,
    control: &ControlSocket,
    proxies: Vec<Proxy>,
    metrics: Option<tokio::net::TcpListener>,
) -> anyhow::Result<bool> {
    // `programs` owns every attachment: any error (or the end of this function) drops it, which
    // detaches whatever is not pinned.
    let (mut programs, maps) = kernel::load(netns_cookie, pins)?;
    let mut table = LimitTable::new(maps, args.over_limit);
    if pins.is_some_and(|p| p.adopting) {
        let adopted = table.adopt();
        tracing::info!(
            pin_dir = %pins_dir(args).display(),
            "adopted {} limit(s) with their live counts",
            adopted.len()
        );
        // The flags say what is in force now: drop adopted limits they no longer name.
        for listener in adopted
            .iter()
            .filter(|l| !args.limits.iter().any(|s| s.listener == **l))
        {
            table.unset(listener)?;
            tracing::info!(%listener, "limit removed (no longer configured)");
        }
    }
    for spec in &args.limits {
        let now = table.set(spec)?;
        tracing::info!("limit set: {now}");
    }
    for (destinations, keepalive) in args.keepalive_policies().map_err(anyhow::Error::msg)? {
        table.set_keepalive_policy(&destinations, &keepalive)?;
        tracing::info!(%destinations, %keepalive, "keepalive policy set");
    }
    programs.attach_accounting(cgroup, pins)?;
    tracing::info!(cgroup = %cgroup.display(), "attached: counting connections (sock_ops)");
    programs.attach_admission(&args.ifaces, args.xdp_mode, pins)?;
    for iface in &args.ifaces {
        tracing::info!(%iface, mode = ?args.xdp_mode, "attached: admitting SYNs (XDP)");
    }
    let table = Arc::new(Mutex::new(table));
    let state = Arc::new(AgentState {
        table: table.clone(),
        proxies: proxies
            .iter()
            .map(|p| (p.spec.to_string(), p.stats.clone()))
            .collect(),
        attached: AtomicBool::new(true),
    });
    let metrics_task = metrics.map(|listener| {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
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
    let mut sweep = tokio::time::interval(handshake::sweep_interval(args.handshake_timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!("ready");

    let signal_name = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sweep.tick() => {
                let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
                handshake::sweep(&mut table, args.handshake_timeout);
            }
            accepted = control.accept() => match accepted {
                Ok(stream) => { tokio::spawn(control::serve(stream, state.clone())); }
                Err(e) => tracing::warn!(error = %e, "control socket: accept failed"),
            },
        }
    };
    if args.keep_pinned {
        tracing::info!(
            signal = signal_name,
            pin_dir = %pins_dir(args).display(),
            "exiting; programs stay attached and pinned"
        );
    } else {
        for iface in &args.ifaces {
            tracing::info!(signal = signal_name, %iface, "detaching");
        }
    }
    state.attached.store(false, Ordering::Relaxed);
    proxy_tasks.abort_all();
    if let Some(task) = metrics_task {
        task.abort();
    }
    drop(programs);
    Ok(args.keep_pinned)
}
