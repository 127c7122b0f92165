//! The agent's view of the live per-listener budgets (`SLOT_USAGE`), memory-mapped so it can
//! read them cheaply and release an expired handshake's reservation with an atomic of its own,
//! racing safely with the kernel programs' atomics on the same words.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use limiter_common::SlotUsage;

pub struct SlotUsageView {
    base: NonNull<SlotUsage>,
    bytes: usize,
    /// The array's entries: the listener slots of this copy of the maps.
    slots: u32,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for SlotUsageView {}
// SAFETY: as above.
unsafe impl Sync for SlotUsageView {}

impl SlotUsageView {
    /// Maps the whole array of `slots` entries (`BPF_F_MMAPABLE`, Linux 5.5+).
    pub fn map(fd: BorrowedFd<'_>, slots: u32) -> io::Result<Self> {
        let bytes = slots as usize * size_of::<SlotUsage>();
        // SAFETY: a shared mapping of a BPF array fd; its size is the array's.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SlotUsageView { base, bytes, slots })
    }

    fn word(&self, slot: u32, field: fn(*mut SlotUsage) -> *mut u64) -> &AtomicU64 {
        assert!(slot < self.slots, "slot {slot} out of range");
        // SAFETY: in bounds (checked above), 8-byte aligned (page-aligned base, 24-byte
        // elements), and only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(field(self.base.as_ptr().add(slot as usize))) }
    }

    /// How many listener slots there are.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn get(&self, slot: u32) -> SlotUsage {
        SlotUsage {
            reserved: self
                .word(slot, |p| unsafe { &raw mut (*p).reserved })
                .load(Ordering::Relaxed),
            active: self
                .word(slot, |p| unsafe { &raw mut (*p).active })
                .load(Ordering::Relaxed),
            mode: self
                .word(slot, |p| unsafe { &raw mut (*p).mode })
                .load(Ordering::Relaxed),
        }
    }

    /// Switches a slot's admission mode (`limiter_common::admission_mode`); the programs read
    /// it on every SYN and established connection of the listener.
    pub fn set_mode(&self, slot: u32, mode: u64) {
        self.word(slot, |p| unsafe { &raw mut (*p).mode })
            .store(mode, Ordering::Relaxed);
    }

    /// Gives back a slot whose reservation this process took ownership of (by deleting its
    /// PENDING entry).
    pub fn release_reservation(&self, slot: u32) {
        self.word(slot, |p| unsafe { &raw mut (*p).reserved })
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for SlotUsageView {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
