//! The client protocol's envelope: one [`ClientRequest`] per bidirectional stream, answered by
//! one [`ClientReply`], each one length-prefixed prost frame. A request carries either an
//! [`AdminRequest`] (this crate answers it) or an application's own request as bytes (the
//! service that hosts the protocol answers it: the example KV service puts its `KvRequest`
//! there). Failures of either kind travel as one typed [`Failure`], so a remote caller gets
//! the same error an in-process caller would, and knows whether it may have taken effect.

use bytes::BytesMut;
use coordinator::{BusyReason, Outcome, RequestError};
use routing::{GroupId, NodeId, VShardId};
use transport::wire::{FrameDecoder, decode_body, encode_frame};

use crate::proto::{AdminReply, AdminRequest};

/// Largest request or reply frame. A vShard export larger than this cannot be moved over the
/// client protocol; the request fails with an error saying so.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A request on the client protocol.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientRequest {
    /// What is asked.
    #[prost(oneof = "client_request::Body", tags = "1, 2")]
    pub body: Option<client_request::Body>,
}

/// The bodies of a [`ClientRequest`].
pub mod client_request {
    /// What a client asks.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// A cluster administration request.
        #[prost(message, tag = "1")]
        Admin(crate::proto::AdminRequest),
        /// The hosting service's own request, in its own encoding.
        #[prost(bytes = "vec", tag = "2")]
        App(Vec<u8>),
    }
}

/// The node's answer to a [`ClientRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientReply {
    /// The id of the node that answered.
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// The answer.
    #[prost(oneof = "client_reply::Body", tags = "2, 3, 4")]
    pub body: Option<client_reply::Body>,
}

/// The bodies of a [`ClientReply`].
pub mod client_reply {
    /// What a node answers.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// An admin request's answer.
        #[prost(message, tag = "2")]
        Admin(crate::proto::AdminReply),
        /// The hosting service's answer, in its own encoding.
        #[prost(bytes = "vec", tag = "3")]
        App(Vec<u8>),
        /// The request failed.
        #[prost(message, tag = "4")]
        Failure(super::Failure),
    }
}

/// Why a request failed: one variant per [`RequestError`] variant, plus the refusals of the
/// protocol itself ([`failure::Kind::Forbidden`], [`failure::Kind::BadRequest`]), and the
/// failure's outcome class on its own, so a client that does not know a newer node's kind
/// still knows whether the request may have taken effect.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Failure {
    /// What went wrong.
    #[prost(
        oneof = "failure::Kind",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 17, 18"
    )]
    pub kind: Option<failure::Kind>,
    /// Not leader: the leader's client address, when the node knows it.
    #[prost(string, optional, tag = "11")]
    pub leader_addr: Option<String>,
    /// Whether the request may have taken effect ([`failure::Class`]; unset from nodes that
    /// predate it, whose kinds all say it themselves).
    #[prost(enumeration = "failure::Class", tag = "13")]
    pub class: i32,
}

/// The kinds of [`Failure`].
pub mod failure {
    /// A group named by a failure.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Group {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
    }

    /// See [`coordinator::RequestError::NotLeader`].
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct NotLeader {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
        /// The leader the node knows of.
        #[prost(uint64, optional, tag = "2")]
        pub leader: Option<u64>,
    }

    /// See [`coordinator::RequestError::TransferFailed`].
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Transfer {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
        /// The node leadership was to move to.
        #[prost(uint64, tag = "2")]
        pub to: u64,
    }

    /// See [`coordinator::RequestError::StaleRouting`].
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct StaleRouting {
        /// The vShard the request was routed by.
        #[prost(uint32, tag = "1")]
        pub vshard: u32,
        /// The group that refused it.
        #[prost(uint64, tag = "2")]
        pub group: u64,
        /// The routing-table version the node held.
        #[prost(uint64, tag = "3")]
        pub table_version: u64,
    }

    /// See [`coordinator::RequestError::Refused`].
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Refused {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
        /// Why.
        #[prost(string, tag = "2")]
        pub reason: String,
    }

    /// The caller's certificate does not allow the operation. It did not take effect.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Forbidden {
        /// Who asked, as the node read it from the certificate.
        #[prost(string, tag = "1")]
        pub caller: String,
        /// The operation refused.
        #[prost(string, tag = "2")]
        pub operation: String,
        /// Why, and what to use instead.
        #[prost(string, tag = "3")]
        pub reason: String,
    }

    /// The node could not read the request (malformed, unknown operation, too large). It did
    /// not take effect; sending it again unchanged will not help.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct BadRequest {
        /// What is wrong with it.
        #[prost(string, tag = "1")]
        pub reason: String,
    }

    /// The group is overloaded (see `RequestError::Busy`).
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Busy {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
        /// Which limit: 1 its state machine is behind, 2 too many uncommitted bytes.
        #[prost(uint32, tag = "2")]
        pub reason: u32,
    }

    /// A failure's outcome class on the wire (see [`coordinator::Outcome`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Class {
        /// Not said (a node that predates the field).
        Unspecified = 0,
        /// It certainly did not take effect.
        NotApplied = 1,
        /// It may have taken effect.
        Unknown = 2,
    }

    /// A failure's kind.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Not the leader of the group.
        #[prost(message, tag = "1")]
        NotLeader(NotLeader),
        /// The node holds no replica of the group.
        #[prost(message, tag = "2")]
        GroupNotFound(Group),
        /// Did not take effect; safe to retry.
        #[prost(message, tag = "3")]
        ProposalDropped(Group),
        /// No answer within the node's deadline; outcome unknown.
        #[prost(message, tag = "4")]
        Timeout(Group),
        /// The node lost track of the proposal; outcome unknown.
        #[prost(message, tag = "5")]
        OutcomeUnknown(Group),
        /// Routed by an outdated table; did not take effect.
        #[prost(message, tag = "6")]
        StaleRouting(StaleRouting),
        /// Refused by the group; did not take effect.
        #[prost(message, tag = "7")]
        Refused(Refused),
        /// The node is shutting down.
        #[prost(message, tag = "8")]
        ShuttingDown(crate::proto::Empty),
        /// The caller may not do this.
        #[prost(message, tag = "9")]
        Forbidden(Forbidden),
        /// The node could not read the request.
        #[prost(message, tag = "10")]
        BadRequest(BadRequest),
        /// The node stopped with the proposal in raft; outcome unknown.
        #[prost(message, tag = "12")]
        StoppedInFlight(Group),
        /// Leadership did not move; nothing changed.
        #[prost(message, tag = "14")]
        TransferFailed(Transfer),
        /// The group cannot reach a quorum from the node; did not take effect.
        #[prost(message, tag = "15")]
        QuorumUnreachable(Group),
        /// The group is overloaded; did not take effect, back off and retry.
        #[prost(message, tag = "16")]
        Busy(Busy),
        /// The session's command took effect earlier; its response is gone.
        #[prost(message, tag = "17")]
        AppliedEarlier(Group),
        /// The node's replica of the group stopped serving; did not take effect.
        #[prost(message, tag = "18")]
        ReplicaFailed(Group),
    }
}

/// A failure as the caller handles it: the coordinator's error, or a refusal of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The node's coordinator refused or lost the request, exactly as in process.
    #[error(transparent)]
    Propose(RequestError),
    /// The caller's certificate does not allow the operation: it did not take effect. Use a
    /// client certificate issued with `--role admin`.
    #[error("{caller} may not {operation}: {reason}; it did not take effect")]
    Forbidden {
        /// Who asked, as the node read it.
        caller: String,
        /// The operation refused.
        operation: String,
        /// Why.
        reason: String,
    },
    /// The node could not read the request: it did not take effect, and sending it again
    /// unchanged will not help.
    #[error("the node could not read the request: {reason}; it did not take effect")]
    BadRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// The node answered with a failure this build does not know (a newer node's), whose
    /// class it did say.
    #[error("the node answered with a failure this build does not know ({outcome:?})")]
    Unrecognised {
        /// Whether the request may have taken effect.
        outcome: Outcome,
    },
}

impl RemoteError {
    /// Whether the request may have taken effect (its outcome is unknown). `false` means it
    /// certainly did not, so it is safe to send again anywhere.
    #[must_use]
    pub fn may_have_taken_effect(&self) -> bool {
        self.outcome() == Outcome::Unknown
    }

    /// Whether the request may have taken effect, as [`RequestError::outcome`]; the
    /// protocol's own refusals did not take effect.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            RemoteError::Propose(e) => e.outcome(),
            RemoteError::Forbidden { .. } | RemoteError::BadRequest { .. } => Outcome::NotApplied,
            RemoteError::Unrecognised { outcome } => *outcome,
        }
    }

    /// The coordinator's error it carries, if that is what it is.
    #[must_use]
    pub fn propose_error(&self) -> Option<&RequestError> {
        match self {
            RemoteError::Propose(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RequestError> for RemoteError {
    fn from(e: RequestError) -> Self {
        RemoteError::Propose(e)
    }
}

impl Failure {
    /// The failure that carries `error` (the leader's address filled in by the caller, which
    /// knows the addresses).
    #[must_use]
    pub fn from_error(error: &RemoteError) -> Self {
        use failure::Kind;
        let group = |g: &GroupId| failure::Group { group: g.get() };
        let kind = match error {
            RemoteError::Propose(e) => match e {
                RequestError::NotLeader { group, leader } => Kind::NotLeader(failure::NotLeader {
                    group: group.get(),
                    leader: leader.map(NodeId::get),
                }),
                RequestError::GroupNotFound { group: g } => Kind::GroupNotFound(group(g)),
                RequestError::ProposalDropped { group: g } => Kind::ProposalDropped(group(g)),
                RequestError::Timeout { group: g } => Kind::Timeout(group(g)),
                RequestError::OutcomeUnknown { group: g } => Kind::OutcomeUnknown(group(g)),
                RequestError::StaleRouting {
                    vshard,
                    group,
                    table_version,
                } => Kind::StaleRouting(failure::StaleRouting {
                    vshard: vshard.get(),
                    group: group.get(),
                    table_version: *table_version,
                }),
                RequestError::Refused { group, reason } => Kind::Refused(failure::Refused {
                    group: group.get(),
                    reason: reason.clone(),
                }),
                RequestError::Busy { group, reason } => Kind::Busy(failure::Busy {
                    group: group.get(),
                    reason: match reason {
                        BusyReason::ApplyBacklog => 1,
                        BusyReason::UncommittedBytes => 2,
                        BusyReason::ForwardedRequests => 3,
                    },
                }),
                RequestError::AppliedEarlier { group: g } => Kind::AppliedEarlier(group(g)),
                RequestError::ShuttingDown => Kind::ShuttingDown(crate::proto::Empty {}),
                RequestError::StoppedInFlight { group: g } => Kind::StoppedInFlight(group(g)),
                RequestError::TransferFailed { group, to } => {
                    Kind::TransferFailed(failure::Transfer {
                        group: group.get(),
                        to: to.get(),
                    })
                }
                RequestError::QuorumUnreachable { group: g } => Kind::QuorumUnreachable(group(g)),
                RequestError::ReplicaFailed { group: g } => Kind::ReplicaFailed(group(g)),
            },
            RemoteError::Forbidden {
                caller,
                operation,
                reason,
            } => Kind::Forbidden(failure::Forbidden {
                caller: caller.clone(),
                operation: operation.clone(),
                reason: reason.clone(),
            }),
            RemoteError::BadRequest { reason } => Kind::BadRequest(failure::BadRequest {
                reason: reason.clone(),
            }),
            // Passed on as it came: the class alone.
            RemoteError::Unrecognised { .. } => {
                let mut failure = Self::default();
                failure.set_class(class_of(error.outcome()));
                return failure;
            }
        };
        let mut failure = Self {
            kind: Some(kind),
            leader_addr: None,
            class: 0,
        };
        failure.set_class(class_of(error.outcome()));
        failure
    }

    /// A [`failure::Kind::BadRequest`].
    #[must_use]
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::from_error(&RemoteError::BadRequest {
            reason: reason.into(),
        })
    }

    /// The error it carries. A failure without a kind this build knows (a newer node's) is
    /// [`RemoteError::Unrecognised`] with the class it carries; without a class either, it
    /// reads as a bad request (no node that predates the class sends such a failure).
    #[must_use]
    pub fn to_error(&self) -> RemoteError {
        use failure::Kind;
        let Some(kind) = &self.kind else {
            return match self.class() {
                failure::Class::NotApplied => RemoteError::Unrecognised {
                    outcome: Outcome::NotApplied,
                },
                failure::Class::Unknown => RemoteError::Unrecognised {
                    outcome: Outcome::Unknown,
                },
                failure::Class::Unspecified => RemoteError::BadRequest {
                    reason: "the node answered with a failure this build does not know".into(),
                },
            };
        };
        let propose = match kind {
            Kind::NotLeader(n) => RequestError::NotLeader {
                group: GroupId(n.group),
                leader: n.leader.map(NodeId),
            },
            Kind::GroupNotFound(g) => RequestError::GroupNotFound {
                group: GroupId(g.group),
            },
            Kind::ProposalDropped(g) => RequestError::ProposalDropped {
                group: GroupId(g.group),
            },
            Kind::Timeout(g) => RequestError::Timeout {
                group: GroupId(g.group),
            },
            Kind::OutcomeUnknown(g) => RequestError::OutcomeUnknown {
                group: GroupId(g.group),
            },
            Kind::StaleRouting(s) => RequestError::StaleRouting {
                vshard: VShardId(s.vshard),
                group: GroupId(s.group),
                table_version: s.table_version,
            },
            Kind::Refused(r) => RequestError::Refused {
                group: GroupId(r.group),
                reason: r.reason.clone(),
            },
            Kind::Busy(b) => RequestError::Busy {
                group: GroupId(b.group),
                reason: match b.reason {
                    2 => BusyReason::UncommittedBytes,
                    3 => BusyReason::ForwardedRequests,
                    _ => BusyReason::ApplyBacklog,
                },
            },
            Kind::AppliedEarlier(g) => RequestError::AppliedEarlier {
                group: GroupId(g.group),
            },
            Kind::ShuttingDown(_) => RequestError::ShuttingDown,
            Kind::StoppedInFlight(g) => RequestError::StoppedInFlight {
                group: GroupId(g.group),
            },
            Kind::TransferFailed(t) => RequestError::TransferFailed {
                group: GroupId(t.group),
                to: NodeId(t.to),
            },
            Kind::QuorumUnreachable(g) => RequestError::QuorumUnreachable {
                group: GroupId(g.group),
            },
            Kind::ReplicaFailed(g) => RequestError::ReplicaFailed {
                group: GroupId(g.group),
            },
            Kind::Forbidden(f) => {
                return RemoteError::Forbidden {
                    caller: f.caller.clone(),
                    operation: f.operation.clone(),
                    reason: f.reason.clone(),
                };
            }
            Kind::BadRequest(b) => {
                return RemoteError::BadRequest {
                    reason: b.reason.clone(),
                };
            }
        };
        RemoteError::Propose(propose)
    }
}

fn class_of(outcome: Outcome) -> failure::Class {
    match outcome {
        Outcome::NotApplied => failure::Class::NotApplied,
        Outcome::Unknown => failure::Class::Unknown,
    }
}

impl ClientReply {
    /// A reply carrying an admin answer.
    #[must_use]
    pub fn admin(reply: AdminReply) -> Self {
        Self {
            node: 0,
            body: Some(client_reply::Body::Admin(reply)),
        }
    }

    /// A reply carrying the hosting service's answer.
    #[must_use]
    pub fn app(bytes: Vec<u8>) -> Self {
        Self {
            node: 0,
            body: Some(client_reply::Body::App(bytes)),
        }
    }

    /// A reply carrying a failure.
    #[must_use]
    pub fn failure(failure: Failure) -> Self {
        Self {
            node: 0,
            body: Some(client_reply::Body::Failure(failure)),
        }
    }

    /// The failure it carries, if any.
    #[must_use]
    pub fn failed(&self) -> Option<&Failure> {
        match &self.body {
            Some(client_reply::Body::Failure(f)) => Some(f),
            _ => None,
        }
    }
}

impl ClientRequest {
    /// A request carrying an admin request.
    #[must_use]
    pub fn admin(request: AdminRequest) -> Self {
        Self {
            body: Some(client_request::Body::Admin(request)),
        }
    }

    /// A request carrying the hosting service's request.
    #[must_use]
    pub fn app(bytes: Vec<u8>) -> Self {
        Self {
            body: Some(client_request::Body::App(bytes)),
        }
    }
}

/// Encodes one message as a length-prefixed frame.
///
/// # Errors
/// When the message exceeds [`MAX_MESSAGE_BYTES`].
pub fn encode<M: prost::Message>(message: &M) -> Result<Vec<u8>, transport::WireError> {
    let mut out = BytesMut::new();
    encode_frame(message, MAX_MESSAGE_BYTES, &mut out)?;
    Ok(out.to_vec())
}

/// Decodes exactly one frame from a finished stream's bytes.
///
/// # Errors
/// Malformed, truncated or oversized input, or bytes after the frame.
pub fn decode<M: prost::Message + Default>(
    what: &'static str,
    bytes: &[u8],
) -> Result<M, transport::WireError> {
    let mut decoder = FrameDecoder::new(MAX_MESSAGE_BYTES);
    decoder.extend(bytes);
    let frame = decoder
        .next_frame()?
        .ok_or(transport::WireError::Truncated {
            buffered: bytes.len(),
        })?;
    if decoder.buffered() != 0 {
        return Err(transport::WireError::Malformed {
            what,
            reason: "bytes after the frame".into(),
        });
    }
    decode_body(what, frame)
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
