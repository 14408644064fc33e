//! Argument parsing and dispatch of the `pontoon` binary.

mod bench;
mod certs_cmd;
mod cluster_cmd;
mod demo;
mod kv_cmd;
mod load;
mod node;
mod observe;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Pontoon: multi-raft replication over one QUIC endpoint per node, secured by mutual TLS.
#[derive(Parser, Debug)]
#[command(name = "pontoon", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a 3-node cluster over QUIC on loopback, write to it, kill its busiest leader midway,
    /// and verify every acknowledged write.
    Demo(demo::DemoArgs),
    /// Create the cluster CA and issue node and client certificates.
    #[command(subcommand)]
    Certs(certs_cmd::CertsCommand),
    /// Run one node of the example key-value service from a TOML config.
    Node(node::NodeArgs),
    /// Talk to the key-value service: put, get, delete, status.
    Kv(kv_cmd::KvArgs),
    /// Change a running cluster's shape: status, add-node, remove-node, balance, move-vshard.
    Cluster(cluster_cmd::ClusterArgs),
    /// Closed-loop remote write load against a running cluster: writes/s, latency quantiles,
    /// server CPU per 1k writes (what scripts/race_etcd.sh sets beside etcd).
    Load(load::LoadArgs),
    /// Measure a cluster (in-process) next to the raw fjall and quinn baselines, in one run.
    Bench(bench::BenchArgs),
}

impl Cli {
    /// The log filter when RUST_LOG is not set: quiet for the interactive commands.
    pub(crate) fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_) | Command::Bench(_) => "error",
            Command::Certs(_) | Command::Kv(_) | Command::Cluster(_) | Command::Load(_) => "warn",
            Command::Node(_) => "info",
        }
    }
}

/// An error for the user: what went wrong, in one line.
pub(crate) type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the parsed command.
pub(crate) fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Certs(command) => certs_cmd::run(command),
        Command::Node(args) => node::run(args),
        Command::Kv(args) => kv_cmd::run(args),
        Command::Cluster(args) => cluster_cmd::run(args),
        Command::Load(args) => load::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
