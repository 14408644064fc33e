//! The cluster half of a run: a [`LocalCluster`] of real nodes over QUIC with mutual TLS on
//! loopback, under closed-loop load, and the figures read from its counters.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use coordinator::testkit::local::{LoadStats, LocalCluster};
use coordinator::testkit::series::SeriesWriter;
use coordinator::{LatencyQuantiles, StageLatencies, StateMachines};
use routing::{NodeId, RoutingTable};
use storage::StoreOptions;

use super::{BenchConfig, BenchError, CountingStateMachine};

/// What the cluster did during the load window (counters are deltas over that window, summed
/// over nodes unless a name says otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterFigures {
    /// Proposals acknowledged (committed by a quorum and applied).
    pub acknowledged: u64,
    /// Proposals that failed or timed out.
    pub failed: u64,
    /// Wall time of the load, from the first proposal until the last client returned.
    pub elapsed: Duration,
    /// `acknowledged / elapsed`.
    pub proposals_per_sec: f64,
    /// Latency quantiles of acknowledged proposals, µs: p50, p99, p99.9.
    pub latency_us: [u64; 3],
    /// Log persists of all nodes (with a syncing persist mode, one fsync each).
    pub persists: u64,
    /// Persists per node divided by acknowledged proposals; 0 when the persist mode does not
    /// sync.
    pub fsyncs_per_proposal: f64,
    /// Raft log entries written by all nodes (a leader packs a cycle's proposals for one group
    /// into one entry, so this is at most the proposals written).
    pub entries_written: u64,
    /// Log entries per persist.
    pub entries_per_persist: f64,
    /// Proposals written per persist: `acknowledged × replication / persists`. The fjall
    /// baseline writes batches of this many commands.
    pub proposals_per_persist: f64,
    /// Bytes all nodes' transports wrote: stream headers, length prefixes, bodies.
    pub wire_bytes: u64,
    /// Frames all nodes' transports wrote.
    pub wire_frames: u64,
    /// Raft messages inside those frames (a coalesced heartbeat counts once per group).
    pub wire_raft_messages: u64,
    /// `wire_bytes / acknowledged`.
    pub wire_bytes_per_proposal: f64,
    /// `wire_frames / acknowledged`.
    pub wire_msgs_per_proposal: f64,
    /// CPU seconds (user + system) this whole process spent during the load: every node,
    /// the clients, QUIC and TLS. `None` where the kernel does not tell.
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` per 1000 acknowledged proposals.
    pub cpu_sec_per_1k: Option<f64>,
    /// Heartbeats and responses that travelled inside coalesced batches.
    pub heartbeats_coalesced: u64,
    /// Coalesced heartbeat batches sent.
    pub heartbeat_batches: u64,
    /// How long the groups took to elect leaders after the nodes started.
    pub election: Duration,
    /// Where the proposals' time went on their leaders (raft to commit, then apply), merged
    /// over the nodes: counts summed, each quantile the highest any node saw. Covers the
    /// nodes' whole life (the election's few proposals included).
    pub stages: StageLatencies,
}

/// The nodes' stage latencies merged (see [`ClusterFigures::stages`]).
async fn stages(
    cluster: &LocalCluster<CountingStateMachine>,
) -> Result<StageLatencies, BenchError> {
    let merge = |a: LatencyQuantiles, b: LatencyQuantiles| LatencyQuantiles {
        count: a.count + b.count,
        p50_us: a.p50_us.max(b.p50_us),
        p99_us: a.p99_us.max(b.p99_us),
        p999_us: a.p999_us.max(b.p999_us),
        max_us: a.max_us.max(b.max_us),
    };
    let mut merged = StageLatencies::default();
    for node in cluster.running() {
        let s = node.status().await?.latency;
        merged.replicate = merge(merged.replicate, s.replicate);
        merged.apply = merge(merged.apply, s.apply);
    }
    Ok(merged)
}

/// Counters summed over the running nodes.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    persists: u64,
    entries: u64,
    bytes: u64,
    frames: u64,
    messages: u64,
    heartbeats_coalesced: u64,
    heartbeat_batches: u64,
}

impl Totals {
    async fn read(cluster: &LocalCluster<CountingStateMachine>) -> Result<Self, BenchError> {
        let mut t = Totals::default();
        for node in cluster.running() {
            let s = node.status().await?;
            t.persists += s.storage.persists;
            t.entries += s.storage.entries_written;
            t.bytes += s.transport.bytes_sent;
            t.frames += s.transport.frames_sent;
            t.messages += s.transport.messages_sent;
            t.heartbeats_coalesced += s.coordinator.heartbeats_coalesced;
            t.heartbeat_batches += s.coordinator.heartbeat_batches;
        }
        Ok(t)
    }

    fn since(self, before: Self) -> Self {
        Totals {
            persists: self.persists.saturating_sub(before.persists),
            entries: self.entries.saturating_sub(before.entries),
            bytes: self.bytes.saturating_sub(before.bytes),
            frames: self.frames.saturating_sub(before.frames),
            messages: self.messages.saturating_sub(before.messages),
            heartbeats_coalesced: self
                .heartbeats_coalesced
                .saturating_sub(before.heartbeats_coalesced),
            heartbeat_batches: self
                .heartbeat_batches
                .saturating_sub(before.heartbeat_batches),
        }
    }
}

/// CPU seconds (user + system) this process has used, all threads, from `/proc/self/stat`.
/// `None` off Linux or if the file does not parse.
#[must_use]
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_in_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU seconds (user + system) process `pid` has used, all threads, from `/proc/PID/stat`:
/// how `pontoon load` charges a run to the server processes it drives. `None` off Linux, for
/// a process that is gone, or if the file does not parse.
#[must_use]
pub fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_in_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of one `/proc/PID/stat` line, in seconds.
///
/// The kernel reports clock ticks of `USER_HZ`, which Linux fixes at 100 for user space on
/// every architecture it exports `/proc` on; hence the division by 100 (resolution 10 ms).
#[must_use]
pub fn cpu_seconds_in_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 is the first after ')'; utime and stime are fields 14 and 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Resident memory of this process in bytes (Linux; `None` elsewhere).
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The key of proposal `n`: distinct keys spread over every vShard.
pub(super) fn key_of(n: u64) -> Vec<u8> {
    format!("bench-{n:016x}").into_bytes()
}

/// The command of proposal `n`: its number, padded to `len` bytes.
pub(super) fn command_of(n: u64, len: usize) -> Vec<u8> {
    let mut bytes = n.to_be_bytes().to_vec();
    bytes.resize(len, 0xA5);
    bytes
}

/// Starts a cluster of `config.nodes` nodes in `dir` and waits until every group has a leader.
///
/// # Errors
/// [`BenchError::Routing`], [`BenchError::Cluster`], or [`BenchError::NoLeaders`].
pub async fn start_cluster(
    config: &BenchConfig,
    dir: &Path,
) -> Result<(Arc<LocalCluster<CountingStateMachine>>, Duration), BenchError> {
    start_cluster_with(config, dir, |_| CountingStateMachine::new()).await
}

/// [`start_cluster`] with each node's state machines made by `make`.
///
/// # Errors
/// As [`start_cluster`].
pub async fn start_cluster_with<S: Into<StateMachines> + 'static>(
    config: &BenchConfig,
    dir: &Path,
    make: impl Fn(NodeId) -> S + Send + Sync + 'static,
) -> Result<(Arc<LocalCluster<S>>, Duration), BenchError> {
    config.validate()?;
    let nodes: Vec<NodeId> = (1..=config.nodes).map(NodeId).collect();
    let routing =
        RoutingTable::uniform(config.vshards, config.groups, &nodes, config.replication())?;
    let (tick, persist) = (config.tick, config.persist);
    let cluster = LocalCluster::start(
        dir,
        routing,
        move |c| {
            c.tick_interval(tick)
                .request_timeout(Duration::from_secs(10))
                .store(StoreOptions::default().persist(persist))
        },
        make,
    )
    .await?;
    // Elections take 10-20 ticks; thousands of groups campaign over two shared cores.
    let timeout = Duration::from_secs(30) + Duration::from_millis(10 * config.groups);
    let Some(elected) = cluster.wait_for_leaders(timeout).await else {
        cluster.shutdown().await;
        return Err(BenchError::NoLeaders(timeout));
    };
    Ok((Arc::new(cluster), elected))
}

/// Runs `config.concurrency` closed-loop clients against a fresh local cluster for
/// `config.duration` and measures it. The cluster lives in a temporary directory removed at
/// the end.
///
/// # Errors
/// [`BenchError`] naming the step that failed; [`BenchError::NothingAcknowledged`] when no
/// proposal succeeded (no per-proposal figure would mean anything).
pub async fn run_cluster(config: &BenchConfig) -> Result<ClusterFigures, BenchError> {
    let dir = tempfile::tempdir()?;
    let (cluster, election) = start_cluster(config, dir.path()).await?;
    let result = measure(config, &cluster).await;
    cluster.shutdown().await;
    let mut figures = result?;
    figures.election = election;
    Ok(figures)
}

async fn measure(
    config: &BenchConfig,
    cluster: &Arc<LocalCluster<CountingStateMachine>>,
) -> Result<ClusterFigures, BenchError> {
    let stats = Arc::new(LoadStats::default());
    let command_bytes = config.command_bytes;
    let before = Totals::read(cluster).await?;
    let cpu_before = process_cpu_seconds();
    let start = Instant::now();
    let sampler = match &config.series {
        Some(path) => Some(spawn_series(path, start, cluster.clone(), stats.clone())?),
        None => None,
    };
    cluster
        .drive(
            config.concurrency,
            start + config.duration,
            Duration::from_secs(10),
            move |n| (key_of(n), command_of(n, command_bytes)),
            |_, _, _| {},
            stats.clone(),
        )
        .await;
    let elapsed = start.elapsed();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let cpu_after = process_cpu_seconds();
    let delta = Totals::read(cluster).await?.since(before);
    let stages = stages(cluster).await?;

    let acknowledged = stats.acknowledged();
    let failed = stats.failed.load(Ordering::Relaxed);
    if acknowledged == 0 {
        return Err(BenchError::NothingAcknowledged { failed });
    }
    let ack = acknowledged as f64;
    let latency_us =
        <[u64; 3]>::try_from(stats.latencies_us(&[0.5, 0.99, 0.999])).unwrap_or_default();
    let persists_per_node = delta.persists as f64 / config.nodes as f64;
    let cpu_seconds = cpu_before.zip(cpu_after).map(|(b, a)| (a - b).max(0.0));
    Ok(ClusterFigures {
        acknowledged,
        failed,
        elapsed,
        proposals_per_sec: ack / elapsed.as_secs_f64().max(1e-9),
        latency_us,
        persists: delta.persists,
        fsyncs_per_proposal: if config.persist.syncs() {
            persists_per_node / ack
        } else {
            0.0
        },
        entries_written: delta.entries,
        entries_per_persist: delta.entries as f64 / delta.persists.max(1) as f64,
        proposals_per_persist: ack * config.replication() as f64 / delta.persists.max(1) as f64,
        wire_bytes: delta.bytes,
        wire_frames: delta.frames,
        wire_raft_messages: delta.messages,
        wire_bytes_per_proposal: delta.bytes as f64 / ack,
        wire_msgs_per_proposal: delta.frames as f64 / ack,
        cpu_seconds,
        cpu_sec_per_1k: cpu_seconds.map(|s| s * 1000.0 / ack),
        heartbeats_coalesced: delta.heartbeats_coalesced,
        heartbeat_batches: delta.heartbeat_batches,
        election: Duration::ZERO,
        stages,
    })
}

/// Samples the run into `path` once a second until aborted.
fn spawn_series(
    path: &Path,
    start: Instant,
    cluster: Arc<LocalCluster<CountingStateMachine>>,
    stats: Arc<LoadStats>,
) -> Result<tokio::task::JoinHandle<()>, BenchError> {
    let mut series = SeriesWriter::create(path, start)?;
    Ok(tokio::spawn(async move {
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::from_std(start) + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            every.tick().await;
            if let Err(error) = series.sample(&cluster, &stats).await {
                eprintln!("time series: {error}; no more samples");
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_rss_reads_this_process() {
        if cfg!(target_os = "linux") {
            let rss = process_rss_bytes().unwrap();
            assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
        }
    }

    #[test]
    fn process_cpu_seconds_reads_this_process() {
        if cfg!(target_os = "linux") {
            let before = process_cpu_seconds().unwrap();
            // Burn a little CPU so the counter cannot go backwards unnoticed.
            let mut x = 0u64;
            for i in 0..5_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            assert!(process_cpu_seconds().unwrap() >= before);
        }
    }

    #[test]
    fn cpu_seconds_in_stat_reads_utime_and_stime_after_an_awkward_command_name() {
        // comm "(my (node) x)" holds spaces and parentheses; utime 250, stime 50 ticks.
        let line = "4242 (my (node) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_seconds_in_stat(line), Some(3.0));
        assert_eq!(cpu_seconds_in_stat("4242 (cut) S 1 2"), None);
        assert_eq!(cpu_seconds_in_stat("no parenthesis"), None);
    }

    #[test]
    fn pid_cpu_seconds_reads_this_process_by_its_id() {
        if cfg!(target_os = "linux") {
            assert!(pid_cpu_seconds(std::process::id()).is_some());
            // pid_max is at most 2^22 on Linux: this id is never in use.
            assert_eq!(pid_cpu_seconds(u32::MAX), None);
        }
    }

    #[test]
    fn commands_have_the_asked_length_and_distinct_keys() {
        assert_eq!(command_of(7, 256).len(), 256);
        assert_eq!(command_of(7, 3).len(), 3);
        assert_ne!(key_of(1), key_of(2));
    }
}
