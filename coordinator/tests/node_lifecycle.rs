//! A node's life as its callers see it, over real QUIC nodes in one process: what a request
//! learns when the node stops under it (did it take effect or not), and the events a
//! subscriber hears through a failover.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::time::Duration;

use common::SharedKv;
use pontoon_coordinator::testkit::local::LocalCluster;
use pontoon_coordinator::{Node, NodeEvent, NodeStopped, Outcome, RaftConfig, RequestError, Role};
use routing::{GroupId, NodeId, RoutingTable};
use tokio::sync::broadcast;

/// Three nodes, `groups` groups of three replicas, elections slow enough that a leader cut off
/// from its followers keeps leading for a second or more, and liveness slow enough that it
/// does not refuse proposals as `QuorumUnreachable` meanwhile.
async fn three_nodes(dir: &std::path::Path, groups: u64) -> LocalCluster<SharedKv> {
    let mut raft = RaftConfig::default().election_tick(50).heartbeat_tick(5);
    raft.liveness_timeout_ticks = 10_000;
    three_nodes_with(dir, groups, raft).await
}

async fn three_nodes_with(
    dir: &std::path::Path,
    groups: u64,
    raft: RaftConfig,
) -> LocalCluster<SharedKv> {
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(64, groups, &nodes, 3).unwrap();
    let cluster = LocalCluster::start(
        dir,
        routing,
        move |c| {
            c.tick_interval(Duration::from_millis(20))
                .request_timeout(Duration::from_secs(30))
                .raft(raft.clone())
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

async fn wait_until_every_peer_is_up(cluster: &LocalCluster<SharedKv>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut down = Vec::new();
        for node in cluster.running() {
            down.extend(node.status().await.unwrap().peers_down);
        }
        if down.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peers still held down: {down:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives events into `seen` until `done(seen)` holds; panics at the deadline.
async fn hear_until(
    rx: &mut broadcast::Receiver<NodeEvent>,
    seen: &mut Vec<NodeEvent>,
    what: &str,
    done: impl Fn(&[NodeEvent]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            Ok(Err(e)) => panic!("{what}: the subscription failed: {e}"),
            Err(_) => panic!("{what}: not heard by the deadline; heard {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_hear_every_leader_change_of_a_failover_and_the_lost_peer() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_nodes_with(dir.path(), 4, RaftConfig::default()).await;
    // A node that started before its peers held them down until it first heard them: only a
    // peer held up can be lost.
    wait_until_every_peer_is_up(&cluster).await;
    let counts = cluster.leader_counts().await;
    let (&lost, _) = counts.iter().max_by_key(|(_, c)| **c).unwrap();
    let led_by_lost: Vec<GroupId> = cluster
        .leaders()
        .await
        .into_iter()
        .filter(|(_, l)| *l == lost)
        .map(|(g, _)| g)
        .collect();
    assert!(!led_by_lost.is_empty());
    let survivors: Vec<Node> = cluster
        .running()
        .into_iter()
        .filter(|n| n.id() != lost)
        .collect();
    let mut subscriptions: Vec<_> = survivors
        .iter()
        .map(|n| (n.subscribe(), Vec::new()))
        .collect();

    cluster.kill(lost).await;
    assert!(
        cluster
            .wait_for_leaders(Duration::from_secs(30))
            .await
            .is_some(),
        "the survivors elect new leaders"
    );
    // What the survivors say now: each group's leader and term.
    let mut now = std::collections::BTreeMap::new();
    for node in &survivors {
        for g in node.status().await.unwrap().groups {
            if g.leader == Some(node.id()) {
                now.insert(g.group, (node.id(), g.term));
            }
        }
    }
    for (node, (rx, seen)) in survivors.iter().zip(&mut subscriptions) {
        hear_until(
            rx,
            seen,
            &format!("{}: the new leaders", node.id()),
            |seen| {
                led_by_lost.iter().all(|group| {
                    let (leader, term) = now[group];
                    let told = seen.contains(&NodeEvent::LeaderChanged {
                        group: *group,
                        leader: Some(leader),
                        term,
                    });
                    // The winner also hears its own promotion.
                    let promoted = leader != node.id()
                        || seen.contains(&NodeEvent::RoleChanged {
                            group: *group,
                            role: Role::Leader,
                            term,
                        });
                    told && promoted
                })
            },
        )
        .await;
        let st = node.status().await.unwrap();
        let what = format!(
            "{}: the lost peer {lost} (down {:?}, lost {})",
            node.id(),
            st.peers_down,
            st.coordinator.peers_lost
        );
        hear_until(rx, seen, &what, |seen| {
            seen.contains(&NodeEvent::PeerDown { peer: lost })
        })
        .await;
    }

    // It comes back: heard again.
    cluster.restart(lost).await.unwrap();
    for (node, (rx, seen)) in survivors.iter().zip(&mut subscriptions) {
        hear_until(rx, seen, &format!("{}: the peer back", node.id()), |seen| {
            seen.contains(&NodeEvent::PeerUp { peer: lost })
        })
        .await;
    }

    // The last thing a subscriber hears is the stop, and why.
    let (rx, seen) = &mut subscriptions[0];
    survivors[0].shutdown().await;
    hear_until(rx, seen, "the stop", |seen| {
        seen.last() == Some(&NodeEvent::Stopped(NodeStopped::Shutdown))
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_releases_the_port_while_other_handles_live() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_nodes(dir.path(), 1).await;
    let node = cluster.running().remove(0);
    let kept = node.clone();
    let addr = node.local_addr();
    node.shutdown().await;
    // Bound again at once, though a handle lives: a restart in place does not wait.
    std::net::UdpSocket::bind(addr).expect("the port is free after shutdown");
    // The handle left behind hears the stop, not silence.
    assert_eq!(
        kept.status().await.unwrap_err(),
        RequestError::ShuttingDown,
        "the remaining handle is told the node is gone"
    );
    assert_eq!(kept.stop_reason(), Some(NodeStopped::Shutdown));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_resolves_once_the_target_leads_or_with_why_it_did_not() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_nodes_with(dir.path(), 1, RaftConfig::default()).await;
    let group = GroupId(1);
    wait_until_every_peer_is_up(&cluster).await;
    // A leader that committed in its term, not one a newer election already replaced.
    cluster
        .propose_to_group(group, b"k=v".to_vec(), Duration::from_secs(10))
        .await
        .unwrap();
    let leader = cluster.leaders().await[&group];
    let node = cluster.node(leader).unwrap();
    let to = cluster
        .node_ids()
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();

    // raft gives a transfer up after an election timeout (a target slow to catch up on a
    // loaded machine): that is the failure it reports, and asking again is the caller's move.
    let mut attempts = 0;
    while let Err(e) = node.transfer_leader(group, to).await {
        attempts += 1;
        assert!(
            attempts < 10 && matches!(e, RequestError::TransferFailed { .. }),
            "{e}"
        );
    }
    // Resolved means done: the target already leads, no polling needed.
    let target = cluster
        .node(to)
        .unwrap()
        .group_status(group)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(target.role, Role::Leader, "{target:?}");

    // A node that is no voter of the group never leads it: the caller is told so.
    let new_leader = cluster.node(to).unwrap();
    let failed = new_leader
        .transfer_leader(group, NodeId(9))
        .await
        .unwrap_err();
    assert_eq!(
        failed,
        RequestError::TransferFailed {
            group,
            to: NodeId(9)
        }
    );
    assert_eq!(failed.outcome(), Outcome::NotApplied);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_every_leadership_over_before_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_nodes_with(dir.path(), 6, RaftConfig::default()).await;
    wait_until_every_peer_is_up(&cluster).await;
    let counts = cluster.leader_counts().await;
    let (&busiest, _) = counts.iter().max_by_key(|(_, c)| **c).unwrap();
    let node = cluster.node(busiest).unwrap();

    let drained = node.drain(Duration::from_secs(20)).await;
    assert!(drained.led_at_start > 0, "{drained:?}");
    assert_eq!(drained.still_leading, 0, "{drained:?}");
    assert_eq!(drained.in_flight_at_stop, 0, "{drained:?}");
    assert_eq!(node.stop_reason(), Some(NodeStopped::Shutdown));
    // No election gap: every group already has a leader on the other nodes.
    let leaders = cluster.leaders().await;
    for (group, _) in cluster.routing().groups() {
        let leader = leaders.get(&group).copied();
        assert!(
            leader.is_some_and(|l| l != busiest),
            "{group} led by {leader:?} right after the drain"
        );
    }
    // And nothing more is taken: it did not take effect, send it elsewhere.
    let refused = node.propose(b"k", b"k=v".to_vec()).await.unwrap_err();
    assert_eq!(refused.outcome(), Outcome::NotApplied);
    cluster.shutdown().await;
}
