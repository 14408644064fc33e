//! Three real nodes in one process over QUIC with mutual TLS on loopback, 64 groups: writes,
//! the loss of the busiest leader node, and writes on the survivors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::time::Duration;

use common::{Machines, local_cluster};
use routing::{NodeId, RoutingTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_quic_nodes_keep_taking_writes_after_losing_the_busiest_leader() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(1024, 64, &nodes, 3).unwrap();
    // A restarted node starts from an empty state machine and replays its log.
    let machines = Machines::default();
    let cluster = local_cluster(dir.path(), routing, &machines).await;

    let timeout = Duration::from_secs(10);
    for i in 0..256 {
        let key = format!("key-{i}");
        cluster
            .propose(
                key.as_bytes(),
                format!("{key}=before").into_bytes(),
                timeout,
            )
            .await
            .unwrap();
    }

    // The leaders split each proposal's time into raft and apply; together they stay within
    // what the callers waited.
    let mut measured = 0;
    for node in cluster.running() {
        let status = node.status().await.unwrap();
        let latency = status.latency;
        measured += latency.replicate.count;
        assert_eq!(latency.replicate.count, latency.apply.count);
        for stage in [latency.replicate, latency.apply] {
            assert!(
                stage.p50_us <= stage.p99_us && stage.p99_us <= stage.max_us,
                "{stage:?}"
            );
            assert!(stage.max_us <= timeout.as_micros() as u64, "{stage:?}");
        }
    }
    assert_eq!(
        measured, 256,
        "every acknowledged proposal measured once, by its leader"
    );

    let counts = cluster.leader_counts().await;
    let (&victim, _) = counts.iter().max_by_key(|(_, c)| **c).unwrap();
    cluster.kill(victim).await;
    let failover = cluster.wait_for_leaders(Duration::from_secs(20)).await;
    assert!(
        failover.is_some(),
        "groups led by {victim} elect new leaders"
    );

    for i in 0..256 {
        let key = format!("key-{i}");
        cluster
            .propose(key.as_bytes(), format!("{key}=after").into_bytes(), timeout)
            .await
            .unwrap();
    }
    // Every survivor holds every acknowledged write once a read barrier has passed.
    for node in cluster.running() {
        let kv = machines.lock().unwrap().get(&node.id()).cloned().unwrap();
        for i in 0..256 {
            let key = format!("key-{i}");
            let group = cluster.routing().group_for_key(key.as_bytes());
            node.read_index(group).await.unwrap();
            assert_eq!(
                kv.get(group, &key).as_deref(),
                Some("after"),
                "{key} on {}",
                node.id()
            );
        }
    }
    cluster.shutdown().await;
}
