//! [`Node`]: the handle a database calls. Every call becomes a [`Command`] for the driver task
//! and waits for its answer; nothing here touches the core.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use routing::{GroupId, META_GROUP, NodeId, RoutingChange, RoutingTable, VShardId};
use storage::LogStore;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;
use transport::{AddressBook, Inbound, NodeTransport, QuicTransport, Transport};

use super::driver::{Driver, Reply, Waiter};
use super::forward::Forwarding;
use super::pending::Request;
use super::placement::bootstrap_groups;
use super::reconcile::{KnownGroups, Placement};
use super::{DrainProgress, KeyRead, NodeConfig, NodeError, NodeEvent, NodeStatus};
use crate::apply::Applying;
use crate::error::{CoordinatorError, RequestError};
use crate::group_state_machine::StateMachines;
use crate::lock;
use crate::multiraft::{GroupStatus, MultiRaft};
use crate::replicated::{Fences, Frame, VShardStep};

/// What stops the coordinator task and waits for it.
type DriverHandle = (oneshot::Sender<()>, tokio::task::JoinHandle<()>);

/// Why a node stopped: see [`Node::stopped`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeStopped {
    /// [`Node::shutdown`] stopped it (or every handle was dropped).
    Shutdown,
    /// The coordinator stopped on its own: a fatal storage error (a failed fsync, a full
    /// disk), a state machine failure, or a panic in a dependency. The endpoint is closed;
    /// the process should exit non-zero with this reason. Requests in flight failed:
    /// proposals raft held as [`RequestError::StoppedInFlight`] (outcome unknown), the rest
    /// as [`RequestError::ShuttingDown`] (did not take effect).
    Fatal {
        /// What stopped it.
        reason: String,
    },
}

/// What the handle asks the driver task.
pub(super) enum Command {
    /// A request answered from a cycle's output.
    Request {
        group: GroupId,
        request: Request,
        waiter: Waiter,
    },
    TransferLeader {
        group: GroupId,
        to: NodeId,
        reply: Reply<()>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    /// Start (or go on) draining; answers what is left.
    Drain {
        reply: oneshot::Sender<DrainProgress>,
    },
}

/// A running node: every raft group the routing table gives it, on one QUIC endpoint and one
/// log store. Cheap to clone; all clones talk to the same node.
#[derive(Clone)]
pub struct Node {
    pub(super) id: NodeId,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) routing: Arc<RwLock<RoutingTable>>,
    /// The applied routing version, for waiting on a newer table.
    routing_version: watch::Receiver<u64>,
    fences: Fences,
    pub(super) request_timeout: Duration,
    local_addr: SocketAddr,
    shutdown: Arc<tokio::sync::Mutex<Option<DriverHandle>>>,
    address_book: AddressBook,
    /// Why the node stopped, once it has (see [`Node::stopped`]).
    stopped: watch::Receiver<Option<NodeStopped>>,
    /// What happens on the node, for [`Node::subscribe`].
    pub(super) events: tokio::sync::broadcast::Sender<NodeEvent>,
    /// The endpoint: the driver sends through it, the handle closes it and sets its trust.
    pub(super) transport: Arc<dyn NodeTransport>,
    /// Proposals on a follower go to the leader (see `forward`).
    pub(super) forwarding: Arc<Forwarding>,
}

/// How a node is wired to its transport.
struct Wiring {
    transport: Arc<dyn NodeTransport>,
    inbound: mpsc::Receiver<Inbound>,
    address_book: AddressBook,
    /// The groups the QUIC endpoint accepts streams for (QUIC only).
    known: Option<KnownGroups>,
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
        state_machines: impl Into<StateMachines>,
    ) -> Result<Node, NodeError> {
        if identity.node_id() != config.node_id {
            return Err(NodeError::IdentityMismatch {
                config: config.node_id,
                certificate: identity.node_id(),
            });
        }
        config.raft.validate().map_err(CoordinatorError::from)?;
        config.transport.validate()?;
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
        let filter: transport::GroupFilter =
            Arc::new(move |group| lock::read(&filter_set).contains(&group));
        let (quic, inbound) = QuicTransport::bind(
            config.listen,
            identity,
            config
                .transport
                .clone()
                .with_room_for_groups(routing.groups().count()),
            address_book.clone(),
            filter,
        )
        .await?;
        let wiring = Wiring {
            transport: Arc::new(quic),
            inbound,
            address_book,
            known: Some(known),
        };
        Self::start_inner(config, store, wiring, routing, state_machines.into())
    }

    /// Starts a node over any [`NodeTransport`] (the in-process
    /// [`LocalNetwork`](transport::mem::LocalNetwork) in tests), with `inbound` the channel
    /// its events arrive on. The node admits peers by its routing table as over QUIC.
    ///
    /// # Errors
    /// [`NodeError`] saying which part could not start.
    pub fn start_with_transport(
        config: NodeConfig,
        transport: Arc<dyn NodeTransport>,
        inbound: mpsc::Receiver<Inbound>,
        address_book: AddressBook,
        routing: RoutingTable,
        state_machines: impl Into<StateMachines>,
    ) -> Result<Node, NodeError> {
        let store = LogStore::open(&config.data_dir, config.store.clone())?;
        let wiring = Wiring {
            transport,
            inbound,
            address_book,
            known: None,
        };
        Self::start_inner(config, store, wiring, routing, state_machines.into())
    }

    fn start_inner(
        config: NodeConfig,
        store: LogStore,
        wiring: Wiring,
        routing: RoutingTable,
        state_machines: StateMachines,
    ) -> Result<Node, NodeError> {
        let id = config.node_id;
        let fresh = store.groups().is_empty();
        if fresh {
            config.check_first_start(&routing)?;
        }
        let mut core = MultiRaft::new(id, config.raft.clone(), store.clone())?;
        core.set_placement(&routing);
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
        if let Some(known) = &wiring.known {
            lock::write(known).extend(core.groups());
        }
        // Restores from stored snapshots come out of the first cycle; nothing else may run first.
        let (version_tx, version_rx) = watch::channel(routing.version());
        core.set_snapshot_check(crate::apply::snapshot_check(state_machines.0.clone()));
        let applying = Applying::new(
            state_machines.0,
            routing.clone(),
            config.apply_workers,
            config.max_apply_backlog,
            true,
        )
        .map_err(NodeError::ApplyWorkers)?;
        let fences = applying.fences();
        let routing = Arc::new(RwLock::new(routing));
        let (commands_tx, commands_rx) = mpsc::channel(4096);
        let (events, _) = tokio::sync::broadcast::channel(config.event_capacity.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let placement = Placement::new(
            routing.clone(),
            version_tx,
            wiring.known,
            wiring.address_book.clone(),
        );
        let sender: Arc<dyn Transport> = wiring.transport.clone();
        let forwarding = Arc::new(Forwarding::new(
            id,
            config.forward_to_leader,
            config.max_forwarded_per_peer,
        ));
        let driver = Driver::new(
            core,
            store,
            sender,
            applying,
            placement,
            config.request_timeout,
            events.clone(),
        )
        .with_forwarding(forwarding.clone());
        let span = tracing::info_span!("node", node = %id);
        let driver = tokio::spawn(
            driver
                .run(commands_rx, wiring.inbound, stop_rx, config.tick_interval)
                .instrument(span),
        );
        // A node whose coordinator stopped must not linger: its endpoint closes (peers and
        // clients see it gone) and whoever awaits `stopped` learns why.
        let (stopped_tx, stopped_rx) = watch::channel(None);
        let endpoint = wiring.transport.clone();
        let stop_events = events.clone();
        let handle = tokio::spawn(async move {
            let stopped = match driver.await {
                Ok(Ok(())) => NodeStopped::Shutdown,
                Ok(Err(error)) => NodeStopped::Fatal {
                    reason: error.to_string(),
                },
                Err(join) => NodeStopped::Fatal {
                    reason: match join.try_into_panic() {
                        Ok(payload) => format!(
                            "the coordinator panicked: {}",
                            payload
                                .downcast_ref::<String>()
                                .map(String::as_str)
                                .or_else(|| payload.downcast_ref::<&str>().copied())
                                .unwrap_or("(no message)")
                        ),
                        Err(_) => "the coordinator task was cancelled".into(),
                    },
                },
            };
            if let NodeStopped::Fatal { reason } = &stopped {
                tracing::error!(node = %id, %reason, "node stopped: closing its endpoint");
                endpoint.shutdown().await;
            }
            let _ = stop_events.send(NodeEvent::Stopped(stopped.clone()));
            let _ = stopped_tx.send(Some(stopped));
        });
        super::reconcile::admit_by_routing(&wiring.transport, &routing, version_rx.clone());
        Ok(Node {
            id,
            commands: commands_tx,
            routing,
            routing_version: version_rx,
            fences,
            request_timeout: config.request_timeout,
            local_addr: wiring.transport.local_addr(),
            shutdown: Arc::new(tokio::sync::Mutex::new(Some((stop_tx, handle)))),
            address_book: wiring.address_book,
            stopped: stopped_rx,
            events,
            transport: wiring.transport,
            forwarding,
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
        self.transport.take_client_connections()
    }

    /// The routing table as this node knows it (leader hints kept current).
    pub fn routing(&self) -> RoutingTable {
        lock::read(&self.routing).clone()
    }

    /// The group that serves `key` by this node's routing table.
    pub fn group_for_key(&self, key: &[u8]) -> GroupId {
        lock::read(&self.routing).group_for_key(key)
    }

    /// Changes where `node` is reached (it moved, or a new node joined).
    pub fn set_peer_address(&self, node: NodeId, addr: SocketAddr) {
        self.address_book.insert(node, addr);
    }

    /// Sends a command and waits for its answer. A command the driver never took did not
    /// take effect; one it took but never answered (the task died) fails with `lost`.
    async fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
        lost: RequestError,
    ) -> Result<T, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| RequestError::ShuttingDown)?;
        rx.await.map_err(|_| lost)?
    }

    /// Replicates `command` in the group that owns `key`, and returns the state machine's
    /// response once the command is committed by a quorum and applied here.
    ///
    /// On a follower the command goes to the leader over the peer connection
    /// ([`NodeConfig::forward_to_leader`], on by default), waiting with backoff for a leader
    /// while none is known; a caller on the leader pays nothing for it.
    ///
    /// # Errors
    /// [`RequestError::NotLeader`] (forwarding off, or no leader known by the deadline: retry
    /// on the leader it names), [`RequestError::GroupNotFound`],
    /// [`RequestError::ProposalDropped`] (did not take effect), [`RequestError::Timeout`]
    /// (outcome unknown), [`RequestError::ShuttingDown`] (the node is stopping; did not take
    /// effect), [`RequestError::StoppedInFlight`] (it stopped with the command in raft; outcome
    /// unknown). [`RequestError::outcome`] says which class an error is in.
    pub async fn propose(&self, key: &[u8], command: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        self.routed(key, |group, vshard| {
            self.propose_user(group, Some(vshard), &command, None)
        })
        .await
    }

    /// Runs `attempt` on the group that serves `key`'s vShard by this node's table. A group
    /// that refuses it as stale routing did not act on it, so it runs again once this node
    /// has a newer table, until the request timeout.
    pub(super) async fn routed<T, F>(
        &self,
        key: &[u8],
        mut attempt: impl FnMut(GroupId, VShardId) -> F,
    ) -> Result<T, RequestError>
    where
        F: Future<Output = Result<T, RequestError>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let (vshard, group, version) = {
                let routing = lock::read(&self.routing);
                let vshard = routing.vshard_of_key(key);
                // A vShard the table does not place goes to no group: the driver answers
                // GroupNotFound.
                let group = routing.group_of_vshard(vshard).unwrap_or(GroupId(0));
                (vshard, group, routing.version())
            };
            let result = attempt(group, vshard).await;
            let Err(RequestError::StaleRouting { .. }) = &result else {
                return result;
            };
            let mut versions = self.routing_version.clone();
            let newer = tokio::time::timeout_at(deadline, versions.wait_for(|v| *v > version));
            if !matches!(newer.await, Ok(Ok(_))) {
                return result;
            }
        }
    }

    pub(super) async fn request<T>(
        &self,
        group: GroupId,
        request: Request,
        waiter: impl FnOnce(Reply<T>) -> Waiter,
    ) -> Result<T, RequestError> {
        // A proposal the driver took may be in raft: without an answer, its outcome is unknown.
        let lost = match request {
            Request::Propose(_) | Request::ConfChange(_) => RequestError::StoppedInFlight { group },
            Request::Read { .. } | Request::Export(_) => RequestError::ShuttingDown,
        };
        self.call(
            |reply| Command::Request {
                group,
                request,
                waiter: waiter(reply),
            },
            lost,
        )
        .await
    }

    /// [`Node::propose`] to a group named directly.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn propose_to_group(
        &self,
        group: GroupId,
        command: Vec<u8>,
    ) -> Result<Vec<u8>, RequestError> {
        self.propose_user(group, None, &command, None).await
    }

    pub(super) async fn propose_frame(
        &self,
        group: GroupId,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, RequestError> {
        self.request(group, Request::Propose(data), Waiter::Response)
            .await
    }

    /// Applies `change` to the cluster's routing table through the meta group, if the table is
    /// still at `expected_version`. Must run on the meta group's leader. Resolves with the new
    /// table once this node has applied it.
    ///
    /// # Errors
    /// [`RequestError::NotLeader`] (retry on the meta group's leader),
    /// [`RequestError::Refused`] (another version, or an invalid change), and those of
    /// [`Node::propose`].
    pub async fn propose_routing(
        &self,
        change: &RoutingChange,
        expected_version: u64,
    ) -> Result<RoutingTable, RequestError> {
        let frame = Frame::Routing(change.encode(expected_version)).encode();
        let bytes = self.propose_frame(META_GROUP, frame).await?;
        RoutingTable::decode(&bytes).map_err(|e| RequestError::Refused {
            group: META_GROUP,
            reason: e.to_string(),
        })
    }

    /// Fences `vshard` in `group` (the first step of moving it away): every command for it
    /// ordered after this one is refused with [`RequestError::StaleRouting`]. Its data stays.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn release_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<(), RequestError> {
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
    ) -> Result<(), RequestError> {
        self.propose_frame(group, step.frame(vshard).encode())
            .await
            .map(drop)
    }

    /// Makes `group` serve `vshard`, importing `data` (from [`Node::export_vshard`] on its old
    /// group) through [`GroupStateMachine::import_vshard`](crate::GroupStateMachine::import_vshard); `None` takes back a vShard this group
    /// released (a move rolled back). Idempotent: importing twice replaces the data.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn acquire_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
        data: Option<Vec<u8>>,
    ) -> Result<(), RequestError> {
        self.vshard_step(group, vshard, VShardStep::Acquire(data))
            .await
    }

    /// Drops the data of a vShard `group` released (when it is still fenced there).
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn purge_vshard(&self, group: GroupId, vshard: VShardId) -> Result<(), RequestError> {
        self.vshard_step(group, vshard, VShardStep::Purge).await
    }

    /// `vshard`'s data in `group`, read from this node's replica after a linearizable read
    /// barrier, through [`GroupStateMachine::export_vshard`](crate::GroupStateMachine::export_vshard).
    ///
    /// # Errors
    /// As [`Node::read_index`], or [`RequestError::Refused`] when the state machine cannot
    /// export.
    pub async fn export_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<Vec<u8>, RequestError> {
        self.request(group, Request::Export(vshard), Waiter::Response)
            .await
    }

    /// One group's status on this node (`None`: it holds no replica of it).
    ///
    /// # Errors
    /// [`RequestError::ShuttingDown`].
    pub async fn group_status(&self, group: GroupId) -> Result<Option<GroupStatus>, RequestError> {
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
    /// As [`Node::read_index`], and [`RequestError::StaleRouting`] when no newer table came
    /// before the deadline.
    pub async fn read_key(&self, key: &[u8]) -> Result<KeyRead, RequestError> {
        self.routed(key, |group, vshard| async move {
            let read = || Request::Read {
                vshard: Some(vshard),
            };
            let index = self
                .with_leader(|| self.request(group, read(), Waiter::Index))
                .await?;
            Ok(KeyRead {
                group,
                vshard,
                index,
            })
        })
        .await
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
    pub async fn read_index(&self, group: GroupId) -> Result<u64, RequestError> {
        let read = || Request::Read { vshard: None };
        self.with_leader(|| self.request(group, read(), Waiter::Index))
            .await
    }

    /// Asks `group`'s leader (this node) to hand leadership to `to`, and resolves once `to`
    /// leads (as this node sees it), or with an error once it clearly will not.
    ///
    /// # Errors
    /// [`RequestError::NotLeader`], [`RequestError::GroupNotFound`],
    /// [`RequestError::TransferFailed`] (raft gave up: `to` was not caught up within an
    /// election timeout, is not a voter, or another node won; or the request timeout passed),
    /// [`RequestError::ShuttingDown`]. None of them changed anything.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), RequestError> {
        self.call(
            |reply| Command::TransferLeader { group, to, reply },
            RequestError::ShuttingDown,
        )
        .await
    }

    /// Every group's status and the node's counters.
    ///
    /// # Errors
    /// [`RequestError::ShuttingDown`].
    pub async fn status(&self) -> Result<NodeStatus, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Status { reply })
            .await
            .map_err(|_| RequestError::ShuttingDown)?;
        rx.await.map_err(|_| RequestError::ShuttingDown)
    }

    /// Swaps the node's certificate, key and trusted CAs without a restart (certificate
    /// rotation; a CA rollover with both CAs trusted for a while). New handshakes use them at
    /// once; live connections carry on.
    ///
    /// # Errors
    /// [`NodeError::Transport`] when `identity` is another node's, the configs cannot be
    /// built, or the node's transport has no TLS
    /// ([`TransportError::NoTls`](transport::TransportError::NoTls)).
    pub fn reload_tls(
        &self,
        identity: &certs::NodeIdentity,
        cas: &[certs::CertificateDer<'static>],
    ) -> Result<(), NodeError> {
        Ok(self.transport.reload_tls(identity, cas)?)
    }

    /// Waits until the node has stopped, and says why: [`NodeStopped::Fatal`] when its
    /// coordinator stopped on its own (the endpoint is then already closed). An embedder awaits
    /// this beside its own work and exits non-zero on a fatal stop.
    pub async fn stopped(&self) -> NodeStopped {
        let mut stopped = self.stopped.clone();
        match stopped.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(NodeStopped::Shutdown),
            // The supervisor is gone without a word: only a runtime shutting down does that.
            Err(_) => NodeStopped::Fatal {
                reason: "the node's runtime stopped".into(),
            },
        }
    }

    /// Why the node stopped, if it has (see [`Node::stopped`]).
    pub fn stop_reason(&self) -> Option<NodeStopped> {
        self.stopped.borrow().clone()
    }

    /// Stops the node: pending requests fail (proposals raft holds with
    /// [`RequestError::StoppedInFlight`], outcome unknown; everything else with
    /// [`RequestError::ShuttingDown`], did not take effect), the endpoint closes, and the
    /// call returns once the coordinator task has ended. Durable state stays on disk.
    pub async fn shutdown(&self) {
        let taken = self.shutdown.lock().await.take();
        if let Some((stop, handle)) = taken {
            let _ = stop.send(());
            let _ = handle.await;
        }
        self.forwarding.close();
        self.transport.shutdown().await;
    }
}
