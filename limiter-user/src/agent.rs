//! `limiter run`: check the environment, load and attach, enforce until SIGINT/SIGTERM, detach.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    control::{self, ControlSocket},
    error::AgentError,
    handshake, kernel,
    limits::LimitTable,
    preflight,
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

    // From here on, `programs` owns every attachment: any error (or the end of this function)
    // drops it, which detaches everything.
    let (mut programs, maps) = kernel::load(netns_cookie)?;
    let mut table = LimitTable::new(maps, args.over_limit);
    for spec in &args.limits {
        let now = table.set(spec)?;
        eprintln!("limiter: limit set: {now}");
    }
    programs.attach_accounting(&cgroup)?;
    eprintln!("limiter: counting connections (sock_ops on cgroup {})", cgroup.display());
    programs.attach_admission(&args.ifaces, args.xdp_mode)?;
    eprintln!("limiter: admitting SYNs (XDP on {})", args.ifaces.join(", "));
    let table = Arc::new(Mutex::new(table));

    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::syscall("sigaction(SIGINT)"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::syscall("sigaction(SIGTERM)"))?;
    let mut sweep = tokio::time::interval(handshake::sweep_interval(args.handshake_timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    eprintln!("limiter: ready");

    let signal_name = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sweep.tick() => {
                let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
                handshake::sweep(&mut table, args.handshake_timeout);
            }
            accepted = control.accept() => match accepted {
                Ok(stream) => { tokio::spawn(control::serve(stream, table.clone())); }
                Err(e) => eprintln!("limiter: control socket: accept: {e}"),
            },
        }
    };
    eprintln!("limiter: {signal_name}: detaching");
    drop(programs);
    drop(control);
    // Give in-flight control requests a moment to finish with the table before it goes.
    tokio::time::sleep(Duration::from_millis(0)).await;
    eprintln!("limiter: detached from {}", args.ifaces.join(", "));
    Ok(())
}
