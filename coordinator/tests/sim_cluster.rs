//! The coordinator over the in-memory network: 3 nodes × 64 groups through elections, leader
//! loss, partitions, full restarts and snapshot catch-up. Every acknowledged write must be on
//! every replica afterwards and state machines must agree.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use common::{
    Kv, Workload, assert_acked_everywhere, assert_replicas_agree, elect_all, groups, missing_acked,
};
use pontoon_coordinator::RaftConfig;
use pontoon_coordinator::testkit::sim::{SimCluster, SimConfig};
use routing::{GroupId, NodeId};

fn cluster(dir: &std::path::Path, groups: u64, seed: u64, raft: RaftConfig) -> SimCluster<Kv> {
    SimCluster::new(dir, SimConfig::new(3, groups, seed).raft(raft), |_| {
        Kv::default()
    })
    .unwrap()
}

fn busiest_leader(cluster: &SimCluster<Kv>) -> NodeId {
    let mut counts = std::collections::BTreeMap::<NodeId, usize>::new();
    for g in groups(cluster) {
        if let Some(l) = cluster.leader(g) {
            *counts.entry(l).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(n, _)| n)
        .unwrap()
}

#[test]
fn three_nodes_64_groups_elect_replicate_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 64, 1, RaftConfig::default());
    elect_all(&mut c, 2_000);
    let mut w = Workload::default();
    for round in 0..5 {
        let gs = groups(&c);
        w.round(&mut c, gs, round);
    }
    w.settle(&mut c, 2_000);
    assert_eq!(w.failed, 0);
    assert_eq!(w.acked.len(), 64 * 5);
    c.run(50).unwrap();
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
}

#[test]
fn losing_the_busiest_leader_node_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 64, 2, RaftConfig::default());
    elect_all(&mut c, 2_000);
    let mut w = Workload::default();
    let gs = groups(&c);
    w.round(&mut c, gs.clone(), 0);
    w.settle(&mut c, 2_000);
    let victim = busiest_leader(&c);
    // Writes in flight when the leader dies may be lost, but never acknowledged and lost.
    w.round(&mut c, gs.clone(), 1);
    c.step().unwrap();
    c.crash(victim);
    w.settle(&mut c, 200);
    w.tokens.clear();
    elect_all(&mut c, 3_000);
    assert!(gs.iter().all(|g| c.leader(*g) != Some(victim)));
    w.round(&mut c, gs.clone(), 2);
    w.settle(&mut c, 2_000);
    assert!(
        w.acked.keys().filter(|(_, k)| k == "k2").count() == 64,
        "every group takes writes without {victim}"
    );
    c.restart(victim).unwrap();
    c.run(1_500).unwrap();
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
}

#[test]
fn a_minority_partition_heals_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 64, 3, RaftConfig::default());
    elect_all(&mut c, 2_000);
    c.net().isolate(NodeId(3));
    // Groups led by node 3 move to the majority side within a few election timeouts.
    let moved = c
        .run_until(5_000, |c| groups(c).iter().all(|g| matches!(c.leader(*g), Some(l) if l != NodeId(3) && c.status(l, *g).map(|s| s.term) >= c.status(NodeId(3), *g).map(|s| s.term))))
        .unwrap();
    assert!(moved, "majority side elected leaders for every group");
    let mut w = Workload::default();
    for round in 0..3 {
        let gs: Vec<GroupId> = groups(&c);
        for g in gs {
            if let Some(l) = c.leader(g).filter(|l| *l != NodeId(3)) {
                let key = format!("k{round}");
                let value = format!("v{round}");
                if let Ok(t) = c.propose(l, g, format!("{key}={value}").into_bytes()) {
                    w.tokens.insert(t, (g, key, value));
                }
            }
        }
        w.settle(&mut c, 2_000);
    }
    assert_eq!(w.acked.len(), 64 * 3);
    c.net().heal();
    c.run(2_000).unwrap();
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
}

#[test]
fn a_full_restart_of_every_node_recovers_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 64, 4, RaftConfig::default());
    elect_all(&mut c, 2_000);
    let mut w = Workload::default();
    for round in 0..3 {
        let gs = groups(&c);
        w.round(&mut c, gs, round);
    }
    w.settle(&mut c, 2_000);
    assert_eq!(w.acked.len(), 64 * 3);
    for n in c.node_ids() {
        c.crash(n);
    }
    for n in c.node_ids() {
        c.restart(n).unwrap();
    }
    elect_all(&mut c, 3_000);
    let gs = groups(&c);
    w.round(&mut c, gs, 3);
    w.settle(&mut c, 2_000);
    assert_eq!(w.acked.len(), 64 * 4);
    c.run(200).unwrap();
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
}

#[test]
fn a_node_that_missed_compacted_entries_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 4, 5, RaftConfig::default().compaction(20, 5));
    elect_all(&mut c, 2_000);
    // Keep node 3 a follower everywhere, then stop it.
    for g in groups(&c) {
        if c.leader(g) == Some(NodeId(3)) {
            c.core_mut(NodeId(3))
                .unwrap()
                .transfer_leader(g, NodeId(1))
                .unwrap();
        }
    }
    assert!(
        c.run_until(2_000, |c| groups(c)
            .iter()
            .all(|g| matches!(c.leader(*g), Some(l) if l != NodeId(3))))
            .unwrap()
    );
    c.crash(NodeId(3));
    let mut w = Workload::default();
    for round in 0..60 {
        let gs = groups(&c);
        w.round(&mut c, gs, round);
        w.settle(&mut c, 500);
    }
    assert_eq!(w.acked.len(), 4 * 60);
    // The survivors compacted past everything node 3 has.
    c.run(100).unwrap();
    for g in groups(&c) {
        let s = c.status(NodeId(1), g).unwrap();
        assert!(
            s.first_index > 2,
            "{g} compacted on n1 (first index {})",
            s.first_index
        );
    }
    c.restart(NodeId(3)).unwrap();
    let caught_up = c
        .run_until(3_000, |c| {
            groups(c).iter().all(|g| {
                c.status(NodeId(3), *g).map(|s| s.applied)
                    == c.status(NodeId(1), *g).map(|s| s.applied)
            })
        })
        .unwrap();
    assert!(caught_up, "node 3 caught up");
    for g in groups(&c) {
        let s = c.status(NodeId(3), g).unwrap();
        assert!(
            s.first_index > 2,
            "{g} on n3 was installed from a snapshot (first index {})",
            s.first_index
        );
    }
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
}

#[test]
fn idle_heartbeats_of_1000_groups_travel_as_one_message_per_peer_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    // Quiescence off: this test proves coalescing of the heartbeats that do flow.
    let mut c = cluster(dir.path(), 1_000, 6, RaftConfig::default().quiesce(false));
    // Node 1 leads everything.
    for g in groups(&c) {
        c.core_mut(NodeId(1)).unwrap().campaign(g).unwrap();
    }
    assert!(
        c.run_until(3_000, |c| groups(c)
            .iter()
            .all(|g| c.leader(*g) == Some(NodeId(1))))
            .unwrap()
    );
    c.run(200).unwrap();
    let ticks = 40;
    let before = c.core(NodeId(1)).unwrap().stats().clone();
    let follower_before = c.core(NodeId(2)).unwrap().stats().clone();
    c.run(ticks * 5).unwrap();
    let after = c.core(NodeId(1)).unwrap().stats().clone();
    let follower_after = c.core(NodeId(2)).unwrap().stats().clone();
    let envelopes = after.envelopes - before.envelopes;
    let per_peer_per_tick = envelopes as f64 / 2.0 / ticks as f64;
    assert!(
        per_peer_per_tick <= 1.0,
        "leader sent {envelopes} envelopes in {ticks} ticks to 2 peers"
    );
    let hb = after.heartbeats_coalesced - before.heartbeats_coalesced;
    assert!(
        hb >= 1_000 * 2 * (ticks / 2 - 1),
        "the heartbeats themselves were all sent ({hb})"
    );
    let responses = follower_after.envelopes - follower_before.envelopes;
    assert!(
        responses as f64 / ticks as f64 <= 1.0,
        "follower answered with {responses} envelopes"
    );
}

/// The whole cluster loses power right after acknowledging writes. With every cycle made
/// durable before its messages leave, nothing acknowledged is lost; with the injected
/// "wrote its raft log without fsync" bug, the same run loses acknowledged writes, and the
/// check that guards every other test sees it.
#[test]
fn a_cluster_wide_crash_after_acks_loses_nothing_unless_the_log_skips_fsync() {
    let run = |unsynced: bool| {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig::new(3, 8, 7).unsynced_log(unsynced);
        let mut c = SimCluster::new(dir.path(), config, |_| Kv::default()).unwrap();
        elect_all(&mut c, 2_000);
        let mut w = Workload::default();
        for round in 0..4 {
            let gs = groups(&c);
            w.round(&mut c, gs, round);
            w.settle(&mut c, 2_000);
        }
        assert_eq!(w.acked.len(), 8 * 4);
        for n in c.node_ids() {
            c.crash(n);
        }
        for n in c.node_ids() {
            c.restart(n).unwrap();
        }
        // Replicas recover what their logs hold; nothing new is written.
        c.run(1_000).unwrap();
        missing_acked(&c, &w.acked)
    };
    assert_eq!(
        run(false),
        0,
        "durable cycles keep every acknowledged write"
    );
    assert!(
        run(true) > 0,
        "the unsynced-log bug must lose acknowledged writes, and the check must see it"
    );
}
