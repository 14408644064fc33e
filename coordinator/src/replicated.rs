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
//! The meta group ([`META_GROUP`]) applies [`RoutingChange`]s to the [`RoutingTable`]; its
//! snapshot is the encoded table, so a node that was away catches up like any raft replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use prost::Message as _;
use routing::{GroupId, META_GROUP, RoutingChange, RoutingTable, VShardId};

use crate::lock;
use crate::state_machine::{StateMachine, StateMachineError, VShardScope};

/// One command of a group's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A database command, routed by `vshard` when the proposer routed it by key.
    User {
        vshard: Option<VShardId>,
        data: Vec<u8>,
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
            Self::User { vshard, data } => FrameKind::User(UserMsg {
                vshard: vshard.map(VShardId::get),
                data: data.clone(),
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

    /// A user command without copying it twice (the hot path).
    pub(crate) fn encode_user(vshard: Option<VShardId>, data: Vec<u8>) -> Vec<u8> {
        FrameMsg {
            kind: Some(FrameKind::User(UserMsg {
                vshard: vshard.map(VShardId::get),
                data,
            })),
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(match FrameMsg::decode(bytes).ok()?.kind? {
            FrameKind::User(m) => Self::User {
                vshard: m.vshard.map(VShardId),
                data: m.data,
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
    /// Not applied: the command was refused (a routing change against another version, a
    /// command that is not framed). The text says why.
    Refused(String),
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotMsg {
    #[prost(bytes = "vec", tag = "1")]
    user: Vec<u8>,
    #[prost(uint32, repeated, tag = "2")]
    fenced: Vec<u32>,
}

/// The database's [`StateMachine`] plus what Pontoon itself replicates: the routing table (in
/// the meta group) and the vShard fences of every group. A [`crate::Node`] wraps the state
/// machine it is given in one; a simulation does the same.
pub(crate) struct Replicated<S> {
    inner: S,
    /// The table the cluster was bootstrapped with: the meta group's state at its index 1.
    initial: RoutingTable,
    table: RoutingTable,
    table_changed: bool,
    fences: Fences,
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

    fn update<R>(&self, f: impl FnOnce(&mut BTreeMap<GroupId, BTreeSet<VShardId>>) -> R) -> R {
        f(&mut lock::write(&self.0))
    }
}

impl<S: StateMachine> Replicated<S> {
    /// Wraps `inner`; `initial` is the table the cluster was bootstrapped with.
    pub(crate) fn new(inner: S, initial: RoutingTable) -> Self {
        Self {
            inner,
            table: initial.clone(),
            initial,
            table_changed: false,
            fences: Fences::default(),
        }
    }

    /// A handle on the fences, for readers on other threads.
    pub(crate) fn fences(&self) -> Fences {
        self.fences.clone()
    }

    /// The database's state machine.
    #[cfg(feature = "test-util")]
    pub(crate) fn inner(&self) -> &S {
        &self.inner
    }

    /// The routing table as the meta group has applied it on this node.
    pub(crate) fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The table, if it changed since the last call.
    pub(crate) fn take_table_change(&mut self) -> Option<RoutingTable> {
        std::mem::take(&mut self.table_changed).then(|| self.table.clone())
    }

    /// Whether `group` refuses commands for `vshard` (released and not taken back).
    pub(crate) fn is_fenced(&self, group: GroupId, vshard: VShardId) -> bool {
        !self.fences.serves(group, vshard)
    }

    /// Exports `vshard`'s data from `group` (the caller made sure the replica is current).
    ///
    /// # Errors
    /// The state machine's.
    pub(crate) fn export_vshard(
        &mut self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<Vec<u8>, StateMachineError> {
        let scope = self.scope(vshard);
        self.inner.export_vshard(group, scope)
    }

    fn scope(&self, vshard: VShardId) -> VShardScope {
        VShardScope {
            vshard,
            vshard_count: self.table.vshard_count(),
        }
    }

    fn apply_meta(&mut self, command: &[u8]) -> Reply {
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

    fn apply_frame(
        &mut self,
        group: GroupId,
        index: u64,
        frame: Frame,
    ) -> Result<Reply, StateMachineError> {
        Ok(match frame {
            Frame::User { vshard, data } => {
                if let Some(v) = vshard
                    && self.is_fenced(group, v)
                {
                    return Ok(Reply::StaleRouting(v));
                }
                Reply::Applied(self.inner.apply(group, index, &data)?)
            }
            Frame::Release { vshard } => {
                self.fences
                    .update(|f| f.entry(group).or_default().insert(vshard));
                Reply::Applied(Vec::new())
            }
            Frame::Acquire { vshard, data } => {
                if let Some(data) = data {
                    let scope = self.scope(vshard);
                    self.inner.import_vshard(group, scope, &data)?;
                }
                self.fences.update(|f| {
                    if let Some(set) = f.get_mut(&group) {
                        set.remove(&vshard);
                    }
                });
                Reply::Applied(Vec::new())
            }
            Frame::Purge { vshard } => {
                // Only data that is still fenced here goes: a vShard taken back since the
                // purge was planned keeps its data.
                if self.is_fenced(group, vshard) {
                    let scope = self.scope(vshard);
                    self.inner.drop_vshard(group, scope)?;
                }
                Reply::Applied(Vec::new())
            }
            Frame::Routing(_) => Reply::Refused("routing changes go to the meta group".into()),
        })
    }
}

impl<S: StateMachine> Replicated<S> {
    /// Applies one committed command of `group`: a system command here, a user command by the
    /// database's state machine unless its vShard is fenced.
    ///
    /// # Errors
    /// The database's state machine failed.
    pub(crate) fn apply(
        &mut self,
        group: GroupId,
        index: u64,
        command: &[u8],
    ) -> Result<Reply, StateMachineError> {
        if group == META_GROUP {
            return Ok(self.apply_meta(command));
        }
        match Frame::decode(command) {
            Some(frame) => self.apply_frame(group, index, frame),
            None => Ok(Reply::Refused("not a framed command".into())),
        }
    }

    /// `group`'s snapshot: the database's, with the group's fences (the meta group: the table).
    ///
    /// # Errors
    /// The database's state machine failed.
    pub(crate) fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        if group == META_GROUP {
            return Ok(self.table.encode());
        }
        let fenced = self.fences.update(|f| {
            f.get(&group)
                .map(|set| set.iter().map(|v| v.get()).collect())
                .unwrap_or_default()
        });
        Ok(SnapshotMsg {
            user: self.inner.snapshot(group)?,
            fenced,
        }
        .encode_to_vec())
    }

    /// Replaces `group`'s state with `snapshot` (from a peer: malformed bytes are an error).
    ///
    /// # Errors
    /// A malformed snapshot, or the database's state machine failed.
    pub(crate) fn restore(
        &mut self,
        group: GroupId,
        snapshot: &[u8],
    ) -> Result<(), StateMachineError> {
        if group == META_GROUP {
            let table = if snapshot.is_empty() {
                self.initial.clone()
            } else {
                RoutingTable::decode(snapshot)?
            };
            if table != self.table {
                self.table = table;
                self.table_changed = true;
            }
            return Ok(());
        }
        if snapshot.is_empty() {
            self.fences.update(|f| f.remove(&group));
            return self.inner.restore(group, snapshot);
        }
        let msg = SnapshotMsg::decode(snapshot)?;
        self.inner.restore(group, &msg.user)?;
        let fenced: BTreeSet<VShardId> = msg.fenced.into_iter().map(VShardId).collect();
        self.fences.update(|f| {
            if fenced.is_empty() {
                f.remove(&group)
            } else {
                f.insert(group, fenced)
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing::NodeId;

    /// Records what reaches it; its snapshot is the list of applied commands.
    #[derive(Default)]
    struct Log {
        applied: Vec<Vec<u8>>,
        imported: Vec<(VShardId, Vec<u8>)>,
        dropped: Vec<VShardId>,
    }

    impl StateMachine for Log {
        fn apply(&mut self, _: GroupId, _: u64, c: &[u8]) -> Result<Vec<u8>, StateMachineError> {
            self.applied.push(c.to_vec());
            Ok(b"ok".to_vec())
        }
        fn snapshot(&mut self, _: GroupId) -> Result<Vec<u8>, StateMachineError> {
            Ok(self.applied.concat())
        }
        fn restore(&mut self, _: GroupId, _: &[u8]) -> Result<(), StateMachineError> {
            Ok(())
        }
        fn import_vshard(
            &mut self,
            _: GroupId,
            scope: VShardScope,
            data: &[u8],
        ) -> Result<(), StateMachineError> {
            self.imported.push((scope.vshard, data.to_vec()));
            Ok(())
        }
        fn drop_vshard(&mut self, _: GroupId, scope: VShardScope) -> Result<(), StateMachineError> {
            self.dropped.push(scope.vshard);
            Ok(())
        }
    }

    fn replicated() -> Replicated<Log> {
        let table = RoutingTable::uniform(16, 2, &[NodeId(1), NodeId(2), NodeId(3)], 3).unwrap();
        Replicated::new(Log::default(), table)
    }

    fn apply(r: &mut Replicated<Log>, group: u64, frame: &Frame) -> Reply {
        r.apply(GroupId(group), 5, &frame.encode()).unwrap()
    }

    #[test]
    fn a_released_vshard_refuses_commands_until_taken_back_and_survives_snapshots() {
        let mut r = replicated();
        let v = VShardId(3);
        let put = Frame::User {
            vshard: Some(v),
            data: b"put".to_vec(),
        };
        assert_eq!(apply(&mut r, 1, &put), Reply::Applied(b"ok".to_vec()));
        apply(&mut r, 1, &Frame::Release { vshard: v });
        assert_eq!(apply(&mut r, 1, &put), Reply::StaleRouting(v));
        // Other vShards and other groups are not affected.
        let other = Frame::User {
            vshard: Some(VShardId(4)),
            data: b"x".to_vec(),
        };
        assert_eq!(apply(&mut r, 1, &other), Reply::Applied(b"ok".to_vec()));
        assert_eq!(apply(&mut r, 2, &put), Reply::Applied(b"ok".to_vec()));
        // The fence travels in the snapshot.
        let snapshot = r.snapshot(GroupId(1)).unwrap();
        let mut fresh = replicated();
        fresh.restore(GroupId(1), &snapshot).unwrap();
        assert_eq!(apply(&mut fresh, 1, &put), Reply::StaleRouting(v));
        // Taken back without data (a rolled-back move), it serves again; purge then no-ops.
        apply(
            &mut fresh,
            1,
            &Frame::Acquire {
                vshard: v,
                data: None,
            },
        );
        apply(&mut fresh, 1, &Frame::Purge { vshard: v });
        assert!(fresh.inner().dropped.is_empty());
        assert_eq!(apply(&mut fresh, 1, &put), Reply::Applied(b"ok".to_vec()));
    }

    #[test]
    fn acquire_imports_and_purge_drops_only_fenced_data() {
        let mut r = replicated();
        let v = VShardId(9);
        apply(
            &mut r,
            2,
            &Frame::Acquire {
                vshard: v,
                data: Some(b"rows".to_vec()),
            },
        );
        assert_eq!(r.inner().imported, vec![(v, b"rows".to_vec())]);
        apply(&mut r, 1, &Frame::Release { vshard: v });
        apply(&mut r, 1, &Frame::Purge { vshard: v });
        assert_eq!(r.inner().dropped, vec![v]);
    }

    #[test]
    fn the_meta_group_applies_routing_changes_by_compare_and_set() {
        let mut r = replicated();
        let change = RoutingChange::AddMember {
            node: NodeId(4),
            address: "127.0.0.1:1".into(),
        };
        let frame = Frame::Routing(change.encode(1));
        let Reply::Applied(table) = apply(&mut r, META_GROUP.get(), &frame) else {
            panic!("change refused")
        };
        assert_eq!(RoutingTable::decode(&table).unwrap().version(), 2);
        assert_eq!(r.take_table_change().map(|t| t.version()), Some(2));
        assert_eq!(r.take_table_change(), None);
        // The same change again was planned against version 1: refused, nothing changes.
        assert!(matches!(
            apply(&mut r, META_GROUP.get(), &frame),
            Reply::Refused(_)
        ));
        let snapshot = r.snapshot(META_GROUP).unwrap();
        let mut fresh = replicated();
        fresh.restore(META_GROUP, &snapshot).unwrap();
        assert_eq!(fresh.table().version(), 2);
        assert!(fresh.table().is_member(NodeId(4)));
    }

    #[test]
    fn unframed_or_garbage_commands_are_refused_not_applied() {
        let mut r = replicated();
        for bytes in [&b"\xff\xff\xff"[..], b"", b"\x0a"] {
            let reply = r.apply(GroupId(1), 1, bytes).unwrap();
            assert!(matches!(reply, Reply::Refused(_)), "{bytes:?} -> {reply:?}");
            let meta = r.apply(META_GROUP, 1, bytes).unwrap();
            assert!(matches!(meta, Reply::Refused(_)));
        }
        assert!(r.inner().applied.is_empty());
        assert!(r.restore(META_GROUP, b"\xff\xff").is_err());
    }
}
