//! [`Node`]: the tokio driver around [`MultiRaft`](crate::MultiRaft), and the API a database
//! calls.
//!
//! One task owns the core, the state machine and the pending requests. It ticks the groups,
//! steps what the transport delivers, and runs cycles: the cycle's batch is staged (readable by
//! raft at once) and handed to a persister thread, and while that fsync runs the task keeps
//! stepping and accepting proposals, which all land in the next cycle's batch. That is how one
//! fsync covers many proposals of many groups.
//!
//! - `config`: what a node starts with; the transport limits its table calls for.
//! - `handle`: [`Node`], the public API; each call is a command to the driver.
//! - `driver`: the task's loop, and nothing else.
//! - `pending`: the requests in flight and how a cycle answers them (shared with the
//!   simulation, so both drivers answer alike).
//! - `placement`: the groups a new cluster starts with.
//! - `membership`: a group's membership changes, as calls on `Node`.
//! - `reconcile`: acting on routing tables the meta group applies (replicas, and which peers
//!   the endpoint admits).
//! - `session`: client sessions, for exactly-once proposals.
//! - `events`: what the node tells subscribers as it happens.
//! - `lifecycle`: subscribing to those events, and draining a node out of service.
//! - `transfers`: leadership transfers a caller waits on.
//! - `forward`: proposals made on a follower, forwarded to the leader (and served there);
//!   `forward_error`, their typed errors on the forward stream.

mod config;
mod driver;
mod events;
mod forward;
mod forward_error;
mod handle;
mod latency;
mod lifecycle;
mod membership;
pub(crate) mod pending;
pub(crate) mod placement;
mod reconcile;
mod session;
mod transfers;

use routing::{GroupId, NodeId, VShardId};
use storage::StorageStats;
use transport::TransportStats;

use crate::error::CoordinatorError;
use crate::multiraft::{CoordinatorStats, GroupStatus};

pub use config::NodeConfig;
pub use events::NodeEvent;
pub use handle::{Node, NodeStopped};
pub use latency::{LatencyQuantiles, StageLatencies};
pub use session::{ClientSession, SessionCommand};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The log store could not be opened.
    #[error("cannot open the log store: {0}")]
    Storage(#[from] storage::StorageError),
    /// The transport could not start (address in use, bad certificate, bad limits).
    #[error("cannot start the transport: {0}")]
    Transport(#[from] transport::TransportError),
    /// The coordinator could not start.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// The node's id does not match its certificate.
    #[error("config says node {config} but the certificate is for node {certificate}")]
    IdentityMismatch {
        /// Id in the config.
        config: NodeId,
        /// Id in the certificate.
        certificate: NodeId,
    },
    /// The routing table gives this node no group.
    #[error("the routing table gives node {0} no group; check the node id and the table")]
    NoGroups(NodeId),
    /// A joining node was started with a routing table that lists no other node: it would
    /// hear nobody (see [`NodeConfig::join`]).
    #[error(
        "node {0} is joining but its routing table lists no running node; list the cluster's \
         nodes (every voter of the meta group) in the table it starts with"
    )]
    JoinWithoutCluster(NodeId),
    /// The apply worker threads could not be started.
    #[error("cannot start the apply workers: {0}")]
    ApplyWorkers(std::io::Error),
    /// A transport setting is invalid.
    #[error("invalid node config: {0}")]
    Config(#[from] transport::ConfigError),
}

/// A node's view of all its groups, with its counters.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeStatus {
    /// This node.
    pub node: NodeId,
    /// Every group it holds.
    pub groups: Vec<GroupStatus>,
    /// Coordinator counters.
    pub coordinator: CoordinatorStats,
    /// Log store counters.
    #[serde(skip)]
    pub storage: StorageStats,
    /// Transport counters.
    #[serde(skip)]
    pub transport: TransportStats,
    /// Proposals acknowledged to callers.
    pub proposals_acknowledged: u64,
    /// The version of the routing table this node has applied.
    pub routing_version: u64,
    /// The peers node-level liveness holds down now (silent past the liveness timeout).
    pub peers_down: Vec<NodeId>,
    /// Where the time of the proposals this node led went, since it started: raft
    /// (batching, persists, replication) and apply.
    pub latency: StageLatencies,
}

impl NodeStatus {
    /// How many groups this node leads.
    pub fn leading(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| g.leader == Some(self.node))
            .count()
    }
}

/// How far a drain got (see [`Node::drain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DrainProgress {
    /// Groups this node still leads.
    pub(crate) leading: usize,
    /// Requests still waiting for an answer.
    pub(crate) in_flight: usize,
}

/// What a drain achieved before the node shut down (see [`Node::drain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Groups the node led when the drain began.
    pub led_at_start: usize,
    /// Groups it still led when it shut down (0 unless the deadline passed first).
    pub still_leading: usize,
    /// Requests still unanswered when it shut down: they failed as the shutdown says.
    pub in_flight_at_stop: usize,
}

/// Where a linearizable read of a key may be served: see [`Node::read_key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRead {
    /// The group to read the key from.
    pub group: GroupId,
    /// The key's vShard (check [`Node::serves`] after reading).
    pub vshard: VShardId,
    /// The applied index the read reflects.
    pub index: u64,
}
