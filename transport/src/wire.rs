//! The wire format of Pontoon, owned by this crate and defined with prost derives (no protoc).
//!
//! Every unidirectional stream starts with one [`StreamHeader`] frame, then carries frames of
//! the kind the header names. A frame is a 4-byte big-endian length followed by that many bytes
//! of one prost message; the length is bounded by a configurable maximum, checked before any
//! byte of the body is buffered. Bytes from the network are decoded by prost only: raft-rs'
//! own `protobuf` 2.x codec never sees them (RUSTSEC-2024-0437).

// This module reads bytes a peer controls: every access is checked.
#![warn(clippy::indexing_slicing)]

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The version of the wire format written in every [`StreamHeader`].
pub const WIRE_VERSION: u32 = 1;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// The largest stream header frame body accepted: a header is three small varints.
pub const MAX_HEADER_BYTES: usize = 64;

/// What went wrong while decoding bytes from the network.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A frame announced a body longer than the configured maximum; the stream must be reset.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The bytes are not a valid prost encoding of the expected message.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which message was being decoded.
        what: &'static str,
        /// prost's description of the problem.
        reason: String,
    },
    /// The stream header names a wire version this build does not speak.
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion(u32),
    /// The stream header names a stream kind this build does not know.
    #[error("unknown stream kind {0}")]
    UnknownStreamKind(i32),
    /// A raft message carries an enum value raft-rs does not know.
    #[error("unknown {what} value {value}")]
    UnknownEnumValue {
        /// The enum (`MessageType`, `EntryType`).
        what: &'static str,
        /// The raw value on the wire.
        value: i32,
    },
    /// A repeated field holds more elements than its cap (counted on the bytes, before any
    /// is decoded): the sender must split its batch, or the receiver raise the cap.
    #[error("{count} {what} exceed the maximum of {max}")]
    TooManyElements {
        /// Which count (`"entries per message"`, `"heartbeats per batch"`, ...).
        what: &'static str,
        /// How many were counted when the cap was passed.
        count: usize,
        /// The configured cap.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes received of the unfinished frame, prefix included.
        buffered: usize,
    },
}

/// The kind of a stream, named in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StreamKind {
    /// Never sent; the zero value of the enum.
    Unspecified = 0,
    /// One stream per (peer, group): frames of [`RaftBatch`].
    Raft = 1,
    /// One stream per peer: frames of [`HeartbeatBatch`] for many groups.
    Heartbeats = 2,
    /// One bidirectional stream per snapshot transfer: [`SnapshotHeader`], then
    /// [`SnapshotChunk`]s; the receiver answers with one [`SnapshotAck`].
    Snapshot = 3,
    /// Header only, opened by the lower NodeId on a connection the higher NodeId dialled,
    /// to say it adopted that connection (see the connection rule in the QUIC transport).
    Control = 4,
    /// One stream per peer: frames of [`ForwardFrame`], requests a follower forwards to the
    /// leader and the leader's replies (each direction on its sender's stream).
    Forward = 5,
}

/// The first frame of every stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamHeader {
    /// [`WIRE_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// A [`StreamKind`].
    #[prost(enumeration = "StreamKind", tag = "2")]
    pub kind: i32,
    /// The group of a raft or snapshot stream; 0 for heartbeats.
    #[prost(uint64, tag = "3")]
    pub group_id: u64,
}

impl StreamHeader {
    /// A header of the current [`WIRE_VERSION`].
    #[must_use]
    pub fn new(kind: StreamKind, group_id: u64) -> Self {
        Self {
            version: WIRE_VERSION,
            kind: kind as i32,
            group_id,
        }
    }

    /// Checks the version and kind.
    ///
    /// # Errors
    /// [`WireError::UnsupportedVersion`] or [`WireError::UnknownStreamKind`].
    pub fn validate(&self) -> Result<StreamKind, WireError> {
        if self.version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(self.version));
        }
        match StreamKind::try_from(self.kind) {
            Ok(StreamKind::Unspecified) | Err(_) => Err(WireError::UnknownStreamKind(self.kind)),
            Ok(kind) => Ok(kind),
        }
    }
}

/// A raft-rs `eraftpb::Entry`, field for field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// `EntryType` as its raw value.
    #[prost(int32, tag = "1")]
    pub entry_type: i32,
    /// Term of the entry.
    #[prost(uint64, tag = "2")]
    pub term: u64,
    /// Index of the entry.
    #[prost(uint64, tag = "3")]
    pub index: u64,
    /// Payload.
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    /// Deprecated in raft-rs, kept so conversion is lossless.
    #[prost(bool, tag = "5")]
    pub sync_log: bool,
    /// Application context.
    #[prost(bytes = "bytes", tag = "6")]
    pub context: Bytes,
}

/// A raft-rs `eraftpb::ConfState`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfState {
    /// Voters.
    #[prost(uint64, repeated, tag = "1")]
    pub voters: Vec<u64>,
    /// Learners.
    #[prost(uint64, repeated, tag = "2")]
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration (joint consensus).
    #[prost(uint64, repeated, tag = "3")]
    pub voters_outgoing: Vec<u64>,
    /// Learners once the outgoing configuration is left.
    #[prost(uint64, repeated, tag = "4")]
    pub learners_next: Vec<u64>,
    /// Leave the joint configuration automatically.
    #[prost(bool, tag = "5")]
    pub auto_leave: bool,
}

/// A raft-rs `eraftpb::SnapshotMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotMetadata {
    /// The configuration at `index`; `None` when raft-rs left it unset.
    #[prost(message, optional, tag = "1")]
    pub conf_state: Option<ConfState>,
    /// Applied index.
    #[prost(uint64, tag = "2")]
    pub index: u64,
    /// Term of the applied index.
    #[prost(uint64, tag = "3")]
    pub term: u64,
}

/// A raft-rs `eraftpb::Snapshot`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// The state machine image. Empty on a snapshot stream, whose chunks carry it.
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
    /// Metadata; `None` when raft-rs left it unset.
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<SnapshotMetadata>,
}

/// A raft-rs `eraftpb::Message`, field for field, so conversion is lossless.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftMessage {
    /// `MessageType` as its raw value.
    #[prost(int32, tag = "1")]
    pub msg_type: i32,
    /// Receiving raft peer (a `NodeId`).
    #[prost(uint64, tag = "2")]
    pub to: u64,
    /// Sending raft peer (a `NodeId`): must equal the sender's certificate.
    #[prost(uint64, tag = "3")]
    pub from: u64,
    /// Term.
    #[prost(uint64, tag = "4")]
    pub term: u64,
    /// Term of the entry at `index`.
    #[prost(uint64, tag = "5")]
    pub log_term: u64,
    /// Log index.
    #[prost(uint64, tag = "6")]
    pub index: u64,
    /// Entries to append.
    #[prost(message, repeated, tag = "7")]
    pub entries: Vec<Entry>,
    /// Commit index.
    #[prost(uint64, tag = "8")]
    pub commit: u64,
    /// Snapshot; `None` when raft-rs left it unset.
    #[prost(message, optional, tag = "9")]
    pub snapshot: Option<Snapshot>,
    /// Rejection flag of responses.
    #[prost(bool, tag = "10")]
    pub reject: bool,
    /// Hint of a rejection.
    #[prost(uint64, tag = "11")]
    pub reject_hint: u64,
    /// Context (read index requests).
    #[prost(bytes = "bytes", tag = "12")]
    pub context: Bytes,
    /// Requested snapshot index.
    #[prost(uint64, tag = "13")]
    pub request_snapshot: u64,
    /// Deprecated priority, kept so conversion is lossless.
    #[prost(uint64, tag = "14")]
    pub deprecated_priority: u64,
    /// Term of the commit index.
    #[prost(uint64, tag = "15")]
    pub commit_term: u64,
    /// Election priority.
    #[prost(int64, tag = "16")]
    pub priority: i64,
}

/// One frame of a raft stream: messages of one group from one node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftBatch {
    /// The claimed sender; must equal the NodeId of the peer's certificate.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// The messages, in the order raft produced them.
    #[prost(message, repeated, tag = "2")]
    pub messages: Vec<RaftMessage>,
}

/// One group's heartbeat (or heartbeat response) inside a [`HeartbeatBatch`].
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Heartbeat {
    /// The group.
    #[prost(uint64, tag = "1")]
    pub group_id: u64,
    /// The leader's term.
    #[prost(uint64, tag = "2")]
    pub term: u64,
    /// The commit index the follower may advance to.
    #[prost(uint64, tag = "3")]
    pub commit: u64,
    /// Reserved for quiescence; `false` for now.
    #[prost(bool, tag = "4")]
    pub quiesce: bool,
}

/// Coalesced heartbeats of many groups between one pair of nodes, all requests or all
/// responses (never mixed: CockroachDB's rule).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatBatch {
    /// The claimed sender; must equal the NodeId of the peer's certificate.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// `true` when these are `MsgHeartbeatResponse`s.
    #[prost(bool, tag = "2")]
    pub responses: bool,
    /// One entry per group.
    #[prost(message, repeated, tag = "3")]
    pub heartbeats: Vec<Heartbeat>,
}

/// The first frame after the header of a snapshot stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotHeader {
    /// The claimed sender; must equal the NodeId of the peer's certificate.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// The `MsgSnapshot` with its snapshot data left empty.
    #[prost(message, optional, tag = "2")]
    pub message: Option<RaftMessage>,
    /// Total bytes of snapshot data the chunks will carry.
    #[prost(uint64, tag = "3")]
    pub total_len: u64,
}

/// A piece of snapshot data; the chunks concatenated are the snapshot's data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotChunk {
    /// The bytes of this chunk.
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

/// The receiver's answer on a snapshot stream, once the snapshot is reassembled and handed
/// on (or refused).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotAck {
    /// `true` when the snapshot was handed to the receiving coordinator.
    #[prost(bool, tag = "1")]
    pub delivered: bool,
}

/// A client session's tag on a forwarded command, field for field (see the coordinator's
/// client sessions): the leader proposes the command with it, so a retry still applies once.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ForwardSession {
    /// The session's id.
    #[prost(uint64, tag = "1")]
    pub client: u64,
    /// The command's sequence number in the session.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// Every answer up to this sequence number is acknowledged.
    #[prost(uint64, tag = "3")]
    pub acked: u64,
    /// The proposer's clock, in ms since the Unix epoch.
    #[prost(uint64, tag = "4")]
    pub time_ms: u64,
}

/// A command a follower forwards to the group's leader, to be proposed there.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardPropose {
    /// The vShard the follower routed the command by, if it routed by key.
    #[prost(uint32, optional, tag = "1")]
    pub vshard: Option<u32>,
    /// The database's command.
    #[prost(bytes = "bytes", tag = "2")]
    pub command: Bytes,
    /// Its client session, if it has one.
    #[prost(message, optional, tag = "3")]
    pub session: Option<ForwardSession>,
}

/// Why the leader did not answer a forwarded command with a response.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ForwardError {
    /// Which error (the coordinator's code for its typed error).
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// `true` when the command certainly did not take effect: kept on the wire, so a code
    /// this build does not know still keeps its outcome class.
    #[prost(bool, tag = "2")]
    pub not_applied: bool,
    /// A node the error names (a leader, a transfer target); 0 for none.
    #[prost(uint64, tag = "3")]
    pub node: u64,
    /// A vShard the error names.
    #[prost(uint32, tag = "4")]
    pub vshard: u32,
    /// A routing-table version the error names.
    #[prost(uint64, tag = "5")]
    pub table_version: u64,
    /// A sub-reason code, or the text of a refusal.
    #[prost(string, tag = "6")]
    pub reason: String,
}

/// The leader's answer to a forwarded request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardReply {
    /// The response, or why there is none.
    #[prost(oneof = "ForwardOutcome", tags = "1, 2")]
    pub outcome: Option<ForwardOutcome>,
}

/// A [`ForwardReply`]'s outcome.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ForwardOutcome {
    /// The state machine's response.
    #[prost(bytes = "bytes", tag = "1")]
    Response(Bytes),
    /// The typed error.
    #[prost(message, tag = "2")]
    Error(ForwardError),
}

/// One frame of a forward stream: a forwarded request, or the reply to one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardFrame {
    /// The claimed sender; must equal the NodeId of the peer's certificate.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// The request's id, chosen by the node that forwarded it; its reply carries it back.
    #[prost(uint64, tag = "2")]
    pub id: u64,
    /// The group of a request; 0 in a reply.
    #[prost(uint64, tag = "3")]
    pub group_id: u64,
    /// What the frame carries.
    #[prost(oneof = "ForwardBody", tags = "4, 5")]
    pub body: Option<ForwardBody>,
}

/// A [`ForwardFrame`]'s body.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ForwardBody {
    /// A command to propose.
    #[prost(message, tag = "4")]
    Propose(ForwardPropose),
    /// The reply to a request this node forwarded.
    #[prost(message, tag = "5")]
    Reply(ForwardReply),
}

/// Appends one length-prefixed frame holding `message` to `out`.
///
/// # Errors
/// [`WireError::FrameTooLarge`] when the encoding exceeds `max_frame_bytes`; `out` is then
/// left as it was.
pub fn encode_frame<M: prost::Message>(
    message: &M,
    max_frame_bytes: usize,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let len = message.encoded_len();
    let max = max_frame_bytes.min(u32::MAX as usize);
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    out.reserve(LENGTH_PREFIX + len);
    // `len <= u32::MAX` was checked above.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // `reserve` above guarantees the capacity, so encoding cannot fail.
    message.encode(out).map_err(|e| WireError::Malformed {
        what: "frame (encode)",
        reason: e.to_string(),
    })
}

/// Decodes one frame body (prefix already removed) as `M`.
///
/// # Errors
/// [`WireError::Malformed`] when prost rejects the bytes.
pub fn decode_body<M: prost::Message + Default>(
    what: &'static str,
    body: Bytes,
) -> Result<M, WireError> {
    M::decode(body).map_err(|e| WireError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// Most a [`FrameDecoder`] reserves ahead of the bytes it holds for an unfinished frame.
const RESERVE_AHEAD: usize = 64 << 10;

/// Splits a byte stream into frame bodies, refusing any frame longer than its maximum before
/// buffering it.
///
/// Feed it bytes as they arrive with [`FrameDecoder::push`] (received `Bytes`, split without
/// copying) or [`FrameDecoder::extend`] (a slice, copied), then take complete frames with
/// [`FrameDecoder::next_frame`]. Only the bytes of a frame that straddles two reads are
/// copied; it never holds more than one frame plus one read's worth of bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    /// The start of a frame that straddles reads, and what arrived after it.
    buf: BytesMut,
    /// Received bytes not yet split, used in place while `buf` is empty.
    chunk: Bytes,
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// A decoder accepting frames of at most `max_frame_bytes` bytes (prefix excluded).
    #[must_use]
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            chunk: Bytes::new(),
            max_frame_bytes,
        }
    }

    /// Changes the maximum, e.g. from the header limit to the data limit after the header.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// Appends bytes received from the stream (copied).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.spill();
        self.buf.extend_from_slice(bytes);
    }

    /// Appends bytes received from the stream; frames wholly inside them are handed out as
    /// slices of `bytes`, without a copy. Of a frame that straddles reads only its own bytes
    /// are copied, not the reads that follow it.
    pub fn push(&mut self, bytes: Bytes) {
        if self.chunk.is_empty() {
            self.chunk = bytes;
        } else {
            self.spill();
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// Moves the unsplit received bytes behind the buffered ones.
    fn spill(&mut self) {
        if !self.chunk.is_empty() {
            self.buf.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
        }
    }

    /// Memory the decoder holds: its buffer's capacity and the received bytes not yet split.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.chunk.len()
    }

    /// Bytes buffered that do not yet form a complete frame.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.chunk.len()
    }

    /// The body length announced by the prefix at the start of `bytes`, checked against the
    /// maximum; `None` while the prefix is incomplete.
    fn announced(&self, bytes: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(prefix) = bytes.first_chunk::<LENGTH_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max_frame_bytes {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        Ok(Some(len))
    }

    /// The next complete frame body, `None` if more bytes are needed.
    ///
    /// # Errors
    /// [`WireError::FrameTooLarge`] as soon as a prefix announces too long a frame.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        if !self.buf.is_empty() && !self.chunk.is_empty() {
            // Complete the buffered frame start from the received bytes, copying only what
            // it lacks: the prefix first, then the body it announces.
            if self.buf.len() < LENGTH_PREFIX {
                let take = (LENGTH_PREFIX - self.buf.len()).min(self.chunk.len());
                self.buf
                    .extend_from_slice(self.chunk.get(..take).unwrap_or_default());
                self.chunk.advance(take);
            }
            if let Some(len) = self.announced(&self.buf)? {
                let missing = (LENGTH_PREFIX + len).saturating_sub(self.buf.len());
                let take = missing.min(self.chunk.len());
                self.buf
                    .extend_from_slice(self.chunk.get(..take).unwrap_or_default());
                self.chunk.advance(take);
            }
        }
        if self.buf.is_empty() && !self.chunk.is_empty() {
            if let Some(len) = self.announced(&self.chunk)?
                && self.chunk.len() >= LENGTH_PREFIX + len
            {
                self.chunk.advance(LENGTH_PREFIX);
                return Ok(Some(self.chunk.split_to(len)));
            }
            // A frame straddles reads: buffer its start (checked above when complete
            // enough to tell its length).
            self.spill();
            return Ok(None);
        }
        let Some(len) = self.announced(&self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() < LENGTH_PREFIX + len {
            // Room for what is likely to come next, never for the whole announced length:
            // a prefix costs the peer four bytes, and must not cost us `len` bytes of memory.
            let missing = LENGTH_PREFIX + len - self.buf.len();
            self.buf.reserve(missing.min(RESERVE_AHEAD));
            return Ok(None);
        }
        self.buf.advance(LENGTH_PREFIX);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Call when the stream ended: an unfinished frame is an error.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when bytes of an unfinished frame remain.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buffered() == 0 {
            Ok(())
        } else {
            Err(WireError::Truncated {
                buffered: self.buffered(),
            })
        }
    }
}

#[cfg(test)]
mod tests;
