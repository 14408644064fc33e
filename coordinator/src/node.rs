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
use routing::{GroupId, NodeId, RoutingTable};
use storage::{LogStore, StorageStats, StoreOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use transport::{
    AddressBook, Envelope, Inbound, QuicTransport, Transport, TransportConfig, TransportStats,
};

use crate::config::RaftConfig;
use crate::error::{CoordinatorError, ProposeError};
use crate::multiraft::{Apply, CoordinatorStats, Event, GroupStatus, MultiRaft, Token};
use crate::state_machine::StateMachine;

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
        }
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
        let known: Arc<RwLock<HashSet<GroupId>>> = Arc::new(RwLock::new(
            routing.groups_on_node(config.node_id).into_iter().collect(),
        ));
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
            config.transport.clone(),
            address_book.clone(),
            filter,
        )
        .await?;
        let local_addr = transport.local_addr();
        let transport = Arc::new(transport);
        let closer = transport.clone();
        let mut node = Self::start_with_transport(
            config,
            transport,
            inbound,
            address_book,
            local_addr,
            routing,
            state_machine,
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
        mut state_machine: impl StateMachine,
    ) -> Result<Node, NodeError> {
        let id = config.node_id;
        let my_groups: Vec<(GroupId, Vec<NodeId>)> = routing
            .groups()
            .filter(|(_, placement)| placement.replicas.contains(&id))
            .map(|(group, placement)| (group, placement.replicas.clone()))
            .collect();
        if my_groups.is_empty() {
            return Err(NodeError::NoGroups(id));
        }
        let store = LogStore::open(&config.data_dir, config.store.clone())?;
        let mut core = MultiRaft::new(id, config.raft.clone(), store.clone())?;
        let created = core.create_groups(my_groups)?;
        // A brand-new cluster need not wait out an election timeout per group: the routing
        // table's leader hints are balanced, so each hinted replica campaigns at once.
        for group in created {
            if routing.leader_hint(group) == Some(id) {
                let _ = core.campaign(group);
            }
        }
        // Restores from stored snapshots come out of the first cycle; nothing else may run first.
        let routing = Arc::new(RwLock::new(routing));
        let (commands_tx, commands_rx) = mpsc::channel(4096);
        let (stop_tx, stop_rx) = oneshot::channel();
        let driver = Driver {
            core,
            store,
            transport,
            state_machine: Box::new(move |op: SmOp<'_>| match op {
                SmOp::Apply(group, index, data) => state_machine.apply(group, index, data),
                SmOp::Snapshot(group) => state_machine.snapshot(group),
                SmOp::Restore(group, data) => {
                    state_machine.restore(group, data).map(|()| Vec::new())
                }
            }),
            routing: routing.clone(),
            proposals: HashMap::new(),
            reads: HashMap::new(),
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
        let group = self
            .routing
            .read()
            .map(|r| r.group_for_key(key))
            .map_err(|_| ProposeError::ShuttingDown)?;
        self.propose_to_group(group, command).await
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
        self.call(|reply| Command::Propose {
            group,
            data: command,
            reply,
        })
        .await
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

fn single_change(kind: ConfChangeType, node: NodeId) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node.get();
    let mut change = ConfChangeV2::default();
    change.mut_changes().push(single);
    change
}

enum SmOp<'a> {
    Apply(GroupId, u64, &'a [u8]),
    Snapshot(GroupId),
    Restore(GroupId, &'a [u8]),
}

type SmFn = Box<dyn FnMut(SmOp<'_>) -> Result<Vec<u8>, crate::StateMachineError> + Send>;

struct Driver {
    core: MultiRaft,
    store: LogStore,
    transport: Arc<dyn Transport>,
    state_machine: SmFn,
    routing: Arc<RwLock<RoutingTable>>,
    proposals: HashMap<Token, (GroupId, Reply<Vec<u8>>)>,
    reads: HashMap<Token, (GroupId, Reply<u64>)>,
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
                    (self.state_machine)(SmOp::Restore(group, &data)).map_err(|e| {
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
                    let response =
                        (self.state_machine)(SmOp::Apply(group, index, &data)).map_err(|e| {
                            CoordinatorError::StateMachine {
                                group,
                                message: e.to_string(),
                            }
                        })?;
                    if let Some((_, reply)) = proposal.and_then(|t| self.proposals.remove(&t)) {
                        self.acknowledged += 1;
                        let _ = reply.send(Ok(response));
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
            let data = (self.state_machine)(SmOp::Snapshot(group)).map_err(|e| {
                CoordinatorError::StateMachine {
                    group,
                    message: e.to_string(),
                }
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
    }
}
