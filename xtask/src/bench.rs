//! `cargo xtask bench`: not written yet. It must print measured numbers or nothing, so for now it
//! says so and fails.
use std::process::ExitCode;

pub fn main() -> ExitCode {
    eprintln!("not yet implemented: see issue 6");
    ExitCode::FAILURE
}
