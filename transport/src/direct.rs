//! Encodes raft-rs messages straight into wire bytes, field by field, without building the
//! intermediate [`crate::wire`] structs: the send path of every raft message, so no per-message
//! allocation or reference count is spent on a copy that is thrown away at once.
//!
//! The bytes are exactly prost's encoding of [`crate::wire::RaftBatch`] built with
//! [`crate::to_wire`]; the tests below hold the two together for arbitrary messages.

use bytes::BufMut;
use prost::encoding::{self, WireType, encode_key, encode_varint, encoded_len_varint};
use raft::eraftpb;

use crate::convert;

/// Length of a `uint64` field, as prost skips the default.
fn u64_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        encoding::uint64::encoded_len(tag, &v)
    }
}

fn u64_put(tag: u32, v: u64, buf: &mut impl BufMut) {
    if v != 0 {
        encoding::uint64::encode(tag, &v, buf);
    }
}

fn i32_len(tag: u32, v: i32) -> usize {
    if v == 0 {
        0
    } else {
        encoding::int32::encoded_len(tag, &v)
    }
}

fn i32_put(tag: u32, v: i32, buf: &mut impl BufMut) {
    if v != 0 {
        encoding::int32::encode(tag, &v, buf);
    }
}

fn i64_len(tag: u32, v: i64) -> usize {
    if v == 0 {
        0
    } else {
        encoding::int64::encoded_len(tag, &v)
    }
}

fn i64_put(tag: u32, v: i64, buf: &mut impl BufMut) {
    if v != 0 {
        encoding::int64::encode(tag, &v, buf);
    }
}

fn bool_len(tag: u32, v: bool) -> usize {
    if v {
        encoding::bool::encoded_len(tag, &v)
    } else {
        0
    }
}

fn bool_put(tag: u32, v: bool, buf: &mut impl BufMut) {
    if v {
        encoding::bool::encode(tag, &v, buf);
    }
}

fn bytes_len(tag: u32, v: &[u8]) -> usize {
    if v.is_empty() {
        0
    } else {
        encoding::key_len(tag) + encoded_len_varint(v.len() as u64) + v.len()
    }
}

fn bytes_put(tag: u32, v: &[u8], buf: &mut impl BufMut) {
    if !v.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(v.len() as u64, buf);
        buf.put_slice(v);
    }
}

/// A length-delimited field of `len` bytes: key, length, body.
fn nested_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

fn nested_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// Body length of a [`crate::wire::Entry`].
fn entry_len(e: &eraftpb::Entry) -> usize {
    i32_len(1, e.entry_type as i32)
        + u64_len(2, e.term)
        + u64_len(3, e.index)
        + bytes_len(4, &e.data)
        + bool_len(5, e.sync_log)
        + bytes_len(6, &e.context)
}

fn entry_put(e: &eraftpb::Entry, buf: &mut impl BufMut) {
    i32_put(1, e.entry_type as i32, buf);
    u64_put(2, e.term, buf);
    u64_put(3, e.index, buf);
    bytes_put(4, &e.data, buf);
    bool_put(5, e.sync_log, buf);
    bytes_put(6, &e.context, buf);
}

/// Body length of the [`crate::wire::RaftMessage`] of `m`. A snapshot (rare outside snapshot
/// streams) goes through the prost structs.
pub(crate) fn message_len(m: &eraftpb::Message) -> usize {
    let entries: usize = m.entries.iter().map(|e| nested_len(7, entry_len(e))).sum();
    let snapshot = m.snapshot.as_ref().map_or(0, |s| {
        nested_len(
            9,
            prost::Message::encoded_len(&convert::snapshot_to_wire(s)),
        )
    });
    i32_len(1, m.msg_type as i32)
        + u64_len(2, m.to)
        + u64_len(3, m.from)
        + u64_len(4, m.term)
        + u64_len(5, m.log_term)
        + u64_len(6, m.index)
        + entries
        + u64_len(8, m.commit)
        + snapshot
        + bool_len(10, m.reject)
        + u64_len(11, m.reject_hint)
        + bytes_len(12, &m.context)
        + u64_len(13, m.request_snapshot)
        + u64_len(14, m.deprecated_priority)
        + u64_len(15, m.commit_term)
        + i64_len(16, m.priority)
}

fn message_put(m: &eraftpb::Message, buf: &mut impl BufMut) {
    i32_put(1, m.msg_type as i32, buf);
    u64_put(2, m.to, buf);
    u64_put(3, m.from, buf);
    u64_put(4, m.term, buf);
    u64_put(5, m.log_term, buf);
    u64_put(6, m.index, buf);
    for e in &m.entries {
        nested_head(7, entry_len(e), buf);
        entry_put(e, buf);
    }
    u64_put(8, m.commit, buf);
    if let Some(s) = m.snapshot.as_ref() {
        encoding::message::encode(9, &convert::snapshot_to_wire(s), buf);
    }
    bool_put(10, m.reject, buf);
    u64_put(11, m.reject_hint, buf);
    bytes_put(12, &m.context, buf);
    u64_put(13, m.request_snapshot, buf);
    u64_put(14, m.deprecated_priority, buf);
    u64_put(15, m.commit_term, buf);
    i64_put(16, m.priority, buf);
}

/// Body length of a [`crate::wire::RaftBatch`] from `from` holding messages of the given body
/// lengths.
pub(crate) fn batch_len(from: u64, message_lens: &[usize]) -> usize {
    u64_len(1, from)
        + message_lens
            .iter()
            .map(|&l| nested_len(2, l))
            .sum::<usize>()
}

/// Writes the body of a [`crate::wire::RaftBatch`]; `lens` are the [`message_len`]s of `messages`.
pub(crate) fn batch_put(
    from: u64,
    messages: &[eraftpb::Message],
    lens: &[usize],
    buf: &mut impl BufMut,
) {
    u64_put(1, from, buf);
    for (m, &len) in messages.iter().zip(lens) {
        nested_head(2, len, buf);
        message_put(m, buf);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::convert::tests::message;
    use crate::wire;

    proptest! {
        #[test]
        fn bytes_equal_prosts_encoding_of_the_wire_structs(
            from in any::<u64>(),
            messages in proptest::collection::vec(message(), 0..4),
        ) {
            let lens: Vec<usize> = messages.iter().map(message_len).collect();
            for (m, &len) in messages.iter().zip(&lens) {
                prop_assert_eq!(len, prost::Message::encoded_len(&convert::to_wire(m)));
            }
            let expected = prost::Message::encode_to_vec(&wire::RaftBatch {
                from,
                messages: messages.iter().map(convert::to_wire).collect(),
            });
            let mut got = Vec::new();
            batch_put(from, &messages, &lens, &mut got);
            prop_assert_eq!(batch_len(from, &lens), expected.len());
            prop_assert_eq!(got, expected);
        }
    }
}
