//! The control socket: how `limiter stats | set | unset` talk to a running agent. One JSON
//! request line, one JSON response line, over a Unix socket only root can open.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};

use crate::{
    config::listener::{LimitSpec, Listener, Scope},
    error::AgentError,
    observe::stats::Report,
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Stats,
    Reload,
    /// `netns`: the network namespace's path (`--limit-in`); absent: the agent's own.
    /// `per_source`: the listener's per-source limit rather than its own.
    Set {
        limit: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "is_false")]
        per_source: bool,
    },
    Unset {
        listener: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "is_false")]
        per_source: bool,
    },
}

fn is_false(b: &bool) -> bool {
    !b
}

fn scope(per_source: bool) -> Scope {
    if per_source {
        Scope::PerSource
    } else {
        Scope::Listener
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The bound socket; removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    pub fn bind(path: &Path) -> Result<Self, AgentError> {
        let io_err = |source| AgentError::ControlSocket {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            if StdUnixStream::connect(path).is_ok() {
                return Err(AgentError::ControlSocketInUse(path.to_owned()));
            }
            // Left behind by an agent that was killed: nobody is listening.
            fs::remove_file(path).map_err(io_err)?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        let socket = ControlSocket {
            listener,
            path: path.to_owned(),
        };
        // Changing limits is as privileged as loading the programs.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        Ok(socket)
    }

    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What the control socket asks of the running agent; each error is the reply's message.
pub trait ControlTarget: Send + Sync + 'static {
    /// `limiter stats`.
    fn report(&self) -> Report;
    /// `limiter set`: in the agent's namespace, or in the one at `netns`.
    fn set(&self, netns: Option<&Path>, spec: &LimitSpec) -> Result<String, String>;
    /// `limiter unset`: in the agent's namespace, or in the one at `netns`.
    fn unset(
        &self,
        netns: Option<&Path>,
        listener: &Listener,
        scope: Scope,
    ) -> Result<String, String>;
    /// `limiter reload`.
    fn reload(&self) -> Result<String, String>;
}

/// Serves one client connection: one request, one response.
pub async fn serve(stream: UnixStream, state: Arc<dyn ControlTarget>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, state.as_ref()),
        Err(e) => Response {
            error: Some(format!("bad request: {e}")),
            ..Default::default()
        },
    };
    let mut out = serde_json::to_string(&response).unwrap_or_default();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

fn handle(request: Request, state: &dyn ControlTarget) -> Response {
    let result = match request {
        Request::Reload => state.reload(),
        Request::Stats => {
            return Response {
                report: Some(state.report()),
                ..Default::default()
            };
        }
        Request::Set {
            limit,
            netns,
            per_source,
        } => limit.parse::<LimitSpec>().and_then(|spec| {
            let spec = LimitSpec {
                scope: scope(per_source),
                ..spec
            };
            state.set(netns.as_deref(), &spec)
        }),
        Request::Unset {
            listener,
            netns,
            per_source,
        } => listener
            .parse::<Listener>()
            .map_err(|e| e.to_string())
            .and_then(|l| state.unset(netns.as_deref(), &l, scope(per_source))),
    };
    match result {
        Ok(message) => {
            tracing::info!("{message}");
            Response {
                message: Some(message),
                ..Default::default()
            }
        }
        Err(error) => Response {
            error: Some(error),
            ..Default::default()
        },
    }
}

/// Sends one request to the agent at `path` and returns its response (or its error).
pub fn request(path: &Path, request: &Request) -> anyhow::Result<Response> {
    let stream = StdUnixStream::connect(path).with_context(|| {
        format!("--control-socket {}: cannot reach the agent (is `limiter run` running with this socket?)", path.display())
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .with_context(|| format!("writing to {}", path.display()))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .with_context(|| format!("reading the agent's reply on {}", path.display()))?;
    let response: Response = serde_json::from_str(&reply)
        .with_context(|| format!("agent on {} sent a reply that is not JSON", path.display()))?;
    if let Some(error) = &response.error {
        bail!("{error}");
    }
    Ok(response)
}
