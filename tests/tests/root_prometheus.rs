//! deploy/monitoring checked by the real thing: Debian's Prometheus scrapes a running agent
//! under load (a listener held at its limit with refusals, one with a per-source limit at it,
//! one in flood mode under a forged SYN flood, a limit nothing listens on) and evaluates the
//! shipped alerting rules. Every dashboard query returns series; the alerts whose condition
//! holds here return the listener they concern and are pending in Prometheus; the others' metrics
//! are all there (their conditions, a kernel feature off or a failed reset, are the promtool
//! unit tests'); and with the agent stopped, LimiterAgentDown's expression holds. Needs root.
use std::{collections::BTreeSet, path::Path, time::Duration};

use limiter_tests::{
    Agent, Side, TestBed,
    client::{EchoServer, Hold, ServerMode, addr},
    eventually,
    flood::Flood,
    prometheus::Prometheus,
};
use serde_json::Value;

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/monitoring");
const SETTLE: Duration = Duration::from_secs(60);

/// The shipped alerting rules: (alert, expr).
fn alerts() -> Vec<(String, String)> {
    let path = Path::new(MONITORING).join("limiter-rules.yaml");
    let script = "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)";
    let out = limiter_tests::process::run_ok("python3", &["-c", script, path.to_str().unwrap()]);
    let rules: Value = serde_json::from_str(&out).expect("rules as JSON");
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_string(),
                r["expr"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Every `expr` of the dashboard's panels, with its variables as Grafana would fill them for
/// "All" and a 1m rate interval.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(MONITORING).join("grafana-dashboard.json"))
        .expect("grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut found = Vec::new();
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    found.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    walk(&dashboard["panels"], &mut found);
    assert!(
        found.len() >= 10,
        "the dashboard has {} queries",
        found.len()
    );
    found
        .into_iter()
        .map(|e| {
            e.replace("$instance", ".*")
                .replace("$listener", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect()
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b(limiter_[a-z_]+|up)\b").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

#[test]
fn root_a_real_prometheus_evaluates_the_shipped_alerts_and_dashboard() {
    let bed = TestBed::new();
    let [at_limit, per_source, flooded, unbound] =
        [8000, 8001, 8002, 8003].map(|port| addr(bed.srv_v4, port));
    let _servers = [&at_limit, &per_source, &flooded]
        .map(|a| EchoServer::start(&bed, Side::Server, a, ServerMode::Echo));
    let agent = Agent::start(
        &bed,
        &[
            "--limit",
            &format!("{at_limit}=2:reset"),
            "--limit-per-source",
            &format!("{per_source}=1:reset"),
            "--limit",
            &format!("{flooded}=10:drop"),
            "--limit",
            &format!("{unbound}=5"),
        ],
    );
    let flood = Flood::start(&bed, &bed.srv_v4.to_string(), 8002, 2_000, 30);
    agent.wait_listener(&flooded, "flood mode", SETTLE, |l| l.mode == "flood");
    let rules = Path::new(MONITORING).join("limiter-rules.yaml");
    let prometheus = Prometheus::start(&bed, "127.0.0.1:9464", &[&rules]);

    // The load: a flood long enough for the whole check (above; the tool floods at most 30 s),
    // one listener full with a
    // refusal, one source at its limit with a refusal.
    let held = Hold::open(&bed, 2, &at_limit, 2000);
    assert_eq!(held.result.connected, 2, "{:?}", held.result);
    let over = Hold::open(&bed, 1, &at_limit, 2000);
    assert_eq!(over.result.refused, 1, "{:?}", over.result);
    let held_source = Hold::open(&bed, 1, &per_source, 2000);
    let over_source = Hold::open(&bed, 1, &per_source, 2000);
    assert_eq!(
        (held_source.result.connected, over_source.result.refused),
        (1, 1)
    );
    eventually("three scrapes of the agent under load", SETTLE, || {
        let scrapes = prometheus.query("count_over_time(limiter_listener_flood_mode[1m]) >= 3");
        if scrapes.is_empty() {
            Err("fewer than 3 scrapes".to_string())
        } else {
            Ok(())
        }
    });

    for query in dashboard_queries() {
        let series = prometheus.query(&query);
        assert!(
            !series.is_empty(),
            "the dashboard's {query:?} returned nothing"
        );
    }

    let alerts = alerts();
    let holds_here = [
        ("LimiterListenerAtLimit", at_limit.as_str()),
        ("LimiterListenerInFloodMode", flooded.as_str()),
        ("LimiterLimitNothingListensOn", unbound.as_str()),
    ];
    for (name, listener) in holds_here {
        let (_, expr) = alerts
            .iter()
            .find(|(alert, _)| alert == name)
            .unwrap_or_else(|| panic!("no alert {name} in limiter-rules.yaml"));
        let series = prometheus.query(expr);
        let listeners: Vec<&str> = series
            .iter()
            .filter_map(|s| s["metric"]["listener"].as_str())
            .collect();
        assert_eq!(listeners, [listener], "{name}: {expr}: {series:?}");
        eventually(
            &format!("{name} pending or firing for {listener}"),
            SETTLE,
            || {
                let pending = prometheus.query(&format!(
                    "ALERTS{{alertname=\"{name}\",listener=\"{listener}\"}}"
                ));
                if pending.is_empty() {
                    Err(name.to_string())
                } else {
                    Ok(())
                }
            },
        );
    }
    // The rest hold on a healthy node only when something is wrong: none returns a series,
    // and every metric each reads is there.
    for (name, expr) in alerts
        .iter()
        .filter(|(a, _)| !holds_here.iter().any(|(h, _)| h == a))
    {
        let series = prometheus.query(expr);
        assert!(
            series.is_empty(),
            "{name} holds on a healthy agent: {expr}: {series:?}"
        );
        for metric in metric_names(expr) {
            assert!(
                !prometheus.query(&metric).is_empty(),
                "{name} reads {metric}, which the agent does not export: {expr}"
            );
        }
    }

    // The agent goes: the scrapes fail and LimiterAgentDown's expression holds.
    let flood_result = flood.finish();
    assert!(flood_result.sent > 0, "{flood_result:?}");
    drop((held, over, held_source, over_source));
    drop(agent);
    let (_, down) = alerts
        .iter()
        .find(|(alert, _)| alert == "LimiterAgentDown")
        .expect("LimiterAgentDown");
    eventually("LimiterAgentDown's expression to hold", SETTLE, || {
        if prometheus.query(down).is_empty() {
            Err(down.clone())
        } else {
            Ok(())
        }
    });
}
