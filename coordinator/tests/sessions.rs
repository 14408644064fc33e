//! Client sessions make a retried command apply once: on another node after a leader change,
//! after the leader restarted, and after a later command of the same key.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::time::Duration;

use common::{Machines, SharedKv, local_cluster};
use pontoon_coordinator::testkit::local::LocalCluster;
use pontoon_coordinator::{ClientSession, Node, RequestError};
use routing::{GroupId, NodeId, RoutingTable};

async fn leader_of(cluster: &LocalCluster<SharedKv>, group: GroupId) -> Node {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(id) = cluster.leaders().await.get(&group)
            && let Some(node) = cluster.node(*id)
        {
            return node;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} has no leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `propose_once` on whichever node leads `group`, following leader changes.
async fn propose_once(
    cluster: &LocalCluster<SharedKv>,
    group: GroupId,
    command: &pontoon_coordinator::SessionCommand,
    bytes: &[u8],
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let node = leader_of(cluster, group).await;
        match node.propose_once(command, b"k", bytes.to_vec()).await {
            Ok(response) => return response,
            Err(RequestError::NotLeader { .. } | RequestError::ShuttingDown) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "no answer in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_command_retried_anywhere_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = [NodeId(1), NodeId(2), NodeId(3)];
    let routing = RoutingTable::uniform(64, 2, &nodes, 3).unwrap();
    let machines = Machines::default();
    let cluster = local_cluster(dir.path(), routing.clone(), &machines).await;
    let group = routing.group_for_key(b"k");
    let session = ClientSession::new();

    let first = session.command();
    assert_eq!(propose_once(&cluster, group, &first, b"k=1").await, b"");
    let second = session.command();
    assert_eq!(propose_once(&cluster, group, &second, b"k=2").await, b"1");

    // The first command again, on another node after a leader change: answered with its
    // first response, and `k` keeps the later value.
    let old_leader = leader_of(&cluster, group).await;
    let other = nodes.into_iter().find(|n| *n != old_leader.id()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while leader_of(&cluster, group).await.id() == old_leader.id() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transfer did not happen"
        );
        // A transfer to a follower still catching up is abandoned by raft: ask again.
        let _ = old_leader.transfer_leader(group, other).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(propose_once(&cluster, group, &first, b"k=1").await, b"");

    // And after the new leader restarted (its table rebuilt from the log). No handle of the
    // node may outlive its shutdown, or its port stays bound.
    drop(old_leader);
    let leader = leader_of(&cluster, group).await.id();
    cluster.kill(leader).await;
    // The endpoint's socket is released asynchronously after shutdown.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = cluster.restart(leader).await {
        assert!(tokio::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(propose_once(&cluster, group, &first, b"k=1").await, b"");
    assert_eq!(propose_once(&cluster, group, &second, b"k=2").await, b"1");

    // Every replica holds the later value: the retries were not applied.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let values: Vec<Option<String>> = machines
            .lock()
            .unwrap()
            .values()
            .map(|kv| kv.get(group, "k"))
            .collect();
        if values.iter().all(|v| v.as_deref() == Some("2")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a retried command was applied again: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.shutdown().await;
}
