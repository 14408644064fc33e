//! The `pontoon` command line: `demo`, `certs`, `node`, `kv`, `cluster` and `bench`.
//!
//! The binary is the one place that installs a tracing subscriber, picks the allocator and
//! parses arguments (clap, toml); each command is a thin shell over the library crates:
//! `node` serves the example KV service (`pontoon-service`), `kv` is its client, `cluster`
//! drives reshaping plans through the admin protocol (`pontoon-admin`), `bench` runs the
//! harness of `pontoon-benches`.
#![warn(unreachable_pub)]

mod commands;

use std::process::ExitCode;

use clap::Parser as _;

/// Frames are encoded on one thread and freed on another all day long, which glibc's malloc
/// handles poorly: the transport moves about twice the messages per second with mimalloc
/// (`cargo bench -p pontoon-benches --bench transport`, with and without default features).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = commands::Cli::parse();
    // Libraries emit tracing; only the binary installs a subscriber. RUST_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.default_log_filter()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match commands::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
