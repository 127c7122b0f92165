//! A real Prometheus (Debian's) in the bed's server namespace, scraping the agent's `/metrics`
//! there every second as the job `limiter` and evaluating rule files, queried over its HTTP API.
//! Its data directory is removed when it drops.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use crate::{Side, netns::TestBed, poll::eventually, process::Proc};

/// Where Prometheus listens, inside the server namespace (nothing else there uses it).
const ADDR: &str = "127.0.0.1:9090";

pub struct Prometheus<'a> {
    bed: &'a TestBed,
    _proc: Proc,
    dir: PathBuf,
}

impl<'a> Prometheus<'a> {
    /// Starts Prometheus scraping `target` (`HOST:PORT`, in the server namespace) with
    /// `rule_files`, and waits until it is ready.
    pub fn start(bed: &'a TestBed, target: &str, rule_files: &[&Path]) -> Prometheus<'a> {
        let dir = std::env::temp_dir().join(crate::names::unique("prometheus", bed.id));
        std::fs::create_dir_all(&dir).expect("creating Prometheus's directory");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: limiter\n    static_configs:\n      - targets: ['{target}']\n",
            rules.concat()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let config_arg = format!("--config.file={}", config_path.display());
        let storage = format!("--storage.tsdb.path={}", dir.join("data").display());
        let listen = format!("--web.listen-address={ADDR}");
        let proc = bed.spawn(
            "prometheus",
            bed.command(
                Side::Server,
                "prometheus",
                &[&config_arg, &storage, &listen],
            ),
        );
        let prometheus = Prometheus {
            bed,
            _proc: proc,
            dir,
        };
        eventually(
            "Prometheus to be ready",
            Duration::from_secs(60),
            || match prometheus.get("/-/ready") {
                (200, _) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        prometheus
    }

    /// `GET PATH` on Prometheus: the status and the body (status 0: nothing answered yet).
    fn get(&self, path: &str) -> (u16, String) {
        crate::agent::http_get_url(self.bed, &format!("http://{ADDR}{path}"))
    }

    /// The series an instant query returns now (`data.result`); panics if the query fails.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let encoded: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let (status, body) = self.get(&format!("/api/v1/query?query={encoded}"));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("query {expr:?}: HTTP {status}, not JSON ({e}): {body}"));
        assert_eq!(answer["status"], "success", "query {expr:?}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        crate::process::stop(&self._proc.shared());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
