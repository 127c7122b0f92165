//! The agent's log: one line per lifecycle event (attached, limit changed, reload, detach) on
//! stderr, naming the interface, listener or file it concerns. Nothing is logged per packet or
//! per connection. `--log-format human` (default) prints `limiter: <message> key=value ...`;
//! `json` prints one JSON object per line for log collectors.
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

pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
