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
//!   routing table); so does a replica with no configuration yet (joining), from a newer term
//!   than the leader it followed. A configured replica that follows a live leader never does,
//!   so no node can depose a healthy leader of a group it is not in, and a node outside the
//!   cluster is never heard.
//!   A node joining a cluster knows the cluster only from the nodes its configuration lists
//!   (the table it starts with), and hears only them until the cluster's own table arrives.
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
    /// The sender is a node of the cluster, as the routing table this node holds says (for a
    /// joining node: the running nodes its configuration lists).
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
    // A replica without a configuration (joining its group) cannot tell members from other
    // nodes, and never campaigns, so nothing else would clear a leader it followed once: a
    // newer term's leader replaces it. Without this, a joining replica that heard one leader
    // before leadership moved waited for that node forever.
    let may_be_new_leader = standing.in_cluster
        && claims_leadership(kind)
        && (replica.leader().is_none()
            || (!replica.has_configuration() && m.term > replica.term()));
    if !(known || may_be_new_leader) {
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
#[path = "admission_tests.rs"]
mod tests;
