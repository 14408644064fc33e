//! One slow state machine next to fast ones (`pontoon bench --slow-group-apply-ms N`).
//!
//! Committed commands are applied on apply workers, off the coordinator's task, and a group's
//! apply holds one worker at a time: a state machine that takes N ms per command in one group
//! must not slow the others' commits and answers. One cluster whose group 1 sleeps N ms per
//! command runs the same load on the other groups in alternating phases: alone (nobody writes
//! to group 1) and beside (one more client keeps writing to group 1). The report compares the
//! fast groups' latency, pooled over the phases of each kind: alternating on one cluster
//! keeps a fresh cluster's luck (where its leaders landed) out of the ratio. The beside
//! phases do strictly more work, so the comparison is conservative.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use coordinator::testkit::local::LoadStats;
use coordinator::{
    Committed, GroupStateMachine, Position, StateMachineError, StateMachineFactory, StateMachines,
};
use routing::{GroupId, NodeId, RoutingTable};
use serde::Serialize;

use super::cluster::{command_of, key_of, start_cluster_with};
use super::{BenchConfig, BenchError, LatencyUs, ReportConfig};

/// The fast groups' figures in one of the two runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FastGroups {
    /// Acknowledged proposals per second to the fast groups.
    pub proposals_per_sec: f64,
    /// Their commit latency.
    pub latency_us: LatencyUs,
    /// Proposals acknowledged.
    pub acknowledged: u64,
    /// Proposals that failed or timed out.
    pub failed: u64,
}

/// The two runs side by side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlowGroupReport {
    /// Milliseconds the slow group's state machine sleeps per command.
    pub apply_ms: f64,
    /// The slow group.
    pub slow_group: u64,
    /// The fast groups with no slow group writing.
    pub without: FastGroups,
    /// The fast groups beside the slow group.
    pub with: FastGroups,
    /// Commands the slow group applied and acknowledged during the second run.
    pub slow_group_acknowledged: u64,
    /// `with.latency_us.p99 / without.latency_us.p99`: 1.2 is 20% slower.
    pub p99_ratio: f64,
    /// What ran (the fast groups' clients are `concurrency`).
    pub config: ReportConfig,
    /// How to read these figures.
    pub note: String,
}

impl SlowGroupReport {
    /// The report as one JSON object.
    ///
    /// # Errors
    /// [`BenchError::Json`] (never for these plain fields).
    pub fn to_json(&self) -> Result<String, BenchError> {
        Ok(serde_json::to_string(self)?)
    }
}

/// Phases of each kind: alone, beside, alone, beside, ... on one cluster.
const ROUNDS: u32 = 2;

/// Runs the fast-group load alone and beside the slow group, alternating (see the module
/// docs), and reports both.
///
/// # Errors
/// [`BenchError`] naming the step that failed.
pub async fn run_slow_group(
    config: &BenchConfig,
    apply: Duration,
    progress: impl Fn(&str),
) -> Result<SlowGroupReport, BenchError> {
    config.validate()?;
    if config.groups < 2 {
        return Err(BenchError::Config {
            field: "groups",
            problem: "must be at least 2 beside a slow group".into(),
        });
    }
    let nodes: Vec<NodeId> = (1..=config.nodes).map(NodeId).collect();
    let routing = Arc::new(RoutingTable::uniform(
        config.vshards,
        config.groups,
        &nodes,
        config.replication(),
    )?);
    let slow = GroupId(1);
    let dir = tempfile::tempdir()?;
    let (cluster, _) = start_cluster_with(config, dir.path(), move |_| {
        StateMachines::per_group(SleepyCounters {
            slow: Some((slow, apply)),
        })
    })
    .await?;
    let (alone, beside, slow_stats) = (
        Phase::default(),
        Phase::default(),
        Arc::new(LoadStats::default()),
    );
    let timeout = Duration::from_secs(10);
    let bytes = config.command_bytes;
    for round in 1..=ROUNDS {
        for (phase, with_slow) in [(&alone, false), (&beside, true)] {
            progress(&format!(
                "round {round}/{ROUNDS}: {} clients on {} fast groups for {:.1} s{}",
                config.concurrency,
                config.groups - 1,
                config.duration.as_secs_f64(),
                if with_slow {
                    format!(
                        ", beside group {slow} applying at {} ms per command",
                        apply.as_millis()
                    )
                } else {
                    ", alone".to_string()
                }
            ));
            let until = Instant::now() + config.duration;
            let start = Instant::now();
            let fast_keys = routing.clone();
            let fast_load = cluster.drive(
                config.concurrency,
                until,
                timeout,
                move |n| {
                    let key = key_where(n, "fast", |k| fast_keys.group_for_key(k) != slow);
                    (key, command_of(n, bytes))
                },
                |_, _, _| {},
                phase.stats.clone(),
            );
            let slow_keys = routing.clone();
            let slow_load = async {
                if with_slow {
                    cluster
                        .drive(
                            1,
                            until,
                            timeout,
                            move |n| {
                                let key =
                                    key_where(n, "slow", |k| slow_keys.group_for_key(k) == slow);
                                (key, command_of(n, bytes))
                            },
                            |_, _, _| {},
                            slow_stats.clone(),
                        )
                        .await;
                }
            };
            tokio::join!(fast_load, slow_load);
            *lock(&phase.elapsed) += start.elapsed();
        }
    }
    cluster.shutdown().await;
    let (without, with) = (alone.figures()?, beside.figures()?);
    let p99_ratio = with.latency_us.p99 as f64 / without.latency_us.p99.max(1) as f64;
    Ok(SlowGroupReport {
        apply_ms: apply.as_secs_f64() * 1e3,
        slow_group: slow.get(),
        without,
        with,
        slow_group_acknowledged: slow_stats.acknowledged(),
        p99_ratio,
        config: ReportConfig::of(config),
        note: format!(
            "one cluster in one process on one machine ({} cores); {ROUNDS} phases of each \
             kind, alternating, pooled; beside: one more client writes to the slow group, whose \
             apply holds one of each node's apply workers while it sleeps",
            std::thread::available_parallelism().map_or(0, usize::from)
        ),
    })
}

/// The fast groups' load over the phases of one kind.
#[derive(Default)]
struct Phase {
    stats: Arc<LoadStats>,
    elapsed: std::sync::Mutex<Duration>,
}

impl Phase {
    fn figures(&self) -> Result<FastGroups, BenchError> {
        let acknowledged = self.stats.acknowledged();
        let failed = self.stats.failed.load(Ordering::Relaxed);
        if acknowledged == 0 {
            return Err(BenchError::NothingAcknowledged { failed });
        }
        let q = self.stats.latencies_us(&[0.5, 0.99, 0.999]);
        let at = |i: usize| q.get(i).copied().unwrap_or_default();
        Ok(FastGroups {
            proposals_per_sec: acknowledged as f64 / lock(&self.elapsed).as_secs_f64().max(1e-9),
            latency_us: LatencyUs {
                p50: at(0),
                p99: at(1),
                p999: at(2),
            },
            acknowledged,
            failed,
        })
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first key derived from `n` that `wanted` accepts (distinct per `n` and `tag`).
fn key_where(n: u64, tag: &str, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let base = key_of(n);
    (0u32..)
        .map(|salt| {
            let mut key = base.clone();
            key.extend_from_slice(format!("-{tag}-{salt}").as_bytes());
            key
        })
        .find(|key| wanted(key))
        .unwrap_or(base)
}

/// One counter per group; the slow group's apply sleeps per command.
struct SleepyCounters {
    slow: Option<(GroupId, Duration)>,
}

impl StateMachineFactory for SleepyCounters {
    fn open(&self, group: GroupId) -> Result<Box<dyn GroupStateMachine>, StateMachineError> {
        Ok(Box::new(SleepyCounter {
            sleep: self.slow.filter(|(g, _)| *g == group).map(|(_, d)| d),
            count: 0,
        }))
    }
}

struct SleepyCounter {
    sleep: Option<Duration>,
    count: u64,
}

impl GroupStateMachine for SleepyCounter {
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        if let Some(per_command) = self.sleep {
            for _ in batch {
                std::thread::sleep(per_command);
            }
        }
        self.count += batch.len() as u64;
        Ok(vec![Vec::new(); batch.len()])
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        Ok(out.write_all(&self.count.to_be_bytes())?)
    }

    fn restore(
        &mut self,
        _covers: Position,
        input: &mut dyn Read,
    ) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        self.count = match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(count) => u64::from_be_bytes(count),
            Err(_) if bytes.is_empty() => 0,
            Err(_) => return Err(format!("counter snapshot of {} bytes", bytes.len()).into()),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_where_asked() {
        let routing =
            RoutingTable::uniform(1024, 8, &[NodeId(1), NodeId(2), NodeId(3)], 3).unwrap();
        for n in 0..50 {
            let slow = key_where(n, "slow", |k| routing.group_for_key(k) == GroupId(1));
            assert_eq!(routing.group_for_key(&slow), GroupId(1));
            let fast = key_where(n, "fast", |k| routing.group_for_key(k) != GroupId(1));
            assert_ne!(routing.group_for_key(&fast), GroupId(1));
        }
    }
}
