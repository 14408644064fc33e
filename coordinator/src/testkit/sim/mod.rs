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
//! The stepping (delivery, ticks, each node's cycle, the panic guard) is in `cycle.rs`; the
//! requests a test makes (proposals, reads, membership changes, their outcomes) in
//! `requests.rs`; the safety checks in `monitor.rs`; fault scheduling in `control.rs`.
//!
//! [`SimConfig::unsynced_log`] injects a known durability bug, so tests can prove that the
//! checks catch it.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use routing::{GroupId, META_GROUP, NodeId, RoutingTable, VShardId};
use storage::{LogStore, StagedBatch, StoreOptions};
use transport::Envelope;
use transport::mem::SimNetwork;

mod byzantine;
mod config;
mod control;
mod cycle;
mod durable;
mod monitor;
mod requests;

pub use config::{Completion, SimConfig, UNSYNCED_WINDOW};

pub use control::SimControl;
use monitor::Monitor;
pub use monitor::Violation;

use crate::apply::Applying;
use crate::node::pending::Pending;
use crate::{CoordinatorError, GroupStatus, MultiRaft, Role, StateMachine, StateMachines, Token};

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

    fn running(&self) -> impl Iterator<Item = &SimNode<S>> {
        self.nodes.values().flatten()
    }

    /// The safety violations seen so far. See the [module docs](self).
    pub fn violations(&self) -> &[Violation] {
        &self.monitor.violations
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

    /// How many forged messages [`SimConfig::byzantine`] has delivered.
    pub fn forged(&self) -> u64 {
        self.forged
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
