//! Envelopes to stream bytes and back: the framing both the QUIC transport and the in-memory
//! network use, so the simulation exercises the same decoder that faces the network.
//!
//! [`StreamReader`] is sans-IO: bytes in, envelopes out, or a [`Refusal`] that says why the
//! stream must be reset.

use bytes::{Bytes, BytesMut};
use raft::eraftpb;
use routing::{GroupId, NodeId};

use crate::stats::Counters;
use crate::wire::{self, StreamHeader, StreamKind, WireError};
use crate::{Envelope, GroupFilter, SendError, convert};

/// Application error codes of `RecvStream::stop` (stream resets) and connection closes.
pub mod codes {
    /// Stream reset: the header names a group this node does not know.
    pub const UNKNOWN_GROUP: u32 = 0x10;
    /// Stream reset: a header or frame did not decode, or the stream ended inside a frame.
    pub const MALFORMED: u32 = 0x11;
    /// Stream reset: unknown stream kind or wire version.
    pub const UNKNOWN_KIND: u32 = 0x12;
    /// Stream reset: a frame longer than `max_frame_bytes`, or a snapshot longer than
    /// `max_snapshot_bytes`.
    pub const TOO_LARGE: u32 = 0x13;
    /// Stream reset: a frame claims a sender other than the peer's certificate.
    pub const SENDER_MISMATCH: u32 = 0x14;
    /// Stream reset or connection close: this node is shutting down.
    pub const SHUTDOWN: u32 = 0x15;
    /// Connection close: another connection between the same two nodes won (the one dialled
    /// by the lower NodeId).
    pub const DUPLICATE_CONNECTION: u32 = 0x20;
    /// Connection close: the peer's certificate carries no node id (on the raft ALPN), or no
    /// pontoon identity at all (on the client ALPN).
    pub const NOT_A_NODE: u32 = 0x21;
    /// Connection close: a client connection arrived while the queue of client connections
    /// not yet taken by the service was full (`TransportConfig::client_queue_len`).
    pub const CLIENTS_BUSY: u32 = 0x22;
}

/// Where an outgoing frame goes: the stream it is written on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum StreamKey {
    /// The raft stream of one group.
    Raft(GroupId),
    /// The heartbeat stream of the peer.
    Heartbeats,
}

impl StreamKey {
    pub(crate) fn group(self) -> Option<GroupId> {
        match self {
            Self::Raft(g) => Some(g),
            Self::Heartbeats => None,
        }
    }

    pub(crate) fn header(self) -> Bytes {
        match self {
            Self::Raft(g) => header_frame(StreamKind::Raft, g.get()),
            Self::Heartbeats => header_frame(StreamKind::Heartbeats, 0),
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

/// Encodes an envelope as `from` sends it. Raft batches too large for one frame are split
/// between messages; a single message that does not fit is refused.
pub(crate) fn encode(
    from: NodeId,
    envelope: Envelope,
    max_frame_bytes: usize,
) -> Result<Encoded, SendError> {
    let too_large = |e: WireError| match e {
        WireError::FrameTooLarge { len, max } => SendError::FrameTooLarge { len, max },
        other => SendError::Encode(other),
    };
    match envelope {
        Envelope::Raft { group, messages } => {
            let mut out = BytesMut::new();
            let mut frames = 0;
            let count = messages.len() as u64;
            let mut batch = wire::RaftBatch {
                from: from.get(),
                messages: Vec::new(),
            };
            // Prefix, tag and length of each message inside the batch.
            let overhead = |len: usize| len + 1 + prost::length_delimiter_len(len);
            let mut batch_len = 16;
            for m in &messages {
                let w = convert::to_wire(m);
                let len = overhead(prost::Message::encoded_len(&w));
                if !batch.messages.is_empty() && batch_len + len > max_frame_bytes {
                    wire::encode_frame(&batch, max_frame_bytes, &mut out).map_err(too_large)?;
                    frames += 1;
                    batch.messages.clear();
                    batch_len = 16;
                }
                batch_len += len;
                batch.messages.push(w);
            }
            wire::encode_frame(&batch, max_frame_bytes, &mut out).map_err(too_large)?;
            frames += 1;
            Ok(Encoded::Frames(Frames {
                key: StreamKey::Raft(group),
                bytes: out.freeze(),
                frames,
                messages: count,
            }))
        }
        Envelope::Heartbeats(mut batch) => {
            batch.from = from.get();
            let mut out = BytesMut::new();
            wire::encode_frame(&batch, max_frame_bytes, &mut out).map_err(too_large)?;
            Ok(Encoded::Frames(Frames {
                key: StreamKey::Heartbeats,
                bytes: out.freeze(),
                frames: 1,
                messages: batch.heartbeats.len() as u64,
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
    #[error("frame claims sender {claimed}, certificate says {peer}")]
    SenderMismatch { claimed: u64, peer: NodeId },
}

impl Refusal {
    /// The `RecvStream::stop` code, see [`codes`].
    pub(crate) fn code(&self) -> u32 {
        match self {
            Self::UnknownGroup(_) => codes::UNKNOWN_GROUP,
            Self::Malformed(_) => codes::MALFORMED,
            Self::UnknownKind(_) => codes::UNKNOWN_KIND,
            Self::TooLarge(_) => codes::TOO_LARGE,
            Self::SenderMismatch { .. } => codes::SENDER_MISMATCH,
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
            Self::SenderMismatch { .. } => {
                Counters::add(&c.dropped_sender_mismatch, 1);
                &c.resets_sender_mismatch
            }
        };
        Counters::add(reason, 1);
    }

    fn from_wire(e: WireError) -> Self {
        match e {
            WireError::FrameTooLarge { .. } => Self::TooLarge(e.to_string()),
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
    Control,
    SnapshotHead(GroupId),
    SnapshotData {
        group: GroupId,
        message: Box<eraftpb::Message>,
        total: u64,
        data: BytesMut,
    },
}

/// Decodes one incoming stream from one authenticated peer.
pub(crate) struct StreamReader {
    peer: NodeId,
    max_frame_bytes: usize,
    max_snapshot_bytes: u64,
    known_groups: GroupFilter,
    state: State,
    dec: wire::FrameDecoder,
}

impl StreamReader {
    pub(crate) fn new(
        peer: NodeId,
        max_frame_bytes: usize,
        max_snapshot_bytes: u64,
        known_groups: GroupFilter,
    ) -> Self {
        Self {
            peer,
            max_frame_bytes,
            max_snapshot_bytes,
            known_groups,
            state: State::Header,
            dec: wire::FrameDecoder::new(wire::MAX_HEADER_BYTES),
        }
    }

    /// The kind and group once the header is read.
    pub(crate) fn kind(&self) -> Option<(StreamKind, Option<GroupId>)> {
        match &self.state {
            State::Header => None,
            State::Raft(g) => Some((StreamKind::Raft, Some(*g))),
            State::Heartbeats => Some((StreamKind::Heartbeats, None)),
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

    /// Feeds received bytes; returns the envelopes they complete.
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        counters: &Counters,
    ) -> Result<Vec<Envelope>, Refusal> {
        Counters::add(&counters.bytes_received, bytes.len() as u64);
        self.dec.extend(bytes);
        let mut out = Vec::new();
        while let Some(body) = self.dec.next_frame().map_err(Refusal::from_wire)? {
            if let Some(env) = self.frame(body, counters)? {
                out.push(env);
            }
        }
        Ok(out)
    }

    fn frame(&mut self, body: Bytes, counters: &Counters) -> Result<Option<Envelope>, Refusal> {
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
                    StreamKind::Control => State::Control,
                    _ => State::SnapshotHead(group),
                };
                self.dec.set_max_frame_bytes(self.max_frame_bytes);
                Ok(None)
            }
            State::Raft(group) => {
                let group = *group;
                let batch: wire::RaftBatch =
                    wire::decode_body("RaftBatch", body).map_err(Refusal::Malformed)?;
                self.check_from(batch.from)?;
                let mut messages = Vec::with_capacity(batch.messages.len());
                for m in batch.messages {
                    self.check_from(m.from)?;
                    messages.push(convert::from_wire(m).map_err(Refusal::Malformed)?);
                }
                Counters::add(&counters.frames_received, 1);
                Counters::add(&counters.messages_received, messages.len() as u64);
                Ok(Some(Envelope::Raft { group, messages }))
            }
            State::Heartbeats => {
                let batch: wire::HeartbeatBatch =
                    wire::decode_body("HeartbeatBatch", body).map_err(Refusal::Malformed)?;
                self.check_from(batch.from)?;
                Counters::add(&counters.frames_received, 1);
                Counters::add(&counters.messages_received, batch.heartbeats.len() as u64);
                Ok(Some(Envelope::Heartbeats(batch)))
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
                Counters::add(&counters.frames_received, 1);
                self.state = State::SnapshotData {
                    group,
                    message: Box::new(message),
                    total: head.total_len,
                    data: BytesMut::new(),
                };
                Ok(None)
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
                Counters::add(&counters.frames_received, 1);
                Ok(None)
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
