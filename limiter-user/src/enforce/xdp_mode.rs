//! The XDP mode each interface gets, chosen so that every action the agent may be asked for is
//! delivered there.
//!
//! The `reset` action answers a SYN with a RST sent back out of the interface with XDP_TX. On a
//! veth in native mode that frame goes onto the peer's XDP ring, and the kernel delivers it only
//! when the peer's receive side runs NAPI with an XDP program of its own (`veth_xdp_flush` wakes
//! nothing else; GRO on the peer was not enough on 6.18, measured: the server veth counted its
//! `xdp_tx` and the client never saw a RST). A client namespace or pod has no such program, so
//! there the RSTs would be counted as sent and lost. In generic mode XDP_TX goes through the
//! veth's ordinary transmit path (`generic_xdp_tx`), which reaches the peer like any packet.
//! Every container and pod interface is a veth, so `auto` picks generic there; `native` on a
//! veth is kept for drop-only setups and refuses `reset` with an error instead of losing RSTs.
use std::{ffi::CStr, fmt};

use aya::programs::XdpMode;

use crate::{
    config::{
        cli::XdpAttachMode,
        listener::{Action, LimitSpec},
    },
    error::AgentError,
};

/// How the agent attaches XDP on one interface, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    pub mode: Mode,
    /// Why this mode, for the log.
    pub why: &'static str,
    /// False where a RST sent with XDP_TX would not reach the client.
    pub delivers_resets: bool,
}

/// The attach mode as the kernel is asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The kernel's choice: native where the driver has it, generic otherwise.
    Default,
    Native,
    Generic,
}

impl Mode {
    pub fn to_aya(self) -> XdpMode {
        match self {
            Mode::Default => XdpMode::Default,
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Default => "native where the driver supports it",
            Mode::Native => "native",
            Mode::Generic => "generic",
        })
    }
}

/// Chooses the mode of `iface` for `requested` (`--xdp-mode`); `peer_runs_xdp`
/// (`--veth-peer-runs-xdp`): the user vouches that a veth's peer runs XDP, so native XDP_TX
/// reaches it.
pub fn choose(
    iface: &str,
    requested: XdpAttachMode,
    peer_runs_xdp: bool,
) -> Result<Attachment, AgentError> {
    let veth = driver(iface)? == "veth";
    let (mode, why, delivers_resets) = match (requested, veth) {
        (XdpAttachMode::Auto, true) => (
            Mode::Generic,
            "auto on a veth: generic, so that reset's RSTs reach the peer (native XDP_TX on a \
             veth is delivered only when the peer runs XDP itself)",
            true,
        ),
        (XdpAttachMode::Auto, false) => (Mode::Default, "auto", true),
        (XdpAttachMode::Generic, _) => (Mode::Generic, "--xdp-mode generic", true),
        (XdpAttachMode::Native, true) if peer_runs_xdp => (
            Mode::Native,
            "--xdp-mode native on a veth whose peer runs XDP (--veth-peer-runs-xdp)",
            true,
        ),
        (XdpAttachMode::Native, true) => (
            Mode::Native,
            "--xdp-mode native on a veth: reset is refused here (its RSTs would not reach the peer)",
            false,
        ),
        (XdpAttachMode::Native, false) => (Mode::Native, "--xdp-mode native", true),
    };
    Ok(Attachment {
        iface: iface.to_string(),
        mode,
        why,
        delivers_resets,
    })
}

/// The error for an action the interfaces cannot deliver, naming the flags that clash; `None`
/// when every interface delivers `action`. `asked_by` names where the action came from
/// (`--limit 8000=1:reset`, `--over-limit reset`, `limiter set ...`).
pub fn undeliverable(attachments: &[Attachment], action: Action, asked_by: &str) -> Option<String> {
    if action != Action::Reset {
        return None;
    }
    let iface = attachments.iter().find(|a| !a.delivers_resets)?;
    Some(format!(
        "{asked_by}: --xdp-mode native on the veth {iface} cannot deliver reset: the kernel hands \
         XDP_TX frames (the RSTs) to a veth's peer only when the peer runs XDP itself, so clients \
         would time out instead of being refused; use --xdp-mode auto or generic on {iface}, the \
         drop action, or --veth-peer-runs-xdp if the peer does run XDP",
        iface = iface.iface
    ))
}

/// The interface's driver, as `ethtool -i` reports it (SIOCETHTOOL, ETHTOOL_GDRVINFO).
fn driver(iface: &str) -> Result<String, AgentError> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    let failed = |source: std::io::Error| AgentError::InterfaceDriver {
        iface: iface.to_string(),
        source,
    };
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(failed(std::io::Error::from_raw_os_error(
            libc::ENAMETOOLONG,
        )));
    }
    // SAFETY: plain C structs, all-zero is a valid value of each.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a socket of our own, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    // SAFETY: `request` names the interface and points at `info`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &raw mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    match rc {
        0 => Ok(CStr::from_bytes_until_nul(&info.driver)
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default()),
        // An interface without ethtool support (lo, some tunnels) is no veth.
        _ if error.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(String::new()),
        _ => Err(failed(error)),
    }
}

/// Every action the limits can ask for (each limit's, and `--over-limit` for later `set`s)
/// must be deliverable on every interface they are admitted on, or enforcement does not start.
pub fn check_actions_deliverable(
    limits: &[LimitSpec],
    over_limit: Action,
    attachments: &[Attachment],
) -> Result<(), AgentError> {
    let asked = limits
        .iter()
        .map(|spec| {
            (
                spec.action.unwrap_or(over_limit),
                format!("--limit '{spec}'"),
            )
        })
        .chain([(over_limit, format!("--over-limit {}", over_limit.as_str()))]);
    for (action, asked_by) in asked {
        if let Some(message) = undeliverable(attachments, action, &asked_by) {
            return Err(AgentError::Combination(message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(delivers_resets: bool) -> Attachment {
        Attachment {
            iface: "eth0".into(),
            mode: Mode::Native,
            why: "",
            delivers_resets,
        }
    }

    #[test]
    fn only_reset_on_an_interface_that_cannot_deliver_it_is_refused() {
        let both = [attachment(true), attachment(false)];
        let err = undeliverable(&both, Action::Reset, "--limit '8000=1:reset'").unwrap();
        assert!(err.starts_with("--limit '8000=1:reset': --xdp-mode native on the veth eth0"));
        assert!(err.contains("--xdp-mode auto or generic"), "{err}");
        assert_eq!(undeliverable(&both, Action::Drop, "x"), None);
        assert_eq!(undeliverable(&both[..1], Action::Reset, "x"), None);
    }

    #[test]
    fn loopback_is_not_a_veth() {
        let lo = choose("lo", XdpAttachMode::Auto, false).unwrap();
        assert_eq!((lo.mode, lo.delivers_resets), (Mode::Default, true));
    }
}
