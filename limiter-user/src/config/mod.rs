//! What users write, and the settings it makes.
//!
//! - [`cli`]: the command line (`limiter run | stats | set | unset | reload | crd`).
//! - [`file`]: the `--config` YAML file; [`checker`] checks it field by field, [`path_index`]
//!   names the field at an error's position.
//! - [`settings`]: the flags merged over the file, and what a reload changes.
//! - [`listener`], [`keepalive`], [`duration`]: listeners and limits, keepalive policies and
//!   durations as users write them, parsed alike in flags and the file.
pub mod checker;
pub mod cli;
pub mod duration;
pub mod file;
pub mod file_config;
pub mod keepalive;
pub mod listener;
pub mod path_index;
pub mod raw;
pub mod settings;
