//! The exact-count floor (`exact_floor.c`): only the kernel primitives an exact count of
//! connections needs (a 4-tuple record per handshake, its hand-off, a tag per counted socket),
//! attached where limiter attaches its programs (XDP on the listener's interface, in the mode
//! limiter runs in beside it; sock_ops on the cgroup root). Parts 6 and 10 set limiter's cost per
//! connection against it: what is left above it is limiter's own.
use std::{fs::File, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{CgroupAttachMode, SockOps, Xdp, XdpMode},
};

use super::{
    report::{number, paired_ratio},
    sys,
};
use crate::{cmd, setup};

/// The programs, attached while this lives (aya detaches them when it is dropped).
pub struct ExactFloor {
    programs: Ebpf,
}

impl ExactFloor {
    /// Attaches the floor's XDP program to `iface` in namespace `ns` in `mode`, its sock_ops
    /// program to the cgroup root.
    pub fn attach(object: &Path, ns: &str, iface: &str, mode: XdpMode) -> Result<ExactFloor> {
        let mut programs =
            Ebpf::load_file(object).with_context(|| format!("loading {}", object.display()))?;
        let xdp: &mut Xdp = programs
            .program_mut("floor_admission")
            .context("exact_floor.o has no floor_admission")?
            .try_into()?;
        xdp.load().context("loading floor_admission")?;
        // The veth's index is looked up in its own namespace; the link holds it from then on.
        sys::in_netns(ns, || {
            xdp.attach(iface, mode)
                .with_context(|| format!("attaching floor_admission to {iface} in {ns}"))?;
            Ok(())
        })?;
        let ops: &mut SockOps = programs
            .program_mut("floor_accounting")
            .context("exact_floor.o has no floor_accounting")?
            .try_into()?;
        ops.load().context("loading floor_accounting")?;
        let root = setup::mount_of("cgroup2")?.context("no cgroup2 filesystem is mounted")?;
        let cgroup = File::open(&root).with_context(|| format!("opening {root}"))?;
        ops.attach(cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching floor_accounting to {root}"))?;
        Ok(ExactFloor { programs })
    }

    /// Detaches the floor after a churn of `connected` connections, checking that it did the
    /// work it stands for: it counted every one of them, and every slot is back and every record
    /// handed off (within a few seconds: the last connections are still closing).
    pub fn release(self, connected: u64) -> Result<()> {
        let counted = self.settled()?;
        if counted < connected {
            bail!("the exact-count floor counted {counted} of {connected} connections");
        }
        Ok(())
    }

    fn settled(&self) -> Result<u64> {
        cmd::poll_until(
            "the exact-count floor to give back every slot",
            Duration::from_secs(3),
            Duration::from_millis(50),
            || {
                let slots: Array<_, u64> =
                    Array::try_from(self.programs.map("slots").context("no map slots")?)?;
                let (taken, counted) = (slots.get(&0, 0)?, slots.get(&1, 0)?);
                let pending: HashMap<_, [u8; 40], u64> =
                    HashMap::try_from(self.programs.map("pending").context("no map pending")?)?;
                let records = pending.keys().count();
                Ok(if taken == 0 && records == 0 {
                    cmd::Check::Done(counted)
                } else {
                    cmd::Check::NotYet(format!(
                        "{taken} slots taken, {records} handshakes recorded, {counted} counted"
                    ))
                })
            },
        )
    }
}

/// What the floor is, for the report: said once in a part, before [`note`]'s figures.
pub const DESCRIPTION: &str = "The exact-count floor (`xtask/src/bench/exact_floor.c`, its XDP \
     in the mode limiter's runs in) does only what an exact count needs per connection, with the \
     kernel's primitives: at the SYN a slot (one atomic add) and the 4-tuple recorded with its \
     time in a hash map (what a retransmitted SYN must find and an unanswered handshake is timed \
     out by); at ESTABLISHED the record deleted (the hand-off) and a tag made in the socket's \
     own storage, with state callbacks asked for; at CLOSE the tag cleared and the slot given \
     back. No listener table, no limit, no statistics, no namespaces (the bench checks that it \
     counted every connection and gave every slot back).";

/// What the floor costs next to the empty program in the same mode (`mode`, as the report says
/// it), and limiter next to the floor, from their windows' connections/s; with `cpu_over` = (the
/// floor's CPU µs per connection over the empty program's, limiter's over the floor's) where the
/// part measures it.
pub fn note(
    mode: &str,
    floor: &[f64],
    empty: &[f64],
    limiter: &[f64],
    cpu_over: Option<(f64, f64)>,
) -> String {
    let (lo, of_empty, hi) = paired_ratio(floor, empty);
    let (_, of_floor, _) = paired_ratio(limiter, floor);
    let (floor_cpu, limiter_cpu) = match cpu_over {
        Some((floor, limiter)) => (
            format!(" and costs {} µs more CPU per connection", number(floor)),
            format!(" and costs {} µs more than it", number(limiter)),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "{mode}: the exact-count floor makes {:.1}% of the empty program's connections/s (median \
         of paired ratios, {:.1}–{:.1}%){floor_cpu}; limiter makes {:.1}% of the floor's rate \
         (median of paired ratios){limiter_cpu}. A target of 97% of the empty program {} what \
         these primitives cost by themselves on this machine.",
        of_empty * 100.0,
        lo * 100.0,
        hi * 100.0,
        of_floor * 100.0,
        if of_empty < 0.97 {
            "is below"
        } else {
            "leaves room above"
        },
    )
}
