//! Rebuild the kernel object when the linker changes (same as aya-template).
fn main() {
    let linker = which::which("bpf-linker").unwrap_or_default();
    println!("cargo:rerun-if-changed={}", linker.display());
}
