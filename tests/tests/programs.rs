//! Every program the tests, the demo and the guides start is installed by `cargo xtask setup`.
//!
//! A fresh machine of this kind has what its image ships and nothing else; a program the tests
//! start that only some earlier bench run installed passes on a developer's machine and fails on
//! every new one (it happened with `nft`). So this test reads the sources that start programs,
//! collects the names they start, and requires each one to come from a Debian package that
//! setup installs (or one those packages depend on), or from one of Debian's `Priority:
//! required` packages (on every Debian system). `Priority: important` is not enough: nftables
//! is `important`, and this kind of machine does not have it.
//!
//! Where the names come from:
//! - Rust (the test harness, the tests, the demo): a string literal given as the program to
//!   `Command::new`, `command`, `run_ok`, `exec_ok`/`exec_in_ok`/`.command` (after the
//!   namespace), or after `"exec", NS,` (`ip netns exec NS PROGRAM`).
//! - Shell: every `sh` block of README.md and docs/guide.md, each command of each pipeline or
//!   list, looking through `ip netns exec NS`, `nsenter OPTIONS` and `timeout D`.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

#[path = "../../xtask/src/toolchain.rs"]
#[allow(dead_code)]
mod toolchain;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Sources whose Rust code starts programs: the harness, the tests, the demo.
const RUST_SOURCES: &[&str] = &[
    "tests/src",
    "tests/tests",
    "xtask/src/demo.rs",
    "xtask/src/demo",
    "xtask/src/matrix",
    "xtask/src/other_agents.rs",
];
/// Shell scripts the test command runs (the kernel matrix's guest side).
const SHELL_SCRIPTS: &[&str] = &["xtask/src/matrix/guest.sh"];
/// Programs that programs of the tests start in turn, and which: they must come from setup's
/// packages as well. virtme-ng (the kernel matrix's `vng`, from its own venv) starts qemu and
/// builds its initramfs from busybox; podman (tests/src/container.rs) starts its monitor, its
/// network backend (which writes the hostPort rules with iptables) and the runtime the tests
/// name, and the containers run a copy of busybox-static's /bin/busybox.
const STARTED_BY_OTHERS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "virtme-ng (xtask/src/matrix/vm.rs)"),
    ("busybox", "virtme-ng (xtask/src/matrix/vm.rs)"),
    ("busybox", "the tests' containers (tests/src/container.rs)"),
    ("conmon", "podman (tests/src/container.rs)"),
    (
        "/usr/lib/podman/netavark",
        "podman (tests/src/container.rs)",
    ),
    ("iptables", "netavark, for the containers' hostPort DNAT"),
    ("runc", "podman --runtime runc (tests/src/container.rs)"),
];
/// Documents whose `sh` blocks are run by tests (README.md, docs/guide.md).
const SHELL_DOCS: &[&str] = &["README.md", "docs/guide.md"];

/// Programs that are no Debian package's, and why they are there on a fresh machine.
const NOT_FROM_DEBIAN: &[(&str, &str)] = &[
    (
        "cargo",
        "the machine's rustup toolchain (README: assumed present)",
    ),
    (
        "limiter",
        "the project's own agent, built by the test command",
    ),
    (
        "netns-tool",
        "the project's own test helper, built by the test command",
    ),
    (
        "vng",
        "virtme-ng, from PyPI at a pinned version in setup's venv /opt/limiter-vng",
    ),
];

/// Shell words that are not programs: builtins and keywords.
const SHELL_BUILTINS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "until", "case",
    "esac", "set", "cd", "export", "echo", "printf", "read", "wait", "exit", "trap", "test", "[",
    "true", "false", "shift", "local", "return", "break", "continue", ":", ".", "eval", "exec",
    "unset", "kill", "!", "{", "}",
];

/// Debian's directories for programs; pyenv's shims, ~/.cargo/bin and /opt venvs are not
/// Debian's.
const DEBIAN_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Programs a Rust source starts, by the forms in the module comment.
fn programs_in_rust(source: &str) -> BTreeSet<String> {
    let forms = [
        // Command::new("nft"), command("ip"), run_ok("ip", ...)
        r#"(?:Command::new|(?:^|[^.\w])command|\brun_ok)\(\s*"([^"]+)""#,
        // bed.exec_ok(Side::Client, "ethtool", ...), .command(side, "ss", ...)
        r#"\b(?:exec_ok|exec_in_ok|command)\(\s*[^,()"]+(?:\([^()]*\))?\s*,\s*"([^"]+)""#,
        // ip netns exec NS PROGRAM
        r#""exec"\s*,\s*[^,\]"]+,\s*"([^"]+)""#,
    ];
    let mut found = BTreeSet::new();
    for form in forms {
        let re = regex::Regex::new(form).expect("valid pattern");
        for cap in re.captures_iter(source) {
            found.insert(cap[1].to_string());
        }
    }
    found.retain(|p| is_program_name(p));
    found
}

fn is_program_name(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-/".contains(c))
        && !word.starts_with('-')
}

/// The `sh` blocks of a Markdown document, continuation lines joined.
fn sh_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(block.replace("\\\n", " "));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Programs a shell script starts.
fn programs_in_shell(script: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in script.lines() {
        let Some(words) = shlex::split(line) else {
            continue;
        };
        // The line's commands: split at list and pipeline operators, and at command
        // substitutions (`$(cmd`) and their ends (`cmd)`); a comment ends the line.
        let mut command: Vec<String> = Vec::new();
        for word in words.into_iter().take_while(|w| !w.starts_with('#')) {
            if ["|", "||", "&&", "&", ";"].contains(&word.as_str()) {
                command_programs(&std::mem::take(&mut command), &mut found);
                continue;
            }
            // `(cmd` (a subshell) and `$(cmd` or `x=$(cmd` (a substitution) start a command.
            let mut word = word.as_str();
            if let Some((_, inner)) = word.rsplit_once("$(") {
                command_programs(&std::mem::take(&mut command), &mut found);
                word = inner;
            } else if word.starts_with('(') {
                command_programs(&std::mem::take(&mut command), &mut found);
                word = word.trim_start_matches('(');
            }
            if word.len() > 1 && (word.ends_with(';') || word.ends_with(')')) {
                command.push(word.trim_end_matches([')', ';']).to_string());
                command_programs(&std::mem::take(&mut command), &mut found);
            } else if !word.is_empty() {
                command.push(word.to_string());
            }
        }
        command_programs(&command, &mut found);
    }
    found
}

/// The program a command's words start, looking through wrappers that start another.
fn command_programs(words: &[String], found: &mut BTreeSet<String>) {
    // Keywords that a command follows (`do curl ...`) and variable assignments are skipped.
    let mut words = words
        .iter()
        .skip_while(|w| {
            ["do", "then", "else", "!", "{"].contains(&w.as_str())
                || (w.contains('=') && !w.starts_with('-'))
        })
        .map(String::as_str);
    let Some(program) = words.next() else {
        return;
    };
    if SHELL_BUILTINS.contains(&program) || !is_program_name(program) {
        return;
    }
    found.insert(program.to_string());
    let rest: Vec<String> = words.map(str::to_string).collect();
    let inner: &[String] = match program {
        "ip" if rest.len() > 2 && rest[0] == "netns" && rest[1] == "exec" => &rest[3..],
        "ip" if rest.len() > 3 && rest[0] == "-n" && rest[2] == "netns" => &[],
        "nsenter" => {
            let skip = rest.iter().take_while(|w| w.starts_with('-')).count();
            &rest[skip..]
        }
        "timeout" => rest.get(1..).unwrap_or_default(),
        _ => &[],
    };
    command_programs(inner, found);
}

/// Where each program is started, for the failure message.
fn started_programs() -> BTreeMap<String, Vec<String>> {
    let mut programs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut files = Vec::new();
    for source in RUST_SOURCES {
        rust_files(&Path::new(ROOT).join(source), &mut files);
    }
    // This file's own examples of the forms are not programs the suite starts.
    files.retain(|f| !f.ends_with("tests/tests/programs.rs"));
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let name = file
            .strip_prefix(ROOT)
            .unwrap_or(&file)
            .display()
            .to_string();
        for program in programs_in_rust(&text) {
            programs.entry(program).or_default().push(name.clone());
        }
    }
    for script in SHELL_SCRIPTS {
        let text = std::fs::read_to_string(Path::new(ROOT).join(script))
            .unwrap_or_else(|e| panic!("reading {script}: {e}"));
        for program in programs_in_shell(&text) {
            programs
                .entry(program)
                .or_default()
                .push(script.to_string());
        }
    }
    for (program, by) in STARTED_BY_OTHERS {
        programs
            .entry(program.to_string())
            .or_default()
            .push(by.to_string());
    }
    for doc in SHELL_DOCS {
        let text = std::fs::read_to_string(Path::new(ROOT).join(doc))
            .unwrap_or_else(|e| panic!("reading {doc}: {e}"));
        for block in sh_blocks(&text) {
            for program in programs_in_shell(&block) {
                let places = programs.entry(program).or_default();
                if !places.iter().any(|p| p == doc) {
                    places.push(doc.to_string());
                }
            }
        }
    }
    programs
}

fn dpkg_query(args: &[&str]) -> Option<String> {
    let out = Command::new("dpkg-query").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The Debian package that ships `program` in one of Debian's program directories (or at the
/// absolute path `program` names). A program that is a symlink Debian's alternatives manage
/// (`/usr/sbin/iptables` -> `/etc/alternatives/iptables` -> `xtables-nft-multi`) belongs to the
/// package of what it resolves to.
fn package_of(program: &str) -> Option<(String, String)> {
    let candidates: Vec<String> = if program.starts_with('/') {
        vec![program.to_string()]
    } else {
        DEBIAN_BIN_DIRS
            .iter()
            .map(|dir| format!("{dir}/{program}"))
            .collect()
    };
    candidates.into_iter().find_map(|path| {
        let owned = |path: &str| dpkg_query(&["-S", path]);
        // `dpkg-query -S` names the package of a path it shipped: `pkg[, pkg2]: /usr/sbin/nft`.
        let owner = owned(&path).or_else(|| {
            let resolved = std::fs::canonicalize(&path).ok()?;
            owned(resolved.to_str()?)
        })?;
        // Diversions are listed too (`diversion by dash from: /bin/sh`): skip them.
        let (packages, _) = owner
            .lines()
            .find(|l| !l.starts_with("diversion "))?
            .split_once(": ")?;
        let package = packages.split(", ").next()?.split(':').next()?.to_string();
        Some((package, path))
    })
}

/// setup's Debian packages and every package they depend on (installed).
fn setup_closure() -> BTreeSet<String> {
    let setup: Vec<&str> = toolchain::apt_package_names().collect();
    let out = Command::new("apt-cache")
        .args([
            "depends",
            "--recurse",
            "--installed",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ])
        .args(&setup)
        .output()
        .expect("running apt-cache depends");
    let mut closure: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
        .map(|l| l.split(':').next().unwrap_or(l).trim().to_string())
        .collect();
    closure.extend(setup.iter().map(|s| s.to_string()));
    closure
}

#[test]
fn every_started_program_is_installed_by_setup() {
    let programs = started_programs();
    // The scan must see what the suite is known to start, or it is reading nothing.
    for known in ["ip", "nsenter", "nft", "python3", "curl", "modprobe", "vng"] {
        assert!(
            programs.contains_key(known),
            "the scan did not find `{known}` among the started programs: {:?}",
            programs.keys().collect::<Vec<_>>()
        );
    }
    let closure = setup_closure();
    let mut problems = Vec::new();
    for (program, places) in &programs {
        if NOT_FROM_DEBIAN.iter().any(|(name, _)| name == program) {
            continue;
        }
        let started_in = places.join(", ");
        let Some((package, path)) = package_of(program) else {
            problems.push(format!(
                "`{program}` (started in {started_in}) is in no installed Debian package under \
                 {DEBIAN_BIN_DIRS:?}: add its package to APT_PACKAGES in xtask/src/toolchain.rs"
            ));
            continue;
        };
        if closure.contains(&package) {
            continue;
        }
        let priority = dpkg_query(&["-W", "-f=${Priority}", &package]).unwrap_or_default();
        if priority == "required" {
            continue;
        }
        problems.push(format!(
            "`{program}` (started in {started_in}) is {path} from Debian package `{package}` \
             (Priority: {priority}), which setup does not install: add `{package}` to \
             APT_PACKAGES in xtask/src/toolchain.rs"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scan_reads_each_form() {
    let rust = r#"
        Command::new("nft").arg("list");
        let mut c = command("clang");
        run_ok("ip", &["netns", "add", ns]);
        bed.exec_ok(Side::Client, "ethtool", &["-K"]);
        self.exec_in_ok(&self.ns, "tc", &[]);
        bed.command(side, "ss", &[]);
        cmd.args(["netns", "exec", &self.server_ns, "python3", "-c", SCRIPT]);
        Command::new(limiter_bin());
        let x = format!("not a program");
    "#;
    let found: Vec<String> = programs_in_rust(rust).into_iter().collect();
    assert_eq!(
        found,
        ["clang", "ethtool", "ip", "nft", "python3", "ss", "tc"],
        "{found:?}"
    );
    let shell = "# on a client\n\
                 for i in $(seq 1 5); do curl -s telnet://x:1 & done; wait\n\
                 ip netns exec lim-client iperf3 -c 1.2.3.4 | grep -c ok\n\
                 nsenter --net=/run/netns/n limiter stats\n\
                 X=1 timeout 5 socat - TCP:1.2.3.4:80 && echo done\n";
    let found: Vec<String> = programs_in_shell(shell).into_iter().collect();
    assert_eq!(
        found,
        [
            "curl", "grep", "ip", "iperf3", "limiter", "nsenter", "seq", "socat", "timeout"
        ],
        "{found:?}"
    );
}
