//! limiter's developer tasks: `cargo xtask setup | build | test | demo | bench`.
mod bench;
mod build;
mod cmd;
mod demo;
mod matrix;
mod other_agents;
mod setup;
mod test;
mod toolchain;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "limiter's tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Install what a fresh Debian 12 machine needs to build and test (idempotent; root).
    Setup(setup::Args),
    /// Setup, then build the agent (`cargo build -p limiter-user`; builds the eBPF object too).
    Build(build::Args),
    /// Setup, build, then run every test in the workspace (root). Extra arguments go to
    /// `cargo test`.
    Test(test::Args),
    /// Setup, build, then run the kernel-facing tests in VMs of Debian's 6.1 and 6.12 kernels
    /// (what `test` runs after the host's tests).
    Matrix,
    /// Setup, build, then replay the Gloo Gateway and Envoy Gateway connection-limit examples in
    /// network namespaces, narrated (root). Fails if limiter does not behave as shown.
    Demo,
    /// Benchmarks against baselines and peers (root); writes bench/results/.
    Bench,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.task {
        Task::Setup(args) => setup::main(args),
        Task::Build(args) => build::main(args),
        Task::Test(_) => test::main(test::passthrough(std::env::args_os())),
        Task::Demo => demo::main(),
        Task::Matrix => test::matrix_only(),
        Task::Bench => return bench::main(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_takes_any_cargo_test_arguments() {
        let argv = [
            "cargo xtask",
            "test",
            "-p",
            "limiter-tests",
            "--",
            "--nocapture",
        ];
        let cli = Cli::try_parse_from(argv).unwrap();
        assert!(matches!(cli.task, Task::Test(_)));
        assert_eq!(
            test::passthrough(argv.map(Into::into)),
            ["-p", "limiter-tests", "--", "--nocapture"].map(std::ffi::OsString::from)
        );
        assert_eq!(
            test::passthrough(["cargo xtask", "test", "--", "--nocapture"].map(Into::into)),
            ["--", "--nocapture"].map(std::ffi::OsString::from)
        );
    }
}
