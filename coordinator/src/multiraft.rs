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
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use routing::{GroupId, NodeId};
use storage::{GroupStorage, LogStore, StagedBatch, WriteBatch};
use transport::Envelope;

use crate::conf_change;
use crate::config::RaftConfig;
use crate::error::{CoordinatorError, RequestError};
use crate::logging::group_logger;
use crate::outbox::{self, CoalesceCount, Outbox};
use crate::proposal_batch;

/// An opaque number the caller attaches to a proposal or a read, handed back when it completes.
pub type Token = u64;

/// Identifies a [`Cycle`] until its batch is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CycleId(pub u64);

/// The role of this node in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    /// Follows a leader.
    Follower,
    /// Campaigning.
    Candidate,
    /// Pre-vote campaign (does not raise the term).
    PreCandidate,
    /// Leads the group.
    Leader,
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Self {
        match role {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// One group as seen from this node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// This node's role in it.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The highest index known committed.
    pub commit: u64,
    /// The highest index handed to the state machine.
    pub applied: u64,
    /// The first index still in the log.
    pub first_index: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// Voters of the current configuration (and of the outgoing one during a joint change).
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// In a joint configuration (a membership change between its two steps).
    pub joint: bool,
    /// Quiescent: idle, not ticking, kept alive by node-level liveness.
    pub quiet: bool,
}

/// Work for the state machine, in the order it must be done.
#[derive(Clone, Debug, PartialEq)]
pub enum Apply {
    /// Replace the group's state with this snapshot (empty data: the empty state).
    Restore {
        /// The group.
        group: GroupId,
        /// Index the snapshot covers.
        index: u64,
        /// The state machine's snapshot bytes.
        data: Vec<u8>,
    },
    /// Apply one committed command.
    Command {
        /// The group.
        group: GroupId,
        /// The log index of the entry holding it (commands batched into one entry share it).
        index: u64,
        /// The term it was proposed in.
        term: u64,
        /// The command bytes.
        data: Vec<u8>,
        /// The proposal it completes, when it was proposed through this node.
        proposal: Option<Token>,
    },
    /// A membership change took effect (nothing for the state machine to do; completes a proposal).
    ConfChanged {
        /// The group.
        group: GroupId,
        /// Its log index.
        index: u64,
        /// The configuration now in force.
        conf_state: ConfState,
        /// The proposal it completes, when it was proposed through this node.
        proposal: Option<Token>,
    },
}

/// Something the driver should know about, after the cycle's [`Apply`] work is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A group's leader changed (or became unknown).
    LeaderChanged {
        /// The group.
        group: GroupId,
        /// The new leader.
        leader: Option<NodeId>,
        /// Its term.
        term: u64,
    },
    /// A linearizable read may now be served from the local state machine.
    ReadReady {
        /// The group.
        group: GroupId,
        /// The read's token.
        token: Token,
        /// The read index the state machine has reached.
        index: u64,
    },
    /// A proposal will never commit: its entry was replaced by another leader's.
    ProposalDropped {
        /// The group.
        group: GroupId,
        /// The proposal's token.
        token: Token,
    },
    /// This node can no longer tell whether a proposal took effect: its entry was covered by
    /// a snapshot installed from another leader (or its group was removed here). It may have
    /// been committed; only an idempotent command may be retried.
    ProposalOutcomeUnknown {
        /// The group.
        group: GroupId,
        /// The proposal's token.
        token: Token,
    },
}

/// One coordinator cycle: what every group with a `Ready` produced.
#[must_use = "a cycle's batch must be persisted and `on_persisted` called"]
pub struct Cycle {
    /// Pass back to [`MultiRaft::on_persisted`] once `batch` is durable.
    pub id: CycleId,
    /// Everything to persist, for all groups, already staged (raft reads it from the store
    /// from now on): commit it with [`LogStore::commit`], one fsync.
    pub batch: StagedBatch,
    /// Messages that may be sent before the batch is durable (the leader's appends).
    pub messages: Vec<(NodeId, Envelope)>,
    /// State-machine work, in order. Safe now: these entries were durable before this cycle.
    pub applies: Vec<Apply>,
    /// Events, to handle after `applies`.
    pub events: Vec<Event>,
}

/// Counters a caller can read (see [`MultiRaft::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CoordinatorStats {
    /// Cycles produced.
    pub cycles: u64,
    /// Group `Ready`s gathered into those cycles.
    pub readies: u64,
    /// Raft messages produced by all groups.
    pub raft_messages: u64,
    /// Envelopes handed to the transport (after coalescing).
    pub envelopes: u64,
    /// Heartbeats and heartbeat responses that travelled inside coalesced batches.
    pub heartbeats_coalesced: u64,
    /// Coalesced heartbeat batches sent.
    pub heartbeat_batches: u64,
    /// Entries handed to the state machine.
    pub entries_applied: u64,
    /// Messages for groups this node does not hold.
    pub unknown_group_messages: u64,
    /// Log compactions.
    pub compactions: u64,
    /// Times a group went quiet (leaders and followers).
    pub quiesced: u64,
    /// Times a quiet group woke up.
    pub woken: u64,
    /// Liveness pings sent (one per peer per liveness interval).
    pub liveness_pings: u64,
    /// Peers declared unresponsive by node-level liveness.
    pub peers_lost: u64,
    /// Elections started by a timeout (a group's first, or a candidate's next round).
    pub campaigns_started: u64,
    /// Ticks on which a group's election timeout had fired but it had to wait: the node had
    /// started as many elections as [`crate::RaftConfig::max_campaigns`] lets it.
    pub campaigns_deferred: u64,
}

struct Group {
    raw: RawNode<GroupStorage>,
    /// Highest index handed out for applying.
    applied: u64,
    leader: Option<NodeId>,
    term: u64,
    role: StateRole,
    /// Reads whose index is not applied yet.
    reads: Vec<(u64, Token)>,
    /// Commands proposed since the last cycle, batched into one entry at the next.
    queued: Vec<(Vec<u8>, Token)>,
    /// Quiescent: not ticked until something happens (see the quiescence section below).
    quiet: bool,
    /// Ticks this group has led with nothing to do.
    idle_ticks: usize,
    /// Its first election timeout was spread out (see `spread_first_elections`).
    first_spread: bool,
}

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
    /// Ticks since each peer was last heard from, for node-level liveness.
    silent_ticks: BTreeMap<NodeId, usize>,
    /// The tick at which each peer was last reported unreachable to every group.
    unreachable_reported: BTreeMap<NodeId, u64>,
    /// The peer set must be recomputed (groups or configurations changed).
    peers_stale: bool,
    /// Elections this node may still start now (see [`RaftConfig::max_campaigns`]).
    campaign_tokens: usize,
    ticks: u64,
    stats: CoordinatorStats,
}

const BOOTSTRAP_INDEX: u64 = 1;
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
            silent_ticks: BTreeMap::new(),
            unreachable_reported: BTreeMap::new(),
            peers_stale: true,
            campaign_tokens,
            ticks: 0,
            stats: CoordinatorStats::default(),
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

    fn load_group(
        &mut self,
        group: GroupId,
        storage: GroupStorage,
    ) -> Result<(), CoordinatorError> {
        let applied = storage.snapshot_metadata().map_or(0, |m| m.index);
        let logger = group_logger(self.id.get(), group.get());
        let raw = RawNode::new(
            &self.config.raft_config(self.id.get(), applied),
            storage,
            &logger,
        )
        .map_err(|source| CoordinatorError::Raft { group, source })?;
        let mut g = Group {
            raw,
            applied,
            leader: None,
            term: 0,
            role: StateRole::Follower,
            reads: Vec::new(),
            queued: Vec::new(),
            quiet: false,
            idle_ticks: 0,
            first_spread: false,
        };
        // raft-rs drew this group's first election timeout from the thread RNG: redraw it
        // from ours, or a simulation would not replay.
        g.term = g.raw.raft.term;
        Self::draw_election_timeout(&mut self.rng, &self.config, &mut g);
        // The state machine starts from the stored snapshot; raft replays the log after it.
        if let Ok(snapshot) = g.raw.store().snapshot(0, 0) {
            let index = snapshot.get_metadata().index;
            if index != 0 {
                self.pending_applies.push(Apply::Restore {
                    group,
                    index,
                    data: snapshot.data.to_vec(),
                });
            }
        }
        self.groups.insert(group, g);
        self.dirty.insert(group);
        self.awake.insert(group);
        self.peers_stale = true;
        Ok(())
    }

    /// Creates `group` with `voters` as its first configuration. Every initial replica calls
    /// this with the same voters; the group starts from a snapshot at index 1 holding that
    /// configuration, so replicas added later learn it by snapshot.
    ///
    /// A group the store already holds is left as it is (a restart), so calling this for every
    /// group of the routing table at start-up is safe.
    ///
    /// # Errors
    /// Invalid voters, a storage failure, or raft rejecting the new group.
    pub fn create_group(
        &mut self,
        group: GroupId,
        voters: &[NodeId],
    ) -> Result<(), CoordinatorError> {
        self.create_groups([(group, voters.to_vec())]).map(|_| ())
    }

    /// [`MultiRaft::create_group`] for many groups at once: one batch, one fsync. Returns the
    /// groups that were new (the others already existed in the store).
    ///
    /// # Errors
    /// As [`MultiRaft::create_group`]; no group is created when any is invalid.
    pub fn create_groups(
        &mut self,
        groups: impl IntoIterator<Item = (GroupId, Vec<NodeId>)>,
    ) -> Result<Vec<GroupId>, CoordinatorError> {
        self.create_groups_with_learners(
            groups
                .into_iter()
                .map(|(group, voters)| (group, voters, Vec::new())),
        )
    }

    /// [`MultiRaft::create_groups`] with learners in the first configuration too (the meta
    /// group keeps at most five voters and makes every other node a learner).
    ///
    /// # Errors
    /// As [`MultiRaft::create_group`].
    pub fn create_groups_with_learners(
        &mut self,
        groups: impl IntoIterator<Item = (GroupId, Vec<NodeId>, Vec<NodeId>)>,
    ) -> Result<Vec<GroupId>, CoordinatorError> {
        let mut batch = self.store.batch();
        let mut created = Vec::new();
        for (group, voters, learners) in groups {
            if self.groups.contains_key(&group) {
                continue;
            }
            if group.get() == 0
                || voters.is_empty()
                || voters.iter().chain(&learners).any(|v| v.get() == 0)
            {
                return Err(CoordinatorError::InvalidVoters { group });
            }
            let ids = |nodes: &[NodeId]| nodes.iter().map(|v| v.get()).collect::<Vec<_>>();
            let conf_state = ConfState::from((ids(&voters), ids(&learners)));
            let mut snapshot = Snapshot::default();
            let meta = snapshot.mut_metadata();
            meta.index = BOOTSTRAP_INDEX;
            meta.term = BOOTSTRAP_TERM;
            meta.set_conf_state(conf_state.clone());
            batch.create_group(group, conf_state);
            batch.apply_snapshot(group, snapshot);
            let hs = raft::eraftpb::HardState {
                term: BOOTSTRAP_TERM,
                commit: BOOTSTRAP_INDEX,
                ..Default::default()
            };
            batch.set_hard_state(group, hs);
            created.push(group);
        }
        self.load_new_groups(batch, created)
    }

    /// Creates `group` on a node that is joining it: no configuration yet, it learns everything
    /// from the leader's snapshot once a membership change adds it.
    ///
    /// # Errors
    /// A storage failure, or raft rejecting the new group.
    pub fn create_joining_group(&mut self, group: GroupId) -> Result<(), CoordinatorError> {
        if self.groups.contains_key(&group) {
            return Ok(());
        }
        let mut batch = self.store.batch();
        batch.create_group(group, ConfState::default());
        self.load_new_groups(batch, vec![group]).map(|_| ())
    }

    fn load_new_groups(
        &mut self,
        batch: WriteBatch,
        created: Vec<GroupId>,
    ) -> Result<Vec<GroupId>, CoordinatorError> {
        if created.is_empty() {
            return Ok(created);
        }
        if let Some(cycle) = self.inflight.front() {
            // Written on its own, the batch would overtake the cycle's (and poison the store).
            return Err(CoordinatorError::CycleInFlight { cycle: cycle.id.0 });
        }
        // Durable before raft runs on it: a group must never exist in memory only.
        self.store.write(batch)?;
        for group in &created {
            let storage = self.store.group(*group)?;
            self.load_group(*group, storage)?;
        }
        self.spread_first_elections(&created);
        Ok(created)
    }

    /// Removes `group` from this node and deletes its storage (in the next cycle's batch).
    /// Returns the tokens of its pending proposals, whose outcome is now unknown here.
    ///
    /// # Errors
    /// [`CoordinatorError::GroupNotFound`].
    pub fn remove_group(&mut self, group: GroupId) -> Result<Vec<Token>, CoordinatorError> {
        if self.groups.remove(&group).is_none() {
            return Err(CoordinatorError::GroupNotFound { group });
        }
        self.pending.delete_group(group);
        Ok(self.take_proposals(group, u64::MAX))
    }

    /// Whether the meta group has applied everything this node knows committed (the only
    /// time a node may act on the routing table it holds: see [`MultiRaft::place_replicas`]).
    pub fn meta_caught_up(&self) -> bool {
        self.status(routing::META_GROUP)
            .is_some_and(|s| s.applied >= s.commit)
    }

    /// Makes this node hold exactly the replicas `table` places on it: joins the groups it
    /// lists this node in (empty, to be filled by the leader's snapshot), deletes the ones it
    /// no longer lists.
    /// Returns the tokens of proposals pending in deleted groups (their outcome is unknown
    /// here). Call between cycles, with a table the meta group applied once
    /// [`MultiRaft::meta_caught_up`]: an older table could delete a replica a later one
    /// placed here again.
    ///
    /// # Errors
    /// Storage failures, or [`CoordinatorError::CycleInFlight`].
    pub fn place_replicas(
        &mut self,
        table: &routing::RoutingTable,
    ) -> Result<Vec<Token>, CoordinatorError> {
        let me = self.id;
        let placed: BTreeSet<GroupId> = table.groups_on_node(me).into_iter().collect();
        for group in &placed {
            if !self.groups.contains_key(group) {
                tracing::info!(%group, "routing places a replica here; joining the group");
                self.create_joining_group(*group)?;
            }
        }
        // The meta replica stays, even on a node that left: it is out of the meta group's
        // configuration (so it never campaigns), and it marks the data directory as one that
        // belonged to a cluster, so a restart never bootstraps groups from a config file again.
        let gone: Vec<GroupId> = self
            .groups
            .keys()
            .copied()
            .filter(|g| *g != routing::META_GROUP && !placed.contains(g))
            .collect();
        if !table.is_member(me) {
            tracing::info!(
                "this node is no longer a member; stop it and delete its data directory"
            );
        }
        let mut tokens = Vec::new();
        for group in gone {
            tracing::info!(%group, "routing moved this replica away; deleting it");
            tokens.extend(self.remove_group(group)?);
        }
        Ok(tokens)
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
            Self::wake(g, &mut self.stats, &mut self.awake, group);
        }
        self.dirty.insert(group);
        Ok(g)
    }

    /// Advances the logical clock by one tick: every group that is not quiet ticks; quiet
    /// groups cost nothing. Node-level liveness is tracked here too.
    pub fn tick(&mut self) {
        self.ticks += 1;
        let refill = (self.config.max_campaigns / self.config.election_tick).max(1);
        self.campaign_tokens = (self.campaign_tokens + refill).min(self.config.max_campaigns);
        let quiesce = self.config.quiesce;
        let mut to_quiesce = Vec::new();
        // Only awake groups tick: a quiet group costs nothing here, not even a visit.
        let mut asleep = Vec::new();
        for &id in &self.awake {
            let Some(g) = self.groups.get_mut(&id).filter(|g| !g.quiet) else {
                asleep.push(id);
                continue;
            };
            // A group whose timeout fires now (a follower's first round, a candidate's next)
            // needs a token (see `RaftConfig::max_campaigns`); without one its timer stays at
            // the brink and it tries again next tick.
            let raft = &g.raw.raft;
            if raft.state != StateRole::Leader
                && raft.promotable()
                && raft.election_elapsed + 1 >= raft.randomized_election_timeout()
            {
                if self.campaign_tokens == 0 {
                    self.stats.campaigns_deferred += 1;
                    continue;
                }
                self.campaign_tokens -= 1;
                self.stats.campaigns_started += 1;
            }
            // Most ticks only advance a counter (a follower waiting, a leader between
            // heartbeats): only a tick that stepped raft can have made a `Ready`, so only
            // that one puts the group in the next cycle.
            if g.raw.tick() {
                self.dirty.insert(id);
            }
            Self::jitter_election(&mut self.rng, &self.config, g);
            if quiesce && Self::can_quiesce(self.id, g) {
                g.idle_ticks += 1;
                if g.idle_ticks >= self.config.quiesce_after_ticks {
                    to_quiesce.push(id);
                }
            } else {
                g.idle_ticks = 0;
            }
        }
        for id in asleep {
            self.awake.remove(&id);
        }
        for id in to_quiesce {
            self.quiesce_leader(id);
        }
        self.tick_liveness();
    }

    /// raft-rs draws election timeouts from the thread RNG; we redraw them from our seeded RNG
    /// whenever raft reset them (a new term or role), so a simulation replays exactly.
    fn jitter_election(rng: &mut StdRng, config: &RaftConfig, g: &mut Group) {
        let (term, role) = (g.raw.raft.term, g.raw.raft.state);
        let timeout = g.raw.raft.randomized_election_timeout();
        // raft redraws from its own (wide) range whenever it resets: bring any timeout back
        // into the normal window, except a spread-out first election still waiting.
        let out_of_range = timeout < config.election_tick
            || (timeout >= 2 * config.election_tick && !g.first_spread);
        if term != g.term || role != g.role || out_of_range {
            g.term = term;
            g.role = role;
            g.first_spread = false;
            Self::draw_election_timeout(rng, config, g);
        }
    }

    /// Groups loaded together (a restart, a new cluster) would all time out within the same
    /// election window and campaign at once: tens of thousands of elections whose votes
    /// cannot all be processed within one timeout, so candidates time out again before
    /// their answers arrive and nothing converges. Their first timeouts are spread over one
    /// window per [`GROUPS_PER_ELECTION_WINDOW`] groups instead; later ones are normal.
    fn spread_first_elections(&mut self, loaded: &[GroupId]) {
        let windows =
            (loaded.len() / GROUPS_PER_ELECTION_WINDOW).min(crate::config::MAX_ELECTION_SPREAD - 2);
        if windows == 0 {
            return;
        }
        let tick = self.config.election_tick;
        let span = tick.saturating_mul(windows + 1);
        for group in loaded {
            if let Some(g) = self.groups.get_mut(group) {
                let timeout = self.rng.random_range(tick..tick + span);
                g.raw.raft.set_randomized_election_timeout(timeout);
                g.first_spread = true;
            }
        }
    }

    fn draw_election_timeout(rng: &mut StdRng, config: &RaftConfig, g: &mut Group) {
        let timeout = rng.random_range(config.election_tick..2 * config.election_tick);
        g.raw.raft.set_randomized_election_timeout(timeout);
    }

    /// Hands what a peer sent to the groups it is for. Coalesced heartbeats are expanded back
    /// into per-group messages here.
    ///
    /// Messages for a group this node does not hold are counted and dropped; raft errors of a
    /// single message (stale term and the like) are logged and dropped, as raft expects.
    pub fn step(&mut self, from: NodeId, envelope: Envelope) {
        // Any message proves the peer alive (an empty heartbeat batch is the liveness ping).
        if let Some(silent) = self.silent_ticks.get_mut(&from) {
            *silent = 0;
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
        }
    }

    fn step_one(&mut self, from: NodeId, group: GroupId, mut m: Message, quiesce: bool) {
        let Some(g) = self.groups.get_mut(&group) else {
            self.stats.unknown_group_messages += 1;
            tracing::debug!(%group, %from, "message for a group this node does not hold");
            return;
        };
        // The transport proved who sent it; raft must not be told otherwise.
        m.from = from.get();
        m.to = self.id.get();
        // A heartbeat response changes nothing a quiet leader must act on; anything else
        // means the group has work again.
        if g.quiet && m.get_msg_type() != MessageType::MsgHeartbeatResponse && !quiesce {
            Self::wake(g, &mut self.stats, &mut self.awake, group);
        }
        if let Err(error) = g.raw.step(m) {
            tracing::debug!(%group, %from, %error, "raft rejected a message");
        }
        Self::jitter_election(&mut self.rng, &self.config, g);
        self.dirty.insert(group);
        let raft = &g.raw.raft;
        if quiesce
            && !g.quiet
            && raft.state == StateRole::Follower
            && raft.leader_id == from.get()
            && raft.raft_log.committed == raft.raft_log.last_index()
        {
            g.quiet = true;
            self.stats.quiesced += 1;
        }
    }

    /// Proposes `data` to `group`. `token` comes back in [`Apply::Command`] when the entry is
    /// committed and handed out for applying, or in [`Event::ProposalDropped`].
    ///
    /// # Errors
    /// [`RequestError::NotLeader`] with the leader this node knows of, [`RequestError::GroupNotFound`],
    /// [`RequestError::ProposalDropped`] when raft refuses it (leader transfer in progress, too
    /// many uncommitted bytes).
    pub fn propose(
        &mut self,
        group: GroupId,
        data: Vec<u8>,
        token: Token,
    ) -> Result<(), RequestError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(RequestError::GroupNotFound { group })?;
        Self::ensure_leader(group, g)?;
        if g.quiet {
            Self::wake(g, &mut self.stats, &mut self.awake, group);
        }
        g.queued.push((data, token));
        self.queued_groups.insert(group);
        self.dirty.insert(group);
        Ok(())
    }

    /// Hands the commands queued since the last cycle to raft, one entry per group (split
    /// when larger than `max_size_per_msg`).
    fn flush_proposals(&mut self, events: &mut Vec<Event>) {
        let max_bytes = usize::try_from(self.config.max_size_per_msg).unwrap_or(usize::MAX);
        for group in std::mem::take(&mut self.queued_groups) {
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            let mut queued = std::mem::take(&mut g.queued).into_iter().peekable();
            while queued.peek().is_some() {
                let (mut commands, mut tokens, mut bytes) = (Vec::new(), Vec::new(), 0);
                while let Some((data, _)) = queued.peek() {
                    if !commands.is_empty() && bytes + data.len() > max_bytes {
                        break;
                    }
                    if let Some((data, token)) = queued.next() {
                        bytes += data.len();
                        commands.push(data);
                        tokens.push(token);
                    }
                }
                let (context, data) = if commands.len() == 1 {
                    (Vec::new(), commands.pop().unwrap_or_default())
                } else {
                    (
                        proposal_batch::BATCH_CONTEXT.to_vec(),
                        proposal_batch::encode(commands),
                    )
                };
                // Leadership may have moved since `propose` checked; raft would then forward
                // the entry to the new leader and we could not track it, so drop it instead.
                let last_before = g.raw.raft.raft_log.last_index();
                let accepted = g.raw.raft.state == StateRole::Leader
                    && g.raw.propose(context, data).is_ok()
                    && g.raw.raft.raft_log.last_index() > last_before;
                if accepted {
                    let (index, term) = (g.raw.raft.raft_log.last_index(), g.raw.raft.term);
                    self.proposals.insert(
                        (group, index),
                        Proposed {
                            term,
                            tokens,
                            conf_change: false,
                        },
                    );
                } else {
                    events.extend(
                        tokens
                            .into_iter()
                            .map(|token| Event::ProposalDropped { group, token }),
                    );
                }
            }
        }
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
        let g = self.group_mut(group)?;
        Self::ensure_leader(group, g)?;
        let last_before = g.raw.raft.raft_log.last_index();
        g.raw
            .propose_conf_change(vec![], change.clone())
            .map_err(|_| RequestError::ProposalDropped { group })?;
        let (index, term) = (g.raw.raft.raft_log.last_index(), g.raw.raft.term);
        if index == last_before {
            return Err(RequestError::ProposalDropped { group });
        }
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
        let g = self.group_mut(group)?;
        if g.raw.raft.leader_id == raft::INVALID_ID {
            return Err(RequestError::NotLeader {
                group,
                leader: None,
            });
        }
        g.raw.read_index(token.to_be_bytes().to_vec());
        Ok(())
    }

    /// Asks the leader of `group` to hand leadership to `to`.
    ///
    /// # Errors
    /// [`RequestError::GroupNotFound`], [`RequestError::NotLeader`].
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> Result<(), RequestError> {
        let g = self.group_mut(group)?;
        Self::ensure_leader(group, g)?;
        g.raw.transfer_leader(to.get());
        Ok(())
    }

    /// Starts an election in `group` now (tests and operator tools).
    ///
    /// # Errors
    /// [`RequestError::GroupNotFound`].
    pub fn campaign(&mut self, group: GroupId) -> Result<(), RequestError> {
        let _ = self.group_mut(group)?.raw.campaign();
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
        let raft = &mut self.group_mut(group)?.raw.raft;
        raft.election_elapsed = raft.randomized_election_timeout().saturating_sub(1);
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
                    g.raw.report_unreachable(to.get());
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
                    if g.raw.raft.state == StateRole::Leader && !g.quiet {
                        g.raw.report_unreachable(to.get());
                    }
                }
            }
        }
    }

    /// The transport finished (or failed) sending a snapshot of `group` to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, group: GroupId, delivered: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            let status = if delivered {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            g.raw.report_snapshot(to.get(), status);
            self.dirty.insert(group);
        }
    }

    fn ensure_leader(group: GroupId, g: &Group) -> Result<(), RequestError> {
        if g.raw.raft.state == StateRole::Leader {
            Ok(())
        } else {
            let leader = g.raw.raft.leader_id;
            Err(RequestError::NotLeader {
                group,
                leader: (leader != raft::INVALID_ID).then_some(NodeId(leader)),
            })
        }
    }

    /// The status of `group`.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        let g = self.groups.get(&group)?;
        let raft = &g.raw.raft;
        let conf = raft.prs().conf();
        let mut voters: Vec<NodeId> = conf.voters().ids().iter().map(NodeId).collect();
        voters.sort();
        let mut learners: Vec<NodeId> = conf.learners().iter().copied().map(NodeId).collect();
        learners.sort();
        Some(GroupStatus {
            group,
            role: raft.state.into(),
            term: raft.term,
            leader: (raft.leader_id != raft::INVALID_ID).then_some(NodeId(raft.leader_id)),
            commit: raft.raft_log.committed,
            applied: g.applied,
            first_index: raft.raft_log.first_index(),
            last_index: raft.raft_log.last_index(),
            voters,
            learners,
            joint: !raft.prs().conf().to_conf_state().voters_outgoing.is_empty(),
            quiet: g.quiet,
        })
    }

    /// How many groups are campaigning (pre-vote or vote) now. Walks every group.
    pub fn campaigning(&self) -> usize {
        self.groups
            .values()
            .filter(|g| {
                matches!(
                    g.raw.raft.state,
                    StateRole::PreCandidate | StateRole::Candidate
                )
            })
            .count()
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
            || self
                .dirty
                .iter()
                .any(|id| self.groups.get(id).is_some_and(|g| g.raw.has_ready()))
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
                    g.applied.saturating_sub(g.raw.raft.raft_log.first_index()) + 1
                        > self.config.compact_threshold
                })
            }));
        }
        due.into_iter().collect()
    }

    /// Stores `data`, the state machine's snapshot of `group` at its applied index, and drops
    /// the log before it (keeping [`RaftConfig::compact_keep`] entries), in the next batch.
    ///
    /// # Errors
    /// [`CoordinatorError::GroupNotFound`]; a raft log error reading the snapshot's term.
    pub fn compact(&mut self, group: GroupId, data: Vec<u8>) -> Result<(), CoordinatorError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(CoordinatorError::GroupNotFound { group })?;
        let index = g.applied;
        let first = g.raw.raft.raft_log.first_index();
        if index < first {
            return Ok(());
        }
        let term = g
            .raw
            .raft
            .raft_log
            .term(index)
            .map_err(|source| CoordinatorError::Raft { group, source })?;
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        let conf_state = g.raw.raft.prs().conf().to_conf_state();
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
        let compact_to = (index + 1).saturating_sub(keep).max(first);
        if compact_to > first {
            self.pending.compact(group, compact_to);
        }
        self.stats.compactions += 1;
        Ok(())
    }

    /// Gathers the `Ready` of every group into one [`Cycle`], or `None` when there is nothing
    /// to do. See the crate docs for what the driver does with it.
    ///
    /// # Errors
    /// A committed conf change that cannot be decoded or applied.
    pub fn poll_cycle(&mut self) -> Result<Option<Cycle>, CoordinatorError> {
        if !self.has_ready() {
            return Ok(None);
        }
        let id = CycleId(self.next_cycle);
        self.next_cycle += 1;
        let mut batch = std::mem::replace(&mut self.pending, self.store.batch());
        let mut applies = std::mem::take(&mut self.pending_applies);
        let mut events = Vec::new();
        self.flush_proposals(&mut events);
        let mut now = std::mem::take(&mut self.own_messages);
        let mut after_persist = Outbox::default();
        let mut readies = Vec::new();
        let mut still_dirty = Vec::new();

        for group in std::mem::take(&mut self.dirty) {
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            if !g.raw.has_ready() {
                continue;
            }
            let mut rd = g.raw.ready();
            self.stats.readies += 1;
            if let Some(ss) = rd.ss() {
                let leader = (ss.leader_id != raft::INVALID_ID).then_some(NodeId(ss.leader_id));
                if leader != g.leader {
                    g.leader = leader;
                    events.push(Event::LeaderChanged {
                        group,
                        leader,
                        term: g.raw.raft.term,
                    });
                }
            }
            for m in rd.take_messages() {
                self.stats.raft_messages += 1;
                now.push(group, m);
            }
            if !rd.snapshot().is_empty() {
                let snapshot = rd.snapshot().clone();
                let index = snapshot.get_metadata().index;
                applies.push(Apply::Restore {
                    group,
                    index,
                    data: snapshot.data.to_vec(),
                });
                batch.apply_snapshot(group, snapshot);
                g.applied = index;
                // Proposals at or below the snapshot may or may not be in it: say so, never
                // "dropped" (the new leader may well have committed them).
                let stale: Vec<_> = self
                    .proposals
                    .range((group, 0)..=(group, index))
                    .map(|(k, _)| *k)
                    .collect();
                for key in stale {
                    if let Some(Proposed { tokens, .. }) = self.proposals.remove(&key) {
                        events.extend(
                            tokens
                                .into_iter()
                                .map(|token| Event::ProposalOutcomeUnknown { group, token }),
                        );
                    }
                }
            }
            let committed = rd.take_committed_entries();
            if !committed.is_empty() {
                self.applied_since_check.insert(group);
            }
            Self::hand_out(
                group,
                g,
                committed,
                &mut self.proposals,
                &mut applies,
                &mut events,
                &mut self.stats,
            )?;
            batch.append_owned(group, rd.take_entries());
            if let Some(hs) = rd.hs() {
                batch.set_hard_state(group, hs.clone());
            }
            for rs in rd.take_read_states() {
                let token = Token::from_be_bytes(
                    rs.request_ctx
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or_default(),
                );
                g.reads.push((rs.index, token));
            }
            Self::release_reads(group, g, &mut events);
            for m in rd.take_persisted_messages() {
                self.stats.raft_messages += 1;
                after_persist.push(group, m);
            }
            readies.push((group, rd.number()));
            g.raw.advance_append_async(rd);
            if g.raw.has_ready() {
                still_dirty.push(group);
            }
        }
        self.dirty.extend(still_dirty);
        if applies
            .iter()
            .any(|a| matches!(a, Apply::ConfChanged { .. }))
        {
            self.peers_stale = true;
        }

        // Staged before raft runs again: advance_append_async made these entries "stable",
        // so from here on raft reads them from the store, not from its unstable log.
        let batch = self.store.stage(batch)?;
        let mut count = CoalesceCount::default();
        let messages = now.into_envelopes(self.id, &mut count);
        self.count_sent(&messages, count);
        self.stats.cycles += 1;
        self.inflight.push_back(Inflight {
            id,
            readies,
            after_persist,
        });
        Ok(Some(Cycle {
            id,
            batch,
            messages,
            applies,
            events,
        }))
    }

    /// Entries committed in `group`, in log order: conf changes take effect here; commands go to
    /// the state machine, each with the proposal it completes.
    #[allow(clippy::too_many_arguments)]
    fn hand_out(
        group: GroupId,
        g: &mut Group,
        entries: Vec<Entry>,
        proposals: &mut BTreeMap<(GroupId, u64), Proposed>,
        applies: &mut Vec<Apply>,
        events: &mut Vec<Event>,
        stats: &mut CoordinatorStats,
    ) -> Result<(), CoordinatorError> {
        for entry in entries {
            let (index, term) = (entry.index, entry.term);
            let (tokens, conf_change) = match proposals.remove(&(group, index)) {
                Some(p) if p.term == term => (p.tokens, p.conf_change),
                Some(p) => {
                    events.extend(
                        p.tokens
                            .into_iter()
                            .map(|token| Event::ProposalDropped { group, token }),
                    );
                    (Vec::new(), false)
                }
                None => (Vec::new(), false),
            };
            let proposal = tokens.first().copied();
            g.applied = index;
            stats.entries_applied += 1;
            match entry.get_entry_type() {
                EntryType::EntryNormal
                    if entry.context.as_ref() == proposal_batch::BATCH_CONTEXT =>
                {
                    let commands = proposal_batch::decode(&entry.data).map_err(|source| {
                        CoordinatorError::BadBatch {
                            group,
                            index,
                            source,
                        }
                    })?;
                    for (i, data) in commands.into_iter().enumerate() {
                        let proposal = tokens.get(i).copied();
                        applies.push(Apply::Command {
                            group,
                            index,
                            term,
                            data,
                            proposal,
                        });
                    }
                }
                EntryType::EntryNormal => {
                    if conf_change {
                        // raft-rs turns a conf change it will not accept (another one is still
                        // pending) into an empty normal entry: it did not take effect.
                        events.extend(
                            tokens
                                .iter()
                                .map(|&token| Event::ProposalDropped { group, token }),
                        );
                        continue;
                    }
                    // Empty entries are the ones new leaders append; nothing to apply.
                    if !entry.data.is_empty() || proposal.is_some() {
                        applies.push(Apply::Command {
                            group,
                            index,
                            term,
                            data: entry.data.to_vec(),
                            proposal,
                        });
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let change = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                        conf_change::decode_v2(&entry.data)
                    } else {
                        conf_change::decode_v1(&entry.data)
                    }
                    .map_err(|source| CoordinatorError::BadConfChange {
                        group,
                        index,
                        source,
                    })?;
                    let conf_state = g
                        .raw
                        .apply_conf_change(&change)
                        .map_err(|source| CoordinatorError::Raft { group, source })?;
                    // A leader that removed itself steps down now: raft-rs keeps it leader
                    // without a progress entry of its own, which it later unwraps.
                    let me = g.raw.raft.id;
                    if g.raw.raft.state == StateRole::Leader && g.raw.raft.prs().get(me).is_none() {
                        let term = g.raw.raft.term;
                        g.raw.raft.become_follower(term, raft::INVALID_ID);
                    }
                    // Not persisted here: the stored conf state is the one at the stored
                    // snapshot, and a restart replays conf changes after it in log order.
                    // Persisting the latest one would make the replay apply them twice.
                    applies.push(Apply::ConfChanged {
                        group,
                        index,
                        conf_state,
                        proposal,
                    });
                }
            }
        }
        Ok(())
    }

    fn release_reads(group: GroupId, g: &mut Group, events: &mut Vec<Event>) {
        let applied = g.applied;
        g.reads.retain(|&(index, token)| {
            if index <= applied {
                events.push(Event::ReadReady {
                    group,
                    token,
                    index: applied,
                });
                false
            } else {
                true
            }
        });
    }

    fn count_sent(&mut self, messages: &[(NodeId, Envelope)], count: CoalesceCount) {
        self.stats.envelopes += messages.len() as u64;
        self.stats.heartbeats_coalesced += count.heartbeats;
        self.stats.heartbeat_batches += count.batches;
    }

    /// The batch of cycle `id` is durable: returns the messages that had to wait for it.
    /// Cycles must be reported in the order they were produced.
    ///
    /// # Errors
    /// [`CoordinatorError::CycleOutOfOrder`] when `id` is not the oldest cycle in flight.
    pub fn on_persisted(
        &mut self,
        id: CycleId,
    ) -> Result<Vec<(NodeId, Envelope)>, CoordinatorError> {
        match self.inflight.front() {
            Some(front) if front.id == id => {}
            _ => return Err(CoordinatorError::CycleOutOfOrder { cycle: id.0 }),
        }
        let Some(cycle) = self.inflight.pop_front() else {
            return Err(CoordinatorError::CycleOutOfOrder { cycle: id.0 });
        };
        for (group, number) in cycle.readies {
            // A group removed meanwhile has nothing left to advance.
            if let Some(g) = self.groups.get_mut(&group) {
                g.raw.on_persist_ready(number);
                g.raw.advance_apply();
                self.dirty.insert(group);
            }
        }
        let mut count = CoalesceCount::default();
        let messages = cycle.after_persist.into_envelopes(self.id, &mut count);
        self.count_sent(&messages, count);
        Ok(messages)
    }

    /// Runs a whole cycle synchronously: persist with [`LogStore::write`], then release the
    /// waiting messages. For tests and simple drivers; [`crate::Node`] overlaps the fsync with
    /// other work instead.
    ///
    /// # Errors
    /// A storage failure (the store is then poisoned) or a conf change error.
    pub fn run_cycle(&mut self) -> Result<Option<CycleOutput>, CoordinatorError> {
        let Some(cycle) = self.poll_cycle()? else {
            return Ok(None);
        };
        let Cycle {
            id,
            batch,
            mut messages,
            applies,
            events,
        } = cycle;
        self.store.commit(batch)?;
        messages.extend(self.on_persisted(id)?);
        Ok(Some(CycleOutput {
            messages,
            applies,
            events,
        }))
    }
}

/// Quiescence (CockroachDB's idea, TiKV's "hibernate"): a leader whose group is fully
/// replicated, applied and idle tells its followers with a last heartbeat marked `quiesce`, and
/// from then on neither side ticks the group: no heartbeats, no election timers. Any proposal,
/// read, conf change or incoming message (other than a heartbeat response) wakes it at once.
/// Failure detection for quiet groups moves to the node: each node pings each peer once per
/// liveness interval; a peer silent for the liveness timeout has its quiet groups woken on
/// every other node, where raft's own election then replaces it.
impl MultiRaft {
    fn can_quiesce(me: NodeId, g: &Group) -> bool {
        let raft = &g.raw.raft;
        if raft.state != StateRole::Leader {
            return false;
        }
        // Reading the last index takes the group's storage lock: followers, the many, skip it.
        let last = raft.raft_log.last_index();
        g.queued.is_empty()
            && g.reads.is_empty()
            && raft.pending_read_count() == 0
            && raft.lead_transferee.is_none()
            && raft.raft_log.committed == last
            && g.applied == last
            && raft.pending_conf_index <= g.applied
            && raft
                .prs()
                .iter()
                .all(|(id, pr)| *id == me.get() || pr.matched == last)
            // Not in the middle of a joint configuration change.
            && raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
    }

    fn quiesce_leader(&mut self, group: GroupId) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if g.raw.has_ready() {
            return;
        }
        let raft = &g.raw.raft;
        let (term, commit) = (raft.term, raft.raft_log.committed);
        for (&id, _) in raft.prs().iter() {
            if id != self.id.get() {
                self.own_messages
                    .push_quiesce(group, NodeId(id), term, commit);
            }
        }
        g.quiet = true;
        g.idle_ticks = 0;
        self.stats.quiesced += 1;
    }

    fn wake(
        g: &mut Group,
        stats: &mut CoordinatorStats,
        awake: &mut BTreeSet<GroupId>,
        id: GroupId,
    ) {
        awake.insert(id);
        g.quiet = false;
        g.idle_ticks = 0;
        if g.raw.raft.state == StateRole::Leader {
            // Followers were quiet, not dead (liveness would have said so): give the leader a
            // fresh check-quorum window instead of stepping down on stale activity flags.
            let me = g.raw.raft.id;
            for (id, pr) in g.raw.raft.mut_prs().iter_mut() {
                if *id != me {
                    pr.recent_active = true;
                }
            }
            g.raw.raft.election_elapsed = 0;
        }
        stats.woken += 1;
    }

    /// A quiet group whose leader the liveness check declared dead: its followers were all
    /// caught up, so any of them may lead. The node-level detector already waited out the
    /// leader, so there is no lease left to honour: forget the leader (voters grant at once)
    /// and let the surviving voters campaign in node-id order, half an election apart, so one
    /// of them wins the first round instead of splitting the vote.
    fn stagger_election(me: NodeId, lost: NodeId, election_tick: usize, g: &mut Group) {
        let raft = &mut g.raw.raft;
        let mut voters: Vec<u64> = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|v| *v != lost.get())
            .collect();
        voters.sort_unstable();
        let Some(rank) = voters.iter().position(|v| *v == me.get()) else {
            return;
        };
        raft.leader_id = raft::INVALID_ID;
        let timeout = raft.randomized_election_timeout();
        raft.election_elapsed = timeout.saturating_sub(1 + rank * (election_tick / 2).max(1));
    }

    fn tick_liveness(&mut self) {
        if !self.config.quiesce {
            return;
        }
        if self.peers_stale {
            let mut peers = BTreeSet::new();
            for g in self.groups.values() {
                peers.extend(g.raw.raft.prs().iter().map(|(id, _)| NodeId(*id)));
            }
            peers.remove(&self.id);
            self.silent_ticks.retain(|p, _| peers.contains(p));
            for p in peers {
                self.silent_ticks.entry(p).or_insert(0);
            }
            self.peers_stale = false;
        }
        let timeout = self.config.liveness_timeout_ticks;
        let mut lost = Vec::new();
        for (peer, silent) in &mut self.silent_ticks {
            *silent += 1;
            if *silent == timeout {
                lost.push(*peer);
            }
        }
        if self
            .ticks
            .is_multiple_of(self.config.liveness_interval_ticks as u64)
        {
            for peer in self.silent_ticks.keys() {
                self.own_messages.push_liveness(*peer);
                self.stats.liveness_pings += 1;
            }
        }
        for peer in lost {
            self.stats.peers_lost += 1;
            tracing::debug!(%peer, "peer silent past the liveness timeout; waking the groups it leads");
            for (&id, g) in &mut self.groups {
                if g.quiet && g.raw.raft.leader_id == peer.get() {
                    Self::wake(g, &mut self.stats, &mut self.awake, id);
                    Self::stagger_election(self.id, peer, self.config.election_tick, g);
                    self.dirty.insert(id);
                }
            }
        }
    }
}

/// What [`MultiRaft::run_cycle`] leaves for the caller: send, apply, handle events.
#[derive(Debug)]
pub struct CycleOutput {
    /// Messages to send (all of them; the batch is durable).
    pub messages: Vec<(NodeId, Envelope)>,
    /// State-machine work, in order.
    pub applies: Vec<Apply>,
    /// Events, after the applies.
    pub events: Vec<Event>,
}
