//! [`Node`]: the tokio driver around [`MultiRaft`], and the API a database calls.
//!
//! One task owns the core, the state machine and the pending requests. It ticks the groups,
//! steps what the transport delivers, and runs cycles: the cycle's batch is staged (readable by
//! raft at once) and handed to a persister thread, and while that fsync runs the task keeps
//! stepping and accepting proposals, which all land in the next cycle's batch. That is how one
//! fsync covers many proposals of many groups.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use routing::{GroupId, META_GROUP, NodeId, RoutingChange, RoutingTable, VShardId};
use storage::{LogStore, StorageStats, StoreOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;
use transport::{
    AddressBook, Envelope, Inbound, QuicTransport, Transport, TransportConfig, TransportStats,
};

use crate::config::RaftConfig;
use crate::error::{CoordinatorError, ProposeError};
use crate::multiraft::{Apply, CoordinatorStats, Event, GroupStatus, MultiRaft, Token};
use crate::replicated::{Fences, Frame, Replicated, Reply as AppliedReply};
use crate::reshape::VShardStep;
use crate::state_machine::StateMachine;

/// The most voters the meta group gets; every other member follows it as a learner.
pub const META_VOTERS: usize = 5;

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
    pub join: bool,
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
        }
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

    /// Sets the transport limits.
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }
}

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
    /// A setting is invalid.
    #[error("invalid node config: {0}")]
    Config(String),
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

type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

/// What stops the coordinator task and waits for it.
type DriverHandle = (oneshot::Sender<()>, tokio::task::JoinHandle<()>);

enum Command {
    Propose {
        group: GroupId,
        data: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Read {
        group: GroupId,
        reply: Reply<u64>,
    },
    Export {
        group: GroupId,
        vshard: VShardId,
        reply: Reply<Vec<u8>>,
    },
    ConfChange {
        group: GroupId,
        change: ConfChangeV2,
        reply: Reply<ConfState>,
    },
    TransferLeader {
        group: GroupId,
        to: NodeId,
        reply: Reply<()>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
}

/// A running node: every raft group the routing table gives it, on one QUIC endpoint and one
/// log store. Cheap to clone; all clones talk to the same node.
#[derive(Clone)]
pub struct Node {
    id: NodeId,
    commands: mpsc::Sender<Command>,
    routing: Arc<RwLock<RoutingTable>>,
    /// The applied routing version, for waiting on a newer table.
    routing_version: watch::Receiver<u64>,
    fences: Fences,
    request_timeout: Duration,
    local_addr: SocketAddr,
    shutdown: Arc<tokio::sync::Mutex<Option<DriverHandle>>>,
    address_book: AddressBook,
    /// The QUIC endpoint, closed by `shutdown` (absent over other transports).
    endpoint: Option<Arc<QuicTransport>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Node {
    /// Starts a node: opens the log store, binds the QUIC endpoint, creates (or recovers) every
    /// group the routing table gives this node, and runs the coordinator.
    ///
    /// # Errors
    /// [`NodeError`] saying which part could not start.
    pub async fn start(
        config: NodeConfig,
        identity: &certs::NodeIdentity,
        routing: RoutingTable,
        state_machine: impl StateMachine,
    ) -> Result<Node, NodeError> {
        if identity.node_id() != config.node_id {
            return Err(NodeError::IdentityMismatch {
                config: config.node_id,
                certificate: identity.node_id(),
            });
        }
        config.raft.validate().map_err(CoordinatorError::from)?;
        config
            .transport
            .validate()
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let address_book = AddressBook::new();
        for (node, addr) in &config.peers {
            address_book.insert(*node, *addr);
        }
        // Before the endpoint accepts anything: a peer's stream for a group this node is about
        // to load would otherwise be reset while thousands of groups load. The driver keeps
        // the set current as the routing table moves replicas here or away.
        let store = LogStore::open(&config.data_dir, config.store.clone())?;
        let initial: HashSet<GroupId> = if !store.groups().is_empty() {
            store.groups().into_iter().collect()
        } else if config.join {
            HashSet::from([META_GROUP])
        } else {
            bootstrap_groups(&routing, config.node_id)
                .into_iter()
                .map(|(g, _, _)| g)
                .collect()
        };
        let known: KnownGroups = Arc::new(RwLock::new(initial));
        let filter_set = known.clone();
        let filter: transport::GroupFilter = Arc::new(move |group| {
            filter_set
                .read()
                .map(|set| set.contains(&group))
                .unwrap_or(false)
        });
        let (transport, inbound) = QuicTransport::bind(
            config.listen,
            identity,
            transport_for(&config.transport, &routing),
            address_book.clone(),
            filter,
        )
        .await?;
        let local_addr = transport.local_addr();
        let transport = Arc::new(transport);
        let closer = transport.clone();
        let mut node = Self::start_inner(
            config,
            store,
            transport,
            inbound,
            address_book,
            local_addr,
            routing,
            Box::new(state_machine),
            Some(known),
        )?;
        node.endpoint = Some(closer);
        Ok(node)
    }

    /// Starts a node over any [`Transport`] (the in-memory one in tests).
    ///
    /// # Errors
    /// [`NodeError`] saying which part could not start.
    pub fn start_with_transport(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        inbound: mpsc::Receiver<Inbound>,
        address_book: AddressBook,
        local_addr: SocketAddr,
        routing: RoutingTable,
        state_machine: impl StateMachine,
    ) -> Result<Node, NodeError> {
        let store = LogStore::open(&config.data_dir, config.store.clone())?;
        Self::start_inner(
            config,
            store,
            transport,
            inbound,
            address_book,
            local_addr,
            routing,
            Box::new(state_machine),
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start_inner(
        config: NodeConfig,
        store: LogStore,
        transport: Arc<dyn Transport>,
        inbound: mpsc::Receiver<Inbound>,
        address_book: AddressBook,
        local_addr: SocketAddr,
        routing: RoutingTable,
        state_machine: Box<dyn StateMachine>,
        known: Option<KnownGroups>,
    ) -> Result<Node, NodeError> {
        let id = config.node_id;
        let fresh = store.groups().is_empty();
        if fresh && !config.join && !routing.is_member(id) {
            return Err(NodeError::NoGroups(id));
        }
        let mut core = MultiRaft::new(id, config.raft.clone(), store.clone())?;
        if fresh && config.join {
            // Everything arrives from the cluster: first the meta group's table, then the
            // replicas it places here.
            core.create_joining_group(META_GROUP)?;
        } else if fresh {
            let created = core.create_groups_with_learners(bootstrap_groups(&routing, id))?;
            // A brand-new cluster need not wait out an election timeout per group: the routing
            // table's leader hints are balanced, so each hinted replica campaigns on the first
            // tick, as many at a time as `RaftConfig::max_campaigns` lets it (the others'
            // first elections are spread out, see MultiRaft).
            for group in created {
                if routing.leader_hint(group) == Some(id) {
                    let _ = core.campaign_soon(group);
                }
            }
        }
        // A restart recovers exactly the groups its store holds; the meta group's log then
        // replays the table (and any replica moves) from where this node left off.
        if let Some(known) = &known
            && let Ok(mut set) = known.write()
        {
            set.extend(core.groups());
        }
        // Restores from stored snapshots come out of the first cycle; nothing else may run first.
        let (version_tx, version_rx) = watch::channel(routing.version());
        let state_machine = Replicated::new(state_machine, routing.clone());
        let fences = state_machine.fences();
        let routing = Arc::new(RwLock::new(routing));
        let (commands_tx, commands_rx) = mpsc::channel(4096);
        let (stop_tx, stop_rx) = oneshot::channel();
        let driver = Driver {
            core,
            store,
            transport,
            state_machine,
            routing: routing.clone(),
            routing_version: version_tx,
            table_pending: false,
            known,
            address_book: address_book.clone(),
            proposals: HashMap::new(),
            reads: HashMap::new(),
            exports: HashMap::new(),
            conf_changes: HashMap::new(),
            deadlines: VecDeque::new(),
            next_token: 1,
            request_timeout: config.request_timeout,
            acknowledged: 0,
        };
        let span = tracing::info_span!("node", node = %id);
        let handle = tokio::spawn(
            driver
                .run(commands_rx, inbound, stop_rx, config.tick_interval)
                .instrument(span),
        );
        Ok(Node {
            id,
            commands: commands_tx,
            routing,
            routing_version: version_rx,
            fences,
            request_timeout: config.request_timeout,
            local_addr,
            shutdown: Arc::new(tokio::sync::Mutex::new(Some((stop_tx, handle)))),
            address_book,
            endpoint: None,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Client connections (ALPN `pontoon-client/1`) the endpoint accepted, when the transport
    /// config has `accept_clients`; `Some` once. The example key-value service serves them.
    pub fn take_client_connections(&self) -> Option<mpsc::Receiver<transport::ClientConnection>> {
        self.endpoint.as_ref()?.take_client_connections()
    }

    /// The routing table as this node knows it (leader hints kept current).
    pub fn routing(&self) -> RoutingTable {
        self.routing
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The group that serves `key` by this node's routing table.
    pub fn group_for_key(&self, key: &[u8]) -> GroupId {
        self.routing
            .read()
            .map(|r| r.group_for_key(key))
            .unwrap_or_else(|poisoned| poisoned.into_inner().group_for_key(key))
    }

    /// Changes where `node` is reached (it moved, or a new node joined).
    pub fn set_peer_address(&self, node: NodeId, addr: SocketAddr) {
        self.address_book.insert(node, addr);
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        rx.await.map_err(|_| ProposeError::ShuttingDown)?
    }

    /// Replicates `command` in the group that owns `key`, and returns the state machine's
    /// response once the command is committed by a quorum and applied here.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] (retry on the leader it names), [`ProposeError::GroupNotFound`],
    /// [`ProposeError::ProposalDropped`] (did not take effect), [`ProposeError::Timeout`]
    /// (outcome unknown), [`ProposeError::ShuttingDown`].
    pub async fn propose(&self, key: &[u8], command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let vshard = self
            .routing
            .read()
            .map(|r| r.vshard_of_key(key))
            .map_err(|_| ProposeError::ShuttingDown)?;
        let framed = Frame::encode_user(Some(vshard), command);
        loop {
            let (group, version) = self
                .routing
                .read()
                .map(|r| (r.group_of_vshard(vshard).unwrap_or(GroupId(0)), r.version()))
                .map_err(|_| ProposeError::ShuttingDown)?;
            let result = self
                .call(|reply| Command::Propose {
                    group,
                    data: framed.clone(),
                    reply,
                })
                .await;
            // Refused by a fence: it did not take effect, so routing it again is safe once
            // this node has a newer table.
            let Err(ProposeError::StaleRouting { .. }) = &result else {
                return result;
            };
            let mut versions = self.routing_version.clone();
            let newer = tokio::time::timeout_at(deadline, versions.wait_for(|v| *v > version));
            if !matches!(newer.await, Ok(Ok(_))) {
                return result;
            }
        }
    }

    /// [`Node::propose`] to a group named directly.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn propose_to_group(
        &self,
        group: GroupId,
        command: Vec<u8>,
    ) -> Result<Vec<u8>, ProposeError> {
        self.propose_frame(group, Frame::encode_user(None, command))
            .await
    }

    async fn propose_frame(&self, group: GroupId, data: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        self.call(|reply| Command::Propose { group, data, reply })
            .await
    }

    /// Applies `change` to the cluster's routing table through the meta group, if the table is
    /// still at `expected_version`. Must run on the meta group's leader. Resolves with the new
    /// table once this node has applied it.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] (retry on the meta group's leader),
    /// [`ProposeError::Refused`] (another version, or an invalid change), and those of
    /// [`Node::propose`].
    pub async fn propose_routing(
        &self,
        change: &RoutingChange,
        expected_version: u64,
    ) -> Result<RoutingTable, ProposeError> {
        let frame = Frame::Routing(change.encode(expected_version)).encode();
        let bytes = self.propose_frame(META_GROUP, frame).await?;
        RoutingTable::decode(&bytes).map_err(|e| ProposeError::Refused {
            group: META_GROUP,
            reason: e.to_string(),
        })
    }

    /// Fences `vshard` in `group` (the first step of moving it away): every command for it
    /// ordered after this one is refused with [`ProposeError::StaleRouting`]. Its data stays.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn release_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<(), ProposeError> {
        self.vshard_step(group, vshard, VShardStep::Release).await
    }

    /// Proposes one step of a vShard move to `group` (this node must lead it): see
    /// [`Node::release_vshard`], [`Node::acquire_vshard`], [`Node::purge_vshard`].
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn vshard_step(
        &self,
        group: GroupId,
        vshard: VShardId,
        step: VShardStep,
    ) -> Result<(), ProposeError> {
        self.propose_frame(group, step.frame(vshard).encode())
            .await
            .map(drop)
    }

    /// Makes `group` serve `vshard`, importing `data` (from [`Node::export_vshard`] on its old
    /// group) through [`StateMachine::import_vshard`]; `None` takes back a vShard this group
    /// released (a move rolled back). Idempotent: importing twice replaces the data.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn acquire_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
        data: Option<Vec<u8>>,
    ) -> Result<(), ProposeError> {
        self.vshard_step(group, vshard, VShardStep::Acquire(data))
            .await
    }

    /// Drops the data of a vShard `group` released (when it is still fenced there).
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn purge_vshard(&self, group: GroupId, vshard: VShardId) -> Result<(), ProposeError> {
        self.vshard_step(group, vshard, VShardStep::Purge).await
    }

    /// `vshard`'s data in `group`, read from this node's replica after a linearizable read
    /// barrier, through [`StateMachine::export_vshard`].
    ///
    /// # Errors
    /// As [`Node::read_index`], or [`ProposeError::Refused`] when the state machine cannot
    /// export.
    pub async fn export_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<Vec<u8>, ProposeError> {
        self.call(|reply| Command::Export {
            group,
            vshard,
            reply,
        })
        .await
    }

    /// One group's status on this node (`None`: it holds no replica of it).
    ///
    /// # Errors
    /// [`ProposeError::ShuttingDown`].
    pub async fn group_status(&self, group: GroupId) -> Result<Option<GroupStatus>, ProposeError> {
        let status = self.status().await?;
        Ok(status.groups.into_iter().find(|g| g.group == group))
    }

    /// Waits until this node has applied a routing table of at least `version`, up to the
    /// request timeout; returns the version it has.
    pub async fn wait_for_routing(&self, version: u64) -> u64 {
        let mut versions = self.routing_version.clone();
        let reached =
            tokio::time::timeout(self.request_timeout, versions.wait_for(|v| *v >= version));
        match reached.await {
            Ok(Ok(v)) => *v,
            _ => *self.routing_version.borrow(),
        }
    }

    /// A linearizable read barrier for `key`: resolves once this node's replica of the key's
    /// group has applied everything committed before the call and still serves the key's
    /// vShard, retrying on a newer routing table when the vShard moved. Read the local state
    /// machine for `read.group` afterwards, then confirm with [`Node::serves`] that the
    /// vShard did not leave while reading (if it did, read again).
    ///
    /// # Errors
    /// As [`Node::read_index`], and [`ProposeError::StaleRouting`] when no newer table came
    /// before the deadline.
    pub async fn read_key(&self, key: &[u8]) -> Result<KeyRead, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let (vshard, group, version) = self
                .routing
                .read()
                .map(|r| {
                    let v = r.vshard_of_key(key);
                    (v, r.group_of_vshard(v).unwrap_or(GroupId(0)), r.version())
                })
                .map_err(|_| ProposeError::ShuttingDown)?;
            let index = self.read_index(group).await?;
            if self.serves(group, vshard) {
                return Ok(KeyRead {
                    group,
                    vshard,
                    index,
                });
            }
            let stale = ProposeError::StaleRouting {
                vshard,
                group,
                table_version: version,
            };
            let mut versions = self.routing_version.clone();
            let newer = tokio::time::timeout_at(deadline, versions.wait_for(|v| *v > version));
            if !matches!(newer.await, Ok(Ok(_))) {
                return Err(stale);
            }
        }
    }

    /// Whether this node's replica of `group` serves `vshard` (it has not released it).
    pub fn serves(&self, group: GroupId, vshard: VShardId) -> bool {
        self.fences.serves(group, vshard)
    }

    /// A linearizable read barrier: resolves once this node's state machine for `group` has
    /// applied everything committed before the call, confirmed by a quorum. Read the local
    /// state machine afterwards. Returns the applied index reached.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn read_index(&self, group: GroupId) -> Result<u64, ProposeError> {
        self.call(|reply| Command::Read { group, reply }).await
    }

    /// Asks `group`'s leader (this node) to hand leadership to `to`. Resolves when the request
    /// is made; watch [`Node::status`] for the outcome.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`], [`ProposeError::GroupNotFound`], [`ProposeError::ShuttingDown`].
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), ProposeError> {
        self.call(|reply| Command::TransferLeader { group, to, reply })
            .await
    }

    /// Changes `group`'s membership through raft (joint consensus when `change` has several
    /// steps; leave the joint state with an empty change). Resolves with the configuration in
    /// force once the change is committed and applied.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn change_membership(
        &self,
        group: GroupId,
        change: ConfChangeV2,
    ) -> Result<ConfState, ProposeError> {
        self.call(|reply| Command::ConfChange {
            group,
            change,
            reply,
        })
        .await
    }

    /// Adds `node` to `group` as a learner (it receives the log but does not vote).
    ///
    /// # Errors
    /// As [`Node::change_membership`].
    pub async fn add_learner(
        &self,
        group: GroupId,
        node: NodeId,
    ) -> Result<ConfState, ProposeError> {
        self.change_membership(group, single_change(ConfChangeType::AddLearnerNode, node))
            .await
    }

    /// Adds `node` to `group` as a voter, or promotes it when it is a learner.
    ///
    /// # Errors
    /// As [`Node::change_membership`].
    pub async fn add_voter(&self, group: GroupId, node: NodeId) -> Result<ConfState, ProposeError> {
        self.change_membership(group, single_change(ConfChangeType::AddNode, node))
            .await
    }

    /// Removes `node` from `group`.
    ///
    /// # Errors
    /// As [`Node::change_membership`].
    pub async fn remove_member(
        &self,
        group: GroupId,
        node: NodeId,
    ) -> Result<ConfState, ProposeError> {
        self.change_membership(group, single_change(ConfChangeType::RemoveNode, node))
            .await
    }

    /// Every group's status and the node's counters.
    ///
    /// # Errors
    /// [`ProposeError::ShuttingDown`].
    pub async fn status(&self) -> Result<NodeStatus, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Status { reply })
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        rx.await.map_err(|_| ProposeError::ShuttingDown)
    }

    /// Stops the node: pending requests fail with `ShuttingDown`, the endpoint closes, and the
    /// call returns once the coordinator task has ended. Durable state stays on disk.
    pub async fn shutdown(&self) {
        let taken = self.shutdown.lock().await.take();
        if let Some((stop, handle)) = taken {
            let _ = stop.send(());
            let _ = handle.await;
        }
        if let Some(endpoint) = &self.endpoint {
            endpoint.shutdown().await;
        }
    }
}

/// Streams kept beyond one per group: the heartbeat stream and the meta group's.
const STREAM_HEADROOM: u32 = 64;

/// `config` with room for one stream per group of `routing` from each peer: quinn never lets
/// a peer open more than `max_concurrent_uni_streams`, and a group stream stays open, so a
/// node holding more groups than that would leave the rest silent, their messages queued
/// until refused. Only ever raised.
fn transport_for(config: &TransportConfig, routing: &RoutingTable) -> TransportConfig {
    let groups = u32::try_from(routing.groups().count()).unwrap_or(u32::MAX);
    let needed = groups.saturating_add(STREAM_HEADROOM);
    let mut config = config.clone();
    if config.max_concurrent_uni_streams < needed {
        config.max_concurrent_uni_streams = needed;
    }
    config
}

/// The groups a brand-new cluster starts with on `node`: its replicas of the data groups, and
/// the meta group (the first [`META_VOTERS`] members vote, the rest learn).
pub(crate) fn bootstrap_groups(
    routing: &RoutingTable,
    node: NodeId,
) -> Vec<(GroupId, Vec<NodeId>, Vec<NodeId>)> {
    let mut groups: Vec<_> = routing
        .groups()
        .filter(|(_, placement)| placement.replicas.contains(&node))
        .map(|(group, placement)| (group, placement.replicas.clone(), Vec::new()))
        .collect();
    let (voters, learners) = meta_membership(routing);
    if voters.contains(&node) || learners.contains(&node) {
        groups.push((META_GROUP, voters, learners));
    }
    groups
}

/// The meta group's first configuration: the lowest-numbered members vote.
pub(crate) fn meta_membership(routing: &RoutingTable) -> (Vec<NodeId>, Vec<NodeId>) {
    let mut members: Vec<NodeId> = routing.members().map(|(n, _)| n).collect();
    let learners = members.split_off(members.len().min(META_VOTERS));
    (members, learners)
}

type KnownGroups = Arc<RwLock<HashSet<GroupId>>>;

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

fn single_change(kind: ConfChangeType, node: NodeId) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node.get();
    let mut change = ConfChangeV2::default();
    change.mut_changes().push(single);
    change
}

struct Driver {
    core: MultiRaft,
    store: LogStore,
    transport: Arc<dyn Transport>,
    state_machine: Replicated<Box<dyn StateMachine>>,
    routing: Arc<RwLock<RoutingTable>>,
    routing_version: watch::Sender<u64>,
    /// The meta group applied a new table that this node has not acted on yet.
    table_pending: bool,
    /// The groups the transport accepts streams for (QUIC only).
    known: Option<KnownGroups>,
    address_book: AddressBook,
    proposals: HashMap<Token, (GroupId, Reply<Vec<u8>>)>,
    reads: HashMap<Token, (GroupId, Reply<u64>)>,
    exports: HashMap<Token, (GroupId, VShardId, Reply<Vec<u8>>)>,
    conf_changes: HashMap<Token, (GroupId, Reply<ConfState>)>,
    /// Tokens in the order they were issued; their deadlines grow in the same order.
    deadlines: VecDeque<(Instant, Token)>,
    next_token: Token,
    request_timeout: Duration,
    acknowledged: u64,
}

type PersistResult = Result<(), storage::StorageError>;

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut stop: oneshot::Receiver<()>,
        tick_interval: Duration,
    ) {
        let (persist_tx, persist_rx) = std::sync::mpsc::channel::<storage::StagedBatch>();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<PersistResult>();
        let store = self.store.clone();
        let persister = std::thread::Builder::new()
            .name("pontoon-persist".into())
            .spawn(move || {
                while let Ok(staged) = persist_rx.recv() {
                    let result = store.commit(staged).map(|_| ());
                    let failed = result.is_err();
                    if done_tx.send(result).is_err() || failed {
                        break;
                    }
                }
            });
        if let Err(error) = persister {
            tracing::error!(%error, "cannot start the persister thread; node stops");
            return;
        }
        let mut ticker = tokio::time::interval(tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persisting: Option<crate::multiraft::CycleId> = None;
        let result: Result<(), CoordinatorError> = async {
            loop {
                if persisting.is_none() {
                    // Between cycles: creating a replica writes to the store on its own,
                    // which must not overtake a cycle's batch still being made durable.
                    self.reconcile()?;
                }
                if persisting.is_none()
                    && let Some(cycle) = self.core.poll_cycle()?
                {
                    self.send(cycle.messages);
                    self.apply(cycle.applies)?;
                    self.handle_events(cycle.events);
                    if persist_tx.send(cycle.batch).is_err() {
                        return Err(CoordinatorError::PersisterStopped);
                    }
                    persisting = Some(cycle.id);
                }
                tokio::select! {
                    biased;
                    _ = &mut stop => return Ok(()),
                    done = done_rx.recv(), if persisting.is_some() => {
                        match done {
                            Some(Ok(())) => {}
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err(CoordinatorError::PersisterStopped),
                        }
                        if let Some(id) = persisting.take() {
                            let messages = self.core.on_persisted(id)?;
                            self.send(messages);
                        }
                    }
                    _ = ticker.tick() => {
                        self.core.tick();
                        self.expire_requests();
                        self.compact()?;
                    }
                    Some(message) = inbound.recv() => {
                        self.on_inbound(message);
                        // Drain what is already queued so one cycle covers it all.
                        for _ in 0..1024 {
                            match inbound.try_recv() {
                                Ok(message) => self.on_inbound(message),
                                Err(_) => break,
                            }
                        }
                    }
                    command = commands.recv() => match command {
                        Some(command) => {
                            self.on_command(command);
                            for _ in 0..1024 {
                                match commands.try_recv() {
                                    Ok(command) => self.on_command(command),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => return Ok(()),
                    },
                }
            }
        }
        .await;
        if let Err(error) = result {
            tracing::error!(%error, "coordinator stopped on a fatal error; pending requests fail");
        }
        // Wait for an fsync in flight, so a restart does not race it; then fail what is left.
        if persisting.is_some() {
            let _ = done_rx.recv().await;
        }
        drop(persist_tx);
        self.fail_all();
    }

    fn send(&mut self, messages: Vec<(NodeId, Envelope)>) {
        for (to, envelope) in messages {
            let group = envelope.group();
            if let Err(error) = self.transport.send(to, envelope) {
                tracing::debug!(%to, %error, "send failed; raft will retry");
                self.core.report_unreachable(to, group);
            }
        }
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message { from, envelope } => self.core.step(from, envelope),
            Inbound::Unreachable { to, group } => self.core.report_unreachable(to, group),
            Inbound::SnapshotStatus {
                to,
                group,
                delivered,
            } => self.core.report_snapshot(to, group, delivered),
        }
    }

    fn token(&mut self) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        self.deadlines
            .push_back((Instant::now() + self.request_timeout, token));
        token
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Propose { group, data, reply } => {
                let token = self.token();
                match self.core.propose(group, data, token) {
                    Ok(()) => {
                        self.proposals.insert(token, (group, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.with_leader_hint(e)));
                    }
                }
            }
            Command::Read { group, reply } => {
                let token = self.token();
                match self.core.read_index(group, token) {
                    Ok(()) => {
                        self.reads.insert(token, (group, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Export {
                group,
                vshard,
                reply,
            } => {
                let token = self.token();
                match self.core.read_index(group, token) {
                    Ok(()) => {
                        self.exports.insert(token, (group, vshard, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::ConfChange {
                group,
                change,
                reply,
            } => {
                let token = self.token();
                match self.core.propose_conf_change(group, &change, token) {
                    Ok(()) => {
                        self.conf_changes.insert(token, (group, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::TransferLeader { group, to, reply } => {
                let _ = reply.send(self.core.transfer_leader(group, to));
            }
            Command::Status { reply } => {
                let groups = self
                    .core
                    .groups()
                    .filter_map(|g| self.core.status(g))
                    .collect();
                let _ = reply.send(NodeStatus {
                    node: self.core.id(),
                    groups,
                    coordinator: self.core.stats().clone(),
                    storage: self.store.stats(),
                    transport: self.transport.stats(),
                    proposals_acknowledged: self.acknowledged,
                    routing_version: self.state_machine.table().version(),
                });
            }
        }
    }

    fn with_leader_hint(&self, error: ProposeError) -> ProposeError {
        match error {
            ProposeError::NotLeader {
                group,
                leader: None,
            } => {
                let hint = self.routing.read().ok().and_then(|r| r.leader_hint(group));
                ProposeError::NotLeader {
                    group,
                    leader: hint.filter(|l| *l != self.core.id()),
                }
            }
            other => other,
        }
    }

    fn apply(&mut self, applies: Vec<Apply>) -> Result<(), CoordinatorError> {
        for apply in applies {
            match apply {
                Apply::Restore { group, data, .. } => {
                    self.state_machine.restore(group, &data).map_err(|e| {
                        CoordinatorError::StateMachine {
                            group,
                            message: e.to_string(),
                        }
                    })?;
                }
                Apply::Command {
                    group,
                    index,
                    data,
                    proposal,
                    ..
                } => {
                    let response = self.state_machine.apply(group, index, &data).map_err(|e| {
                        CoordinatorError::StateMachine {
                            group,
                            message: e.to_string(),
                        }
                    })?;
                    if let Some((_, reply)) = proposal.and_then(|t| self.proposals.remove(&t)) {
                        let result = match AppliedReply::decode(&response) {
                            AppliedReply::Applied(bytes) => {
                                self.acknowledged += 1;
                                Ok(bytes)
                            }
                            AppliedReply::StaleRouting(vshard) => Err(ProposeError::StaleRouting {
                                vshard,
                                group,
                                table_version: self.state_machine.table().version(),
                            }),
                            AppliedReply::Refused(reason) => {
                                Err(ProposeError::Refused { group, reason })
                            }
                        };
                        let _ = reply.send(result);
                    }
                }
                Apply::ConfChanged {
                    conf_state,
                    proposal,
                    ..
                } => {
                    if let Some((_, reply)) = proposal.and_then(|t| self.conf_changes.remove(&t)) {
                        let _ = reply.send(Ok(conf_state));
                    }
                }
            }
        }
        Ok(())
    }

    fn handle_events(&mut self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::LeaderChanged {
                    group,
                    leader,
                    term,
                } => {
                    tracing::debug!(%group, ?leader, term, "leader changed");
                    if let Ok(mut routing) = self.routing.write() {
                        let _ = routing.set_leader_hint(group, leader);
                    }
                }
                Event::ReadReady { token, index, .. } => {
                    if let Some((_, reply)) = self.reads.remove(&token) {
                        let _ = reply.send(Ok(index));
                    } else if let Some((group, vshard, reply)) = self.exports.remove(&token) {
                        let exported =
                            self.state_machine
                                .export_vshard(group, vshard)
                                .map_err(|e| ProposeError::Refused {
                                    group,
                                    reason: e.to_string(),
                                });
                        let _ = reply.send(exported);
                    }
                }
                Event::ProposalDropped { token, .. } => {
                    self.fail(token, |group| ProposeError::ProposalDropped { group });
                }
                Event::ProposalOutcomeUnknown { token, .. } => {
                    self.fail(token, |group| ProposeError::OutcomeUnknown { group });
                }
            }
        }
    }

    /// Answers whichever request (proposal, read or conf change) holds `token` with the error
    /// `error` makes for its group.
    fn fail(&mut self, token: Token, error: impl Fn(GroupId) -> ProposeError) {
        if let Some((group, reply)) = self.proposals.remove(&token) {
            let _ = reply.send(Err(error(group)));
        } else if let Some((group, reply)) = self.reads.remove(&token) {
            let _ = reply.send(Err(error(group)));
        } else if let Some((group, reply)) = self.conf_changes.remove(&token) {
            let _ = reply.send(Err(error(group)));
        } else if let Some((group, _, reply)) = self.exports.remove(&token) {
            let _ = reply.send(Err(error(group)));
        }
    }

    fn expire_requests(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, token)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            self.fail(token, |group| ProposeError::Timeout { group });
        }
    }

    fn compact(&mut self) -> Result<(), CoordinatorError> {
        for group in self.core.compaction_due() {
            let data =
                self.state_machine
                    .snapshot(group)
                    .map_err(|e| CoordinatorError::StateMachine {
                        group,
                        message: e.to_string(),
                    })?;
            self.core.compact(group, data)?;
        }
        Ok(())
    }

    fn fail_all(&mut self) {
        for (_, (_, reply)) in self.proposals.drain() {
            let _ = reply.send(Err(ProposeError::ShuttingDown));
        }
        for (_, (_, reply)) in self.reads.drain() {
            let _ = reply.send(Err(ProposeError::ShuttingDown));
        }
        for (_, (_, reply)) in self.conf_changes.drain() {
            let _ = reply.send(Err(ProposeError::ShuttingDown));
        }
        for (_, (_, _, reply)) in self.exports.drain() {
            let _ = reply.send(Err(ProposeError::ShuttingDown));
        }
    }

    /// Acts on a new routing table from the meta group: publishes it, learns addresses, and
    /// creates or removes this node's replicas as it places them.
    ///
    /// Only once the meta group has applied everything this node knows committed: a node
    /// replaying its meta log after a restart must not act on an old table (it would delete a
    /// replica that a later version placed here again).
    fn reconcile(&mut self) -> Result<(), CoordinatorError> {
        if let Some(table) = self.state_machine.take_table_change() {
            self.table_pending = true;
            self.publish(table);
        }
        if !self.table_pending || !self.core.meta_caught_up() {
            return Ok(());
        }
        self.table_pending = false;
        let me = self.core.id();
        let table = self.state_machine.table().clone();
        for (node, address) in table.members() {
            if node == me || address.is_empty() {
                continue;
            }
            match address.parse() {
                Ok(addr) => {
                    self.address_book.insert(node, addr);
                }
                Err(error) => tracing::warn!(%node, address, %error, "unusable member address"),
            }
        }
        for token in self.core.place_replicas(&table)? {
            self.fail(token, |group| ProposeError::OutcomeUnknown { group });
        }
        if let Some(known) = &self.known
            && let Ok(mut set) = known.write()
        {
            *set = self.core.groups().collect();
        }
        Ok(())
    }

    /// Makes `table` the one proposals are routed by, keeping the leader hints this node saw.
    fn publish(&mut self, mut table: RoutingTable) {
        if let Ok(mut routing) = self.routing.write() {
            for (group, placement) in routing.groups() {
                if let Some(leader) = placement.leader_hint {
                    let _ = table.set_leader_hint(group, Some(leader));
                }
            }
            *routing = table.clone();
        }
        self.routing_version.send_replace(table.version());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_has_room_for_a_stream_per_group_and_is_never_narrowed() {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let many = RoutingTable::uniform(1024, 100_000, &nodes, 3).expect("table");
        let raised = transport_for(&TransportConfig::default(), &many);
        assert_eq!(raised.max_concurrent_uni_streams, 100_000 + STREAM_HEADROOM);
        let few = RoutingTable::uniform(1024, 64, &nodes, 3).expect("table");
        let wide = TransportConfig::default().max_concurrent_uni_streams(500_000);
        assert_eq!(
            transport_for(&wide, &few).max_concurrent_uni_streams,
            500_000
        );
    }
}
