//! A node's life as its callers see it, over real QUIC nodes in one process: what a request
//! learns when the node stops under it (did it take effect or not).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::time::Duration;

use common::SharedKv;
use pontoon_coordinator::testkit::local::LocalCluster;
use pontoon_coordinator::{Node, Outcome, RaftConfig, RequestError};
use routing::{GroupId, NodeId, RoutingTable};

/// Three nodes, `groups` groups of three replicas, elections slow enough that a leader cut off
/// from its followers keeps leading for a second or more.
async fn three_nodes(dir: &std::path::Path, groups: u64) -> LocalCluster<SharedKv> {
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(64, groups, &nodes, 3).unwrap();
    let cluster = LocalCluster::start(
        dir,
        routing,
        |c| {
            c.tick_interval(Duration::from_millis(20))
                .request_timeout(Duration::from_secs(30))
                .raft(RaftConfig::default().election_tick(50).heartbeat_tick(5))
        },
        |_| SharedKv::default(),
    )
    .await
    .unwrap();
    assert!(
        cluster
            .wait_for_leaders(Duration::from_secs(30))
            .await
            .is_some(),
        "every group elects a leader"
    );
    cluster
}

/// Waits until `node` holds an entry of `group` it cannot commit.
async fn wait_for_uncommitted(node: &Node, group: GroupId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = node.group_status(group).await.unwrap().unwrap();
        if status.last_index > status.commit {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proposal never reached raft: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_fails_proposals_in_raft_as_outcome_unknown_and_the_rest_as_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_nodes(dir.path(), 1).await;
    let group = GroupId(1);
    let leader = cluster.leaders().await[&group];
    let node = cluster.node(leader).unwrap();
    // Its followers gone, the leader takes the proposal into raft but cannot commit it.
    for other in cluster.node_ids() {
        if other != leader {
            cluster.kill(other).await;
        }
    }
    let proposal = tokio::spawn({
        let node = node.clone();
        async move { node.propose_to_group(group, b"k=v".to_vec()).await }
    });
    wait_for_uncommitted(&node, group).await;
    let read = tokio::spawn({
        let node = node.clone();
        async move { node.read_index(group).await }
    });

    node.shutdown().await;
    let proposal = proposal.await.unwrap().unwrap_err();
    assert_eq!(proposal, RequestError::StoppedInFlight { group });
    assert_eq!(proposal.outcome(), Outcome::Unknown, "it may still commit");
    // A read changes nothing: whatever stopped it, it did not take effect.
    let read = read.await.unwrap().unwrap_err();
    assert_eq!(read.outcome(), Outcome::NotApplied, "{read}");
    // Nothing reaches raft any more: safe to send elsewhere.
    let after = node
        .propose_to_group(group, b"k=w".to_vec())
        .await
        .unwrap_err();
    assert_eq!(after, RequestError::ShuttingDown);
    assert_eq!(after.outcome(), Outcome::NotApplied);
    cluster.shutdown().await;
}
