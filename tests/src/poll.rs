//! Waiting for a condition with a deadline, never a fixed sleep: a test either sees what it
//! waits for or fails with the last thing it saw.
use std::{
    thread,
    time::{Duration, Instant},
};

/// The environment variable that stretches every time limit of the harness: the kernel matrix's
/// VMs run under emulation (TCG), several times slower than this machine (xtask/src/matrix).
pub const TIME_SCALE_ENV: &str = "LIMITER_TEST_TIME_SCALE";

/// `limit` stretched by `LIMITER_TEST_TIME_SCALE` (a whole number, 1 when unset). Limits only:
/// no test waits longer than it must, it may only wait longer before it fails.
pub fn scaled(limit: Duration) -> Duration {
    let scale = std::env::var(TIME_SCALE_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    limit * scale
}

/// Calls `probe` until it returns `Ok`, backing off from 10 ms to 100 ms between calls; at
/// `timeout` panics with `what` and the last `Err` (what was seen).
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let timeout = scaled(timeout);
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match probe() {
            Ok(value) => return value,
            Err(seen) => {
                if started.elapsed() >= timeout {
                    panic!(
                        "timed out after {timeout:?} ({attempts} checks) waiting for {what}; last seen: {seen}"
                    );
                }
            }
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
