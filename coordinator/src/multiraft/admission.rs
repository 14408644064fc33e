//! Which raft messages from the network a group replica may step.
//!
//! The transport proves who sent a message (the node id in its certificate); this module
//! decides whether that sender may say it to this group, before raft-rs sees a byte. Two
//! reasons it must run first:
//!
//! - **Authorisation.** A CA-signed certificate makes a node, not a member of every group.
//!   Raft itself steps a message from anyone: a non-member's `MsgTimeoutNow` forces an
//!   election, its `MsgReadIndexResp` would answer a read. A message is stepped only if its
//!   sender is a voter or learner of the group (joint configurations included), the leader
//!   the replica follows, or a node the routing table places on the group. One exception keeps
//!   membership changes live: a replica with no leader (a lagging follower whose configuration
//!   predates a new member that now leads, a replica joining its group) hears appends,
//!   heartbeats, snapshots and vote requests from any node of the cluster (a member of the
//!   routing table). A replica that follows a live leader never does, so no node can depose a
//!   healthy leader of a group it is not in, and a node outside the cluster is never heard.
//!   The one place an outsider may speak first is the meta replica of a node joining a
//!   cluster, which cannot know the cluster's members before its first meta snapshot.
//! - **raft-rs panics on some forged input** (`fatal!`): a heartbeat commit past the last
//!   index, an empty `MsgPropose`, an empty `MsgReadIndex`, an append whose entries step back
//!   onto a committed one, a snapshot whose configuration raft cannot restore. Each is checked
//!   here, and the message refused with a [`Refusal`] that names the rule (a heartbeat past the
//!   log from the replica's own leader is the one exception: see [`Verdict::ClampCommit`]).
//!
//! The rules read the replica only through [`RaftView`], whose one implementation (for
//! `RawNode`) is the single read-only reach into raft-rs here. When raft-rs is upgraded, re-read
//! its `step`, `handle_append_entries`, `handle_heartbeat`, `restore` and `read_only` against
//! the rules below.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfState, Message, MessageType};
use raft::{Changer, ProgressTracker};
use routing::{GroupId, NodeId};

use super::types::SnapshotCheck;

/// Terms and indexes at or above this are refused: no honest cluster gets near it (2^48
/// elections), and it keeps raft's `term + 1` and `index + 1` far from overflowing.
pub(crate) const INDEX_LIMIT: u64 = 1 << 48;

/// What the admission rules need to know about one replica, as raft-rs holds it.
pub(crate) trait RaftView {
    /// The replica's current term.
    fn term(&self) -> u64;
    /// The leader this replica follows in its current term (it may be itself).
    fn leader(&self) -> Option<NodeId>;
    /// Whether this replica leads its group.
    fn is_leader(&self) -> bool;
    /// The last index of the local log (persisted or not).
    fn last_index(&self) -> u64;
    /// Whether the replica has a configuration (a joining replica has none until its first
    /// snapshot).
    fn has_configuration(&self) -> bool;
    /// Whether `node` is a voter or learner of the replica's configuration, incoming or
    /// outgoing.
    fn is_member(&self, node: NodeId) -> bool;
}

/// The one reading of raft-rs state the rules need (read-only).
impl<S: raft::Storage> RaftView for raft::RawNode<S> {
    fn term(&self) -> u64 {
        self.raft.term
    }
    fn leader(&self) -> Option<NodeId> {
        (self.raft.leader_id != 0).then_some(NodeId(self.raft.leader_id))
    }
    fn is_leader(&self) -> bool {
        self.raft.state == raft::StateRole::Leader
    }
    fn last_index(&self) -> u64 {
        self.raft.raft_log.last_index()
    }
    fn has_configuration(&self) -> bool {
        !self.raft.prs().conf().voters().ids().is_empty()
    }
    fn is_member(&self, node: NodeId) -> bool {
        self.raft.prs().get(node.get()).is_some()
    }
}

/// Why a raft message from a peer was not stepped. Nothing of it took effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The type is raft-internal (`MsgHup`, `MsgBeat`, `MsgUnreachable`, `MsgSnapStatus`,
    /// `MsgCheckQuorum`) and never crosses the network.
    #[error("{kind:?} is a local message type and never comes from a peer")]
    LocalOnly {
        /// The message type.
        kind: MessageType,
    },
    /// Proposals are not forwarded between nodes at the raft level (followers answer
    /// `NotLeader` instead), so a `MsgPropose` from the network is never honest.
    #[error("MsgPropose is not accepted from a peer: proposals are not forwarded by raft")]
    ForwardedProposal,
    /// The sender is not a voter or learner of the group (nor placed on it by the routing
    /// table, for a replica without a configuration yet).
    #[error("{from} is not a member of the group")]
    NotAMember {
        /// The sender.
        from: NodeId,
    },
    /// `MsgTimeoutNow` (start an election now) and `MsgReadIndexResp` (a read's commit index)
    /// are only the current leader's to send.
    #[error("{kind:?} from {from}, who does not lead the group in term {term}")]
    NotFromLeader {
        /// The message type.
        kind: MessageType,
        /// The sender.
        from: NodeId,
        /// This replica's term.
        term: u64,
    },
    /// A term or index at or above 2^48 (no honest cluster gets near it; raft's `+ 1` stays
    /// far from overflowing).
    #[error("{field} {value} is out of range")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A heartbeat would commit past this replica's log. Clamping it would be unsafe: the
    /// entries past what the leader knows to match may differ from the leader's.
    #[error("commit {commit} is past this replica's last index {last_index}")]
    CommitPastLastIndex {
        /// The commit index the message carries.
        commit: u64,
        /// This replica's last index.
        last_index: u64,
    },
    /// An append's entries must follow its index one by one, in terms no higher than the
    /// message's own.
    #[error("append entries are malformed: {why}")]
    MalformedAppend {
        /// What is wrong.
        why: &'static str,
    },
    /// An acknowledgement of entries past the leader's own log.
    #[error("ack of index {index} past this leader's last index {last_index}")]
    AckPastLastIndex {
        /// The acknowledged index.
        index: u64,
        /// The leader's last index.
        last_index: u64,
    },
    /// A `MsgReadIndex` carries its request context as exactly one entry.
    #[error("MsgReadIndex carries {entries} entries, not 1")]
    MalformedReadIndex {
        /// How many it carries.
        entries: usize,
    },
    /// A snapshot raft could not restore (its configuration is not one raft can reach, or its
    /// metadata does not fit the message).
    #[error("snapshot is malformed: {why}")]
    MalformedSnapshot {
        /// What is wrong.
        why: String,
    },
    /// A snapshot whose bytes this node's state machine could not restore (see
    /// `StateMachineFactory::check_snapshot`): refused before raft installs it.
    #[error("snapshot this node could not restore: {why}")]
    UnrestorableSnapshot {
        /// The state machine's error.
        why: String,
    },
    /// `MsgTimeoutNow` to a replica set aside (its state machine failed): it must not lead.
    #[error("a leadership transfer to a replica whose state machine failed")]
    TransferToFailedReplica,
}

impl Refusal {
    /// A short, fixed label for counters and metrics (bounded cardinality).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::LocalOnly { .. } => "local_only_type",
            Self::ForwardedProposal => "forwarded_proposal",
            Self::NotAMember { .. } => "not_a_member",
            Self::NotFromLeader { .. } => "not_from_leader",
            Self::OutOfRange { .. } => "out_of_range",
            Self::CommitPastLastIndex { .. } => "commit_past_last_index",
            Self::MalformedAppend { .. } => "malformed_append",
            Self::AckPastLastIndex { .. } => "ack_past_last_index",
            Self::MalformedReadIndex { .. } => "malformed_read_index",
            Self::MalformedSnapshot { .. } => "malformed_snapshot",
            Self::UnrestorableSnapshot { .. } => "unrestorable_snapshot",
            Self::TransferToFailedReplica => "transfer_to_failed_replica",
        }
    }
}

/// Where the sender of a message stands, as the routing table says (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Standing {
    /// The routing table places the sender on this group (listed before a membership change
    /// adds it, and until one removes it).
    pub(crate) placed: bool,
    /// The sender is a node of the cluster (or, for a replica that cannot know the cluster
    /// yet, may be one).
    pub(crate) in_cluster: bool,
}

/// How an admitted message is stepped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// As it is.
    Step,
    /// With its commit index lowered to `to`, this replica's last index. The leader this
    /// replica follows, in its own term, says the replica acknowledged entries its log no
    /// longer holds: the replica lost log it had made durable. raft-rs would panic; its log is
    /// a prefix of what it acknowledged (a loss takes a tail), so every entry in it matches the
    /// leader's and committing up to its end is what raft intends. The caller raises an alarm.
    ClampCommit {
        /// The replica's last index.
        to: u64,
    },
}

/// Decides whether `replica` may step `m`, which `from` (as its certificate proves) sent.
///
/// # Errors
/// The first rule `m` breaks, as a [`Refusal`].
pub(crate) fn admit(
    replica: &impl RaftView,
    from: NodeId,
    standing: Standing,
    m: &Message,
) -> Result<Verdict, Refusal> {
    let kind = m.get_msg_type();
    check_type(kind)?;
    // The leader this replica follows is known even before its configuration lists it.
    let known = replica.leader() == Some(from)
        || (replica.has_configuration() && replica.is_member(from))
        || standing.placed;
    let heard_while_leaderless =
        standing.in_cluster && replica.leader().is_none() && claims_leadership(kind);
    if !(known || heard_while_leaderless) {
        return Err(Refusal::NotAMember { from });
    }
    for (field, value) in [
        ("term", m.term),
        ("log_term", m.log_term),
        ("index", m.index),
        ("commit", m.commit),
        ("reject_hint", m.reject_hint),
    ] {
        if value >= INDEX_LIMIT {
            return Err(Refusal::OutOfRange { field, value });
        }
    }
    match kind {
        MessageType::MsgTimeoutNow | MessageType::MsgReadIndexResp => {
            // An older term's message is stale (delayed, duplicated): raft drops it unread.
            let current = m.term >= replica.term();
            if current && (replica.leader() != Some(from) || m.term != replica.term()) {
                return Err(Refusal::NotFromLeader {
                    kind,
                    from,
                    term: replica.term(),
                });
            }
        }
        // raft-rs commits a heartbeat's index as it is (`commit_to`) and panics past the last
        // index; an honest leader sends at most what this replica acknowledged. An older
        // term's heartbeat is stale and raft drops it unread.
        MessageType::MsgHeartbeat
            if m.commit > replica.last_index() && m.term >= replica.term() =>
        {
            if replica.leader() == Some(from) && m.term == replica.term() {
                return Ok(Verdict::ClampCommit {
                    to: replica.last_index(),
                });
            }
            return Err(Refusal::CommitPastLastIndex {
                commit: m.commit,
                last_index: replica.last_index(),
            });
        }
        MessageType::MsgAppend => check_append(m)?,
        MessageType::MsgAppendResponse
            if replica.is_leader() && !m.reject && m.index > replica.last_index() =>
        {
            return Err(Refusal::AckPastLastIndex {
                index: m.index,
                last_index: replica.last_index(),
            });
        }
        MessageType::MsgReadIndex if m.entries.len() != 1 => {
            return Err(Refusal::MalformedReadIndex {
                entries: m.entries.len(),
            });
        }
        MessageType::MsgSnapshot => check_snapshot(m)?,
        _ => {}
    }
    Ok(Verdict::Step)
}

/// What a node of the cluster this replica does not know as a member may still say to it, if
/// the replica has no leader: it may be a member of a configuration this replica has not
/// applied yet (a lagging follower hears of a new member only through that member's appends).
fn claims_leadership(kind: MessageType) -> bool {
    matches!(
        kind,
        MessageType::MsgAppend
            | MessageType::MsgHeartbeat
            | MessageType::MsgSnapshot
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestPreVote
    )
}

fn check_type(kind: MessageType) -> Result<(), Refusal> {
    match kind {
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum => Err(Refusal::LocalOnly { kind }),
        MessageType::MsgPropose => Err(Refusal::ForwardedProposal),
        MessageType::MsgAppend
        | MessageType::MsgAppendResponse
        | MessageType::MsgRequestVote
        | MessageType::MsgRequestVoteResponse
        | MessageType::MsgRequestPreVote
        | MessageType::MsgRequestPreVoteResponse
        | MessageType::MsgSnapshot
        | MessageType::MsgHeartbeat
        | MessageType::MsgHeartbeatResponse
        | MessageType::MsgTransferLeader
        | MessageType::MsgTimeoutNow
        | MessageType::MsgReadIndex
        | MessageType::MsgReadIndexResp => Ok(()),
    }
}

/// raft-rs trusts an append's entries to follow its index: a gap or a step back lets it
/// compare (and panic on) a committed entry, or write a log with holes.
fn check_append(m: &Message) -> Result<(), Refusal> {
    let mut expected = m.index;
    for entry in &m.entries {
        expected = expected
            .checked_add(1)
            .filter(|next| *next < INDEX_LIMIT)
            .ok_or(Refusal::MalformedAppend {
                why: "entry index out of range",
            })?;
        if entry.index != expected {
            return Err(Refusal::MalformedAppend {
                why: "entries do not follow the message's index one by one",
            });
        }
        if entry.term > m.term || entry.term < m.log_term {
            return Err(Refusal::MalformedAppend {
                why: "entry term outside [log_term, term] of the message",
            });
        }
    }
    Ok(())
}

/// What admission checks beyond raft's own view of the replica: the meta group's snapshot
/// must hold a routing table (its replica restores it on the driver, and a table it cannot
/// read would stop the node), and a replica set aside takes no leadership.
pub(crate) fn check_for_group(
    group: GroupId,
    quarantined: bool,
    snapshot_check: Option<&SnapshotCheck>,
    m: &Message,
) -> Result<(), Refusal> {
    match m.get_msg_type() {
        MessageType::MsgTimeoutNow if quarantined => Err(Refusal::TransferToFailedReplica),
        MessageType::MsgSnapshot => {
            let data = m.snapshot.as_ref().map_or(&[][..], |s| s.get_data());
            if group == routing::META_GROUP {
                if data.is_empty() {
                    return Ok(());
                }
                return routing::RoutingTable::decode(data).map(drop).map_err(|e| {
                    Refusal::MalformedSnapshot {
                        why: format!("the meta group's snapshot holds no routing table: {e}"),
                    }
                });
            }
            snapshot_check.map_or(Ok(()), |check| {
                check(group, data).map_err(|why| Refusal::UnrestorableSnapshot { why })
            })
        }
        _ => Ok(()),
    }
}

fn check_snapshot(m: &Message) -> Result<(), Refusal> {
    let malformed = |why: String| Refusal::MalformedSnapshot { why };
    let Some(snapshot) = m.snapshot.as_ref() else {
        return Err(malformed("MsgSnapshot without a snapshot".into()));
    };
    let meta = snapshot.get_metadata();
    if meta.index == 0 || meta.index >= INDEX_LIMIT {
        return Err(malformed(format!("index {} out of range", meta.index)));
    }
    if meta.term == 0 || meta.term > m.term {
        return Err(malformed(format!(
            "term {} not in 1..={} (the message's)",
            meta.term, m.term
        )));
    }
    check_conf_state(meta.get_conf_state(), meta.index).map_err(malformed)
}

/// Replays raft-rs's own `confchange::restore` on a scratch tracker, with the same public
/// `Changer` it uses, and compares the outcome as raft-rs does after a restore: a
/// configuration raft would `fatal!` on is refused here instead.
fn check_conf_state(cs: &ConfState, index: u64) -> Result<(), String> {
    if cs.voters.is_empty() {
        return Err("no voters".into());
    }
    let ids = cs
        .voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next);
    if let Some(bad) = ids.copied().find(|id| *id == 0 || *id >= INDEX_LIMIT) {
        return Err(format!("node id {bad} out of range"));
    }
    let single = |id: u64, kind: ConfChangeType| {
        let mut change = ConfChangeSingle {
            node_id: id,
            ..ConfChangeSingle::default()
        };
        change.set_change_type(kind);
        change
    };
    let outgoing: Vec<_> = cs
        .voters_outgoing
        .iter()
        .map(|id| single(*id, ConfChangeType::AddNode))
        .collect();
    let incoming: Vec<_> = cs
        .voters_outgoing
        .iter()
        .map(|id| single(*id, ConfChangeType::RemoveNode))
        .chain(
            cs.voters
                .iter()
                .map(|id| single(*id, ConfChangeType::AddNode)),
        )
        .chain(
            cs.learners
                .iter()
                .chain(&cs.learners_next)
                .map(|id| single(*id, ConfChangeType::AddLearnerNode)),
        )
        .collect();
    let mut tracker = ProgressTracker::new(1);
    let next = index.saturating_add(1);
    let steps = if outgoing.is_empty() {
        incoming
            .into_iter()
            .map(|c| (vec![c], None))
            .collect::<Vec<_>>()
    } else {
        let mut steps: Vec<_> = outgoing.into_iter().map(|c| (vec![c], None)).collect();
        steps.push((incoming, Some(cs.auto_leave)));
        steps
    };
    for (changes, joint) in steps {
        let mut changer = Changer::new(&tracker);
        let result = match joint {
            None => changer.simple(&changes),
            Some(auto_leave) => changer.enter_joint(auto_leave, &changes),
        };
        let (conf, map) = result.map_err(|e| e.to_string())?;
        tracker.apply_conf(conf, map, next);
    }
    let restored = tracker.conf().to_conf_state();
    let same =
        |a: &[u64], b: &[u64]| a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x));
    if same(&restored.voters, &cs.voters)
        && same(&restored.learners, &cs.learners)
        && same(&restored.voters_outgoing, &cs.voters_outgoing)
        && same(&restored.learners_next, &cs.learners_next)
        && restored.auto_leave == cs.auto_leave
    {
        Ok(())
    } else {
        Err(format!("raft would restore {restored:?}, not {cs:?}"))
    }
}

#[cfg(test)]
mod tests {
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
}
