//! [`BenchConfig`]: what one benchmark run measures, with the defaults of `pontoon bench`.

use std::path::PathBuf;
use std::time::Duration;

use storage::Persist;

use super::BenchError;

/// Most groups a benchmark run may create.
pub const MAX_GROUPS: u64 = 10_000;

/// Largest command a run may propose: raft's default `max_size_per_msg` (1 MiB).
const MAX_COMMAND_BYTES: usize = 1 << 20;

/// One benchmark run: the cluster's shape, the load, and how long to measure. Plain data with
/// the defaults of `pontoon bench`; [`BenchConfig::validate`] runs before anything starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct BenchConfig {
    /// Nodes of the local cluster; every group has `min(3, nodes)` replicas. Default 3.
    pub nodes: u64,
    /// Raft groups, `1..=10_000`. Default 64.
    pub groups: u64,
    /// vShards the keys hash to, at least `groups` so every group takes load. Default 1024.
    pub vshards: u32,
    /// Bytes of each proposed command. Default 256.
    pub command_bytes: usize,
    /// Closed-loop clients, each with one proposal in flight. Default 256.
    pub concurrency: usize,
    /// How long the load runs. Default 10 s.
    pub duration: Duration,
    /// Raft tick interval of every node. Default 50 ms.
    pub tick: Duration,
    /// Durability of every node's log commits and of the fjall baseline. Default
    /// [`Persist::SyncData`] (fdatasync).
    pub persist: Persist,
    /// How long each raw baseline runs. Default 2 s.
    pub baseline_duration: Duration,
    /// Where to write the cluster run's time series, one JSON line per second (see
    /// `coordinator::testkit::series`). Default none.
    pub series: Option<PathBuf>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            groups: 64,
            vshards: 1024,
            command_bytes: 256,
            concurrency: 256,
            duration: Duration::from_secs(10),
            tick: Duration::from_millis(50),
            persist: Persist::SyncData,
            baseline_duration: Duration::from_secs(2),
            series: None,
        }
    }
}

impl BenchConfig {
    /// Replicas of each group: `min(3, nodes)`.
    #[must_use]
    pub fn replication(&self) -> usize {
        usize::try_from(self.nodes.min(3)).unwrap_or(3)
    }

    /// Checks every value, naming the first one out of range.
    ///
    /// # Errors
    /// [`BenchError::Config`].
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |field, problem: String| Err(BenchError::Config { field, problem });
        if !(1..=16).contains(&self.nodes) {
            return bad("nodes", format!("{} is not within 1..=16", self.nodes));
        }
        if !(1..=MAX_GROUPS).contains(&self.groups) {
            return bad(
                "groups",
                format!("{} is not within 1..={MAX_GROUPS}", self.groups),
            );
        }
        if u64::from(self.vshards) < self.groups || self.vshards > routing::MAX_VSHARDS {
            return bad(
                "vshards",
                format!(
                    "{} is not within groups ({})..={} (fewer vShards than groups leaves groups without load)",
                    self.vshards,
                    self.groups,
                    routing::MAX_VSHARDS
                ),
            );
        }
        if !(1..=MAX_COMMAND_BYTES).contains(&self.command_bytes) {
            return bad(
                "command_bytes",
                format!(
                    "{} is not within 1..={MAX_COMMAND_BYTES}",
                    self.command_bytes
                ),
            );
        }
        if !(1..=100_000).contains(&self.concurrency) {
            return bad(
                "concurrency",
                format!("{} is not within 1..=100000", self.concurrency),
            );
        }
        if self.duration < Duration::from_millis(100) {
            return bad(
                "duration",
                format!("{:?} is shorter than 100 ms", self.duration),
            );
        }
        if self.tick < Duration::from_millis(1) || self.tick > Duration::from_secs(10) {
            return bad("tick", format!("{:?} is not within 1 ms..=10 s", self.tick));
        }
        if self.baseline_duration < Duration::from_millis(100) {
            return bad(
                "baseline_duration",
                format!("{:?} is shorter than 100 ms", self.baseline_duration),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert!(BenchConfig::default().validate().is_ok());
        assert_eq!(BenchConfig::default().replication(), 3);
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let field = |c: BenchConfig| match c.validate() {
            Err(BenchError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        let d = BenchConfig::default;
        assert_eq!(field(BenchConfig { groups: 0, ..d() }), "groups");
        assert_eq!(
            field(BenchConfig {
                groups: 10_001,
                vshards: 20_000,
                ..d()
            }),
            "groups"
        );
        assert_eq!(field(BenchConfig { nodes: 0, ..d() }), "nodes");
        assert_eq!(field(BenchConfig { vshards: 8, ..d() }), "vshards");
        assert_eq!(
            field(BenchConfig {
                command_bytes: 0,
                ..d()
            }),
            "command_bytes"
        );
        assert_eq!(
            field(BenchConfig {
                concurrency: 0,
                ..d()
            }),
            "concurrency"
        );
        assert_eq!(
            field(BenchConfig {
                duration: Duration::ZERO,
                ..d()
            }),
            "duration"
        );
        assert_eq!(
            field(BenchConfig {
                tick: Duration::ZERO,
                ..d()
            }),
            "tick"
        );
    }
}
