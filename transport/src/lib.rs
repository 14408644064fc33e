//! Moves raft messages between Pontoon nodes.
//!
//! Each node binds one UDP port with one quinn endpoint that both accepts and dials. Every
//! raft group speaks on its own QUIC stream keyed by its group id, so a group sending a large
//! snapshot or stalled behind a slow follower never delays another group's messages.
//!
//! - [`wire`]: the prost wire format (stream header, length-prefixed bounded frames) and
//!   [`to_wire`] / [`from_wire`], the lossless conversion from and to raft-rs messages.
//! - [`Transport`]: what the coordinator calls: a non-blocking [`Transport::send`] of an
//!   [`Envelope`]; [`Inbound`] events come back on a channel. Envelopes are typed (raft-rs
//!   messages, [`HeartbeatBatch`], [`Forward`]ed requests): the prost structs of [`wire`] stay on this side of the seam,
//!   converted by the codec.
//! - [`NodeTransport`]: what a running node holds: `send` plus the endpoint's life cycle
//!   (local address, shutdown, client connections) and trust settings (TLS reload, peer
//!   admission, revocations).
//! - `QuicTransport`: the real thing, over quinn with mutual TLS from `pontoon-certs`.
//! - [`mem`]: a deterministic, sans-IO network with seeded faults, for tests, and
//!   [`mem::LocalNetwork`], an in-process [`NodeTransport`] over channels.
//!
//! ```
//! use routing::{GroupId, NodeId};
//! use pontoon_transport::mem::{FaultConfig, SimNetwork};
//! use pontoon_transport::{Envelope, Inbound};
//!
//! let mut net = SimNetwork::new(7, FaultConfig::default());
//! let mut msg = raft::eraftpb::Message::default();
//! msg.from = 1;
//! msg.to = 2;
//! net.send(0, NodeId(1), NodeId(2), Envelope::Raft { group: GroupId(9), messages: vec![msg] });
//! let delivered = net.deliver(0);
//! assert!(matches!(&delivered[..], [(NodeId(2), Inbound::Message { from: NodeId(1), .. })]));
//! ```

#![warn(unreachable_pub)]

mod budget;
mod codec;
mod config;
mod convert;
mod direct;
mod forward;
mod heartbeat;
mod limits;
pub mod mem;
pub mod metrics;
mod node_transport;
mod quic;
mod stats;
pub mod wire;

pub use quic::{
    ClientConnection, ClientRequest, ClientRequestError, IncomingRequest, PeerAdmission,
    QuicTransport, Revocations, TransportError, quinn_configs,
};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use raft::eraftpb;
use routing::{GroupId, NodeId};

pub use codec::codes;
pub use config::{ConfigError, STREAM_HEADROOM, TransportConfig};
pub use convert::{from_wire, to_wire};
pub use forward::{Forward, ForwardError, ForwardSession};
pub use heartbeat::{GroupHeartbeat, HeartbeatBatch, HeartbeatKind};
pub use node_transport::{NodeTransport, TransportFuture};
pub use stats::TransportStats;
pub use wire::WireError;

/// What the coordinator hands to the transport for one peer.
#[derive(Clone, Debug, PartialEq)]
pub enum Envelope {
    /// Raft messages of one group, written in order on that group's stream.
    Raft {
        /// The group.
        group: GroupId,
        /// The messages, in the order raft produced them.
        messages: Vec<eraftpb::Message>,
    },
    /// Coalesced heartbeats (or responses) of many groups, on the peer's heartbeat stream.
    Heartbeats(HeartbeatBatch),
    /// A `MsgSnapshot` with its data, sent on a stream of its own; its fate comes back as
    /// [`Inbound::SnapshotStatus`].
    Snapshot {
        /// The group.
        group: GroupId,
        /// The `MsgSnapshot`, data included.
        message: eraftpb::Message,
    },
    /// A request forwarded to a group's leader, or the leader's reply, on the peer's forward
    /// stream (see [`Forward`]).
    Forward(Forward),
}

impl Envelope {
    /// The group of a raft or snapshot envelope.
    #[must_use]
    pub fn group(&self) -> Option<GroupId> {
        match self {
            Self::Raft { group, .. } | Self::Snapshot { group, .. } => Some(*group),
            Self::Heartbeats(_) | Self::Forward(_) => None,
        }
    }
}

/// What the transport hands to the coordinator.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// An envelope from an authenticated peer: `from` is the NodeId of its certificate.
    Message {
        /// The sender, as its certificate proves.
        from: NodeId,
        /// What it sent.
        envelope: Envelope,
    },
    /// Messages toward `to` were lost (peer unreachable, queue drained, stream failed): call
    /// `report_unreachable` on the group (or on every group with that peer when `None`).
    Unreachable {
        /// The peer.
        to: NodeId,
        /// The group whose messages were lost; `None` for heartbeats.
        group: Option<GroupId>,
    },
    /// A snapshot transfer ended: call `report_snapshot`.
    SnapshotStatus {
        /// The peer.
        to: NodeId,
        /// The group.
        group: GroupId,
        /// `true` when the receiver acknowledged it.
        delivered: bool,
    },
}

/// Why [`Transport::send`] refused an envelope. Every refusal is counted in the stats.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The queue toward the peer (or the group's stream) is full: report the peer
    /// unreachable and let raft retry.
    #[error("queue toward {to} is full")]
    QueueFull {
        /// The peer.
        to: NodeId,
    },
    /// The peer is not in the address book: add it, or report it unreachable.
    #[error("no address for {0}")]
    UnknownPeer(NodeId),
    /// One message does not fit in a frame: raise `max_frame_bytes` or send smaller entries.
    #[error("a frame of {len} bytes exceeds max_frame_bytes ({max})")]
    FrameTooLarge {
        /// The encoded length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Encoding failed.
    #[error("encoding failed: {0}")]
    Encode(WireError),
    /// The transport is shutting down.
    #[error("the transport is shut down")]
    Shutdown,
}

/// The seam between the coordinator and the network.
pub trait Transport: Send + Sync {
    /// Queues `envelope` for `to` and returns at once: never blocks, never grows memory
    /// without bound.
    ///
    /// # Errors
    /// A [`SendError`] saying why the envelope was not queued; it is counted.
    fn send(&self, to: NodeId, envelope: Envelope) -> Result<(), SendError>;

    /// A snapshot of the counters.
    fn stats(&self) -> TransportStats;

    /// The peers this transport keeps links to, each with whether a connection to it is
    /// established now. Empty for a transport without connections (the in-memory network).
    fn peer_links(&self) -> Vec<(NodeId, bool)> {
        Vec::new()
    }
}

/// Which groups this node knows; streams for other groups are reset.
pub type GroupFilter = Arc<dyn Fn(GroupId) -> bool + Send + Sync>;

/// Where each node listens. Cheap to clone (shared), and changes are seen by the transport
/// at its next dial.
#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    inner: Arc<RwLock<HashMap<NodeId, SocketAddr>>>,
}

impl AddressBook {
    /// An empty address book.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or changes) the address of `node`; returns the previous one.
    pub fn insert(&self, node: NodeId, addr: SocketAddr) -> Option<SocketAddr> {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, addr)
    }

    /// Forgets `node`; returns its address.
    pub fn remove(&self, node: NodeId) -> Option<SocketAddr> {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&node)
    }

    /// The address of `node`.
    #[must_use]
    pub fn get(&self, node: NodeId) -> Option<SocketAddr> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .copied()
    }
}
