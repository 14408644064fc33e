//! The routing table's byte form (prost, no `.proto` build step), and the decoder that turns
//! untrusted bytes back into a table only if every invariant of [`RoutingTable`] holds.
//!
//! Field numbers are part of the format: never reuse or renumber them.

// Decoders read untrusted bytes: a slice index here must never be able to panic.
#![warn(clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use crate::table::{check_replicas, check_vshard_count};
use crate::{
    GroupId, GroupPlacement, MAX_REVOCATIONS, NodeId, RoutingError, RoutingTable, canonical_serial,
};

/// A whole routing table.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TableMsg {
    /// The table version, >= 1.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// The number of vShards; must equal `vshard_groups.len()`.
    #[prost(uint32, tag = "2")]
    pub vshard_count: u32,
    /// The group of each vShard, indexed by vShard id (packed). Indexing by position means a
    /// vShard can be neither missing nor mapped twice once the count matches.
    #[prost(uint64, repeated, tag = "3")]
    pub vshard_groups: Vec<u64>,
    /// Every group of the table, each once.
    #[prost(message, repeated, tag = "4")]
    pub groups: Vec<GroupMsg>,
    /// The member nodes, each once. Absent in tables written before members existed: the
    /// replicas' nodes are the members then.
    #[prost(message, repeated, tag = "5")]
    pub members: Vec<MemberMsg>,
    /// Revoked node ids (packed), each once, none a member or replica. Absent in tables
    /// written before revocation existed: nothing is revoked then.
    #[prost(uint64, repeated, tag = "6")]
    pub revoked_nodes: Vec<u64>,
    /// Revoked certificate serials, each once and canonical (see `canonical_serial`).
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub revoked_serials: Vec<Vec<u8>>,
}

/// One member node.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberMsg {
    /// The node id, nonzero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Where it is reached (may be empty).
    #[prost(string, tag = "2")]
    pub address: String,
}

/// One group and its placement.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GroupMsg {
    /// The group id, nonzero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its replicas: non-empty, distinct, nonzero.
    #[prost(uint64, repeated, tag = "2")]
    pub replicas: Vec<u64>,
    /// The leader hint, one of the replicas if present.
    #[prost(uint64, optional, tag = "3")]
    pub leader_hint: Option<u64>,
}

impl RoutingTable {
    /// The table as bytes, for sending to peers or storing. [`RoutingTable::decode`] reads
    /// them back into an equal table.
    ///
    /// ```
    /// use pontoon_routing::{NodeId, RoutingTable};
    ///
    /// let table = RoutingTable::uniform(64, 2, &[NodeId(1), NodeId(2)], 2)?;
    /// assert_eq!(RoutingTable::decode(&table.encode())?, table);
    /// # Ok::<(), pontoon_routing::RoutingError>(())
    /// ```
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        TableMsg {
            version: self.version,
            vshard_count: self.vshard_count(),
            vshard_groups: self.vshards.iter().map(|g| g.get()).collect(),
            groups: self
                .groups
                .iter()
                .map(|(g, p)| GroupMsg {
                    id: g.get(),
                    replicas: p.replicas.iter().map(|n| n.get()).collect(),
                    leader_hint: p.leader_hint.map(NodeId::get),
                })
                .collect(),
            members: self
                .members
                .iter()
                .map(|(n, a)| MemberMsg {
                    id: n.get(),
                    address: a.clone(),
                })
                .collect(),
            revoked_nodes: self.revoked_nodes.iter().map(|n| n.get()).collect(),
            revoked_serials: self.revoked_serials.iter().cloned().collect(),
        }
        .encode_to_vec()
    }

    /// Reads a table from bytes that may come from anyone: it is returned only if it is
    /// valid, and nothing is allocated beyond what the bytes themselves hold.
    ///
    /// # Errors
    ///
    /// [`RoutingError::Malformed`] for bytes that are not the message at all; otherwise the
    /// error of the first broken invariant: [`RoutingError::ZeroVersion`],
    /// [`RoutingError::ZeroVShards`], [`RoutingError::TooManyVShards`],
    /// [`RoutingError::VShardCountMismatch`], [`RoutingError::ReservedGroupId`],
    /// [`RoutingError::GroupExists`] (a group listed twice), [`RoutingError::UnknownGroup`]
    /// (a vShard mapped to a group the table does not list), [`RoutingError::EmptyReplicas`],
    /// [`RoutingError::ReservedNodeId`], [`RoutingError::DuplicateNode`],
    /// [`RoutingError::LeaderNotReplica`], [`RoutingError::TooManyRevocations`],
    /// [`RoutingError::DuplicateRevocation`], [`RoutingError::NonCanonicalSerial`] or
    /// [`RoutingError::RevokedNodeIsMember`].
    pub fn decode(bytes: &[u8]) -> Result<Self, RoutingError> {
        let msg = TableMsg::decode(bytes)?;
        if msg.version == 0 {
            return Err(RoutingError::ZeroVersion);
        }
        // Checked before the sets are built from them: a peer's table cannot make this node
        // hold more revocations than it would ever accept from an operator.
        if msg.revoked_nodes.len() > MAX_REVOCATIONS || msg.revoked_serials.len() > MAX_REVOCATIONS
        {
            return Err(RoutingError::TooManyRevocations {
                max: MAX_REVOCATIONS,
            });
        }
        check_vshard_count(u64::from(msg.vshard_count))?;
        // The count may be as large as MAX_VSHARDS, but nothing is allocated from it: the
        // entries were already decoded from the bytes, and only their number is compared.
        if usize::try_from(msg.vshard_count).ok() != Some(msg.vshard_groups.len()) {
            return Err(RoutingError::VShardCountMismatch {
                claimed: msg.vshard_count,
                entries: msg.vshard_groups.len(),
            });
        }

        let mut groups = BTreeMap::new();
        for g in msg.groups {
            let group = GroupId(g.id);
            if group == GroupId(0) || group == crate::META_GROUP {
                return Err(RoutingError::ReservedGroupId);
            }
            let replicas: Vec<NodeId> = g.replicas.into_iter().map(NodeId).collect();
            check_replicas(group, &replicas)?;
            let leader_hint = g.leader_hint.map(NodeId);
            if let Some(node) = leader_hint
                && !replicas.contains(&node)
            {
                return Err(RoutingError::LeaderNotReplica { group, node });
            }
            let placement = GroupPlacement {
                replicas,
                leader_hint,
            };
            if groups.insert(group, placement).is_some() {
                return Err(RoutingError::GroupExists { group });
            }
        }

        let vshards = msg
            .vshard_groups
            .into_iter()
            .map(|g| {
                let group = GroupId(g);
                if groups.contains_key(&group) {
                    Ok(group)
                } else {
                    Err(RoutingError::UnknownGroup { group })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut members = BTreeMap::new();
        for m in msg.members {
            let node = NodeId(m.id);
            if node == NodeId(0) {
                return Err(RoutingError::ReservedNodeId);
            }
            if members.insert(node, m.address).is_some() {
                return Err(RoutingError::DuplicateNode { node });
            }
        }
        if members.is_empty() {
            for placement in groups.values() {
                for node in &placement.replicas {
                    members.insert(*node, String::new());
                }
            }
        }

        let mut revoked_nodes = BTreeSet::new();
        for n in msg.revoked_nodes {
            let node = NodeId(n);
            if node == NodeId(0) {
                return Err(RoutingError::ReservedNodeId);
            }
            if !revoked_nodes.insert(node) {
                return Err(RoutingError::DuplicateRevocation);
            }
            let replica = groups.values().any(|p| p.replicas.contains(&node));
            if members.contains_key(&node) || replica {
                return Err(RoutingError::RevokedNodeIsMember { node });
            }
        }
        let mut revoked_serials = BTreeSet::new();
        for serial in msg.revoked_serials {
            // Only the canonical form is accepted, so that a decoded table re-encodes to the
            // same bytes and two spellings of one serial never sit side by side.
            if canonical_serial(&serial)? != serial {
                return Err(RoutingError::NonCanonicalSerial);
            }
            if !revoked_serials.insert(serial) {
                return Err(RoutingError::DuplicateRevocation);
            }
        }

        Ok(Self {
            version: msg.version,
            vshards,
            groups,
            members,
            revoked_nodes,
            revoked_serials,
        })
    }
}
