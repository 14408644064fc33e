//! [`RoutingChange`]: one change to a routing table, as the meta group replicates it. A change
//! is applied against an expected version (compare-and-set), so two operators racing on the
//! same table cannot both win with plans computed from the same old table.

// Decoders read untrusted bytes: a slice index here must never be able to panic.
#![warn(clippy::indexing_slicing)]

use prost::Message as _;

use crate::{GroupId, NodeId, RoutingError, RoutingTable, VShardId};

/// One change to a [`RoutingTable`]. Every change that takes effect raises the version by one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutingChange {
    /// Adds a member node reached at `address` (or changes its address).
    AddMember {
        /// The node.
        node: NodeId,
        /// Where its peers reach it (`host:port`), empty when configured locally.
        address: String,
    },
    /// Removes a member that holds no replica.
    RemoveMember {
        /// The node.
        node: NodeId,
    },
    /// Replaces a group's replica set; every replica must be a member.
    SetReplicas {
        /// The group.
        group: GroupId,
        /// Its new replicas.
        replicas: Vec<NodeId>,
    },
    /// Maps a vShard to another group.
    AssignVShard {
        /// The vShard.
        vshard: VShardId,
        /// Its new group.
        group: GroupId,
    },
    /// Revokes a node id; the node must no longer be a member or replica (see
    /// [`RoutingTable::revoke_node`]).
    RevokeNode {
        /// The node.
        node: NodeId,
    },
    /// Lifts a node id's revocation.
    UnrevokeNode {
        /// The node.
        node: NodeId,
    },
    /// Revokes a certificate serial (any time: the emergency cut-off, see
    /// [`RoutingTable::revoke_serial`]).
    RevokeSerial {
        /// The serial's DER integer bytes; stored in canonical form
        /// ([`crate::canonical_serial`]).
        serial: Vec<u8>,
    },
    /// Lifts a certificate serial's revocation.
    UnrevokeSerial {
        /// The serial's DER integer bytes.
        serial: Vec<u8>,
    },
}

#[derive(Clone, PartialEq, prost::Message)]
struct ChangeMsg {
    /// The version the change was computed against.
    #[prost(uint64, tag = "1")]
    expected_version: u64,
    #[prost(oneof = "ChangeKind", tags = "2, 3, 4, 5, 6, 7, 8, 9")]
    kind: Option<ChangeKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ChangeKind {
    #[prost(message, tag = "2")]
    AddMember(AddMemberMsg),
    #[prost(uint64, tag = "3")]
    RemoveMember(u64),
    #[prost(message, tag = "4")]
    SetReplicas(SetReplicasMsg),
    #[prost(message, tag = "5")]
    AssignVShard(AssignMsg),
    #[prost(uint64, tag = "6")]
    RevokeNode(u64),
    #[prost(uint64, tag = "7")]
    UnrevokeNode(u64),
    #[prost(bytes = "vec", tag = "8")]
    RevokeSerial(Vec<u8>),
    #[prost(bytes = "vec", tag = "9")]
    UnrevokeSerial(Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message)]
struct AddMemberMsg {
    #[prost(uint64, tag = "1")]
    node: u64,
    #[prost(string, tag = "2")]
    address: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SetReplicasMsg {
    #[prost(uint64, tag = "1")]
    group: u64,
    #[prost(uint64, repeated, tag = "2")]
    replicas: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AssignMsg {
    #[prost(uint32, tag = "1")]
    vshard: u32,
    #[prost(uint64, tag = "2")]
    group: u64,
}

impl RoutingChange {
    /// The change as bytes, to be applied to a table at `expected_version`.
    #[must_use]
    pub fn encode(&self, expected_version: u64) -> Vec<u8> {
        let kind = match self {
            Self::AddMember { node, address } => ChangeKind::AddMember(AddMemberMsg {
                node: node.get(),
                address: address.clone(),
            }),
            Self::RemoveMember { node } => ChangeKind::RemoveMember(node.get()),
            Self::SetReplicas { group, replicas } => ChangeKind::SetReplicas(SetReplicasMsg {
                group: group.get(),
                replicas: replicas.iter().map(|n| n.get()).collect(),
            }),
            Self::AssignVShard { vshard, group } => ChangeKind::AssignVShard(AssignMsg {
                vshard: vshard.get(),
                group: group.get(),
            }),
            Self::RevokeNode { node } => ChangeKind::RevokeNode(node.get()),
            Self::UnrevokeNode { node } => ChangeKind::UnrevokeNode(node.get()),
            Self::RevokeSerial { serial } => ChangeKind::RevokeSerial(serial.clone()),
            Self::UnrevokeSerial { serial } => ChangeKind::UnrevokeSerial(serial.clone()),
        };
        ChangeMsg {
            expected_version,
            kind: Some(kind),
        }
        .encode_to_vec()
    }

    /// Reads a change and the version it expects from bytes that may come from anyone.
    ///
    /// # Errors
    ///
    /// [`RoutingError::Malformed`] for bytes that are not a change, [`RoutingError::EmptyChange`]
    /// for a change that names no kind.
    pub fn decode(bytes: &[u8]) -> Result<(Self, u64), RoutingError> {
        let msg = ChangeMsg::decode(bytes)?;
        let change = match msg.kind {
            Some(ChangeKind::AddMember(m)) => Self::AddMember {
                node: NodeId(m.node),
                address: m.address,
            },
            Some(ChangeKind::RemoveMember(n)) => Self::RemoveMember { node: NodeId(n) },
            Some(ChangeKind::SetReplicas(m)) => Self::SetReplicas {
                group: GroupId(m.group),
                replicas: m.replicas.into_iter().map(NodeId).collect(),
            },
            Some(ChangeKind::AssignVShard(m)) => Self::AssignVShard {
                vshard: VShardId(m.vshard),
                group: GroupId(m.group),
            },
            Some(ChangeKind::RevokeNode(n)) => Self::RevokeNode { node: NodeId(n) },
            Some(ChangeKind::UnrevokeNode(n)) => Self::UnrevokeNode { node: NodeId(n) },
            // Serials are checked (length, form) when applied, like every other field.
            Some(ChangeKind::RevokeSerial(serial)) => Self::RevokeSerial { serial },
            Some(ChangeKind::UnrevokeSerial(serial)) => Self::UnrevokeSerial { serial },
            None => return Err(RoutingError::EmptyChange),
        };
        Ok((change, msg.expected_version))
    }
}

impl RoutingTable {
    /// Applies `change` if the table is at `expected_version`; the version then rises by one.
    /// A change that would leave the table as it is still raises the version, so every
    /// accepted change is a new version (an operator can tell its change landed).
    ///
    /// ```
    /// use pontoon_routing::{GroupId, NodeId, RoutingChange, RoutingTable};
    ///
    /// let mut table = RoutingTable::uniform(64, 2, &[NodeId(1), NodeId(2), NodeId(3)], 2)?;
    /// let add = RoutingChange::AddMember { node: NodeId(4), address: "10.0.0.4:7000".into() };
    /// table.apply_change(&add, 1)?;
    /// assert_eq!(table.version(), 2);
    /// // A second operator that planned against version 1 is refused.
    /// assert!(table.apply_change(&add, 1).is_err());
    /// # Ok::<(), pontoon_routing::RoutingError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RoutingError::VersionConflict`] when the table is at another version; otherwise the
    /// error of the change itself ([`RoutingError::UnknownNode`] for a replica that is not a
    /// member, and those of [`Self::add_member`], [`Self::remove_member`],
    /// [`Self::set_replicas`], [`Self::assign_vshard`], [`Self::revoke_node`],
    /// [`Self::unrevoke_node`], [`Self::revoke_serial`], [`Self::unrevoke_serial`]). The table
    /// is unchanged on error.
    pub fn apply_change(
        &mut self,
        change: &RoutingChange,
        expected_version: u64,
    ) -> Result<(), RoutingError> {
        if self.version != expected_version {
            return Err(RoutingError::VersionConflict {
                expected: expected_version,
                actual: self.version,
            });
        }
        let mut next = self.clone();
        match change {
            RoutingChange::AddMember { node, address } => {
                next.add_member(*node, address.clone())?;
            }
            RoutingChange::RemoveMember { node } => next.remove_member(*node)?,
            RoutingChange::SetReplicas { group, replicas } => {
                if let Some(node) = replicas.iter().find(|n| !next.is_member(**n)) {
                    return Err(RoutingError::UnknownNode { node: *node });
                }
                next.set_replicas(*group, replicas.clone())?;
            }
            RoutingChange::AssignVShard { vshard, group } => next.assign_vshard(*vshard, *group)?,
            RoutingChange::RevokeNode { node } => next.revoke_node(*node)?,
            RoutingChange::UnrevokeNode { node } => next.unrevoke_node(*node)?,
            RoutingChange::RevokeSerial { serial } => next.revoke_serial(serial)?,
            RoutingChange::UnrevokeSerial { serial } => next.unrevoke_serial(serial)?,
        }
        next.version = expected_version.saturating_add(1);
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RoutingTable {
        RoutingTable::uniform(16, 4, &[NodeId(1), NodeId(2), NodeId(3)], 3).unwrap()
    }

    #[test]
    fn every_change_round_trips_and_raises_the_version_by_one() {
        let mut t = table();
        let changes = [
            RoutingChange::AddMember {
                node: NodeId(4),
                address: "127.0.0.1:9".into(),
            },
            RoutingChange::SetReplicas {
                group: GroupId(1),
                replicas: vec![NodeId(2), NodeId(3), NodeId(4)],
            },
            RoutingChange::AssignVShard {
                vshard: VShardId(0),
                group: GroupId(2),
            },
            RoutingChange::SetReplicas {
                group: GroupId(1),
                replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
            },
            RoutingChange::RemoveMember { node: NodeId(4) },
        ];
        for change in changes {
            let version = t.version();
            let (decoded, expected) = RoutingChange::decode(&change.encode(version)).unwrap();
            assert_eq!((&decoded, expected), (&change, version));
            t.apply_change(&decoded, expected).unwrap();
            assert_eq!(t.version(), version + 1);
            assert_eq!(RoutingTable::decode(&t.encode()).unwrap(), t);
        }
        assert_eq!(t.group_of_vshard(VShardId(0)).unwrap(), GroupId(2));
        assert!(!t.is_member(NodeId(4)));
    }

    #[test]
    fn refused_changes_leave_the_table_as_it_was() {
        let mut t = table();
        let before = t.clone();
        let stale = RoutingChange::RemoveMember { node: NodeId(3) };
        assert_eq!(
            t.apply_change(&stale, 7),
            Err(RoutingError::VersionConflict {
                expected: 7,
                actual: 1
            })
        );
        assert_eq!(
            t.apply_change(&stale, 1),
            Err(RoutingError::NodeStillHoldsReplicas {
                node: NodeId(3),
                groups: 4
            })
        );
        let stranger = RoutingChange::SetReplicas {
            group: GroupId(1),
            replicas: vec![NodeId(9)],
        };
        assert_eq!(
            t.apply_change(&stranger, 1),
            Err(RoutingError::UnknownNode { node: NodeId(9) })
        );
        assert_eq!(t, before);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(RoutingChange::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(RoutingChange::decode(&[]).is_err());
    }
}
