//! Operations: Prometheus metrics and probes scraped from a running agent, the `--config` file
//! (flags win), live reload on SIGHUP and `limiter reload` (a bad file changes nothing), and
//! `limiter stats --watch`. Needs root.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use limiter_tests::{
    Agent, Side, TestBed,
    agent::{http_get, limiter_bin},
    client::{EchoServer, Hold, ServerMode, addr},
    eventually, names,
};

const PORT: u16 = 8000;

/// GETs `path` from the agent's metrics address (loopback of the server namespace).
/// The value of the sample `name{labels}` in a text exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn root_metrics_and_probes_match_what_happened() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=2:reset")]);

    let (status, body) = http_get(&bed, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&bed, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(&bed, "/nope").0, 404);

    let held = Hold::open(&bed, 3, &server, 3000);
    assert_eq!(
        (held.result.connected, held.result.refused),
        (2, 1),
        "{:?}",
        held.result
    );
    let label = format!("{{listener=\"{listener}\"}}");
    let text = eventually("metrics show 2 active", Duration::from_secs(5), || {
        let (status, text) = http_get(&bed, "/metrics");
        match sample(
            &text,
            &format!("limiter_listener_active_connections{label}"),
        ) {
            Some(v) if status == 200 && v == 2.0 => Ok(text),
            other => Err(format!("status {status}, active {other:?}")),
        }
    });
    let expect = [
        (
            format!("limiter_listener_limit{{listener=\"{listener}\",action=\"reset\"}}"),
            2.0,
        ),
        (
            format!("limiter_listener_admitted_connections_total{label}"),
            2.0,
        ),
        (
            format!(
                "limiter_listener_refused_syns_total{{listener=\"{listener}\",action=\"reset\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "limiter_listener_refused_syns_total{{listener=\"{listener}\",action=\"drop\"}}"
            ),
            0.0,
        ),
        (format!("limiter_listener_pending_handshakes{label}"), 0.0),
    ];
    for (series, value) in &expect {
        assert_eq!(sample(&text, series), Some(*value), "{series} in:\n{text}");
    }
    for family in [
        "limiter_packets_total{result=\"syn_not_limited\"}",
        "limiter_packets_total{result=\"malformed\"}",
    ] {
        assert!(sample(&text, family).is_some(), "{family} missing:\n{text}");
    }
    // The agent's own stats say the same.
    let row = agent.listener(&listener);
    assert_eq!(
        (row.active, row.admitted_total, row.refused_reset_total),
        (2, 2, 1),
        "{row:?}"
    );
    drop(held);
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn config_file(text: &str) -> TempFile {
    let path = PathBuf::from(format!(
        "/tmp/{}.yaml",
        names::unique("cfg", names::next_id())
    ));
    fs::write(&path, text).expect("writing the config file");
    TempFile(path)
}

/// An Envoy Gateway style listener with `value` as its limit.
/// Three listeners on the server's address: PORT, PORT + 1, PORT + 2.
fn three_listeners(bed: &TestBed) -> [String; 3] {
    [0, 1, 2].map(|i| format!("{}:{}", bed.srv_v4, PORT + i))
}

/// An agent run with `--config` on a file holding `text` (kept until the file is dropped).
fn agent_with_file(bed: &TestBed, text: &str) -> (Agent, TempFile) {
    let file = config_file(text);
    let path = file.0.display().to_string();
    let agent = Agent::start(bed, &["--config", &path, "--metrics-addr", "off"]);
    (agent, file)
}

/// A config file with `maxListeners: max` and these listeners' limits, Envoy Gateway style.
fn sized_file(max: u32, limits: &[(&str, u32)]) -> String {
    let listeners: String = limits
        .iter()
        .map(|(listener, value)| {
            format!(
                "  - listener: \"{listener}\"\n    connection: {{connectionLimit: {{value: {value}}}}}\n"
            )
        })
        .collect();
    format!("maxListeners: {max}\nlisteners:\n{listeners}")
}

fn envoy_style(listener: &str, value: u32) -> String {
    format!(
        "listeners:\n  - listener: \"{listener}\"\n    connection:\n      connectionLimit:\n        value: {value}\n"
    )
}

#[test]
fn root_config_file_reload_applies_only_valid_files() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let file = config_file(&envoy_style(&listener, 1));
    let path = file.0.display().to_string();
    let agent = Agent::start(&bed, &["--config", &path, "--metrics-addr", "off"]);
    assert_eq!(agent.listener(&listener).limit, 1);
    let mut first = Hold::open(&bed, 2, &server, 1500);
    assert_eq!(first.result.connected, 1, "{:?}", first.result);

    // SIGHUP: the new limit applies at once, established connections untouched.
    fs::write(&file.0, envoy_style(&listener, 3)).unwrap();
    // SAFETY: signalling the agent process this test started.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent.wait_listener(
        &listener,
        "limit 3 after SIGHUP",
        Duration::from_secs(5),
        |l| l.limit == 3,
    );
    assert_eq!(
        first.ping().echoed,
        1,
        "held connection broken by the reload"
    );
    let more = Hold::open(&bed, 3, &server, 1500);
    assert_eq!(more.result.connected, 2, "{:?}", more.result);
    drop(more);

    // A bad file is reported and changes nothing.
    fs::write(
        &file.0,
        format!("{}    maxActiveConnectionz: 7\n", envoy_style(&listener, 9)),
    )
    .unwrap();
    let out = agent.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a bad file was accepted: {stderr}");
    assert!(
        stderr.starts_with("limiter: error:") && stderr.contains("maxActiveConnectionz"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line"),
        "error does not give the line: {stderr}"
    );
    assert_eq!(
        agent.listener(&listener).limit,
        3,
        "a rejected reload changed the limit"
    );

    // `limiter reload` with the listener gone: its limit is lifted.
    fs::write(&file.0, "listeners: []\nkeepalivePolicies:\n  - destinations: 198.18.0.0/15:5432\n    tcpKeepalive: {time: 60s}\n").unwrap();
    let out = agent.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        agent.stats().listener(&listener).is_none(),
        "limit still listed after removal"
    );
    let free = Hold::open(&bed, 4, &server, 1500);
    assert_eq!(free.result.connected, 4, "{:?}", free.result);
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
}

/// A reload cannot outgrow the maps the agent made at start: more listeners than the running
/// `maxListeners` are rejected whole (even when the file raises it, which takes effect on
/// restart), and nothing changes.
#[test]
fn root_reload_beyond_max_listeners_is_rejected_whole() {
    let bed = TestBed::new();
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let (agent, file) = agent_with_file(&bed, &sized_file(1, &[(&listener, 1)]));
    let other = format!("{}:{}", bed.srv_v4, PORT + 1);
    fs::write(&file.0, sized_file(4, &[(&listener, 2), (&other, 2)])).unwrap();
    let out = agent.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("reload rejected, nothing changed: 2 listeners would be limited")
            && stderr.contains("more than the 1 listener slots")
            && stderr.contains("takes effect on restart"),
        "{stderr}"
    );
    assert_eq!(agent.listener(&listener).limit, 1, "changed in part");
    assert!(agent.stats().listener(&other).is_none());
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
}

/// The reload's check goes by the table as it is: a listener limited live with `limiter set`
/// since the file was read still holds its slot, so a file that needs that slot is rejected
/// whole, not applied up to the listener that finds none.
#[test]
fn root_reload_counts_listeners_set_live() {
    let bed = TestBed::new();
    let [a, b, c] = three_listeners(&bed);
    let (agent, file) = agent_with_file(&bed, &sized_file(2, &[(&a, 1)]));
    agent.set(&format!("{b}=1"));
    fs::write(&file.0, sized_file(2, &[(&a, 3), (&c, 3)])).unwrap();
    let out = agent.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains("3 listeners would be limited"),
        "{}: {stderr}",
        out.status
    );
    assert_eq!(agent.listener(&a).limit, 1, "changed in part");
    assert!(agent.stats().listener(&c).is_none());
    // With the live one unset, the same file fits.
    agent.unset(&b);
    let out = agent.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(agent.listener(&a).limit, 3);
    assert_eq!(agent.listener(&c).limit, 3);
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
}

/// A slot whose listener a reload removes keeps its connections, and so the slot, until they
/// close: a file that needs it at once is rejected whole, one that leaves room is applied.
#[test]
fn root_reload_counts_slots_still_draining() {
    let bed = TestBed::new();
    let server = addr(bed.srv_v4, PORT);
    let _echo = EchoServer::start(&bed, Side::Server, &server, ServerMode::Echo);
    let [a, b, c] = three_listeners(&bed);
    let (agent, file) = agent_with_file(&bed, &sized_file(2, &[(&a, 1)]));
    let held = Hold::open(&bed, 1, &server, 3000);
    assert_eq!(held.result.connected, 1, "{:?}", held.result);
    agent.wait_listener(&a, "1 active", Duration::from_secs(5), |l| l.active == 1);
    fs::write(&file.0, sized_file(2, &[(&b, 1), (&c, 1)])).unwrap();
    let out = agent.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success()
            && stderr.contains("2 listeners would be limited, and 1 slots still hold connections"),
        "{}: {stderr}",
        out.status
    );
    assert_eq!(agent.listener(&a).limit, 1, "changed in part");
    fs::write(&file.0, sized_file(2, &[(&b, 1)])).unwrap();
    let out = agent.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(agent.stats().listener(&a).is_none());
    assert_eq!(agent.listener(&b).limit, 1);
    drop(held);
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
}

#[test]
fn root_config_flags_win_and_bad_files_are_refused_at_start() {
    let bed = TestBed::new();
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let file = config_file(&envoy_style(&listener, 1));
    let path = file.0.display().to_string();
    let agent = Agent::start(
        &bed,
        &[
            "--config",
            &path,
            "--limit",
            &format!("{listener}=2"),
            "--metrics-addr",
            "off",
        ],
    );
    assert_eq!(
        agent.listener(&listener).limit,
        2,
        "the flag did not win over the file"
    );
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));

    let bad = config_file(&format!("{}\nlisteners2: []\n", envoy_style(&listener, 1)));
    let bad_path = bad.0.display().to_string();
    let socket = Agent::socket_path().display().to_string();
    let out = Agent::run_to_exit(
        &bed,
        &[
            "run",
            "--iface",
            &bed.srv_veth,
            "--config",
            &bad_path,
            "--control-socket",
            &socket,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(
        errors[0].contains("listeners2") && errors[0].contains("line"),
        "{}",
        errors[0]
    );
    bed.assert_no_xdp("after a refused config file");
}

#[test]
fn root_stats_watch_redraws_in_place() {
    use std::{
        io::Read as _,
        sync::{Arc, Mutex},
    };
    let bed = TestBed::new();
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let agent = Agent::start(&bed, &["--limit", &format!("{listener}=4")]);
    let mut watch = Command::new(limiter_bin())
        .args([
            "stats",
            "--watch",
            "--interval",
            "100ms",
            "--control-socket",
        ])
        .arg(agent.control_socket())
        .stdout(Stdio::piped())
        .spawn()
        .expect("limiter stats --watch");
    let pid = watch.id();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = watch.stdout.take().unwrap();
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        // Bounded: stops at EOF (the watch was interrupted) or after 1 MiB.
        for _ in 0..256 {
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
        }
    });
    let redraws = eventually("three redraws", Duration::from_secs(10), || {
        let n = seen.lock().unwrap().matches("\x1b[H\x1b[2J").count();
        if n >= 3 {
            Ok(n)
        } else {
            Err(format!("{n} redraws"))
        }
    });
    // Stopped like a user's Ctrl-C.
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = watch.wait();
    reader.join().unwrap();
    let out = seen.lock().unwrap().clone();
    assert!(redraws >= 3);
    assert!(
        out.contains("LISTENER") && out.contains(&listener) && out.contains("USE"),
        "{out}"
    );
    assert_eq!(agent.stop(libc::SIGTERM).code(), Some(0));
}

#[test]
fn root_json_logs_one_object_per_lifecycle_event() {
    let bed = TestBed::new();
    let listener = format!("{}:{PORT}", bed.srv_v4);
    let socket = Agent::socket_path().display().to_string();
    let limit = format!("{listener}=2");
    let args = [
        "run",
        "--iface",
        &bed.srv_veth,
        "--limit",
        &limit,
        "--control-socket",
        &socket,
        "--log-format",
        "json",
    ];
    let proc = bed.spawn("limiter run (json logs)", Agent::command(&bed, &args));
    let ready = proc.stderr.next_matching(Duration::from_secs(30), |l| {
        l.contains("\"message\":\"ready\"")
    });
    assert!(
        ready.is_some(),
        "no JSON ready line:\n{}",
        proc.transcript()
    );
    let set = Command::new(limiter_bin())
        .args(["set", &format!("{listener}=3"), "--control-socket", &socket])
        .output()
        .expect("limiter set");
    assert!(set.status.success(), "{set:?}");
    proc.stderr
        .next_matching(Duration::from_secs(10), |l| {
            l.contains("limit set") && l.contains("=3")
        })
        .unwrap_or_else(|| panic!("no log line for the change:\n{}", proc.transcript()));
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(15)).code(), Some(0));
    let lines = proc.stderr.until_closed(Duration::from_secs(5));
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let has = |message: &str, key: &str, value: &str| {
        events.iter().any(|e| {
            e["message"].as_str().is_some_and(|m| m.contains(message))
                && e[key].as_str() == Some(value)
        })
    };
    assert!(has("admitting SYNs", "iface", &bed.srv_veth), "{lines:#?}");
    assert!(has("detaching", "iface", &bed.srv_veth), "{lines:#?}");
    assert!(
        events
            .iter()
            .all(|e| e["level"].is_string() && e["timestamp"].is_string()),
        "{lines:#?}"
    );
    // One line per lifecycle event, nothing per packet: a handful, whatever the traffic.
    assert!(
        events.len() <= 10,
        "{} log lines:\n{lines:#?}",
        events.len()
    );
}
