//! `dry-run` (nginx's `limit_conn_dry_run`): connections over the limit are let through and
//! counted as would-have-been-refused, so a limit can be rolled out and sized from real
//! traffic; the active count shows the real load; `limiter set` turns it into a real limit
//! live. Needs root.
use std::time::Duration;

use limiter_tests::{
    Agent, TestBed,
    client::{Hold, addr},
};

const PORT: u16 = 8000;
const SETTLE: Duration = Duration::from_secs(20);

#[test]
fn root_dry_run_lets_everything_through_and_counts_what_it_would_refuse() {
    let bed = TestBed::new();
    let (_server, listener, agent) = Agent::with_echo_server(&bed, PORT, "2:dry-run", &[]);
    let held = Hold::open(&bed, 5, &addr(bed.srv_v4, PORT), 2000);
    assert_eq!(
        held.result.connected, 5,
        "dry run refuses nothing: {:?}",
        held.result
    );
    let row = agent.wait_listener(&listener, "5 active", SETTLE, |l| l.active == 5);
    assert_eq!(row.action, "dry-run", "{row:?}");
    assert_eq!(row.dry_run_would_refuse_total, 3, "{row:?}");
    assert_eq!(row.refused_total, 0, "{row:?}");
    let table = String::from_utf8_lossy(&agent.cli(&["stats"]).stdout).into_owned();
    assert!(
        table.contains(&format!(
            "{listener}: dry run: 3 over the limit let through"
        )),
        "{table}"
    );

    // Sized from what was seen: now enforce it, live.
    let set = agent.cli(&["set", &format!("{listener}=5:reset")]);
    assert!(set.status.success(), "{set:?}");
    let over = Hold::open(&bed, 1, &addr(bed.srv_v4, PORT), 2000);
    assert_eq!(over.result.refused, 1, "{:?}", over.result);
    held.close();
    agent.wait_listener(&listener, "back to 0", SETTLE, |l| {
        l.active == 0 && l.pending == 0
    });
}
