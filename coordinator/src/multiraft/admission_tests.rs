//! Tests of the admission rules: each forged message that once made raft-rs panic or misbehave
//! is refused, and honest ones pass.
use std::panic::{AssertUnwindSafe, catch_unwind};

use raft::RawNode;
use raft::eraftpb::{Entry, Snapshot};
use raft::storage::MemStorage;

use super::*;

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Node 2 of group {1, 2, 3}, following leader 1 in term 2, with entries 1..=5 of term 2
/// of which 3 are committed.
fn follower() -> RawNode<MemStorage> {
    let storage = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
    {
        let mut core = storage.wl();
        let entries: Vec<_> = (1..=5).map(|i| entry(i, 2)).collect();
        core.append(&entries).unwrap_or_else(|e| panic!("{e}"));
        core.mut_hard_state().term = 2;
        core.mut_hard_state().commit = 3;
    }
    let config = raft::Config {
        id: 2,
        ..raft::Config::default()
    };
    let mut node = RawNode::new(&config, storage, &logger()).unwrap_or_else(|e| panic!("{e}"));
    let mut heartbeat = message(MessageType::MsgHeartbeat, 1, 2);
    heartbeat.commit = 3;
    node.step(heartbeat).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            node.raft.leader_id,
            node.raft.raft_log.committed,
            node.raft.raft_log.last_index()
        ),
        (1, 3, 5)
    );
    node
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Entry::default()
    }
}

fn snapshot_carrying(data: &[u8]) -> Message {
    let mut m = message(MessageType::MsgSnapshot, 1, 2);
    let snapshot = Snapshot {
        data: data.to_vec().into(),
        ..Snapshot::default()
    };
    m.snapshot = Some(snapshot).into();
    m
}

#[test]
fn a_meta_snapshot_that_holds_no_routing_table_is_refused_before_raft_installs_it() {
    let meta = routing::META_GROUP;
    let table = routing::RoutingTable::uniform(16, 2, &[NodeId(1), NodeId(2)], 2).unwrap();
    assert_eq!(
        check_for_group(meta, false, None, &snapshot_carrying(&table.encode())),
        Ok(())
    );
    // Empty: the bootstrap table.
    assert_eq!(
        check_for_group(meta, false, None, &snapshot_carrying(b"")),
        Ok(())
    );
    let refused = check_for_group(meta, false, None, &snapshot_carrying(b"\x00garbage"));
    assert!(
        matches!(refused, Err(Refusal::MalformedSnapshot { .. })),
        "{refused:?}"
    );
}

#[test]
fn a_user_snapshot_is_refused_exactly_when_the_state_machines_check_refuses_it() {
    let check: SnapshotCheck = std::sync::Arc::new(|group, data: &[u8]| {
        if data.starts_with(b"ok") {
            Ok(())
        } else {
            Err(format!("{group}: unreadable"))
        }
    });
    let group = GroupId(7);
    assert_eq!(
        check_for_group(group, false, Some(&check), &snapshot_carrying(b"ok, a map")),
        Ok(())
    );
    assert_eq!(
        check_for_group(group, false, Some(&check), &snapshot_carrying(b"garbage")),
        Err(Refusal::UnrestorableSnapshot {
            why: "g7: unreadable".into()
        })
    );
    // Without a check every snapshot's bytes pass (its metadata is checked in `admit`).
    assert_eq!(
        check_for_group(group, false, None, &snapshot_carrying(b"garbage")),
        Ok(())
    );
}

#[test]
fn a_replica_set_aside_takes_no_leadership_transfer() {
    let timeout_now = message(MessageType::MsgTimeoutNow, 1, 2);
    assert_eq!(
        check_for_group(GroupId(7), true, None, &timeout_now),
        Err(Refusal::TransferToFailedReplica)
    );
    assert_eq!(
        check_for_group(GroupId(7), false, None, &timeout_now),
        Ok(())
    );
    // Everything else still reaches it: it keeps its log in step.
    let append = message(MessageType::MsgAppend, 1, 2);
    assert_eq!(check_for_group(GroupId(7), true, None, &append), Ok(()));
}

fn message(kind: MessageType, from: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = 2;
    m.term = term;
    m
}

/// A node of the cluster that routing does not place on the group.
const IN_CLUSTER: Standing = Standing {
    placed: false,
    in_cluster: true,
};
const OUTSIDER: Standing = Standing {
    placed: false,
    in_cluster: false,
};

#[test]
fn a_node_the_routing_table_places_on_the_group_is_heard_before_its_membership_applies() {
    let node = follower();
    let vote = message(MessageType::MsgRequestVote, 4, 3);
    let placed = Standing {
        placed: true,
        in_cluster: true,
    };
    assert_eq!(admit(&node, NodeId(4), placed, &vote), Ok(Verdict::Step));
    assert!(admit(&node, NodeId(4), IN_CLUSTER, &vote).is_err());
}

/// Proves a rule matters: raft-rs really panics on `m`, and admission refuses it.
fn assert_raft_panics_and_admission_refuses(m: Message, reason: &str) {
    let node = follower();
    let refusal = admit(&node, NodeId(m.from), IN_CLUSTER, &m)
        .expect_err("admission must refuse a message raft-rs panics on");
    assert_eq!(refusal.reason(), reason, "{refusal}");
    let mut node = follower();
    let panicked = catch_unwind(AssertUnwindSafe(|| node.step(m))).is_err();
    assert!(
        panicked,
        "raft-rs no longer panics here: re-read the rule ({reason})"
    );
}

#[test]
fn a_heartbeat_committing_past_the_last_index_is_refused_before_raft_panics() {
    let mut m = message(MessageType::MsgHeartbeat, 3, 2);
    m.commit = 1_000;
    assert_raft_panics_and_admission_refuses(m, "commit_past_last_index");
}

#[test]
fn the_leaders_heartbeat_past_a_lost_log_tail_commits_the_log_that_is_left() {
    let mut node = follower();
    let mut m = message(MessageType::MsgHeartbeat, 1, 2);
    m.commit = 1_000;
    assert_eq!(
        admit(&node, NodeId(1), IN_CLUSTER, &m),
        Ok(Verdict::ClampCommit { to: 5 })
    );
    m.commit = 5;
    node.step(m).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node.raft.raft_log.committed, 5);
}

#[test]
fn an_append_stepping_back_onto_a_committed_entry_is_refused_before_raft_panics() {
    let mut m = message(MessageType::MsgAppend, 1, 3);
    m.index = 3;
    m.log_term = 2;
    m.entries = vec![entry(2, 3)].into();
    assert_raft_panics_and_admission_refuses(m, "malformed_append");
}

#[test]
fn a_snapshot_raft_cannot_restore_is_refused_before_raft_panics() {
    let mut m = message(MessageType::MsgSnapshot, 1, 2);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 10;
    snapshot.mut_metadata().term = 2;
    // 2 is both a voter and a learner: raft-rs's restore fails, and it is fatal.
    snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    snapshot.mut_metadata().mut_conf_state().learners = vec![2];
    m.snapshot = Some(snapshot).into();
    assert_raft_panics_and_admission_refuses(m, "malformed_snapshot");
}

#[test]
fn a_snapshot_with_auto_leave_outside_a_joint_configuration_is_refused() {
    let mut m = message(MessageType::MsgSnapshot, 1, 2);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 10;
    snapshot.mut_metadata().term = 2;
    snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    snapshot.mut_metadata().mut_conf_state().auto_leave = true;
    m.snapshot = Some(snapshot).into();
    assert_raft_panics_and_admission_refuses(m, "malformed_snapshot");
}

#[test]
fn an_honest_snapshot_including_a_joint_configuration_is_admitted() {
    let node = follower();
    let mut m = message(MessageType::MsgSnapshot, 1, 2);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 10;
    snapshot.mut_metadata().term = 2;
    let cs = snapshot.mut_metadata().mut_conf_state();
    cs.voters = vec![1, 2, 4];
    cs.voters_outgoing = vec![1, 2, 3];
    cs.learners_next = vec![3];
    cs.auto_leave = true;
    m.snapshot = Some(snapshot).into();
    assert_eq!(admit(&node, NodeId(1), IN_CLUSTER, &m), Ok(Verdict::Step));
}

#[test]
fn an_empty_read_index_is_refused_before_raft_panics_on_the_leader() {
    let mut leader = follower();
    leader.campaign().unwrap_or_else(|e| panic!("{e}"));
    for from in [1, 3] {
        let mut vote = message(MessageType::MsgRequestVoteResponse, from, leader.raft.term);
        vote.to = 2;
        leader.step(vote).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(leader.is_leader());
    // Commit an entry of the leader's term so that read-index requests are served.
    for from in [1, 3] {
        let mut ack = message(MessageType::MsgAppendResponse, from, leader.raft.term);
        ack.index = leader.raft.raft_log.last_index();
        leader.step(ack).unwrap_or_else(|e| panic!("{e}"));
    }
    let m = message(MessageType::MsgReadIndex, 3, leader.raft.term);
    let refusal = admit(&leader, NodeId(3), IN_CLUSTER, &m).expect_err("refused");
    assert_eq!(refusal.reason(), "malformed_read_index");
    let panicked = catch_unwind(AssertUnwindSafe(|| leader.step(m))).is_err();
    assert!(
        panicked,
        "raft-rs no longer panics on an empty MsgReadIndex"
    );
}

#[test]
fn an_empty_proposal_from_a_peer_is_refused_before_raft_panics() {
    let mut m = message(MessageType::MsgPropose, 1, 0);
    m.term = 0;
    let node = follower();
    assert_eq!(
        admit(&node, NodeId(1), IN_CLUSTER, &m),
        Err(Refusal::ForwardedProposal)
    );
}

#[test]
fn local_only_types_never_come_from_a_peer() {
    let node = follower();
    for kind in [
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgUnreachable,
        MessageType::MsgSnapStatus,
        MessageType::MsgCheckQuorum,
    ] {
        let m = message(kind, 1, 2);
        assert_eq!(
            admit(&node, NodeId(1), IN_CLUSTER, &m),
            Err(Refusal::LocalOnly { kind })
        );
    }
}

#[test]
fn a_non_member_is_refused_whatever_it_sends() {
    let node = follower();
    for kind in [
        MessageType::MsgAppend,
        MessageType::MsgHeartbeat,
        MessageType::MsgRequestVote,
        MessageType::MsgTimeoutNow,
        MessageType::MsgTransferLeader,
    ] {
        let m = message(kind, 9, 2);
        assert_eq!(
            admit(&node, NodeId(9), IN_CLUSTER, &m),
            Err(Refusal::NotAMember { from: NodeId(9) }),
            "{kind:?}"
        );
    }
}

#[test]
fn timeout_now_and_read_index_responses_are_the_leaders_alone() {
    let node = follower();
    for kind in [MessageType::MsgTimeoutNow, MessageType::MsgReadIndexResp] {
        let from_member = message(kind, 3, 2);
        assert!(matches!(
            admit(&node, NodeId(3), IN_CLUSTER, &from_member),
            Err(Refusal::NotFromLeader { .. })
        ));
        let future_term = message(kind, 1, 3);
        assert!(admit(&node, NodeId(1), IN_CLUSTER, &future_term).is_err());
        // A delayed one from an older term goes to raft, which drops it unread.
        let stale = message(kind, 3, 1);
        assert_eq!(
            admit(&node, NodeId(3), IN_CLUSTER, &stale),
            Ok(Verdict::Step)
        );
        let from_leader = message(kind, 1, 2);
        assert_eq!(
            admit(&node, NodeId(1), IN_CLUSTER, &from_leader),
            Ok(Verdict::Step)
        );
    }
}

#[test]
fn a_replica_without_a_leader_hears_a_new_leader_it_does_not_know_yet_and_nothing_else() {
    let storage = MemStorage::new();
    let config = raft::Config {
        id: 4,
        ..raft::Config::default()
    };
    let joining = RawNode::new(&config, storage, &logger()).unwrap_or_else(|e| panic!("{e}"));
    let placed = Standing {
        placed: true,
        in_cluster: true,
    };
    let transfer = message(MessageType::MsgTransferLeader, 1, 2);
    assert_eq!(
        admit(&joining, NodeId(1), placed, &transfer),
        Ok(Verdict::Step)
    );
    assert_eq!(
        admit(&joining, NodeId(7), IN_CLUSTER, &transfer),
        Err(Refusal::NotAMember { from: NodeId(7) })
    );
    for kind in [
        MessageType::MsgAppend,
        MessageType::MsgHeartbeat,
        MessageType::MsgSnapshot,
        MessageType::MsgRequestVote,
    ] {
        let m = message(kind, 7, 2);
        // A node of the cluster may be a leader this replica does not know yet...
        assert!(
            !matches!(
                admit(&joining, NodeId(7), IN_CLUSTER, &m),
                Err(Refusal::NotAMember { .. })
            ),
            "{kind:?}"
        );
        // ...a node outside it never is.
        assert_eq!(
            admit(&joining, NodeId(7), OUTSIDER, &m),
            Err(Refusal::NotAMember { from: NodeId(7) }),
            "{kind:?}"
        );
    }
    let timeout_now = message(MessageType::MsgTimeoutNow, 7, 2);
    assert!(admit(&joining, NodeId(7), IN_CLUSTER, &timeout_now).is_err());
}

#[test]
fn a_joining_replica_that_followed_a_leader_hears_the_next_terms_leader() {
    let storage = MemStorage::new();
    let config = raft::Config {
        id: 4,
        ..raft::Config::default()
    };
    let mut joining = RawNode::new(&config, storage, &logger()).unwrap_or_else(|e| panic!("{e}"));
    // It heard node 2 lead term 2, before any configuration reached it.
    joining
        .step(message(MessageType::MsgHeartbeat, 2, 2))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(RaftView::leader(&joining), Some(NodeId(2)));
    assert!(!RaftView::has_configuration(&joining));
    // Node 1 now leads term 3: heard, though the replica follows node 2 and knows no members.
    for kind in [
        MessageType::MsgAppend,
        MessageType::MsgHeartbeat,
        MessageType::MsgSnapshot,
    ] {
        assert!(
            !matches!(
                admit(&joining, NodeId(1), IN_CLUSTER, &message(kind, 1, 3)),
                Err(Refusal::NotAMember { .. })
            ),
            "{kind:?}"
        );
        // Not at the term it already has a leader for, and never from outside the cluster.
        assert_eq!(
            admit(&joining, NodeId(1), IN_CLUSTER, &message(kind, 1, 2)),
            Err(Refusal::NotAMember { from: NodeId(1) }),
            "{kind:?}"
        );
        assert_eq!(
            admit(&joining, NodeId(1), OUTSIDER, &message(kind, 1, 3)),
            Err(Refusal::NotAMember { from: NodeId(1) }),
            "{kind:?}"
        );
    }
    // A configured follower of a live leader still hears no stranger, whatever its term.
    let node = follower();
    assert_eq!(
        admit(
            &node,
            NodeId(7),
            IN_CLUSTER,
            &message(MessageType::MsgAppend, 7, 99)
        ),
        Err(Refusal::NotAMember { from: NodeId(7) })
    );
}

#[test]
fn malformed_appends_are_refused_and_honest_ones_admitted() {
    let node = follower();
    let mut gap = message(MessageType::MsgAppend, 1, 2);
    gap.index = 5;
    gap.log_term = 2;
    gap.entries = vec![entry(7, 2)].into();
    assert!(matches!(
        admit(&node, NodeId(1), IN_CLUSTER, &gap),
        Err(Refusal::MalformedAppend { .. })
    ));
    let mut future_term = gap.clone();
    future_term.entries = vec![entry(6, 3)].into();
    assert!(matches!(
        admit(&node, NodeId(1), IN_CLUSTER, &future_term),
        Err(Refusal::MalformedAppend { .. })
    ));
    let mut huge = message(MessageType::MsgAppend, 1, u64::MAX);
    huge.index = 5;
    assert!(matches!(
        admit(&node, NodeId(1), IN_CLUSTER, &huge),
        Err(Refusal::OutOfRange { field: "term", .. })
    ));
    let mut honest = gap;
    honest.entries = vec![entry(6, 2), entry(7, 2)].into();
    assert_eq!(
        admit(&node, NodeId(1), IN_CLUSTER, &honest),
        Ok(Verdict::Step)
    );
}

#[test]
fn an_ack_past_the_leaders_log_is_refused() {
    let mut leader = follower();
    leader.campaign().unwrap_or_else(|e| panic!("{e}"));
    let mut vote = message(MessageType::MsgRequestVoteResponse, 1, leader.raft.term);
    vote.to = 2;
    leader.step(vote).unwrap_or_else(|e| panic!("{e}"));
    assert!(leader.is_leader());
    let mut ack = message(MessageType::MsgAppendResponse, 3, leader.raft.term);
    ack.index = leader.raft.raft_log.last_index() + 100;
    assert!(matches!(
        admit(&leader, NodeId(3), IN_CLUSTER, &ack),
        Err(Refusal::AckPastLastIndex { .. })
    ));
}
