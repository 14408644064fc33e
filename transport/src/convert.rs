//! Lossless conversion between raft-rs' `eraftpb` messages and the prost mirror in [`wire`].
//!
//! raft-rs keeps its own `protobuf` 2.x types; we only ever copy fields, so network bytes are
//! decoded by prost and the `protobuf` crate never parses them.

// This module reads bytes a peer controls: every access is checked.
#![warn(clippy::indexing_slicing)]

use raft::eraftpb;

use crate::wire::{self, WireError};

/// Converts a raft-rs message into its wire form.
#[must_use]
pub fn to_wire(msg: &eraftpb::Message) -> wire::RaftMessage {
    wire::RaftMessage {
        msg_type: msg.msg_type as i32,
        to: msg.to,
        from: msg.from,
        term: msg.term,
        log_term: msg.log_term,
        index: msg.index,
        entries: msg.entries.iter().map(entry_to_wire).collect(),
        commit: msg.commit,
        snapshot: msg.snapshot.as_ref().map(snapshot_to_wire),
        reject: msg.reject,
        reject_hint: msg.reject_hint,
        context: msg.context.clone(),
        request_snapshot: msg.request_snapshot,
        deprecated_priority: msg.deprecated_priority,
        commit_term: msg.commit_term,
        priority: msg.priority,
    }
}

/// Converts a wire message back into raft-rs' type.
///
/// # Errors
/// [`WireError::UnknownEnumValue`] when the message or an entry carries a type raft-rs does
/// not know.
pub fn from_wire(msg: wire::RaftMessage) -> Result<eraftpb::Message, WireError> {
    let mut out = eraftpb::Message {
        msg_type: message_type(msg.msg_type)?,
        to: msg.to,
        from: msg.from,
        term: msg.term,
        log_term: msg.log_term,
        index: msg.index,
        commit: msg.commit,
        reject: msg.reject,
        reject_hint: msg.reject_hint,
        context: msg.context,
        request_snapshot: msg.request_snapshot,
        deprecated_priority: msg.deprecated_priority,
        commit_term: msg.commit_term,
        priority: msg.priority,
        ..Default::default()
    };
    let entries = msg
        .entries
        .into_iter()
        .map(entry_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    out.set_entries(entries.into());
    if let Some(snapshot) = msg.snapshot {
        out.set_snapshot(snapshot_from_wire(snapshot));
    }
    Ok(out)
}

fn entry_to_wire(e: &eraftpb::Entry) -> wire::Entry {
    wire::Entry {
        entry_type: e.entry_type as i32,
        term: e.term,
        index: e.index,
        data: e.data.clone(),
        sync_log: e.sync_log,
        context: e.context.clone(),
    }
}

pub(crate) fn entry_type(value: i32) -> Result<eraftpb::EntryType, WireError> {
    Ok(match value {
        0 => eraftpb::EntryType::EntryNormal,
        1 => eraftpb::EntryType::EntryConfChange,
        2 => eraftpb::EntryType::EntryConfChangeV2,
        value => {
            return Err(WireError::UnknownEnumValue {
                what: "EntryType",
                value,
            });
        }
    })
}

fn entry_from_wire(e: wire::Entry) -> Result<eraftpb::Entry, WireError> {
    Ok(eraftpb::Entry {
        entry_type: entry_type(e.entry_type)?,
        term: e.term,
        index: e.index,
        data: e.data,
        context: e.context,
        sync_log: e.sync_log,
        ..Default::default()
    })
}

pub(crate) fn snapshot_to_wire(s: &eraftpb::Snapshot) -> wire::Snapshot {
    wire::Snapshot {
        data: s.data.clone(),
        metadata: s.metadata.as_ref().map(|m| wire::SnapshotMetadata {
            conf_state: m.conf_state.as_ref().map(|c| wire::ConfState {
                voters: c.voters.clone(),
                learners: c.learners.clone(),
                voters_outgoing: c.voters_outgoing.clone(),
                learners_next: c.learners_next.clone(),
                auto_leave: c.auto_leave,
            }),
            index: m.index,
            term: m.term,
        }),
    }
}

pub(crate) fn snapshot_from_wire(s: wire::Snapshot) -> eraftpb::Snapshot {
    let mut out = eraftpb::Snapshot {
        data: s.data,
        ..Default::default()
    };
    if let Some(m) = s.metadata {
        let mut meta = eraftpb::SnapshotMetadata {
            index: m.index,
            term: m.term,
            ..Default::default()
        };
        if let Some(c) = m.conf_state {
            meta.set_conf_state(eraftpb::ConfState {
                voters: c.voters,
                learners: c.learners,
                voters_outgoing: c.voters_outgoing,
                learners_next: c.learners_next,
                auto_leave: c.auto_leave,
                ..Default::default()
            });
        }
        out.set_metadata(meta);
    }
    out
}

pub(crate) fn message_type(value: i32) -> Result<eraftpb::MessageType, WireError> {
    use eraftpb::MessageType as T;
    Ok(match value {
        0 => T::MsgHup,
        1 => T::MsgBeat,
        2 => T::MsgPropose,
        3 => T::MsgAppend,
        4 => T::MsgAppendResponse,
        5 => T::MsgRequestVote,
        6 => T::MsgRequestVoteResponse,
        7 => T::MsgSnapshot,
        8 => T::MsgHeartbeat,
        9 => T::MsgHeartbeatResponse,
        10 => T::MsgUnreachable,
        11 => T::MsgSnapStatus,
        12 => T::MsgCheckQuorum,
        13 => T::MsgTransferLeader,
        14 => T::MsgTimeoutNow,
        15 => T::MsgReadIndex,
        16 => T::MsgReadIndexResp,
        17 => T::MsgRequestPreVote,
        18 => T::MsgRequestPreVoteResponse,
        value => {
            return Err(WireError::UnknownEnumValue {
                what: "MessageType",
                value,
            });
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use raft::eraftpb;

    use super::*;

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
    }

    fn ids() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(any::<u64>(), 0..4)
    }

    fn entry() -> impl Strategy<Value = eraftpb::Entry> {
        (
            0..3i32,
            any::<u64>(),
            any::<u64>(),
            bytes(),
            bytes(),
            any::<bool>(),
        )
            .prop_map(|(t, term, index, data, context, sync_log)| eraftpb::Entry {
                entry_type: match t {
                    0 => eraftpb::EntryType::EntryNormal,
                    1 => eraftpb::EntryType::EntryConfChange,
                    _ => eraftpb::EntryType::EntryConfChangeV2,
                },
                term,
                index,
                data,
                context,
                sync_log,
                ..Default::default()
            })
    }

    fn snapshot() -> impl Strategy<Value = Option<eraftpb::Snapshot>> {
        let conf = proptest::option::of((ids(), ids(), ids(), ids(), any::<bool>()).prop_map(
            |(voters, learners, voters_outgoing, learners_next, auto_leave)| eraftpb::ConfState {
                voters,
                learners,
                voters_outgoing,
                learners_next,
                auto_leave,
                ..Default::default()
            },
        ));
        let meta = proptest::option::of((conf, any::<u64>(), any::<u64>()));
        proptest::option::of((bytes(), meta).prop_map(|(data, meta)| {
            let mut s = eraftpb::Snapshot {
                data,
                ..Default::default()
            };
            if let Some((conf, index, term)) = meta {
                let mut m = eraftpb::SnapshotMetadata {
                    index,
                    term,
                    ..Default::default()
                };
                if let Some(c) = conf {
                    m.set_conf_state(c);
                }
                s.set_metadata(m);
            }
            s
        }))
    }

    /// Any raft-rs message, every field drawn independently.
    pub(crate) fn message() -> impl Strategy<Value = eraftpb::Message> {
        (
            (
                0..19i32,
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            (
                proptest::collection::vec(entry(), 0..4),
                any::<u64>(),
                any::<u64>(),
                snapshot(),
            ),
            (
                any::<u64>(),
                any::<bool>(),
                any::<u64>(),
                bytes(),
                any::<u64>(),
                any::<i64>(),
            ),
        )
            .prop_map(|(a, b, c)| {
                let mut m = eraftpb::Message {
                    msg_type: message_type(a.0).unwrap_or(eraftpb::MessageType::MsgHup),
                    to: a.1,
                    from: a.2,
                    term: a.3,
                    log_term: a.4,
                    index: a.5,
                    commit: b.1,
                    commit_term: b.2,
                    request_snapshot: c.0,
                    reject: c.1,
                    reject_hint: c.2,
                    context: c.3,
                    deprecated_priority: c.4,
                    priority: c.5,
                    ..Default::default()
                };
                m.set_entries(b.0.into());
                if let Some(s) = b.3 {
                    m.set_snapshot(s);
                }
                m
            })
    }

    proptest! {
        #[test]
        fn conversion_is_lossless(msg in message()) {
            let wire = to_wire(&msg);
            prop_assert_eq!(from_wire(wire.clone()).unwrap(), msg.clone());
            // Through the bytes, as the network sees it.
            let decoded = <wire::RaftMessage as prost::Message>::decode(prost::Message::encode_to_vec(&wire).as_slice()).unwrap();
            prop_assert_eq!(from_wire(decoded).unwrap(), msg.clone());
            // Set-but-empty and unset snapshot stay distinguishable.
            prop_assert_eq!(from_wire(to_wire(&msg)).unwrap().has_snapshot(), msg.has_snapshot());
        }
    }

    #[test]
    fn unknown_enum_values_are_errors_not_panics() {
        let m = wire::RaftMessage {
            msg_type: 19,
            ..Default::default()
        };
        assert_eq!(
            from_wire(m),
            Err(WireError::UnknownEnumValue {
                what: "MessageType",
                value: 19
            })
        );
        let m = wire::RaftMessage {
            entries: vec![wire::Entry {
                entry_type: -1,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            from_wire(m),
            Err(WireError::UnknownEnumValue {
                what: "EntryType",
                value: -1
            })
        );
    }
}
