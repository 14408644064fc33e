//! Quiescence: idle groups stop ticking and heartbeating; node-level liveness pings replace
//! per-group heartbeats; any work wakes a group at once; a quiet group's dead leader is
//! replaced within the liveness timeout plus one election timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use common::{Kv, Workload, assert_acked_everywhere, assert_replicas_agree, elect_all, groups};
use pontoon_coordinator::testkit::sim::{SimCluster, SimConfig};
use pontoon_coordinator::{GroupCounts, Outcome, RaftConfig, RequestError, Role};
use routing::NodeId;

const TICK: u64 = 5; // SimConfig's steps per tick

fn cluster(dir: &std::path::Path, groups: u64, seed: u64) -> SimCluster<Kv> {
    SimCluster::new(dir, SimConfig::new(3, groups, seed), |_| Kv::default()).unwrap()
}

fn all_quiet(c: &SimCluster<Kv>) -> bool {
    c.node_ids().iter().all(|n| {
        groups(c)
            .iter()
            .all(|g| c.status(*n, *g).is_none_or(|s| s.quiet))
    })
}

#[test]
fn idle_groups_go_quiet_and_cost_only_liveness_pings() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 1_000, 11);
    elect_all(&mut c, 3_000);
    assert!(
        c.run_until(2_000, all_quiet).unwrap(),
        "every replica of every group went quiet"
    );
    let ticks = 60;
    let before: Vec<_> = c
        .node_ids()
        .iter()
        .map(|n| c.core(*n).unwrap().stats().clone())
        .collect();
    c.run(ticks * TICK).unwrap();
    let config = RaftConfig::default();
    for (n, b) in c.node_ids().iter().zip(before) {
        let a = c.core(*n).unwrap().stats().clone();
        assert_eq!(
            a.raft_messages, b.raft_messages,
            "{n}: no raft message at all while quiet"
        );
        let per_peer_per_tick = (a.envelopes - b.envelopes) as f64 / 2.0 / ticks as f64;
        let ping_rate = 1.0 / config.liveness_interval_ticks as f64;
        assert!(
            per_peer_per_tick <= ping_rate + 0.05,
            "{n}: {per_peer_per_tick} envelopes per peer per tick"
        );
        assert_eq!(
            a.peers_lost, b.peers_lost,
            "{n}: liveness pings keep every peer alive"
        );
    }
    assert!(all_quiet(&c));
    let status = c.status(NodeId(1), groups(&c)[0]).unwrap();
    assert!(status.quiet, "quiet groups show in status()");
    // The counts metrics publish agree with every group's status, without copying them.
    for n in c.node_ids() {
        let mut from_status = GroupCounts::default();
        for g in groups(&c) {
            if let Some(s) = c.status(n, g) {
                from_status.add(s.role, s.quiet, s.leader.is_none(), s.set_aside);
            }
        }
        let counts = c.core(n).unwrap().group_counts();
        assert_eq!(counts, from_status, "{n}");
        assert_eq!(counts.quiet, counts.total, "{n}: all quiet");
        assert!(
            counts.leaders > 0 && counts.followers > 0,
            "{n}: {counts:?}"
        );
    }
}

#[test]
fn a_proposal_wakes_a_quiet_group_and_commits_as_fast_as_on_an_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 8, 12);
    elect_all(&mut c, 3_000);
    // Active group: commit latency in steps.
    let g = groups(&c)[0];
    let mut w = Workload::default();
    w.round(&mut c, [g], 0);
    let start = c.now();
    w.settle(&mut c, 1_000);
    let active_steps = c.now() - start;
    assert!(c.run_until(3_000, all_quiet).unwrap());
    w.round(&mut c, [g], 1);
    let start = c.now();
    w.settle(&mut c, 1_000);
    let quiet_steps = c.now() - start;
    assert_eq!(w.acked.len(), 2);
    assert!(
        quiet_steps <= active_steps + 1,
        "quiet group committed in {quiet_steps} steps, active in {active_steps}"
    );
}

#[test]
fn a_quiet_groups_dead_leader_is_replaced_within_liveness_timeout_plus_an_election() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 16, 13);
    elect_all(&mut c, 3_000);
    let mut w = Workload::default();
    let gs = groups(&c);
    w.round(&mut c, gs.clone(), 0);
    w.settle(&mut c, 2_000);
    assert!(c.run_until(3_000, all_quiet).unwrap());
    let victim = c.leader(gs[0]).unwrap();
    c.crash(victim);
    let start = c.now();
    let replaced = c
        .run_until(10_000, |c| {
            groups(c)
                .iter()
                .all(|g| matches!(c.leader(*g), Some(l) if l != victim))
        })
        .unwrap();
    assert!(replaced);
    let ticks = (c.now() - start) / TICK;
    let config = RaftConfig::default();
    // The liveness timeout, then one election timeout at most (plus the vote round trips).
    let bound = config.liveness_timeout_ticks + config.election_tick + 2;
    eprintln!("quiet-group failover: {ticks} ticks (bound {bound})");
    assert!(
        ticks as usize <= bound,
        "failover took {ticks} ticks, bound {bound}"
    );
    w.round(&mut c, gs.clone(), 1);
    w.settle(&mut c, 2_000);
    c.restart(victim).unwrap();
    c.run(2_000).unwrap();
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
}

#[test]
fn a_partition_that_heals_while_groups_are_quiet_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 16, 14);
    elect_all(&mut c, 3_000);
    let mut w = Workload::default();
    let gs = groups(&c);
    w.round(&mut c, gs.clone(), 0);
    w.settle(&mut c, 2_000);
    assert!(c.run_until(3_000, all_quiet).unwrap());
    c.net().isolate(NodeId(2));
    c.run(60 * TICK).unwrap();
    // Writes go on wherever a majority is.
    for round in 1..4 {
        w.round(&mut c, gs.clone(), round);
        w.settle(&mut c, 3_000);
        w.tokens.clear();
    }
    c.net().heal();
    assert!(c.run_until(5_000, |c| c.all_groups_have_leaders()).unwrap());
    w.round(&mut c, gs.clone(), 9);
    w.settle(&mut c, 3_000);
    c.run(2_000).unwrap();
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
    assert!(
        w.acked.keys().filter(|(_, k)| k == "k9").count() == 16,
        "every group takes writes after the heal"
    );
}

fn campaigning_by_status(c: &SimCluster<Kv>, node: NodeId) -> usize {
    groups(c)
        .iter()
        .filter_map(|g| c.status(node, *g))
        .filter(|s| matches!(s.role, Role::Candidate | Role::PreCandidate))
        .count()
}

/// Steps until every group has a leader, checking after each step that no node has started
/// more elections than its budget allows (all at once, then `budget / election_tick` per tick)
/// and, now and then, that its count of campaigning groups matches the groups' roles.
fn elect_within_budget(c: &mut SimCluster<Kv>, budget: usize, max_steps: u64) -> u64 {
    let start = c.now();
    let refill = (budget / RaftConfig::default().election_tick).max(1) as u64;
    let started = |c: &SimCluster<Kv>, n: NodeId| {
        c.core(n).map(|core| {
            (
                core.stats().campaigns_started,
                core.stats().campaigns_deferred,
            )
        })
    };
    let before: Vec<_> = c.node_ids().iter().map(|n| started(c, *n)).collect();
    while !c.all_groups_have_leaders() {
        assert!(
            c.now() - start < max_steps,
            "not every group elected within {max_steps} steps"
        );
        c.step().unwrap();
        let ticks = (c.now() - start) / TICK + 1;
        for (n, b) in c.node_ids().into_iter().zip(&before) {
            let (Some((s0, _)), Some((s, _))) = (b, started(c, n)) else {
                continue;
            };
            assert!(
                s - s0 <= budget as u64 + refill * ticks,
                "{n} started {} elections in {ticks} ticks, budget {budget}",
                s - s0
            );
            if c.now().is_multiple_of(97) {
                assert_eq!(
                    c.core(n).unwrap().campaigning(),
                    campaigning_by_status(c, n)
                );
            }
        }
    }
    let deferred: u64 = c
        .node_ids()
        .iter()
        .zip(&before)
        .filter_map(|(n, b)| Some(started(c, *n)?.1 - b.as_ref()?.1))
        .sum();
    assert!(deferred > 0, "groups waited for their turn to campaign");
    c.now() - start
}

#[test]
fn groups_electing_all_at_once_campaign_within_the_budget_and_all_elect() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 8;
    let config = SimConfig::new(3, 300, 15).raft(RaftConfig::default().max_campaigns(budget));
    let mut c = SimCluster::new(dir.path(), config, |_| Kv::default()).unwrap();
    // The worst start: every replica of every group times out on the first tick.
    for n in c.node_ids() {
        for g in groups(&c) {
            if c.status(n, g).is_some() {
                c.core_mut(n).unwrap().campaign_soon(g).unwrap();
            }
        }
    }
    let steps = elect_within_budget(&mut c, budget, 20_000);
    eprintln!("300 groups elected in {} ticks", steps / TICK);
    let mut w = Workload::default();
    let gs = groups(&c);
    w.round(&mut c, gs, 0);
    w.settle(&mut c, 3_000);
    c.run(1_000).unwrap();
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
}

#[test]
fn a_dead_node_that_led_many_quiet_groups_is_replaced_within_the_campaign_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 8;
    let config = SimConfig::new(3, 120, 16).raft(RaftConfig::default().max_campaigns(budget));
    let mut c = SimCluster::new(dir.path(), config, |_| Kv::default()).unwrap();
    elect_all(&mut c, 10_000);
    assert!(c.run_until(5_000, all_quiet).unwrap());
    let victim = NodeId(1);
    let led = groups(&c)
        .iter()
        .filter(|g| c.leader(**g) == Some(victim))
        .count();
    assert!(led > 2 * budget, "the victim leads {led} quiet groups");
    c.crash(victim);
    let steps = elect_within_budget(&mut c, budget, 20_000);
    eprintln!("{led} groups failed over in {} ticks", steps / TICK);
    let mut w = Workload::default();
    let gs = groups(&c);
    w.round(&mut c, gs, 0);
    w.settle(&mut c, 3_000);
    c.restart(victim).unwrap();
    c.run(2_000).unwrap();
    assert_acked_everywhere(&c, &w.acked);
    assert_replicas_agree(&c);
}

#[test]
fn a_restarted_node_learns_every_quiet_groups_leader_within_a_liveness_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 32, 21);
    elect_all(&mut c, 3_000);
    assert!(c.run_until(3_000, all_quiet).unwrap());
    let config = RaftConfig::default();
    // A node that leads nothing, down long enough for its peers to hold it down.
    let gs = groups(&c);
    let victim = c
        .node_ids()
        .into_iter()
        .find(|n| gs.iter().all(|g| c.leader(*g) != Some(*n)))
        .unwrap_or(NodeId(3));
    c.crash(victim);
    c.run((config.liveness_timeout_ticks as u64 + 5) * TICK)
        .unwrap();
    c.restart(victim).unwrap();
    // Its quiet leaders send it nothing on their own; hearing it back, each sends one
    // heartbeat for every quiet group it leads with it. Without that, the restarted replicas
    // would wait out an election timeout (at least `election_tick`) before asking.
    let bound = config.liveness_interval_ticks + 3;
    assert!(bound < config.election_tick);
    let knows_all = |c: &SimCluster<Kv>| {
        groups(c)
            .iter()
            .all(|g| c.status(victim, *g).is_none_or(|s| s.leader.is_some()))
    };
    assert!(
        c.run_until(bound as u64 * TICK, knows_all).unwrap(),
        "{victim} knows every leader within {bound} ticks of its restart"
    );
}

#[test]
fn a_node_cut_off_from_its_peers_refuses_requests_at_once_as_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 4, 22);
    elect_all(&mut c, 3_000);
    assert!(c.run_until(3_000, all_quiet).unwrap());
    let gs = groups(&c);
    let cut = c.leader(gs[0]).unwrap();
    c.net().isolate(cut);
    let config = RaftConfig::default();
    c.run((config.liveness_timeout_ticks as u64 + 2) * TICK)
        .unwrap();
    for g in &gs {
        // Refused before raft sees it, so it cannot have taken effect: not held to the
        // deadline, and safe to send to a node in the majority.
        let proposed = c.propose(cut, *g, b"k=v".to_vec()).unwrap_err();
        assert_eq!(
            proposed,
            RequestError::QuorumUnreachable { group: *g },
            "{g}"
        );
        assert_eq!(proposed.outcome(), Outcome::NotApplied);
        let read = c.read_index(cut, *g).unwrap_err();
        assert_eq!(read, RequestError::QuorumUnreachable { group: *g });
    }
    c.net().heal();
    assert!(
        c.run_until(5_000, |c| c
            .core(cut)
            .is_some_and(|core| core.down_peers().next().is_none()))
            .unwrap(),
        "its peers are heard again"
    );
    // Taken again (or, if leadership moved meanwhile, the caller is sent to the leader).
    let again = c.propose(cut, gs[0], b"k=w".to_vec());
    assert!(
        !matches!(again, Err(RequestError::QuorumUnreachable { .. })),
        "{again:?}"
    );
}

#[test]
fn a_node_restarted_before_its_peers_miss_it_learns_every_leader_within_a_liveness_interval() {
    let config = RaftConfig::default();
    // Its peers never declare it down, so nothing tells them it restarted: it asks. The quiet
    // leaders answer; the groups it led itself (their followers still follow it) elect at
    // once when it asks them. Without the probes it waits out an election timeout.
    let bound = config.liveness_interval_ticks + 3;
    assert!(bound < config.election_tick);
    for seed in [21, 23, 25] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cluster(dir.path(), 32, seed);
        elect_all(&mut c, 3_000);
        assert!(c.run_until(3_000, all_quiet).unwrap());
        let victim = NodeId(3);
        c.crash(victim);
        c.run(2 * TICK).unwrap();
        c.restart(victim).unwrap();
        let knows_all = |c: &SimCluster<Kv>| {
            groups(c)
                .iter()
                .all(|g| c.status(victim, *g).is_none_or(|s| s.leader.is_some()))
        };
        assert!(
            c.run_until(bound as u64 * TICK, knows_all).unwrap(),
            "seed {seed}: {victim} knows every leader within {bound} ticks of its restart"
        );
    }
}
