//! `cargo xtask demo`: the two gateway examples limiter is modelled on, replayed for real in two
//! network namespaces joined by a veth pair, narrated step by step. It is also a check: any
//! expectation that does not hold makes it fail (after cleaning up).
//!
//! - Gloo Gateway "Limit active connections" (`maxActiveConnections: 1` on port 8000, a TCP echo
//!   service, telnet clients): `--limit 198.18.0.1:8000=1`.
//! - Envoy Gateway "Connection Limit Example" (`connectionLimit.value: 5`, 10 concurrent clients):
//!   `limiter set 198.18.0.1:8000=5`.
//! - The Gloo guide's `delayBeforeClose: 2s`, as Gloo's gateway-proxy does it: limiter's own proxy
//!   on port 9000 (`--proxy 9000=198.18.0.1:8000 --limit 9000=1:close --delay-before-close 2s`);
//!   the second client's connection opens, then is closed after 2 s.
mod background;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use self::background::{Background, Watch};
use crate::{
    build,
    cmd::{self, Check, command},
    setup,
};

const ECHO_SERVER_PY: &str = include_str!("demo/echo_server.py");
const CLIENT_PY: &str = include_str!("demo/client.py");

const SERVER_ADDR: &str = "198.18.0.1";
const CLIENT_ADDR: &str = "198.18.0.2";
const PREFIX_LEN: u8 = 30;
const PORT: u16 = 8000;
/// The listener as `limiter stats` names it.
const LISTENER: &str = "198.18.0.1:8000";
/// Client connect timeout, as in the guides (`telnet`/`curl` giving up).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A refusal by RST arrives in well under this.
const AT_ONCE: Duration = Duration::from_secs(1);
/// The proxy of the delayed-close walkthrough: a bare port (both families), forwarding to the
/// echo server.
const PROXY_PORT: u16 = 9000;
const PROXY_LISTENER: &str = "9000";
const DELAY_BEFORE_CLOSE: Duration = Duration::from_secs(2);

pub fn main() -> Result<()> {
    if !cmd::is_root() {
        bail!("the demo needs root (network namespaces, XDP, sock_ops): run it as root");
    }
    setup::run()?;
    let agent = build::build_agent(false)?;
    cmd::catch_interrupts()?;
    let mut demo = Demo::new(agent);
    let result = demo.run();
    match &result {
        Err(_) if cmd::interrupted() => eprintln!("\ndemo interrupted"),
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            demo.show_stats_after_failure();
        }
        Ok(()) => {}
    }
    println!("\n==> Clean up");
    drop(demo);
    if cmd::interrupted() {
        bail!("the demo was interrupted (everything it made is removed)");
    }
    result.context("the demo failed")?;
    println!("\ndemo passed: every expectation held");
    Ok(())
}

/// One connection's outcome, from `client.py`'s JSON line.
#[derive(Debug)]
struct Outcome {
    connected: bool,
    /// `timeout`, `refused`, `reset`, or the OS error text.
    error: Option<String>,
    echo: Option<String>,
    elapsed: Duration,
}

impl Outcome {
    fn describe(&self) -> String {
        let ms = self.elapsed.as_millis();
        match (&self.error, &self.echo) {
            (None, Some(echo)) => format!("connected, sent \"hello\", got back {echo:?} ({ms} ms)"),
            (Some(error), _) if self.connected => format!("connected, then {error} ({ms} ms)"),
            (Some(error), _) => format!("not connected: {error} after {ms} ms"),
            (None, None) => format!("connected, no echo ({ms} ms)"),
        }
    }

    fn echoed_hello(&self) -> bool {
        self.connected && self.error.is_none() && self.echo.as_deref() == Some("hello")
    }
}

/// The numbers of one listener in `limiter stats --json`.
#[derive(Debug)]
struct ListenerStats(Value);

impl ListenerStats {
    fn get(&self, field: &str) -> Result<u64> {
        self.0[field]
            .as_u64()
            .with_context(|| format!("`{field}` is not a number in {}", self.0))
    }

    fn action(&self) -> Result<&str> {
        self.0["action"]
            .as_str()
            .with_context(|| format!("`action` is not a string in {}", self.0))
    }
}

/// Everything the demo made; dropping it removes all of it, whatever happened.
struct Demo {
    agent_binary: PathBuf,
    server_ns: String,
    client_ns: String,
    server_veth: String,
    client_veth: String,
    control_socket: PathBuf,
    /// Set once the agent was started with `control_socket` (only then is it ours to remove).
    socket_ours: bool,
    /// Files the demo wrote (removed at the end).
    /// Namespaces created so far (only these are deleted).
    namespaces: Vec<String>,
    echo_server: Option<Background>,
    agent: Option<Background>,
    /// Clients holding their connections open.
    holders: Vec<Background>,
}

impl Demo {
    fn new(agent_binary: PathBuf) -> Self {
        let pid = std::process::id();
        Self {
            agent_binary,
            server_ns: format!("lim-demo-srv-{pid}"),
            client_ns: format!("lim-demo-cli-{pid}"),
            // Interface names are at most 15 bytes; a Linux pid has at most 7 digits.
            server_veth: format!("ldS{pid}"),
            client_veth: format!("ldC{pid}"),
            control_socket: PathBuf::from(format!("/tmp/lim-demo-{pid}.sock")),
            socket_ours: false,
            namespaces: Vec::new(),
            echo_server: None,
            agent: None,
            holders: Vec::new(),
        }
    }

    fn run(&mut self) -> Result<()> {
        self.make_network().context("setting up the namespaces")?;
        self.start_echo_server()
            .context("starting the echo server")?;
        self.start_agent().context("starting the agent")?;
        self.gloo_gateway_guide()
            .context("replaying the Gloo Gateway guide")?;
        self.envoy_gateway_example()
            .context("replaying the Envoy Gateway example")?;
        self.gloo_gateway_delayed_close()
            .context("replaying the Gloo Gateway guide's delayed close")?;
        self.stop_agent().context("stopping the agent")?;
        Ok(())
    }

    // ---- steps ----------------------------------------------------------------------------

    fn make_network(&mut self) -> Result<()> {
        step("Two network namespaces joined by a veth pair: a server and a client");
        for ns in [self.server_ns.clone(), self.client_ns.clone()] {
            cmd::run(command("ip").args(["netns", "add", &ns]))?;
            self.namespaces.push(ns);
        }
        cmd::run(command("ip").args([
            "-n",
            &self.server_ns,
            "link",
            "add",
            &self.server_veth,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_veth,
            "netns",
            &self.client_ns,
        ]))?;
        for (ns, veth, addr) in [
            (&self.server_ns, &self.server_veth, SERVER_ADDR),
            (&self.client_ns, &self.client_veth, CLIENT_ADDR),
        ] {
            let cidr = format!("{addr}/{PREFIX_LEN}");
            cmd::run(command("ip").args(["-n", ns, "addr", "add", &cidr, "dev", veth]))?;
            cmd::run(command("ip").args(["-n", ns, "link", "set", veth, "up"]))?;
            cmd::run(command("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        Ok(())
    }

    fn start_echo_server(&mut self) -> Result<()> {
        step(&format!(
            "A TCP echo server on {SERVER_ADDR}:{PORT} in the server namespace (the guide's tcp-echo)"
        ));
        let mut server = command("ip");
        server
            .args([
                "netns",
                "exec",
                &self.server_ns,
                "python3",
                "-c",
                ECHO_SERVER_PY,
            ])
            .args([SERVER_ADDR, &PORT.to_string()]);
        let server = self.echo_server.insert(Background::spawn(
            "the echo server",
            &mut server,
            Watch::Stdout,
            Some("    echo-server| "),
            false,
        )?);
        let mut ss = command("ip");
        ss.args(["netns", "exec", &self.server_ns]).args([
            "ss",
            "-Hltn",
            "sport",
            "=",
            &format!(":{PORT}"),
        ]);
        println!("waiting for it to listen:");
        cmd::echo(&ss);
        cmd::poll_until(
            "the echo server to listen",
            SETTLE_TIMEOUT,
            POLL_INTERVAL,
            || {
                if let Some(status) = server.exited()? {
                    bail!("the echo server exited ({status})");
                }
                let listening = cmd::output_quiet(&mut ss)?;
                Ok(if listening.trim().is_empty() {
                    Check::NotYet("no listening socket yet".into())
                } else {
                    Check::Done(())
                })
            },
        )?;
        println!("listening");
        Ok(())
    }

    fn start_agent(&mut self) -> Result<()> {
        step("Start limiter in the server namespace: one active connection on 198.18.0.1:8000");
        say("Gloo Gateway: `connectionLimit: maxActiveConnections: 1` on bindPort 8000");
        say(
            "limiter:      `--limit 198.18.0.1:8000=1` (over the limit: drop the SYN, the default)",
        );
        say(&format!(
            "and a forwarding proxy on port {PROXY_PORT} for the guide's `delayBeforeClose: 2s` (used last)"
        ));
        say("nsenter --net enters only the network namespace, so the agent still sees the host's");
        say("cgroup v2 and bpffs mounts (`ip netns exec` would hide them).");
        let mut agent = command("nsenter");
        agent
            .arg(format!("--net=/run/netns/{}", self.server_ns))
            .arg(&self.agent_binary)
            .args(["run", "--iface", &self.server_veth])
            .args(["--limit", &format!("{LISTENER}=1")])
            .args(["--proxy", &format!("{PROXY_PORT}={SERVER_ADDR}:{PORT}")])
            .args(["--limit", &format!("{PROXY_LISTENER}=1:close")])
            .args([
                "--delay-before-close",
                &format!("{}s", DELAY_BEFORE_CLOSE.as_secs()),
            ])
            .arg("--control-socket")
            .arg(&self.control_socket);
        self.socket_ours = true;
        let agent = self.agent.insert(Background::spawn(
            "the agent",
            &mut agent,
            Watch::Stderr,
            Some("    agent| "),
            false,
        )?);
        agent.wait_for_line("`limiter: ready`", READY_TIMEOUT, |line| {
            line.trim() == "limiter: ready"
        })?;
        Ok(())
    }

    fn gloo_gateway_guide(&mut self) -> Result<()> {
        step("Gloo Gateway guide: `telnet <gateway> 8000`, type hello, keep the session open");
        let (holder, outcomes) = self.clients("client 1", 1, true)?;
        self.holders.extend(holder);
        let first = &outcomes[0];
        println!("client 1: {}", first.describe());
        expect(
            first.echoed_hello(),
            "client 1 connects and its hello is echoed",
        )?;
        self.wait_for_active(1)?;

        step("Gloo Gateway guide: a second telnet while the first is open is refused");
        let (_, outcomes) = self.clients("client 2", 1, false)?;
        let second = &outcomes[0];
        println!("client 2: {}", second.describe());
        expect(
            !second.connected && second.error.as_deref() == Some("timeout"),
            "client 2 gets no connection: its SYN is dropped, so connect times out after 3 s",
        )?;

        step("What limiter counted");
        self.show_stats()?;
        let stats = self.stats()?;
        expect(stats.get("active")? == 1, "active is 1 (client 1)")?;
        expect(
            stats.get("admitted_total")? == 1,
            "admitted_total is 1 (only client 1 got in)",
        )?;
        expect(
            stats.get("refused_drop_total")? >= 1,
            "refused_drop_total counts client 2's SYNs (with retransmissions)",
        )?;

        step("Refuse with a RST instead: the client hears `connection refused` at once");
        self.limiter_set(&format!("{LISTENER}=1:reset"))?;
        let (_, outcomes) = self.clients("client 3", 1, false)?;
        let third = &outcomes[0];
        println!("client 3: {}", third.describe());
        expect(
            !third.connected
                && third.error.as_deref() == Some("refused")
                && third.elapsed < AT_ONCE,
            "client 3 gets `connection refused` within 1 s",
        )?;
        let stats = self.stats()?;
        expect(
            stats.get("refused_reset_total")? >= 1,
            "refused_reset_total counts client 3's SYN",
        )?;

        step("Close client 1 (end the telnet session): the count goes back to 0");
        self.close_holders()?;
        self.wait_for_active(0)?;
        Ok(())
    }

    fn envoy_gateway_example(&mut self) -> Result<()> {
        step("Envoy Gateway example: `connectionLimit.value: 5`, changed on the running agent");
        self.limiter_set(&format!("{LISTENER}=5"))?;
        let stats = self.stats()?;
        expect(stats.get("limit")? == 5, "the listener's limit is now 5")?;
        let action = stats.action()?.to_string();
        let refusal = match action.as_str() {
            "drop" => "timeout",
            "reset" => "refused",
            other => bail!("unexpected action {other:?} in limiter stats"),
        };
        say(&format!(
            "over the limit: {action} (a refused client sees: {refusal})"
        ));

        step("Envoy Gateway example: 10 concurrent connections, all held open");
        let (holder, outcomes) = self.clients("10 clients", 10, true)?;
        self.holders.extend(holder);
        for (i, outcome) in outcomes.iter().enumerate() {
            println!("client {:>2}: {}", i + 1, outcome.describe());
        }
        let admitted = outcomes.iter().filter(|o| o.echoed_hello()).count();
        let refused = outcomes
            .iter()
            .filter(|o| !o.connected && o.error.as_deref() == Some(refusal))
            .count();
        expect(
            admitted == 5 && refused == 5,
            &format!(
                "5 connect and 5 are refused ({refusal}) (saw {admitted} connected, {refused} refused)"
            ),
        )?;
        self.wait_for_active(5)?;
        self.show_stats()?;

        step("Close all 10 clients: the count goes back to 0");
        self.close_holders()?;
        self.wait_for_active(0)?;
        self.show_stats()?;
        Ok(())
    }

    fn gloo_gateway_delayed_close(&mut self) -> Result<()> {
        step(&format!(
            "Gloo Gateway guide with `delayBeforeClose: 2s`: through limiter's proxy on port {PROXY_PORT}"
        ));
        say(
            "Gloo's gateway-proxy accepts the over-limit connection and closes it after the delay;",
        );
        say("limiter's proxy does the same, and the held connection never counts as active.");
        let (holder, outcomes) = self.clients_to(PROXY_PORT, "client 1", 1, true)?;
        self.holders.extend(holder);
        println!("client 1: {}", outcomes[0].describe());
        expect(
            outcomes[0].echoed_hello(),
            "client 1 connects through the proxy and its hello is echoed",
        )?;
        self.wait_for_active_of(PROXY_LISTENER, 1)?;

        step("A second telnet: `Connected`, then `Connection closed by foreign host` after 2 s");
        let (_, outcomes) = self.clients_to(PROXY_PORT, "client 2", 1, false)?;
        let second = &outcomes[0];
        println!("client 2: {}", second.describe());
        let held_for = second.elapsed;
        expect(
            second.connected
                && second.error.is_none()
                && second.echo.as_deref() == Some("")
                && held_for >= DELAY_BEFORE_CLOSE - Duration::from_millis(200)
                && held_for < DELAY_BEFORE_CLOSE * 2,
            "client 2 connects, gets nothing back, and is closed after about 2 s",
        )?;
        self.show_stats()?;
        let stats = self.stats_of(PROXY_LISTENER)?;
        expect(
            stats.get("active")? == 1,
            "active is 1: the held connection was not counted",
        )?;
        expect(stats.get("held_total")? == 1, "held_total is 1 (client 2)")?;

        step("Close client 1: the count goes back to 0");
        self.close_holders()?;
        self.wait_for_active_of(PROXY_LISTENER, 0)?;
        Ok(())
    }

    fn stop_agent(&mut self) -> Result<()> {
        step("Stop the agent with SIGTERM: it detaches everything and exits 0");
        let Some(agent) = self.agent.as_mut() else {
            bail!("the agent is not running");
        };
        println!("$ kill -TERM {}", agent.pid());
        agent.signal(libc::SIGTERM)?;
        let status = agent.wait(SETTLE_TIMEOUT)?;
        expect(status.success(), &format!("the agent exits 0 ({status})"))?;
        expect(
            !self.control_socket.exists(),
            "the agent removed its control socket",
        )?;
        Ok(())
    }

    // ---- helpers --------------------------------------------------------------------------

    /// Run `client.py` in the client namespace: `count` connections at once. With `hold`, the
    /// returned process keeps the connected ones open until [`Self::close_holders`].
    fn clients(
        &self,
        label: &str,
        count: usize,
        hold: bool,
    ) -> Result<(Option<Background>, Vec<Outcome>)> {
        self.clients_to(PORT, label, count, hold)
    }

    /// [`Self::clients`] to another port of the server.
    fn clients_to(
        &self,
        port: u16,
        label: &str,
        count: usize,
        hold: bool,
    ) -> Result<(Option<Background>, Vec<Outcome>)> {
        let mut client = command("ip");
        client
            .args(["netns", "exec", &self.client_ns, "python3", "-c", CLIENT_PY])
            .args([SERVER_ADDR, &port.to_string(), &count.to_string()])
            .arg(CONNECT_TIMEOUT.as_secs().to_string())
            .arg(if hold { "hold" } else { "close" });
        let mut process = Background::spawn(label, &mut client, Watch::Stdout, None, hold)?;
        let line =
            process.wait_for_line("its results", CONNECT_TIMEOUT + SETTLE_TIMEOUT, |line| {
                line.starts_with('{')
            })?;
        let outcomes =
            parse_outcomes(&line).with_context(|| format!("reading {label}'s results: {line}"))?;
        if outcomes.len() != count {
            bail!("{label}: expected {count} results, got {}", outcomes.len());
        }
        if hold {
            Ok((Some(process), outcomes))
        } else {
            let status = process.wait(SETTLE_TIMEOUT)?;
            if !status.success() {
                bail!("{label} failed ({status})");
            }
            Ok((None, outcomes))
        }
    }

    /// Let every holding client close its connections and exit.
    fn close_holders(&mut self) -> Result<()> {
        for mut holder in self.holders.drain(..) {
            println!("closing {} (pid {})", holder.label(), holder.pid());
            holder.close_stdin();
            let status = holder.wait(SETTLE_TIMEOUT)?;
            if !status.success() {
                bail!("{} failed ({status})", holder.label());
            }
        }
        Ok(())
    }

    fn limiter(&self) -> Command {
        let mut limiter = command(&self.agent_binary);
        limiter.env_remove("LIMITER_CONTROL_SOCKET");
        limiter
    }

    fn limiter_set(&self, spec: &str) -> Result<()> {
        cmd::run(
            self.limiter()
                .args(["set", spec, "--control-socket"])
                .arg(&self.control_socket),
        )
    }

    /// `limiter stats` as a user reads it.
    fn show_stats(&self) -> Result<()> {
        cmd::run(
            self.limiter()
                .args(["stats", "--control-socket"])
                .arg(&self.control_socket),
        )
    }

    /// Best effort, for the reader of a failed run: what the agent counted, if it still runs.
    fn show_stats_after_failure(&mut self) {
        let running = match self.agent.as_mut().map(Background::exited) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        };
        if running {
            println!("\n==> What limiter counted when the demo failed");
            let _ = cmd::run(&mut self.stats_command());
        }
    }

    fn stats_command(&self) -> Command {
        let mut stats = self.limiter();
        stats
            .args(["stats", "--json", "--control-socket"])
            .arg(&self.control_socket);
        stats
    }

    /// This demo's listener in `limiter stats --json` (not echoed: used for checks and polls).
    fn stats(&self) -> Result<ListenerStats> {
        self.stats_of(LISTENER)
    }

    fn stats_of(&self, listener: &str) -> Result<ListenerStats> {
        let json = cmd::output_quiet(&mut self.stats_command())?;
        listener_stats(&json, listener)
    }

    /// Poll `limiter stats --json` until the listener's `active` is `want`.
    fn wait_for_active(&self, want: u64) -> Result<()> {
        self.wait_for_active_of(LISTENER, want)
    }

    fn wait_for_active_of(&self, listener: &str, want: u64) -> Result<()> {
        println!("waiting for active = {want}:");
        cmd::echo(&self.stats_command());
        cmd::poll_until(
            &format!("active = {want}"),
            SETTLE_TIMEOUT,
            POLL_INTERVAL,
            || {
                let stats = self.stats_of(listener)?;
                let active = stats.get("active")?;
                Ok(if active == want {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("active = {active} ({})", stats.0))
                })
            },
        )?;
        println!("ok: active = {want}");
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Clients first, then the agent (it detaches its programs), then the echo server.
        self.holders.clear();
        self.agent.take();
        self.echo_server.take();
        for ns in self.namespaces.drain(..).rev() {
            let mut delete = command("ip");
            delete.args(["netns", "del", &ns]);
            if let Err(e) = cmd::run(&mut delete) {
                eprintln!("cleanup: warning: {e:#}");
            }
        }
        if self.socket_ours {
            remove_if_present(&self.control_socket);
        }
    }
}

fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => println!("cleanup: removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("cleanup: warning: removing {}: {e}", path.display()),
    }
}

fn step(title: &str) {
    println!("\n==> {title}");
}

fn say(text: &str) {
    println!("    {text}");
}

fn expect(holds: bool, what: &str) -> Result<()> {
    if holds {
        println!("ok: {what}");
        Ok(())
    } else {
        bail!("expectation failed: {what}")
    }
}

fn parse_outcomes(line: &str) -> Result<Vec<Outcome>> {
    let value: Value = serde_json::from_str(line).context("not JSON")?;
    let results = value["results"].as_array().context("no `results` array")?;
    results
        .iter()
        .map(|r| {
            Ok(Outcome {
                connected: r["connected"].as_bool().context("no `connected`")?,
                error: r["error"].as_str().map(str::to_string),
                echo: r["echo"].as_str().map(str::to_string),
                elapsed: Duration::from_millis(r["ms"].as_u64().context("no `ms`")?),
            })
        })
        .collect()
}

fn listener_stats(json: &str, listener: &str) -> Result<ListenerStats> {
    let value: Value = serde_json::from_str(json).context("`limiter stats --json` is not JSON")?;
    value["listeners"]
        .as_array()
        .context("`limiter stats --json` has no `listeners` array")?
        .iter()
        .find(|l| l["listener"].as_str() == Some(listener))
        .map(|l| ListenerStats(l.clone()))
        .with_context(|| format!("`limiter stats --json` does not list {listener}: {json}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_results() {
        let line = r#"{"results": [{"connected": true, "error": null, "echo": "hello", "ms": 2},
            {"connected": false, "error": "timeout", "echo": null, "ms": 3004}]}"#;
        let outcomes = parse_outcomes(line).unwrap();
        assert!(outcomes[0].echoed_hello());
        assert!(!outcomes[1].connected);
        assert_eq!(outcomes[1].error.as_deref(), Some("timeout"));
        assert_eq!(outcomes[1].elapsed, Duration::from_millis(3004));
    }

    #[test]
    fn finds_the_listener_in_stats() {
        let json = r#"{"listeners": [{"listener": "198.18.0.1:8000", "limit": 5, "action": "drop",
            "active": 2}], "packets": {}}"#;
        let stats = listener_stats(json, LISTENER).unwrap();
        assert_eq!(stats.get("active").unwrap(), 2);
        assert_eq!(stats.action().unwrap(), "drop");
        assert!(listener_stats(json, "8000").is_err());
    }

    #[test]
    fn names_fit_in_an_interface_name() {
        let demo = Demo::new(PathBuf::from("limiter"));
        assert!(demo.server_veth.len() <= 15 && demo.client_veth.len() <= 15);
        assert!(format!("ldS{}", 4_194_304).len() <= 15);
    }
}
