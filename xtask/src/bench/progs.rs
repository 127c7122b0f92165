//! The programs the bench runs: limiter's own XDP program from the release build's object, and
//! the baselines, tiny C programs compiled with `clang -O2 -target bpf` at bench time into a
//! scratch directory (removed on drop), all loaded with aya.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use limiter_common::{
    AgentConfig, ListenerConfig, ListenerKey, MAP_LAYOUT_VERSION, SlotListener, SlotStats,
    SlotUsage, family, map_names, packet_stat, port_entry, program_names,
};

use crate::cmd::{self, command};

const BPF_H: &str = include_str!("bpf.h");
pub const XDP_PASS_C: (&str, &str) = ("xdp_pass", include_str!("xdp_pass.c"));
pub const XDP_DROP_SYN_C: (&str, &str) = ("xdp_drop_syn", include_str!("xdp_drop_syn.c"));
pub const XDP_GEN_C: (&str, &str) = ("xdp_gen", include_str!("xdp_gen.c"));
pub const XDP_GEN_RX_C: (&str, &str) = ("xdp_gen_rx", include_str!("xdp_gen_rx.c"));
pub const EXACT_FLOOR_C: (&str, &str) = ("exact_floor", include_str!("exact_floor.c"));

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// A directory for the bench's files; removed with everything in it on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("limiter-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("bpf.h"), BPF_H)?;
        Ok(Scratch { dir })
    }

    /// Compiles one of the C programs above (with `-DPORT=port`) into `OBJECT.o`; returns the
    /// object's path.
    pub fn compile(
        &self,
        (name, source): (&str, &str),
        port: u16,
        object: &str,
    ) -> Result<PathBuf> {
        let c = self.dir.join(format!("{name}.c"));
        let o = self.dir.join(format!("{object}.o"));
        std::fs::write(&c, source)?;
        let mut clang = command("clang");
        clang
            // -g: BTF, which the maps declared in `.maps` (exact_floor.c's) are described by.
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-DPORT={port}"))
            .arg("-c")
            .arg(&c)
            .arg("-o")
            .arg(&o);
        println!("  $ {}", cmd::display(&clang));
        cmd::output_quiet(&mut clang).with_context(|| format!("compiling {name}.c"))?;
        Ok(o)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("bench: cleanup: removing {}: {e}", self.dir.display());
        }
    }
}

/// One loaded (never attached) XDP program and its object.
pub struct Loaded {
    ebpf: Ebpf,
    name: String,
}

/// aya-log's `Level::Info`.
const INFO_LOG_LEVEL: u8 = 3;

impl Loaded {
    pub fn load(object: &Path, program: &str) -> Result<Loaded> {
        // limiter's programs at the agent's default log level (info: their debug statements,
        // on per-packet paths, removed by the verifier); the C baselines have no such global.
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &INFO_LOG_LEVEL, false)
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        let xdp: &mut Xdp = ebpf
            .program_mut(program)
            .with_context(|| format!("{} has no program {program}", object.display()))?
            .try_into()
            .with_context(|| format!("{program} is not an XDP program"))?;
        xdp.load()
            .with_context(|| format!("the verifier refused {program}"))?;
        Ok(Loaded {
            ebpf,
            name: program.to_string(),
        })
    }

    /// Attaches the program natively to `interface` (looked up in the calling thread's network
    /// namespace); it stays attached until the program is dropped.
    pub fn attach_native(&mut self, interface: &str) -> Result<()> {
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(&self.name)
            .context("program vanished")?
            .try_into()?;
        xdp.attach(interface, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching {} to {interface}", self.name))?;
        Ok(())
    }

    fn xdp(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(&self.name)
            .context("program vanished")?
            .try_into()?)
    }

    /// BPF_PROG_TEST_RUN with `repeat` runs of `frame`: (verdict of the last run, mean ns per
    /// run as the kernel measured it).
    pub fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let mut out = vec![0u8; frame.len() + 256];
        let r = self
            .xdp()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", self.name))?;
        // The kernel reports the mean, rounded down to whole ns; with repeat=1 it is one run.
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }

    /// Live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES): `repeat` runs on frames that really go
    /// out (XDP_TX leaves through device `ifindex`, resolved in the calling thread's network
    /// namespace), `batch` at a time.
    pub fn run_live(&self, frame: &[u8], repeat: u32, ifindex: u32, batch: u32) -> Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.xdp()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(batch),
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN (live frames) of {}", self.name))?;
        Ok(())
    }
}

/// limiter's admission program from the agent's own object, with its maps set up the way the
/// agent sets them (`tests/src/program.rs` does the same).
pub struct Limiter {
    prog: Loaded,
}

impl Limiter {
    pub fn load(object: &Path) -> Result<Limiter> {
        let mut prog = Loaded::load(object, program_names::ADMISSION)?;
        let mut config: Array<_, AgentConfig> =
            Array::try_from(map_mut(&mut prog.ebpf, map_names::AGENT_CONFIG)?)?;
        config.set(
            0,
            AgentConfig {
                netns_cookie: 0,
                layout_version: MAP_LAYOUT_VERSION,
                counters_revision: limiter_common::COUNTERS_REVISION,
            },
            0,
        )?;
        Ok(Limiter { prog })
    }

    pub fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        self.prog.run(frame, repeat)
    }

    /// See [`Loaded::attach_native`].
    pub fn attach_native(&mut self, interface: &str) -> Result<()> {
        self.prog.attach_native(interface)
    }

    /// A limited listener `addr:port` in `slot`, as the agent adds it.
    pub fn add_listener(
        &mut self,
        addr: Ipv4Addr,
        port: u16,
        slot: u32,
        limit: u64,
        action: u32,
    ) -> Result<()> {
        self.add_listener_config(
            addr,
            port,
            ListenerConfig {
                limit,
                slot,
                action,
                source_limit: 0,
                source_action: 0,
            },
        )
    }

    /// [`Self::add_listener`] with the whole config (a per-source limit).
    pub fn add_listener_config(
        &mut self,
        addr: Ipv4Addr,
        port: u16,
        config: ListenerConfig,
    ) -> Result<()> {
        let slot = config.slot;
        let key = ListenerKey {
            addr: [u32::from_ne_bytes(addr.octets()), 0, 0, 0],
            port,
            family: family::V4,
        };
        let ebpf = &mut self.prog.ebpf;
        let mut slots: Array<_, SlotListener> =
            Array::try_from(map_mut(ebpf, map_names::SLOT_LISTENERS)?)?;
        slots.set(
            slot,
            SlotListener {
                key,
                _pad: 0,
                config,
            },
            0,
        )?;
        let mut listeners: HashMap<_, ListenerKey, ListenerConfig> =
            HashMap::try_from(map_mut(ebpf, map_names::LISTENERS)?)?;
        listeners.insert(key, config, 0)?;
        let mut ports: Array<_, u32> = Array::try_from(map_mut(ebpf, map_names::PORTS)?)?;
        let entry = ports.get(&u32::from(port), 0)?;
        ports.set(u32::from(port), port_entry::with_listener(entry, slot), 0)?;
        Ok(())
    }

    /// Sets the connections an IPv4 source holds on listener `slot` (SOURCES), as accounting
    /// leaves them.
    pub fn set_source(&mut self, slot: u32, source: Ipv4Addr, held: u64) -> Result<()> {
        let mut sources: HashMap<_, limiter_common::SourceKey, u64> =
            HashMap::try_from(map_mut(&mut self.prog.ebpf, map_names::SOURCES)?)?;
        let key = limiter_common::SourceKey {
            slot,
            family: family::V4,
            _pad: 0,
            addr: [u32::from_ne_bytes(source.octets()), 0],
        };
        sources.insert(key, held, 0)?;
        Ok(())
    }

    /// Sets a slot's budget: `reserved` slots taken, `active` of them established connections
    /// (the rest handshakes in flight), as the programs leave it.
    pub fn set_usage(&mut self, slot: u32, reserved: u64, active: u64) -> Result<()> {
        let mut usage: Array<_, SlotUsage> =
            Array::try_from(map_mut(&mut self.prog.ebpf, map_names::SLOT_USAGE)?)?;
        usage.set(
            slot,
            SlotUsage {
                reserved,
                active,
                mode: limiter_common::admission_mode::RESERVE,
            },
            0,
        )?;
        Ok(())
    }

    /// The handshakes in flight (PENDING's keys).
    pub fn pending(&self) -> Result<std::collections::HashSet<limiter_common::FlowKey>> {
        let pending: HashMap<_, limiter_common::FlowKey, limiter_common::Pending> =
            HashMap::try_from(map(&self.prog.ebpf, map_names::PENDING)?)?;
        Ok(pending.keys().filter_map(Result::ok).collect())
    }

    /// Releases the handshakes in flight that are not in `keep`, as the agent's sweeper would:
    /// their PENDING entries go and `slot` gets their reservations back. (The admitted-SYN
    /// measurement makes tens of thousands; the table is bounded.)
    pub fn release_handshakes_but(
        &mut self,
        keep: &std::collections::HashSet<limiter_common::FlowKey>,
        slot: u32,
    ) -> Result<()> {
        let mut pending: HashMap<_, limiter_common::FlowKey, limiter_common::Pending> =
            HashMap::try_from(map_mut(&mut self.prog.ebpf, map_names::PENDING)?)?;
        let gone: Vec<limiter_common::FlowKey> = pending
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep.contains(k))
            .collect();
        for key in &gone {
            pending.remove(key)?;
        }
        let usage: Array<_, SlotUsage> =
            Array::try_from(map(&self.prog.ebpf, map_names::SLOT_USAGE)?)?;
        let now = usage.get(&slot, 0)?;
        self.set_usage(
            slot,
            now.reserved.saturating_sub(gone.len() as u64),
            now.active,
        )
    }

    /// Program-wide packet counters summed over CPUs, indexed by `packet_stat`.
    pub fn packets(&self) -> Result<[u64; packet_stat::COUNT as usize]> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map(&self.prog.ebpf, map_names::PACKET_STATS)?)?;
        let mut out = [0u64; packet_stat::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            *v = stats.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// One slot's event counters summed over CPUs.
    pub fn slot_stats(&self, slot: u32) -> Result<SlotStats> {
        let stats: PerCpuArray<_, SlotStats> =
            PerCpuArray::try_from(map(&self.prog.ebpf, map_names::SLOT_STATS)?)?;
        Ok(stats
            .get(&slot, 0)?
            .iter()
            .fold(SlotStats::default(), |mut sum, s| {
                sum.syn_admitted += s.syn_admitted;
                sum.syn_retransmitted += s.syn_retransmitted;
                sum.refused_drop += s.refused_drop;
                sum.refused_reset += s.refused_reset;
                sum
            }))
    }
}

fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a aya::maps::Map> {
    ebpf.map(name)
        .with_context(|| format!("limiter's object has no map {name}"))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("limiter's object has no map {name}"))
}

/// Checks a verdict against the one the path must give.
pub fn expect_verdict(what: &str, got: u32, want: u32) -> Result<()> {
    if got != want {
        bail!("{what}: verdict {got}, expected {want}: this is not the path meant to be measured");
    }
    Ok(())
}
