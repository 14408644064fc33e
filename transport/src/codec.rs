//! Envelopes to stream bytes and back: the framing both the QUIC transport and the in-memory
//! network use, so the simulation exercises the same decoder that faces the network.
//!
//! [`StreamReader`] is sans-IO: bytes in, envelopes out, or a [`Refusal`] that says why the
//! stream must be reset.

// This module reads bytes a peer controls: every access is checked.
#![warn(clippy::indexing_slicing)]

use bytes::{BufMut, Bytes, BytesMut};
use raft::eraftpb;
use routing::{GroupId, NodeId};

use crate::budget::{Exhausted, Reservation, SnapshotBudget};
use crate::limits::{self, FrameKind, RepeatedCaps};
use crate::stats::Counters;
use crate::wire::{self, StreamHeader, StreamKind, WireError};
use crate::{Envelope, Forward, GroupFilter, HeartbeatBatch, SendError, convert, direct};

/// Application error codes of `RecvStream::stop` (stream resets) and connection closes.
pub mod codes;

/// Where an outgoing frame goes: the stream it is written on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum StreamKey {
    /// The raft stream of one group.
    Raft(GroupId),
    /// The heartbeat stream of the peer.
    Heartbeats,
    /// The forward stream of the peer (forwarded requests and their replies).
    Forward,
}

impl StreamKey {
    pub(crate) fn group(self) -> Option<GroupId> {
        match self {
            Self::Raft(g) => Some(g),
            Self::Heartbeats | Self::Forward => None,
        }
    }

    pub(crate) fn header(self) -> Bytes {
        match self {
            Self::Raft(g) => header_frame(StreamKind::Raft, g.get()),
            Self::Heartbeats => header_frame(StreamKind::Heartbeats, 0),
            Self::Forward => header_frame(StreamKind::Forward, 0),
        }
    }
}

/// Frames bound for one stream, already encoded.
#[derive(Clone, Debug)]
pub(crate) struct Frames {
    pub(crate) key: StreamKey,
    /// One or more length-prefixed frames, back to back.
    pub(crate) bytes: Bytes,
    pub(crate) frames: u64,
    pub(crate) messages: u64,
}

/// A snapshot transfer, encoded but for its chunks, which are slices of `data`.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotTransfer {
    pub(crate) group: GroupId,
    /// Stream header then [`wire::SnapshotHeader`], both framed.
    pub(crate) head: Bytes,
    pub(crate) data: Bytes,
}

impl SnapshotTransfer {
    /// The data chunks, each framed as a [`wire::SnapshotChunk`].
    pub(crate) fn chunks(
        &self,
        chunk_bytes: usize,
        max_frame_bytes: usize,
    ) -> impl Iterator<Item = Bytes> + '_ {
        self.data.chunks(chunk_bytes.max(1)).map(move |c| {
            let mut out = BytesMut::new();
            // Chunks are validated to fit in a frame by `TransportConfig::validate`.
            let _ = wire::encode_frame(
                &wire::SnapshotChunk {
                    data: self.data.slice_ref(c),
                },
                max_frame_bytes,
                &mut out,
            );
            out.freeze()
        })
    }
}

pub(crate) enum Encoded {
    Frames(Frames),
    Snapshot(SnapshotTransfer),
}

pub(crate) fn header_frame(kind: StreamKind, group: u64) -> Bytes {
    let mut out = BytesMut::new();
    // A header is a few varints, far below MAX_HEADER_BYTES.
    let _ = wire::encode_frame(
        &StreamHeader::new(kind, group),
        wire::MAX_HEADER_BYTES,
        &mut out,
    );
    out.freeze()
}

/// Encodes an envelope as `from` sends it. Raft batches too large for one frame, or with more
/// messages or entries than a receiver's `caps` accept in one, are split between messages; a
/// single message that does not fit is refused. Heartbeat batches are split to `caps` too.
pub(crate) fn encode(
    from: NodeId,
    envelope: Envelope,
    max_frame_bytes: usize,
    caps: &RepeatedCaps,
) -> Result<Encoded, SendError> {
    let too_large = |e: WireError| match e {
        WireError::FrameTooLarge { len, max } => SendError::FrameTooLarge { len, max },
        other => SendError::Encode(other),
    };
    match envelope {
        Envelope::Raft { group, messages } => {
            // Encoded straight from raft-rs' structs (see `direct`): the same bytes as prost
            // on `to_wire`, without building them first.
            let max = max_frame_bytes.min(u32::MAX as usize);
            // Most envelopes hold a message or a few: their lengths stay on the stack.
            let mut inline = [0usize; 8];
            let heap: Vec<usize>;
            let lens: &[usize] = if messages.len() <= inline.len() {
                for (len, m) in inline.iter_mut().zip(&messages) {
                    *len = direct::message_len(m);
                }
                inline.get(..messages.len()).unwrap_or_default()
            } else {
                heap = messages.iter().map(direct::message_len).collect();
                &heap
            };
            let whole = direct::batch_len(from.get(), lens);
            let entries: usize = messages.iter().map(|m| m.entries.len()).sum();
            if whole <= max
                && messages.len() <= caps.messages_per_batch
                && entries <= caps.entries_per_frame
            {
                // The common case: one frame.
                let mut out = BytesMut::with_capacity(wire::LENGTH_PREFIX + whole);
                // `whole <= max <= u32::MAX`.
                out.put_u32(u32::try_from(whole).unwrap_or(u32::MAX));
                direct::batch_put(from.get(), &messages, lens, &mut out);
                return Ok(Encoded::Frames(Frames {
                    key: StreamKey::Raft(group),
                    bytes: out.freeze(),
                    frames: 1,
                    messages: messages.len() as u64,
                }));
            }
            // Split between messages so that every frame fits: (start, end) of each.
            let mut cuts: Vec<(usize, usize)> = Vec::new();
            let mut start = 0;
            let mut body = direct::batch_len(from.get(), &[]);
            let mut in_frame = 0usize;
            for (i, (&len, m)) in lens.iter().zip(&messages).enumerate() {
                let add = direct::batch_len(0, &[len]);
                if i > start
                    && (body + add > max
                        || i - start >= caps.messages_per_batch
                        || in_frame + m.entries.len() > caps.entries_per_frame)
                {
                    cuts.push((start, i));
                    start = i;
                    body = direct::batch_len(from.get(), &[]);
                    in_frame = 0;
                }
                body += add;
                in_frame += m.entries.len();
            }
            cuts.push((start, lens.len()));
            let mut total = 0;
            for &(a, b) in &cuts {
                let len = direct::batch_len(from.get(), lens.get(a..b).unwrap_or_default());
                if len > max {
                    return Err(SendError::FrameTooLarge { len, max });
                }
                total += wire::LENGTH_PREFIX + len;
            }
            let mut out = BytesMut::with_capacity(total);
            for &(a, b) in &cuts {
                let len = direct::batch_len(from.get(), lens.get(a..b).unwrap_or_default());
                // `len <= max <= u32::MAX`, checked above.
                out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
                direct::batch_put(
                    from.get(),
                    messages.get(a..b).unwrap_or_default(),
                    lens.get(a..b).unwrap_or_default(),
                    &mut out,
                );
            }
            Ok(Encoded::Frames(Frames {
                key: StreamKey::Raft(group),
                bytes: out.freeze(),
                frames: cuts.len() as u64,
                messages: messages.len() as u64,
            }))
        }
        Envelope::Heartbeats(batch) => {
            let batch = batch.into_wire(from);
            let messages = batch.heartbeats.len() as u64;
            let per_frame = caps.heartbeats_per_batch.max(1);
            let mut out = BytesMut::new();
            let mut frames = 0;
            if batch.heartbeats.len() <= per_frame {
                wire::encode_frame(&batch, max_frame_bytes, &mut out).map_err(too_large)?;
                frames = 1;
            } else {
                // More groups than a receiver takes in one batch: several batches, in order.
                for part in batch.heartbeats.chunks(per_frame) {
                    let part = wire::HeartbeatBatch {
                        from: batch.from,
                        responses: batch.responses,
                        heartbeats: part.to_vec(),
                    };
                    wire::encode_frame(&part, max_frame_bytes, &mut out).map_err(too_large)?;
                    frames += 1;
                }
            }
            Ok(Encoded::Frames(Frames {
                key: StreamKey::Heartbeats,
                bytes: out.freeze(),
                frames,
                messages,
            }))
        }
        Envelope::Forward(forward) => {
            // One request or reply per frame: a command larger than a frame is refused here,
            // before anything is queued (the forwarding node answers it as not taken effect).
            let mut out = BytesMut::new();
            wire::encode_frame(&forward.into_wire(from), max_frame_bytes, &mut out)
                .map_err(too_large)?;
            Ok(Encoded::Frames(Frames {
                key: StreamKey::Forward,
                bytes: out.freeze(),
                frames: 1,
                messages: 1,
            }))
        }
        Envelope::Snapshot { group, mut message } => {
            let data = std::mem::take(&mut message.mut_snapshot().data);
            let header = wire::SnapshotHeader {
                from: from.get(),
                message: Some(convert::to_wire(&message)),
                total_len: data.len() as u64,
            };
            let mut out = BytesMut::from(&header_frame(StreamKind::Snapshot, group.get())[..]);
            wire::encode_frame(&header, max_frame_bytes, &mut out).map_err(too_large)?;
            Ok(Encoded::Snapshot(SnapshotTransfer {
                group,
                head: out.freeze(),
                data,
            }))
        }
    }
}

/// Why an incoming stream is reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("unknown group {0}")]
    UnknownGroup(GroupId),
    #[error("malformed: {0}")]
    Malformed(WireError),
    #[error("unknown stream kind or version: {0}")]
    UnknownKind(WireError),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("too many elements: {0}")]
    TooMany(WireError),
    #[error("no progress on an unfinished frame for {0:?}")]
    Stalled(std::time::Duration),
    #[error("frame claims sender {claimed}, certificate says {peer}")]
    SenderMismatch { claimed: u64, peer: NodeId },
    #[error("snapshot refused: {0}")]
    OverBudget(Exhausted),
}

impl Refusal {
    /// The `RecvStream::stop` code, see [`codes`].
    pub(crate) fn code(&self) -> u32 {
        match self {
            Self::UnknownGroup(_) => codes::UNKNOWN_GROUP,
            Self::Malformed(_) => codes::MALFORMED,
            Self::UnknownKind(_) => codes::UNKNOWN_KIND,
            Self::TooLarge(_) => codes::TOO_LARGE,
            Self::TooMany(_) => codes::TOO_MANY,
            Self::Stalled(_) => codes::STALLED,
            Self::SenderMismatch { .. } => codes::SENDER_MISMATCH,
            Self::OverBudget(_) => codes::SNAPSHOT_BUDGET,
        }
    }

    /// Counts the reset under its reason.
    pub(crate) fn count(&self, c: &Counters) {
        Counters::add(&c.streams_reset, 1);
        let reason = match self {
            Self::UnknownGroup(_) => &c.resets_unknown_group,
            Self::Malformed(_) => &c.resets_malformed,
            Self::UnknownKind(_) => &c.resets_unknown_kind,
            Self::TooLarge(_) => &c.resets_too_large,
            Self::TooMany(_) => &c.resets_too_many,
            Self::Stalled(_) => &c.resets_stalled,
            Self::SenderMismatch { .. } => {
                Counters::add(&c.dropped_sender_mismatch, 1);
                &c.resets_sender_mismatch
            }
            Self::OverBudget(_) => &c.resets_snapshot_budget,
        };
        Counters::add(reason, 1);
    }

    fn from_wire(e: WireError) -> Self {
        match e {
            WireError::FrameTooLarge { .. } => Self::TooLarge(e.to_string()),
            WireError::TooManyElements { .. } => Self::TooMany(e),
            WireError::UnknownStreamKind(_) | WireError::UnsupportedVersion(_) => {
                Self::UnknownKind(e)
            }
            other => Self::Malformed(other),
        }
    }
}

enum State {
    Header,
    Raft(GroupId),
    Heartbeats,
    Forward,
    Control,
    SnapshotHead(GroupId),
    SnapshotData {
        group: GroupId,
        message: Box<eraftpb::Message>,
        total: u64,
        data: BytesMut,
        /// The budget `data` is allocated from, given back when the transfer ends.
        _reservation: Option<Reservation>,
    },
}

/// What one [`StreamReader::feed_all`] read, added to the shared counters at once.
#[derive(Default)]
struct Tally {
    bytes: u64,
    frames: u64,
    messages: u64,
}

impl Tally {
    /// Adds the tally to the counters, and to those of the stream's kind when it has its own.
    fn add_to(&self, c: &Counters, kind: Option<StreamKind>) {
        Counters::add_all([
            (&c.bytes_received, self.bytes),
            (&c.frames_received, self.frames),
            (&c.messages_received, self.messages),
        ]);
        let by_kind = match kind {
            Some(StreamKind::Heartbeats) => {
                Some((&c.heartbeat_frames_received, &c.heartbeat_bytes_received))
            }
            Some(StreamKind::Snapshot) => {
                Some((&c.snapshot_frames_received, &c.snapshot_bytes_received))
            }
            Some(StreamKind::Forward) => {
                Some((&c.forward_frames_received, &c.forward_bytes_received))
            }
            _ => None,
        };
        if let Some((frames, bytes)) = by_kind {
            Counters::add_all([(frames, self.frames), (bytes, self.bytes)]);
        }
    }
}

/// Decodes one incoming stream from one authenticated peer.
pub(crate) struct StreamReader {
    peer: NodeId,
    max_frame_bytes: usize,
    max_snapshot_bytes: u64,
    known_groups: GroupFilter,
    caps: RepeatedCaps,
    state: State,
    dec: wire::FrameDecoder,
    /// What unfinished snapshots may hold; `None`: bounded by `max_snapshot_bytes` alone.
    snapshot_budget: Option<SnapshotBudget>,
}

impl StreamReader {
    pub(crate) fn new(
        peer: NodeId,
        max_frame_bytes: usize,
        max_snapshot_bytes: u64,
        known_groups: GroupFilter,
        caps: RepeatedCaps,
    ) -> Self {
        Self {
            peer,
            max_frame_bytes,
            max_snapshot_bytes,
            known_groups,
            caps,
            state: State::Header,
            dec: wire::FrameDecoder::new(wire::MAX_HEADER_BYTES),
            snapshot_budget: None,
        }
    }

    /// Makes a snapshot transfer reserve its announced size in `budget` before any of its
    /// data is buffered, and allocate exactly that: one refused does not fit.
    pub(crate) fn with_snapshot_budget(mut self, budget: SnapshotBudget) -> Self {
        self.snapshot_budget = Some(budget);
        self
    }

    /// Memory held for frames not yet complete (and a snapshot being reassembled).
    pub(crate) fn held_bytes(&self) -> usize {
        let snapshot = match &self.state {
            State::SnapshotData { data, .. } => data.capacity(),
            _ => 0,
        };
        self.dec.held_bytes() + snapshot
    }

    /// Memory held for frames not yet complete (a snapshot's reassembled data excluded).
    pub(crate) fn frame_bytes(&self) -> usize {
        self.dec.held_bytes()
    }

    /// Whether bytes of an unfinished frame are held.
    pub(crate) fn unfinished(&self) -> bool {
        self.dec.buffered() > 0
    }

    /// The kind and group once the header is read.
    pub(crate) fn kind(&self) -> Option<(StreamKind, Option<GroupId>)> {
        match &self.state {
            State::Header => None,
            State::Raft(g) => Some((StreamKind::Raft, Some(*g))),
            State::Heartbeats => Some((StreamKind::Heartbeats, None)),
            State::Forward => Some((StreamKind::Forward, None)),
            State::Control => Some((StreamKind::Control, None)),
            State::SnapshotHead(g) | State::SnapshotData { group: g, .. } => {
                Some((StreamKind::Snapshot, Some(*g)))
            }
        }
    }

    fn check_from(&self, claimed: u64) -> Result<(), Refusal> {
        if claimed == self.peer.get() {
            Ok(())
        } else {
            Err(Refusal::SenderMismatch {
                claimed,
                peer: self.peer,
            })
        }
    }

    /// Feeds received bytes; returns the envelopes they complete. The raft frames of one
    /// feed come back as one envelope holding all their messages, in order: one event per
    /// read for the coordinator, not one per frame.
    pub(crate) fn feed(
        &mut self,
        bytes: Bytes,
        counters: &Counters,
    ) -> Result<Vec<Envelope>, Refusal> {
        self.feed_all([bytes], counters)
    }

    /// [`StreamReader::feed`] for several reads at once.
    pub(crate) fn feed_all(
        &mut self,
        reads: impl IntoIterator<Item = Bytes>,
        counters: &Counters,
    ) -> Result<Vec<Envelope>, Refusal> {
        let mut out: Vec<Envelope> = Vec::new();
        // Counted once per call, not per frame: the counters are shared with every other
        // task of the endpoint, and a read holds many small frames.
        let mut tally = Tally::default();
        let result = self.feed_into(reads, &mut tally, &mut out);
        tally.add_to(counters, self.kind().map(|(kind, _)| kind));
        result.map(|()| out)
    }

    fn feed_into(
        &mut self,
        reads: impl IntoIterator<Item = Bytes>,
        tally: &mut Tally,
        out: &mut Vec<Envelope>,
    ) -> Result<(), Refusal> {
        for bytes in reads {
            tally.bytes += bytes.len() as u64;
            self.dec.push(bytes);
            while let Some(body) = self.dec.next_frame().map_err(Refusal::from_wire)? {
                self.frame(body, tally, out)?;
            }
        }
        Ok(())
    }

    /// Decodes one frame; what it completes goes to `out` (a raft frame's messages to the
    /// raft envelope `out` ends with, if any).
    fn frame(
        &mut self,
        body: Bytes,
        tally: &mut Tally,
        out: &mut Vec<Envelope>,
    ) -> Result<(), Refusal> {
        // Repeated fields are counted on the bytes before the decoder pushes a single element.
        let kind = match &self.state {
            State::Raft(_) => Some(FrameKind::RaftBatch),
            State::Heartbeats => Some(FrameKind::HeartbeatBatch),
            State::SnapshotHead(_) => Some(FrameKind::SnapshotHeader),
            _ => None,
        };
        if let Some(kind) = kind {
            limits::check(kind, &body, &self.caps).map_err(Refusal::from_wire)?;
        }
        match &mut self.state {
            State::Header => {
                let header: StreamHeader =
                    wire::decode_body("StreamHeader", body).map_err(Refusal::Malformed)?;
                let kind = header.validate().map_err(Refusal::from_wire)?;
                let group = GroupId(header.group_id);
                if matches!(kind, StreamKind::Raft | StreamKind::Snapshot)
                    && !(self.known_groups)(group)
                {
                    return Err(Refusal::UnknownGroup(group));
                }
                self.state = match kind {
                    StreamKind::Raft => State::Raft(group),
                    StreamKind::Heartbeats => State::Heartbeats,
                    StreamKind::Forward => State::Forward,
                    StreamKind::Control => State::Control,
                    _ => State::SnapshotHead(group),
                };
                self.dec.set_max_frame_bytes(self.max_frame_bytes);
                Ok(())
            }
            State::Raft(group) => {
                let group = *group;
                if !matches!(out.last(), Some(Envelope::Raft { group: g, .. }) if *g == group) {
                    out.push(Envelope::Raft {
                        group,
                        messages: Vec::new(),
                    });
                }
                if let Some(Envelope::Raft { messages, .. }) = out.last_mut() {
                    // Decoded straight into raft-rs' types, appended to the envelope.
                    let before = messages.len();
                    let from = direct::batch_decode(body, messages).map_err(Refusal::Malformed)?;
                    self.check_from(from)?;
                    for m in messages.get(before..).unwrap_or_default() {
                        self.check_from(m.from)?;
                    }
                    tally.frames += 1;
                    tally.messages += (messages.len() - before) as u64;
                }
                Ok(())
            }
            State::Heartbeats => {
                let batch: wire::HeartbeatBatch =
                    wire::decode_body("HeartbeatBatch", body).map_err(Refusal::Malformed)?;
                self.check_from(batch.from)?;
                tally.frames += 1;
                tally.messages += batch.heartbeats.len() as u64;
                out.push(Envelope::Heartbeats(HeartbeatBatch::from_wire(batch)));
                Ok(())
            }
            State::Forward => {
                let frame: wire::ForwardFrame =
                    wire::decode_body("ForwardFrame", body).map_err(Refusal::Malformed)?;
                self.check_from(frame.from)?;
                let forward = Forward::from_wire(frame).map_err(Refusal::Malformed)?;
                tally.frames += 1;
                tally.messages += 1;
                out.push(Envelope::Forward(forward));
                Ok(())
            }
            State::Control => Err(Refusal::Malformed(WireError::Malformed {
                what: "control stream",
                reason: "carries no frames".into(),
            })),
            State::SnapshotHead(group) => {
                let group = *group;
                let head: wire::SnapshotHeader =
                    wire::decode_body("SnapshotHeader", body).map_err(Refusal::Malformed)?;
                self.check_from(head.from)?;
                let message = head.message.ok_or_else(|| {
                    Refusal::Malformed(WireError::Malformed {
                        what: "SnapshotHeader",
                        reason: "no message".into(),
                    })
                })?;
                self.check_from(message.from)?;
                let message = convert::from_wire(message).map_err(Refusal::Malformed)?;
                if head.total_len > self.max_snapshot_bytes {
                    return Err(Refusal::TooLarge(format!(
                        "snapshot of {} bytes exceeds the maximum of {}",
                        head.total_len, self.max_snapshot_bytes
                    )));
                }
                let (reservation, data) = match &self.snapshot_budget {
                    Some(budget) => {
                        let reservation = budget
                            .reserve(head.total_len)
                            .map_err(Refusal::OverBudget)?;
                        // Reserved and at most `max_snapshot_bytes`, so it fits a usize.
                        let len = usize::try_from(head.total_len).unwrap_or(usize::MAX);
                        (Some(reservation), BytesMut::with_capacity(len))
                    }
                    None => (None, BytesMut::new()),
                };
                tally.frames += 1;
                self.state = State::SnapshotData {
                    group,
                    message: Box::new(message),
                    total: head.total_len,
                    data,
                    _reservation: reservation,
                };
                Ok(())
            }
            State::SnapshotData { total, data, .. } => {
                let chunk: wire::SnapshotChunk =
                    wire::decode_body("SnapshotChunk", body).map_err(Refusal::Malformed)?;
                if (data.len() + chunk.data.len()) as u64 > *total {
                    return Err(Refusal::Malformed(WireError::Malformed {
                        what: "SnapshotChunk",
                        reason: format!("more data than the announced {total} bytes"),
                    }));
                }
                data.extend_from_slice(&chunk.data);
                tally.frames += 1;
                Ok(())
            }
        }
    }

    /// The stream ended cleanly: checks nothing is left half-read and completes a snapshot.
    pub(crate) fn finish(&mut self, counters: &Counters) -> Result<Option<Envelope>, Refusal> {
        self.dec.finish().map_err(Refusal::Malformed)?;
        match std::mem::replace(&mut self.state, State::Header) {
            State::SnapshotData {
                group,
                mut message,
                total,
                data,
                ..
            } => {
                if data.len() as u64 != total {
                    return Err(Refusal::Malformed(WireError::Truncated {
                        buffered: data.len(),
                    }));
                }
                message.mut_snapshot().data = data.freeze();
                Counters::add(&counters.messages_received, 1);
                Counters::add(&counters.snapshots_received, 1);
                Ok(Some(Envelope::Snapshot {
                    group,
                    message: *message,
                }))
            }
            State::SnapshotHead(_) => Err(Refusal::Malformed(WireError::Truncated { buffered: 0 })),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
