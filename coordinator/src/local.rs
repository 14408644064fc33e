//! [`LocalCluster`]: N real [`Node`]s in one process, over QUIC with mutual TLS on loopback,
//! certificates generated on the spot. What `pontoon demo`, the benchmarks and the QUIC
//! integration tests run; also handy in a database's own tests.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certs::{ClusterCa, NodeIdentity};
use routing::{GroupId, NodeId, RoutingTable};

use crate::{Node, NodeConfig, NodeError, ProposeError, StateMachine};

/// Builds the [`NodeConfig`] of each node from its id, address and data directory.
pub type ConfigFn = Box<dyn Fn(NodeConfig) -> NodeConfig + Send + Sync>;

/// N nodes of one cluster in this process. See the [module docs](self).
pub struct LocalCluster<S: StateMachine> {
    identities: BTreeMap<NodeId, NodeIdentity>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, Option<Node>>,
    dir: PathBuf,
    routing: RoutingTable,
    configure: ConfigFn,
    make_state_machine: Box<dyn Fn(NodeId) -> S + Send + Sync>,
}

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// Certificates could not be made.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// A node could not start.
    #[error("node {node}: {source}")]
    Node {
        /// Which node.
        node: NodeId,
        /// Why.
        source: NodeError,
    },
    /// A loopback UDP port could not be reserved.
    #[error("reserving a loopback port: {0}")]
    Port(std::io::Error),
}

fn free_udp_port() -> Result<SocketAddr, LocalClusterError> {
    let socket =
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(LocalClusterError::Port)?;
    socket.local_addr().map_err(LocalClusterError::Port)
}

impl<S: StateMachine> LocalCluster<S> {
    /// Starts one node per node of `routing`, data under `dir`, each node's config passed
    /// through `configure` (tick interval, durability, raft settings).
    ///
    /// # Errors
    /// [`LocalClusterError`] naming what failed.
    pub async fn start(
        dir: &Path,
        routing: RoutingTable,
        configure: impl Fn(NodeConfig) -> NodeConfig + Send + Sync + 'static,
        make_state_machine: impl Fn(NodeId) -> S + Send + Sync + 'static,
    ) -> Result<Self, LocalClusterError> {
        let ca = ClusterCa::generate("pontoon local cluster")?;
        let mut identities = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for node in routing.nodes() {
            identities.insert(node, ca.issue_node(node, &["127.0.0.1".to_string()])?);
            addrs.insert(node, free_udp_port()?);
        }
        let mut this = Self {
            nodes: identities.keys().map(|n| (*n, None)).collect(),
            identities,
            addrs,
            dir: dir.to_path_buf(),
            routing,
            configure: Box::new(configure),
            make_state_machine: Box::new(make_state_machine),
        };
        let ids: Vec<NodeId> = this.nodes.keys().copied().collect();
        for node in ids {
            this.restart(node).await?;
        }
        Ok(this)
    }

    /// Starts `node` (again), on its address and data directory.
    ///
    /// # Errors
    /// [`LocalClusterError::Node`].
    pub async fn restart(&mut self, node: NodeId) -> Result<(), LocalClusterError> {
        let Some(identity) = self.identities.get(&node) else {
            return Err(LocalClusterError::Node {
                node,
                source: NodeError::NoGroups(node),
            });
        };
        let listen = self
            .addrs
            .get(&node)
            .copied()
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let mut config = NodeConfig::new(node, listen, self.dir.join(format!("node-{node}")));
        for (peer, addr) in &self.addrs {
            if *peer != node {
                config = config.peer(*peer, *addr);
            }
        }
        let config = (self.configure)(config);
        let started = Node::start(
            config,
            identity,
            self.routing.clone(),
            (self.make_state_machine)(node),
        )
        .await
        .map_err(|source| LocalClusterError::Node { node, source })?;
        self.nodes.insert(node, Some(started));
        Ok(())
    }

    /// Stops `node` (its data stays; [`LocalCluster::restart`] brings it back).
    pub async fn kill(&mut self, node: NodeId) {
        if let Some(Some(running)) = self.nodes.insert(node, None) {
            running.shutdown().await;
        }
    }

    /// A running node.
    pub fn node(&self, node: NodeId) -> Option<&Node> {
        self.nodes.get(&node)?.as_ref()
    }

    /// Every running node.
    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().flatten()
    }

    /// The routing table the cluster started with.
    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    /// Each group's leader, as the running nodes report it (a leader must call itself leader).
    pub async fn leaders(&self) -> BTreeMap<GroupId, NodeId> {
        let mut leaders = BTreeMap::new();
        for node in self.running() {
            if let Ok(status) = node.status().await {
                for g in status.groups {
                    if g.leader == Some(node.id()) {
                        leaders.insert(g.group, node.id());
                    }
                }
            }
        }
        leaders
    }

    /// How many groups each running node leads.
    pub async fn leader_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.running().map(|n| (n.id(), 0)).collect();
        for leader in self.leaders().await.values() {
            *counts.entry(*leader).or_default() += 1;
        }
        counts
    }

    /// Waits until every group has a running leader; returns how long that took, or `None`
    /// at the deadline.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let groups = self.routing.groups().count();
        while start.elapsed() < timeout {
            if self.leaders().await.len() == groups {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Proposes `command` for `key` wherever its group's leader is, following `NotLeader`
    /// hints and retrying dropped proposals, until `timeout`.
    ///
    /// # Errors
    /// The last error when the deadline passes.
    pub async fn propose(
        &self,
        key: &[u8],
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ProposeError> {
        let group = self.routing.group_for_key(key);
        self.propose_to_group(group, command, timeout).await
    }

    /// [`LocalCluster::propose`] to a group named directly.
    ///
    /// # Errors
    /// As [`LocalCluster::propose`].
    pub async fn propose_to_group(
        &self,
        group: GroupId,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ProposeError> {
        let deadline = Instant::now() + timeout;
        let mut target = self.routing.leader_hint(group);
        let mut last = ProposeError::ShuttingDown;
        let candidates: Vec<NodeId> = self.running().map(Node::id).collect();
        let mut next_candidate = 0;
        while Instant::now() < deadline {
            let node = match target.and_then(|t| self.node(t)) {
                Some(node) => node,
                None => {
                    let Some(id) = candidates.get(next_candidate % candidates.len().max(1)) else {
                        return Err(ProposeError::ShuttingDown);
                    };
                    next_candidate += 1;
                    match self.node(*id) {
                        Some(node) => node,
                        None => continue,
                    }
                }
            };
            match node.propose_to_group(group, command.clone()).await {
                Ok(response) => return Ok(response),
                Err(ProposeError::NotLeader { leader, .. }) => {
                    last = ProposeError::NotLeader { group, leader };
                    if leader.is_none() || leader == target {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    target = leader;
                }
                Err(e @ (ProposeError::ProposalDropped { .. } | ProposeError::ShuttingDown)) => {
                    last = e;
                    target = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for node in ids {
            self.kill(node).await;
        }
    }
}
