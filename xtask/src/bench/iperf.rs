//! iperf3 on the test bed: a server in one namespace (a [`Process`] the bench owns) and a
//! client run to completion in the other, its JSON report read for the bitrate.
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{netns::TestBed, process::Process};
use crate::cmd::{self, command};

/// `iperf3 -s` listening on `addr:port` in namespace `ns`, its process pinned to `cpu`. Stopped
/// (by PID) when dropped.
pub struct Server {
    _process: Process,
}

impl Server {
    pub fn start(bed: &TestBed, ns: &str, addr: &str, port: u16, cpu: usize) -> Result<Server> {
        let process = Process::spawn(
            "iperf3 -s",
            command("ip").args(["netns", "exec", ns]).args([
                "iperf3",
                "-s",
                "-B",
                addr,
                "-p",
                &port.to_string(),
                "-A",
                &cpu.to_string(),
            ]),
        )?;
        let filter = format!("sport = :{port}");
        cmd::poll_until(
            &format!("iperf3 to listen on {addr}:{port}"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let listening = bed.exec(ns, &["ss", "-Hltn", &filter])?;
                Ok(if listening.trim().is_empty() {
                    cmd::Check::NotYet("not listening yet".into())
                } else {
                    cmd::Check::Done(())
                })
            },
        )?;
        Ok(Server { _process: process })
    }
}

/// Runs `iperf3 -c addr -p port -t seconds` in namespace `ns` pinned to `cpu`, one TCP stream,
/// and returns the receiver's bitrate (bits/s).
pub fn throughput(
    bed: &TestBed,
    ns: &str,
    addr: &str,
    port: u16,
    seconds: u64,
    cpu: usize,
) -> Result<f64> {
    let text = bed
        .exec(
            ns,
            &[
                "iperf3",
                "-c",
                addr,
                "-p",
                &port.to_string(),
                "-t",
                &seconds.to_string(),
                "-A",
                &cpu.to_string(),
                "-J",
            ],
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
