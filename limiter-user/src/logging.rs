//! The agent's log: one line per lifecycle event (attached, limit changed, reload, detach) on
//! stderr, naming the interface, listener or file it concerns. Nothing is logged per packet or
//! per connection. `--log-format human` (default) prints `limiter: <message> key=value ...`;
//! `json` prints one JSON object per line for log collectors. The kernel programs' rare events
//! (aya-log: a RST that fell back to a drop, a full table, a failed keepalive) come through the
//! `log` facade into the same output, `--log-level` deciding for both.
use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `--log-level`: the agent's own lines and the kernel programs' (aya-log) alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

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
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level.tracing())
        .with_ansi(false);
    // A second init (tests, or a library user) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.event_format(Human).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// `limiter: <message> key=value ...`: the agent's lines read like its errors
/// (`limiter: error: ...`), and scripts can wait for `limiter: ready`.
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
            write!(
                writer,
                "{}: ",
                event.metadata().level().as_str().to_lowercase()
            )?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
