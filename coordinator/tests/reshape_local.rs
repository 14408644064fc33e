//! Reshaping a real cluster (QUIC + mutual TLS, in one process) while clients write: grow 3
//! nodes to 4, move a vShard to another group, balance leaders, shrink back to 3. Every
//! acknowledged write must be on every replica of its key's current group at the end, and
//! writes keep being acknowledged after every step.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Machines, SharedKv, local_cluster};
use pontoon_coordinator::RequestError;
use pontoon_coordinator::testkit::local::LocalCluster;
use routing::{META_GROUP, NodeId, RoutingTable, VShardId};

async fn start(dir: &std::path::Path, machines: &Machines) -> Arc<LocalCluster<SharedKv>> {
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(64, 6, &nodes, 3).unwrap();
    Arc::new(local_cluster(dir, routing, machines).await)
}

/// Writers that keep putting `w<i>=<seq>` until stopped, recording what was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    /// Acknowledged writes so far (every one, not per key).
    acks: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

fn load(cluster: &Arc<LocalCluster<SharedKv>>, writers: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
    let failed = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(AtomicU64::new(0));
    let handles = (0..writers)
        .map(|w| {
            let (cluster, stop, acked, failed, acks) = (
                cluster.clone(),
                stop.clone(),
                acked.clone(),
                failed.clone(),
                acks.clone(),
            );
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{}", seq % 16);
                    let value = format!("{seq}");
                    let command = format!("{key}={value}").into_bytes();
                    match cluster
                        .propose(key.as_bytes(), command, Duration::from_secs(10))
                        .await
                    {
                        // The previous value must be the one we last acknowledged for it:
                        // nothing lost, nothing applied twice.
                        Ok(_) => {
                            acked.lock().unwrap().insert(key, value);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    seq += 1;
                }
            })
        })
        .collect();
    Load {
        stop,
        acked,
        acks,
        failed,
        handles,
    }
}

impl Load {
    /// Waits until `more` writes beyond those acknowledged so far are acknowledged, failing
    /// the test when they do not come within a generous deadline: the cluster must keep
    /// serving writes after `step`.
    async fn keeps_acknowledging(&self, more: u64, step: &str) {
        let target = self.acks.load(Ordering::Relaxed) + more;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.acks.load(Ordering::Relaxed) < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "writes stopped being acknowledged after {step}: {} of {target}",
                self.acks.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> (BTreeMap<String, String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failed.load(Ordering::Relaxed))
    }
}

/// Every acknowledged value is on every replica of its key's group, by the newest table.
async fn verify(
    cluster: &LocalCluster<SharedKv>,
    machines: &Machines,
    acked: &BTreeMap<String, String>,
) {
    let table = cluster
        .running()
        .iter()
        .map(|n| n.routing())
        .max_by_key(RoutingTable::version)
        .unwrap();
    for node in cluster.running() {
        assert_eq!(
            node.wait_for_routing(table.version()).await,
            table.version(),
            "{} has the newest table",
            node.id()
        );
        let kv = machines.lock().unwrap().get(&node.id()).cloned().unwrap();
        for (key, value) in acked {
            let group = table.group_for_key(key.as_bytes());
            if !table.replicas(group).unwrap().contains(&node.id()) {
                continue;
            }
            node.read_index(group).await.unwrap();
            assert_eq!(
                kv.get(group, key).as_deref(),
                Some(value.as_str()),
                "{key} on {}",
                node.id()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_move_a_vshard_balance_and_shrink_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let machines: Machines = Default::default();
    let cluster = start(dir.path(), &machines).await;
    let writers = load(&cluster, 8);
    writers.keeps_acknowledging(50, "start").await;

    // Grow: node 4 joins empty, then takes its share of replicas.
    let addr = cluster.join_node(NodeId(4)).await.unwrap();
    let report = cluster
        .reshaper(500)
        .add_node(NodeId(4), &addr.to_string())
        .await
        .unwrap();
    let table = cluster.reshaper(500).table().await.unwrap();
    assert!(table.is_member(NodeId(4)));
    let held = table.groups_on_node(NodeId(4)).len();
    assert!(!report.replicas_moved.is_empty());
    assert!(
        (4..=5).contains(&held),
        "node 4 holds {held} of 18 replicas"
    );
    let meta = cluster
        .node(NodeId(4))
        .unwrap()
        .group_status(META_GROUP)
        .await
        .unwrap();
    assert!(meta.is_some(), "node 4 follows the meta group");
    writers.keeps_acknowledging(50, "adding node 4").await;

    // Move a vShard whose keys are being written to another group.
    let vshard: VShardId = table.vshard_of_key(b"w0-0");
    let from = table.group_of_vshard(vshard).unwrap();
    let to = table.groups().map(|(g, _)| g).find(|g| *g != from).unwrap();
    cluster.reshaper(500).move_vshard(vshard, to).await.unwrap();
    // Every node learns the new version (node 2 need not be the meta leader).
    let node2 = cluster.node(NodeId(2)).unwrap();
    assert_eq!(
        node2.wait_for_routing(table.version() + 1).await,
        table.version() + 1
    );
    let moved = node2.routing();
    assert_eq!(moved.group_of_vshard(vshard).unwrap(), to);
    assert_eq!(moved.version(), table.version() + 1);
    writers.keeps_acknowledging(50, "moving a vShard").await;

    cluster.reshaper(500).balance_leaders().await.unwrap();
    writers.keeps_acknowledging(50, "balancing leaders").await;

    // Shrink: node 1 hands everything over and leaves.
    let report = cluster.reshaper(500).remove_node(NodeId(1)).await.unwrap();
    assert!(!report.replicas_moved.is_empty());
    let table = cluster.reshaper(500).table().await.unwrap();
    assert!(!table.is_member(NodeId(1)));
    assert!(table.groups_on_node(NodeId(1)).is_empty());
    cluster.forget_node(NodeId(1)).await;
    writers.keeps_acknowledging(50, "removing node 1").await;

    let (acked, failed) = writers.finish().await;
    eprintln!(
        "acknowledged keys {}, failed proposals {failed}",
        acked.len()
    );
    verify(&cluster, &machines, &acked).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_routing_is_refused_and_retried_on_the_new_table() {
    let dir = tempfile::tempdir().unwrap();
    let machines: Machines = Default::default();
    let cluster = start(dir.path(), &machines).await;
    let node = cluster.node(NodeId(1)).unwrap();
    let table = node.routing();
    let vshard = table.vshard_of_key(b"k");
    let from = table.group_of_vshard(vshard).unwrap();
    cluster
        .propose(b"k", b"k=1".to_vec(), Duration::from_secs(5))
        .await
        .unwrap();

    // Fence the vShard by hand: proposals routed to the old group are refused, typed.
    let leader = cluster.node(cluster.leaders().await[&from]).unwrap();
    leader.release_vshard(from, vshard).await.unwrap();
    let stale = tokio::time::timeout(
        Duration::from_secs(8),
        leader.propose(b"k", b"k=2".to_vec()),
    )
    .await
    .unwrap();
    assert!(
        matches!(stale, Err(RequestError::StaleRouting { vshard: v, group, .. }) if v == vshard && group == from),
        "{stale:?}"
    );
    // Taking it back makes it serve again; the refused write never took effect.
    leader.acquire_vshard(from, vshard, None).await.unwrap();
    let previous = leader.propose(b"k", b"k=3".to_vec()).await.unwrap();
    assert_eq!(previous, b"1");
    cluster.shutdown().await;
}
