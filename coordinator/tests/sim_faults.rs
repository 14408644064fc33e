//! Deterministic simulation under faults: 3- and 5-node clusters of the real coordinator on
//! real log stores, a client key-value workload (puts, compare-and-sets, reads through
//! read_index), and a fault schedule drawn from one seed: partitions (two-way, one-way,
//! isolation), drops, duplicates, delays (hence reordering), crashes and restarts from disk,
//! leader transfers and membership changes (single and joint). After healing and settling,
//! every run is checked: one leader per group and term, committed entries never change, no
//! acknowledged write lost, no dropped proposal applied, replicas agree, and the client
//! history is linearizable per key.
//!
//! A failure prints its seed and the command that replays it. `PONTOON_SIM_SEEDS=N` runs seeds
//! 1..=N instead of the CI set (`PONTOON_SIM_SEED_BASE` shifts the range).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use pontoon_coordinator::testkit::linearizability::{self, OpKind, OpResult, Operation};
use pontoon_coordinator::testkit::sim::{SimCluster, SimConfig};
use pontoon_coordinator::{RaftConfig, RequestError, StateMachine, StateMachineError};
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use routing::{GroupId, NodeId};
use transport::mem::FaultConfig;

// ---------------------------------------------------------------------------------------------
// The replicated state machine: one register per key, with the ids of the operations applied.

#[derive(Default, Clone, Debug, PartialEq, Eq)]
struct GroupState {
    values: BTreeMap<u64, u64>,
    /// Every operation applied, so a lost or phantom write can be named.
    ops: BTreeSet<u64>,
    /// Operations applied more than once (a client's retry applied again).
    doubled: BTreeSet<u64>,
}

#[derive(Default)]
struct RegisterKv {
    groups: BTreeMap<GroupId, GroupState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Put {
        op: u64,
        key: u64,
        value: u64,
    },
    Cas {
        op: u64,
        key: u64,
        expected: Option<u64>,
        new: u64,
    },
}

impl Command {
    fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(34);
        match self {
            Command::Put { op, key, value } => {
                out.extend_from_slice(&op.to_be_bytes());
                out.push(0);
                out.extend_from_slice(&key.to_be_bytes());
                out.extend_from_slice(&value.to_be_bytes());
            }
            Command::Cas {
                op,
                key,
                expected,
                new,
            } => {
                out.extend_from_slice(&op.to_be_bytes());
                out.push(1);
                out.extend_from_slice(&key.to_be_bytes());
                out.push(u8::from(expected.is_some()));
                out.extend_from_slice(&expected.unwrap_or(0).to_be_bytes());
                out.extend_from_slice(&new.to_be_bytes());
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateMachineError> {
        let u64_at = |at: usize| -> Result<u64, StateMachineError> {
            let b: [u8; 8] = bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("truncated command ({} bytes)", bytes.len()))?;
            Ok(u64::from_be_bytes(b))
        };
        let op = u64_at(0)?;
        let key = u64_at(9)?;
        match (bytes.get(8), bytes.len()) {
            (Some(0), 25) => Ok(Command::Put {
                op,
                key,
                value: u64_at(17)?,
            }),
            (Some(1), 34) => Ok(Command::Cas {
                op,
                key,
                expected: (bytes[17] == 1).then_some(u64_at(18)?),
                new: u64_at(26)?,
            }),
            _ => Err(format!("malformed command ({} bytes)", bytes.len()).into()),
        }
    }
}

fn push_u64s(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = u64>) {
    out.extend_from_slice(&(values.len() as u64).to_be_bytes());
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

impl StateMachine for RegisterKv {
    fn apply(
        &mut self,
        group: GroupId,
        _index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError> {
        let state = self.groups.entry(group).or_default();
        match Command::decode(command)? {
            Command::Put { op, key, value } => {
                if !state.ops.insert(op) {
                    state.doubled.insert(op);
                }
                state.values.insert(key, value);
                Ok(Vec::new())
            }
            Command::Cas {
                op,
                key,
                expected,
                new,
            } => {
                if !state.ops.insert(op) {
                    state.doubled.insert(op);
                }
                let swapped = state.values.get(&key).copied() == expected;
                if swapped {
                    state.values.insert(key, new);
                }
                Ok(vec![u8::from(swapped)])
            }
        }
    }

    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        let state = self.groups.get(&group).cloned().unwrap_or_default();
        let mut out = Vec::new();
        push_u64s(
            &mut out,
            state
                .values
                .iter()
                .flat_map(|(k, v)| [*k, *v])
                .collect::<Vec<_>>()
                .into_iter(),
        );
        push_u64s(&mut out, state.ops.iter().copied());
        push_u64s(&mut out, state.doubled.iter().copied());
        Ok(out)
    }

    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let mut words = snapshot
            .chunks(8)
            .map(|c| <[u8; 8]>::try_from(c).map(u64::from_be_bytes));
        let mut next =
            || -> Result<u64, StateMachineError> { Ok(words.next().ok_or("truncated snapshot")??) };
        let mut state = GroupState::default();
        if !snapshot.is_empty() {
            let pairs = next()? / 2;
            for _ in 0..pairs {
                let (k, v) = (next()?, next()?);
                state.values.insert(k, v);
            }
            for _ in 0..next()? {
                state.ops.insert(next()?);
            }
            for _ in 0..next()? {
                state.doubled.insert(next()?);
            }
        }
        self.groups.insert(group, state);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// One seed's scenario.

/// splitmix64, so a seed means the same run whatever the dependencies do.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }
}

/// Everything a seed decides about a run.
#[derive(Clone, Debug)]
struct Scenario {
    seed: u64,
    nodes: u64,
    groups: u64,
    keys: u64,
    clients: usize,
    compaction: bool,
    chaos_steps: u64,
    /// Mean steps between fault events of each kind.
    partition_every: u64,
    crash_every: u64,
    transfer_every: u64,
    membership_every: u64,
    max_drop: f64,
    max_duplicate: f64,
    max_delay: u64,
    unsynced_log: bool,
    /// Chance per time unit of one forged raft message (`SimConfig::byzantine`).
    byzantine: f64,
    /// `RaftConfig::max_campaigns`: 1 in half the seeds, so elections wait for room under
    /// every fault.
    max_campaigns: usize,
    /// `SimConfig::durable_state_machines`: 0 for in-memory state machines.
    durable_every: u64,
    /// Clients write in sessions and retry every write until it is answered (on any node,
    /// after any error or a timeout), instead of giving up with an unknown outcome.
    session_retries: bool,
    /// `SimConfig::without_session_dedup`: the injected double-apply bug.
    without_dedup: bool,
}

impl Scenario {
    fn from_seed(seed: u64) -> Self {
        let mut rng = Rng(seed ^ 0x5EED_5EED_5EED_5EED);
        let groups = rng.range(4, 8);
        Self {
            seed,
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            groups,
            keys: 2 * groups,
            clients: 6,
            compaction: rng.chance(0.5),
            chaos_steps: 2_500,
            partition_every: rng.range(150, 400),
            crash_every: rng.range(200, 500),
            transfer_every: rng.range(150, 400),
            membership_every: rng.range(200, 500),
            max_drop: rng.range(0, 8) as f64 / 100.0,
            max_duplicate: rng.range(0, 5) as f64 / 100.0,
            max_delay: rng.range(1, 8),
            unsynced_log: false,
            byzantine: 0.0,
            // Drawn last: every other field keeps the value it had for this seed.
            max_campaigns: if rng.chance(0.5) { 1 } else { 1024 },
            durable_every: 0,
            session_retries: false,
            without_dedup: false,
        }
    }

    /// The same run with clients that retry every write in a session until it is answered.
    fn with_session_retries(mut self) -> Self {
        self.session_retries = true;
        self
    }

    /// The session-retry run with the groups' de-duplication turned off (a deliberate bug).
    fn without_dedup(mut self) -> Self {
        self.without_dedup = true;
        self
    }

    /// The same run with state machines that keep their own durable state, made durable only
    /// every few batches, and crashes often enough that restarts land between an apply and
    /// the durable write of its position.
    fn with_durable_state_machines(mut self) -> Self {
        self.durable_every = 1 + self.seed % 4;
        self.crash_every = 150;
        self
    }

    /// The same run with the unsynced-log bug, crashing often so the bug has a chance to bite.
    fn with_unsynced_log(mut self) -> Self {
        self.unsynced_log = true;
        self.crash_every = 120;
        self
    }

    /// The same run with byzantine senders forging raft traffic at a high rate.
    fn with_byzantine_senders(mut self) -> Self {
        self.byzantine = 0.3;
        self
    }

    fn replay_command(&self) -> String {
        let bug = if self.unsynced_log {
            "PONTOON_SIM_UNSYNCED_LOG=1 "
        } else if self.byzantine > 0.0 {
            "PONTOON_SIM_BYZANTINE=1 "
        } else if self.durable_every > 0 {
            "PONTOON_SIM_DURABLE_SM=1 "
        } else if self.session_retries {
            "PONTOON_SIM_SESSIONS=1 "
        } else {
            ""
        };
        format!(
            "{bug}PONTOON_SIM_SEED={} cargo test -p pontoon-coordinator --test sim_faults -- replay --nocapture",
            self.seed
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The client side: operations, their history, and the run.

/// Steps a client waits for an answer before it gives up (the outcome is then unknown).
const CLIENT_TIMEOUT: u64 = 250;
/// Steps allowed to heal and settle.
const SETTLE_STEPS: u64 = 8_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Returned {
        at: u64,
        result: OpResult,
    },
    /// Definitely did not take effect (refused, or `ProposalDropped`).
    Dropped,
}

#[derive(Clone, Debug)]
struct Recorded {
    op: u64,
    key: u64,
    group: GroupId,
    node: NodeId,
    kind: OpKind,
    invoked: u64,
    invoked_step: u64,
    status: Status,
    /// Under session retries: the write's command and its session (client, seq), to send
    /// again, and when it was last sent.
    retry: Option<Retry>,
}

#[derive(Clone, Debug)]
struct Retry {
    command: Vec<u8>,
    client: u64,
    seq: u64,
    last_sent: u64,
    /// Sent again after an error: due at once rather than after a timeout.
    now: bool,
}

#[derive(Debug, Default)]
struct Counts {
    partitions: u64,
    crashes: u64,
    restarts: u64,
    transfers: u64,
    membership_changes: u64,
    membership_applied: u64,
    fault_changes: u64,
    node_panics: u64,
    /// Session writes sent again.
    retries: u64,
    /// Forged raft messages delivered (byzantine senders), and those refused by the nodes up
    /// at the end (a crash forgets its counters).
    forged: u64,
    refused: u64,
}

/// What a run produced.
#[derive(Debug)]
struct Report {
    scenario: Scenario,
    hash: u64,
    failures: Vec<String>,
    ops: usize,
    returned: usize,
    indeterminate: usize,
    reads: usize,
    counts: Counts,
    steps: u64,
}

impl Report {
    fn summary(&self) -> String {
        let s = &self.scenario;
        format!(
            "seed {} ({} nodes, {} groups, compaction {}, unsynced_log {}, max_campaigns {}, durable_every {}): {} steps, {} ops checked \
             ({} answered, {} indeterminate, {} reads), faults {:?}, trace {:016x}",
            s.seed,
            s.nodes,
            s.groups,
            s.compaction,
            s.unsynced_log,
            s.max_campaigns,
            s.durable_every,
            self.steps,
            self.ops,
            self.returned,
            self.indeterminate,
            self.reads,
            self.counts,
            self.hash
        )
    }

    fn failure_text(&self) -> String {
        let mut text = format!(
            "simulation seed {} FAILED:\n{}\n",
            self.scenario.seed,
            self.summary()
        );
        for f in &self.failures {
            text.push_str(&format!("  - {f}\n"));
        }
        text.push_str(&format!("replay: {}\n", self.scenario.replay_command()));
        text
    }
}

struct Run {
    scenario: Scenario,
    cluster: SimCluster<RegisterKv>,
    rng: Rng,
    history: Vec<Recorded>,
    /// Token -> history index.
    outstanding: BTreeMap<u64, usize>,
    /// Per client: the history index it waits on.
    busy: Vec<Option<usize>>,
    clock: u64,
    next_op: u64,
    /// Last value any client saw per key, to aim compare-and-sets at.
    seen: BTreeMap<u64, Option<u64>>,
    heal_at: Option<u64>,
    restart_at: BTreeMap<NodeId, u64>,
    /// Membership changes in flight.
    conf_tokens: BTreeSet<u64>,
    /// Per client: the last session sequence number it used.
    session_seq: Vec<u64>,
    counts: Counts,
    failures: Vec<String>,
}

fn key_bytes(key: u64) -> Vec<u8> {
    format!("key-{key}").into_bytes()
}

impl Run {
    fn new(dir: &std::path::Path, scenario: Scenario) -> Result<Self, String> {
        let raft = if scenario.compaction {
            RaftConfig::default().compaction(40, 10)
        } else {
            RaftConfig::default().compaction(0, 0)
        }
        .max_campaigns(scenario.max_campaigns);
        let mut rng = Rng(scenario.seed);
        let faults = FaultConfig {
            drop: scenario.max_drop,
            duplicate: scenario.max_duplicate,
            min_delay: 1,
            max_delay: scenario.max_delay,
        };
        let config = SimConfig::new(scenario.nodes, scenario.groups, rng.next())
            .replication(3)
            .raft(raft)
            .faults(faults)
            .unsynced_log(scenario.unsynced_log)
            .byzantine(scenario.byzantine)
            .durable_state_machines(scenario.durable_every)
            .without_session_dedup(scenario.without_dedup);
        let cluster = SimCluster::new(dir, config, |_| RegisterKv::default())
            .map_err(|e| format!("the cluster did not start: {e}"))?;
        let scenario_clients = scenario.clients;
        Ok(Self {
            busy: vec![None; scenario.clients],
            scenario,
            cluster,
            rng,
            history: Vec::new(),
            outstanding: BTreeMap::new(),
            clock: 0,
            next_op: 1,
            seen: BTreeMap::new(),
            heal_at: None,
            restart_at: BTreeMap::new(),
            conf_tokens: BTreeSet::new(),
            session_seq: vec![0; scenario_clients],
            counts: Counts::default(),
            failures: Vec::new(),
        })
    }

    fn tick_clock(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn group_of(&self, key: u64) -> GroupId {
        self.cluster.routing().group_for_key(&key_bytes(key))
    }

    fn up_nodes(&self) -> Vec<NodeId> {
        self.cluster
            .node_ids()
            .into_iter()
            .filter(|n| self.cluster.is_up(*n))
            .collect()
    }

    fn groups(&self) -> Vec<GroupId> {
        self.cluster.routing().groups().map(|(g, _)| g).collect()
    }

    /// One virtual time unit: the cluster steps, then answers are recorded.
    fn step(&mut self) -> Result<(), String> {
        self.cluster
            .step()
            .map_err(|e| format!("coordinator error at t={}: {e}", self.cluster.now()))?;
        for c in self.cluster.take_completions() {
            if self.conf_tokens.remove(&c.token) {
                self.counts.membership_applied += u64::from(c.result.is_ok());
                continue;
            }
            let Some(i) = self.outstanding.remove(&c.token) else {
                continue;
            };
            // A session's write answered already (by an earlier attempt): a later attempt
            // must give the same answer, never apply it again.
            if let Status::Returned { result, .. } = self.history[i].status {
                if let (Ok(response), OpKind::Cas { .. }) = (&c.result, self.history[i].kind)
                    && OpResult::Cas(response.as_slice() == [1]) != result
                {
                    self.failures.push(format!(
                        "op {}: a retry was answered {response:?}, the first attempt {result:?}",
                        self.history[i].op
                    ));
                }
                continue;
            }
            if self.scenario.session_retries
                && c.result.is_err()
                && let Some(retry) = self.history[i].retry.as_mut()
            {
                // Whatever the error (dropped, outcome unknown, busy): send it again.
                retry.now = true;
                continue;
            }
            let at = self.tick_clock();
            let rec = &mut self.history[i];
            rec.status = match (&c.result, rec.kind) {
                (Ok(_), OpKind::Put(_)) => Status::Returned {
                    at,
                    result: OpResult::Written,
                },
                (Ok(response), OpKind::Cas { .. }) => Status::Returned {
                    at,
                    result: OpResult::Cas(response.as_slice() == [1]),
                },
                (Ok(_), OpKind::Get) => {
                    // The read index is applied on this node: serve from its state machine.
                    let value = self
                        .cluster
                        .state_machine(c.node)
                        .and_then(|sm| sm.groups.get(&rec.group)?.values.get(&rec.key).copied());
                    Status::Returned {
                        at,
                        result: OpResult::Read(value),
                    }
                }
                (Err(RequestError::ProposalDropped { .. }), _) => Status::Dropped,
                (Err(e), _) => {
                    return Err(format!("unexpected completion {e} for op {}", rec.op));
                }
            };
            if let Status::Returned { result, .. } = rec.status {
                let value = match (rec.kind, result) {
                    (_, OpResult::Read(v)) => Some(v),
                    (OpKind::Put(v), _) | (OpKind::Cas { new: v, .. }, OpResult::Cas(true)) => {
                        Some(Some(v))
                    }
                    _ => None,
                };
                if let Some(v) = value {
                    self.seen.insert(rec.key, v);
                }
            }
            for slot in &mut self.busy {
                if *slot == Some(i) {
                    *slot = None;
                }
            }
        }
        // Clients give up on operations that take too long; the outcome stays unknown. A
        // session's write is sent again instead, until it is answered.
        let now = self.cluster.now();
        for client in 0..self.busy.len() {
            let Some(i) = self.busy[client] else { continue };
            if self.history[i].status != Status::Pending {
                continue;
            }
            match &self.history[i].retry {
                Some(retry) if retry.now || retry.last_sent + CLIENT_TIMEOUT < now => {
                    self.resend(i);
                }
                Some(_) => {}
                None if self.history[i].invoked_step + CLIENT_TIMEOUT < now => {
                    self.busy[client] = None;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Sends a session's write again, to the group's leader if there is one.
    fn resend(&mut self, i: usize) {
        let group = self.history[i].group;
        let Some(retry) = self.history[i].retry.clone() else {
            return;
        };
        let holders: Vec<NodeId> = self
            .up_nodes()
            .into_iter()
            .filter(|n| self.cluster.core(*n).is_some_and(|c| c.has_group(group)))
            .collect();
        let node = match self.cluster.leader(group) {
            Some(l) => Some(l),
            None => self.rng.pick(&holders),
        };
        let now = self.cluster.now();
        let sent = node.and_then(|node| {
            self.cluster
                .propose_in_session(
                    node,
                    group,
                    retry.command.clone(),
                    (retry.client, retry.seq, retry.seq - 1),
                )
                .ok()
        });
        if let Some(token) = sent {
            self.outstanding.insert(token, i);
        }
        if let Some(r) = self.history[i].retry.as_mut() {
            // Not sent (no node could take it): try again a little later.
            r.last_sent = if sent.is_some() {
                now
            } else {
                now.saturating_sub(CLIENT_TIMEOUT - 10)
            };
            r.now = false;
        }
        self.counts.retries += 1;
    }

    fn issue(&mut self, client: usize) {
        let key = self.rng.below(self.scenario.keys);
        let group = self.group_of(key);
        let holders: Vec<NodeId> = self
            .up_nodes()
            .into_iter()
            .filter(|n| self.cluster.core(*n).is_some_and(|c| c.has_group(group)))
            .collect();
        let node = match self.cluster.leader(group) {
            Some(l) if self.rng.chance(0.75) => l,
            _ => match self.rng.pick(&holders) {
                Some(n) => n,
                None => return,
            },
        };
        let op = self.next_op;
        self.next_op += 1;
        let roll = self.rng.below(100);
        let mut retry = None;
        let (kind, result) = if roll < 40 {
            (OpKind::Get, self.cluster.read_index(node, group))
        } else if roll < 75 {
            let command = Command::Put { op, key, value: op };
            (
                OpKind::Put(op),
                self.propose(client, node, group, command.encode(), &mut retry),
            )
        } else {
            let expected = match self.rng.below(10) {
                0 => None,
                1 => Some(self.rng.range(1, op)),
                _ => self.seen.get(&key).copied().flatten(),
            };
            let command = Command::Cas {
                op,
                key,
                expected,
                new: op,
            };
            (
                OpKind::Cas { expected, new: op },
                self.propose(client, node, group, command.encode(), &mut retry),
            )
        };
        // Refused at once (not the leader, node down): it never happened (a session's write
        // is sent again later instead).
        let token = match result {
            Ok(token) => Some(token),
            Err(_) if retry.is_some() => None,
            Err(_) => return,
        };
        let invoked = self.tick_clock();
        self.history.push(Recorded {
            op,
            key,
            group,
            node,
            kind,
            invoked,
            invoked_step: self.cluster.now(),
            status: Status::Pending,
            retry,
        });
        let i = self.history.len() - 1;
        if let Some(token) = token {
            self.outstanding.insert(token, i);
        } else if let Some(r) = self.history[i].retry.as_mut() {
            r.now = true;
        }
        self.busy[client] = Some(i);
    }

    /// Proposes a write: in a session when clients retry (filling `retry` with what it takes
    /// to send it again), else plainly.
    fn propose(
        &mut self,
        client: usize,
        node: NodeId,
        group: GroupId,
        command: Vec<u8>,
        retry: &mut Option<Retry>,
    ) -> Result<u64, RequestError> {
        if !self.scenario.session_retries {
            return self.cluster.propose(node, group, command);
        }
        self.session_seq[client] += 1;
        let seq = self.session_seq[client];
        let session = client as u64 + 1;
        *retry = Some(Retry {
            command: command.clone(),
            client: session,
            seq,
            last_sent: self.cluster.now(),
            now: false,
        });
        self.cluster
            .propose_in_session(node, group, command, (session, seq, seq - 1))
    }

    fn workload(&mut self) {
        for client in 0..self.scenario.clients {
            if self.busy[client].is_none() && self.rng.chance(0.15) {
                self.issue(client);
            }
        }
    }

    fn faults(&mut self) -> Result<(), String> {
        let now = self.cluster.now();
        if self.heal_at.is_some_and(|t| t <= now) {
            self.cluster.net().heal();
            self.heal_at = None;
        }
        let due: Vec<NodeId> = self
            .restart_at
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            self.restart_at.remove(&node);
            self.restart(node)?;
        }
        let nodes = self.cluster.node_ids();
        let s = self.scenario.clone();
        if self.heal_at.is_none() && self.rng.below(s.partition_every) == 0 {
            let a = self.rng.pick(&nodes).unwrap_or(NodeId(1));
            let others: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != a).collect();
            let b = self.rng.pick(&others).unwrap_or(NodeId(2));
            match self.rng.below(3) {
                0 => self.cluster.net().partition(a, b),
                1 => self.cluster.net().partition_one_way(a, b),
                _ => self.cluster.net().isolate(a),
            }
            self.heal_at = Some(now + self.rng.range(50, 400));
            self.counts.partitions += 1;
        }
        let down = nodes.len() - self.up_nodes().len();
        if down < (nodes.len() - 1) / 2 && self.rng.below(s.crash_every) == 0 {
            let up = self.up_nodes();
            if let Some(victim) = self.rng.pick(&up) {
                self.cluster.crash(victim);
                self.restart_at
                    .insert(victim, now + self.rng.range(60, 500));
                self.counts.crashes += 1;
            }
        }
        if self.rng.below(s.transfer_every) == 0 {
            self.transfer_leader();
        }
        if self.rng.below(s.membership_every) == 0 {
            self.change_membership()
                .map_err(|e| format!("membership change at t={now}: {e}"))?;
        }
        if self.rng.below(500) == 0 {
            let faults = FaultConfig {
                drop: self.rng.range(0, (s.max_drop * 100.0) as u64) as f64 / 100.0,
                duplicate: self.rng.range(0, (s.max_duplicate * 100.0) as u64) as f64 / 100.0,
                min_delay: 1,
                max_delay: self.rng.range(1, s.max_delay),
            };
            self.cluster.net().set_faults(faults);
            self.counts.fault_changes += 1;
        }
        Ok(())
    }

    fn restart(&mut self, node: NodeId) -> Result<(), String> {
        self.cluster
            .restart(node)
            .map_err(|e| format!("restart of {node} failed: {e}"))?;
        self.counts.restarts += 1;
        Ok(())
    }

    fn transfer_leader(&mut self) {
        let groups = self.groups();
        let Some(group) = self.rng.pick(&groups) else {
            return;
        };
        let Some(leader) = self.cluster.leader(group) else {
            return;
        };
        let Some(status) = self.cluster.status(leader, group) else {
            return;
        };
        let targets: Vec<NodeId> = status
            .voters
            .iter()
            .copied()
            .filter(|v| *v != leader)
            .collect();
        let Some(to) = self.rng.pick(&targets) else {
            return;
        };
        if let Some(core) = self.cluster.core_mut(leader)
            && core.transfer_leader(group, to).is_ok()
        {
            self.counts.transfers += 1;
        }
    }

    /// Moves a group's voters away from its placement (remove one follower, or on 5 nodes
    /// replace one with a node outside the placement: joint consensus), or back to it.
    fn change_membership(&mut self) -> Result<(), String> {
        let groups = self.groups();
        let Some(group) = self.rng.pick(&groups) else {
            return Ok(());
        };
        let Some(leader) = self.cluster.leader(group) else {
            return Ok(());
        };
        let Some(status) = self.cluster.status(leader, group) else {
            return Ok(());
        };
        let voters: BTreeSet<NodeId> = status.voters.iter().copied().collect();
        let placement: BTreeSet<NodeId> = self
            .cluster
            .routing()
            .replicas(group)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        let target: BTreeSet<NodeId> = if voters != placement {
            placement.clone()
        } else {
            let followers: Vec<NodeId> =
                placement.iter().copied().filter(|n| *n != leader).collect();
            let Some(out) = self.rng.pick(&followers) else {
                return Ok(());
            };
            let outside: Vec<NodeId> = self
                .up_nodes()
                .into_iter()
                .filter(|n| !placement.contains(n))
                .collect();
            let mut target = placement.clone();
            target.remove(&out);
            if self.rng.chance(0.5)
                && let Some(replacement) = self.rng.pick(&outside)
            {
                target.insert(replacement);
            }
            target
        };
        let adds: Vec<NodeId> = target.difference(&voters).copied().collect();
        let removes: Vec<NodeId> = voters.difference(&target).copied().collect();
        if removes.contains(&leader) || (adds.is_empty() && removes.is_empty()) {
            return Ok(());
        }
        for node in &adds {
            let has = self.cluster.core(*node).map(|c| c.has_group(group));
            match has {
                None => return Ok(()), // down: try another time
                Some(false) => {
                    self.cluster
                        .join_group(*node, group)
                        .map_err(|e| e.to_string())?;
                }
                Some(true) => {}
            }
        }
        let mut change = ConfChangeV2::default();
        let single = |t: ConfChangeType, node: &NodeId| {
            let mut s = ConfChangeSingle::default();
            s.set_change_type(t);
            s.node_id = node.get();
            s
        };
        let mut changes: Vec<ConfChangeSingle> = adds
            .iter()
            .map(|n| single(ConfChangeType::AddNode, n))
            .collect();
        changes.extend(
            removes
                .iter()
                .map(|n| single(ConfChangeType::RemoveNode, n)),
        );
        change.set_changes(changes.into());
        if let Ok(token) = self.cluster.propose_conf_change(leader, group, &change) {
            self.conf_tokens.insert(token);
            self.counts.membership_changes += 1;
        }
        Ok(())
    }

    /// Voters of `group` as its leader sees them, and the leader.
    fn voters(&self, group: GroupId) -> Option<(NodeId, Vec<NodeId>)> {
        let leader = self.cluster.leader(group)?;
        Some((leader, self.cluster.status(leader, group)?.voters))
    }

    fn settled(&self) -> bool {
        self.groups().into_iter().all(|g| {
            let Some((leader, voters)) = self.voters(g) else {
                return false;
            };
            let Some(ls) = self.cluster.status(leader, g) else {
                return false;
            };
            ls.commit == ls.last_index
                && voters.iter().all(|v| {
                    self.cluster
                        .status(*v, g)
                        .is_some_and(|s| s.applied == ls.commit && s.commit == ls.commit)
                })
        }) && self.busy.iter().all(Option::is_none)
    }

    /// Reads every key once more through its leader, so the history ends with what survived.
    fn final_reads(&mut self) -> Result<(), String> {
        for key in 0..self.scenario.keys {
            let group = self.group_of(key);
            let mut done = false;
            for _attempt in 0..20 {
                let Some(leader) = self.cluster.leader(group) else {
                    self.step()?;
                    continue;
                };
                let Ok(token) = self.cluster.read_index(leader, group) else {
                    self.step()?;
                    continue;
                };
                let op = self.next_op;
                self.next_op += 1;
                let invoked = self.tick_clock();
                self.history.push(Recorded {
                    op,
                    key,
                    group,
                    node: leader,
                    kind: OpKind::Get,
                    invoked,
                    invoked_step: self.cluster.now(),
                    status: Status::Pending,
                    retry: None,
                });
                let i = self.history.len() - 1;
                self.outstanding.insert(token, i);
                for _ in 0..200 {
                    self.step()?;
                    if self.history[i].status != Status::Pending {
                        break;
                    }
                }
                if matches!(self.history[i].status, Status::Returned { .. }) {
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(format!(
                    "key {key} ({group}) could not be read after healing"
                ));
            }
        }
        Ok(())
    }

    fn chaos(&mut self) -> Result<(), String> {
        for _ in 0..self.scenario.chaos_steps {
            self.faults()?;
            self.workload();
            self.step()?;
        }
        Ok(())
    }

    fn heal_and_settle(&mut self) -> Result<(), String> {
        self.cluster.net().heal();
        self.heal_at = None;
        self.cluster.net().set_faults(FaultConfig {
            drop: 0.0,
            duplicate: 0.0,
            min_delay: 1,
            max_delay: 1,
        });
        let down: Vec<NodeId> = self
            .cluster
            .node_ids()
            .into_iter()
            .filter(|n| !self.cluster.is_up(*n))
            .collect();
        for node in down {
            self.restart_at.remove(&node);
            self.restart(node)?;
        }
        for _ in 0..SETTLE_STEPS {
            if self.settled() {
                return Ok(());
            }
            self.step()?;
        }
        let mut why = String::from("did not converge after healing:");
        for g in self.groups() {
            match self.voters(g) {
                None => why.push_str(&format!(" {g}: no leader;")),
                Some((leader, voters)) => {
                    for v in voters {
                        let s = self.cluster.status(v, g);
                        why.push_str(&format!(
                            " {g}@{v}{}: {:?};",
                            if v == leader { "(leader)" } else { "" },
                            s.map(|s| (s.role, s.term, s.commit, s.applied, s.last_index))
                        ));
                    }
                }
            }
        }
        Err(why)
    }

    /// The checks of the whole run. Those about the final state (replicas agree, acknowledged
    /// writes present) only mean something when the cluster `settled`.
    fn check(&mut self, settled: bool) {
        for v in self.cluster.violations() {
            self.failures.push(v.to_string());
        }
        if let Err(e) = linearizability::check(&self.operations()) {
            self.failures.push(e.to_string());
        }
        if !settled {
            return;
        }
        let mut voters = BTreeMap::new();
        for g in self.groups() {
            if let Some((_, vs)) = self.voters(g) {
                voters.insert(g, vs);
            }
        }
        let state = |node: NodeId, group: GroupId| {
            self.cluster
                .state_machine(node)
                .map(|sm| sm.groups.get(&group).cloned().unwrap_or_default())
        };
        // Replicas agree.
        for (g, vs) in &voters {
            let states: Vec<_> = vs.iter().map(|v| (*v, state(*v, *g))).collect();
            for pair in states.windows(2) {
                if pair[0].1 != pair[1].1 {
                    self.failures.push(format!(
                        "{g}: replicas {} and {} disagree after settling",
                        pair[0].0, pair[1].0
                    ));
                }
            }
        }
        // No write was applied twice, on any node.
        for n in self.cluster.node_ids() {
            for g in self.groups() {
                if let Some(state) = state(n, g)
                    && let Some(op) = state.doubled.first()
                {
                    self.failures.push(format!(
                        "{g} on {n}: op {op} applied twice ({} doubled)",
                        state.doubled.len()
                    ));
                }
            }
        }
        // Acknowledged writes are on every voter; dropped ones on no node.
        let mut lost = Vec::new();
        let mut phantom = Vec::new();
        for rec in &self.history {
            match (rec.kind, rec.status) {
                (OpKind::Get, _) => {}
                (_, Status::Returned { .. }) => {
                    for v in voters.get(&rec.group).into_iter().flatten() {
                        if !state(*v, rec.group).is_some_and(|s| s.ops.contains(&rec.op)) {
                            lost.push(format!(
                                "op {} ({:?} key {} via {}) missing on {v}",
                                rec.op, rec.kind, rec.key, rec.node
                            ));
                        }
                    }
                }
                (_, Status::Dropped) => {
                    for n in self.cluster.node_ids() {
                        if state(n, rec.group).is_some_and(|s| s.ops.contains(&rec.op)) {
                            phantom.push(format!(
                                "op {} ({:?} key {} via {}) applied on {n}",
                                rec.op, rec.kind, rec.key, rec.node
                            ));
                        }
                    }
                }
                (_, Status::Pending) => {}
            }
        }
        if !lost.is_empty() {
            self.failures.push(format!(
                "{} acknowledged writes lost, e.g. {}",
                lost.len(),
                lost.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        if !phantom.is_empty() {
            self.failures.push(format!(
                "{} proposals reported dropped took effect, e.g. {}",
                phantom.len(),
                phantom
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }

    /// The history for the checker: answered operations, and writes with no answer as
    /// indeterminate. Reads without an answer and dropped writes did nothing.
    fn operations(&self) -> Vec<Operation> {
        self.history
            .iter()
            .filter_map(|rec| match (rec.status, rec.kind) {
                (Status::Returned { at, result }, kind) => {
                    Some(Operation::returned(rec.key, kind, rec.invoked, at, result))
                }
                (Status::Pending, OpKind::Put(_) | OpKind::Cas { .. }) => {
                    Some(Operation::indeterminate(rec.key, rec.kind, rec.invoked))
                }
                _ => None,
            })
            .collect()
    }

    fn report(self) -> Report {
        let ops = self.operations();
        let mut hash = self.cluster.trace_hash();
        for op in &ops {
            let text = op.to_string();
            for b in text.bytes() {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        let mut counts = self.counts;
        counts.node_panics = self
            .cluster
            .violations()
            .iter()
            .filter(|v| {
                matches!(
                    v,
                    pontoon_coordinator::testkit::sim::Violation::NodePanicked { .. }
                )
            })
            .count() as u64;
        counts.forged = self.cluster.forged();
        counts.refused = self
            .cluster
            .node_ids()
            .into_iter()
            .filter_map(|n| self.cluster.core(n))
            .map(|core| core.stats().refused_messages.values().sum::<u64>())
            .sum();
        Report {
            scenario: self.scenario,
            hash,
            failures: self.failures,
            ops: ops.len(),
            returned: ops
                .iter()
                .filter(|o| matches!(o.outcome, linearizability::Outcome::Returned { .. }))
                .count(),
            indeterminate: ops
                .iter()
                .filter(|o| o.outcome == linearizability::Outcome::Indeterminate)
                .count(),
            reads: ops.iter().filter(|o| o.kind == OpKind::Get).count(),
            counts,
            steps: self.cluster.now(),
        }
    }
}

/// Runs one scenario to the end and checks it. Never panics: a panic in the harness or the
/// coordinator becomes a failure of the report, so the seed is always printed.
fn simulate(scenario: Scenario) -> Report {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
        let mut run = Run::new(dir.path(), scenario.clone())?;
        let result = run
            .chaos()
            .and_then(|()| run.heal_and_settle())
            .and_then(|()| run.final_reads());
        let settled = result.is_ok();
        if let Err(e) = result {
            run.failures.push(e);
        }
        run.check(settled);
        Ok(run.report())
    }));
    let failure = match outcome {
        Ok(Ok(report)) => return report,
        Ok(Err(e)) => e,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            format!("the run panicked: {message}")
        }
    };
    {
        Report {
            scenario,
            hash: 0,
            failures: vec![failure],
            ops: 0,
            returned: 0,
            indeterminate: 0,
            reads: 0,
            counts: Counts::default(),
            steps: 0,
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

/// Runs `seeds` and fails with every failing seed's report and replay command.
fn run_seeds(seeds: impl IntoIterator<Item = u64>) {
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    let mut runs = 0;
    for seed in seeds {
        let report = simulate(Scenario::from_seed(seed));
        runs += 1;
        println!("{}", report.summary());
        if !report.failures.is_empty() {
            eprintln!("{}", report.failure_text());
            failed.push(report.failure_text());
        }
    }
    println!("{runs} seeds in {:.1?}", started.elapsed());
    assert!(
        failed.is_empty(),
        "{} of {runs} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The CI seeds of one cluster size, or with `PONTOON_SIM_SEEDS=N` every seed of that size in
/// `base+1..=base+N`. Even seeds run 3 nodes, odd seeds 5.
fn seeds_of_size(odd: bool, ci: &[u64]) -> Vec<u64> {
    match env_u64("PONTOON_SIM_SEEDS") {
        Some(n) => {
            let base = env_u64("PONTOON_SIM_SEED_BASE").unwrap_or(0);
            (base + 1..=base + n)
                .filter(|s| (s % 2 == 1) == odd)
                .collect()
        }
        None => ci.to_vec(),
    }
}

#[test]
fn three_node_seeds_keep_every_safety_property() {
    run_seeds(seeds_of_size(false, &[2, 4, 6, 8, 10, 12]));
}

#[test]
fn five_node_seeds_keep_every_safety_property() {
    run_seeds(seeds_of_size(true, &[1, 3, 5, 7, 9, 11]));
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_differs() {
    let a = simulate(Scenario::from_seed(22));
    let b = simulate(Scenario::from_seed(22));
    let c = simulate(Scenario::from_seed(24));
    for r in [&a, &b, &c] {
        println!("{}", r.summary());
        // A run cut short by a panic has no trace to compare.
        assert!(
            r.ops > 0 && r.steps >= r.scenario.chaos_steps,
            "{}",
            r.failure_text()
        );
    }
    assert_eq!(
        a.hash,
        b.hash,
        "seed 22 ran twice:\n{}\n{}",
        a.summary(),
        b.summary()
    );
    assert_eq!((a.ops, a.steps, &a.failures), (b.ops, b.steps, &b.failures));
    assert_ne!(a.hash, c.hash, "seeds 22 and 24 ran the same");
}

/// `PONTOON_SIM_SEED=N` (default 2) replays one run and prints its report;
/// `PONTOON_SIM_UNSYNCED_LOG=1` turns the injected bug on.
#[test]
fn replay() {
    let seed = env_u64("PONTOON_SIM_SEED").unwrap_or(2);
    let mut scenario = Scenario::from_seed(seed);
    if env_u64("PONTOON_SIM_UNSYNCED_LOG") == Some(1) {
        scenario = scenario.with_unsynced_log();
    }
    if env_u64("PONTOON_SIM_BYZANTINE") == Some(1) {
        scenario = scenario.with_byzantine_senders();
    }
    if env_u64("PONTOON_SIM_DURABLE_SM") == Some(1) {
        scenario = scenario.with_durable_state_machines();
    }
    if env_u64("PONTOON_SIM_SESSIONS") == Some(1) {
        scenario = scenario.with_session_retries();
    }
    let report = simulate(scenario);
    println!("{}", report.summary());
    assert!(report.failures.is_empty(), "{}", report.failure_text());
}

/// Byzantine senders (nodes outside the cluster sending anything, members sending what no
/// honest node sends) forge raft traffic under every other fault: no safety check may break,
/// no coordinator may panic, and the forgeries must have been refused, not just lost.
/// `PONTOON_SIM_SEEDS=N` runs more.
#[test]
fn byzantine_senders_never_break_a_safety_check() {
    run_variant(&[2, 3, 4, 5], Scenario::with_byzantine_senders, |report| {
        assert!(
            report.counts.forged > 100 && report.counts.refused > 0,
            "seed {}: the forgeries did not reach the nodes: {:?}",
            report.scenario.seed,
            report.counts
        );
    });
}

/// Runs a variant of the scenario (`variant` applied to each seed's) on `ci_seeds`, or with
/// `PONTOON_SIM_SEEDS=N` on seeds 1..=N; `each` checks what the variant must show in every
/// run; fails with every failing seed's report.
fn run_variant(ci_seeds: &[u64], variant: fn(Scenario) -> Scenario, each: impl Fn(&Report)) {
    let seeds = match env_u64("PONTOON_SIM_SEEDS") {
        Some(n) => (1..=n).collect(),
        None => ci_seeds.to_vec(),
    };
    let mut failed = Vec::new();
    for seed in seeds {
        let report = simulate(variant(Scenario::from_seed(seed)));
        println!("{}", report.summary());
        if !report.failures.is_empty() {
            failed.push(report.failure_text());
        }
        each(&report);
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// State machines that persist their own state (and lose what they had not persisted when a
/// node crashes) resume from their durable position: no command is handed to one twice (the
/// wrapper asserts it, and a panic is a violation), none is skipped (the lost-write and
/// linearizability checks), under every fault. `PONTOON_SIM_SEEDS=N` runs more.
#[test]
fn durable_state_machines_resume_from_their_own_position_under_crashes() {
    run_variant(
        &[2, 3, 4, 5],
        Scenario::with_durable_state_machines,
        |report| {
            assert!(
                report.counts.crashes > 0,
                "seed {}: no crash was tested",
                report.scenario.seed
            );
        },
    );
}

/// Clients that retry every write in a session until it is answered (after timeouts, dropped
/// proposals, outcomes a node lost track of, on whichever node leads by then) under crashes,
/// partitions, leader transfers, membership changes and duplicated messages: every write is
/// applied once on every node (the state machine counts repeats), and the history stays
/// linearizable. `PONTOON_SIM_SEEDS=N` runs more.
#[test]
fn session_retries_apply_every_write_exactly_once_under_every_fault() {
    let retries = std::cell::Cell::new(0);
    run_variant(
        &[2, 3, 4, 5, 6, 7],
        Scenario::with_session_retries,
        |report| {
            retries.set(retries.get() + report.counts.retries);
        },
    );
    assert!(
        retries.get() > 0,
        "no write was retried: the test proves nothing"
    );
}

/// The same runs with the groups' de-duplication turned off: the double applies the retries
/// cause are caught.
#[test]
fn session_retries_without_dedup_are_caught_applying_twice() {
    let mut caught = 0;
    let seeds = [2, 3, 4, 5, 6, 7];
    for seed in seeds {
        let report = simulate(
            Scenario::from_seed(seed)
                .with_session_retries()
                .without_dedup(),
        );
        println!("{}", report.summary());
        if report.failures.iter().any(|f| f.contains("applied twice")) {
            println!("  seed {seed}: caught a write applied twice");
            caught += 1;
        }
    }
    assert!(
        caught > 0,
        "no seed caught a retried write applied twice without de-duplication"
    );
}

/// The harness must be able to fail: with the raft log acknowledged before it is written
/// (lost on crash), the checks catch it on every seed here.
#[test]
fn an_unsynced_raft_log_is_caught() {
    for seed in [2, 5] {
        let report = simulate(Scenario::from_seed(seed).with_unsynced_log());
        println!("{}", report.summary());
        for f in &report.failures {
            println!("  caught: {}", f.lines().next().unwrap_or_default());
        }
        assert!(
            !report.failures.is_empty(),
            "seed {seed}: the unsynced-log bug went unnoticed: {}",
            report.summary()
        );
        assert!(report.counts.crashes > 0);
    }
}
