//! Command-line interface: `limiter run | stats | set | unset`.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    duration,
    listener::{Action, LimitSpec, Listener},
};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/limiter/limiter.sock";

#[derive(Debug, Parser)]
#[command(
    name = "limiter",
    version,
    about = "Caps active TCP connections per listener in the kernel: excess SYNs are refused at XDP, \
             the count comes from the kernel's own TCP state."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to interfaces and enforce limits until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Print live numbers from the running agent.
    Stats(StatsArgs),
    /// Add or change a limit on the running agent (no reload, established connections untouched).
    Set(SetArgs),
    /// Remove a listener's limit on the running agent.
    Unset(UnsetArgs),
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Control socket of the running agent.
    #[arg(long, env = "LIMITER_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET, value_name = "PATH")]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface whose incoming SYNs are admitted or refused (repeat for several).
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,

    /// A listener's limit: LISTENER=N[:ACTION] (repeatable). LISTENER is PORT (every local
    /// address), IPv4:PORT or [IPv6]:PORT (0.0.0.0:P and [::]:P: every address of that family).
    /// N is 1-4294967295 active connections (established + handshakes in flight). ACTION
    /// overrides --over-limit for this listener, e.g. --limit '[::]:443=100:reset'.
    #[arg(long = "limit", value_name = "LISTENER=N[:ACTION]")]
    pub limits: Vec<LimitSpec>,

    /// What happens to a SYN over the limit: drop it silently, or answer with a RST so the
    /// client fails at once.
    #[arg(long, value_enum, default_value_t = Action::Drop, value_name = "ACTION")]
    pub over_limit: Action,

    /// How long a SYN's reservation is held for a handshake that does not complete.
    #[arg(long, default_value = "3s", value_parser = parse_handshake_timeout, value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// How XDP runs: native (in the driver, fastest), generic (in the kernel stack, works on
    /// any device), or auto (native where the driver supports it).
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto, value_name = "MODE")]
    pub xdp_mode: XdpAttachMode,

    /// cgroup v2 directory whose sockets are counted (default: the cgroup v2 root, found in
    /// /proc/self/mountinfo).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Pin maps and links under this bpffs directory: a restarted agent adopts them with their
    /// counts, and with --keep-pinned (or after SIGKILL) enforcement continues while no agent runs.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,

    /// On SIGINT/SIGTERM leave the pinned programs attached and the maps pinned (needs --pin-dir),
    /// e.g. for a rolling update; by default everything is detached and unpinned.
    #[arg(long, requires = "pin_dir")]
    pub keep_pinned: bool,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// LISTENER=N[:ACTION], as for `run --limit`.
    #[arg(value_name = "LISTENER=N[:ACTION]")]
    pub limit: LimitSpec,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct UnsetArgs {
    /// PORT, IPv4:PORT or [IPv6]:PORT, exactly as it was set.
    #[arg(value_name = "LISTENER")]
    pub listener: Listener,

    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    Auto,
    Native,
    Generic,
}

const MIN_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);

fn parse_handshake_timeout(text: &str) -> Result<Duration, String> {
    let timeout = duration::parse(text)?;
    if !(MIN_HANDSHAKE_TIMEOUT..=MAX_HANDSHAKE_TIMEOUT).contains(&timeout) {
        return Err(format!(
            "'{text}' is out of range: expected {} to {}",
            duration::display(MIN_HANDSHAKE_TIMEOUT),
            duration::display(MAX_HANDSHAKE_TIMEOUT)
        ));
    }
    Ok(timeout)
}

impl RunArgs {
    /// Checks that need all flags at once; each error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        for (i, spec) in self.limits.iter().enumerate() {
            if self.limits[..i]
                .iter()
                .any(|earlier| earlier.listener == spec.listener)
            {
                return Err(format!(
                    "--limit '{spec}': listener {} is given twice",
                    spec.listener
                ));
            }
        }
        for (i, iface) in self.ifaces.iter().enumerate() {
            if self.ifaces[..i].contains(iface) {
                return Err(format!("--iface '{iface}': interface is given twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn run(args: &[&str]) -> Result<RunArgs, String> {
        let cli =
            Cli::try_parse_from([&["limiter", "run"], args].concat()).map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        run.validate()?;
        Ok(run)
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags() {
        let args = run(&[
            "--iface",
            "eth0",
            "--iface",
            "eth1",
            "--limit",
            "8000=1",
            "--limit",
            "[::]:443=5:reset",
            "--over-limit",
            "reset",
            "--handshake-timeout",
            "500ms",
        ])
        .unwrap();
        assert_eq!(args.ifaces, ["eth0", "eth1"]);
        assert_eq!(args.limits.len(), 2);
        assert_eq!(args.over_limit, Action::Reset);
        assert_eq!(args.handshake_timeout, Duration::from_millis(500));
        assert_eq!(
            run(&["--iface", "eth0"]).unwrap().handshake_timeout,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (args, needle) in [
            (&["--iface", "eth0", "--limit", "8000=0"][..], "--limit"),
            (
                &["--iface", "eth0", "--limit", "8000=1", "--limit", "8000=2"][..],
                "given twice",
            ),
            (
                &["--iface", "eth0", "--over-limit", "bounce"][..],
                "--over-limit",
            ),
            (
                &["--iface", "eth0", "--handshake-timeout", "0s"][..],
                "--handshake-timeout",
            ),
            (&["--limit", "8000=1"][..], "--iface"),
        ] {
            let err = run(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
