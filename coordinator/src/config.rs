//! Raft settings shared by every group of a node.

/// What went wrong with a [`RaftConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A setting is outside the range raft accepts.
    #[error("invalid raft config: {field} {problem}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Raft settings for every group of a node. Plain data with safe defaults; [`RaftConfig::validate`]
/// is called when a [`crate::MultiRaft`] is built, so a bad value fails at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct RaftConfig {
    /// Ticks without hearing from a leader before a follower campaigns. Each group draws its
    /// actual timeout from `[election_tick, 2 * election_tick)` with the node's seeded RNG.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats. Must be smaller than `election_tick`.
    pub heartbeat_tick: usize,
    /// Most bytes of entries in one append message.
    pub max_size_per_msg: u64,
    /// Most append messages in flight to one follower of one group.
    pub max_inflight_msgs: usize,
    /// Most bytes of proposed but uncommitted entries per group (0 = unlimited); more proposals
    /// are dropped with `ProposalDropped` instead of growing memory.
    pub max_uncommitted_size: u64,
    /// raft-rs pre-vote: a partitioned node does not disrupt the group when it returns. On.
    pub pre_vote: bool,
    /// raft-rs check-quorum: a leader that lost its quorum steps down. On.
    pub check_quorum: bool,
    /// Take a state-machine snapshot and compact a group's log once this many applied entries
    /// are in it (0 = never compact).
    pub compact_threshold: u64,
    /// Entries kept behind the snapshot point when compacting, so briefly lagging followers
    /// catch up from the log instead of a snapshot.
    pub compact_keep: u64,
    /// Seed of the RNG that draws election timeouts, so a simulation replays exactly.
    pub seed: u64,
    /// Let idle groups go quiet: no ticks, no heartbeats, node-level liveness instead. On.
    pub quiesce: bool,
    /// Ticks a leader must be idle and fully replicated before its group goes quiet.
    pub quiesce_after_ticks: usize,
    /// Ticks between node-level liveness pings to each peer.
    pub liveness_interval_ticks: usize,
    /// Ticks of silence after which a peer counts as down and the quiet groups it leads wake
    /// (and elect a new leader). Failover of a quiet group takes this plus one election timeout.
    pub liveness_timeout_ticks: usize,
    /// Most elections this node starts by timeout at once; then `max_campaigns /
    /// election_tick` more per tick (at least one). A group whose election timeout fires
    /// with none left waits, tick by tick. Without a bound, tens of thousands of groups
    /// electing together (a new cluster, a restart, a lost node that led many) send more
    /// votes than the nodes can answer within one election timeout, every candidate times
    /// out and starts over, and none is ever elected. A rate, not a count of campaigns in
    /// flight: a campaign that can never win (a replica cut off one way) must not hold a
    /// place that another group needs.
    pub max_campaigns: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 * 1024 * 1024,
            pre_vote: true,
            check_quorum: true,
            compact_threshold: 10_000,
            compact_keep: 1_000,
            seed: 0,
            quiesce: true,
            quiesce_after_ticks: 10,
            liveness_interval_ticks: 3,
            liveness_timeout_ticks: 10,
            max_campaigns: 1024,
        }
    }
}

impl RaftConfig {
    /// Sets [`RaftConfig::election_tick`].
    pub fn election_tick(mut self, ticks: usize) -> Self {
        self.election_tick = ticks;
        self
    }
    /// Sets [`RaftConfig::heartbeat_tick`].
    pub fn heartbeat_tick(mut self, ticks: usize) -> Self {
        self.heartbeat_tick = ticks;
        self
    }
    /// Sets [`RaftConfig::compact_threshold`] and [`RaftConfig::compact_keep`].
    pub fn compaction(mut self, threshold: u64, keep: u64) -> Self {
        self.compact_threshold = threshold;
        self.compact_keep = keep;
        self
    }
    /// Turns quiescence on or off.
    pub fn quiesce(mut self, on: bool) -> Self {
        self.quiesce = on;
        self
    }
    /// Sets [`RaftConfig::max_campaigns`].
    pub fn max_campaigns(mut self, groups: usize) -> Self {
        self.max_campaigns = groups;
        self
    }
    /// Sets [`RaftConfig::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks that raft will accept these settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem| Err(ConfigError::Invalid { field, problem });
        if self.heartbeat_tick == 0 {
            return invalid("heartbeat_tick", "must be at least 1");
        }
        if self.election_tick <= self.heartbeat_tick {
            return invalid("election_tick", "must be greater than heartbeat_tick");
        }
        if self.max_inflight_msgs == 0 {
            return invalid("max_inflight_msgs", "must be at least 1");
        }
        if self.max_size_per_msg == 0 {
            return invalid("max_size_per_msg", "must be at least 1");
        }
        if self.liveness_interval_ticks == 0 {
            return invalid("liveness_interval_ticks", "must be at least 1");
        }
        if self.liveness_timeout_ticks <= self.liveness_interval_ticks {
            return invalid(
                "liveness_timeout_ticks",
                "must be greater than liveness_interval_ticks",
            );
        }
        if self.max_campaigns == 0 {
            return invalid("max_campaigns", "must be at least 1");
        }
        if self.compact_threshold != 0 && self.compact_keep >= self.compact_threshold {
            return invalid("compact_keep", "must be smaller than compact_threshold");
        }
        Ok(())
    }

    pub(crate) fn raft_config(&self, node: u64, applied: u64) -> raft::Config {
        raft::Config {
            id: node,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            max_uncommitted_size: if self.max_uncommitted_size == 0 {
                u64::MAX
            } else {
                self.max_uncommitted_size
            },
            check_quorum: self.check_quorum,
            pre_vote: self.pre_vote,
            // The coordinator draws every timeout itself (seeded, in [election_tick,
            // 2 * election_tick) but for the spread-out first elections of many groups
            // loaded at once): raft only needs to accept the widest of them.
            max_election_tick: self.election_tick.saturating_mul(MAX_ELECTION_SPREAD),
            ..raft::Config::default()
        }
    }
}

/// The first election of a group loaded with many others may wait up to this many election
/// timeouts (see `MultiRaft::spread_first_elections`).
pub(crate) const MAX_ELECTION_SPREAD: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_turn_on_pre_vote_and_check_quorum_and_validate() {
        let c = RaftConfig::default();
        assert!(c.pre_vote && c.check_quorum);
        assert_eq!(c.validate(), Ok(()));
        assert!(c.raft_config(1, 0).validate().is_ok());
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let err = RaftConfig::default()
            .election_tick(2)
            .heartbeat_tick(2)
            .validate();
        assert!(matches!(
            err,
            Err(ConfigError::Invalid {
                field: "election_tick",
                ..
            })
        ));
        let err = RaftConfig::default().compaction(10, 10).validate();
        assert!(matches!(
            err,
            Err(ConfigError::Invalid {
                field: "compact_keep",
                ..
            })
        ));
        let err = RaftConfig::default().max_campaigns(0).validate();
        assert!(matches!(
            err,
            Err(ConfigError::Invalid {
                field: "max_campaigns",
                ..
            })
        ));
    }
}
