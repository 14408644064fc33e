//! What every replica applies besides the database's own commands: the meta group's routing
//! table, and each group's vShard fences.
//!
//! Every command in a group's log is framed ([`Frame`]): a user command carries the vShard
//! its proposer routed it by, and system commands move vShards in and out of the group.
//! Ownership is decided **in the group's own log**, not by whatever routing table a replica
//! happens to hold: when a vShard leaves a group, a `Release` entry fences it there, and any
//! command for that vShard ordered after the fence is refused with a stale-routing reply
//! instead of being applied, on every replica alike. That is what makes a vShard move
//! linearizable while proposers still hold old tables (TiKV's region epoch check, per vShard).
//!
//! The meta group ([`routing::META_GROUP`]) applies [`RoutingChange`]s to the [`RoutingTable`]; its
//! snapshot is the encoded table, so a node that was away catches up like any raft replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use prost::Message as _;
use routing::{GroupId, RoutingChange, RoutingTable, VShardId};

use crate::lock;
use crate::state_machine::StateMachineError;

/// One command of a group's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A database command, routed by `vshard` when the proposer routed it by key.
    User {
        vshard: Option<VShardId>,
        data: Vec<u8>,
        /// The client session it belongs to, when its proposer used one (exactly-once).
        session: Option<SessionTag>,
    },
    /// The vShard leaves this group: fence it (its data stays until `Purge`).
    Release { vshard: VShardId },
    /// The vShard joins this group with `data` (exported from its old group); without data,
    /// a group takes back a vShard it released (a move rolled back).
    Acquire {
        vshard: VShardId,
        data: Option<Vec<u8>>,
    },
    /// Drops a released vShard's data.
    Purge { vshard: VShardId },
    /// A routing-table change (meta group only), encoded by [`RoutingChange::encode`].
    Routing(Vec<u8>),
}

/// Which command of which client session a user command is: a group applies each
/// (client, seq) once and answers a retry with the first response (see `apply::sessions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SessionTag {
    /// The session's id.
    pub(crate) client: u64,
    /// The command's sequence number in the session (from 1).
    pub(crate) seq: u64,
    /// The client has every answer up to this sequence number: their cached responses go.
    pub(crate) acked: u64,
    /// The proposer's clock when the command was proposed, in ms since the Unix epoch: the
    /// group's replicated time, which expires idle sessions on every replica alike.
    pub(crate) time_ms: u64,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct SessionMsg {
    #[prost(uint64, tag = "1")]
    client: u64,
    #[prost(uint64, tag = "2")]
    seq: u64,
    #[prost(uint64, tag = "3")]
    acked: u64,
    #[prost(uint64, tag = "4")]
    time_ms: u64,
}

impl From<SessionTag> for SessionMsg {
    fn from(t: SessionTag) -> Self {
        Self {
            client: t.client,
            seq: t.seq,
            acked: t.acked,
            time_ms: t.time_ms,
        }
    }
}

impl From<SessionMsg> for SessionTag {
    fn from(m: SessionMsg) -> Self {
        Self {
            client: m.client,
            seq: m.seq,
            acked: m.acked,
            time_ms: m.time_ms,
        }
    }
}

/// A vShard step proposed to a group's leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VShardStep {
    /// Fence the vShard in the group (it leaves).
    Release,
    /// Serve the vShard, importing its data (`None`: take back a released vShard).
    Acquire(Option<Vec<u8>>),
    /// Drop the released vShard's data.
    Purge,
}

impl VShardStep {
    /// The log entry that makes this step.
    pub(crate) fn frame(self, vshard: VShardId) -> Frame {
        match self {
            Self::Release => Frame::Release { vshard },
            Self::Acquire(data) => Frame::Acquire { vshard, data },
            Self::Purge => Frame::Purge { vshard },
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct FrameMsg {
    #[prost(oneof = "FrameKind", tags = "1, 2, 3, 4, 5")]
    kind: Option<FrameKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum FrameKind {
    #[prost(message, tag = "1")]
    User(UserMsg),
    #[prost(uint32, tag = "2")]
    Release(u32),
    #[prost(message, tag = "3")]
    Acquire(AcquireMsg),
    #[prost(uint32, tag = "4")]
    Purge(u32),
    #[prost(bytes = "vec", tag = "5")]
    Routing(Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message)]
struct UserMsg {
    #[prost(uint32, optional, tag = "1")]
    vshard: Option<u32>,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    session: Option<SessionMsg>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AcquireMsg {
    #[prost(uint32, tag = "1")]
    vshard: u32,
    #[prost(bytes = "vec", optional, tag = "2")]
    data: Option<Vec<u8>>,
}

impl Frame {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let kind = match self {
            Self::User {
                vshard,
                data,
                session,
            } => FrameKind::User(UserMsg {
                vshard: vshard.map(VShardId::get),
                data: data.clone(),
                session: session.map(SessionMsg::from),
            }),
            Self::Release { vshard } => FrameKind::Release(vshard.get()),
            Self::Acquire { vshard, data } => FrameKind::Acquire(AcquireMsg {
                vshard: vshard.get(),
                data: data.clone(),
            }),
            Self::Purge { vshard } => FrameKind::Purge(vshard.get()),
            Self::Routing(change) => FrameKind::Routing(change.clone()),
        };
        FrameMsg { kind: Some(kind) }.encode_to_vec()
    }

    /// A user command it owns, without copying it twice (the simulation's proposals; the
    /// node encodes borrowed commands with [`Frame::encode_user_from`]).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn encode_user(
        vshard: Option<VShardId>,
        data: Vec<u8>,
        session: Option<SessionTag>,
    ) -> Vec<u8> {
        FrameMsg {
            kind: Some(FrameKind::User(UserMsg {
                vshard: vshard.map(VShardId::get),
                data,
                session: session.map(SessionMsg::from),
            })),
        }
        .encode_to_vec()
    }

    /// [`Frame::encode_user`] from a borrowed command, byte for byte the same: a caller that
    /// may still need the command (to forward it if this node does not lead) encodes it
    /// without copying it first.
    pub(crate) fn encode_user_from(
        vshard: Option<VShardId>,
        data: &[u8],
        session: Option<SessionTag>,
    ) -> Vec<u8> {
        use prost::encoding::{
            WireType, encode_key, encode_varint, encoded_len_varint, key_len, message, uint32,
        };
        let session = session.map(SessionMsg::from);
        // prost leaves out an empty bytes field, and encodes a set optional one even at 0.
        let data_len = if data.is_empty() {
            0
        } else {
            key_len(2) + encoded_len_varint(data.len() as u64) + data.len()
        };
        let user_len = vshard.map_or(0, |v| uint32::encoded_len(1, &v.get()))
            + data_len
            + session.as_ref().map_or(0, |m| message::encoded_len(3, m));
        let mut out =
            Vec::with_capacity(key_len(1) + encoded_len_varint(user_len as u64) + user_len);
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(user_len as u64, &mut out);
        if let Some(v) = vshard {
            uint32::encode(1, &v.get(), &mut out);
        }
        if !data.is_empty() {
            encode_key(2, WireType::LengthDelimited, &mut out);
            encode_varint(data.len() as u64, &mut out);
            out.extend_from_slice(data);
        }
        if let Some(m) = &session {
            message::encode(3, m, &mut out);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        Some(match FrameMsg::decode(bytes).ok()?.kind? {
            FrameKind::User(m) => Self::User {
                vshard: m.vshard.map(VShardId),
                data: m.data,
                session: m.session.map(SessionTag::from),
            },
            FrameKind::Release(v) => Self::Release {
                vshard: VShardId(v),
            },
            FrameKind::Acquire(m) => Self::Acquire {
                vshard: VShardId(m.vshard),
                data: m.data,
            },
            FrameKind::Purge(v) => Self::Purge {
                vshard: VShardId(v),
            },
            FrameKind::Routing(change) => Self::Routing(change),
        })
    }
}

/// What a proposer gets back for one framed command. Never leaves the process: the driver
/// turns it into the caller's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Applied; the state machine's response (for a routing change: the new table, encoded).
    Applied(Vec<u8>),
    /// Not applied: the vShard is not (or no longer) served by this group. Retry on a newer
    /// routing table.
    StaleRouting(VShardId),
    /// Not applied now: this session's command took effect before this replica restarted,
    /// and its response was not kept.
    AppliedEarlier,
    /// Not applied: the command was refused (a routing change against another version, a
    /// command that is not framed). The text says why.
    Refused(String),
}

/// The vShards each group has released, shared with readers (see [`Fences::serves`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Fences(Arc<RwLock<BTreeMap<GroupId, BTreeSet<VShardId>>>>);

impl Fences {
    /// Whether this node's replica of `group` still serves `vshard` (it has not applied a
    /// release of it, or has taken it back since). A read served from a replica must check
    /// this after reading: a released vShard's data there is frozen and may be dropped.
    pub(crate) fn serves(&self, group: GroupId, vshard: VShardId) -> bool {
        let fences = lock::read(&self.0);
        !fences.get(&group).is_some_and(|f| f.contains(&vshard))
    }

    pub(crate) fn update<R>(
        &self,
        f: impl FnOnce(&mut BTreeMap<GroupId, BTreeSet<VShardId>>) -> R,
    ) -> R {
        f(&mut lock::write(&self.0))
    }
}

/// The meta group's replicated state: the routing table. Applied on the coordinator's task
/// (it is small, and every routing decision reads it), unlike the database's groups.
pub(crate) struct Meta {
    /// The table the cluster was bootstrapped with: the meta group's state at its index 1.
    initial: RoutingTable,
    table: RoutingTable,
    table_changed: bool,
}

impl Meta {
    /// `initial` is the table the cluster was bootstrapped with.
    pub(crate) fn new(initial: RoutingTable) -> Self {
        Self {
            table: initial.clone(),
            initial,
            table_changed: false,
        }
    }

    /// The routing table as the meta group has applied it on this node.
    pub(crate) fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The table, if it changed since the last call.
    pub(crate) fn take_table_change(&mut self) -> Option<RoutingTable> {
        std::mem::take(&mut self.table_changed).then(|| self.table.clone())
    }

    /// Applies one committed meta-group command: a routing change, by compare-and-set on the
    /// table's version.
    pub(crate) fn apply(&mut self, command: &[u8]) -> Reply {
        let Some(Frame::Routing(bytes)) = Frame::decode(command) else {
            return Reply::Refused("the meta group only applies routing changes".into());
        };
        let (change, expected) = match RoutingChange::decode(&bytes) {
            Ok(decoded) => decoded,
            Err(e) => return Reply::Refused(e.to_string()),
        };
        match self.table.apply_change(&change, expected) {
            Ok(()) => {
                self.table_changed = true;
                Reply::Applied(self.table.encode())
            }
            Err(e) => Reply::Refused(e.to_string()),
        }
    }

    /// The meta group's snapshot: the encoded table.
    pub(crate) fn snapshot(&self) -> Vec<u8> {
        self.table.encode()
    }

    /// Replaces the table with `snapshot` (empty: the bootstrap table). It came from a peer:
    /// malformed bytes are an error.
    ///
    /// # Errors
    /// A malformed table.
    pub(crate) fn restore(&mut self, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let table = if snapshot.is_empty() {
            self.initial.clone()
        } else {
            RoutingTable::decode(snapshot)?
        };
        if table != self.table {
            self.table = table;
            self.table_changed = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing::NodeId;

    #[test]
    fn a_user_frame_encodes_the_same_from_a_borrowed_command() {
        let tag = SessionTag {
            client: 7,
            seq: 0,
            acked: 3,
            time_ms: 1_700_000_000_000,
        };
        for vshard in [None, Some(VShardId(0)), Some(VShardId(70_000))] {
            for data in [&b""[..], b"k=v", &[9u8; 300][..]] {
                for session in [None, Some(tag)] {
                    assert_eq!(
                        Frame::encode_user_from(vshard, data, session),
                        Frame::encode_user(vshard, data.to_vec(), session),
                        "{vshard:?} {} {session:?}",
                        data.len()
                    );
                }
            }
        }
    }

    fn meta() -> Meta {
        Meta::new(RoutingTable::uniform(16, 2, &[NodeId(1), NodeId(2), NodeId(3)], 3).unwrap())
    }

    #[test]
    fn the_meta_group_applies_routing_changes_by_compare_and_set() {
        let mut m = meta();
        let change = RoutingChange::AddMember {
            node: NodeId(4),
            address: "127.0.0.1:1".into(),
        };
        let frame = Frame::Routing(change.encode(1)).encode();
        let Reply::Applied(table) = m.apply(&frame) else {
            panic!("change refused")
        };
        assert_eq!(RoutingTable::decode(&table).unwrap().version(), 2);
        assert_eq!(m.take_table_change().map(|t| t.version()), Some(2));
        assert_eq!(m.take_table_change(), None);
        // The same change again was planned against version 1: refused, nothing changes.
        assert!(matches!(m.apply(&frame), Reply::Refused(_)));
        let snapshot = m.snapshot();
        let mut fresh = meta();
        fresh.restore(&snapshot).unwrap();
        assert_eq!(fresh.table().version(), 2);
        assert!(fresh.table().is_member(NodeId(4)));
    }

    #[test]
    fn the_meta_group_refuses_garbage() {
        let mut m = meta();
        for bytes in [&b"\xff\xff\xff"[..], b"", b"\x0a"] {
            assert!(matches!(m.apply(bytes), Reply::Refused(_)));
        }
        let user = Frame::User {
            vshard: None,
            data: b"x".to_vec(),
            session: None,
        };
        assert!(matches!(m.apply(&user.encode()), Reply::Refused(_)));
        assert!(m.restore(b"\xff\xff").is_err());
    }
}
