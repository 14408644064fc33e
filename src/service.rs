//! The example key-value service behind `pontoon node`, `pontoon kv` and `pontoon cluster`: a
//! client protocol on the node's own QUIC endpoint, under its own ALPN (`pontoon-client/1`),
//! for clients holding a certificate of the same cluster CA.
//!
//! One bidirectional stream per request: the client writes one length-prefixed prost
//! [`Request`] and finishes its side; the node answers with one [`Reply`]. Besides the key-value
//! requests (put, get, delete) the protocol carries the admin requests a reshaping plan needs
//! ([`crate::cluster::RemoteControl`]): the routing table, routing changes, group status,
//! membership changes, leader transfers, vShard steps and exports.
//!
//! A request that fails comes back with a typed outcome that mirrors [`RequestError`] (see
//! [`reply_error`]), so a remote caller can tell "not the leader, ask node 3" from "refused"
//! from "outcome unknown" exactly as an in-process caller can. A node that does not lead the
//! key's group answers `NotLeader` with the leader's address, and [`KvClient::call`] follows it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use routing::{GroupId, NodeId, RoutingChange, VShardId};
use transport::wire::{FrameDecoder, decode_body, encode_frame};

use crate::kv::{KvCommand, KvResponse, KvStateMachine};
use crate::{Node, RequestError};
use coordinator::{GroupStatus, Role};

pub use crate::client::{CONNECT_TIMEOUT, ClientError, KvClient, REQUEST_TIMEOUT};

/// Largest request or reply frame. A vShard export larger than this cannot be moved over the
/// client protocol; the request fails with an error saying so.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How often a GET reads again when the key's vShard left the group while it was reading.
const READ_ATTEMPTS: usize = 4;

/// A client request. Fields a request's op does not use stay at their defaults.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// One of [`op`].
    #[prost(uint32, tag = "1")]
    pub op: u32,
    /// The key (put, get, delete).
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// The value (put).
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
    /// The group (group status, membership change, leader transfer, vShard step and export;
    /// 0 in a group status asks for every group of the node).
    #[prost(uint64, tag = "4")]
    pub group: u64,
    /// The node to hand leadership to (leader transfer).
    #[prost(uint64, tag = "5")]
    pub node: u64,
    /// The vShard (vShard step and export).
    #[prost(uint32, tag = "6")]
    pub vshard: u32,
    /// A routing change with the version it expects, as [`RoutingChange::encode`] writes it.
    #[prost(bytes = "vec", tag = "7")]
    pub routing_change: Vec<u8>,
    /// The steps of a membership change.
    #[prost(message, repeated, tag = "8")]
    pub conf_changes: Vec<ConfStep>,
    /// The membership change's transition: 0 auto, 1 implicit, 2 explicit (raft's values).
    #[prost(uint32, tag = "9")]
    pub transition: u32,
    /// The membership change's context.
    #[prost(bytes = "vec", tag = "10")]
    pub context: Vec<u8>,
    /// One of [`vshard_step`].
    #[prost(uint32, tag = "11")]
    pub vshard_step: u32,
    /// The data an acquire imports (absent: take back a released vShard).
    #[prost(bytes = "vec", optional, tag = "12")]
    pub data: Option<Vec<u8>>,
}

/// One step of a membership change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfStep {
    /// 0 add voter, 1 remove, 2 add learner (raft's `ConfChangeType` values).
    #[prost(uint32, tag = "1")]
    pub change_type: u32,
    /// The node.
    #[prost(uint64, tag = "2")]
    pub node: u64,
}

/// The node's answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    /// One of [`outcome`].
    #[prost(uint32, tag = "1")]
    pub outcome: u32,
    /// The value (get) or previous value (put, delete), when there is one.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
    /// Not leader: the leader's client address, when known.
    #[prost(string, optional, tag = "3")]
    pub leader_addr: Option<String>,
    /// Error text, or the status as JSON.
    #[prost(string, tag = "4")]
    pub message: String,
    /// The group an error is about.
    #[prost(uint64, tag = "5")]
    pub group: u64,
    /// Not leader: the leader's id, when known.
    #[prost(uint64, optional, tag = "6")]
    pub leader: Option<u64>,
    /// Stale routing: the vShard.
    #[prost(uint32, tag = "7")]
    pub vshard: u32,
    /// Stale routing: the table version the node held.
    #[prost(uint64, tag = "8")]
    pub table_version: u64,
    /// The id of the node that answered.
    #[prost(uint64, tag = "9")]
    pub node: u64,
    /// An encoded routing table (table, routing change) or a vShard's export.
    #[prost(bytes = "vec", tag = "10")]
    pub payload: Vec<u8>,
    /// Where the answering node reaches its peers (table).
    #[prost(message, repeated, tag = "11")]
    pub addresses: Vec<Address>,
    /// Group statuses (group status).
    #[prost(message, repeated, tag = "12")]
    pub statuses: Vec<GroupStatusMsg>,
}

/// A node and the address it is reached at.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// The node.
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// `host:port`.
    #[prost(string, tag = "2")]
    pub addr: String,
}

/// [`GroupStatus`] on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupStatusMsg {
    /// The group.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// 1 follower, 2 candidate, 3 pre-candidate, 4 leader.
    #[prost(uint32, tag = "2")]
    pub role: u32,
    /// The term.
    #[prost(uint64, tag = "3")]
    pub term: u64,
    /// The leader the node knows of.
    #[prost(uint64, optional, tag = "4")]
    pub leader: Option<u64>,
    /// Commit index.
    #[prost(uint64, tag = "5")]
    pub commit: u64,
    /// Applied index.
    #[prost(uint64, tag = "6")]
    pub applied: u64,
    /// First log index.
    #[prost(uint64, tag = "7")]
    pub first_index: u64,
    /// Last log index.
    #[prost(uint64, tag = "8")]
    pub last_index: u64,
    /// Voters.
    #[prost(uint64, repeated, tag = "9")]
    pub voters: Vec<u64>,
    /// Learners.
    #[prost(uint64, repeated, tag = "10")]
    pub learners: Vec<u64>,
    /// In a joint configuration.
    #[prost(bool, tag = "11")]
    pub joint: bool,
    /// Quiescent.
    #[prost(bool, tag = "12")]
    pub quiet: bool,
}

impl From<&GroupStatus> for GroupStatusMsg {
    fn from(s: &GroupStatus) -> Self {
        Self {
            group: s.group.get(),
            role: match s.role {
                Role::Follower => 1,
                Role::Candidate => 2,
                Role::PreCandidate => 3,
                Role::Leader => 4,
            },
            term: s.term,
            leader: s.leader.map(NodeId::get),
            commit: s.commit,
            applied: s.applied,
            first_index: s.first_index,
            last_index: s.last_index,
            voters: s.voters.iter().map(|n| n.get()).collect(),
            learners: s.learners.iter().map(|n| n.get()).collect(),
            joint: s.joint,
            quiet: s.quiet,
        }
    }
}

impl GroupStatusMsg {
    /// The status it carries; `None` for a role this build does not know.
    #[must_use]
    pub fn to_status(&self) -> Option<GroupStatus> {
        let role = match self.role {
            1 => Role::Follower,
            2 => Role::Candidate,
            3 => Role::PreCandidate,
            4 => Role::Leader,
            _ => return None,
        };
        Some(GroupStatus {
            group: GroupId(self.group),
            role,
            term: self.term,
            leader: self.leader.map(NodeId),
            commit: self.commit,
            applied: self.applied,
            first_index: self.first_index,
            last_index: self.last_index,
            voters: self.voters.iter().copied().map(NodeId).collect(),
            learners: self.learners.iter().copied().map(NodeId).collect(),
            joint: self.joint,
            quiet: self.quiet,
        })
    }
}

/// Request op codes.
pub mod op {
    /// Put a key.
    pub const PUT: u32 = 1;
    /// Read a key, linearizably.
    pub const GET: u32 = 2;
    /// Delete a key.
    pub const DELETE: u32 = 3;
    /// The node's status as JSON.
    pub const STATUS: u32 = 4;
    /// The routing table as the node applied it (payload), with the node's peer addresses.
    pub const TABLE: u32 = 5;
    /// Propose a routing change through the meta group (the node must lead it).
    pub const CHANGE_ROUTING: u32 = 6;
    /// One group's status on the node (group 0: every group's).
    pub const GROUP_STATUS: u32 = 7;
    /// Propose a membership change of a group (the node must lead it).
    pub const CHANGE_MEMBERSHIP: u32 = 8;
    /// Hand leadership of a group to another node (the node must lead it).
    pub const TRANSFER_LEADER: u32 = 9;
    /// Propose a vShard step to a group (the node must lead it).
    pub const VSHARD_STEP: u32 = 10;
    /// Export a vShard's data from the node's replica of a group, after a read barrier.
    pub const EXPORT_VSHARD: u32 = 11;
}

/// vShard steps of [`op::VSHARD_STEP`].
pub mod vshard_step {
    /// Fence the vShard in the group.
    pub const RELEASE: u32 = 1;
    /// Serve the vShard, importing `data` when present.
    pub const ACQUIRE: u32 = 2;
    /// Drop the released vShard's data.
    pub const PURGE: u32 = 3;
}

/// Reply outcomes. Every [`RequestError`] variant has its own, so the caller gets the same
/// error back (see [`reply_error`]).
pub mod outcome {
    /// Done.
    pub const OK: u32 = 1;
    /// Not the leader of `group`; `leader` (and `leader_addr`) when known.
    pub const NOT_LEADER: u32 = 2;
    /// Failed for a reason of its own (a malformed request, an unknown op); see the message.
    pub const ERROR: u32 = 3;
    /// The node holds no replica of `group`.
    pub const GROUP_NOT_FOUND: u32 = 4;
    /// Did not take effect; safe to retry.
    pub const PROPOSAL_DROPPED: u32 = 5;
    /// No answer within the node's deadline; outcome unknown.
    pub const TIMEOUT: u32 = 6;
    /// The node lost track of the proposal; outcome unknown.
    pub const OUTCOME_UNKNOWN: u32 = 7;
    /// `group` no longer serves `vshard`; did not take effect.
    pub const STALE_ROUTING: u32 = 8;
    /// Refused (see the message); did not take effect.
    pub const REFUSED: u32 = 9;
    /// The node is shutting down.
    pub const SHUTTING_DOWN: u32 = 10;
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
/// Malformed, truncated or oversized input.
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

/// The reply that carries `error` (`leader_addr` filled in by the caller when it knows it).
#[must_use]
pub fn error_to_reply(error: &RequestError) -> Reply {
    let mut reply = Reply {
        message: error.to_string(),
        ..Reply::default()
    };
    match error {
        RequestError::NotLeader { group, leader } => {
            reply.outcome = outcome::NOT_LEADER;
            reply.group = group.get();
            reply.leader = leader.map(NodeId::get);
        }
        RequestError::GroupNotFound { group } => {
            reply.outcome = outcome::GROUP_NOT_FOUND;
            reply.group = group.get();
        }
        RequestError::ProposalDropped { group } => {
            reply.outcome = outcome::PROPOSAL_DROPPED;
            reply.group = group.get();
        }
        RequestError::Timeout { group } => {
            reply.outcome = outcome::TIMEOUT;
            reply.group = group.get();
        }
        RequestError::OutcomeUnknown { group } => {
            reply.outcome = outcome::OUTCOME_UNKNOWN;
            reply.group = group.get();
        }
        RequestError::StaleRouting {
            vshard,
            group,
            table_version,
        } => {
            reply.outcome = outcome::STALE_ROUTING;
            reply.vshard = vshard.get();
            reply.group = group.get();
            reply.table_version = *table_version;
        }
        RequestError::Refused { group, reason } => {
            reply.outcome = outcome::REFUSED;
            reply.group = group.get();
            reply.message.clone_from(reason);
        }
        RequestError::ShuttingDown => reply.outcome = outcome::SHUTTING_DOWN,
    }
    reply
}

/// The [`RequestError`] a reply carries (`None` for [`outcome::OK`]). [`outcome::ERROR`] and
/// outcomes this build does not know become [`RequestError::Refused`] with the node's message:
/// the request did not fit the node, and repeating it unchanged will not help.
#[must_use]
pub fn reply_error(reply: &Reply) -> Option<RequestError> {
    let group = GroupId(reply.group);
    Some(match reply.outcome {
        outcome::OK => return None,
        outcome::NOT_LEADER => RequestError::NotLeader {
            group,
            leader: reply.leader.map(NodeId),
        },
        outcome::GROUP_NOT_FOUND => RequestError::GroupNotFound { group },
        outcome::PROPOSAL_DROPPED => RequestError::ProposalDropped { group },
        outcome::TIMEOUT => RequestError::Timeout { group },
        outcome::OUTCOME_UNKNOWN => RequestError::OutcomeUnknown { group },
        outcome::STALE_ROUTING => RequestError::StaleRouting {
            vshard: VShardId(reply.vshard),
            group,
            table_version: reply.table_version,
        },
        outcome::SHUTTING_DOWN => RequestError::ShuttingDown,
        _ => RequestError::Refused {
            group,
            reason: reply.message.clone(),
        },
    })
}

/// Builds raft's membership change from its wire steps.
///
/// # Errors
/// A change type or transition raft does not define, or no steps at all (raft reads an empty
/// change as "leave the joint configuration", which a remote caller must not trigger by
/// accident).
pub fn conf_change_from_wire(
    steps: &[ConfStep],
    transition: u32,
    context: &[u8],
) -> Result<ConfChangeV2, String> {
    if steps.is_empty() {
        return Err("a membership change needs at least one step".into());
    }
    let mut change = ConfChangeV2::default();
    change.set_transition(match transition {
        0 => ConfChangeTransition::Auto,
        1 => ConfChangeTransition::Implicit,
        2 => ConfChangeTransition::Explicit,
        other => return Err(format!("unknown membership transition {other}")),
    });
    for step in steps {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(match step.change_type {
            0 => ConfChangeType::AddNode,
            1 => ConfChangeType::RemoveNode,
            2 => ConfChangeType::AddLearnerNode,
            other => return Err(format!("unknown membership change type {other}")),
        });
        if step.node == 0 {
            return Err("node id 0 is reserved by raft".into());
        }
        single.node_id = step.node;
        change.mut_changes().push(single);
    }
    change.set_context(context.to_vec().into());
    Ok(change)
}

/// The wire steps, transition and context of raft's membership change.
#[must_use]
pub fn conf_change_to_wire(change: &ConfChangeV2) -> (Vec<ConfStep>, u32, Vec<u8>) {
    let steps = change
        .changes
        .iter()
        .map(|c| ConfStep {
            change_type: match c.get_change_type() {
                ConfChangeType::AddNode => 0,
                ConfChangeType::RemoveNode => 1,
                ConfChangeType::AddLearnerNode => 2,
            },
            node: c.node_id,
        })
        .collect();
    let transition = match change.get_transition() {
        ConfChangeTransition::Auto => 0,
        ConfChangeTransition::Implicit => 1,
        ConfChangeTransition::Explicit => 2,
    };
    (steps, transition, change.get_context().to_vec())
}

/// What the service needs to answer clients.
#[derive(Clone)]
pub struct KvService {
    node: Node,
    state: KvStateMachine,
    /// Where each node serves clients (its QUIC address) by this node's configuration, for
    /// `NotLeader` redirects; members the routing table gives an address to are found there.
    client_addrs: Arc<BTreeMap<NodeId, SocketAddr>>,
}

impl KvService {
    /// A service answering for `node`, reading from `state` (the clone given to the node).
    #[must_use]
    pub fn new(
        node: Node,
        state: KvStateMachine,
        client_addrs: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        Self {
            node,
            state,
            client_addrs: Arc::new(client_addrs),
        }
    }

    /// Serves one authenticated client connection until it closes.
    pub async fn serve(self, connection: quinn::Connection) {
        loop {
            let (mut send, mut recv) = match connection.accept_bi().await {
                Ok(streams) => streams,
                Err(_) => return,
            };
            let service = self.clone();
            tokio::spawn(async move {
                let mut reply = match recv.read_to_end(MAX_MESSAGE_BYTES + 4).await {
                    Ok(bytes) => match decode::<Request>("client request", &bytes) {
                        Ok(request) => service.answer(request).await,
                        Err(e) => error_reply(format!("malformed request: {e}")),
                    },
                    Err(e) => error_reply(format!("reading the request: {e}")),
                };
                reply.node = service.node.id().get();
                // A reply too large for a frame (a huge vShard export) still gets an answer.
                let bytes = encode(&reply)
                    .or_else(|e| encode(&error_reply(format!("the reply cannot be sent: {e}"))));
                if let Ok(bytes) = bytes {
                    let _ = send.write_all(&bytes).await;
                }
                let _ = send.finish();
            });
        }
    }

    /// Where `node` is reached: the routing table's address for it, else this node's config.
    fn address_of(&self, node: NodeId) -> Option<String> {
        let table = self.node.routing();
        table
            .members()
            .find(|(n, a)| *n == node && !a.is_empty())
            .map(|(_, a)| a.to_string())
            .or_else(|| self.client_addrs.get(&node).map(ToString::to_string))
    }

    /// Every address this node knows: its config's, overridden by the routing table's.
    fn addresses(&self) -> Vec<Address> {
        let mut all: BTreeMap<u64, String> = self
            .client_addrs
            .iter()
            .map(|(n, a)| (n.get(), a.to_string()))
            .collect();
        for (node, addr) in self.node.routing().members() {
            if !addr.is_empty() {
                all.insert(node.get(), addr.to_string());
            }
        }
        all.into_iter()
            .map(|(node, addr)| Address { node, addr })
            .collect()
    }

    async fn answer(&self, request: Request) -> Reply {
        let group = GroupId(request.group);
        let done = |result: Result<(), RequestError>| match result {
            Ok(()) => ok_reply(),
            Err(e) => self.propose_error(&e),
        };
        match request.op {
            op::PUT | op::DELETE => self.write(request).await,
            op::GET => self.get(&request.key).await,
            op::STATUS => match self.node.status().await {
                Ok(status) => Reply {
                    message: serde_json::to_string(&status).unwrap_or_default(),
                    ..ok_reply()
                },
                Err(e) => self.propose_error(&e),
            },
            op::TABLE => Reply {
                payload: self.node.routing().encode(),
                addresses: self.addresses(),
                ..ok_reply()
            },
            op::CHANGE_ROUTING => match RoutingChange::decode(&request.routing_change) {
                Ok((change, expected)) => {
                    match self.node.propose_routing(&change, expected).await {
                        Ok(table) => Reply {
                            payload: table.encode(),
                            ..ok_reply()
                        },
                        Err(e) => self.propose_error(&e),
                    }
                }
                Err(e) => error_reply(format!("malformed routing change: {e}")),
            },
            op::GROUP_STATUS => self.group_status(group).await,
            op::CHANGE_MEMBERSHIP => {
                match conf_change_from_wire(
                    &request.conf_changes,
                    request.transition,
                    &request.context,
                ) {
                    Ok(change) => done(self.node.change_membership(group, change).await.map(drop)),
                    Err(e) => error_reply(e),
                }
            }
            op::TRANSFER_LEADER => {
                done(self.node.transfer_leader(group, NodeId(request.node)).await)
            }
            op::VSHARD_STEP => {
                let vshard = VShardId(request.vshard);
                match request.vshard_step {
                    vshard_step::RELEASE => done(self.node.release_vshard(group, vshard).await),
                    vshard_step::ACQUIRE => {
                        done(self.node.acquire_vshard(group, vshard, request.data).await)
                    }
                    vshard_step::PURGE => done(self.node.purge_vshard(group, vshard).await),
                    other => error_reply(format!("unknown vShard step {other}")),
                }
            }
            op::EXPORT_VSHARD => {
                match self
                    .node
                    .export_vshard(group, VShardId(request.vshard))
                    .await
                {
                    Ok(data) => Reply {
                        payload: data,
                        ..ok_reply()
                    },
                    Err(e) => self.propose_error(&e),
                }
            }
            other => error_reply(format!("unknown op {other}")),
        }
    }

    async fn write(&self, request: Request) -> Reply {
        let command = if request.op == op::PUT {
            KvCommand::Put {
                key: request.key.clone(),
                value: request.value,
            }
        } else {
            KvCommand::Delete {
                key: request.key.clone(),
            }
        };
        match self.node.propose(&request.key, command.encode()).await {
            Ok(bytes) => match KvResponse::decode(&bytes) {
                Ok(KvResponse::Done { previous }) => Reply {
                    value: previous,
                    ..ok_reply()
                },
                Ok(other) => error_reply(format!("unexpected response {other:?}")),
                Err(e) => error_reply(e.to_string()),
            },
            Err(e) => self.kv_error(&e),
        }
    }

    /// [`KvService::propose_error`] for key-value requests: a group this node holds no replica
    /// of (the cluster changed shape) is a redirect to a node that holds one, which the client
    /// follows like any `NotLeader`.
    fn kv_error(&self, error: &RequestError) -> Reply {
        if let RequestError::GroupNotFound { group } = error {
            let table = self.node.routing();
            let replica = table
                .leader_hint(*group)
                .or_else(|| table.replicas(*group).and_then(|r| r.first().copied()))
                .filter(|r| *r != self.node.id());
            if let Some(replica) = replica {
                return self.propose_error(&RequestError::NotLeader {
                    group: *group,
                    leader: Some(replica),
                });
            }
        }
        self.propose_error(error)
    }

    /// A linearizable read that honours vShard moves: the barrier says which group serves the
    /// key, and the value read there counts only if the group still served the key's vShard
    /// after the read (a move may have fenced it in between; then read again on the new table).
    async fn get(&self, key: &[u8]) -> Reply {
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            let read = match self.node.read_key(key).await {
                Ok(read) => read,
                Err(e) => return self.kv_error(&e),
            };
            let value = self.state.get(read.group, key);
            if self.node.serves(read.group, read.vshard) {
                return Reply {
                    value,
                    ..ok_reply()
                };
            }
            last = Some(RequestError::StaleRouting {
                vshard: read.vshard,
                group: read.group,
                table_version: self.node.routing().version(),
            });
        }
        last.map_or_else(
            || error_reply("no read attempt".into()),
            |e| self.kv_error(&e),
        )
    }

    async fn group_status(&self, group: GroupId) -> Reply {
        match self.node.status().await {
            Ok(status) => {
                let statuses: Vec<GroupStatusMsg> = status
                    .groups
                    .iter()
                    .filter(|g| group == GroupId(0) || g.group == group)
                    .map(GroupStatusMsg::from)
                    .collect();
                if statuses.is_empty() && group != GroupId(0) {
                    return self.propose_error(&RequestError::GroupNotFound { group });
                }
                Reply {
                    statuses,
                    ..ok_reply()
                }
            }
            Err(e) => self.propose_error(&e),
        }
    }

    fn propose_error(&self, error: &RequestError) -> Reply {
        let mut reply = error_to_reply(error);
        if let RequestError::NotLeader {
            leader: Some(leader),
            ..
        } = error
        {
            reply.leader_addr = self.address_of(*leader);
        }
        reply
    }
}

fn ok_reply() -> Reply {
    Reply {
        outcome: outcome::OK,
        ..Reply::default()
    }
}

fn error_reply(message: String) -> Reply {
    Reply {
        outcome: outcome::ERROR,
        message,
        ..Reply::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn every_error() -> Vec<RequestError> {
        let group = GroupId(7);
        vec![
            RequestError::NotLeader {
                group,
                leader: Some(NodeId(3)),
            },
            RequestError::NotLeader {
                group,
                leader: None,
            },
            RequestError::GroupNotFound { group },
            RequestError::ProposalDropped { group },
            RequestError::Timeout { group },
            RequestError::OutcomeUnknown { group },
            RequestError::StaleRouting {
                vshard: VShardId(12),
                group,
                table_version: 9,
            },
            RequestError::Refused {
                group,
                reason: "version 4 expected, table is at 5".into(),
            },
            RequestError::ShuttingDown,
        ]
    }

    #[test]
    fn every_propose_error_crosses_the_wire_unchanged() {
        for error in every_error() {
            let reply = error_to_reply(&error);
            let bytes = encode(&reply).unwrap();
            let back: Reply = decode("reply", &bytes).unwrap();
            assert_eq!(reply_error(&back), Some(error));
        }
        assert_eq!(reply_error(&ok_reply()), None);
    }

    #[test]
    fn errors_of_the_node_itself_and_unknown_outcomes_read_as_refused() {
        for outcome in [outcome::ERROR, 99] {
            let reply = Reply {
                outcome,
                message: "unknown op 42".into(),
                ..Reply::default()
            };
            assert!(matches!(
                reply_error(&reply),
                Some(RequestError::Refused { reason, .. }) if reason == "unknown op 42"
            ));
        }
    }

    #[test]
    fn membership_changes_round_trip_and_bad_ones_are_errors() {
        let mut change = ConfChangeV2::default();
        change.set_transition(ConfChangeTransition::Auto);
        for (kind, node) in [
            (ConfChangeType::AddNode, 4),
            (ConfChangeType::RemoveNode, 1),
            (ConfChangeType::AddLearnerNode, 5),
        ] {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(kind);
            single.node_id = node;
            change.mut_changes().push(single);
        }
        let (steps, transition, context) = conf_change_to_wire(&change);
        assert_eq!(
            conf_change_from_wire(&steps, transition, &context).unwrap(),
            change
        );
        let step = |change_type, node| ConfStep { change_type, node };
        assert!(conf_change_from_wire(&[], 0, &[]).is_err());
        assert!(conf_change_from_wire(&[step(3, 4)], 0, &[]).is_err());
        assert!(conf_change_from_wire(&[step(0, 4)], 3, &[]).is_err());
        assert!(conf_change_from_wire(&[step(0, 0)], 0, &[]).is_err());
    }

    #[test]
    fn group_status_round_trips() {
        let status = GroupStatus {
            group: GroupId(3),
            role: Role::Leader,
            term: 5,
            leader: Some(NodeId(2)),
            commit: 40,
            applied: 39,
            first_index: 10,
            last_index: 41,
            voters: vec![NodeId(1), NodeId(2), NodeId(4)],
            learners: vec![NodeId(5)],
            joint: true,
            quiet: false,
        };
        assert_eq!(
            GroupStatusMsg::from(&status).to_status(),
            Some(status.clone())
        );
        let unknown = GroupStatusMsg {
            role: 9,
            ..GroupStatusMsg::from(&status)
        };
        assert_eq!(unknown.to_status(), None);
    }

    #[test]
    fn oversized_requests_are_refused_by_the_encoder() {
        let request = Request {
            op: op::VSHARD_STEP,
            data: Some(vec![0; MAX_MESSAGE_BYTES + 1]),
            ..Request::default()
        };
        assert!(encode(&request).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Request>("request", &bytes);
            let _ = decode::<Reply>("reply", &bytes);
            if let Ok(request) = decode::<Request>("request", &bytes) {
                let _ = conf_change_from_wire(&request.conf_changes, request.transition, &request.context);
                let _ = RoutingChange::decode(&request.routing_change);
            }
        }

        #[test]
        fn requests_round_trip(op in 0u32..20, key in proptest::collection::vec(any::<u8>(), 0..32),
                               group in any::<u64>(), vshard in any::<u32>(),
                               data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
            let request = Request { op, key, group, vshard, data, ..Request::default() };
            let back: Request = decode("request", &encode(&request).unwrap()).unwrap();
            prop_assert_eq!(back, request);
        }
    }
}
