//! Waiting for a condition with a deadline, never a fixed sleep: a test either sees what it
//! waits for or fails with the last thing it saw.
use std::{
    thread,
    time::{Duration, Instant},
};

/// Calls `probe` until it returns `Ok`, backing off from 10 ms to 100 ms between calls; at
/// `timeout` panics with `what` and the last `Err` (what was seen).
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
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
