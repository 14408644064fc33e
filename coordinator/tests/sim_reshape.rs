//! Reshaping under faults, in the deterministic simulation: while clients put, compare-and-set
//! and read registers, a plan adds a node, moves a vShard that is being written, balances
//! leaders, moves the vShard back and removes a node, with drops, duplicates, delays,
//! partitions and crashes injected during every operation. Checks: the client history is
//! linearizable (so no acknowledged write is lost or applied twice, across vShard moves), no
//! safety violation in the cores, every operation completes (re-run after a stall, as an
//! operator would), and routing converges: every node holds the same table and exactly the
//! replicas it places on it, and every group's configuration is its replica list.
//!
//! `PONTOON_SIM_SEEDS=N` runs N seeds; `PONTOON_SIM_SEED=S` replays one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use pontoon_coordinator::reshape::{ReshapeError, Reshaper};
use pontoon_coordinator::testkit::linearizability::{OpKind, OpResult, Operation, check};
use pontoon_coordinator::testkit::sim::{SimCluster, SimConfig, SimControl};
use pontoon_coordinator::{
    RaftConfig, RequestError, Role, StateMachine, StateMachineError, VShardScope,
};
use routing::{GroupId, META_GROUP, NodeId, VShardId};
use transport::mem::FaultConfig;

/// Registers per group: key -> value.
#[derive(Default)]
struct Registers {
    groups: BTreeMap<GroupId, BTreeMap<u64, u64>>,
}

fn key_bytes(key: u64) -> Vec<u8> {
    format!("key-{key}").into_bytes()
}

fn encode_map<'a>(pairs: impl Iterator<Item = (&'a u64, &'a u64)>) -> Vec<u8> {
    pairs
        .flat_map(|(k, v)| k.to_be_bytes().into_iter().chain(v.to_be_bytes()))
        .collect()
}

fn decode_map(bytes: &[u8]) -> Result<BTreeMap<u64, u64>, StateMachineError> {
    if !bytes.len().is_multiple_of(16) {
        return Err("truncated register map".into());
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let word = |at: usize| u64::from_be_bytes(c[at..at + 8].try_into().unwrap_or([0; 8]));
            (word(0), word(8))
        })
        .collect())
}

/// `[0, key, value]` put; `[1, key, new, has_expected, expected]` compare-and-set.
fn put(key: u64, value: u64) -> Vec<u8> {
    let mut c = vec![0u8];
    c.extend(key.to_be_bytes());
    c.extend(value.to_be_bytes());
    c
}

fn cas(key: u64, expected: Option<u64>, new: u64) -> Vec<u8> {
    let mut c = vec![1u8];
    c.extend(key.to_be_bytes());
    c.extend(new.to_be_bytes());
    c.push(u8::from(expected.is_some()));
    c.extend(expected.unwrap_or(0).to_be_bytes());
    c
}

impl StateMachine for Registers {
    fn apply(&mut self, group: GroupId, _: u64, c: &[u8]) -> Result<Vec<u8>, StateMachineError> {
        let word = |at: usize| -> Result<u64, StateMachineError> {
            Ok(u64::from_be_bytes(
                c.get(at..at + 8).ok_or("short command")?.try_into()?,
            ))
        };
        let map = self.groups.entry(group).or_default();
        match c.first() {
            Some(0) => {
                map.insert(word(1)?, word(9)?);
                Ok(Vec::new())
            }
            Some(1) => {
                let (key, new) = (word(1)?, word(9)?);
                let expected = (c.get(17) == Some(&1)).then(|| word(18)).transpose()?;
                let swapped = map.get(&key).copied() == expected;
                if swapped {
                    map.insert(key, new);
                }
                Ok(vec![u8::from(swapped)])
            }
            _ => Err("unknown command".into()),
        }
    }

    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        Ok(encode_map(self.groups.get(&group).into_iter().flatten()))
    }

    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        self.groups.insert(group, decode_map(snapshot)?);
        Ok(())
    }

    fn export_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
    ) -> Result<Vec<u8>, StateMachineError> {
        let map = self.groups.get(&group).into_iter().flatten();
        Ok(encode_map(
            map.filter(|(k, _)| scope.contains(&key_bytes(**k))),
        ))
    }

    fn import_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
        data: &[u8],
    ) -> Result<(), StateMachineError> {
        let imported = decode_map(data)?;
        let map = self.groups.entry(group).or_default();
        map.retain(|k, _| !scope.contains(&key_bytes(*k)));
        map.extend(imported);
        Ok(())
    }

    fn drop_vshard(&mut self, group: GroupId, scope: VShardScope) -> Result<(), StateMachineError> {
        if let Some(map) = self.groups.get_mut(&group) {
            map.retain(|k, _| !scope.contains(&key_bytes(*k)));
        }
        Ok(())
    }
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

const KEYS: u64 = 10;
const CLIENTS: usize = 5;
const CLIENT_TIMEOUT: u64 = 400;

#[derive(Clone, Copy)]
enum Op {
    AddNode(NodeId),
    MoveVShard(VShardId, GroupId),
    Balance,
    RemoveNode(NodeId),
}

struct Pending {
    key: u64,
    kind: OpKind,
    invoked: u64,
    step: u64,
    node: NodeId,
    group: GroupId,
    token: u64,
}

struct Run {
    cluster: Rc<RefCell<SimCluster<Registers>>>,
    rng: Rng,
    clock: u64,
    next_value: u64,
    clients: Vec<Option<Pending>>,
    history: Vec<Operation>,
    acked_writes: u64,
    stale_refusals: u64,
    faults: u64,
    seed: u64,
}

impl Run {
    fn new(dir: &std::path::Path, seed: u64) -> Self {
        let config = SimConfig::new(3, 3, seed)
            .replication(3)
            .meta(true)
            .raft(RaftConfig::default().compaction(60, 10))
            .faults(FaultConfig {
                drop: 0.02,
                duplicate: 0.01,
                min_delay: 1,
                max_delay: 8,
            });
        let cluster = SimCluster::new(dir, config, |_| Registers::default()).unwrap();
        Self {
            cluster: Rc::new(RefCell::new(cluster)),
            rng: Rng(seed ^ 0x5eed),
            clock: 0,
            next_value: 1,
            clients: (0..CLIENTS).map(|_| None).collect(),
            history: Vec::new(),
            acked_writes: 0,
            stale_refusals: 0,
            faults: 0,
            seed,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn up(&self) -> Vec<NodeId> {
        let c = self.cluster.borrow();
        c.node_ids().into_iter().filter(|n| c.is_up(*n)).collect()
    }

    /// One step: clients issue, the cluster steps, answers are collected.
    fn step(&mut self) {
        for client in 0..CLIENTS {
            if self.clients[client].is_none() && self.rng.chance(0.2) {
                self.issue(client);
            }
        }
        self.cluster.borrow_mut().step().unwrap();
        // At once: a read is served from the state machine as the step left it (a crash
        // injected before the next step must not change what the client saw).
        self.collect();
    }

    fn issue(&mut self, client: usize) {
        let up = self.up();
        if up.is_empty() {
            return;
        }
        // Key 0 lives in the vShard that moves: keep it hot.
        let key = if self.rng.chance(0.4) {
            0
        } else {
            self.rng.below(KEYS)
        };
        let asker = up[self.rng.below(up.len() as u64) as usize];
        let mut c = self.cluster.borrow_mut();
        // Route by some node's table (possibly stale), then ask that group's leader.
        let Some(group) = c.table(asker).map(|t| t.group_for_key(&key_bytes(key))) else {
            return;
        };
        let node = match c.leader(group) {
            Some(l) if self.rng.chance(0.8) => l,
            _ => asker,
        };
        let roll = self.rng.below(10);
        let value = self.next_value;
        self.next_value += 1;
        let (kind, issued) = if roll < 4 {
            (OpKind::Get, c.read_key(node, &key_bytes(key)))
        } else if roll < 8 {
            (
                OpKind::Put(value),
                c.propose_key(node, &key_bytes(key), put(key, value)),
            )
        } else {
            let expected = (value > 1).then(|| self.rng.below(value - 1) + 1);
            (
                OpKind::Cas {
                    expected,
                    new: value,
                },
                c.propose_key(node, &key_bytes(key), cas(key, expected, value)),
            )
        };
        let step = c.now();
        drop(c);
        // Refused at once (not leader, down): never happened.
        let Ok((token, group)) = issued else { return };
        let invoked = self.tick();
        self.clients[client] = Some(Pending {
            key,
            kind,
            invoked,
            step,
            node,
            group,
            token,
        });
    }

    fn collect(&mut self) {
        let done = self.cluster.borrow_mut().take_completions();
        for c in done {
            let Some(slot) = self
                .clients
                .iter_mut()
                .find(|p| p.as_ref().is_some_and(|p| p.token == c.token))
            else {
                continue;
            };
            let Some(p) = slot.take() else { continue };
            let at = self.tick();
            let result = match (&c.result, p.kind) {
                (Ok(_), OpKind::Put(_)) => {
                    self.acked_writes += 1;
                    OpResult::Written
                }
                (Ok(r), OpKind::Cas { .. }) => OpResult::Cas(r.as_slice() == [1]),
                (Ok(_), OpKind::Get) => {
                    let c = self.cluster.borrow();
                    let value = c
                        .state_machine(p.node)
                        .and_then(|sm| sm.groups.get(&p.group)?.get(&p.key).copied());
                    OpResult::Read(value)
                }
                // Refused by a fence or dropped: it did not take effect.
                (Err(RequestError::StaleRouting { .. }), _) => {
                    self.stale_refusals += 1;
                    continue;
                }
                (Err(RequestError::ProposalDropped { .. }), _) => continue,
                (Err(e), _) => panic!("seed {}: unexpected outcome {e}", self.seed),
            };
            self.history
                .push(Operation::returned(p.key, p.kind, p.invoked, at, result));
        }
        // Clients give up on slow operations: unknown outcome.
        let now = self.cluster.borrow().now();
        for slot in &mut self.clients {
            if slot.as_ref().is_some_and(|p| p.step + CLIENT_TIMEOUT < now)
                && let Some(p) = slot.take()
            {
                self.history
                    .push(Operation::indeterminate(p.key, p.kind, p.invoked));
            }
        }
    }

    /// Faults during an operation: a partition or a crash now and then, healed soon after.
    fn chaos(
        &mut self,
        heal_at: &mut Option<u64>,
        down: &mut Option<(NodeId, u64)>,
        forced_at: &mut Option<u64>,
    ) {
        let now = self.cluster.borrow().now();
        if heal_at.is_some_and(|t| t <= now) {
            self.cluster.borrow_mut().net().heal();
            *heal_at = None;
        }
        if let Some((node, at)) = *down
            && at <= now
        {
            self.cluster.borrow_mut().restart(node).unwrap();
            *down = None;
        }
        let forced = forced_at.is_some_and(|t| t <= now);
        if heal_at.is_none() && down.is_none() && (forced || self.rng.chance(0.005)) {
            *forced_at = None;
            self.faults += 1;
            let up = self.up();
            let victim = up[self.rng.below(up.len() as u64) as usize];
            if self.rng.chance(0.5) {
                self.cluster.borrow_mut().net().isolate(victim);
                *heal_at = Some(now + 150 + self.rng.below(300));
            } else {
                self.cluster.borrow_mut().crash(victim);
                *down = Some((victim, now + 100 + self.rng.below(300)));
            }
        }
    }

    /// Runs one operation to completion under faults, re-running it after a stall (faults
    /// healed first), at most three times.
    fn operate(&mut self, name: &str, op: Op) {
        // Let the workload run between operations too.
        for _ in 0..300 {
            self.step();
        }
        for attempt in 0..3 {
            let reshaper = Reshaper::new(SimControl::new(self.cluster.clone(), 300), 300);
            let mut op: Pin<Box<dyn Future<Output = Result<(), ReshapeError>>>> =
                Box::pin(async move {
                    match op {
                        Op::AddNode(n) => reshaper.add_node(n, "").await.map(drop),
                        Op::MoveVShard(v, g) => reshaper.move_vshard(v, g).await,
                        Op::Balance => reshaper.balance_leaders().await.map(drop),
                        Op::RemoveNode(n) => reshaper.remove_node(n).await.map(drop),
                    }
                });
            let mut heal_at = None;
            let mut down = None;
            // Every operation meets at least one fault, early on.
            let now = self.cluster.borrow().now();
            let mut forced_at = Some(now + self.rng.below(80));
            let mut cx = Context::from_waker(Waker::noop());
            let mut steps = 0u64;
            let outcome = loop {
                if let Poll::Ready(r) = Pin::as_mut(&mut op).poll(&mut cx) {
                    break r;
                }
                if attempt == 0 {
                    self.chaos(&mut heal_at, &mut down, &mut forced_at);
                }
                self.step();
                steps += 1;
                assert!(steps < 200_000, "seed {}: {name} never returned", self.seed);
            };
            drop(op);
            self.cluster.borrow_mut().net().heal();
            if let Some((node, _)) = down {
                self.cluster.borrow_mut().restart(node).unwrap();
            }
            match outcome {
                Ok(()) => return,
                Err(e @ (ReshapeError::Stalled { .. } | ReshapeError::RolledBack { .. })) => {
                    eprintln!(
                        "seed {}: {name} attempt {attempt}: {e}; re-running",
                        self.seed
                    );
                    for _ in 0..300 {
                        self.step();
                    }
                }
                Err(e) => panic!("seed {}: {name}: {e}", self.seed),
            }
        }
        panic!(
            "seed {}: {name} did not complete in three attempts",
            self.seed
        );
    }
}

fn simulate(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(dir.path(), seed);
    for _ in 0..300 {
        run.step();
    }
    let hot = VShardId(
        run.cluster
            .borrow()
            .routing()
            .vshard_of_key(&key_bytes(0))
            .get(),
    );
    let home = run.cluster.borrow().routing().group_of_vshard(hot).unwrap();
    let away = GroupId(home.get() % 3 + 1);

    run.cluster.borrow_mut().add_node(NodeId(4)).unwrap();
    run.operate("add node 4", Op::AddNode(NodeId(4)));
    run.operate("move the hot vShard", Op::MoveVShard(hot, away));
    run.operate("balance leaders", Op::Balance);
    run.operate("move the hot vShard back", Op::MoveVShard(hot, home));
    run.operate("remove node 1", Op::RemoveNode(NodeId(1)));
    run.cluster.borrow_mut().crash(NodeId(1));

    // Settle: the workload stops, outstanding operations finish or time out.
    for _ in 0..CLIENT_TIMEOUT + 400 {
        run.cluster.borrow_mut().step().unwrap();
        run.collect();
    }
    run.collect();
    for slot in &mut run.clients {
        if let Some(p) = slot.take() {
            run.history
                .push(Operation::indeterminate(p.key, p.kind, p.invoked));
        }
    }

    // Final reads of every key: whatever was acknowledged must be there.
    for key in 0..KEYS {
        let mut done = false;
        for _ in 0..2000 {
            let up = run.up();
            let (_, leader) = {
                let c = run.cluster.borrow();
                let group = c.table(up[0]).unwrap().group_for_key(&key_bytes(key));
                (group, c.leader(group))
            };
            let Some(leader) = leader else {
                run.cluster.borrow_mut().step().unwrap();
                continue;
            };
            let invoked = run.tick();
            let issued = run.cluster.borrow_mut().read_key(leader, &key_bytes(key));
            let Ok((token, group)) = issued else {
                run.cluster.borrow_mut().step().unwrap();
                continue;
            };
            for _ in 0..400 {
                run.cluster.borrow_mut().step().unwrap();
                let completions = run.cluster.borrow_mut().take_completions();
                if let Some(c) = completions.into_iter().find(|c| c.token == token) {
                    if c.result.is_ok() {
                        let value = run
                            .cluster
                            .borrow()
                            .state_machine(leader)
                            .and_then(|sm| sm.groups.get(&group)?.get(&key).copied());
                        let at = run.tick();
                        run.history.push(Operation::returned(
                            key,
                            OpKind::Get,
                            invoked,
                            at,
                            OpResult::Read(value),
                        ));
                        done = true;
                    }
                    break;
                }
            }
            if done {
                break;
            }
        }
        assert!(done, "seed {seed}: no final read of key {key}");
    }

    let c = run.cluster.borrow();
    assert!(
        c.violations().is_empty(),
        "seed {seed}: {:?}",
        c.violations()
    );
    if let Err(e) = check(&run.history) {
        panic!("seed {seed}: not linearizable: {e}");
    }
    // Routing converged, and every node holds exactly what it places on it.
    let up: Vec<NodeId> = c.node_ids().into_iter().filter(|n| c.is_up(*n)).collect();
    let table = c.table(up[0]).unwrap().clone();
    assert!(!table.is_member(NodeId(1)) && table.is_member(NodeId(4)));
    assert_eq!(table.group_of_vshard(hot).unwrap(), home);
    for node in &up {
        assert_eq!(c.table(*node).unwrap(), &table, "seed {seed}: {node} table");
        let mut held: Vec<GroupId> = c.core(*node).unwrap().groups().collect();
        held.retain(|g| *g != META_GROUP);
        assert_eq!(
            held,
            table.groups_on_node(*node),
            "seed {seed}: {node} replicas"
        );
    }
    for (group, placement) in table.groups() {
        let leader = c.leader(group).expect("a leader per group");
        let status = c.status(leader, group).unwrap();
        assert_eq!(status.role, Role::Leader);
        let mut replicas = placement.replicas.clone();
        replicas.sort();
        assert_eq!(
            status.voters, replicas,
            "seed {seed}: {group} configuration"
        );
        assert!(status.learners.is_empty() && !status.joint);
    }
    let ops = run.history.len();
    println!(
        "seed {seed}: {ops} operations, {} acknowledged writes, {} stale-routing refusals, {} crashes or partitions, routing v{}, t={}",
        run.acked_writes,
        run.stale_refusals,
        run.faults,
        table.version(),
        c.now()
    );
    assert!(
        run.acked_writes > 50,
        "seed {seed}: the workload barely ran"
    );
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("PONTOON_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("PONTOON_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    (1..=n).collect()
}

#[test]
fn reshaping_under_faults_keeps_every_write_and_converges() {
    for seed in seeds() {
        simulate(seed);
    }
}

/// A node waiting to be added hears only the nodes its starting table lists: a stranger's
/// heartbeat at a high term would otherwise make it the joining meta replica's leader (and
/// its snapshot the node's cluster). The honest add still goes through.
#[test]
fn a_joining_node_refuses_a_stranger_and_joins_the_cluster_it_knows() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(dir.path(), 1);
    for _ in 0..300 {
        run.step();
    }
    let term = 1_000;
    {
        let mut c = run.cluster.borrow_mut();
        c.add_node(NodeId(4)).unwrap();
        let mut heartbeat = raft::eraftpb::Message::default();
        heartbeat.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        heartbeat.term = term;
        heartbeat.from = 9;
        for _ in 0..3 {
            c.inject(
                NodeId(9),
                NodeId(4),
                transport::Envelope::Raft {
                    group: META_GROUP,
                    messages: vec![heartbeat.clone()],
                },
            );
            c.run(20).unwrap();
        }
        let meta = c.status(NodeId(4), META_GROUP).unwrap();
        assert!(
            meta.term < term && meta.leader != Some(NodeId(9)),
            "{meta:?}"
        );
        let refused = &c.core(NodeId(4)).unwrap().stats().refused_messages;
        assert!(
            refused.get("not_a_member").copied().unwrap_or(0) > 0,
            "{refused:?}"
        );
    }
    run.operate("add node 4", Op::AddNode(NodeId(4)));
    let c = run.cluster.borrow();
    assert!(c.table(NodeId(4)).unwrap().is_member(NodeId(4)));
}
