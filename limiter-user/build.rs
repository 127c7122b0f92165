//! Builds the kernel programs (`limiter-ebpf`) for `bpfel-unknown-none` with aya-build and the
//! `limiter-bpf` toolchain that `cargo xtask setup` links (Debian's rustc-web, which ships
//! core's source for `-Z build-std=core`; see README "Toolchain").
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const EBPF_PACKAGE: &str = "limiter-ebpf";
const TOOLCHAIN: &str = "limiter-bpf";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("workspace has no {EBPF_PACKAGE} package"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} manifest has no parent directory"))?;
    // The kernel object is built with limiter-common too: a layout version set for the rollback
    // test (limiter-common's MAP_LAYOUT_VERSION) rebuilds it.
    println!("cargo:rerun-if-env-changed=LIMITER_MAP_LAYOUT_VERSION");
    // aya-build adds `-Z build-std=core` only when its environment has RUSTC_BOOTSTRAP set;
    // Debian's rustc-web is a stable compiler that needs it for the unstable flag.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(TOOLCHAIN),
    )
    .with_context(|| {
        format!(
            "building {EBPF_PACKAGE} with toolchain `{TOOLCHAIN}` (run `cargo xtask setup` first)"
        )
    })
}
