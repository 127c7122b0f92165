//! The agent's log: one line per lifecycle event (attached, limit changed, reload, detach) on
//! stderr, naming the interface, listener or file it concerns. Nothing is logged per packet or
//! per connection. `--log-format human` (default) prints `limiter: <message> key=value ...`;
//! `json` prints one JSON object per line for log collectors. The kernel programs' rare events
//! (aya-log: a RST that fell back to a drop, a full table, a failed keepalive) come through the
//! `log` facade into the same output, `--log-level` deciding for both.
use std::fmt;

use crate::config::cli::{LogFormat, LogLevel};
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    filter::{LevelFilter, Targets},
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

impl LogLevel {
    fn tracing(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }

    /// aya-log's level number (`AYA_LOG_LEVEL`: a statement logs when its level is at most
    /// this), written into the kernel object before it is loaded, so that the verifier drops
    /// the statements of disabled levels and they cost nothing.
    pub fn kernel(self) -> u8 {
        let level = match self {
            LogLevel::Error => aya_log::Level::Error,
            LogLevel::Warn => aya_log::Level::Warn,
            LogLevel::Info => aya_log::Level::Info,
            LogLevel::Debug => aya_log::Level::Debug,
            LogLevel::Trace => aya_log::Level::Trace,
        };
        level as u8
    }
}

/// The level set by [`init`], for the kernel objects loaded after it.
static LEVEL: std::sync::OnceLock<LogLevel> = std::sync::OnceLock::new();

pub fn level() -> LogLevel {
    LEVEL.get().copied().unwrap_or_default()
}

pub fn init(format: LogFormat, level: LogLevel) {
    let _ = LEVEL.set(level);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter(level));
    // A second init (tests, or a library user) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => registry.with(layer.event_format(Human)).try_init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .try_init(),
    };
}

/// What `--log-level` lets through. kube-client logs every failed API request at ERROR
/// (`failed with error client error (Connect)` while the API server is not up yet); the watch
/// loop already says each of those, with what it was watching, as a warning that it retries.
/// So kube-client's own lines are shown only with `--log-level debug` or `trace`.
fn filter(level: LogLevel) -> Targets {
    let kube_client = if level >= LogLevel::Debug {
        LevelFilter::from_level(level.tracing())
    } else {
        LevelFilter::OFF
    };
    Targets::new()
        .with_default(level.tracing())
        .with_target("kube_client", kube_client)
}

/// `limiter: <message> key=value ...`: the agent's lines read like its errors, and scripts can
/// wait for `limiter: ready`.
///
/// `limiter: error:` is the line the agent exits with (printed by main, not through here), as
/// the README says. Nothing logged while the agent goes on may look like it: an ERROR event of
/// the agent's or of a library's is written `limiter: warn:`, and a library's line names its
/// crate (`limiter: warn: kube_runtime::watcher: ...`).
struct Human;

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "limiter: ")?;
        if *event.metadata().level() <= tracing::Level::WARN {
            write!(writer, "warn: ")?;
        }
        let target = event.metadata().target();
        // The agent's own lines (and the kernel programs', which come through `log`) say what
        // they concern; a library's is named by its crate.
        let ours = target.starts_with("limiter") || target == "log";
        if !ours {
            write!(writer, "{target}: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// The human lines `emit` logs at `level`.
    fn lines(level: LogLevel, emit: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .event_format(Human);
        let subscriber = tracing_subscriber::registry()
            .with(filter(level))
            .with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn nothing_that_goes_on_reads_as_the_fatal_error_line() {
        let got = lines(LogLevel::Info, || {
            tracing::error!(target: "kube_client::client::builder", "failed with error client error (Connect)");
            tracing::error!(target: "kube_runtime::watcher", "got deleted event during initial watch");
            tracing::error!("over-limit connections cannot be reset");
            tracing::warn!(
                error = "client error (Connect)",
                "kubernetes: watching pods"
            );
            tracing::info!("ready");
        });
        assert_eq!(
            got,
            [
                "limiter: warn: kube_runtime::watcher: got deleted event during initial watch",
                "limiter: warn: over-limit connections cannot be reset",
                "limiter: warn: kubernetes: watching pods error=\"client error (Connect)\"",
                "limiter: ready",
            ]
        );
    }

    #[test]
    fn kube_clients_request_failures_show_at_debug() {
        let got = lines(LogLevel::Debug, || {
            tracing::error!(target: "kube_client::client::builder", "failed with error client error (Connect)");
        });
        assert_eq!(
            got,
            [
                "limiter: warn: kube_client::client::builder: failed with error client error (Connect)"
            ]
        );
    }
}
