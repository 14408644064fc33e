//! Measure a cluster and the baselines that bound it, in one run, and report side by side.
//!
//! ```no_run
//! use pontoon_benches::harness::{self, BenchConfig};
//!
//! # async fn run() -> Result<(), harness::BenchError> {
//! let config = BenchConfig::default();
//! config.validate()?;
//! let report = harness::run(&config, |step| eprintln!("{step}")).await?;
//! println!("{}", report.to_json()?);
//! # Ok(()) }
//! ```
//!
//! Every figure is measured: the cluster's counters are read from each node's
//! [`NodeStatus`](coordinator::NodeStatus) before and after the load, CPU time from the
//! kernel, and the baselines are timed here, after the cluster has stopped, with the batch
//! size the cluster achieved.

mod baselines;
mod cluster;
mod config;
mod counter;
mod idle;
mod report;
mod slow_group;

pub use baselines::{fjall_append_per_sec, quinn_stream_msgs_per_sec};
pub use cluster::{
    ClusterFigures, cpu_seconds_in_stat, pid_cpu_seconds, process_cpu_seconds, process_rss_bytes,
    run_cluster, start_cluster, start_cluster_with,
};
pub use config::{BenchConfig, MAX_GROUPS};
pub use counter::CountingStateMachine;
pub use idle::{IdleConfig, IdleFigures, run_idle};
pub use report::{Baselines, BenchReport, LatencyUs, Ratios, ReportConfig};
pub use slow_group::{FastGroups, SlowGroupReport, run_slow_group};

/// Why a benchmark could not run. Each variant names the part that failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A [`BenchConfig`] value is out of range.
    #[error("invalid bench config: {field} {problem}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The routing table could not be built from the config.
    #[error("routing table: {0}")]
    Routing(#[from] routing::RoutingError),
    /// The local cluster did not start.
    #[error("local cluster: {0}")]
    Cluster(#[from] coordinator::testkit::local::LocalClusterError),
    /// Some group elected no leader in time.
    #[error("groups elected no leader within {0:?}")]
    NoLeaders(std::time::Duration),
    /// A node did not report its counters.
    #[error("node status: {0}")]
    Status(#[from] coordinator::RequestError),
    /// Not a single proposal was acknowledged, so no per-proposal figure exists.
    #[error("no proposal was acknowledged ({failed} failed)")]
    NothingAcknowledged {
        /// Proposals that failed or timed out.
        failed: u64,
    },
    /// A temporary directory or file could not be made.
    #[error("temporary directory: {0}")]
    Io(#[from] std::io::Error),
    /// The raw fjall baseline failed.
    #[error("fjall baseline: {0}")]
    Fjall(#[from] fjall::Error),
    /// Certificates for the raw quinn baseline could not be made.
    #[error("quinn baseline certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// TLS or QUIC configs for the raw quinn baseline could not be built.
    #[error("quinn baseline config: {0}")]
    Transport(#[from] transport::TransportError),
    /// The raw quinn baseline's connection or stream failed.
    #[error("quinn baseline: {0}")]
    Quinn(String),
    /// A baseline's task panicked or was cancelled.
    #[error("baseline task: {0}")]
    Task(String),
    /// The report could not be encoded.
    #[error("report JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs the cluster, then both baselines (fjall with the cluster's achieved batch size), and
/// builds the report. `progress` hears one line before each step (the CLI prints them on
/// stderr).
///
/// # Errors
/// [`BenchError`] naming the step that failed.
pub async fn run(config: &BenchConfig, progress: impl Fn(&str)) -> Result<BenchReport, BenchError> {
    config.validate()?;
    progress(&format!(
        "cluster: {} nodes x {} groups, {} clients for {:.1} s",
        config.nodes,
        config.groups,
        config.concurrency,
        config.duration.as_secs_f64()
    ));
    let cluster = run_cluster(config).await?;
    let batch = cluster.proposals_per_persist.round().max(1.0) as usize;
    progress(&format!(
        "baseline: raw fjall, {batch} entries of {} B per batch, {:.1} s",
        config.command_bytes,
        config.baseline_duration.as_secs_f64()
    ));
    let (bytes, persist, time) = (
        config.command_bytes,
        config.persist,
        config.baseline_duration,
    );
    // fsyncs block: keep them off the runtime's workers.
    let fjall =
        tokio::task::spawn_blocking(move || fjall_append_per_sec(batch, bytes, persist, time))
            .await
            .map_err(|e| BenchError::Task(e.to_string()))??;
    progress(&format!(
        "baseline: raw quinn, one stream of {} B messages, {:.1} s",
        config.command_bytes,
        config.baseline_duration.as_secs_f64()
    ));
    let quinn = quinn_stream_msgs_per_sec(config.command_bytes, config.baseline_duration).await?;
    Ok(BenchReport::new(
        config,
        &cluster,
        Baselines {
            fjall_append_per_sec: fjall,
            quinn_stream_msgs_per_sec: quinn,
            fjall_batch_entries: batch as u64,
        },
    ))
}
