//! Kernel features (README "Kernels"): the agent probes at start what this kernel can do, and
//! says which features are off, why, and what is lost, in its log once, in `limiter stats` and
//! in the metric `limiter_feature{name}`. Run on every kernel of the matrix (`cargo xtask test`),
//! where the answers differ: Debian 12's 6.1 has no `TCP_BPF_SOCK_OPS_CB_FLAGS` for iterators,
//! so connections that were there first have their close seen by a tracepoint instead. Needs
//! root.
use limiter_tests::{Agent, TestBed, agent::http_get};

/// The features every kernel of the matrix has, whatever else it lacks: without them limiter
/// would lose a contract item on a kernel it claims.
const ON_EVERY_MATRIX_KERNEL: [&str; 2] = ["preexisting", "socket_destroy"];

#[test]
fn root_kernel_features_are_probed_and_reported_everywhere() {
    let bed = TestBed::new();
    let agent = Agent::start(&bed, &["--limit", "8000=2"]);
    let stats = agent.stats();
    let names: Vec<&str> = stats.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "preexisting",
            "preexisting_state_callbacks",
            "socket_destroy"
        ],
        "{stats:?}"
    );
    for name in ON_EVERY_MATRIX_KERNEL {
        let feature = stats.features.iter().find(|f| f.name == name).unwrap();
        assert!(feature.on, "{name} is off on this kernel: {feature:?}");
    }
    // The README's table: sock_ops state callbacks for adopted connections from 6.10 on. (The
    // agent probes; only this test reads the version, to hold the table to what runs.)
    let callbacks = stats
        .features
        .iter()
        .find(|f| f.name == "preexisting_state_callbacks")
        .unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .trim()
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    assert_eq!(
        callbacks.on,
        version >= (6, 10),
        "kernel {release}: README \"Kernels\" says state callbacks from 6.10 on: {callbacks:?}"
    );
    let (status, metrics) = http_get(&bed, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    let log = agent.stderr();
    for feature in &stats.features {
        let sample = format!(
            "limiter_feature{{name=\"{}\"}} {}",
            feature.name,
            u8::from(feature.on)
        );
        assert!(
            metrics.lines().any(|l| l == sample),
            "no `{sample}` in\n{metrics}"
        );
        let warned: Vec<&String> = log
            .iter()
            .filter(|l| {
                l.contains("kernel feature off")
                    && l.contains(&format!("feature=\"{}\"", feature.name))
            })
            .collect();
        if feature.on {
            assert!(
                feature.why.is_none() && feature.loss.is_none(),
                "{feature:?}"
            );
            assert!(
                warned.is_empty(),
                "{} is on, yet warned about: {warned:?}",
                feature.name
            );
        } else {
            // Off: why and what is lost, in stats and once in the log.
            let why = feature.why.as_deref().unwrap_or_default();
            assert!(!why.is_empty() && feature.loss.is_some(), "{feature:?}");
            assert_eq!(
                warned.len(),
                1,
                "{} off: warned {warned:?} in {log:#?}",
                feature.name
            );
            assert!(
                warned[0].contains(why),
                "the warning should say why: {warned:?}"
            );
        }
    }
    // The table says it too, for what is off.
    let table = agent.stats_table();
    for feature in stats.features.iter().filter(|f| !f.on) {
        assert!(
            table.contains(&format!("kernel feature {} off", feature.name)),
            "{table}"
        );
    }
}
