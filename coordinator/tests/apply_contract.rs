//! The storage-engine contract, through a real node: apply runs off the coordinator's task
//! (a state machine stuck in one group does not stop the others), and a restart hands a state
//! machine nothing it had made durable and skips nothing committed, batched entries included.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use pontoon_coordinator::{
    Committed, GroupStateMachine, Node, NodeConfig, Position, StateMachineError,
    StateMachineFactory, StateMachines,
};
use routing::{GroupId, NodeId, RoutingTable};

/// What one group's state machine holds "on disk": every command applied, where, and how far
/// it is durable. Shared with the test, and kept across a node's restart.
#[derive(Default)]
struct Disk {
    applied: BTreeMap<GroupId, Vec<(Position, Vec<u8>)>>,
}

/// A state machine that makes each batch durable before it returns (as an LSM engine that
/// writes the batch with the applied position in one write would).
struct Durable {
    group: GroupId,
    disk: Arc<Mutex<Disk>>,
    /// Commands equal to `block` wait here until the test lets them go.
    gate: Option<Gate>,
}

#[derive(Clone)]
struct Gate {
    entered: mpsc::Sender<()>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl GroupStateMachine for Durable {
    fn durable_position(&self) -> Option<Position> {
        let disk = self.disk.lock().unwrap();
        disk.applied.get(&self.group)?.last().map(|(p, _)| *p)
    }

    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        for c in batch {
            assert_eq!(
                c.group, self.group,
                "a command reached another group's state machine"
            );
            if c.command == b"block"
                && let Some(gate) = &self.gate
            {
                gate.entered.send(()).unwrap();
                gate.release.lock().unwrap().recv().unwrap();
            }
            self.disk
                .lock()
                .unwrap()
                .applied
                .entry(self.group)
                .or_default()
                .push((c.position, c.command.to_vec()));
        }
        Ok(batch.iter().map(|c| c.command.to_vec()).collect())
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        let disk = self.disk.lock().unwrap();
        for (_, command) in disk.applied.get(&self.group).into_iter().flatten() {
            out.write_all(&(command.len() as u32).to_be_bytes())?;
            out.write_all(command)?;
        }
        Ok(())
    }

    fn restore(&mut self, _: Position, input: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        // A single node never receives a snapshot from a peer; its own stored one is older
        // than what this state machine made durable, so the node does not restore it.
        assert!(
            bytes.is_empty(),
            "a state machine past the stored snapshot was restored"
        );
        Ok(())
    }
}

struct Factory {
    disk: Arc<Mutex<Disk>>,
    slow_group: Option<(GroupId, Gate)>,
}

impl StateMachineFactory for Factory {
    fn open(&self, group: GroupId) -> Result<Box<dyn GroupStateMachine>, StateMachineError> {
        let gate = self
            .slow_group
            .as_ref()
            .filter(|(slow, _)| *slow == group)
            .map(|(_, gate)| gate.clone());
        Ok(Box::new(Durable {
            group,
            disk: self.disk.clone(),
            gate,
        }))
    }
}

fn routing() -> RoutingTable {
    RoutingTable::uniform(16, 4, &[NodeId(1)], 1).unwrap()
}

async fn start(dir: &Path, factory: Factory) -> Node {
    let certs_dir = dir.join("certs");
    if !certs_dir.exists() {
        certs::files::init_dir(&certs_dir, false).unwrap();
    }
    let identity =
        certs::files::issue_node_files(&certs_dir, NodeId(1), &["127.0.0.1".into()], true).unwrap();
    let listen = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let config = NodeConfig::new(NodeId(1), listen, dir.join("data"))
        .peer(NodeId(1), listen)
        .tick_interval(Duration::from_millis(20))
        .request_timeout(Duration::from_secs(10))
        .apply_workers(2);
    let node = Node::start(
        config,
        &identity,
        routing(),
        StateMachines::per_group(factory),
    )
    .await
    .unwrap();
    // Every group elects its single voter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for group in routing().groups().map(|(g, _)| g) {
        while node.read_index(group).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{group} has no leader"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    node
}

/// A key of each group, found by hashing candidates.
fn keys_by_group(node: &Node) -> BTreeMap<GroupId, Vec<u8>> {
    let mut keys = BTreeMap::new();
    for i in 0.. {
        let key = format!("key-{i}").into_bytes();
        keys.entry(node.group_for_key(&key)).or_insert(key);
        if keys.len() == routing().groups().count() {
            break;
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_stuck_in_one_group_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let slow = routing().groups().next().unwrap().0;
    let factory = Factory {
        disk: Arc::default(),
        slow_group: Some((
            slow,
            Gate {
                entered: entered_tx,
                release: release_rx,
            },
        )),
    };
    let node = start(dir.path(), factory).await;
    let keys = keys_by_group(&node);
    let slow_key = keys[&slow].clone();

    let stuck = {
        let node = node.clone();
        tokio::spawn(async move { node.propose(&slow_key, b"block".to_vec()).await })
    };
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the slow group's command reaches its state machine");

    // While that state machine is stuck, every other group commits, applies and answers.
    for round in 0..20 {
        for (group, key) in keys.iter().filter(|(g, _)| **g != slow) {
            let command = format!("fast-{round}").into_bytes();
            let reply =
                tokio::time::timeout(Duration::from_secs(5), node.propose(key, command.clone()))
                    .await
                    .unwrap_or_else(|_| panic!("{group} waited for another group's state machine"))
                    .unwrap();
            assert_eq!(reply, command);
            tokio::time::timeout(Duration::from_secs(5), node.read_index(*group))
                .await
                .expect("reads of other groups are answered")
                .unwrap();
        }
    }
    assert!(
        !stuck.is_finished(),
        "the stuck command was answered before it was applied"
    );
    release_tx.send(()).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("the stuck command is answered once applied")
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"block");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_only_what_follows_the_durable_position_batched_entries_included() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<Mutex<Disk>> = Arc::default();
    let mut acknowledged = BTreeSet::new();
    for run in 0..2 {
        let factory = Factory {
            disk: disk.clone(),
            slow_group: None,
        };
        let node = start(dir.path(), factory).await;
        // Many proposals at once, so the node batches several into one raft entry.
        let writers: Vec<_> = (0..300)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(async move {
                    let command = format!("run{run}-cmd{i}").into_bytes();
                    node.propose(&command, command.clone())
                        .await
                        .map(|_| command)
                })
            })
            .collect();
        for writer in writers {
            acknowledged.insert(writer.await.unwrap().unwrap());
        }
        node.shutdown().await;
    }
    let disk = disk.lock().unwrap();
    let mut batched = 0;
    for (group, applied) in &disk.applied {
        let positions: Vec<Position> = applied.iter().map(|(p, _)| *p).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{group}: a position was applied twice or out of order across the restart"
        );
        batched += positions.iter().filter(|p| p.offset > 0).count();
    }
    assert!(batched > 0, "no batched entry was exercised");
    let mut applied: Vec<&Vec<u8>> = disk.applied.values().flatten().map(|(_, c)| c).collect();
    applied.sort();
    let unique: BTreeSet<&Vec<u8>> = applied.iter().copied().collect();
    assert_eq!(unique.len(), applied.len(), "a command was applied twice");
    for command in &acknowledged {
        assert!(
            unique.contains(command),
            "acknowledged {command:?} was never applied"
        );
    }
}
