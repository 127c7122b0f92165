//! What the agent tells about itself.
//!
//! - [`stats`]: the report `limiter stats` shows, one shape for every namespace and proxy.
//! - [`metrics`]: the same numbers as Prometheus metrics ([`collector`]), and the probes.
//! - [`logging`]: the log.
//! - [`control`]: the socket `limiter stats | set | unset | reload` talk to.
pub mod collector;
pub mod control;
pub mod logging;
pub mod metrics;
pub mod stats;
