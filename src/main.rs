//! The `pontoon` command line: `demo`, `certs`, `node`, `kv`, `cluster` and `bench`.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

/// Frames are encoded on one thread and freed on another all day long, which glibc's malloc
/// handles poorly: the transport moves about twice the messages per second with mimalloc
/// (`cargo bench -p pontoon-benches --bench transport`, with and without default features).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Libraries emit tracing; only the binary installs a subscriber. RUST_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.default_log_filter()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
