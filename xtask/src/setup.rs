//! `cargo xtask setup`: install what a fresh Debian 12 machine needs to build and test limiter.
//! Idempotent: each step first checks whether it is already done, so an up-to-date machine costs a
//! few quick queries.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{self, command},
    matrix::{self, vm},
    toolchain::{
        APT_PACKAGES, BPF_LINKER_CRATE, BPF_LINKER_FEATURES, BPF_LINKER_VERSION, BPF_TOOLCHAIN,
        BPF_TOOLCHAIN_PATH, BPFFS, BUILD_APT_PACKAGES, LLVM_PREFIX, PIP_VALIDATORS,
        VALIDATORS_VENV, apt_package_names,
    },
};

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Print the Debian packages setup installs (one line, space-separated) and exit.
    #[arg(long)]
    pub print_apt_packages: bool,

    /// Only what building the agent needs (deploy/Dockerfile's builder): the build packages,
    /// the `limiter-bpf` toolchain and bpf-linker; no test tools, no bpffs mount.
    #[arg(long)]
    pub build_only: bool,
}

pub fn main(args: &Args) -> Result<()> {
    if args.print_apt_packages {
        let names: Vec<&str> = if args.build_only {
            BUILD_APT_PACKAGES.to_vec()
        } else {
            apt_package_names().collect()
        };
        println!("{}", names.join(" "));
        return Ok(());
    }
    if args.build_only {
        return run_build_only();
    }
    run()
}

/// `--build-only`: the steps a build needs, in order.
fn run_build_only() -> Result<()> {
    println!("setup: checking the build prerequisites (--build-only)");
    apt_packages(BUILD_APT_PACKAGES).context("setup step `apt packages` failed")?;
    bpf_toolchain().context("setup step `rustup toolchain link` failed")?;
    bpf_linker().context("setup step `install bpf-linker` failed")?;
    println!("setup: done");
    Ok(())
}

/// Every step, in order. Errors name the step that failed.
pub fn run() -> Result<()> {
    println!("setup: checking the build and test prerequisites");
    // Before the other packages: apt-get cannot install qemu-system-x86 beside this image's
    // qemu-utils without the downgrade this step asks for.
    qemu().context("setup step `qemu` failed")?;
    let all: Vec<&str> = apt_package_names().collect();
    apt_packages(&all).context("setup step `apt packages` failed")?;
    bpf_toolchain().context("setup step `rustup toolchain link` failed")?;
    bpf_linker().context("setup step `install bpf-linker` failed")?;
    validators().context("setup step `deploy validators` failed")?;
    bpffs().context("setup step `mount bpffs` failed")?;
    virtme_ng().context("setup step `virtme-ng` failed")?;
    for series in matrix::kernels::MATRIX {
        series
            .install()
            .with_context(|| format!("setup step `kernel matrix: {}` failed", series.name))?;
    }
    println!("setup: done");
    Ok(())
}

fn need_root(step: &str) -> Result<()> {
    if !cmd::is_root() {
        bail!("{step} needs root; run `cargo xtask setup` as root");
    }
    Ok(())
}

fn apt_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &package in packages {
        if !dpkg_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        println!(
            "setup: apt packages: all {} installed ({})",
            packages.len(),
            packages.join(" ")
        );
        return Ok(());
    }
    println!("setup: apt packages: missing {}", missing.join(" "));
    for (package, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("         {package}: {why}");
    }
    need_root("installing apt packages")?;
    let apt = |args: &[&str]| {
        let mut cmd = command("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    cmd::run(&mut apt(&["update"]))?;
    let mut install = apt(&["install", "-y"]);
    install.args(&missing);
    cmd::run(&mut install)?;
    for package in &missing {
        if !dpkg_installed(package)? {
            bail!("`{package}` is still not installed after apt-get install");
        }
    }
    Ok(())
}

/// `dpkg-query -W -f='${Status}' PKG` says `install ok installed` (an unknown package is an
/// error exit, which also means "not installed").
fn dpkg_installed(package: &str) -> Result<bool> {
    let out = cmd::capture(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}"])
            .arg(package),
    )
    .context("could not run dpkg-query (is this a Debian machine?)")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn bpf_toolchain() -> Result<()> {
    let list = cmd::output_quiet(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed (the stable toolchain builds everything but the eBPF crate)")?;
    let linked = list
        .lines()
        .any(|line| line.split_whitespace().next() == Some(BPF_TOOLCHAIN));
    if linked {
        println!("setup: rustup toolchain `{BPF_TOOLCHAIN}`: already linked");
    } else {
        println!(
            "setup: rustup toolchain `{BPF_TOOLCHAIN}`: linking Debian's rustc-web at {BPF_TOOLCHAIN_PATH}"
        );
        cmd::run(
            command("rustup")
                .args(["toolchain", "link", BPF_TOOLCHAIN])
                .arg(BPF_TOOLCHAIN_PATH),
        )?;
    }
    let version = cmd::output_quiet(Command::new("rustup").args([
        "run",
        BPF_TOOLCHAIN,
        "rustc",
        "--version",
    ]))
    .with_context(|| format!("toolchain `{BPF_TOOLCHAIN}` does not run rustc"))?;
    println!(
        "setup: rustup toolchain `{BPF_TOOLCHAIN}`: {}",
        version.trim()
    );
    Ok(())
}

/// `bpf-linker --version` prints `bpf-linker 0.13.0`; `None` when it is not on PATH.
fn bpf_linker_version() -> Option<String> {
    let out = cmd::capture(Command::new("bpf-linker").arg("--version")).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn bpf_linker() -> Result<()> {
    let wanted = format!("{BPF_LINKER_CRATE} {BPF_LINKER_VERSION}");
    match bpf_linker_version() {
        Some(version) if version == wanted => {
            println!("setup: {version}: already installed");
            return Ok(());
        }
        Some(version) => println!("setup: found `{version}`, need {wanted}: installing"),
        None => println!(
            "setup: {BPF_LINKER_CRATE} not found: installing {wanted} (about 70 s on 2 cores)"
        ),
    }
    let mut install = cmd::cargo();
    install
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args(["install", BPF_LINKER_CRATE, "--version", BPF_LINKER_VERSION])
        .args([
            "--locked",
            "--no-default-features",
            "--features",
            BPF_LINKER_FEATURES,
        ]);
    cmd::run(&mut install)?;
    match bpf_linker_version() {
        Some(version) if version == wanted => {
            println!("setup: {version}: installed");
            Ok(())
        }
        Some(version) => bail!("after cargo install, `bpf-linker --version` says `{version}`"),
        None => bail!(
            "cargo install succeeded but `bpf-linker` is not on PATH (add ~/.cargo/bin to PATH)"
        ),
    }
}

/// `name==version` of each of `names` installed in `venv`, as pip would print it, or `None` if
/// the venv's python cannot report them all.
fn pip_versions(venv: &str, names: &[&str]) -> Option<Vec<String>> {
    let python = format!("{venv}/bin/python");
    let script = "import sys, importlib.metadata as m\n\
                  for n in sys.argv[1:]:\n    print(f'{n}=={m.version(n)}')";
    let out = cmd::capture(Command::new(python).arg("-c").arg(script).args(names)).ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
}

/// Pinned PyPI packages, (name, version), in the venv `venv`: installed with pip (the venv
/// created first if need be, `announce` called first) unless every one is there at its
/// version, and checked afterwards.
pub fn pip_pinned(venv: &str, packages: &[(&str, &str)], announce: impl FnOnce()) -> Result<()> {
    let names: Vec<&str> = packages.iter().map(|(name, _)| *name).collect();
    let wanted: Vec<String> = packages
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if pip_versions(venv, &names).as_ref() == Some(&wanted) {
        return Ok(());
    }
    announce();
    need_root(&format!("installing {} in {venv}", wanted.join(" ")))?;
    let python = format!("{venv}/bin/python");
    if !std::path::Path::new(&python).is_file() {
        cmd::run(command("python3").args(["-m", "venv", venv]))?;
    }
    cmd::run(
        command(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&wanted),
    )?;
    match pip_versions(venv, &names) {
        Some(found) if found == wanted => Ok(()),
        found => bail!("after pip install, {venv} has {found:?}, expected {wanted:?}"),
    }
}

fn validators() -> Result<()> {
    let pinned: Vec<(&str, &str)> = PIP_VALIDATORS
        .iter()
        .map(|(name, version, _)| (*name, *version))
        .collect();
    let names: Vec<String> = pinned.iter().map(|(n, v)| format!("{n}=={v}")).collect();
    pip_pinned(VALIDATORS_VENV, &pinned, || {
        println!("setup: deploy validators: installing {}", names.join(" "));
        for (name, _, why) in PIP_VALIDATORS {
            println!("         {name}: {why}");
        }
    })?;
    println!(
        "setup: deploy validators in {VALIDATORS_VENV}: {}",
        names.join(" ")
    );
    Ok(())
}

/// Is a filesystem of type `fstype` mounted at `mount_point`?
pub fn is_mounted(mount_point: &str, fstype: &str) -> Result<bool> {
    Ok(mounts()?
        .iter()
        .any(|(m, t)| m == mount_point && t == fstype))
}

/// Where the first filesystem of type `fstype` is mounted, if one is.
pub fn mount_of(fstype: &str) -> Result<Option<String>> {
    Ok(mounts()?
        .into_iter()
        .find_map(|(m, t)| (t == fstype).then_some(m)))
}

/// (mount point, filesystem type) of every mount, from /proc/self/mountinfo.
fn mounts() -> Result<Vec<(String, String)>> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| {
            // `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
            let (left, right) = line.split_once(" - ")?;
            Some((
                left.split(' ').nth(4)?.to_string(),
                right.split(' ').next()?.to_string(),
            ))
        })
        .collect())
}

fn bpffs() -> Result<()> {
    if is_mounted(BPFFS, "bpf")? {
        println!("setup: bpffs: mounted at {BPFFS}");
        return Ok(());
    }
    println!("setup: bpffs: not mounted at {BPFFS}: mounting");
    need_root("mounting bpffs")?;
    cmd::run(command("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

/// The matrix VMs' emulator, Debian's qemu-system-x86. This machine image ships a newer
/// qemu-utils (from backports) that Debian 12's qemu-system-x86 cannot be installed beside: the
/// two go in together, qemu-utils at qemu-system-x86's version.
fn qemu() -> Result<()> {
    if dpkg_installed("qemu-system-x86")? {
        println!("setup: qemu-system-x86: already installed");
        return Ok(());
    }
    need_root("installing qemu-system-x86")?;
    let candidate = || -> Result<Option<String>> {
        let policy = cmd::output_quiet(command("apt-cache").args(["policy", "qemu-system-x86"]))?;
        Ok(policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(|v| v.trim().to_string())
            .filter(|v| v != "(none)"))
    };
    // A fresh machine's apt lists may be empty or old.
    let version = match candidate()? {
        Some(version) => version,
        None => {
            cmd::run(command("apt-get").args(["update"]))?;
            candidate()?.context("apt has no candidate for qemu-system-x86")?
        }
    };
    println!("setup: qemu-system-x86: installing {version} (with qemu-utils at the same version)");
    cmd::run(
        command("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--allow-downgrades", "qemu-system-x86"])
            .arg(format!("qemu-utils={version}")),
    )?;
    if !dpkg_installed("qemu-system-x86")? {
        bail!("`qemu-system-x86` is still not installed after apt-get install");
    }
    Ok(())
}

/// virtme-ng, which boots the matrix kernels over this machine's root filesystem.
fn virtme_ng() -> Result<()> {
    pip_pinned(vm::VNG_VENV, &[("virtme-ng", vm::VNG_VERSION)], || {
        println!(
            "setup: virtme-ng: installing {} in {}",
            vm::VNG_VERSION,
            vm::VNG_VENV
        );
    })
}
