//! The `limiter` binary: parses the command line and reports errors as one line each.
use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};
use limiter::{
    agent,
    config::cli::{Cli, Command},
    observe::control::{self, Request},
    observe::stats::Report,
};

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(EXIT_USAGE, first_line(&e.to_string())),
    };
    match cli.command {
        Command::Run(args) => {
            if let Err(message) = args.validate() {
                return fail(EXIT_USAGE, &message);
            }
            let settings = match limiter::config::settings::Settings::load(&args) {
                Ok(settings) => settings,
                Err(message) => return fail(EXIT_USAGE, &message),
            };
            limiter::observe::logging::init(args.log_format, args.log_level);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => return fail(EXIT_RUNTIME, &format!("starting the async runtime: {e}")),
            };
            match runtime.block_on(agent::run(*args, settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let agent_error = e.downcast_ref::<limiter::error::AgentError>();
                    if let Some(error) = agent_error {
                        error.log_details();
                    }
                    let usage = agent_error.is_some_and(limiter::error::AgentError::is_usage);
                    fail(if usage { EXIT_USAGE } else { EXIT_RUNTIME }, &one_line(&e))
                }
            }
        }
        Command::Crd => match limiter::kubernetes::policy::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_RUNTIME, &e),
        },
        Command::Stats(args) if args.watch => watch(&args.control.control_socket, args.interval),
        Command::Stats(args) => match fetch_report(&args.control.control_socket) {
            Ok(report) => {
                if args.json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    print!("{}", report.render_table());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_RUNTIME, &one_line(&e)),
        },
        Command::Reload(control) => {
            reply(control::request(&control.control_socket, &Request::Reload))
        }
        Command::Set(args) => reply(control::request(
            &args.control.control_socket,
            &Request::Set {
                limit: args.limit.to_string(),
                netns: args.netns,
                per_source: args.per_source,
            },
        )),
        Command::Unset(args) => reply(control::request(
            &args.control.control_socket,
            &Request::Unset {
                listener: args.listener.to_string(),
                netns: args.netns,
                per_source: args.per_source,
            },
        )),
    }
}

fn fetch_report(socket: &std::path::Path) -> anyhow::Result<Report> {
    control::request(socket, &Request::Stats).map(|response| response.report.unwrap_or_default())
}

/// `limiter stats --watch`: clear the screen and redraw, like `watch limiter stats`, until
/// interrupted (Ctrl-C ends the process) or the agent goes away.
fn watch(socket: &std::path::Path, interval: std::time::Duration) -> ExitCode {
    use std::io::Write as _;
    loop {
        let report = match fetch_report(socket) {
            Ok(report) => report,
            Err(e) => return fail(EXIT_RUNTIME, &one_line(&e)),
        };
        // Home the cursor and clear: the table is redrawn in place.
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[H\x1b[2J{}", report.render_table());
        let _ = writeln!(
            out,
            "\n(every {}; Ctrl-C to stop)",
            limiter::config::duration::display(interval)
        );
        if out.flush().is_err() {
            // stdout closed (e.g. piped into `head`): stop quietly.
            return ExitCode::SUCCESS;
        }
        drop(out);
        std::thread::sleep(interval);
    }
}

fn reply(result: anyhow::Result<control::Response>) -> ExitCode {
    match result {
        Ok(response) => {
            if let Some(message) = response.message {
                println!("{message}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_RUNTIME, &one_line(&e)),
    }
}

/// clap's errors span several lines (usage, a hint); the first says what was wrong.
fn first_line(message: &str) -> &str {
    let line = message.lines().next().unwrap_or(message);
    line.strip_prefix("error: ").unwrap_or(line)
}

/// An error and its causes on one line, each cause once (our errors already quote their source).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

/// A verifier log can run to thousands of lines; its end says what was rejected.
const MAX_ERROR_CHARS: usize = 1500;

fn fail(code: u8, message: &str) -> ExitCode {
    let mut message = message.replace('\n', " ");
    if message.len() > MAX_ERROR_CHARS {
        let cut = message.len() - MAX_ERROR_CHARS / 2;
        let cut = (cut..message.len())
            .find(|i| message.is_char_boundary(*i))
            .unwrap_or(cut);
        let head_end = (0..=MAX_ERROR_CHARS / 2)
            .rev()
            .find(|i| message.is_char_boundary(*i))
            .unwrap_or(0);
        message = format!("{} [...] {}", &message[..head_end], &message[cut..]);
    }
    eprintln!("limiter: error: {message}");
    ExitCode::from(code)
}
