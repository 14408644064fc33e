//! Coalesced heartbeats as the coordinator hands them over and gets them back: typed ids, an
//! explicit kind, and no claimed sender (the transport knows who sends, and the receiver learns
//! it from the peer's certificate in [`Inbound::Message`](crate::Inbound::Message)). The codec
//! converts to and from the prost [`wire::HeartbeatBatch`] at the edge, so the wire structs
//! never reach the coordinator.

use routing::{GroupId, NodeId};

use crate::wire;

/// One group's heartbeat (or heartbeat response) in a [`HeartbeatBatch`]: the fields of a plain
/// raft `MsgHeartbeat`, and nothing else (a heartbeat with a read-index context is not
/// coalesced).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupHeartbeat {
    /// The group.
    pub group: GroupId,
    /// The sender's term in that group.
    pub term: u64,
    /// The commit index the follower may advance to (requests), or 0 (responses).
    pub commit: u64,
    /// The leader's last heartbeat before the group goes quiet: the follower stops ticking it.
    pub quiesce: bool,
}

/// Whether a batch holds heartbeats or their responses: never both (CockroachDB's rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeartbeatKind {
    /// `MsgHeartbeat`s, from the groups' leader.
    #[default]
    Requests,
    /// `MsgHeartbeatResponse`s, from a follower.
    Responses,
}

/// The heartbeats of many groups between one pair of nodes, sent as one message. An empty batch
/// is a node-level liveness ping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatBatch {
    /// Requests or responses.
    pub kind: HeartbeatKind,
    /// One per group.
    pub heartbeats: Vec<GroupHeartbeat>,
}

impl HeartbeatBatch {
    /// A batch of `kind` holding `heartbeats`.
    #[must_use]
    pub fn new(kind: HeartbeatKind, heartbeats: Vec<GroupHeartbeat>) -> Self {
        Self { kind, heartbeats }
    }

    /// The empty batch: tells the peer this node is alive, nothing more.
    #[must_use]
    pub fn liveness() -> Self {
        Self::default()
    }

    /// The prost form, naming `from` as the sender.
    pub(crate) fn into_wire(self, from: NodeId) -> wire::HeartbeatBatch {
        wire::HeartbeatBatch {
            from: from.get(),
            responses: self.kind == HeartbeatKind::Responses,
            heartbeats: self.heartbeats.into_iter().map(to_wire).collect(),
        }
    }

    /// The typed form of a decoded batch (its `from` is checked by the reader, then dropped).
    pub(crate) fn from_wire(batch: wire::HeartbeatBatch) -> Self {
        let kind = if batch.responses {
            HeartbeatKind::Responses
        } else {
            HeartbeatKind::Requests
        };
        let heartbeats = batch.heartbeats.into_iter().map(from_wire).collect();
        Self { kind, heartbeats }
    }
}

fn to_wire(hb: GroupHeartbeat) -> wire::Heartbeat {
    wire::Heartbeat {
        group_id: hb.group.get(),
        term: hb.term,
        commit: hb.commit,
        quiesce: hb.quiesce,
    }
}

fn from_wire(hb: wire::Heartbeat) -> GroupHeartbeat {
    GroupHeartbeat {
        group: GroupId(hb.group_id),
        term: hb.term,
        commit: hb.commit,
        quiesce: hb.quiesce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_survives_the_wire_form_and_the_sender_is_named_only_there() {
        let batch = HeartbeatBatch::new(
            HeartbeatKind::Responses,
            (1..=3)
                .map(|g| GroupHeartbeat {
                    group: GroupId(g),
                    term: g * 2,
                    commit: g * 3,
                    quiesce: g == 2,
                })
                .collect(),
        );
        let wire = batch.clone().into_wire(NodeId(9));
        assert_eq!((wire.from, wire.responses), (9, true));
        assert_eq!(wire.heartbeats.len(), 3);
        assert_eq!(HeartbeatBatch::from_wire(wire), batch);
    }
}
