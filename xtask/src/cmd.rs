//! Running commands: echo the command line as a user would type it, then run it; polling with a
//! deadline; the Ctrl-C flag long-running tasks check.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives in `<root>/xtask`); every command runs from there.
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
    })
}

/// The cargo that runs this xtask (so `cargo xtask` and what it starts agree on the toolchain).
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// A new command, run from the workspace root.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// The directory cargo builds into (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Quote one word for a POSIX shell, only when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The command line as a user would type it. Environment variables set on the command come first;
/// the program is shown by its file name for `cargo`, paths in the workspace relative to its root,
/// and an argument that is a whole script
/// (several lines) whose first line is `# PATH` is shown as `"$(cat PATH)"`.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                shell_quote(&value.to_string_lossy())
            ));
        }
    }
    let program = Path::new(cmd.get_program());
    let program = match program.file_name() {
        Some(name) if name == "cargo" => "cargo".into(),
        _ => relative(&program.to_string_lossy()),
    };
    words.push(shell_quote(&program));
    for arg in cmd.get_args() {
        let arg = relative(&arg.to_string_lossy());
        if arg.contains('\n') {
            let first = arg.lines().next().unwrap_or_default();
            match first.strip_prefix("# ") {
                Some(path) => words.push(format!("\"$(cat {})\"", shell_quote(path.trim()))),
                None => words.push("\"$SCRIPT\"".to_string()),
            }
        } else {
            words.push(shell_quote(&arg));
        }
    }
    words.join(" ")
}

/// Paths inside the workspace as a user in the workspace root would type them (commands run
/// from there).
fn relative(word: &str) -> String {
    let root = workspace_root().to_string_lossy();
    match word
        .strip_prefix(&*root)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => word.to_string(),
    }
}

/// Print the command line, prefixed like a shell prompt.
pub fn echo(cmd: &Command) {
    println!("$ {}", display(cmd));
}

/// Echo, run with inherited stdio, and fail unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    run_quiet(cmd)
}

/// Run with inherited stdio without echoing; fail unless it exits 0.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Run without echoing and return stdout; fail (with its stderr) unless it exits 0.
pub fn output_quiet(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = capture(cmd).with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed invalid UTF-8"))
}

/// Run and capture everything, whatever the exit status (`Err` only if it cannot start).
pub fn capture(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.stdin(std::process::Stdio::null()).output()
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT/SIGTERM/SIGHUP only set a flag that [`check_interrupted`] (and every
/// [`poll_until`]) turns into an error, so the caller unwinds and its guards clean up.
pub fn catch_interrupts() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = unsafe { libc::signal(signal, handler) };
        if previous == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("installing a handler for signal {signal}"));
        }
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// What one look at a condition found.
pub enum Check<T> {
    Done(T),
    /// Not yet; what was seen (reported if the deadline passes).
    NotYet(String),
}

/// Look at a condition every `interval` until it holds, failing after `timeout` with what was last
/// seen. Errors from `look` end the poll at once.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut look: impl FnMut() -> Result<Check<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted().with_context(|| format!("waiting for {what}"))?;
        match look().with_context(|| format!("waiting for {what}"))? {
            Check::Done(value) => return Ok(value),
            Check::NotYet(seen) => {
                if Instant::now() >= deadline {
                    bail!(
                        "timed out after {:.1}s waiting for {what}; last seen: {seen}",
                        timeout.as_secs_f64()
                    );
                }
            }
        }
        thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(
            shell_quote("198.18.0.1:8000=1:reset"),
            "198.18.0.1:8000=1:reset"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn displays_env_program_and_scripts() {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.env("X", "1 2")
            .arg("-c")
            .arg("# a/b.py\nprint(1)")
            .arg("x");
        assert_eq!(
            display(&cmd),
            "X='1 2' /usr/bin/python3 -c \"$(cat a/b.py)\" x"
        );
    }

    #[test]
    fn poll_reports_what_it_saw() {
        let err = poll_until::<()>("nothing", Duration::ZERO, Duration::ZERO, || {
            Ok(Check::NotYet("still nothing".into()))
        })
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("waiting for nothing"), "{text}");
        assert!(text.contains("still nothing"), "{text}");
    }
}
