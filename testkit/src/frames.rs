//! Hand-made frames of the peer wire format: what an attacker writes on a raw stream.

use bytes::{BufMut, Bytes, BytesMut};
use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
use transport::wire::{self, HeartbeatBatch, RaftBatch, SnapshotHeader, StreamHeader, StreamKind};

/// Frames here are small except where the attack is their size.
const MAX_FRAME: usize = 1 << 30;

fn encode<M: prost::Message>(message: &M, out: &mut BytesMut) {
    // Only fails past MAX_FRAME, which no frame built here reaches.
    let _ = wire::encode_frame(message, MAX_FRAME, out);
}

/// The header frame that opens a stream of `kind` for `group`.
pub fn header(kind: StreamKind, group: u64) -> Bytes {
    let mut out = BytesMut::new();
    encode(&StreamHeader::new(kind, group), &mut out);
    out.freeze()
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// A length-prefixed frame of at most `max` bytes: one field `outer` (length-delimited)
/// holding as many empty occurrences of field `inner` as fit (2 bytes each on the wire), or,
/// with `inner == None`, as many empty occurrences of `outer` itself at the top level. Field
/// 1 is `from`. On a raft stream `(2, Some(7))` is one message of millions of empty entries
/// and `(2, None)` millions of empty messages; on a heartbeat stream `(3, None)` is millions
/// of heartbeats: each decodes to about a hundred times its size.
pub fn amplifying_frame(from: u64, outer: u32, inner: Option<u32>, max: usize) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(1 << 3);
    put_varint(&mut body, from);
    match inner {
        Some(inner) => {
            let n = max.saturating_sub(body.len() + 16) / 2;
            body.put_u8((outer << 3 | 2) as u8);
            put_varint(&mut body, 2 * n as u64);
            for _ in 0..n {
                body.put_slice(&[(inner << 3 | 2) as u8, 0]);
            }
        }
        None => {
            while body.len() + 2 + 4 <= max {
                body.put_slice(&[(outer << 3 | 2) as u8, 0]);
            }
        }
    }
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(&body);
    out.freeze()
}

fn forged(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// One raft-stream frame per forged message that once stopped a coordinator or disrupted a
/// group, sent by `from` to `to` at `term`: local-only message types, empty and foreign
/// proposals, a forced election, a read index without its context, an append whose entries
/// do not follow its index (with a commit past any log), a term that overflows `term + 1`,
/// and a snapshot whose configuration raft cannot restore. Heartbeats travel on their own
/// stream kind: see [`forged_heartbeats`].
pub fn forged_raft_frames(from: u64, to: u64, term: u64) -> Vec<Bytes> {
    let mut messages = Vec::new();
    for kind in [
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgCheckQuorum,
        MessageType::MsgUnreachable,
        MessageType::MsgSnapStatus,
        MessageType::MsgPropose,
    ] {
        messages.push(forged(kind, from, to, 0));
    }
    let mut proposal = forged(MessageType::MsgPropose, from, to, 0);
    proposal.entries = vec![Entry {
        data: b"forged=1".to_vec().into(),
        ..Entry::default()
    }]
    .into();
    messages.push(proposal);
    messages.push(forged(MessageType::MsgTimeoutNow, from, to, term));
    messages.push(forged(MessageType::MsgReadIndex, from, to, term));
    let mut gap = forged(MessageType::MsgAppend, from, to, term);
    gap.index = 1;
    gap.log_term = 1;
    gap.commit = u64::MAX;
    gap.entries = vec![Entry {
        index: 1,
        term,
        ..Entry::default()
    }]
    .into();
    messages.push(gap);
    messages.push(forged(MessageType::MsgAppend, from, to, u64::MAX));
    let mut unrestorable = forged(MessageType::MsgSnapshot, from, to, term);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 1 << 20;
    snapshot.mut_metadata().term = term;
    snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    snapshot.mut_metadata().mut_conf_state().learners = vec![2];
    unrestorable.snapshot = Some(snapshot).into();
    messages.push(unrestorable);
    messages
        .iter()
        .map(|m| {
            let mut out = BytesMut::new();
            encode(
                &RaftBatch {
                    from,
                    messages: vec![transport::to_wire(m)],
                },
                &mut out,
            );
            out.freeze()
        })
        .collect()
}

/// A heartbeat-stream frame from `from` for every group of `groups`: commits far past any
/// log (raft-rs once aborted on these) at `term`, as requests.
pub fn forged_heartbeats(from: u64, groups: &[u64], term: u64) -> Bytes {
    let mut out = BytesMut::new();
    encode(
        &HeartbeatBatch {
            from,
            responses: false,
            heartbeats: groups
                .iter()
                .map(|&group_id| wire::Heartbeat {
                    group_id,
                    term,
                    commit: u64::MAX,
                    quiesce: false,
                })
                .collect(),
        },
        &mut out,
    );
    out.freeze()
}

/// The opening of a snapshot stream (header and [`SnapshotHeader`]) from `from` to `to` for
/// `group`, announcing `total` bytes of data to follow in chunks.
pub fn stalled_snapshot_opening(from: u64, to: u64, group: u64, total: u64) -> Bytes {
    let mut m = forged(MessageType::MsgSnapshot, from, to, 1);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 10;
    snapshot.mut_metadata().term = 1;
    m.snapshot = Some(snapshot).into();
    let mut out = BytesMut::from(&header(StreamKind::Snapshot, group)[..]);
    encode(
        &SnapshotHeader {
            from,
            message: Some(transport::to_wire(&m)),
            total_len: total,
        },
        &mut out,
    );
    out.freeze()
}

/// One chunk frame of snapshot data, `len` bytes.
pub fn snapshot_chunk(len: usize) -> Bytes {
    let mut out = BytesMut::new();
    encode(
        &wire::SnapshotChunk {
            data: Bytes::from(vec![7u8; len]),
        },
        &mut out,
    );
    out.freeze()
}
