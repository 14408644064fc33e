//! A snapshot whose bytes the state machine cannot restore, from a peer speaking with a
//! stolen member identity, over real QUIC and mutual TLS: raft installs it (the node's
//! state machine has no check that could refuse it first), the restore fails, and only that
//! replica is set aside; the node, its other groups and a restart go on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{SharedKv, attacker, garbage_snapshot};
use pontoon_coordinator::testkit::local::LocalCluster;
use pontoon_coordinator::{NodeEvent, RequestError, StateMachine, StateMachineError};
use routing::{GroupId, NodeId, RoutingTable};
use transport::{Envelope, Transport};

/// A state machine without a snapshot check: only `restore` finds a snapshot unreadable.
#[derive(Clone, Default)]
struct Unchecked(SharedKv);

impl StateMachine for Unchecked {
    fn apply(
        &mut self,
        group: GroupId,
        index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError> {
        self.0.apply(group, index, command)
    }
    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        self.0.snapshot(group)
    }
    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        self.0.restore(group, snapshot)
    }
}

/// Waits until `done` holds for what `probe` returns, or fails the test after 20 s.
async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = probe().await;
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: last saw {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_its_state_machine_cannot_restore_sets_one_replica_aside_and_the_node_serves_on()
{
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(64, 4, &nodes, 3).unwrap();
    let cluster = LocalCluster::start(
        dir.path(),
        routing.clone(),
        |c| {
            c.tick_interval(Duration::from_millis(20))
                .request_timeout(Duration::from_secs(5))
        },
        |_| Unchecked::default(),
    )
    .await
    .unwrap();
    assert!(
        cluster
            .wait_for_leaders(Duration::from_secs(20))
            .await
            .is_some()
    );
    // Node 3's identity is stolen; the attacker sends node 1 a snapshot with a sound
    // configuration and bytes no state machine can read, for one group. Node 1 has no check
    // that could refuse it: raft installs it, and only the restore finds it unreadable.
    cluster.kill(NodeId(3)).await;
    let victim = cluster.node(NodeId(1)).unwrap();
    let mut events = victim.subscribe();
    let targets: BTreeMap<NodeId, SocketAddr> = [(NodeId(1), victim.local_addr())].into();
    let insider = attacker(&dir.path().join("certs"), NodeId(3), &targets).await;
    victim.set_peer_address(NodeId(3), insider.local_addr());
    let attacked = routing.groups().map(|(g, _)| g).next().unwrap();
    // Node 1 may be dialling node 3's old address: the link to the attacker comes up once
    // that dial gives up (`TransportConfig::handshake_timeout`, 5 s); generous for CI.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reason = 'attack: loop {
        assert!(Instant::now() < deadline, "the replica was never set aside");
        let _ = insider.send(
            NodeId(1),
            Envelope::Snapshot {
                group: attacked,
                message: garbage_snapshot(1_000_000, NodeId(3)),
            },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(event) = events.try_recv() {
            if let NodeEvent::ReplicaFailed { group, reason } = event {
                assert_eq!(group, attacked);
                break 'attack reason;
            }
        }
    };
    assert!(reason.contains("truncated"), "{reason}");

    // Only that replica stopped: the coordinator answers, requests for the group get a
    // typed refusal that says nothing took effect, and every other group serves on.
    let status = victim.status().await.expect("the coordinator still serves");
    let set_aside: Vec<GroupId> = status
        .groups
        .iter()
        .filter(|g| g.set_aside)
        .map(|g| g.group)
        .collect();
    assert_eq!(
        set_aside,
        [attacked],
        "exactly the attacked replica is set aside"
    );
    let refused = victim.read_index(attacked).await.unwrap_err();
    assert_eq!(refused, RequestError::ReplicaFailed { group: attacked });
    assert!(refused.did_not_take_effect());
    let others: Vec<GroupId> = routing
        .groups()
        .map(|(g, _)| g)
        .filter(|g| *g != attacked)
        .collect();
    let mut written = Vec::new();
    for i in 0.. {
        let key = format!("after-{i}");
        if victim.group_for_key(key.as_bytes()) == attacked {
            continue;
        }
        cluster
            .propose(
                key.as_bytes(),
                format!("{key}=v").into_bytes(),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|e| panic!("write {key} to a healthy group failed: {e}"));
        written.push(key);
        if written.len() == 16 {
            break;
        }
    }

    // The bad snapshot is in node 1's store: a restart sets the replica aside again instead
    // of failing, and the node serves its other groups.
    cluster.kill(NodeId(1)).await;
    cluster.restart(NodeId(1)).await.unwrap();
    let victim = cluster.node(NodeId(1)).unwrap();
    let _ = eventually(
        "the restarted node sets the replica aside",
        || victim.read_index(attacked),
        |r| *r == Err(RequestError::ReplicaFailed { group: attacked }),
    )
    .await;
    for group in others {
        let _ = eventually(
            "the restarted node reads a healthy group",
            || victim.read_index(group),
            Result::is_ok,
        )
        .await;
    }
    cluster.shutdown().await;
}
