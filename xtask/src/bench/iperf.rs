//! iperf3 on the test bed: a server in one namespace (a [`Process`] the bench owns) and a
//! client run to completion in the other, its JSON report read for the bitrate.
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{netns, process::Process};
use crate::cmd::{self, command};

/// `iperf3 -s` listening on `addr:port` in namespace `ns`, its process pinned to `cpu`. Stopped
/// (by PID) when dropped.
pub struct Server {
    _process: Process,
}

impl Server {
    pub fn start(ns: &str, addr: &str, port: u16, cpu: usize) -> Result<Server> {
        let process = Process::spawn(
            "iperf3 -s",
            command("ip")
                .args(["netns", "exec", ns, "iperf3", "-s", "-B", addr])
                .args(["-p", &port.to_string(), "-A", &cpu.to_string()]),
        )?;
        netns::wait_listening(ns, port, "iperf3 -s", Duration::from_secs(10), || {
            process.tail()
        })?;
        Ok(Server { _process: process })
    }
}

/// `iperf3 --version`'s first line, for the report.
pub fn version() -> Result<String> {
    let text = cmd::output_quiet(command("iperf3").arg("--version")).context("iperf3 --version")?;
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// One iperf3 test, one TCP stream: `iperf3 -c addr -p port -t seconds` in namespace `ns`,
/// pinned to `cpu`, killed if it runs 30 s past its length (a stalled proxy). Returns the
/// receiver's bitrate (bits/s).
pub fn throughput(ns: &str, addr: &str, port: u16, seconds: u64, cpu: usize) -> Result<f64> {
    let seconds = seconds.max(1);
    let text = cmd::output_quiet(
        command("timeout")
            .arg((seconds + 30).to_string())
            .args(["ip", "netns", "exec", ns, "iperf3", "-c", addr, "-J"])
            .args(["-p", &port.to_string(), "-t", &seconds.to_string()])
            .args(["-A", &cpu.to_string()]),
    )
    .with_context(|| format!("iperf3 -c {addr} -p {port}"))?;
    bitrate(&text)
}

/// The receiver's bits per second from `iperf3 -J` output.
fn bitrate(json: &str) -> Result<f64> {
    let report: Value = serde_json::from_str(json).context("iperf3 -J printed no JSON")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's report")
}

#[cfg(test)]
mod tests {
    use super::bitrate;

    #[test]
    fn bitrate_is_the_receivers() {
        let json = r#"{"end": {"sum_sent": {"bits_per_second": 2e9},
                        "sum_received": {"bits_per_second": 1.5e9}}}"#;
        assert_eq!(bitrate(json).unwrap(), 1.5e9);
        let err = bitrate(r#"{"error": "unable to connect to server"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
    }
}
