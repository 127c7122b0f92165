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

    /// `GET PATH` on Prometheus: the status and the body.
    fn get(&self, path: &str) -> (u16, String) {
        let script = format!(
            "import sys, urllib.request, urllib.error\n\
             try:\n    r = urllib.request.urlopen('http://{ADDR}' + sys.argv[1], timeout=10); print(r.status); print(r.read().decode())\n\
             except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n\
             except OSError as e:\n    print(0); print(e)\n"
        );
        let out = self
            .bed
            .exec_ok(Side::Server, "python3", &["-c", &script, path]);
        let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// The series an instant query returns now (`data.result`); panics if the query fails.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
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
