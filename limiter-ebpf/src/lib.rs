//! This library target exists so that `limiter-user` can name this crate as a build dependency
//! (cargo then rebuilds the agent when the kernel programs change). The programs are the `limiter`
//! binary target (`src/main.rs`), built for `bpfel-unknown-none` by aya-build.
#![no_std]
