//! [`Forward`]: requests a follower forwards to a group's leader over the peer connection, and
//! the leader's replies. A node-to-node message kind of its own (the forward stream, one per
//! peer), so a forwarded command never waits behind a group's raft traffic and raft's streams
//! carry only raft.

use bytes::Bytes;
use routing::{GroupId, NodeId, VShardId};

use crate::wire::{self, ForwardBody, ForwardOutcome, WireError};

pub use crate::wire::{ForwardError, ForwardSession};

/// A forwarded request or its reply, as the coordinator sends and receives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Forward {
    /// Propose `command` in `group` on the leader, and answer with [`Forward::Reply`] and the
    /// same `id`.
    Propose {
        /// Chosen by the forwarding node, unique among its requests in flight.
        id: u64,
        /// The group (never 0).
        group: GroupId,
        /// The vShard the forwarding node routed the command by, if it routed by key.
        vshard: Option<VShardId>,
        /// The database's command.
        command: Bytes,
        /// Its client session, if it has one.
        session: Option<ForwardSession>,
    },
    /// The answer to the request `id` this node forwarded.
    Reply {
        /// The request's id.
        id: u64,
        /// The state machine's response, or the leader's typed error.
        result: Result<Bytes, ForwardError>,
    },
}

impl Forward {
    /// The wire frame `from` sends.
    #[must_use]
    pub fn into_wire(self, from: NodeId) -> wire::ForwardFrame {
        match self {
            Self::Propose {
                id,
                group,
                vshard,
                command,
                session,
            } => wire::ForwardFrame {
                from: from.get(),
                id,
                group_id: group.get(),
                body: Some(ForwardBody::Propose(wire::ForwardPropose {
                    vshard: vshard.map(VShardId::get),
                    command,
                    session,
                })),
            },
            Self::Reply { id, result } => wire::ForwardFrame {
                from: from.get(),
                id,
                group_id: 0,
                body: Some(ForwardBody::Reply(wire::ForwardReply {
                    outcome: Some(match result {
                        Ok(response) => ForwardOutcome::Response(response),
                        Err(error) => ForwardOutcome::Error(error),
                    }),
                })),
            },
        }
    }

    /// The typed message of a decoded frame (its sender checked by the caller).
    ///
    /// # Errors
    /// [`WireError::Malformed`] for a frame without a body, a reply without an outcome, or a
    /// request for group 0.
    pub fn from_wire(frame: wire::ForwardFrame) -> Result<Self, WireError> {
        let malformed = |reason: &str| WireError::Malformed {
            what: "ForwardFrame",
            reason: reason.into(),
        };
        match frame.body {
            Some(ForwardBody::Propose(p)) => {
                if frame.group_id == 0 {
                    return Err(malformed("a request for group 0"));
                }
                Ok(Self::Propose {
                    id: frame.id,
                    group: GroupId(frame.group_id),
                    vshard: p.vshard.map(VShardId),
                    command: p.command,
                    session: p.session,
                })
            }
            Some(ForwardBody::Reply(r)) => Ok(Self::Reply {
                id: frame.id,
                result: match r.outcome {
                    Some(ForwardOutcome::Response(bytes)) => Ok(bytes),
                    Some(ForwardOutcome::Error(error)) => Err(error),
                    None => return Err(malformed("a reply without an outcome")),
                },
            }),
            None => Err(malformed("no body")),
        }
    }
}
