//! The exact-count floor (`exact_floor.c`): only the kernel primitives an exact count of
//! connections needs (a 4-tuple record per handshake, its hand-off, a tag per counted socket),
//! attached where limiter attaches its programs (XDP on the server veth, generic as
//! `--xdp-mode auto` attaches there; sock_ops on the cgroup root). Part 6 sets limiter's cost
//! per connection against it: what is left above it is limiter's own.
use std::{fs::File, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{CgroupAttachMode, SockOps, Xdp, XdpMode},
};

use super::{netns::TestBed, sys};
use crate::{cmd, setup};

/// The programs, attached while this lives (aya detaches them when it is dropped).
pub struct ExactFloor {
    programs: Ebpf,
}

impl ExactFloor {
    pub fn attach(object: &Path, bed: &TestBed) -> Result<ExactFloor> {
        let mut programs =
            Ebpf::load_file(object).with_context(|| format!("loading {}", object.display()))?;
        let xdp: &mut Xdp = programs
            .program_mut("floor_admission")
            .context("exact_floor.o has no floor_admission")?
            .try_into()?;
        xdp.load().context("loading floor_admission")?;
        // The veth's index is looked up in its own namespace; the link holds it from then on.
        sys::in_netns(&bed.server_ns, || {
            xdp.attach(&bed.server_veth, XdpMode::Skb)
                .with_context(|| format!("attaching floor_admission to {}", bed.server_veth))?;
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

    /// After a churn: how many connections the floor counted, once every slot is back and
    /// every record handed off (within a few seconds: the last connections are still closing).
    /// An error if that never happens: the floor would not have done the work it stands for.
    pub fn settled(&self) -> Result<u64> {
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
