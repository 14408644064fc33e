//! What idle groups cost: a cluster with no load at all, measured with quiescence on and off
//! in the same run. Reports wire messages per second per node pair and CPU per node.

use std::time::{Duration, Instant};

use coordinator::RaftConfig;
use coordinator::testkit::local::LocalCluster;
use hdrhistogram::Histogram;
use routing::{GroupId, NodeId, RoutingTable};
use serde::Serialize;

use super::{BenchError, CountingStateMachine, process_cpu_seconds, process_rss_bytes};

/// One idle measurement's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct IdleConfig {
    /// Nodes (every group has `min(3, nodes)` replicas).
    pub nodes: u64,
    /// Groups, all idle.
    pub groups: u64,
    /// Raft tick interval.
    pub tick: Duration,
    /// How long to measure once the cluster has settled.
    pub duration: Duration,
    /// How long every group may take to elect a leader before the cluster is measured as it
    /// is (a machine too small for every group to heartbeat never gets there).
    pub election_limit: Duration,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            groups: 10_000,
            tick: Duration::from_millis(100),
            duration: Duration::from_secs(10),
            election_limit: Duration::from_secs(60),
        }
    }
}

/// What an idle cluster cost over the measurement.
#[derive(Clone, Debug, Serialize)]
pub struct IdleFigures {
    /// Quiescence on or off.
    pub quiesce: bool,
    /// Groups.
    pub groups: u64,
    /// Seconds until every group had a leader; `None` when they had not all elected one by
    /// the election limit (the cluster is then measured as it is).
    pub election_s: Option<f64>,
    /// Groups (the meta group included) with a leader at the end of the measurement.
    pub led: u64,
    /// Seconds from then until (with quiescence) every replica of every group was quiet.
    pub settle_s: f64,
    /// Fraction of group replicas quiet during the measurement.
    pub quiet_fraction: f64,
    /// Wire messages (frames) per second per ordered node pair, all kinds.
    pub msgs_per_sec_per_pair: f64,
    /// Raft messages per second per node before coalescing (what one message per group per
    /// heartbeat would have cost).
    pub raft_msgs_per_sec_per_node: f64,
    /// CPU of the whole process divided by the nodes in it, as a fraction of one core.
    pub cpu_core_fraction_per_node: f64,
    /// Seconds measured.
    pub measured_s: f64,
    /// Median microseconds to commit and apply the first proposal to a group after the
    /// measurement (quiet with quiescence on: the proposal wakes it), on its leader.
    pub first_proposal_p50_us: Option<u64>,
    /// Median microseconds of the proposal right after it, to the same (now awake) group.
    pub next_proposal_p50_us: Option<u64>,
    /// Resident memory of the whole process after the measurement, divided by the group
    /// replicas in it (every node's log store, raft state, streams and caches), and whatever
    /// an earlier run in the same process left to the allocator.
    pub rss_bytes_per_replica: Option<u64>,
}

/// Groups whose first (waking) and second proposal are timed after the measurement.
const PROBED_GROUPS: u64 = 32;

/// Proposes twice to each of up to [`PROBED_GROUPS`] groups spread over the id range, on their
/// leaders, one at a time; returns the median microseconds of the first and of the second.
async fn probe_proposals(
    cluster: &LocalCluster<CountingStateMachine>,
    groups: u64,
) -> (Option<u64>, Option<u64>) {
    let leaders = cluster.leaders().await;
    let step = (groups / PROBED_GROUPS).max(1);
    // Up to PROBED_GROUPS samples each, summarised like every other latency: HDR histograms.
    let (mut first, mut next) = (latency_histogram(), latency_histogram());
    for group in (0..groups)
        .step_by(usize::try_from(step).unwrap_or(1))
        .map(GroupId)
    {
        let Some(node) = leaders.get(&group).and_then(|id| cluster.node(*id)) else {
            continue;
        };
        for latencies in [&mut first, &mut next] {
            let start = Instant::now();
            if node.propose_to_group(group, b"wake".to_vec()).await.is_ok() {
                let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(us.max(1));
            }
        }
    }
    let median = |h: Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.5));
    (median(first), median(next))
}

/// 1 µs to 10 min, 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds, valid by construction
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .expect("1 µs to 10 min at 3 significant digits are valid bounds")
}

#[derive(Default)]
struct Sample {
    frames: u64,
    raft: u64,
    quiet: u64,
    replicas: u64,
    candidates: u64,
    max_term: u64,
    queue_full: u64,
    unreachable: u64,
    resets: u64,
    cycles: u64,
}

async fn sample(cluster: &LocalCluster<CountingStateMachine>) -> Sample {
    let mut s = Sample::default();
    for node in cluster.running() {
        if let Ok(status) = node.status().await {
            s.frames += status.transport.frames_sent;
            s.raft += status.coordinator.raft_messages + status.coordinator.heartbeats_coalesced;
            s.replicas += status.groups.len() as u64;
            s.quiet += status.groups.iter().filter(|g| g.quiet).count() as u64;
            s.candidates += status
                .groups
                .iter()
                .filter(|g| {
                    g.role != coordinator::Role::Follower && g.role != coordinator::Role::Leader
                })
                .count() as u64;
            s.max_term = s
                .max_term
                .max(status.groups.iter().map(|g| g.term).max().unwrap_or(0));
            s.queue_full += status.transport.dropped_queue_full;
            s.unreachable += status.transport.dropped_unreachable;
            s.resets += status.transport.streams_reset;
            s.cycles += status.coordinator.cycles;
        }
    }
    s
}

/// Starts an idle cluster, lets it settle, and measures it for `config.duration`.
///
/// # Errors
/// [`BenchError`] naming what failed.
pub async fn run_idle(config: &IdleConfig, quiesce: bool) -> Result<IdleFigures, BenchError> {
    if !(1..=16).contains(&config.nodes) || config.groups == 0 {
        return Err(BenchError::Config {
            field: "idle",
            problem: "nodes must be 1..=16 and groups at least 1".into(),
        });
    }
    let dir = tempfile::tempdir()?;
    let nodes: Vec<NodeId> = (1..=config.nodes).map(NodeId).collect();
    let replication = usize::try_from(config.nodes.min(3)).unwrap_or(3);
    let vshards = u32::try_from(config.groups.max(1024))
        .unwrap_or(u32::MAX)
        .min(routing::MAX_VSHARDS);
    let routing = RoutingTable::uniform(vshards, config.groups, &nodes, replication)?;
    let tick = config.tick;
    let started = Instant::now();
    let cluster = LocalCluster::start(
        dir.path(),
        routing,
        // Node::start sizes the stream limits for this many groups itself.
        move |c| {
            c.tick_interval(tick)
                .raft(RaftConfig::default().quiesce(quiesce))
        },
        |_| CountingStateMachine::new(),
    )
    .await?;
    let mut last_report = Instant::now();
    let election_s = loop {
        let leaders = cluster.leaders().await;
        // Every data group and the meta group.
        if leaders.len() as u64 > config.groups {
            break Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > config.election_limit {
            eprintln!(
                "  {} of {} groups led after {:.0} s: measuring the cluster as it is",
                leaders.len(),
                config.groups + 1,
                started.elapsed().as_secs_f64()
            );
            break None;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let s = sample(&cluster).await;
            eprintln!(
                "  {:.0} s: {} of {} groups led, {} raft messages so far, {} of {} replicas quiet \
                 ({} candidates, highest term {}, {} cycles, dropped: {} queue full, {} unreachable, \
                 {} streams reset)",
                started.elapsed().as_secs_f64(),
                leaders.len(),
                config.groups + 1,
                s.raft,
                s.quiet,
                s.replicas,
                s.candidates,
                s.max_term,
                s.cycles,
                s.queue_full,
                s.unreachable,
                s.resets,
            );
        }
        tokio::time::sleep(Duration::from_millis(200 + config.groups / 100)).await;
    };
    // Let the cluster settle: every group quiet (quiescence) or a few heartbeat rounds.
    let settle_start = Instant::now();
    let settle_limit = if election_s.is_some() {
        Duration::from_secs(60)
    } else {
        Duration::ZERO
    };
    loop {
        let s = sample(&cluster).await;
        let settled = if quiesce {
            s.quiet == s.replicas
        } else {
            settle_start.elapsed() >= tick * 20
        };
        if settled || settle_start.elapsed() > settle_limit {
            break;
        }
        tokio::time::sleep(tick * 5).await;
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    let before = sample(&cluster).await;
    let cpu_before = process_cpu_seconds().unwrap_or_default();
    let measure_start = Instant::now();
    tokio::time::sleep(config.duration).await;
    let secs = measure_start.elapsed().as_secs_f64();
    let cpu_after = process_cpu_seconds().unwrap_or_default();
    let after = sample(&cluster).await;
    let led = cluster.leaders().await.len() as u64;
    let rss_bytes_per_replica = process_rss_bytes().map(|rss| rss / after.replicas.max(1));
    let (first_proposal_p50_us, next_proposal_p50_us) =
        probe_proposals(&cluster, config.groups).await;
    cluster.shutdown().await;
    let pairs = (config.nodes * config.nodes.saturating_sub(1)).max(1) as f64;
    Ok(IdleFigures {
        quiesce,
        groups: config.groups,
        election_s,
        led,
        settle_s,
        quiet_fraction: after.quiet as f64 / after.replicas.max(1) as f64,
        msgs_per_sec_per_pair: after.frames.saturating_sub(before.frames) as f64 / secs / pairs,
        raft_msgs_per_sec_per_node: after.raft.saturating_sub(before.raft) as f64
            / secs
            / config.nodes as f64,
        cpu_core_fraction_per_node: (cpu_after - cpu_before) / secs / config.nodes as f64,
        measured_s: secs,
        first_proposal_p50_us,
        next_proposal_p50_us,
        rss_bytes_per_replica,
    })
}
