//! A deterministic simulation of a whole cluster: N real [`MultiRaft`] cores on real log
//! stores, connected by the transport's [`SimNetwork`], driven by virtual time from one seed.
//!
//! Like quinn-proto's test `Pair`, the harness owns the network and moves messages itself, so a
//! test can crash, restart, partition and heal nodes between any two steps, and a failing run
//! replays exactly from its seed. The harness persists every cycle before it releases the
//! cycle's messages, as [`crate::Node`] does.
//!
//! While it runs, the harness watches the safety properties it can see from the cores and
//! records each breach as a [`Violation`]: two leaders in one term of a group, a committed
//! entry that changed (applied with another term or other bytes on another node, or on the
//! same node after a restart), a membership change that led two nodes (or one node before and
//! after a restart) to different configurations, and a node that panicked (it is then crashed, fail-stop, so the
//! run goes on and the seed can be reported). Client-visible properties (linearizability, no
//! acknowledged write lost) belong to the workload: see [`crate::testkit::linearizability`].
//!
//! [`SimConfig::unsynced_log`] injects a known durability bug, so tests can prove that the
//! checks catch it.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::ConfChangeV2;
use routing::{GroupId, META_GROUP, NodeId, RoutingTable, VShardId};
use storage::{LogStore, StagedBatch, StoreOptions};
use transport::mem::SimNetwork;
use transport::{Envelope, Inbound};

mod byzantine;
mod config;
mod control;
mod durable;
mod monitor;

pub use config::{Completion, SimConfig, UNSYNCED_WINDOW};

pub use control::SimControl;
pub use monitor::Violation;
use monitor::{Monitor, Seen, panic_message};

use crate::apply::Applying;
use crate::node::pending::{Done, Pending, Request};
use crate::replicated::Frame;
use crate::{
    CoordinatorError, CycleOutput, Event, GroupStatus, MultiRaft, RequestError, Role, StateMachine,
    StateMachines, Token,
};

struct SimNode<S> {
    core: MultiRaft,
    /// The node's replicas, applied inline (deterministically) by the same code as a node's
    /// apply workers.
    applying: Applying,
    /// The database state machine they apply to.
    state_machine: Arc<Mutex<S>>,
    /// The meta group applied a table this node has not acted on yet.
    table_pending: bool,
    store: LogStore,
    /// Staged batches not yet written, with their time: commit-index-only batches until the
    /// next synced one (the store writes them without a sync), and every batch under
    /// [`SimConfig::unsynced_log`]. A crash loses them.
    unsynced: VecDeque<(u64, StagedBatch)>,
    /// Requests waiting for an outcome (gone with the node when it crashes).
    pending: Pending<()>,
    /// `log_behind_leader` alarms already reported as violations.
    log_lost_seen: u64,
}

/// A simulated cluster. See the [module docs](self).
pub struct SimCluster<S: StateMachine> {
    config: SimConfig,
    dir: PathBuf,
    routing: RoutingTable,
    net: SimNetwork,
    now: u64,
    nodes: BTreeMap<NodeId, Option<SimNode<S>>>,
    make_state_machine: Box<dyn Fn(NodeId) -> S>,
    /// Under [`SimConfig::durable_state_machines`]: each node's state machine, kept across its
    /// crashes (it loses what it had not made durable).
    shells: BTreeMap<NodeId, Arc<Mutex<durable::Shell<S>>>>,
    completions: Vec<Completion>,
    /// Requests made by a reshaping plan: their outcomes wait for [`SimCluster::take_completion`].
    reserved: std::collections::BTreeSet<Token>,
    reserved_done: BTreeMap<Token, Completion>,
    next_token: Token,
    trace: u64,
    monitor: Monitor,
    /// Draws the byzantine senders' traffic (see [`SimConfig::byzantine`]).
    forger: rand::rngs::StdRng,
    /// Forged messages delivered so far.
    forged: u64,
}

impl<S: StateMachine> SimCluster<S> {
    /// Builds the cluster with its stores under `dir`, every node up.
    ///
    /// # Errors
    /// A store that cannot be opened or a bad config.
    pub fn new(
        dir: &Path,
        config: SimConfig,
        make_state_machine: impl Fn(NodeId) -> S + 'static,
    ) -> Result<Self, CoordinatorError> {
        let node_ids: Vec<NodeId> = (1..=config.nodes).map(NodeId).collect();
        let routing =
            RoutingTable::uniform(config.vshards, config.groups, &node_ids, config.replication)?;
        let mut this = Self {
            net: SimNetwork::new(config.seed, config.faults),
            dir: dir.to_path_buf(),
            routing,
            now: 0,
            nodes: node_ids.iter().map(|n| (*n, None)).collect(),
            make_state_machine: Box::new(make_state_machine),
            completions: Vec::new(),
            reserved: std::collections::BTreeSet::new(),
            reserved_done: BTreeMap::new(),
            next_token: 1,
            trace: 0xcbf2_9ce4_8422_2325,
            monitor: Monitor::default(),
            forger: rand::SeedableRng::seed_from_u64(config.seed ^ 0xB72A_17E5),
            forged: 0,
            shells: BTreeMap::new(),
            config,
        };
        for node in node_ids {
            this.start(node)?;
        }
        Ok(this)
    }

    fn start(&mut self, node: NodeId) -> Result<(), CoordinatorError> {
        let options = StoreOptions::default().persist(self.config.persist);
        let store = LogStore::open(self.dir.join(format!("node-{node}")), options)?;
        let raft = self
            .config
            .raft
            .clone()
            .seed(self.config.seed.wrapping_mul(31).wrapping_add(node.get()));
        let mut core = MultiRaft::new(node, raft, store.clone())?;
        // As the Node driver does: the routing table says who is in the cluster.
        core.set_placement(&self.routing);
        if !self.config.meta {
            let groups: Vec<_> = self
                .routing
                .groups()
                .filter(|(_, p)| p.replicas.contains(&node))
                .map(|(g, p)| (g, p.replicas.clone()))
                .collect();
            core.create_groups(groups)?;
        } else if store.groups().is_empty() && self.routing.is_member(node) {
            core.create_groups_with_learners(crate::node::placement::bootstrap_groups(
                &self.routing,
                node,
            ))?;
        } else if store.groups().is_empty() {
            core.create_joining_group(META_GROUP)?;
        }
        let (state_machine, state_machines) = if self.config.durable_state_machines > 0 {
            let fresh = (self.make_state_machine)(node);
            let every = self.config.durable_state_machines;
            let shell = match self.shells.get(&node) {
                // Restarted after a crash: it keeps only what it had made durable.
                Some(shell) => {
                    crate::lock::mutex(shell).crash(fresh)?;
                    shell.clone()
                }
                None => {
                    let shell = Arc::new(Mutex::new(durable::Shell::new(fresh, every)));
                    self.shells.insert(node, shell.clone());
                    shell
                }
            };
            let live = crate::lock::mutex(&shell).live.clone();
            (
                live,
                StateMachines::per_group(durable::Factory(shell, node)),
            )
        } else {
            let state_machine = Arc::new(Mutex::new((self.make_state_machine)(node)));
            let shared = StateMachines::shared_arc(state_machine.clone());
            (state_machine, shared)
        };
        core.set_snapshot_check(crate::apply::snapshot_check(state_machines.0.clone()));
        let applying = Applying::new(
            state_machines.0,
            self.routing.clone(),
            0,
            usize::MAX,
            !self.config.without_session_dedup,
        )
        .map_err(|_| CoordinatorError::PersisterStopped)?;
        self.nodes.insert(
            node,
            Some(SimNode {
                core,
                applying,
                state_machine,
                table_pending: false,
                store,
                unsynced: VecDeque::new(),
                log_lost_seen: 0,
                pending: Pending::default(),
            }),
        );
        Ok(())
    }

    /// Starts a brand-new node `node` that joins the cluster (it holds nothing until a
    /// reshaping plan adds it). Needs [`SimConfig::meta`].
    ///
    /// # Errors
    /// Its store cannot be opened.
    pub fn add_node(&mut self, node: NodeId) -> Result<(), CoordinatorError> {
        self.mix(&[4, self.now, node.get()]);
        self.start(node)
    }

    /// The routing table `node` has applied (the meta group's), when it runs.
    pub fn table(&self, node: NodeId) -> Option<&RoutingTable> {
        Some(self.nodes.get(&node)?.as_ref()?.applying.table())
    }

    /// Whether `node`'s replica of `group` serves `vshard` (has not released it).
    pub fn serves(&self, node: NodeId, group: GroupId, vshard: VShardId) -> bool {
        self.nodes
            .get(&node)
            .and_then(Option::as_ref)
            .is_some_and(|n| n.applying.fences().serves(group, vshard))
    }

    /// Current virtual time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The routing table the cluster was built from.
    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    /// The network, to partition, heal or change faults.
    pub fn net(&mut self) -> &mut SimNetwork {
        &mut self.net
    }

    /// A hash of everything that happened so far (deliveries, applies, events): equal for two
    /// runs of the same seed, and different as soon as they diverge.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    fn mix(&mut self, values: &[u64]) {
        for v in values {
            for byte in v.to_le_bytes() {
                self.trace ^= u64::from(byte);
                self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    /// Whether `node` is running.
    pub fn is_up(&self, node: NodeId) -> bool {
        matches!(self.nodes.get(&node), Some(Some(_)))
    }

    /// The ids of every node, running or not.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The core of a running node.
    pub fn core(&self, node: NodeId) -> Option<&MultiRaft> {
        self.nodes.get(&node)?.as_ref().map(|n| &n.core)
    }

    /// The core of a running node, mutably (leader transfers, conf changes).
    pub fn core_mut(&mut self, node: NodeId) -> Option<&mut MultiRaft> {
        self.nodes.get_mut(&node)?.as_mut().map(|n| &mut n.core)
    }

    /// The state machine of a running node.
    pub fn state_machine(&self, node: NodeId) -> Option<MutexGuard<'_, S>> {
        self.nodes
            .get(&node)?
            .as_ref()
            .map(|n| crate::lock::mutex(&n.state_machine))
    }

    /// `group`'s status on `node`, when it runs and holds the group.
    pub fn status(&self, node: NodeId, group: GroupId) -> Option<GroupStatus> {
        self.core(node)?.status(group)
    }

    /// The running leader of `group` with the highest term, if any.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.nodes
            .keys()
            .filter_map(|n| self.status(*n, group).map(|s| (*n, s)))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(n, _)| n)
    }

    /// Whether every group has a running leader.
    pub fn all_groups_have_leaders(&self) -> bool {
        self.routing.groups().all(|(g, _)| self.leader(g).is_some())
    }

    /// Stops `node` at once: its memory is gone, its store keeps what was persisted.
    pub fn crash(&mut self, node: NodeId) {
        self.nodes.insert(node, None);
        self.mix(&[1, self.now, node.get()]);
    }

    /// Starts a crashed node again from its store, with a fresh state machine.
    ///
    /// # Errors
    /// Its store cannot be reopened or recovered.
    pub fn restart(&mut self, node: NodeId) -> Result<(), CoordinatorError> {
        self.mix(&[2, self.now, node.get()]);
        self.start(node)
    }

    /// Hands `request` to `node`'s core under a fresh token.
    fn submit(
        &mut self,
        node: NodeId,
        group: GroupId,
        request: Request,
    ) -> Result<Token, RequestError> {
        let token = self.next_token;
        self.next_token += 1;
        let Some(Some(n)) = self.nodes.get_mut(&node) else {
            return Err(RequestError::ShuttingDown);
        };
        n.pending
            .submit(&mut n.core, token, group, request, ())
            .map(|()| token)
            .map_err(|((), error)| error)
    }

    /// Proposes `data` to `group` on `node`; the outcome arrives as a [`Completion`].
    ///
    /// # Errors
    /// What [`MultiRaft::propose`] says at once (not leader, unknown group), or
    /// [`RequestError::ShuttingDown`] when the node is down.
    pub fn propose(
        &mut self,
        node: NodeId,
        group: GroupId,
        data: Vec<u8>,
    ) -> Result<Token, RequestError> {
        self.propose_frame(node, group, Frame::encode_user(None, data, None))
    }

    /// [`SimCluster::propose`] for command `seq` of client session `client`, which has every
    /// answer up to `acked`: however often it is proposed, it applies once (see
    /// [`crate::ClientSession`]). The log carries the virtual time as the proposer's clock.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn propose_in_session(
        &mut self,
        node: NodeId,
        group: GroupId,
        data: Vec<u8>,
        (client, seq, acked): (u64, u64, u64),
    ) -> Result<Token, RequestError> {
        let tag = crate::replicated::SessionTag {
            client,
            seq,
            acked,
            time_ms: self.now,
        };
        self.propose_frame(node, group, Frame::encode_user(None, data, Some(tag)))
    }

    /// Proposes `data` for `key` on `node`, routed by the table `node` has applied: the
    /// command carries the key's vShard, so a group the vShard left refuses it with
    /// [`RequestError::StaleRouting`]. Returns the token and the group it went to.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn propose_key(
        &mut self,
        node: NodeId,
        key: &[u8],
        data: Vec<u8>,
    ) -> Result<(Token, GroupId), RequestError> {
        let (group, vshard) = self.route(node, key)?;
        self.propose_frame(node, group, Frame::encode_user(Some(vshard), data, None))
            .map(|t| (t, group))
    }

    /// A linearizable read of `key` on `node`, routed by its table: completes once the node
    /// may serve it from its state machine, or with [`RequestError::StaleRouting`] when its
    /// replica no longer serves the key's vShard at that point.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn read_key(&mut self, node: NodeId, key: &[u8]) -> Result<(Token, GroupId), RequestError> {
        let (group, vshard) = self.route(node, key)?;
        let read = Request::Read {
            vshard: Some(vshard),
        };
        self.submit(node, group, read).map(|t| (t, group))
    }

    fn route(&self, node: NodeId, key: &[u8]) -> Result<(GroupId, VShardId), RequestError> {
        let table = self.table(node).ok_or(RequestError::ShuttingDown)?;
        let vshard = table.vshard_of_key(key);
        let group = table
            .group_of_vshard(vshard)
            .map_err(|_| RequestError::ShuttingDown)?;
        Ok((group, vshard))
    }

    pub(crate) fn propose_frame(
        &mut self,
        node: NodeId,
        group: GroupId,
        framed: Vec<u8>,
    ) -> Result<Token, RequestError> {
        self.submit(node, group, Request::Propose(framed))
    }

    /// Keeps `token`'s outcome out of [`SimCluster::take_completions`]: it is for
    /// [`SimCluster::take_completion`] (a reshaping plan's own request).
    pub(crate) fn reserve(&mut self, token: Token) {
        self.reserved.insert(token);
    }

    /// The outcome of a reserved request, once there is one.
    pub(crate) fn take_completion(&mut self, token: Token) -> Option<Completion> {
        let done = self.reserved_done.remove(&token);
        if done.is_some() {
            self.reserved.remove(&token);
        }
        done
    }

    /// Whether `token` still waits for an outcome.
    pub(crate) fn is_pending(&self, token: Token) -> bool {
        self.reserved_done.contains_key(&token) || self.running().any(|n| n.pending.contains(token))
    }

    fn running(&self) -> impl Iterator<Item = &SimNode<S>> {
        self.nodes.values().flatten()
    }

    /// Gives up on a reserved request.
    pub(crate) fn forget(&mut self, token: Token) {
        self.reserved.remove(&token);
        self.reserved_done.remove(&token);
        for node in self.nodes.values_mut().flatten() {
            node.pending.forget(token);
        }
    }

    /// Exports `vshard` from `node`'s replica of `group` after a read barrier; the data
    /// arrives as a [`Completion`].
    pub(crate) fn export_vshard(
        &mut self,
        node: NodeId,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<Token, RequestError> {
        self.submit(node, group, Request::Export(vshard))
    }

    /// Starts a linearizable read of `group` on `node`; a [`Completion`] follows once the
    /// node's state machine may serve it.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn read_index(&mut self, node: NodeId, group: GroupId) -> Result<Token, RequestError> {
        self.submit(node, group, Request::Read { vshard: None })
    }

    /// Requests still waiting for an outcome.
    pub fn pending_requests(&self) -> usize {
        self.running().map(|n| n.pending.len()).sum()
    }

    /// Takes the outcomes gathered so far.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Between cycles: a node whose meta group applied a new table joins and deletes
    /// replicas as it says (as [`crate::Node`] does).
    fn place_replicas(&mut self, id: NodeId) -> Result<(), CoordinatorError> {
        if !self.config.meta {
            return Ok(());
        }
        let Some(Some(node)) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        if node.applying.take_table_change().is_some() {
            node.table_pending = true;
        }
        if !node.table_pending || !node.core.meta_caught_up() {
            return Ok(());
        }
        // Group creation writes to the store directly: staged batches go first.
        self.flush_unsynced(Some(id))?;
        let Some(Some(node)) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        node.table_pending = false;
        let table = node.applying.table().clone();
        for token in node.core.place_replicas(&table)? {
            // Their outcome is unknown here: the client keeps waiting and times out.
            node.pending.forget(token);
        }
        self.mix(&[5, self.now, id.get(), table.version()]);
        Ok(())
    }

    /// Advances virtual time by one unit: delivers what is due, ticks on tick boundaries, and
    /// runs every node's cycles until they are idle. A node that panics is recorded as a
    /// [`Violation::NodePanicked`] and crashed.
    ///
    /// # Errors
    /// A node's coordinator or state machine failed.
    pub fn step(&mut self) -> Result<(), CoordinatorError> {
        self.forge()?;
        for (to, inbound) in self.net.deliver(self.now) {
            self.guarded(to, |node, _| {
                match inbound {
                    Inbound::Message { from, envelope } => node.core.step(from, envelope),
                    Inbound::Unreachable { to: peer, group } => {
                        node.core.report_unreachable(peer, group)
                    }
                    Inbound::SnapshotStatus {
                        to: peer,
                        group,
                        delivered,
                    } => node.core.report_snapshot(peer, group, delivered),
                }
                Ok(())
            })?;
        }
        self.check_log_lost();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        if self.now.is_multiple_of(self.config.tick_every) {
            for id in &ids {
                self.guarded(*id, |node, _| {
                    node.core.tick();
                    // As the Node driver does: snapshot the state machine, then compact the log.
                    node.applying.compact(&mut node.core)?;
                    let mut completed = Vec::new();
                    Self::drain_applied(node, &mut completed)?;
                    // Nothing waits on a snapshot; a request it completed times out instead.
                    drop(completed);
                    Ok(())
                })?;
            }
        }
        for id in ids {
            self.run_node(id)?;
            self.place_replicas(id)?;
        }
        self.flush_unsynced(None)?;
        self.observe_leaders();
        self.now += 1;
        Ok(())
    }

    /// Runs `f` on a running node; a panic inside it crashes the node and is recorded.
    fn guarded<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut SimNode<S>, u64) -> Result<R, CoordinatorError>,
    ) -> Result<Option<R>, CoordinatorError> {
        let now = self.now;
        let Some(Some(node)) = self.nodes.get_mut(&id) else {
            return Ok(None);
        };
        match catch_unwind(AssertUnwindSafe(|| f(node, now))) {
            Ok(result) => result.map(Some),
            Err(payload) => {
                self.monitor.violations.push(Violation::NodePanicked {
                    node: id,
                    message: panic_message(payload.as_ref()),
                    at: now,
                });
                self.crash(id);
                Ok(None)
            }
        }
    }

    /// Writes the unsynced batches that are old enough (or all of `only`'s), as the OS would
    /// flush an unsynced log eventually.
    fn flush_unsynced(&mut self, only: Option<NodeId>) -> Result<(), CoordinatorError> {
        let now = self.now;
        for (id, node) in &mut self.nodes {
            let Some(node) = node else { continue };
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            while let Some((staged_at, _)) = node.unsynced.front() {
                if only.is_none() && staged_at + UNSYNCED_WINDOW > now {
                    break;
                }
                if let Some((_, staged)) = node.unsynced.pop_front() {
                    node.store.commit(staged)?;
                }
            }
        }
        Ok(())
    }

    /// Every node's view of every group's leader, into the monitor.
    fn observe_leaders(&mut self) {
        let mut seen = Vec::new();
        for (id, node) in &self.nodes {
            let Some(node) = node else { continue };
            for group in node.core.groups() {
                if let Some(status) = node.core.status(group)
                    && status.role == Role::Leader
                {
                    seen.push((group, status.term, *id));
                }
            }
        }
        for (group, term, id) in seen {
            self.monitor.leader(group, term, id, id, self.now);
        }
    }

    /// The safety violations seen so far. See the [module docs](self).
    pub fn violations(&self) -> &[Violation] {
        &self.monitor.violations
    }

    /// One cycle of a node: persisted (or, under [`SimConfig::unsynced_log`], only staged)
    /// before its messages are released.
    fn node_cycle(
        node: &mut SimNode<S>,
        unsynced: bool,
        now: u64,
    ) -> Result<Option<CycleOutput>, CoordinatorError> {
        let Some(cycle) = node.core.poll_cycle()? else {
            return Ok(None);
        };
        let staged = cycle.batch;
        if unsynced || staged.info().commit_index_only {
            // A batch that only raises commit indexes is written without a sync, as the
            // store does: a crash before the next synced batch loses it. Under
            // `unsynced_log`, the bug: every batch is only in memory.
            node.unsynced.push_back((now, staged));
        } else {
            // A synced batch makes everything written before it durable too.
            while let Some((_, held)) = node.unsynced.pop_front() {
                node.store.commit(held)?;
            }
            node.store.commit(staged)?;
        }
        // Raft hears the batch is durable (under `unsynced_log`, while it is only in memory).
        let mut messages = cycle.messages;
        messages.extend(node.core.on_persisted(cycle.id)?);
        Ok(Some(CycleOutput {
            messages,
            applies: cycle.applies,
            events: cycle.events,
        }))
    }

    /// Hands what the inline workers produced to the same code a node's driver runs.
    fn drain_applied(
        node: &mut SimNode<S>,
        completed: &mut Vec<crate::node::pending::Completed<()>>,
    ) -> Result<(), CoordinatorError> {
        while let Some(output) = node.applying.try_output() {
            node.applying
                .on_output(&mut node.pending, &mut node.core, output, completed)?;
        }
        Ok(())
    }

    fn run_node(&mut self, id: NodeId) -> Result<(), CoordinatorError> {
        let unsynced = self.config.unsynced_log;
        let produced = self.guarded(id, |node, now| {
            let mut seen = Seen::default();
            for _ in 0..16 {
                let Some(output) = Self::node_cycle(node, unsynced, now)? else {
                    break;
                };
                seen.observe(&output.applies);
                // Applied and answered exactly as the Node driver does.
                node.applying
                    .dispatch(&mut node.pending, output.applies, &mut seen.completed)?;
                for event in &output.events {
                    match *event {
                        Event::LeaderChanged {
                            group,
                            leader: Some(leader),
                            term,
                        } => seen.leaders.push((group, term, leader)),
                        // The client keeps waiting and times out: an indeterminate operation.
                        Event::ProposalOutcomeUnknown { .. } => {}
                        _ => seen
                            .completed
                            .extend(node.applying.on_event(&mut node.pending, event)),
                    }
                }
                Self::drain_applied(node, &mut seen.completed)?;
                seen.messages.extend(output.messages);
            }
            Ok(seen)
        })?;
        let Some(seen) = produced else {
            return Ok(());
        };
        for (group, index, conf) in seen.configurations {
            self.monitor
                .configuration(group, index, (id, conf), self.now);
        }
        for (to, envelope) in seen.messages {
            self.net.send(self.now, id, to, envelope);
        }
        for (key, term, hash) in seen.applied {
            self.mix(&[3, id.get(), key.0.get(), key.1]);
            self.monitor.applied(key, (id, term, hash), self.now);
        }
        for (group, term, leader) in seen.leaders {
            self.monitor.leader(group, term, leader, id, self.now);
        }
        for done in seen.completed {
            self.mix(&[6, id.get(), done.group.get(), done.token]);
            let completion = Completion {
                node: id,
                group: done.group,
                token: done.token,
                result: done.result.map(|done| match done {
                    Done::Response(bytes) => bytes,
                    Done::Read(index) => index.to_be_bytes().to_vec(),
                    Done::Configured(_) => Vec::new(),
                }),
            };
            if self.reserved.contains(&done.token) {
                self.reserved_done.insert(done.token, completion);
            } else {
                self.completions.push(completion);
            }
        }
        Ok(())
    }

    /// Proposes a membership change of `group` on `node`; the outcome arrives as a
    /// [`Completion`] (empty response) once the change is applied there.
    ///
    /// # Errors
    /// As [`MultiRaft::propose_conf_change`], or [`RequestError::ShuttingDown`] when the node
    /// is down.
    pub fn propose_conf_change(
        &mut self,
        node: NodeId,
        group: GroupId,
        change: &ConfChangeV2,
    ) -> Result<Token, RequestError> {
        self.submit(node, group, Request::ConfChange(change.clone()))
    }

    /// Creates `group` on `node` as a joining replica (no configuration yet), before a
    /// membership change adds it. Returns false when the node is down.
    ///
    /// # Errors
    /// As [`MultiRaft::create_joining_group`].
    pub fn join_group(&mut self, node: NodeId, group: GroupId) -> Result<bool, CoordinatorError> {
        // The group is written straight to the store: batches staged before it go first.
        self.flush_unsynced(Some(node))?;
        match self.nodes.get_mut(&node) {
            Some(Some(n)) => n.core.create_joining_group(group).map(|()| true),
            _ => Ok(false),
        }
    }

    /// Every alarm of a lost log is a violation: raft-rs would have panicked there.
    fn check_log_lost(&mut self) {
        for (id, node) in &mut self.nodes {
            let Some(node) = node else { continue };
            let alarms = node.core.stats().log_behind_leader;
            if alarms > node.log_lost_seen {
                node.log_lost_seen = alarms;
                self.monitor.violations.push(Violation::LogLost {
                    node: *id,
                    at: self.now,
                });
            }
        }
    }

    /// How many forged messages [`SimConfig::byzantine`] has delivered.
    pub fn forged(&self) -> u64 {
        self.forged
    }

    /// Delivers one forged message, as [`SimConfig::byzantine`] says.
    fn forge(&mut self) -> Result<(), CoordinatorError> {
        use rand::Rng as _;
        if self.config.byzantine <= 0.0 || !self.forger.random_bool(self.config.byzantine.min(1.0))
        {
            return Ok(());
        }
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        let groups: Vec<GroupId> = self.routing.groups().map(|(g, _)| g).collect();
        let Some(forged) = byzantine::forge(&mut self.forger, &nodes, &groups) else {
            return Ok(());
        };
        self.forged += 1;
        self.guarded(forged.to, |node, _| {
            node.core.step(forged.from, forged.envelope);
            Ok(())
        })
        .map(|_| ())
    }

    /// Steps until `done` holds or `max_steps` have passed; returns whether it held.
    ///
    /// # Errors
    /// As [`SimCluster::step`].
    pub fn run_until(
        &mut self,
        max_steps: u64,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<bool, CoordinatorError> {
        for _ in 0..max_steps {
            if done(self) {
                return Ok(true);
            }
            self.step()?;
        }
        Ok(done(self))
    }

    /// Steps `steps` times.
    ///
    /// # Errors
    /// As [`SimCluster::step`].
    pub fn run(&mut self, steps: u64) -> Result<(), CoordinatorError> {
        for _ in 0..steps {
            self.step()?;
        }
        Ok(())
    }

    /// Sends a raw envelope between two nodes (tests of hostile or odd input).
    pub fn inject(&mut self, from: NodeId, to: NodeId, envelope: Envelope) {
        self.net.send(self.now, from, to, envelope);
    }
}
