//! Helpers shared by the coordinator's integration tests: a small key-value state machine and
//! workload helpers over the simulation harness.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use pontoon_coordinator::testkit::local::LocalCluster;
use pontoon_coordinator::testkit::sim::{Completion, SimCluster};
use pontoon_coordinator::{StateMachine, StateMachineError, VShardScope};
use raft::eraftpb::{Message, MessageType, Snapshot};
use routing::{GroupId, NodeId, RoutingTable};
use transport::{AddressBook, QuicTransport, TransportConfig};

/// Each group holds a map; a command is `key=value`; the response is the previous value.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub groups: BTreeMap<GroupId, BTreeMap<Vec<u8>, Vec<u8>>>,
    pub applied: u64,
}

fn split(command: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match command.iter().position(|b| *b == b'=') {
        Some(i) => (command[..i].to_vec(), command[i + 1..].to_vec()),
        None => (command.to_vec(), Vec::new()),
    }
}

impl StateMachine for Kv {
    fn apply(
        &mut self,
        group: GroupId,
        _index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError> {
        self.applied += 1;
        let (k, v) = split(command);
        Ok(self
            .groups
            .entry(group)
            .or_default()
            .insert(k, v)
            .unwrap_or_default())
    }

    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        Ok(encode_pairs(self.groups.get(&group).into_iter().flatten()))
    }

    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let map = decode_pairs(snapshot)?;
        self.groups.insert(group, map);
        Ok(())
    }

    fn export_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
    ) -> Result<Vec<u8>, StateMachineError> {
        let pairs = self.groups.get(&group).into_iter().flatten();
        Ok(encode_pairs(pairs.filter(|(k, _)| scope.contains(k))))
    }

    fn import_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
        data: &[u8],
    ) -> Result<(), StateMachineError> {
        let imported = decode_pairs(data)?;
        let map = self.groups.entry(group).or_default();
        map.retain(|k, _| !scope.contains(k));
        map.extend(imported);
        Ok(())
    }

    fn drop_vshard(&mut self, group: GroupId, scope: VShardScope) -> Result<(), StateMachineError> {
        if let Some(map) = self.groups.get_mut(&group) {
            map.retain(|k, _| !scope.contains(k));
        }
        Ok(())
    }
}

fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode_pairs(bytes: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StateMachineError> {
    {
        let mut map = BTreeMap::new();
        let mut rest = bytes;
        let take = |rest: &mut &[u8]| -> Result<Vec<u8>, StateMachineError> {
            if rest.len() < 4 {
                return Err("truncated snapshot".into());
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + len {
                return Err("truncated snapshot".into());
            }
            let part = rest[4..4 + len].to_vec();
            *rest = &rest[4 + len..];
            Ok(part)
        };
        while !rest.is_empty() {
            let k = take(&mut rest)?;
            let v = take(&mut rest)?;
            map.insert(k, v);
        }
        Ok(map)
    }
}

pub fn cluster_ids(cluster: &SimCluster<Kv>) -> Vec<NodeId> {
    cluster.node_ids()
}

/// Proposes `key=value` at the group's current leader. Returns the token when accepted.
pub fn put(cluster: &mut SimCluster<Kv>, group: GroupId, key: &str, value: &str) -> Option<u64> {
    let leader = cluster.leader(group)?;
    cluster
        .propose(leader, group, format!("{key}={value}").into_bytes())
        .ok()
}

/// Runs until every group has a leader (or panics after `max_steps`).
pub fn elect_all(cluster: &mut SimCluster<Kv>, max_steps: u64) {
    let ok = cluster
        .run_until(max_steps, |c| c.all_groups_have_leaders())
        .unwrap();
    assert!(
        ok,
        "not every group elected a leader within {max_steps} steps"
    );
}

/// Every acknowledged write `(group, key, value)` from `acked` is present on every running
/// replica of its group.
pub fn assert_acked_everywhere(
    cluster: &SimCluster<Kv>,
    acked: &BTreeMap<(GroupId, String), String>,
) {
    for ((group, key), value) in acked {
        let replicas = cluster.routing().replicas(*group).unwrap().to_vec();
        for node in replicas {
            if let Some(sm) = cluster.state_machine(node) {
                let got = sm.groups.get(group).and_then(|m| m.get(key.as_bytes()));
                assert_eq!(
                    got.map(|v| v.as_slice()),
                    Some(value.as_bytes()),
                    "{key} of {group} on {node}"
                );
            }
        }
    }
}

/// Every running replica of every group holds the same map.
pub fn assert_replicas_agree(cluster: &SimCluster<Kv>) {
    for (group, placement) in cluster.routing().groups() {
        let states: Vec<_> = placement
            .replicas
            .iter()
            .filter_map(|n| {
                cluster
                    .state_machine(*n)
                    .map(|sm| (*n, sm.groups.get(&group).cloned().unwrap_or_default()))
            })
            .collect();
        for pair in states.windows(2) {
            assert_eq!(
                pair[0].1, pair[1].1,
                "{group}: {} and {} disagree",
                pair[0].0, pair[1].0
            );
        }
    }
}

/// Records successful completions of puts made with `put` (`tokens` maps token -> write).
pub fn collect_acks(
    completions: Vec<Completion>,
    tokens: &mut BTreeMap<u64, (GroupId, String, String)>,
    acked: &mut BTreeMap<(GroupId, String), String>,
) -> usize {
    let mut failed = 0;
    for c in completions {
        if let Some((group, key, value)) = tokens.remove(&c.token) {
            match c.result {
                Ok(_) => {
                    acked.insert((group, key), value);
                }
                Err(_) => failed += 1,
            }
        }
    }
    failed
}

/// Puts keys through leaders and remembers which were acknowledged.
#[derive(Default)]
pub struct Workload {
    pub tokens: BTreeMap<u64, (GroupId, String, String)>,
    pub acked: BTreeMap<(GroupId, String), String>,
    pub failed: usize,
    pub issued: usize,
}

impl Workload {
    /// One put per group in `groups`, keyed by `round`.
    pub fn round(
        &mut self,
        cluster: &mut SimCluster<Kv>,
        groups: impl IntoIterator<Item = GroupId>,
        round: usize,
    ) {
        for group in groups {
            let key = format!("k{round}");
            let value = format!("v{round}-{group}");
            if let Some(token) = put(cluster, group, &key, &value) {
                self.issued += 1;
                self.tokens.insert(token, (group, key, value));
            }
        }
    }

    /// Steps until every issued put has an outcome (or `max_steps`), recording acks.
    pub fn settle(&mut self, cluster: &mut SimCluster<Kv>, max_steps: u64) {
        for _ in 0..max_steps {
            let done = cluster.take_completions();
            self.failed += collect_acks(done, &mut self.tokens, &mut self.acked);
            if self.tokens.is_empty() {
                return;
            }
            cluster.step().unwrap();
        }
    }
}

pub fn groups(cluster: &SimCluster<Kv>) -> Vec<GroupId> {
    cluster.routing().groups().map(|(g, _)| g).collect()
}

/// A [`Kv`] the test can read while a `Node` owns it.
#[derive(Clone, Default)]
pub struct SharedKv(pub std::sync::Arc<std::sync::Mutex<Kv>>);

impl SharedKv {
    pub fn get(&self, group: GroupId, key: &str) -> Option<String> {
        let kv = self.0.lock().unwrap();
        kv.groups
            .get(&group)?
            .get(key.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

impl StateMachine for SharedKv {
    fn check_snapshot(_: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        decode_pairs(snapshot).map(drop)
    }
    fn apply(
        &mut self,
        group: GroupId,
        index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError> {
        self.0.lock().unwrap().apply(group, index, command)
    }
    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        self.0.lock().unwrap().snapshot(group)
    }
    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        self.0.lock().unwrap().restore(group, snapshot)
    }
    fn export_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
    ) -> Result<Vec<u8>, StateMachineError> {
        self.0.lock().unwrap().export_vshard(group, scope)
    }
    fn import_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
        data: &[u8],
    ) -> Result<(), StateMachineError> {
        self.0.lock().unwrap().import_vshard(group, scope, data)
    }
    fn drop_vshard(&mut self, group: GroupId, scope: VShardScope) -> Result<(), StateMachineError> {
        self.0.lock().unwrap().drop_vshard(group, scope)
    }
}

/// How many acknowledged writes are missing from some running replica of their group.
pub fn missing_acked(
    cluster: &SimCluster<Kv>,
    acked: &BTreeMap<(GroupId, String), String>,
) -> usize {
    let mut missing = 0;
    for ((group, key), value) in acked {
        for node in cluster.routing().replicas(*group).unwrap_or_default() {
            if let Some(sm) = cluster.state_machine(*node)
                && sm.groups.get(group).and_then(|m| m.get(key.as_bytes()))
                    != Some(&value.as_bytes().to_vec())
            {
                missing += 1;
            }
        }
    }
    missing
}

/// Each node's state machine in a [`LocalCluster`], by node (replaced when the node restarts).
pub type Machines = std::sync::Arc<std::sync::Mutex<BTreeMap<NodeId, SharedKv>>>;

/// A [`LocalCluster`] of `routing` over QUIC (20 ms ticks, 5 s request timeout) once every
/// group has a leader; each node's [`SharedKv`] is registered in `machines` (a restarted node
/// starts from an empty one and replays its log).
pub async fn local_cluster(
    dir: &std::path::Path,
    routing: RoutingTable,
    machines: &Machines,
) -> LocalCluster<SharedKv> {
    let registry = machines.clone();
    let cluster = LocalCluster::start(
        dir,
        routing,
        |c| {
            c.tick_interval(std::time::Duration::from_millis(20))
                .request_timeout(std::time::Duration::from_secs(5))
        },
        move |node| {
            let kv = SharedKv::default();
            registry.lock().unwrap().insert(node, kv.clone());
            kv
        },
    )
    .await
    .unwrap();
    assert!(
        cluster
            .wait_for_leaders(std::time::Duration::from_secs(20))
            .await
            .is_some(),
        "every group elects a leader"
    );
    cluster
}

// --- Hostile peers: forged messages from a stolen identity --------------------------------

/// A raft message of `kind` at `term`, every other field empty.
pub fn forged(kind: MessageType, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.term = term;
    m
}

/// A `MsgSnapshot` raft would install (voters 1–3, far ahead of every log) carrying bytes no
/// state machine here can read.
pub fn garbage_snapshot(term: u64, from: NodeId) -> Message {
    let mut message = forged(MessageType::MsgSnapshot, term);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 1 << 20;
    snapshot.mut_metadata().term = term.max(1);
    snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    snapshot.data = b"\x00\x02\x08\x01not a snapshot of anything"
        .to_vec()
        .into();
    message.snapshot = Some(snapshot).into();
    message.term = term.max(1);
    message.from = from.get();
    message
}

/// A QUIC endpoint holding node `id`'s certificate (issued into `dir` if it has none yet),
/// that knows where `targets` listen: an attacker speaking as `id`.
pub async fn attacker(
    dir: &std::path::Path,
    id: NodeId,
    targets: &BTreeMap<NodeId, SocketAddr>,
) -> QuicTransport {
    let identity = certs::files::load_node(dir, id)
        .or_else(|_| certs::files::issue_node_files(dir, id, &["127.0.0.1".to_string()], false))
        .unwrap();
    let book = AddressBook::new();
    for (node, addr) in targets {
        book.insert(*node, *addr);
    }
    let (transport, _inbound) = QuicTransport::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        &identity,
        TransportConfig::default(),
        book,
        Arc::new(|_| true),
    )
    .await
    .unwrap();
    transport
}

/// This process's resident memory in bytes, from `/proc/self/status` (0 where there is none).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}
