//! The shape of a simulated cluster, and what a request made through it returns.

use routing::{GroupId, NodeId};
use storage::Persist;
use transport::mem::FaultConfig;

use crate::{RaftConfig, RequestError, Token};

/// The shape of a simulated cluster.
#[derive(Clone, Debug)]
#[must_use]
pub struct SimConfig {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u64,
    /// Number of groups (ids 1..=groups).
    pub groups: u64,
    /// Replicas per group.
    pub replication: usize,
    /// vShards in the routing table.
    pub vshards: u32,
    /// Seed of the network and of every node's election RNG.
    pub seed: u64,
    /// Network faults.
    pub faults: FaultConfig,
    /// Raft settings (the seed is replaced by one derived from [`SimConfig::seed`]).
    pub raft: RaftConfig,
    /// Time units per raft tick.
    pub tick_every: u64,
    /// Durability of the simulated stores. `Buffer` by default: the simulated crashes drop a
    /// node's process state, not the OS page cache (the storage crate's kill tests cover fsync).
    pub persist: Persist,
    /// **A deliberate bug, for testing the checks.** Nodes stage each cycle's batch (so raft
    /// reads it back) and act as if it were durable (acks and votes leave at once), but the
    /// batch only reaches the store [`UNSYNCED_WINDOW`] time units later, like a log written
    /// without fsync that the OS flushes when it pleases; a crash loses what was not flushed.
    /// Off by default; never turn it on outside a test that expects failures.
    pub unsynced_log: bool,
    /// Run the meta group: the routing table is replicated, nodes act on its changes
    /// (joining and deleting replicas), and restarted nodes recover only what their store
    /// holds. Off by default (the routing table is then fixed, as in the older scenarios).
    pub meta: bool,
    /// Byzantine senders: the chance, at each time unit, that one forged raft message (from a
    /// node outside the cluster, or an invalid one from a member: see `sim/byzantine.rs`)
    /// reaches a random node. 0 by default. Every safety check must hold whatever it is.
    pub byzantine: f64,
    /// State machines that keep their own durable state (the storage-engine contract): each
    /// makes a group durable every this many batches and reports that position, and a crash
    /// loses what it applied since, so a restarted node must replay exactly what follows. 0
    /// (the default): in-memory state machines, rebuilt from the stored snapshot and the log.
    pub durable_state_machines: u64,
    /// **A deliberate bug, for testing the checks.** Groups apply a client session's retried
    /// command again instead of answering it from their session table. Off by default.
    pub without_session_dedup: bool,
}

/// How long a batch stays unflushed under [`SimConfig::unsynced_log`], in time units.
pub const UNSYNCED_WINDOW: u64 = 40;

impl SimConfig {
    /// `nodes` nodes, `groups` groups of three replicas (or fewer nodes), no faults.
    pub fn new(nodes: u64, groups: u64, seed: u64) -> Self {
        Self {
            nodes,
            groups,
            replication: usize::try_from(nodes.min(3)).unwrap_or(3),
            vshards: 1024,
            seed,
            faults: FaultConfig {
                drop: 0.0,
                duplicate: 0.0,
                min_delay: 1,
                max_delay: 1,
            },
            raft: RaftConfig::default().compaction(0, 0),
            tick_every: 5,
            persist: Persist::Buffer,
            unsynced_log: false,
            meta: false,
            byzantine: 0.0,
            durable_state_machines: 0,
            without_session_dedup: false,
        }
    }

    /// Injects the double-apply bug of [`SimConfig::without_session_dedup`].
    pub fn without_session_dedup(mut self, on: bool) -> Self {
        self.without_session_dedup = on;
        self
    }

    /// State machines durable every `batches` batches (see
    /// [`SimConfig::durable_state_machines`]).
    pub fn durable_state_machines(mut self, batches: u64) -> Self {
        self.durable_state_machines = batches;
        self
    }

    /// Runs the meta group (see [`SimConfig::meta`]).
    pub fn byzantine(mut self, chance: f64) -> Self {
        self.byzantine = chance;
        self
    }

    /// Runs the meta group (see [`SimConfig::meta`]).
    pub fn meta(mut self, on: bool) -> Self {
        self.meta = on;
        self
    }

    /// Sets the number of replicas per group.
    pub fn replication(mut self, replicas: usize) -> Self {
        self.replication = replicas;
        self
    }

    /// Injects the durability bug of [`SimConfig::unsynced_log`].
    pub fn unsynced_log(mut self, on: bool) -> Self {
        self.unsynced_log = on;
        self
    }

    /// Sets the network faults.
    pub fn faults(mut self, faults: FaultConfig) -> Self {
        self.faults = faults;
        self
    }

    /// Sets the raft settings.
    pub fn raft(mut self, raft: RaftConfig) -> Self {
        self.raft = raft;
        self
    }
}

/// The outcome of a request made through the harness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The node the request was made on.
    pub node: NodeId,
    /// The group.
    pub group: GroupId,
    /// The token [`SimCluster::propose`](super::SimCluster::propose) or [`SimCluster::read_index`](super::SimCluster::read_index) returned.
    pub token: Token,
    /// The state machine's response (proposals), the read index as 8 big-endian bytes (reads),
    /// or why it failed.
    pub result: Result<Vec<u8>, RequestError>,
}
