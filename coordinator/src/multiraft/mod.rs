//! [`MultiRaft`]: every raft group of one node behind one sans-IO state machine.
//!
//! Inputs: [`MultiRaft::tick`], [`MultiRaft::step`], [`MultiRaft::propose`], reads, conf changes.
//! Output: [`MultiRaft::poll_cycle`] gathers the `Ready` of every group into one [`Cycle`]: one
//! storage batch for all groups, the messages that may leave now, the entries to apply, and
//! events. Once the driver has made the batch durable it calls [`MultiRaft::on_persisted`],
//! which releases the messages that had to wait for the fsync (votes, follower acks).
//!
//! No sockets, clocks or threads: the same code runs under the tokio [`crate::Node`] and under a
//! deterministic simulation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use routing::{GroupId, NodeId};
use storage::{GroupStorage, LogStore, WriteBatch};
use transport::Envelope;

use crate::conf_change;
use crate::config::RaftConfig;
use crate::error::{CoordinatorError, RequestError};
use crate::logging::group_logger;
use crate::outbox::{self, CoalesceCount, Outbox};
use crate::proposal_batch;

pub(crate) mod admission;
mod cycle;
mod group;
mod groups;
mod handoff;
mod pacing;
mod quiesce;
mod types;

use group::Group;

pub use types::{
    Apply, CoordinatorStats, Cycle, CycleId, CycleOutput, Event, GroupCounts, GroupStatus, Role,
    SnapshotCheck, Token,
};

/// An entry proposed through this node: the term it was proposed in and its commands' tokens.
struct Proposed {
    term: u64,
    tokens: Vec<Token>,
    /// A membership change (raft may replace a refused one with an empty normal entry).
    conf_change: bool,
}

struct Inflight {
    id: CycleId,
    readies: Vec<(GroupId, u64)>,
    after_persist: Outbox,
}

/// Every raft group of one node. See the module docs.
pub struct MultiRaft {
    id: NodeId,
    config: RaftConfig,
    store: LogStore,
    groups: BTreeMap<GroupId, Group>,
    rng: StdRng,
    /// See [`MultiRaft::set_snapshot_check`].
    snapshot_check: Option<SnapshotCheck>,
    /// Writes made outside a `Ready` (group creation, compaction), merged into the next cycle.
    pending: WriteBatch,
    pending_applies: Vec<Apply>,
    inflight: VecDeque<Inflight>,
    next_cycle: u64,
    /// Entries proposed here, by (group, index): the term and the tokens of their commands.
    proposals: BTreeMap<(GroupId, u64), Proposed>,
    /// Groups with commands queued for the next cycle's batch.
    queued_groups: BTreeSet<GroupId>,
    /// Groups that are not quiet: the only ones `tick` visits (quiet ones leave lazily).
    awake: BTreeSet<GroupId>,
    /// Groups that applied entries since the last `compaction_due`.
    applied_since_check: BTreeSet<GroupId>,
    /// Groups touched since the last cycle (stepped, ticked, proposed to): only these can have
    /// a `Ready`, so a cycle costs what happened, not how many groups the node holds.
    dirty: BTreeSet<GroupId>,
    /// Messages the coordinator itself sends (quiesce heartbeats, liveness), in the next cycle.
    own_messages: Outbox,
    /// Events raised between cycles (groups quiet or woken, peers down or up), handed out
    /// with the next cycle's.
    pending_events: Vec<Event>,
    /// Liveness rounds left in which replicas that know no leader probe for it (after a
    /// start, or when a peer is heard again: see `probe_leaders`).
    probe_rounds: usize,
    /// Ticks since each peer was last heard from, for node-level liveness.
    silent_ticks: BTreeMap<NodeId, usize>,
    /// The tick at which each peer was last reported unreachable to every group.
    unreachable_reported: BTreeMap<NodeId, u64>,
    /// The peer set must be recomputed (groups or configurations changed).
    peers_stale: bool,
    /// The nodes the routing table places on each group: heard by a replica before the
    /// membership change that adds them applies (see [`MultiRaft::set_placement`]).
    placement: BTreeMap<GroupId, BTreeSet<NodeId>>,
    /// The nodes of the cluster, once a routing table said (see [`MultiRaft::set_placement`]).
    cluster: Option<BTreeSet<NodeId>>,
    /// Elections this node may still start now (see [`RaftConfig::max_campaigns`]).
    campaign_tokens: usize,
    ticks: u64,
    stats: CoordinatorStats,
    /// The index of each group's last membership change handed out: a snapshot taken before
    /// it would carry the wrong configuration.
    conf_changed_at: BTreeMap<GroupId, u64>,
    /// How far each group's state machine has made its state durable (when it says): the
    /// log is never compacted past it.
    durable: BTreeMap<GroupId, u64>,
}

const BOOTSTRAP_INDEX: u64 = 1;
/// How many liveness rounds leaderless replicas probe for their leader after a start or a
/// reconnection (a probe lost with a connection not yet up is sent again).
const LEADER_PROBE_ROUNDS: usize = 3;
/// How many groups' first elections one election window takes (see `spread_first_elections`).
const GROUPS_PER_ELECTION_WINDOW: usize = 4096;
const BOOTSTRAP_TERM: u64 = 1;

impl MultiRaft {
    /// Builds the core for node `id` on `store`, recovering every group the store holds.
    ///
    /// # Errors
    /// A bad config, or a group whose stored state raft rejects.
    pub fn new(id: NodeId, config: RaftConfig, store: LogStore) -> Result<Self, CoordinatorError> {
        config.validate()?;
        if id.get() == 0 {
            return Err(CoordinatorError::InvalidNodeId);
        }
        let campaign_tokens = config.max_campaigns;
        let mut this = Self {
            id,
            rng: StdRng::seed_from_u64(config.seed ^ id.get().rotate_left(32)),
            snapshot_check: None,
            config,
            pending: store.batch(),
            pending_applies: Vec::new(),
            store,
            groups: BTreeMap::new(),
            inflight: VecDeque::new(),
            next_cycle: 1,
            proposals: BTreeMap::new(),
            queued_groups: BTreeSet::new(),
            dirty: BTreeSet::new(),
            awake: BTreeSet::new(),
            applied_since_check: BTreeSet::new(),
            own_messages: Outbox::default(),
            pending_events: Vec::new(),
            probe_rounds: LEADER_PROBE_ROUNDS,
            silent_ticks: BTreeMap::new(),
            unreachable_reported: BTreeMap::new(),
            peers_stale: true,
            placement: BTreeMap::new(),
            cluster: None,
            campaign_tokens,
            ticks: 0,
            stats: CoordinatorStats::default(),
            conf_changed_at: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        let stored = this.store.groups();
        for group in &stored {
            let storage = this.store.group(*group)?;
            this.load_group(*group, storage)?;
        }
        this.spread_first_elections(&stored);
        Ok(this)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The groups this node holds.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Whether this node holds `group`.
    pub fn has_group(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group)
    }

    /// Counters.
    pub fn stats(&self) -> &CoordinatorStats {
        &self.stats
    }

    /// The tokens of the commands proposed here that are still queued for the next cycle:
    /// raft has not seen them, so they cannot take effect if the node stops now.
    pub fn queued_tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.queued_groups
            .iter()
            .filter_map(|group| self.groups.get(group))
            .flat_map(|g| g.queued.iter().map(|(_, token)| *token))
    }

    /// Every peer this node shares a group with, and whether node-level liveness heard from
    /// it within the liveness timeout. Empty while quiescence (and with it liveness) is off.
    pub fn peer_liveness(&self) -> impl Iterator<Item = (NodeId, bool)> + '_ {
        let timeout = self.config.liveness_timeout_ticks;
        self.silent_ticks
            .iter()
            .map(move |(peer, silent)| (*peer, *silent < timeout))
    }

    /// Forgets the proposals of `group` at indexes up to `up_to`, returning their tokens.
    fn take_proposals(&mut self, group: GroupId, up_to: u64) -> Vec<Token> {
        let keys: Vec<_> = self
            .proposals
            .range((group, 0)..=(group, up_to))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.proposals.remove(&k))
            .flat_map(|p| p.tokens)
            .collect()
    }

    /// The group, awake and marked touched: every caller is about to give it work.
    fn group_mut(&mut self, group: GroupId) -> Result<&mut Group, RequestError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(RequestError::GroupNotFound { group })?;
        if g.quiet {
            Self::wake(
                g,
                &mut self.stats,
                &mut self.awake,
                &mut self.pending_events,
                group,
            );
        }
        self.dirty.insert(group);
        Ok(g)
    }

    /// Hands what a peer sent to the groups it is for. Coalesced heartbeats are expanded back
    /// into per-group messages here.
    ///
    /// Messages for a group this node does not hold are counted and dropped; raft errors of a
    /// single message (stale term and the like) are logged and dropped, as raft expects.
    pub fn step(&mut self, from: NodeId, envelope: Envelope) {
        // Any message proves the peer alive (an empty heartbeat batch is the liveness ping).
        if let Some(silent) = self.silent_ticks.get_mut(&from) {
            let back = *silent >= self.config.liveness_timeout_ticks;
            *silent = 0;
            if back {
                self.remind_leadership(from);
            }
        }
        match envelope {
            Envelope::Raft { group, messages } => {
                for m in messages {
                    self.step_one(from, group, m, false);
                }
            }
            Envelope::Heartbeats(batch) => {
                let expanded: Vec<_> = outbox::expand(from, self.id, &batch).collect();
                for (group, m, quiesce) in expanded {
                    self.step_one(from, group, m, quiesce);
                }
            }
            Envelope::Snapshot { group, message } => self.step_one(from, group, message, false),
            // Forwarded requests are the driver's (they become proposals through the same
            // checks as a local caller's); the core has no use for them.
            Envelope::Forward(_) => {}
        }
    }

    fn step_one(&mut self, from: NodeId, group: GroupId, mut m: Message, quiesce: bool) {
        let Some(g) = self.groups.get_mut(&group) else {
            self.stats.unknown_group_messages += 1;
            tracing::debug!(%group, %from, "message for a group this node does not hold");
            return;
        };
        // A leader probe is no raft message: only the leader answers it, never raft.
        if quiesce && m.get_msg_type() == MessageType::MsgHeartbeatResponse {
            if g.quiet
                && g.is_leader()
                && let Some(commit) = g.heartbeat_commit(from)
            {
                self.own_messages
                    .push_quiesce(group, from, g.term(), commit);
            } else if g.quiet && g.leader() == Some(from) {
                // The leader this quiet replica follows asks who leads: it restarted, and
                // leads nothing any more. Elect now, as when liveness declares it dead.
                Self::wake(
                    g,
                    &mut self.stats,
                    &mut self.awake,
                    &mut self.pending_events,
                    group,
                );
                Self::stagger_election(self.id, from, self.config.election_tick, g);
                self.dirty.insert(group);
            }
            return;
        }
        // The transport proved who sent it; raft must not be told otherwise.
        m.from = from.get();
        m.to = self.id.get();
        let standing = admission::Standing {
            placed: self
                .placement
                .get(&group)
                .is_some_and(|nodes| nodes.contains(&from)),
            // Without a routing table (a core driven on its own) every sender counts as a node
            // of the cluster. A joining node's table is the embedder's list of running nodes:
            // its meta replica hears only them until the cluster's own table arrives.
            in_cluster: self
                .cluster
                .as_ref()
                .is_none_or(|nodes| nodes.contains(&from)),
        };
        let verdict =
            admission::check_for_group(group, g.quarantined, self.snapshot_check.as_ref(), &m)
                .and_then(|()| admission::admit(g.view(), from, standing, &m));
        match verdict {
            Ok(admission::Verdict::Step) => {}
            Ok(admission::Verdict::ClampCommit { to }) => {
                self.stats.log_behind_leader += 1;
                if self.stats.log_behind_leader.is_power_of_two() {
                    tracing::error!(
                        %group, leader = %from, commit = m.commit, last_index = to,
                        "the leader says this replica acknowledged entries its log no longer \
                         holds: durable log was lost (disk, filesystem or fsync failure)"
                    );
                }
                m.commit = to;
            }
            Err(refusal) => {
                let count = self
                    .stats
                    .refused_messages
                    .entry(refusal.reason())
                    .or_default();
                *count += 1;
                // Rate-limited: a hostile peer must not be able to flood the log.
                if count.is_power_of_two() {
                    tracing::warn!(%group, %from, %refusal, refused = *count, "refused a raft message");
                }
                return;
            }
        }
        // A heartbeat response changes nothing a quiet leader must act on; anything else
        // means the group has work again.
        if g.quiet && m.get_msg_type() != MessageType::MsgHeartbeatResponse && !quiesce {
            Self::wake(
                g,
                &mut self.stats,
                &mut self.awake,
                &mut self.pending_events,
                group,
            );
        }
        if let Err(error) = g.step(m) {
            tracing::debug!(%group, %from, %error, "raft rejected a message");
        }
        Self::jitter_election(&mut self.rng, &self.config, g);
        self.dirty.insert(group);
        if quiesce && !g.quiet && g.is_caught_up_follower_of(from) {
            g.quiet = true;
            self.stats.quiesced += 1;
            self.pending_events.push(Event::Quiet { group });
        }
    }

    /// Proposes `data` to `group`. `token` comes back in [`Apply::Command`] when the entry is
    /// committed and handed out for applying, or in [`Event::ProposalDropped`].
    ///
    /// # Errors
    /// [`RequestError::NotLeader`] with the leader this node knows of, [`RequestError::GroupNotFound`],
    /// [`RequestError::ProposalDropped`] when raft refuses it (leader transfer in progress, too
    /// many uncommitted bytes), [`RequestError::QuorumUnreachable`] when node-level liveness
    /// holds too many voters down for it to commit.
    pub fn propose(
        &mut self,
        group: GroupId,
        data: Vec<u8>,
        token: Token,
    ) -> Result<(), RequestError> {
        self.admit_request(group, true)?;
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(RequestError::GroupNotFound { group })?;
        if g.quiet {
            Self::wake(
                g,
                &mut self.stats,
                &mut self.awake,
                &mut self.pending_events,
                group,
            );
        }
        g.queued.push((data, token));
        self.queued_groups.insert(group);
        self.dirty.insert(group);
        Ok(())
    }

    /// Proposes a membership change (joint consensus when it has several steps).
    ///
    /// # Errors
    /// As [`MultiRaft::propose`]; raft also refuses while another change is pending.
    pub fn propose_conf_change(
        &mut self,
        group: GroupId,
        change: &ConfChangeV2,
        token: Token,
    ) -> Result<(), RequestError> {
        self.admit_request(group, true)?;
        let g = self.group_mut(group)?;
        let (index, term) = g
            .propose_conf_change(change)
            .ok_or(RequestError::ProposalDropped { group })?;
        self.proposals.insert(
            (group, index),
            Proposed {
                term,
                tokens: vec![token],
                conf_change: true,
            },
        );
        Ok(())
    }

    /// Starts a linearizable read of `group`: [`Event::ReadReady`] with `token` follows once the
    /// local state machine has applied everything committed when the read began.
    ///
    /// # Errors
    /// [`RequestError::GroupNotFound`]; [`RequestError::NotLeader`] with no leader known.
    pub fn read_index(&mut self, group: GroupId, token: Token) -> Result<(), RequestError> {
        self.admit_request(group, false)?;
        let g = self.group_mut(group)?;
        g.read_index(token.to_be_bytes().to_vec());
        Ok(())
    }

    /// Asks the leader of `group` to hand leadership to `to`.
    ///
    /// # Errors
    /// [`RequestError::GroupNotFound`], [`RequestError::NotLeader`].
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> Result<(), RequestError> {
        self.admit_request(group, true)?;
        let g = self.group_mut(group)?;
        g.transfer_leader(to);
        Ok(())
    }

    /// Starts an election in `group` now (tests and operator tools).
    ///
    /// # Errors
    /// [`RequestError::GroupNotFound`].
    pub fn campaign(&mut self, group: GroupId) -> Result<(), RequestError> {
        self.refuse_quarantined(group)?;
        let _ = self.group_mut(group)?.campaign();
        if let Some(g) = self.groups.get_mut(&group) {
            Self::jitter_election(&mut self.rng, &self.config, g);
        }
        Ok(())
    }

    /// Makes `group` campaign on the next tick [`RaftConfig::max_campaigns`] lets it: how a
    /// new cluster elects the leaders its routing table hints at without a storm of
    /// elections, however many groups it has.
    ///
    /// # Errors
    /// [`RequestError::GroupNotFound`].
    pub fn campaign_soon(&mut self, group: GroupId) -> Result<(), RequestError> {
        self.refuse_quarantined(group)?;
        self.group_mut(group)?.set_election_elapsed_to_brink();
        self.awake.insert(group);
        Ok(())
    }

    /// The transport could not reach `to`: raft probes it again instead of streaming appends.
    pub fn report_unreachable(&mut self, to: NodeId, group: Option<GroupId>) {
        match group {
            // Only a progress state changes (replicate -> probe): no `Ready` follows, so the
            // group need not be in the next cycle.
            Some(group) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.report_unreachable(to);
                }
            }
            // A coalesced message (or the connection) failed: every group led here hears it,
            // but once per tick per peer, or a burst of failures would walk every group
            // for each one.
            None => {
                if self.unreachable_reported.get(&to) == Some(&self.ticks) {
                    return;
                }
                self.unreachable_reported.insert(to, self.ticks);
                for g in self.groups.values_mut() {
                    if g.is_leader() && !g.quiet {
                        g.report_unreachable(to);
                    }
                }
            }
        }
    }

    /// The transport finished (or failed) sending a snapshot of `group` to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, group: GroupId, delivered: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.report_snapshot(to, delivered);
            self.dirty.insert(group);
        }
    }

    /// The status of `group`.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        self.groups.get(&group).map(|g| g.status(group))
    }

    /// The groups counted by role, quiet, leaderless and set aside: what metrics publish
    /// every second, without the copy of every group's configuration that
    /// [`MultiRaft::status`] makes. Walks every group.
    #[must_use]
    pub fn group_counts(&self) -> GroupCounts {
        let mut counts = GroupCounts::default();
        for g in self.groups.values() {
            counts.add(
                g.role().into(),
                g.quiet,
                g.leader().is_none(),
                g.quarantined,
            );
        }
        counts
    }

    /// How many groups are campaigning (pre-vote or vote) now. Walks every group.
    pub fn campaigning(&self) -> usize {
        self.groups.values().filter(|g| g.is_campaigning()).count()
    }

    /// How many groups are quiet now.
    pub fn quiet_groups(&self) -> usize {
        self.groups.values().filter(|g| g.quiet).count()
    }

    /// Whether any group has work for a cycle.
    pub fn has_ready(&self) -> bool {
        !self.pending.is_empty()
            || !self.queued_groups.is_empty()
            || !self.pending_applies.is_empty()
            || !self.own_messages.is_empty()
            || !self.pending_events.is_empty()
            || self
                .dirty
                .iter()
                .any(|id| self.groups.get(id).is_some_and(|g| g.has_ready()))
    }

    /// Groups whose log has grown past the compaction threshold since their last snapshot.
    /// For each, the driver takes a state-machine snapshot and calls [`MultiRaft::compact`].
    /// Also the groups whose leader needs a fresher snapshot to send (a replica added after
    /// the last one was taken).
    ///
    /// Only groups that applied entries since the last call are examined.
    pub fn compaction_due(&mut self) -> Vec<GroupId> {
        let mut due: BTreeSet<GroupId> = self
            .store
            .take_snapshot_requests()
            .into_iter()
            .filter(|g| self.groups.contains_key(g))
            .collect();
        let applied = std::mem::take(&mut self.applied_since_check);
        if self.config.compact_threshold != 0 {
            due.extend(applied.into_iter().filter(|id| {
                self.groups.get(id).is_some_and(|g| {
                    g.applied.saturating_sub(g.first_index()) + 1 > self.config.compact_threshold
                })
            }));
        }
        due.into_iter().collect()
    }

    /// Runs `check` on the bytes of every snapshot a peer sends for a group other than the
    /// meta group, before raft installs it: a snapshot it refuses is dropped and counted
    /// (`unrestorable_snapshot`), and this replica's state and log stay as they were. A
    /// node installs its state machines' check here; without one, every snapshot whose
    /// metadata is sound is installed.
    pub fn set_snapshot_check(&mut self, check: SnapshotCheck) {
        self.snapshot_check = Some(check);
    }

    /// Sets this node's replica of `group` aside because its state machine failed (it could
    /// not restore a snapshot a peer sent): the replica keeps acknowledging the leader's log,
    /// so the group's quorum is unchanged, but it never campaigns, never takes a leadership
    /// transfer, and refuses every request with [`RequestError::ReplicaFailed`]. The node's
    /// other groups carry on; [`Event::ReplicaFailed`] tells the embedder. Removing the
    /// replica (a membership change) clears it.
    pub fn quarantine(&mut self, group: GroupId, reason: String) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if g.quarantined {
            return;
        }
        g.quarantined = true;
        tracing::error!(
            %group, %reason,
            "state machine failed: this replica serves nothing until it is replaced"
        );
        self.pending_events
            .push(Event::ReplicaFailed { group, reason });
    }

    /// Whether this node's replica of `group` is set aside ([`MultiRaft::quarantine`]).
    #[must_use]
    pub fn is_quarantined(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| g.quarantined)
    }

    /// Records how far `group`'s state machine has made its state durable (`None`: it keeps
    /// nothing durable). [`MultiRaft::compact`] never drops log entries past it, so a restart
    /// can replay from there.
    pub fn set_durable_position(&mut self, group: GroupId, durable: Option<crate::Position>) {
        match durable {
            Some(position) => {
                self.durable.insert(group, position.index);
            }
            None => {
                self.durable.remove(&group);
            }
        }
    }

    /// Stores `data`, the state machine's snapshot of `group` taken once it had applied
    /// everything up to `index`, and drops the log before it (keeping
    /// [`RaftConfig::compact_keep`] entries, and every entry after the state machine's durable
    /// position), in the next batch. A snapshot that is no longer usable (older than the
    /// stored one, or than a membership change since) is skipped: it is asked for again.
    ///
    /// # Errors
    /// [`CoordinatorError::GroupNotFound`]; a raft log error reading the snapshot's term.
    pub fn compact(
        &mut self,
        group: GroupId,
        index: u64,
        data: Vec<u8>,
    ) -> Result<(), CoordinatorError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(CoordinatorError::GroupNotFound { group })?;
        let first = g.first_index();
        if index < first
            || index > g.applied
            || self.conf_changed_at.get(&group).is_some_and(|&c| c > index)
        {
            tracing::debug!(%group, index, first, applied = g.applied, "snapshot not usable; skipped");
            return Ok(());
        }
        let term = g
            .term_at(index)
            .map_err(|source| CoordinatorError::Raft { group, source })?;
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        let conf_state = g.conf_state();
        meta.set_conf_state(conf_state.clone());
        self.pending.save_snapshot(group, snapshot);
        // The stored conf state is always the one at the stored snapshot (see `hand_out`).
        self.pending.set_conf_state(group, conf_state);
        // With compaction off, a snapshot is still taken when a new replica needs one.
        let keep = if self.config.compact_threshold == 0 {
            u64::MAX
        } else {
            self.config.compact_keep
        };
        let mut compact_to = (index + 1).saturating_sub(keep).max(first);
        if let Some(&durable) = self.durable.get(&group) {
            compact_to = compact_to.min(durable.max(first));
        }
        if compact_to > first {
            self.pending.compact(group, compact_to);
        }
        self.stats.compactions += 1;
        Ok(())
    }
}
