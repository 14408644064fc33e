//! Caps on repeated fields, checked on a frame's bytes before anything is decoded.
//!
//! prost decodes a repeated field by pushing one element per occurrence, and an element costs
//! far more decoded than on the wire: an empty raft entry is 2 bytes on the wire and over a
//! hundred in memory, so a 16 MiB frame of empty entries would decode to gigabytes. The frame
//! length bound alone cannot stop that amplification. [`check`] walks the frame's field tags
//! (a few varints per element, nothing allocated) and counts the occurrences of every repeated
//! field before the decoder runs; a frame over a cap is refused whole.

// This module reads bytes a peer controls: every access is checked.
#![warn(clippy::indexing_slicing)]

use crate::TransportConfig;
use crate::wire::WireError;

/// Most occurrences of each repeated field in one frame. Built from [`TransportConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RepeatedCaps {
    /// Raft messages in one `RaftBatch` frame.
    pub(crate) messages_per_batch: usize,
    /// Entries in one raft message.
    pub(crate) entries_per_message: usize,
    /// Entries in one frame, all messages together.
    pub(crate) entries_per_frame: usize,
    /// Heartbeats in one `HeartbeatBatch` frame.
    pub(crate) heartbeats_per_batch: usize,
    /// Node ids in one `ConfState` (voters, learners and the joint lists together).
    pub(crate) conf_ids: usize,
}

impl RepeatedCaps {
    pub(crate) fn from_config(c: &TransportConfig) -> Self {
        Self {
            messages_per_batch: c.max_messages_per_batch,
            entries_per_message: c.max_entries_per_message,
            entries_per_frame: c.max_entries_per_frame,
            heartbeats_per_batch: c.max_heartbeats_per_batch,
            conf_ids: c.max_conf_ids,
        }
    }

    /// No cap at all, for tests of other limits.
    #[cfg(test)]
    pub(crate) fn unbounded() -> Self {
        Self {
            messages_per_batch: usize::MAX,
            entries_per_message: usize::MAX,
            entries_per_frame: usize::MAX,
            heartbeats_per_batch: usize::MAX,
            conf_ids: usize::MAX,
        }
    }
}

/// Which message a frame body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    RaftBatch,
    HeartbeatBatch,
    SnapshotHeader,
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A cursor over a frame body that reads keys and skips values, refusing what prost would
/// refuse only where the count depends on it (the decoder reports every other fault).
struct Walker<'a> {
    bytes: &'a [u8],
}

fn malformed(what: &'static str, reason: &str) -> WireError {
    WireError::Malformed {
        what,
        reason: reason.into(),
    }
}

impl<'a> Walker<'a> {
    fn varint(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some((&byte, rest)) = self.bytes.split_first() else {
                return Err(malformed(what, "truncated varint"));
            };
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(what, "varint longer than 10 bytes"))
    }

    /// The next field's tag and wire type, `None` at the end.
    fn key(&mut self, what: &'static str) -> Result<Option<(u64, u8)>, WireError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint(what)?;
        // The low three bits are the wire type.
        Ok(Some((key >> 3, (key & 7) as u8)))
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], WireError> {
        let n = usize::try_from(n).map_err(|_| malformed(what, "length overflows"))?;
        if n > self.bytes.len() {
            return Err(malformed(what, "length past the end"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// Skips a value; `Some(bytes)` for a length-delimited one.
    fn value(&mut self, wire_type: u8, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        match wire_type {
            VARINT => self.varint(what).map(|_| None),
            FIXED64 => self.take(8, what).map(|_| None),
            FIXED32 => self.take(4, what).map(|_| None),
            LEN => {
                let len = self.varint(what)?;
                self.take(len, what).map(Some)
            }
            // Groups (3, 4) are never written by pontoon, and other types do not exist.
            _ => Err(malformed(what, "unsupported wire type")),
        }
    }
}

/// Adds `n` to `count`, refusing past `max`.
fn bump(count: &mut usize, n: usize, max: usize, what: &'static str) -> Result<(), WireError> {
    *count = count.saturating_add(n);
    if *count > max {
        return Err(WireError::TooManyElements {
            what,
            count: *count,
            max,
        });
    }
    Ok(())
}

/// Checks the repeated fields of a frame body of `kind` against `caps`, without allocating.
///
/// # Errors
/// [`WireError::TooManyElements`] for a count over its cap, [`WireError::Malformed`] for
/// bytes that cannot be walked.
pub(crate) fn check(kind: FrameKind, body: &[u8], caps: &RepeatedCaps) -> Result<(), WireError> {
    let mut w = Walker { bytes: body };
    let mut entries = 0usize;
    match kind {
        FrameKind::RaftBatch => {
            let mut messages = 0usize;
            while let Some((tag, wt)) = w.key("RaftBatch")? {
                let value = w.value(wt, "RaftBatch")?;
                if tag == 2 {
                    bump(
                        &mut messages,
                        1,
                        caps.messages_per_batch,
                        "messages per batch",
                    )?;
                    if let Some(msg) = value {
                        message(msg, caps, &mut entries)?;
                    }
                }
            }
        }
        FrameKind::HeartbeatBatch => {
            let mut heartbeats = 0usize;
            while let Some((tag, wt)) = w.key("HeartbeatBatch")? {
                w.value(wt, "HeartbeatBatch")?;
                if tag == 3 {
                    bump(
                        &mut heartbeats,
                        1,
                        caps.heartbeats_per_batch,
                        "heartbeats per batch",
                    )?;
                }
            }
        }
        FrameKind::SnapshotHeader => {
            while let Some((tag, wt)) = w.key("SnapshotHeader")? {
                let value = w.value(wt, "SnapshotHeader")?;
                if let (2, Some(msg)) = (tag, value) {
                    message(msg, caps, &mut entries)?;
                }
            }
        }
    }
    Ok(())
}

/// Counts the entries of one `RaftMessage` (into the frame's total too) and the ids of its
/// snapshot's conf state.
fn message(body: &[u8], caps: &RepeatedCaps, frame_entries: &mut usize) -> Result<(), WireError> {
    let mut w = Walker { bytes: body };
    let mut entries = 0usize;
    while let Some((tag, wt)) = w.key("RaftMessage")? {
        let value = w.value(wt, "RaftMessage")?;
        match (tag, value) {
            (7, _) => {
                // Counted whatever its wire type: the decoder makes room before it looks.
                bump(
                    &mut entries,
                    1,
                    caps.entries_per_message,
                    "entries per message",
                )?;
                bump(
                    frame_entries,
                    1,
                    caps.entries_per_frame,
                    "entries per frame",
                )?;
            }
            (9, Some(snapshot)) => nested(snapshot, 2, |metadata| {
                nested(metadata, 1, |conf| conf_state(conf, caps))
            })?,
            _ => {}
        }
    }
    Ok(())
}

/// Runs `f` on every length-delimited occurrence of field `field` of `body`.
fn nested(
    body: &[u8],
    field: u64,
    mut f: impl FnMut(&[u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut w = Walker { bytes: body };
    while let Some((tag, wt)) = w.key("nested message")? {
        if let (true, Some(inner)) = (tag == field, w.value(wt, "nested message")?) {
            f(inner)?;
        }
    }
    Ok(())
}

/// Counts the node ids of a `ConfState`: its four repeated `uint64` fields, packed (a varint
/// per id) or not (a key and a varint per id).
fn conf_state(body: &[u8], caps: &RepeatedCaps) -> Result<(), WireError> {
    let mut w = Walker { bytes: body };
    let mut ids = 0usize;
    while let Some((tag, wt)) = w.key("ConfState")? {
        let value = w.value(wt, "ConfState")?;
        if (1..=4).contains(&tag) {
            // A packed run holds one varint per id: one final byte (high bit clear) each.
            let n = value.map_or(1, |packed| {
                packed.iter().filter(|&&b| b & 0x80 == 0).count()
            });
            bump(&mut ids, n, caps.conf_ids, "ids per conf state")?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::wire;

    fn caps() -> RepeatedCaps {
        RepeatedCaps {
            messages_per_batch: 4,
            entries_per_message: 3,
            entries_per_frame: 5,
            heartbeats_per_batch: 2,
            conf_ids: 3,
        }
    }

    fn msg(entries: usize) -> wire::RaftMessage {
        wire::RaftMessage {
            msg_type: 3,
            entries: vec![wire::Entry::default(); entries],
            ..Default::default()
        }
    }

    fn raft(messages: Vec<wire::RaftMessage>) -> Vec<u8> {
        wire::RaftBatch { from: 1, messages }.encode_to_vec()
    }

    fn too_many(what: &'static str) -> impl Fn(&Result<(), WireError>) -> bool {
        move |r| matches!(r, Err(WireError::TooManyElements { what: w, .. }) if *w == what)
    }

    #[test]
    fn each_repeated_field_is_capped() {
        let c = caps();
        let ok = |b: &[u8], k| check(k, b, &c);
        assert_eq!(ok(&raft(vec![msg(1); 4]), FrameKind::RaftBatch), Ok(()));
        assert!(too_many("messages per batch")(&ok(
            &raft(vec![msg(0); 5]),
            FrameKind::RaftBatch
        )));
        assert_eq!(ok(&raft(vec![msg(3)]), FrameKind::RaftBatch), Ok(()));
        assert!(too_many("entries per message")(&ok(
            &raft(vec![msg(4)]),
            FrameKind::RaftBatch
        )));
        assert!(too_many("entries per frame")(&ok(
            &raft(vec![msg(3), msg(3)]),
            FrameKind::RaftBatch
        )));
        let hb = |n| {
            wire::HeartbeatBatch {
                from: 1,
                responses: false,
                heartbeats: vec![wire::Heartbeat::default(); n],
            }
            .encode_to_vec()
        };
        assert_eq!(ok(&hb(2), FrameKind::HeartbeatBatch), Ok(()));
        assert!(too_many("heartbeats per batch")(&ok(
            &hb(3),
            FrameKind::HeartbeatBatch
        )));
        let snap = |voters: Vec<u64>| {
            let mut m = msg(0);
            m.snapshot = Some(wire::Snapshot {
                data: Bytes::new(),
                metadata: Some(wire::SnapshotMetadata {
                    conf_state: Some(wire::ConfState {
                        voters,
                        ..Default::default()
                    }),
                    index: 1,
                    term: 1,
                }),
            });
            wire::SnapshotHeader {
                from: 1,
                message: Some(m),
                total_len: 0,
            }
            .encode_to_vec()
        };
        assert_eq!(
            ok(&snap(vec![1, 300, 70_000]), FrameKind::SnapshotHeader),
            Ok(())
        );
        assert!(too_many("ids per conf state")(&ok(
            &snap(vec![1, 2, 3, 4]),
            FrameKind::SnapshotHeader
        )));
    }

    #[test]
    fn a_frame_of_empty_entries_is_refused_by_counting_not_decoding() {
        // The attack: a 16 MiB frame of empty entries, 2 bytes each on the wire.
        let n = 8 << 20;
        let mut inner = Vec::with_capacity(2 * n);
        for _ in 0..n {
            inner.extend_from_slice(&[7 << 3 | 2, 0]);
        }
        let mut body = vec![2 << 3 | 2];
        let mut len = inner.len();
        while len >= 0x80 {
            body.push((len as u8) | 0x80);
            len >>= 7;
        }
        body.push(len as u8);
        body.extend_from_slice(&inner);
        let r = check(
            FrameKind::RaftBatch,
            &body,
            &RepeatedCaps::from_config(&TransportConfig::default()),
        );
        assert!(too_many("entries per message")(&r), "{r:?}");
    }

    proptest! {
        #[test]
        fn whatever_prost_decodes_within_the_caps_the_walker_accepts(
            shape in proptest::collection::vec(0usize..5, 0..6),
        ) {
            let body = raft(shape.iter().map(|&n| msg(n)).collect());
            let c = caps();
            let within = shape.len() <= c.messages_per_batch
                && shape.iter().all(|&n| n <= c.entries_per_message)
                && shape.iter().sum::<usize>() <= c.entries_per_frame;
            prop_assert_eq!(check(FrameKind::RaftBatch, &body, &c).is_ok(), within);
        }

        #[test]
        fn the_walker_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for kind in [FrameKind::RaftBatch, FrameKind::HeartbeatBatch, FrameKind::SnapshotHeader] {
                let _ = check(kind, &bytes, &caps());
            }
        }
    }
}
