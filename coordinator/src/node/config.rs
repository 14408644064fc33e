//! What a node is started with, and the transport limits its routing table calls for.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use routing::{NodeId, RoutingTable};
use storage::StoreOptions;
use transport::TransportConfig;

use super::NodeError;
use crate::config::RaftConfig;

/// Everything a node needs besides its identity, routing and state machine.
#[derive(Clone, Debug)]
#[must_use]
pub struct NodeConfig {
    /// This node's id; must match its certificate.
    pub node_id: NodeId,
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Where the other nodes are reached.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The log store's directory.
    pub data_dir: PathBuf,
    /// Raft settings of every group.
    pub raft: RaftConfig,
    /// QUIC limits.
    pub transport: TransportConfig,
    /// Log store settings (durability mode among them).
    pub store: StoreOptions,
    /// Wall-clock length of one raft tick.
    pub tick_interval: Duration,
    /// How long a proposal or read may wait before it fails with `Timeout`.
    pub request_timeout: Duration,
    /// Join a running cluster instead of bootstrapping one: the node starts with no group and
    /// learns the routing table (and its replicas) once an operator adds it
    /// (`add_node`). Ignored when the data directory already holds groups (a restart).
    ///
    /// Until the cluster's table arrives, the node hears only the nodes of the table given to
    /// [`Node::start`](crate::Node::start): list every running node there (at least every
    /// voter of the meta group, any of which may lead it and send the table). Another node's
    /// messages are refused as from a non-member, so a stranger with a CA-signed certificate
    /// cannot hand a joining node a forged cluster.
    pub join: bool,
    /// Apply worker threads: committed commands are applied there, never on the
    /// coordinator's task, each group on one worker (its order kept), groups spread over
    /// them. Default: 2.
    pub apply_workers: usize,
    /// How many committed commands of one group may wait for its state machine before new
    /// proposals to the group fail with [`RequestError::Busy`](crate::RequestError::Busy)
    /// (did not take effect; back off and retry). Default: 10,000.
    pub max_apply_backlog: usize,
    /// How many [`crate::NodeEvent`]s a subscriber may fall behind by before it misses some
    /// (see [`crate::Node::subscribe`]). A failover of a node with many groups raises a few
    /// events per group.
    pub event_capacity: usize,
    /// Whether a proposal (or a read) made on a follower goes to the group's leader over the
    /// peer connection, waiting for a leader while none is known, instead of failing with
    /// [`RequestError::NotLeader`](crate::RequestError::NotLeader). Default: `true`.
    pub forward_to_leader: bool,
    /// How many forwarded requests may be in flight between this node and one peer, each way
    /// (as the follower that forwards, and as the leader that serves); past it they fail with
    /// [`RequestError::Busy`](crate::RequestError::Busy) (did not take effect). Default: 1,024.
    pub max_forwarded_per_peer: usize,
}

impl NodeConfig {
    /// A config with safe defaults: 100 ms ticks (1-2 s elections), 10 s request timeout,
    /// fdatasync on every cycle.
    pub fn new(node_id: NodeId, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            listen,
            peers: BTreeMap::new(),
            data_dir: data_dir.into(),
            raft: RaftConfig::default(),
            transport: TransportConfig::default(),
            store: StoreOptions::default(),
            tick_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(10),
            join: false,
            apply_workers: 2,
            max_apply_backlog: 10_000,
            event_capacity: super::events::DEFAULT_CAPACITY,
            forward_to_leader: true,
            max_forwarded_per_peer: 1024,
        }
    }

    /// Sets the number of apply worker threads (see [`NodeConfig::apply_workers`]).
    pub fn apply_workers(mut self, workers: usize) -> Self {
        self.apply_workers = workers;
        self
    }

    /// Sets the apply backlog that makes a group busy (see [`NodeConfig::max_apply_backlog`]).
    pub fn max_apply_backlog(mut self, commands: usize) -> Self {
        self.max_apply_backlog = commands;
        self
    }

    /// Refuses a first start (an empty data directory) that could never serve: a
    /// bootstrapping node the table gives no group, a joining one whose table lists nobody
    /// else to hear.
    pub(super) fn check_first_start(&self, routing: &RoutingTable) -> Result<(), NodeError> {
        let id = self.node_id;
        if !self.join && !routing.is_member(id) {
            return Err(NodeError::NoGroups(id));
        }
        if self.join && routing.members().all(|(node, _)| node == id) {
            return Err(NodeError::JoinWithoutCluster(id));
        }
        Ok(())
    }

    /// Joins a running cluster instead of bootstrapping one (see [`NodeConfig::join`]).
    pub fn join(mut self, join: bool) -> Self {
        self.join = join;
        self
    }

    /// Adds a peer's address.
    pub fn peer(mut self, node: NodeId, addr: SocketAddr) -> Self {
        self.peers.insert(node, addr);
        self
    }

    /// Sets the raft settings.
    pub fn raft(mut self, raft: RaftConfig) -> Self {
        self.raft = raft;
        self
    }

    /// Sets the tick interval.
    pub fn tick_interval(mut self, tick: Duration) -> Self {
        self.tick_interval = tick;
        self
    }

    /// Sets the request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the log store options.
    pub fn store(mut self, store: StoreOptions) -> Self {
        self.store = store;
        self
    }

    /// Sets how far an event subscriber may fall behind (see [`NodeConfig::event_capacity`]).
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events;
        self
    }

    /// Turns forwarding to the leader on or off (see [`NodeConfig::forward_to_leader`]).
    pub fn forward_to_leader(mut self, forward: bool) -> Self {
        self.forward_to_leader = forward;
        self
    }

    /// Sets the cap on forwarded requests per peer (see [`NodeConfig::max_forwarded_per_peer`]).
    pub fn max_forwarded_per_peer(mut self, requests: usize) -> Self {
        self.max_forwarded_per_peer = requests;
        self
    }

    /// Sets the transport limits.
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_start_that_could_never_serve_is_refused() {
        let others = RoutingTable::uniform(16, 2, &[NodeId(1), NodeId(2)], 2).unwrap();
        let alone = RoutingTable::uniform(16, 2, &[NodeId(3)], 1).unwrap();
        let config = NodeConfig::new(NodeId(3), "127.0.0.1:0".parse().unwrap(), "unused");
        assert!(matches!(
            config.check_first_start(&others),
            Err(NodeError::NoGroups(NodeId(3)))
        ));
        assert!(config.check_first_start(&alone).is_ok());
        let joining = config.join(true);
        assert!(joining.check_first_start(&others).is_ok());
        assert!(matches!(
            joining.check_first_start(&alone),
            Err(NodeError::JoinWithoutCluster(NodeId(3)))
        ));
    }
}
