//! Bad input, as a user meets it: `limiter run` exits with the expected code and exactly one
//! `limiter: error:` line naming what was wrong, and leaves nothing attached behind.
use crate::{Agent, TestBed, agent::Finished};

/// Runs `limiter run --iface <server veth> ARGS --control-socket <fresh>`, expects it to exit
/// with `code` and one error line containing one of `needles` (case-insensitive), and checks
/// that nothing was left behind.
pub fn expect_refusal(args: &[&str], code: i32, needles: &[&str]) {
    refusal_line(args, code, needles);
}

/// [`expect_refusal`], returning the error line (to check more of what it names).
pub fn refusal_line(args: &[&str], code: i32, needles: &[&str]) -> String {
    let bed = TestBed::new();
    let socket = Agent::socket_path();
    let socket_arg = socket.display().to_string();
    let full = run_args(&bed, args, &socket_arg);
    let finished = Agent::run_to_exit(&bed, &full);
    check_refusal(&bed, &finished, &format!("{full:?}"), code, needles);
    assert!(
        !socket.exists(),
        "{full:?}: control socket {} left behind",
        socket.display()
    );
    finished.error_lines()[0].to_string()
}

/// `run --iface <server veth> ARGS --control-socket SOCKET`: how the refusal tests run the agent.
pub fn run_args<'a>(bed: &'a TestBed, args: &[&'a str], socket: &'a str) -> Vec<&'a str> {
    let mut full = vec!["run", "--iface", &bed.srv_veth];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--control-socket", socket]);
    full
}

pub fn check_refusal(bed: &TestBed, finished: &Finished, what: &str, code: i32, needles: &[&str]) {
    let errors = finished.error_lines();
    assert_eq!(
        errors.len(),
        1,
        "{what}: want exactly one `limiter: error:` line; stderr: {:#?}",
        finished.stderr
    );
    let line = errors[0].to_lowercase();
    assert!(
        needles.iter().any(|n| line.contains(&n.to_lowercase())),
        "{what}: error line should name one of {needles:?}: {:?}",
        errors[0]
    );
    assert_eq!(
        finished.status.code(),
        Some(code),
        "{what}: exit status {} (stderr {:?})",
        finished.status,
        finished.stderr
    );
    bed.assert_no_xdp(what);
}
