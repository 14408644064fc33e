//! Where a cycle's outgoing raft messages are sorted by destination node, and where heartbeats
//! are coalesced: every `MsgHeartbeat` (and, separately, every `MsgHeartbeatResponse`) that the
//! groups of this node send to one peer in one cycle leaves as a single [`HeartbeatBatch`], and
//! is expanded back into per-group raft messages on arrival.
//!
//! Only plain heartbeats are coalesced: a heartbeat carrying a read-index context, or any field
//! beyond term and commit, travels as it is (CockroachDB's rule), so nothing is lost. Requests
//! and responses are never mixed in one batch.

use std::collections::BTreeMap;

use raft::eraftpb::{Message, MessageType};
use routing::{GroupId, NodeId};
use transport::{Envelope, GroupHeartbeat, HeartbeatBatch, HeartbeatKind};

/// Outgoing messages of one cycle, sorted by destination.
#[derive(Default)]
pub(crate) struct Outbox {
    peers: BTreeMap<NodeId, PeerOutbox>,
}

#[derive(Default)]
struct PeerOutbox {
    raft: BTreeMap<GroupId, Vec<Message>>,
    heartbeats: Vec<GroupHeartbeat>,
    heartbeat_responses: Vec<GroupHeartbeat>,
    snapshots: Vec<(GroupId, Message)>,
    /// Send an empty heartbeat batch if nothing else goes to this peer.
    liveness: bool,
}

/// How many heartbeats an outbox packed into how many batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CoalesceCount {
    pub heartbeats: u64,
    pub batches: u64,
}

/// A heartbeat whose every field is carried by [`GroupHeartbeat`]: term and commit, nothing else.
fn is_coalescible(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
    ) && m.context.is_empty()
        && m.entries.is_empty()
        && m.snapshot.is_none()
        && m.log_term == 0
        && m.index == 0
        && m.commit_term == 0
        && !m.reject
        && m.reject_hint == 0
        && m.request_snapshot == 0
        && m.priority == 0
        && m.deprecated_priority == 0
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Files the last heartbeat a quiescing leader sends: it tells the follower to stop
    /// ticking `group` too.
    pub(crate) fn push_quiesce(&mut self, group: GroupId, to: NodeId, term: u64, commit: u64) {
        let hb = GroupHeartbeat {
            group,
            term,
            commit,
            quiesce: true,
        };
        self.peers.entry(to).or_default().heartbeats.push(hb);
    }

    /// Files a leader probe: a heartbeat *response* marked `quiesce`, which no raft message
    /// is. A replica that knows no leader of `group` (after a restart, or a partition) sends
    /// it to each voter; the one that leads the group quietly answers with a quiesce
    /// heartbeat, so the replica learns its leader without an election.
    pub(crate) fn push_leader_probe(&mut self, group: GroupId, to: NodeId, term: u64) {
        let hb = GroupHeartbeat {
            group,
            term,
            commit: 0,
            quiesce: true,
        };
        self.peers
            .entry(to)
            .or_default()
            .heartbeat_responses
            .push(hb);
    }

    /// Files a node-level liveness ping: an empty heartbeat batch.
    pub(crate) fn push_liveness(&mut self, to: NodeId) {
        self.peers.entry(to).or_default().liveness = true;
    }

    /// Files one message of `group`, addressed by raft to `m.to`.
    pub(crate) fn push(&mut self, group: GroupId, m: Message) {
        let peer = self.peers.entry(NodeId(m.to)).or_default();
        if is_coalescible(&m) {
            let hb = GroupHeartbeat {
                group,
                term: m.term,
                commit: m.commit,
                quiesce: false,
            };
            if m.get_msg_type() == MessageType::MsgHeartbeat {
                peer.heartbeats.push(hb);
            } else {
                peer.heartbeat_responses.push(hb);
            }
        } else if m.get_msg_type() == MessageType::MsgSnapshot {
            peer.snapshots.push((group, m));
        } else {
            peer.raft.entry(group).or_default().push(m);
        }
    }

    /// Turns the outbox into what the transport sends, in a deterministic order.
    pub(crate) fn into_envelopes(self, count: &mut CoalesceCount) -> Vec<(NodeId, Envelope)> {
        let mut out = Vec::new();
        for (to, peer) in self.peers {
            let carries_traffic = !peer.heartbeats.is_empty()
                || !peer.heartbeat_responses.is_empty()
                || !peer.raft.is_empty()
                || !peer.snapshots.is_empty();
            if peer.liveness && !carries_traffic {
                out.push((to, Envelope::Heartbeats(HeartbeatBatch::liveness())));
            }
            for (kind, heartbeats) in [
                (HeartbeatKind::Requests, peer.heartbeats),
                (HeartbeatKind::Responses, peer.heartbeat_responses),
            ] {
                if !heartbeats.is_empty() {
                    count.heartbeats += heartbeats.len() as u64;
                    count.batches += 1;
                    out.push((
                        to,
                        Envelope::Heartbeats(HeartbeatBatch::new(kind, heartbeats)),
                    ));
                }
            }
            for (group, messages) in peer.raft {
                out.push((to, Envelope::Raft { group, messages }));
            }
            for (group, message) in peer.snapshots {
                out.push((to, Envelope::Snapshot { group, message }));
            }
        }
        out
    }
}

/// Expands a coalesced batch that `from` sent to `to` back into per-group raft messages.
pub(crate) fn expand(
    from: NodeId,
    to: NodeId,
    batch: &HeartbeatBatch,
) -> impl Iterator<Item = (GroupId, Message, bool)> + '_ {
    let msg_type = match batch.kind {
        HeartbeatKind::Requests => MessageType::MsgHeartbeat,
        HeartbeatKind::Responses => MessageType::MsgHeartbeatResponse,
    };
    batch.heartbeats.iter().map(move |hb| {
        let mut m = Message::default();
        m.set_msg_type(msg_type);
        m.from = from.get();
        m.to = to.get();
        m.term = hb.term;
        m.commit = hb.commit;
        (hb.group, m, hb.quiesce)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(to: u64, term: u64, commit: u64, t: MessageType) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = 1;
        m.to = to;
        m.term = term;
        m.commit = commit;
        m
    }

    #[test]
    fn heartbeats_to_one_peer_leave_as_one_batch_and_expand_back_losslessly() {
        let mut outbox = Outbox::default();
        let mut sent = Vec::new();
        for g in 1..=1000u64 {
            let m = heartbeat(2, g, g * 2, MessageType::MsgHeartbeat);
            sent.push((GroupId(g), m.clone()));
            outbox.push(GroupId(g), m);
        }
        let mut count = CoalesceCount::default();
        let envelopes = outbox.into_envelopes(&mut count);
        assert_eq!(envelopes.len(), 1);
        assert_eq!(
            count,
            CoalesceCount {
                heartbeats: 1000,
                batches: 1
            }
        );
        let Envelope::Heartbeats(batch) = &envelopes[0].1 else {
            panic!("expected a heartbeat batch")
        };
        let back: Vec<_> = expand(NodeId(1), NodeId(2), batch)
            .map(|(g, m, _)| (g, m))
            .collect();
        assert_eq!(back, sent);
    }

    #[test]
    fn requests_and_responses_never_share_a_batch() {
        let mut outbox = Outbox::default();
        outbox.push(GroupId(1), heartbeat(2, 1, 1, MessageType::MsgHeartbeat));
        outbox.push(
            GroupId(2),
            heartbeat(2, 1, 1, MessageType::MsgHeartbeatResponse),
        );
        let envelopes = outbox.into_envelopes(&mut CoalesceCount::default());
        let kinds: Vec<HeartbeatKind> = envelopes
            .iter()
            .map(|(_, e)| match e {
                Envelope::Heartbeats(b) => b.kind,
                _ => panic!("expected heartbeats only"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![HeartbeatKind::Requests, HeartbeatKind::Responses]
        );
    }

    #[test]
    fn read_index_heartbeats_keep_their_context_and_travel_uncoalesced() {
        let mut outbox = Outbox::default();
        let mut m = heartbeat(3, 5, 7, MessageType::MsgHeartbeat);
        m.context = b"read-42".to_vec().into();
        outbox.push(GroupId(9), m.clone());
        let envelopes = outbox.into_envelopes(&mut CoalesceCount::default());
        assert_eq!(envelopes.len(), 1);
        match &envelopes[0] {
            (to, Envelope::Raft { group, messages }) => {
                assert_eq!((*to, *group), (NodeId(3), GroupId(9)));
                assert_eq!(messages, &vec![m]);
            }
            _ => panic!("expected a raft envelope"),
        }
    }
}
