//! The core's public vocabulary: tokens, cycles, what to apply, events, status and counters.

use raft::StateRole;
use raft::eraftpb::ConfState;
use routing::{GroupId, NodeId};
use std::collections::BTreeMap;
use storage::StagedBatch;
use transport::Envelope;

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
    /// This node's replica was set aside: its state machine could not restore a snapshot,
    /// and it serves nothing until it is replaced (see [`Event::ReplicaFailed`]).
    pub set_aside: bool,
}

/// How a node's groups stand, counted without copying any group's status (see
/// [`MultiRaft::group_counts`](crate::MultiRaft::group_counts)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Groups held.
    pub total: u64,
    /// Groups by this node's role in them.
    pub leaders: u64,
    /// See [`GroupCounts::leaders`].
    pub followers: u64,
    /// See [`GroupCounts::leaders`].
    pub candidates: u64,
    /// See [`GroupCounts::leaders`].
    pub pre_candidates: u64,
    /// Quiescent groups.
    pub quiet: u64,
    /// Groups whose leader this node does not know.
    pub leaderless: u64,
    /// Replicas set aside (see [`GroupStatus::set_aside`]).
    pub set_aside: u64,
}

impl GroupCounts {
    /// Counts one group.
    pub fn add(&mut self, role: Role, quiet: bool, leaderless: bool, set_aside: bool) {
        self.total += 1;
        *match role {
            Role::Leader => &mut self.leaders,
            Role::Follower => &mut self.followers,
            Role::Candidate => &mut self.candidates,
            Role::PreCandidate => &mut self.pre_candidates,
        } += 1;
        self.quiet += u64::from(quiet);
        self.leaderless += u64::from(leaderless);
        self.set_aside += u64::from(set_aside);
    }

    /// The count of groups in `role`.
    #[must_use]
    pub fn in_role(&self, role: Role) -> u64 {
        match role {
            Role::Leader => self.leaders,
            Role::Follower => self.followers,
            Role::Candidate => self.candidates,
            Role::PreCandidate => self.pre_candidates,
        }
    }
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
        /// Its place inside that entry (0 for an entry holding one command): with `index`, a
        /// position unique within the group.
        offset: u32,
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

/// A check of the bytes of a snapshot a peer sent for a group, run before raft installs it
/// (see [`MultiRaft::set_snapshot_check`](crate::MultiRaft::set_snapshot_check)): `Err` with
/// why the state machine could not restore it.
pub type SnapshotCheck = std::sync::Arc<dyn Fn(GroupId, &[u8]) -> Result<(), String> + Send + Sync>;

/// Something the driver should know about, after the cycle's [`Apply`] work is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A group's leader changed (or became unknown), or was elected again in a new term.
    LeaderChanged {
        /// The group.
        group: GroupId,
        /// The new leader.
        leader: Option<NodeId>,
        /// Its term.
        term: u64,
    },
    /// This node's role in a group changed.
    RoleChanged {
        /// The group.
        group: GroupId,
        /// The new role.
        role: Role,
        /// The term it holds it in.
        term: u64,
    },
    /// A group went quiet here (quiescence): it no longer ticks until something happens.
    Quiet {
        /// The group.
        group: GroupId,
    },
    /// A quiet group woke up.
    Woken {
        /// The group.
        group: GroupId,
    },
    /// Node-level liveness declared a peer silent past the liveness timeout (quiescence on).
    PeerDown {
        /// The peer.
        peer: NodeId,
    },
    /// A peer declared silent was heard from again.
    PeerUp {
        /// The peer.
        peer: NodeId,
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
    /// A proposal was refused before it entered the log: the leader holds as many
    /// uncommitted bytes as it may. It did not take effect; the proposer should back off.
    ProposalBusy {
        /// The group.
        group: GroupId,
        /// The proposal's token.
        token: Token,
    },
    /// This node's replica of a group was set aside: its state machine could not restore a
    /// snapshot (see [`MultiRaft::quarantine`](crate::MultiRaft::quarantine)).
    ReplicaFailed {
        /// The group.
        group: GroupId,
        /// The state machine's error.
        reason: String,
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
    /// Pass back to [`MultiRaft::on_persisted`](crate::MultiRaft::on_persisted) once `batch` is durable.
    pub id: CycleId,
    /// Everything to persist, for all groups, already staged (raft reads it from the store
    /// from now on): commit it with [`LogStore::commit`](storage::LogStore::commit), one fsync.
    pub batch: StagedBatch,
    /// Messages that may be sent before the batch is durable (the leader's appends).
    pub messages: Vec<(NodeId, Envelope)>,
    /// State-machine work, in order. Safe now: these entries were durable before this cycle.
    pub applies: Vec<Apply>,
    /// Events, to handle after `applies`.
    pub events: Vec<Event>,
}

/// Counters a caller can read (see [`MultiRaft::stats`](crate::MultiRaft::stats)).
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
    /// Raft messages from peers that were not stepped, by the rule they broke (see
    /// [`crate::Refusal::reason`]): a non-member sender, a type no peer sends, an index raft
    /// would panic on.
    pub refused_messages: BTreeMap<&'static str, u64>,
    /// Heartbeats from this replica's leader that committed past its log: it had acknowledged
    /// entries it no longer holds (its durable log was lost). Raft's commit was lowered to
    /// the log's end; any count here is an alarm.
    pub log_behind_leader: u64,
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

/// What [`MultiRaft::run_cycle`](crate::MultiRaft::run_cycle) leaves for the caller: send, apply, handle events.
#[derive(Debug)]
pub struct CycleOutput {
    /// Messages to send (all of them; the batch is durable).
    pub messages: Vec<(NodeId, Envelope)>,
    /// State-machine work, in order.
    pub applies: Vec<Apply>,
    /// Events, after the applies.
    pub events: Vec<Event>,
}
