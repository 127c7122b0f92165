//! Enforcing limits in one network namespace: the kernel object, its maps and programs, and
//! everything the agent does with them.
//!
//! - [`preflight`], [`features`]: what is checked before anything is loaded, and what this
//!   kernel can do.
//! - [`kernel`], [`capacity`], [`pins`], [`xdp_mode`]: loading and attaching the programs, how
//!   big their maps are, keeping them pinned across restarts, the XDP mode of each interface.
//! - [`limits`], [`limit_report`], [`usage`]: the limits in force, the listener slots that
//!   count for them, and what they report.
//! - [`handshake`], [`flood`], [`flood_state`]: releasing reservations whose handshake never
//!   completed, and flood mode.
//! - [`preexisting`], [`over_limit`], [`unbound`], [`sock_diag`]: connections that were there
//!   first, connections over the limit once their handshake completed, limits nothing listens
//!   on, and the kernel's socket table they are found in.
pub mod adopt_iterator;
pub mod capacity;
pub mod features;
pub mod flood;
pub mod flood_state;
pub mod handshake;
pub mod kernel;
pub mod limit_report;
pub mod limits;
pub mod over_limit;
pub mod pins;
pub mod preexisting;
pub mod preflight;
pub mod sock_diag;
pub mod unbound;
pub mod usage;
pub mod xdp_mode;
