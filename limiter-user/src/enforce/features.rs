//! What this kernel can do, found by probing once at start (never from its version string):
//! each optional part of limiter that depends on a kernel feature is on, or off with why and what
//! the user loses. The log says it once at start, `limiter stats` and the metric
//! `limiter_feature{name}` say it for as long as the agent runs; everything else keeps working.
//!
//! What the probes look at (the kernel it first appeared in, for the README's table):
//! - `preexisting`: the `adopt` iterator over TCP sockets loads and runs (iter/tcp, calling
//!   `bpf_getsockopt`/`bpf_setsockopt` on the socket it holds).
//! - `preexisting_state_callbacks`: `bpf_getsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS)` works in that
//!   iterator (6.10): adopted connections get sock_ops' state callbacks, as new ones do. Where it
//!   does not (Debian 12's 6.1), their close is seen by the `close_watch` program on the
//!   `inet_sock_set_state` tracepoint (tp_btf, reading socket storage) instead.
//! - `socket_destroy`: sock_diag's SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY): how the agent resets
//!   connections found over a limit after their handshake (flood mode, per-source limits).
use std::{
    io,
    net::{Ipv4Addr, TcpListener},
    sync::OnceLock,
};

use aya::{
    Btf, EbpfLoader,
    programs::{BtfTracePoint, Iter},
};
use limiter_common::{FlowKey, family, program_names};

use crate::{
    EBPF_OBJECT,
    enforce::{capacity::Capacity, sock_diag::SockDiag},
    observe::stats::FeatureReport,
};

/// A feature: on, or off and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    /// `Err(why)` when this kernel cannot do it.
    pub state: Result<(), String>,
    /// What the user loses while it is off.
    pub loss: &'static str,
}

impl Feature {
    pub fn on(&self) -> bool {
        self.state.is_ok()
    }
}

/// How the close of a connection counted by the adopt walk is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdoptedClose {
    /// sock_ops' state callback, asked for by the walk (6.10+).
    StateCallback,
    /// The `close_watch` tracepoint program (kernels before 6.10).
    Tracepoint,
}

#[derive(Clone, Debug)]
pub struct Features {
    pub preexisting: Feature,
    pub state_callbacks: Feature,
    pub socket_destroy: Feature,
}

static FEATURES: OnceLock<Features> = OnceLock::new();

impl Features {
    /// Probes this kernel (once per process; later calls return the first answer). Run in the
    /// agent's own network namespace, as root, before any copy of the programs is loaded.
    pub fn probe() -> &'static Features {
        FEATURES.get_or_init(|| {
            let (preexisting, state_callbacks) = probe_adoption();
            Features {
                preexisting: Feature {
                    name: "preexisting",
                    state: preexisting,
                    loss: "connections established before their listener was limited (an agent \
                           started without pins, a limit set live) are not counted: such a \
                           listener admits up to its limit on top of them",
                },
                state_callbacks: Feature {
                    name: "preexisting_state_callbacks",
                    state: state_callbacks,
                    loss: "nothing: the close of connections that were there first is seen by \
                           the inet_sock_set_state tracepoint instead (one program for each \
                           enforced namespace runs on every TCP state change of the node)",
                },
                socket_destroy: Feature {
                    name: "socket_destroy",
                    state: probe_socket_destroy(),
                    loss: "connections found over a limit after their handshake (flood mode, \
                           per-source limits) cannot be reset: they stay open, uncounted",
                },
            }
        })
    }

    /// The answer of [`Features::probe`]; every feature on where no probe ran (the tools and
    /// tests that load the object without an agent).
    pub fn get() -> &'static Features {
        FEATURES.get_or_init(|| Features {
            preexisting: on("preexisting"),
            state_callbacks: on("preexisting_state_callbacks"),
            socket_destroy: on("socket_destroy"),
        })
    }

    pub fn all(&self) -> [&Feature; 3] {
        [
            &self.preexisting,
            &self.state_callbacks,
            &self.socket_destroy,
        ]
    }

    /// How the adopt walk has the close of what it counts seen, if it runs at all.
    pub fn adopted_close(&self) -> Option<AdoptedClose> {
        match (self.preexisting.on(), self.state_callbacks.on()) {
            (false, _) => None,
            (true, true) => Some(AdoptedClose::StateCallback),
            (true, false) => Some(AdoptedClose::Tracepoint),
        }
    }

    /// Says once, at start, which features are off, why, and what the user loses.
    pub fn log(&self) {
        for feature in self.all() {
            match &feature.state {
                Ok(()) => tracing::debug!(feature = feature.name, "kernel feature: on"),
                Err(why) => tracing::warn!(
                    feature = feature.name,
                    why = %why,
                    loss = feature.loss,
                    "kernel feature off"
                ),
            }
        }
    }
}

fn on(name: &'static str) -> Feature {
    Feature {
        name,
        state: Ok(()),
        loss: "",
    }
}

/// The adopt walk and how its connections' close is seen: loads the object once (at the
/// smallest size) and runs its probe iterator over this namespace's TCP sockets, with a listener
/// of its own so there is one.
fn probe_adoption() -> (Result<(), String>, Result<(), String>) {
    let mut loader = EbpfLoader::new();
    Capacity::PROBE.apply(&mut loader);
    let mut ebpf = match loader.load(EBPF_OBJECT) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            let why = format!("loading the object to probe it: {e}");
            return (Err(why.clone()), Err(why));
        }
    };
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => {
            let why = format!("reading the kernel's BTF: {e}");
            return (Err(why.clone()), Err(why));
        }
    };
    let codes = match probe_iterator(&mut ebpf, &btf) {
        Ok(codes) => codes,
        Err(why) => {
            let why = format!("the TCP socket iterator (Linux 5.9+): {why}");
            return (Err(why.clone()), Err(why));
        }
    };
    if codes.contains(&0) {
        return (Ok(()), Ok(()));
    }
    let callbacks = Err(format!(
        "bpf_getsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS) answered {} (Linux 6.10+ has it)",
        codes
            .first()
            .map_or("nothing".into(), |c| io::Error::from_raw_os_error(
                -*c as i32
            )
            .to_string())
    ));
    // Without state callbacks the walk may count only if the tracepoint can see the close.
    let tracepoint = ebpf
        .program_mut(program_names::CLOSE_WATCH)
        .ok_or_else(|| "the object has no close_watch program".to_string())
        .and_then(|p| <&mut BtfTracePoint>::try_from(p).map_err(|e| e.to_string()))
        .and_then(|p| {
            p.load("inet_sock_set_state", &btf)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| {
            format!(
                "{callbacks:?}, and the inet_sock_set_state tracepoint program does not load: {e}",
                callbacks = callbacks.as_ref().unwrap_err()
            )
        });
    (tracepoint, callbacks)
}

/// The probe iterator's return codes, one per full TCP socket of this namespace.
fn probe_iterator(ebpf: &mut aya::Ebpf, btf: &Btf) -> Result<Vec<i64>, String> {
    let program: &mut Iter = ebpf
        .program_mut(program_names::PROBE_CB_FLAGS)
        .ok_or("the object has no probe_cb_flags program")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    program.load("tcp", btf).map_err(|e| e.to_string())?;
    // A full TCP socket to look at, whatever else this namespace has.
    let _listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("a loopback listener to probe with: {e}"))?;
    let output =
        crate::enforce::adopt_iterator::run_iterator(program).map_err(|e| e.to_string())?;
    Ok(output
        .chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// SOCK_DESTROY of a socket that does not exist: "no such socket" where the kernel can destroy
/// sockets, "not supported" where it was built without CONFIG_INET_DIAG_DESTROY.
fn probe_socket_destroy() -> Result<(), String> {
    let nobody = FlowKey {
        local_addr: [u32::from(Ipv4Addr::LOCALHOST).to_be(), 0, 0, 0],
        remote_addr: [u32::from(Ipv4Addr::LOCALHOST).to_be(), 0, 0, 0],
        local_port: 1,
        remote_port: 1,
        family: family::V4,
        _pad: 0,
    };
    let answer = SockDiag::open().and_then(|diag| diag.destroy(&nobody, 0));
    match answer {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Err(
            "sock_diag cannot destroy sockets (a kernel built without CONFIG_INET_DIAG_DESTROY)"
                .into(),
        ),
        Err(e) => Err(format!("sock_diag SOCK_DESTROY: {e}")),
    }
}

impl From<&Feature> for FeatureReport {
    fn from(feature: &Feature) -> Self {
        FeatureReport {
            name: feature.name.to_owned(),
            on: feature.on(),
            why: feature.state.as_ref().err().cloned(),
            loss: feature.state.is_err().then(|| feature.loss.to_owned()),
        }
    }
}
