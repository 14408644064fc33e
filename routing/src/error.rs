//! The one error type of the routing crate: every way a routing table can be refused, built,
//! changed or decoded wrongly, each variant saying what to fix.

use crate::{GroupId, NodeId, VShardId};

/// Why a routing table could not be built, changed or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// A table needs at least one vShard.
    #[error("a routing table needs at least one vShard: pass a vshard_count of 1 or more")]
    ZeroVShards,
    /// The vShard count is above what a table (and a decoder) accepts.
    #[error("{count} vShards is more than the maximum of {max}: choose a smaller vshard_count")]
    TooManyVShards {
        /// The count asked for.
        count: u64,
        /// The largest count accepted.
        max: u32,
    },
    /// `uniform` needs at least one group.
    #[error("a routing table needs at least one group: pass a group_count of 1 or more")]
    ZeroGroups,
    /// The replication factor is 0 or larger than the number of nodes.
    #[error(
        "replication factor {replication} is impossible with {nodes} nodes: \
         use a factor between 1 and the number of nodes"
    )]
    InvalidReplication {
        /// The replication factor asked for.
        replication: usize,
        /// The number of nodes given.
        nodes: usize,
    },
    /// `NodeId(0)` is raft-rs' "no node" and can never be a replica.
    #[error("node id 0 is reserved (raft-rs uses it for \"no node\"): number nodes from 1")]
    ReservedNodeId,
    /// `GroupId(0)` and the meta group's id (`u64::MAX`) are reserved.
    #[error("group ids 0 and u64::MAX (the meta group) are reserved: number groups from 1")]
    ReservedGroupId,
    /// A node appears twice in a node list or replica set.
    #[error("node {node} appears more than once: list each node once")]
    DuplicateNode {
        /// The repeated node.
        node: NodeId,
    },
    /// A group was given no replicas.
    #[error("group {group} has no replicas: give it at least one node")]
    EmptyReplicas {
        /// The group.
        group: GroupId,
    },
    /// The group is not in the table.
    #[error("group {group} is not in the routing table: add it first or use a known group")]
    UnknownGroup {
        /// The group.
        group: GroupId,
    },
    /// The group is already in the table.
    #[error("group {group} is already in the routing table: pick an unused group id")]
    GroupExists {
        /// The group.
        group: GroupId,
    },
    /// The vShard is not below the table's vShard count.
    #[error("{vshard} is out of range: this table has vShards 0..{count}")]
    VShardOutOfRange {
        /// The vShard asked for.
        vshard: VShardId,
        /// The table's vShard count.
        count: u32,
    },
    /// A group cannot be removed while vShards still map to it.
    #[error(
        "group {group} still owns {vshards} vShards: assign them to other groups before removing it"
    )]
    GroupStillOwnsVShards {
        /// The group.
        group: GroupId,
        /// How many vShards still map to it.
        vshards: usize,
    },
    /// A leader hint must name one of the group's replicas.
    #[error("{node} is not a replica of group {group}: a leader hint must be one of its replicas")]
    LeaderNotReplica {
        /// The group.
        group: GroupId,
        /// The node given as leader.
        node: NodeId,
    },
    /// Decoded bytes are not a valid protobuf routing table message.
    #[error("routing table bytes are not valid protobuf ({0}): the sender or the file is corrupt")]
    Malformed(#[from] prost::DecodeError),
    /// A decoded table claims a vShard count that differs from the entries it carries.
    #[error(
        "routing table claims {claimed} vShards but maps {entries}: the encoding is corrupt or truncated"
    )]
    VShardCountMismatch {
        /// The count the message claims.
        claimed: u32,
        /// The number of vShard entries it carries.
        entries: usize,
    },
    /// The node is not a member of the cluster.
    #[error("{node} is not a member of the cluster: add it first")]
    UnknownNode {
        /// The node.
        node: NodeId,
    },
    /// A member cannot leave while groups still list it as a replica.
    #[error("{node} still holds replicas of {groups} groups: move them away before removing it")]
    NodeStillHoldsReplicas {
        /// The node.
        node: NodeId,
        /// How many groups still list it.
        groups: usize,
    },
    /// A routing change was made against another version of the table.
    #[error(
        "the routing change expected table version {expected} but the table is at {actual}: \
         read the current table and retry"
    )]
    VersionConflict {
        /// The version the change was computed against.
        expected: u64,
        /// The table's version.
        actual: u64,
    },
    /// Decoded routing-change bytes name no change (an unknown kind from a newer version, or
    /// corruption).
    #[error("routing change names no known kind: the sender is newer or the bytes are corrupt")]
    EmptyChange,
    /// A decoded table carries version 0; versions start at 1.
    #[error("routing table version 0 is invalid (versions start at 1): the encoding is corrupt")]
    ZeroVersion,
    /// A certificate serial with no bytes.
    #[error("a certificate serial needs at least one byte: pass the serial's DER integer bytes")]
    EmptySerial,
    /// A certificate serial longer than any certificate carries.
    #[error(
        "a certificate serial of {len} bytes is longer than the maximum of {max}: \
         pass the serial's DER integer bytes, not the whole certificate"
    )]
    SerialTooLong {
        /// Its length once canonical.
        len: usize,
        /// The longest accepted.
        max: usize,
    },
    /// A revocation list is full.
    #[error(
        "the table already revokes {max} entries of this kind: lift revocations no longer needed"
    )]
    TooManyRevocations {
        /// The most entries of one kind a table holds.
        max: usize,
    },
    /// A node cannot be revoked while the table still routes to it.
    #[error(
        "{node} is still a member or replica: move its replicas away and remove it first \
         (to cut it off at once, revoke its certificate serial)"
    )]
    RevokedNodeIsMember {
        /// The node.
        node: NodeId,
    },
    /// A revoked node cannot become a member or a replica.
    #[error("{node} is revoked: lift its revocation first if it was a mistake")]
    NodeRevoked {
        /// The node.
        node: NodeId,
    },
    /// The node is not revoked, so its revocation cannot be lifted.
    #[error("{node} is not revoked: nothing to lift")]
    NodeNotRevoked {
        /// The node.
        node: NodeId,
    },
    /// The serial is not revoked, so its revocation cannot be lifted.
    #[error("certificate serial {serial} is not revoked: nothing to lift")]
    SerialNotRevoked {
        /// The serial, canonical, in lower-case hex.
        serial: String,
    },
    /// A decoded table lists a revoked serial that is not in canonical form.
    #[error("a revoked serial in the routing table is not canonical: the encoding is corrupt")]
    NonCanonicalSerial,
    /// A decoded table lists a revoked entry twice.
    #[error("a revocation is listed twice in the routing table: the encoding is corrupt")]
    DuplicateRevocation,
}
