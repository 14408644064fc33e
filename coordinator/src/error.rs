//! Errors of the coordinator: one enum for what a caller's request can hit ([`RequestError`]),
//! one for what stops the coordinator itself ([`CoordinatorError`]).

use routing::{GroupId, NodeId, VShardId};

use crate::conf_change::ConfChangeDecodeError;
use crate::config::ConfigError;
use crate::state_machine::StateMachineError;

/// Why a request to a node (a proposal, a read barrier, a membership change, a vShard export,
/// a leader transfer, a status query) did not complete. Each variant says whether the request
/// took effect: "did not take effect" is safe to retry anywhere, "outcome unknown" only for an
/// idempotent command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// This node does not lead the group: retry on `leader` when it is known, else after an
    /// election timeout.
    #[error("this node is not the leader of {group}; leader: {}", leader.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// This node holds no replica of the group: check the routing table.
    #[error("{group} is not held by this node")]
    GroupNotFound {
        /// The group.
        group: GroupId,
    },
    /// The proposal was not committed and never will be (leadership changed, a leader transfer
    /// was in progress, or too many uncommitted bytes). Safe to retry: the command did not
    /// take effect.
    #[error("proposal to {group} was dropped; it did not take effect, retry it")]
    ProposalDropped {
        /// The group.
        group: GroupId,
    },
    /// No answer within the deadline. The command may or may not have taken effect: retry only
    /// if it is idempotent.
    #[error("no answer from {group} within the deadline; the outcome is unknown")]
    Timeout {
        /// The group.
        group: GroupId,
    },
    /// This node lost track of the proposal (a snapshot from a new leader covered its entry):
    /// it may or may not have taken effect. Retry only if the command is idempotent.
    #[error(
        "the outcome of the proposal to {group} is unknown (its entry was superseded by a snapshot)"
    )]
    OutcomeUnknown {
        /// The group.
        group: GroupId,
    },
    /// The command was routed with an outdated routing table: `group` no longer serves
    /// `vshard` (it moved, or is moving). It did not take effect; route it again with a table
    /// newer than `table_version`. [`crate::Node::propose`] does this itself until its
    /// deadline.
    #[error(
        "{vshard} is not served by {group} any more (routed with table version {table_version}); \
         it did not take effect, retry on a newer routing table"
    )]
    StaleRouting {
        /// The vShard the command was routed by.
        vshard: VShardId,
        /// The group that refused it.
        group: GroupId,
        /// The routing-table version this node held when the refusal came back.
        table_version: u64,
    },
    /// The request was refused and did not take effect: a routing change computed against
    /// another table version, or a state machine that cannot export a vShard. `reason` says
    /// which; re-read the state and retry. A text, not a typed source: this error is cloned
    /// to callers and crosses the client protocol, which carries the reason as text.
    #[error("{group} refused the request: {reason}")]
    Refused {
        /// The group.
        group: GroupId,
        /// Why.
        reason: String,
    },
    /// The command (of a client session) took effect earlier; this replica no longer holds
    /// its response (it restarted since). Do not retry it: it is applied.
    #[error("the command took effect earlier in {group}; its response is no longer available")]
    AppliedEarlier {
        /// The group.
        group: GroupId,
    },
    /// The group is overloaded: its state machine is `backlog` commands behind (see
    /// [`crate::NodeConfig::max_apply_backlog`]), or raft holds as many uncommitted bytes as
    /// [`crate::RaftConfig`] allows. The command did not take effect: back off and retry.
    #[error("{group} is busy ({reason}); the command did not take effect, back off and retry")]
    Busy {
        /// The group.
        group: GroupId,
        /// Which limit was reached.
        reason: BusyReason,
    },
    /// The node is shutting down, draining, or stopped after a fatal error, and the request
    /// never reached raft: it did not take effect; send it to another node.
    #[error("the node is shutting down; the request did not take effect, send it elsewhere")]
    ShuttingDown,
    /// The node stopped (shut down, drained past its deadline, or failed) after the proposal
    /// was handed to raft: it may have been committed, by this node or by a new leader. The
    /// outcome is unknown; retry only an idempotent command (or one with a client session).
    #[error(
        "the node stopped after the proposal to {group} was handed to raft; the outcome is unknown"
    )]
    StoppedInFlight {
        /// The group.
        group: GroupId,
    },
    /// Leadership of the group did not move to `to` (not caught up in time, unreachable, not
    /// a voter, or another node won the election): nothing changed; retry, or pick another.
    #[error("leadership of {group} did not move to {to}; nothing changed")]
    TransferFailed {
        /// The group.
        group: GroupId,
        /// The node it was to move to.
        to: NodeId,
    },
    /// Node-level liveness holds too many of the group's voters down for a quorum: the request
    /// was not handed to raft (it could not commit before its deadline). It did not take
    /// effect; retry once peers are back, or on a node in the majority.
    #[error("{group} cannot reach a quorum of its voters from this node; it did not take effect")]
    QuorumUnreachable {
        /// The group.
        group: GroupId,
    },
    /// This node's replica of the group stopped serving: its state machine could not restore
    /// a snapshot (a peer sent bytes it cannot read), so the node set the replica aside
    /// instead of stopping every group ([`crate::NodeEvent::ReplicaFailed`] said why). The
    /// request did not take effect: send it to another replica. The group's other replicas
    /// carry on; replace this one with a membership change.
    #[error(
        "this node's replica of {group} stopped serving (its state machine failed); \
         the request did not take effect, send it to another replica"
    )]
    ReplicaFailed {
        /// The group.
        group: GroupId,
    },
}

/// Whether a failed request may have taken effect: the class every [`RequestError`] is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It certainly did not take effect: safe to send again, to this node or any other.
    NotApplied,
    /// It may or may not have taken effect: retry only a command that is idempotent (or
    /// de-duplicated by a client session).
    Unknown,
}

impl RequestError {
    /// Whether the request may have taken effect. Retry policies read this, never the variant.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            RequestError::NotLeader { .. }
            | RequestError::GroupNotFound { .. }
            | RequestError::ProposalDropped { .. }
            | RequestError::StaleRouting { .. }
            | RequestError::Refused { .. }
            | RequestError::ShuttingDown
            | RequestError::TransferFailed { .. }
            | RequestError::QuorumUnreachable { .. }
            | RequestError::ReplicaFailed { .. }
            | RequestError::Busy { .. } => Outcome::NotApplied,
            // AppliedEarlier is known to have taken effect: of the two classes, the one that
            // says "may have".
            RequestError::Timeout { .. }
            | RequestError::OutcomeUnknown { .. }
            | RequestError::StoppedInFlight { .. }
            | RequestError::AppliedEarlier { .. } => Outcome::Unknown,
        }
    }

    /// Whether the request certainly did not take effect ([`Outcome::NotApplied`]).
    #[must_use]
    pub fn did_not_take_effect(&self) -> bool {
        self.outcome() == Outcome::NotApplied
    }
}

/// Which limit made a group [`RequestError::Busy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusyReason {
    /// Too many committed commands wait for the group's state machine.
    #[error("its state machine is behind")]
    ApplyBacklog,
    /// The leader holds as many uncommitted bytes as its limit allows.
    #[error("too many uncommitted bytes")]
    UncommittedBytes,
    /// As many requests forwarded between this node and the leader are in flight as
    /// [`crate::NodeConfig::max_forwarded_per_peer`] allows.
    #[error("too many forwarded requests in flight")]
    ForwardedRequests,
}

/// A failure of the coordinator itself. A node that hits one stops (fail-stop): continuing
/// after a storage or state-machine failure could acknowledge a write that is not durable.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The raft settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Node id 0 is reserved by raft.
    #[error("node id 0 is reserved by raft; number nodes from 1")]
    InvalidNodeId,
    /// A group was created with no voters, a zero id or the reserved group id 0.
    #[error("{group} needs at least one voter, and ids must be non-zero")]
    InvalidVoters {
        /// The group.
        group: GroupId,
    },
    /// The group is not held by this node.
    #[error("{group} is not held by this node")]
    GroupNotFound {
        /// The group.
        group: GroupId,
    },
    /// The log store failed; the node must stop (a failed persist poisons the store).
    #[error("storage failed: {0}")]
    Storage(#[from] storage::StorageError),
    /// raft-rs refused an operation on a group.
    #[error("raft error in {group}: {source}")]
    Raft {
        /// The group.
        group: GroupId,
        /// raft-rs's error.
        source: raft::Error,
    },
    /// A committed conf-change entry could not be decoded: the log is corrupt.
    #[error("committed conf change at {group} index {index} is malformed: {source}")]
    BadConfChange {
        /// The group.
        group: GroupId,
        /// The entry's index.
        index: u64,
        /// What is wrong with it.
        source: ConfChangeDecodeError,
    },
    /// A committed batch entry could not be decoded: the log is corrupt.
    #[error("committed batch entry at {group} index {index} is malformed: {source}")]
    BadBatch {
        /// The group.
        group: GroupId,
        /// The entry's index.
        index: u64,
        /// What is wrong with it.
        source: prost::DecodeError,
    },
    /// `on_persisted` was called for a cycle that is not the oldest in flight (a driver bug).
    #[error("cycle {cycle} reported persisted out of order")]
    CycleOutOfOrder {
        /// The cycle reported.
        cycle: u64,
    },
    /// The state machine failed; the node stops rather than diverge from its peers.
    #[error("state machine failed on {group}: {source}")]
    StateMachine {
        /// The group.
        group: GroupId,
        /// What it said.
        source: StateMachineError,
    },
    /// A routing table could not be built or read (a simulation's bad shape).
    #[error("bad routing table: {0}")]
    Routing(#[from] routing::RoutingError),
    /// A group was created while a cycle's batch was not yet durable (a driver bug): create
    /// groups between cycles.
    #[error(
        "cannot create a group while cycle {cycle} is being persisted; create it between cycles"
    )]
    CycleInFlight {
        /// The cycle still in flight.
        cycle: u64,
    },
    /// The persister thread ended unexpectedly; nothing more can be made durable.
    #[error("the persister thread stopped; the node cannot make writes durable")]
    PersisterStopped,
}
