//! What users write, and the settings it makes.
//!
//! - [`cli`]: the command line (`limiter run | stats | set | unset | reload | crd`).
//! - [`file`]: the `--config` YAML file; [`checker`] checks it field by field, [`path_index`]
//!   names the field at an error's position.
//! - [`settings`]: the flags merged over the file, and what a reload changes.
//! - [`listener`], [`keepalive`], [`duration`], [`proxy_spec`], [`namespaces`]: listeners and
//!   limits, keepalive policies, durations, proxies and the limits of other namespaces as users
//!   write them, parsed alike in flags and the file; [`coverage`]: which clients a proxy
//!   accepts, so which listener a limit on it is enforced on.
pub mod checker;
pub mod cli;
pub mod coverage;
pub mod duration;
pub mod file;
pub mod file_config;
pub mod keepalive;
pub mod listener;
pub mod namespaces;
pub mod path_index;
pub mod proxy_spec;
pub mod raw;
pub mod settings;
