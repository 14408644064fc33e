//! Forged raft traffic for the simulation's byzantine-sender mode.
//!
//! Two kinds of sender: a node outside the cluster, which may send anything at all, and a
//! member of the cluster that sends what no honest node sends and admission must refuse
//! (types that never cross the network, proposals, read-index requests without their
//! context, appends with gaps, overflowing terms, snapshots
//! raft cannot restore). A member that lies within the rules (a well-formed append from the
//! leader of the term with made-up entries, or a heartbeat of that leader committing past a log,
//! which a replica takes as evidence of its own lost log) is out of scope: no crash-fault protocol survives
//! that, and raft is one.

use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
use rand::Rng as _;
use rand::rngs::StdRng;
use routing::{GroupId, NodeId};
use transport::Envelope;
use transport::{GroupHeartbeat, HeartbeatBatch, HeartbeatKind};

/// The first id of the nodes outside the cluster that forge traffic.
pub(crate) const OUTSIDER_BASE: u64 = 1_000;

const ALL_TYPES: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

/// A forged message: `from` sends `envelope` to `to`.
#[derive(Debug)]
pub(crate) struct Forged {
    pub(crate) to: NodeId,
    pub(crate) from: NodeId,
    pub(crate) envelope: Envelope,
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())])
}

/// An index or term anywhere from small to overflowing.
fn any_number(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..4) {
        0 => rng.random_range(0..64),
        1 => rng.random_range(0..1 << 20),
        2 => u64::MAX - rng.random_range(0..4),
        _ => rng.random(),
    }
}

fn message(kind: MessageType, from: NodeId) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from.get();
    m
}

fn entries(rng: &mut StdRng, first: u64, count: usize) -> Vec<Entry> {
    (0..count as u64)
        .map(|i| Entry {
            index: first.wrapping_add(i),
            term: any_number(rng),
            data: b"forged".to_vec().into(),
            ..Entry::default()
        })
        .collect()
}

/// Anything at all, as a node outside the cluster might send it.
fn from_outsider(rng: &mut StdRng, from: NodeId) -> Message {
    let kind = pick(rng, &ALL_TYPES).unwrap_or(MessageType::MsgAppend);
    let mut m = message(kind, from);
    m.term = any_number(rng);
    m.index = any_number(rng);
    m.log_term = any_number(rng);
    m.commit = any_number(rng);
    m.reject = rng.random();
    let first = m.index.wrapping_add(1);
    let count = rng.random_range(0..4);
    m.entries = entries(rng, first, count).into();
    if kind == MessageType::MsgSnapshot {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = any_number(rng);
        snapshot.mut_metadata().term = m.term;
        snapshot.mut_metadata().mut_conf_state().voters = vec![from.get()];
        snapshot.data = b"forged".to_vec().into();
        m.snapshot = Some(snapshot).into();
    }
    m
}

/// What a member of the cluster must never get stepped, whatever its standing in the group.
fn from_member(rng: &mut StdRng, from: NodeId) -> Message {
    match rng.random_range(0..6) {
        0 => {
            let local = [
                MessageType::MsgHup,
                MessageType::MsgBeat,
                MessageType::MsgUnreachable,
                MessageType::MsgSnapStatus,
                MessageType::MsgCheckQuorum,
            ];
            message(pick(rng, &local).unwrap_or(MessageType::MsgHup), from)
        }
        1 => {
            let mut m = message(MessageType::MsgPropose, from);
            let count = rng.random_range(0..3);
            m.entries = entries(rng, 0, count).into();
            m
        }
        2 => {
            let mut m = message(MessageType::MsgReadIndex, from);
            m.term = rng.random_range(0..64);
            m
        }
        3 => {
            let mut m = message(MessageType::MsgAppend, from);
            m.term = rng.random_range(1..64);
            m.index = rng.random_range(0..64);
            m.log_term = m.term;
            // A gap: the first entry does not follow the message's index.
            let first = m.index + rng.random_range(2..8);
            m.entries = entries(rng, first, 1).into();
            m
        }
        4 => {
            let mut m = message(MessageType::MsgAppend, from);
            m.term = (1 << 48) + rng.random_range(0..1 << 20);
            m
        }
        _ => {
            let mut m = message(MessageType::MsgSnapshot, from);
            m.term = rng.random_range(1..64);
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = rng.random_range(1..1 << 20);
            snapshot.mut_metadata().term = m.term;
            // A voter that is also a learner: raft-rs cannot restore it.
            let cs = snapshot.mut_metadata().mut_conf_state();
            cs.voters = vec![from.get()];
            cs.learners = vec![from.get()];
            m.snapshot = Some(snapshot).into();
            m
        }
    }
}

/// One forged message toward a random node of `nodes`, for a random group of `groups`.
pub(crate) fn forge(rng: &mut StdRng, nodes: &[NodeId], groups: &[GroupId]) -> Option<Forged> {
    let to = pick(rng, nodes)?;
    let group = pick(rng, groups)?;
    let outsider = rng.random_bool(0.5);
    let from = if outsider {
        NodeId(OUTSIDER_BASE + rng.random_range(0..4))
    } else {
        pick(rng, nodes)?
    };
    let m = if outsider {
        from_outsider(rng, from)
    } else {
        from_member(rng, from)
    };
    let envelope = if m.get_msg_type() == MessageType::MsgHeartbeat && rng.random_bool(0.5) {
        // The same forgery through the coalesced path.
        Envelope::Heartbeats(HeartbeatBatch::new(
            HeartbeatKind::Requests,
            vec![GroupHeartbeat {
                group,
                term: m.term,
                commit: m.commit,
                quiesce: rng.random(),
            }],
        ))
    } else if m.get_msg_type() == MessageType::MsgSnapshot {
        Envelope::Snapshot { group, message: m }
    } else {
        Envelope::Raft {
            group,
            messages: vec![m],
        }
    };
    Some(Forged { to, from, envelope })
}
