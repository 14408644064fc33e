//! Encodes raft-rs messages straight into wire bytes, and decodes them straight back, field
//! by field, without building the intermediate [`crate::wire`] structs: the path of every raft
//! message, so no per-message allocation or copy is spent on structs thrown away at once.
//!
//! The bytes are exactly prost's encoding of [`crate::wire::RaftBatch`] built with
//! [`crate::to_wire`], and decoding is prost's own (its field decoders, length and recursion
//! checks, unknown fields skipped) into raft-rs' types, with the checks of
//! [`crate::from_wire`]. The tests below hold both directions to the prost structs for
//! arbitrary messages and arbitrary bytes.

// This module reads bytes a peer controls: every access is checked.
#![warn(clippy::indexing_slicing)]

use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{
    self, DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint,
};
use raft::eraftpb;

use crate::convert;
use crate::wire::WireError;

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

/// Decodes a [`crate::wire::Entry`] body straight into the raft-rs entry it borrows (already
/// in place in its message, so nothing is moved afterwards). Decode-only: it encodes what it
/// holds, for the trait's sake.
#[derive(Debug)]
struct EntryIn<'a> {
    entry: &'a mut eraftpb::Entry,
    /// The `entry_type` on the wire when raft-rs has no such type (the last one counts, as
    /// for any scalar field).
    unknown_type: Option<i32>,
}

/// Merges an enum field: a value raft-rs knows sets `target`; an unknown one is remembered in
/// `unknown` (the last value on the wire counts, as for any scalar field).
fn merge_enum<T>(
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
    known: fn(i32) -> Result<T, WireError>,
    target: &mut T,
    unknown: &mut Option<i32>,
) -> Result<(), DecodeError> {
    let mut v = 0i32;
    encoding::int32::merge(wire_type, &mut v, buf, ctx)?;
    match known(v) {
        Ok(t) => {
            *target = t;
            *unknown = None;
        }
        Err(_) => *unknown = Some(v),
    }
    Ok(())
}

impl prost::Message for EntryIn<'_> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        entry_put(self.entry, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let e = &mut *self.entry;
        match tag {
            1 => merge_enum(
                wire_type,
                buf,
                ctx,
                convert::entry_type,
                &mut e.entry_type,
                &mut self.unknown_type,
            ),
            2 => encoding::uint64::merge(wire_type, &mut e.term, buf, ctx),
            3 => encoding::uint64::merge(wire_type, &mut e.index, buf, ctx),
            4 => encoding::bytes::merge(wire_type, &mut e.data, buf, ctx),
            5 => encoding::bool::merge(wire_type, &mut e.sync_log, buf, ctx),
            6 => encoding::bytes::merge(wire_type, &mut e.context, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        entry_len(self.entry)
    }

    fn clear(&mut self) {
        *self.entry = eraftpb::Entry::default();
        self.unknown_type = None;
    }
}

/// Decodes a [`crate::wire::RaftMessage`] body straight into the raft-rs message it borrows
/// (already in its place in the output), as [`EntryIn`].
#[derive(Debug)]
struct MessageIn<'a> {
    msg: &'a mut eraftpb::Message,
    /// The `msg_type` on the wire when raft-rs has no such type (the last one counts).
    unknown_type: Option<i32>,
    /// The type of the first entry raft-rs has no type for.
    unknown_entry_type: Option<i32>,
}

impl MessageIn<'_> {
    /// Why raft-rs cannot take the message, if it cannot (as [`crate::from_wire`] says).
    fn check(&self) -> Result<(), WireError> {
        if let Some(value) = self.unknown_type {
            convert::message_type(value)?;
        }
        if let Some(value) = self.unknown_entry_type {
            convert::entry_type(value)?;
        }
        Ok(())
    }
}

impl prost::Message for MessageIn<'_> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        message_put(self.msg, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let m = &mut *self.msg;
        match tag {
            1 => merge_enum(
                wire_type,
                buf,
                ctx,
                convert::message_type,
                &mut m.msg_type,
                &mut self.unknown_type,
            ),
            2 => encoding::uint64::merge(wire_type, &mut m.to, buf, ctx),
            3 => encoding::uint64::merge(wire_type, &mut m.from, buf, ctx),
            4 => encoding::uint64::merge(wire_type, &mut m.term, buf, ctx),
            5 => encoding::uint64::merge(wire_type, &mut m.log_term, buf, ctx),
            6 => encoding::uint64::merge(wire_type, &mut m.index, buf, ctx),
            7 => {
                let mut e = EntryIn {
                    entry: m.mut_entries().push_default(),
                    unknown_type: None,
                };
                encoding::message::merge(wire_type, &mut e, buf, ctx)?;
                if let Some(v) = e.unknown_type {
                    self.unknown_entry_type.get_or_insert(v);
                }
                Ok(())
            }
            8 => encoding::uint64::merge(wire_type, &mut m.commit, buf, ctx),
            9 => {
                // Rare outside snapshot streams: merged through the prost struct, as a
                // repeated occurrence of a message field merges into the first.
                let mut s = m
                    .snapshot
                    .as_ref()
                    .map(convert::snapshot_to_wire)
                    .unwrap_or_default();
                encoding::message::merge(wire_type, &mut s, buf, ctx)?;
                m.set_snapshot(convert::snapshot_from_wire(s));
                Ok(())
            }
            10 => encoding::bool::merge(wire_type, &mut m.reject, buf, ctx),
            11 => encoding::uint64::merge(wire_type, &mut m.reject_hint, buf, ctx),
            12 => encoding::bytes::merge(wire_type, &mut m.context, buf, ctx),
            13 => encoding::uint64::merge(wire_type, &mut m.request_snapshot, buf, ctx),
            14 => encoding::uint64::merge(wire_type, &mut m.deprecated_priority, buf, ctx),
            15 => encoding::uint64::merge(wire_type, &mut m.commit_term, buf, ctx),
            16 => encoding::int64::merge(wire_type, &mut m.priority, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message_len(self.msg)
    }

    fn clear(&mut self) {
        *self.msg = eraftpb::Message::default();
        self.unknown_type = None;
        self.unknown_entry_type = None;
    }
}

/// Decodes the body of a [`crate::wire::RaftBatch`] straight into raft-rs messages, appended
/// to `out` in order; returns the batch's `from`. Each message is decoded in its final place
/// in `out` (a raft-rs message is ~200 bytes: built elsewhere and pushed, it would be copied
/// twice). On error `out` may hold some of them.
///
/// # Errors
/// [`WireError::Malformed`] for bytes prost would not decode as a `RaftBatch`,
/// [`WireError::UnknownEnumValue`] for a type raft-rs does not know.
pub(crate) fn batch_decode(
    mut body: Bytes,
    out: &mut Vec<eraftpb::Message>,
) -> Result<u64, WireError> {
    let malformed = |e: DecodeError| WireError::Malformed {
        what: "RaftBatch",
        reason: e.to_string(),
    };
    let mut from = 0;
    // As prost's `Message::decode`: each top-level field with a fresh context.
    while body.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut body).map_err(malformed)?;
        let ctx = DecodeContext::default();
        match tag {
            1 => {
                encoding::uint64::merge(wire_type, &mut from, &mut body, ctx).map_err(malformed)?
            }
            2 => {
                out.push(eraftpb::Message::default());
                if let Some(msg) = out.last_mut() {
                    let mut m = MessageIn {
                        msg,
                        unknown_type: None,
                        unknown_entry_type: None,
                    };
                    encoding::message::merge(wire_type, &mut m, &mut body, ctx)
                        .map_err(malformed)?;
                    m.check()?;
                }
            }
            _ => encoding::skip_field(wire_type, tag, &mut body, ctx).map_err(malformed)?,
        }
    }
    Ok(from)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
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

        #[test]
        fn decoding_reads_back_what_was_encoded(
            from in any::<u64>(),
            messages in proptest::collection::vec(message(), 0..4),
        ) {
            let lens: Vec<usize> = messages.iter().map(message_len).collect();
            let mut bytes = Vec::new();
            batch_put(from, &messages, &lens, &mut bytes);
            let mut out = Vec::new();
            prop_assert_eq!(batch_decode(Bytes::from(bytes), &mut out), Ok(from));
            prop_assert_eq!(out, messages);
        }

        #[test]
        fn decoding_agrees_with_prost_and_from_wire_on_any_bytes(body in damaged_batch()) {
            let mut out = Vec::new();
            let direct = batch_decode(Bytes::from(body.clone()), &mut out).map(|from| (from, out));
            prop_assert_eq!(direct.ok(), reference(&body));
        }
    }

    /// What prost and [`convert::from_wire`] make of a `RaftBatch` body.
    fn reference(body: &[u8]) -> Option<(u64, Vec<eraftpb::Message>)> {
        let batch: wire::RaftBatch = prost::Message::decode(body).ok()?;
        let messages = batch
            .messages
            .into_iter()
            .map(convert::from_wire)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some((batch.from, messages))
    }

    /// Valid batch bodies with some damage (bytes changed, inserted, removed, cut short), and
    /// hand-made ones: unknown fields, repeated scalars and snapshots, unknown enum values.
    fn damaged_batch() -> impl Strategy<Value = Vec<u8>> {
        let valid = (any::<u64>(), proptest::collection::vec(message(), 0..3)).prop_map(
            |(from, messages)| {
                let lens: Vec<usize> = messages.iter().map(message_len).collect();
                let mut bytes = Vec::new();
                batch_put(from, &messages, &lens, &mut bytes);
                bytes
            },
        );
        let damage =
            proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 0..4);
        let damaged = (valid, damage).prop_map(|(mut bytes, damage)| {
            for (at, how, byte) in damage {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    2 => {
                        bytes.remove(i);
                    }
                    _ => bytes.truncate(i),
                }
            }
            bytes
        });
        let crafted = proptest::collection::vec(crafted_field(), 0..6).prop_map(|fields| {
            // One message made of the fields, in a batch.
            let body: Vec<u8> = fields.concat();
            let mut bytes = Vec::new();
            encoding::uint64::encode(1, &7, &mut bytes);
            encode_key(2, WireType::LengthDelimited, &mut bytes);
            encode_varint(body.len() as u64, &mut bytes);
            bytes.extend_from_slice(&body);
            bytes
        });
        prop_oneof![
            damaged,
            crafted,
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    /// One field of a `RaftMessage` body as a peer might send it, valid or not.
    fn crafted_field() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // msg_type, known or not
            (-3i32..25).prop_map(|v| {
                let mut b = Vec::new();
                encoding::int32::encode(1, &v, &mut b);
                b
            }),
            // any scalar field, any value
            (2u32..17, any::<u64>()).prop_map(|(tag, v)| {
                let mut b = Vec::new();
                encoding::uint64::encode(tag, &v, &mut b);
                b
            }),
            // an entry with a type known or not, and data
            (
                -2i32..5,
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..8)
            )
                .prop_map(|(t, index, data)| {
                    let entry = wire::Entry {
                        entry_type: t,
                        index,
                        data: data.into(),
                        ..Default::default()
                    };
                    let mut b = Vec::new();
                    encoding::message::encode(7, &entry, &mut b);
                    b
                }),
            // a snapshot, possibly one of several to merge
            (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..3)).prop_map(
                |(index, voters)| {
                    let snapshot = wire::Snapshot {
                        data: Bytes::from_static(b"s"),
                        metadata: Some(wire::SnapshotMetadata {
                            conf_state: Some(wire::ConfState {
                                voters,
                                ..Default::default()
                            }),
                            index,
                            term: 1,
                        }),
                    };
                    let mut b = Vec::new();
                    encoding::message::encode(9, &snapshot, &mut b);
                    b
                }
            ),
            // an unknown field, of any wire type
            (17u32..40, 0u8..6, any::<u64>()).prop_map(|(tag, wt, v)| {
                let mut b = Vec::new();
                match wt {
                    0 => encoding::uint64::encode(tag, &v, &mut b),
                    1 => encoding::fixed64::encode(tag, &v, &mut b),
                    2 => encoding::bytes::encode(tag, &v.to_le_bytes().to_vec(), &mut b),
                    3 => {
                        encode_key(tag, WireType::StartGroup, &mut b);
                        encode_key(tag, WireType::EndGroup, &mut b);
                    }
                    4 => encode_key(tag, WireType::EndGroup, &mut b),
                    _ => encoding::fixed32::encode(tag, &(v as u32), &mut b),
                }
                b
            }),
            // a known field with the wrong wire type
            (1u32..17).prop_map(|tag| {
                let mut b = Vec::new();
                encoding::fixed32::encode(tag, &1, &mut b);
                b
            }),
        ]
    }
}
