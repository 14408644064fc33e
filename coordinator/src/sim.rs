//! A deterministic simulation of a whole cluster: N real [`MultiRaft`] cores on real log
//! stores, connected by the transport's [`SimNetwork`], driven by virtual time from one seed.
//!
//! Like quinn-proto's test `Pair`, the harness owns the network and moves messages itself, so a
//! test can crash, restart, partition and heal nodes between any two steps, and a failing run
//! replays exactly from its seed. The harness persists every cycle before it releases the
//! cycle's messages, as [`crate::Node`] does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use routing::{GroupId, NodeId, RoutingTable};
use storage::{LogStore, Persist, StoreOptions};
use transport::mem::{FaultConfig, SimNetwork};
use transport::{Envelope, Inbound};

use crate::{
    Apply, CoordinatorError, Event, GroupStatus, MultiRaft, ProposeError, RaftConfig, Role,
    StateMachine, Token,
};

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
}

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
        }
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
    /// The token [`SimCluster::propose`] or [`SimCluster::read_index`] returned.
    pub token: Token,
    /// The state machine's response (proposals), the read index as 8 big-endian bytes (reads),
    /// or why it failed.
    pub result: Result<Vec<u8>, ProposeError>,
}

struct SimNode<S> {
    core: MultiRaft,
    state_machine: S,
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
    pending: BTreeMap<Token, (NodeId, GroupId)>,
    completions: Vec<Completion>,
    next_token: Token,
    trace: u64,
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
            RoutingTable::uniform(config.vshards, config.groups, &node_ids, config.replication)
                .map_err(|e| CoordinatorError::StateMachine {
                    group: GroupId(0),
                    message: e.to_string(),
                })?;
        let mut this = Self {
            net: SimNetwork::new(config.seed, config.faults),
            dir: dir.to_path_buf(),
            routing,
            now: 0,
            nodes: node_ids.iter().map(|n| (*n, None)).collect(),
            make_state_machine: Box::new(make_state_machine),
            pending: BTreeMap::new(),
            completions: Vec::new(),
            next_token: 1,
            trace: 0xcbf2_9ce4_8422_2325,
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
        let mut core = MultiRaft::new(node, raft, store)?;
        let groups: Vec<_> = self
            .routing
            .groups()
            .filter(|(_, p)| p.replicas.contains(&node))
            .map(|(g, p)| (g, p.replicas.clone()))
            .collect();
        core.create_groups(groups)?;
        let state_machine = (self.make_state_machine)(node);
        self.nodes.insert(
            node,
            Some(SimNode {
                core,
                state_machine,
            }),
        );
        Ok(())
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
    pub fn state_machine(&self, node: NodeId) -> Option<&S> {
        self.nodes.get(&node)?.as_ref().map(|n| &n.state_machine)
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
        self.pending.retain(|_, (n, _)| *n != node);
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

    fn token(&mut self, node: NodeId, group: GroupId) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(token, (node, group));
        token
    }

    /// Proposes `data` to `group` on `node`; the outcome arrives as a [`Completion`].
    ///
    /// # Errors
    /// What [`MultiRaft::propose`] says at once (not leader, unknown group), or
    /// [`ProposeError::ShuttingDown`] when the node is down.
    pub fn propose(
        &mut self,
        node: NodeId,
        group: GroupId,
        data: Vec<u8>,
    ) -> Result<Token, ProposeError> {
        let token = self.token(node, group);
        let result = match self.nodes.get_mut(&node) {
            Some(Some(n)) => n.core.propose(group, data, token),
            _ => Err(ProposeError::ShuttingDown),
        };
        result.map(|()| token).inspect_err(|_| {
            self.pending.remove(&token);
        })
    }

    /// Starts a linearizable read of `group` on `node`; a [`Completion`] follows once the
    /// node's state machine may serve it.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn read_index(&mut self, node: NodeId, group: GroupId) -> Result<Token, ProposeError> {
        let token = self.token(node, group);
        let result = match self.nodes.get_mut(&node) {
            Some(Some(n)) => n.core.read_index(group, token),
            _ => Err(ProposeError::ShuttingDown),
        };
        result.map(|()| token).inspect_err(|_| {
            self.pending.remove(&token);
        })
    }

    /// Requests still waiting for an outcome.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Takes the outcomes gathered so far.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Advances virtual time by one unit: delivers what is due, ticks on tick boundaries, and
    /// runs every node's cycles until they are idle.
    ///
    /// # Errors
    /// A node's coordinator or state machine failed.
    pub fn step(&mut self) -> Result<(), CoordinatorError> {
        for (to, inbound) in self.net.deliver(self.now) {
            let Some(Some(node)) = self.nodes.get_mut(&to) else {
                continue;
            };
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
        }
        if self.now % self.config.tick_every == 0 {
            for node in self.nodes.values_mut().flatten() {
                node.core.tick();
                // As the Node driver does: snapshot the state machine, then compact the log.
                for group in node.core.compaction_due() {
                    let data = node.state_machine.snapshot(group).map_err(|e| {
                        CoordinatorError::StateMachine {
                            group,
                            message: e.to_string(),
                        }
                    })?;
                    node.core.compact(group, data)?;
                }
            }
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.run_node(id)?;
        }
        self.now += 1;
        Ok(())
    }

    fn run_node(&mut self, id: NodeId) -> Result<(), CoordinatorError> {
        let mut outputs = Vec::new();
        {
            let Some(Some(node)) = self.nodes.get_mut(&id) else {
                return Ok(());
            };
            for _ in 0..16 {
                let Some(output) = node.core.run_cycle()? else {
                    break;
                };
                for apply in &output.applies {
                    let result = match apply {
                        Apply::Restore { group, data, .. } => {
                            node.state_machine.restore(*group, data).map(|()| None)
                        }
                        Apply::Command {
                            group,
                            index,
                            data,
                            proposal,
                            ..
                        } => node
                            .state_machine
                            .apply(*group, *index, data)
                            .map(|r| proposal.map(|t| (t, r))),
                        Apply::ConfChanged { proposal, .. } => {
                            Ok(proposal.map(|t| (t, Vec::new())))
                        }
                    };
                    let group = apply_group(apply);
                    match result {
                        Ok(done) => outputs.push((group, apply_index(apply), done, None)),
                        Err(e) => {
                            return Err(CoordinatorError::StateMachine {
                                group,
                                message: e.to_string(),
                            });
                        }
                    }
                }
                for event in &output.events {
                    match event {
                        Event::ReadReady {
                            group,
                            token,
                            index,
                        } => {
                            outputs.push((
                                *group,
                                *index,
                                Some((*token, index.to_be_bytes().to_vec())),
                                None,
                            ));
                        }
                        Event::ProposalDropped { group, token } => {
                            outputs.push((
                                *group,
                                0,
                                None,
                                Some((*token, ProposeError::ProposalDropped { group: *group })),
                            ));
                        }
                        Event::LeaderChanged { .. } => {}
                    }
                }
                for (to, envelope) in output.messages {
                    self.net.send(self.now, id, to, envelope);
                }
            }
        }
        for (group, index, done, failed) in outputs {
            self.mix(&[3, id.get(), group.get(), index]);
            if let Some((token, response)) = done {
                if self.pending.remove(&token).is_some() {
                    self.completions.push(Completion {
                        node: id,
                        group,
                        token,
                        result: Ok(response),
                    });
                }
            }
            if let Some((token, error)) = failed {
                if self.pending.remove(&token).is_some() {
                    self.completions.push(Completion {
                        node: id,
                        group,
                        token,
                        result: Err(error),
                    });
                }
            }
        }
        Ok(())
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

fn apply_group(apply: &Apply) -> GroupId {
    match apply {
        Apply::Restore { group, .. }
        | Apply::Command { group, .. }
        | Apply::ConfChanged { group, .. } => *group,
    }
}

fn apply_index(apply: &Apply) -> u64 {
    match apply {
        Apply::Restore { index, .. }
        | Apply::Command { index, .. }
        | Apply::ConfChanged { index, .. } => *index,
    }
}
