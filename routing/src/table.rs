//! The routing table: which group owns each vShard, and which nodes hold each group. It is a
//! plain value (no I/O, no locks) so that every node can hold a copy, compare versions and
//! swap in a newer one atomically.

use std::collections::{BTreeMap, BTreeSet};

use crate::{GroupId, NodeId, RoutingError, VShardId, vshard_for_key};

/// The largest vShard count a table accepts, and that a decoder believes.
pub const MAX_VSHARDS: u32 = 1 << 20;

/// Where one group lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPlacement {
    /// The nodes holding a replica of the group: non-empty, distinct, no `NodeId(0)`.
    pub replicas: Vec<NodeId>,
    /// The node believed to lead the group, if any. Always one of `replicas`. Only a hint:
    /// it may be stale, and a request sent to it may come back with `NotLeader`.
    pub leader_hint: Option<NodeId>,
}

/// Which group owns each vShard and which nodes hold each group, at a version.
///
/// Every vShard is mapped to a known group at all times. The version starts at 1 and grows
/// by one on every change of the vShard mapping, the group set or a replica set, so two
/// nodes can tell which of their tables is newer. Leader hints do not change the version
/// (see [`RoutingTable::set_leader_hint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTable {
    pub(crate) version: u64,
    /// Index = vShard id.
    pub(crate) vshards: Vec<GroupId>,
    pub(crate) groups: BTreeMap<GroupId, GroupPlacement>,
    /// The cluster's nodes and the address each is reached at (empty: configured locally).
    pub(crate) members: BTreeMap<NodeId, String>,
    /// Revoked node ids: never members or replicas (see the `revoke` module).
    pub(crate) revoked_nodes: BTreeSet<NodeId>,
    /// Revoked certificate serials, each in canonical form.
    pub(crate) revoked_serials: BTreeSet<Vec<u8>>,
}

/// The group that replicates the routing table itself (see the coordinator's meta group). No
/// vShard ever maps to it and [`RoutingTable::add_group`] refuses it.
pub const META_GROUP: GroupId = GroupId(u64::MAX);

impl RoutingTable {
    /// A table of `vshard_count` vShards spread evenly over groups `GroupId(1..=group_count)`,
    /// each group replicated on `replication` of `nodes`.
    ///
    /// - vShards go to groups in contiguous runs whose lengths differ by at most one.
    /// - Replicas are dealt round-robin over `nodes` (in the order given), so no node holds
    ///   more than `ceil(group_count * replication / nodes.len())` replicas and no group holds
    ///   a node twice.
    /// - Each group's leader hint is its first replica; the replica list is rotated so that
    ///   the first replica goes to the node with the fewest leader hints so far, which keeps
    ///   leaders spread over the nodes as well.
    ///
    /// ```
    /// use pontoon_routing::{GroupId, NodeId, RoutingTable};
    ///
    /// let nodes = [NodeId(1), NodeId(2), NodeId(3)];
    /// let table = RoutingTable::uniform(1024, 6, &nodes, 3)?;
    /// assert_eq!(table.version(), 1);
    /// assert_eq!(table.vshards_of_group(GroupId(1)).len(), 171);
    /// assert_eq!(table.groups_on_node(NodeId(2)).len(), 6);
    /// # Ok::<(), pontoon_routing::RoutingError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RoutingError::ZeroVShards`] or [`RoutingError::TooManyVShards`] for a vShard count
    /// outside `1..=MAX_VSHARDS`, [`RoutingError::ZeroGroups`] for no groups,
    /// [`RoutingError::InvalidReplication`] for a factor of 0 or above `nodes.len()`,
    /// [`RoutingError::ReservedNodeId`] / [`RoutingError::DuplicateNode`] for a bad node list.
    pub fn uniform(
        vshard_count: u32,
        group_count: u64,
        nodes: &[NodeId],
        replication: usize,
    ) -> Result<Self, RoutingError> {
        check_vshard_count(u64::from(vshard_count))?;
        if group_count == 0 {
            return Err(RoutingError::ZeroGroups);
        }
        check_nodes(nodes)?;
        if replication == 0 || replication > nodes.len() {
            return Err(RoutingError::InvalidReplication {
                replication,
                nodes: nodes.len(),
            });
        }

        let vshards = (0..u64::from(vshard_count))
            // floor(v * groups / vshards): contiguous runs whose lengths differ by at most 1.
            .map(|v| {
                let index = u128::from(v) * u128::from(group_count) / u128::from(vshard_count);
                GroupId(u64::try_from(index).unwrap_or(u64::MAX - 1) + 1)
            })
            .collect();

        let mut leaders: BTreeMap<NodeId, u64> = nodes.iter().map(|&n| (n, 0)).collect();
        let mut groups = BTreeMap::new();
        let mut slot = 0usize;
        for g in 1..=group_count {
            // Slots are dealt round-robin: `replication` consecutive slots never wrap onto
            // the same node because replication <= nodes, and every node gets floor or ceil
            // of the total.
            let mut replicas: Vec<NodeId> = (0..replication)
                .map(|r| nodes[(slot + r) % nodes.len()])
                .collect();
            slot = (slot + replication) % nodes.len();
            let (lead_pos, _) = replicas
                .iter()
                .enumerate()
                .min_by_key(|(pos, n)| (leaders.get(n).copied().unwrap_or(0), *pos))
                .unwrap_or((0, &replicas[0]));
            replicas.rotate_left(lead_pos);
            let leader = replicas[0];
            if let Some(count) = leaders.get_mut(&leader) {
                *count += 1;
            }
            groups.insert(
                GroupId(g),
                GroupPlacement {
                    replicas,
                    leader_hint: Some(leader),
                },
            );
        }
        Ok(Self {
            version: 1,
            vshards,
            groups,
            members: nodes.iter().map(|&n| (n, String::new())).collect(),
            revoked_nodes: BTreeSet::new(),
            revoked_serials: BTreeSet::new(),
        })
    }

    /// The table's version: 1 when built, one more after every change of the vShard mapping,
    /// the group set or a replica set. A higher version is a newer table.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The number of vShards, fixed for the life of the table.
    #[must_use]
    pub fn vshard_count(&self) -> u32 {
        // Construction and decoding keep the length within MAX_VSHARDS.
        u32::try_from(self.vshards.len()).unwrap_or(MAX_VSHARDS)
    }

    /// The vShard of a key, by the pinned [`vshard_for_key`].
    #[must_use]
    pub fn vshard_of_key(&self, key: &[u8]) -> VShardId {
        vshard_for_key(key, self.vshard_count())
    }

    /// The group that owns a vShard.
    ///
    /// # Errors
    ///
    /// [`RoutingError::VShardOutOfRange`] if the vShard is not below [`Self::vshard_count`].
    pub fn group_of_vshard(&self, vshard: VShardId) -> Result<GroupId, RoutingError> {
        usize::try_from(vshard.get())
            .ok()
            .and_then(|i| self.vshards.get(i))
            .copied()
            .ok_or(RoutingError::VShardOutOfRange {
                vshard,
                count: self.vshard_count(),
            })
    }

    /// The group that owns a key.
    ///
    /// ```
    /// use pontoon_routing::{NodeId, RoutingTable};
    ///
    /// let table = RoutingTable::uniform(1024, 4, &[NodeId(1)], 1)?;
    /// let group = table.group_for_key(b"user:42");
    /// assert!(table.placement(group).is_some());
    /// # Ok::<(), pontoon_routing::RoutingError>(())
    /// ```
    #[must_use]
    pub fn group_for_key(&self, key: &[u8]) -> GroupId {
        let vshard = self.vshard_of_key(key);
        // Every vShard below the count is mapped, and vshard_of_key stays below it.
        self.vshards
            .get(vshard.get() as usize)
            .copied()
            .unwrap_or(GroupId(0))
    }

    /// Where a group lives, or `None` if it is not in the table.
    #[must_use]
    pub fn placement(&self, group: GroupId) -> Option<&GroupPlacement> {
        self.groups.get(&group)
    }

    /// The replicas of a group, or `None` if it is not in the table.
    #[must_use]
    pub fn replicas(&self, group: GroupId) -> Option<&[NodeId]> {
        self.groups.get(&group).map(|p| p.replicas.as_slice())
    }

    /// The node believed to lead a group, if the group is known and has a hint.
    #[must_use]
    pub fn leader_hint(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group).and_then(|p| p.leader_hint)
    }

    /// Records which node is believed to lead a group (`None`: unknown).
    ///
    /// This does **not** change the version: leader hints move on every election, and no
    /// routing decision depends on them (a stale hint costs one `NotLeader` redirect, never a
    /// wrong answer). Bumping the version for them would make every election look like a
    /// reconfiguration and flood table distribution.
    ///
    /// # Errors
    ///
    /// [`RoutingError::UnknownGroup`] for a group not in the table,
    /// [`RoutingError::LeaderNotReplica`] if the node is not one of its replicas.
    pub fn set_leader_hint(
        &mut self,
        group: GroupId,
        leader: Option<NodeId>,
    ) -> Result<(), RoutingError> {
        let placement = self
            .groups
            .get_mut(&group)
            .ok_or(RoutingError::UnknownGroup { group })?;
        if let Some(node) = leader
            && !placement.replicas.contains(&node)
        {
            return Err(RoutingError::LeaderNotReplica { group, node });
        }
        placement.leader_hint = leader;
        Ok(())
    }

    /// All groups with their placements, in group id order.
    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &GroupPlacement)> {
        self.groups.iter().map(|(&g, p)| (g, p))
    }

    /// The groups that have a replica on `node`, in group id order.
    #[must_use]
    pub fn groups_on_node(&self, node: NodeId) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, p)| p.replicas.contains(&node))
            .map(|(&g, _)| g)
            .collect()
    }

    /// Every member node and every node that holds at least one replica.
    #[must_use]
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        self.groups
            .values()
            .flat_map(|p| p.replicas.iter().copied())
            .chain(self.members.keys().copied())
            .collect()
    }

    /// The cluster's member nodes with the address each is reached at (empty when the table
    /// does not carry it: the node's own configuration does).
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &str)> {
        self.members.iter().map(|(&n, a)| (n, a.as_str()))
    }

    /// Whether `node` is a member of the cluster.
    #[must_use]
    pub fn is_member(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    /// Adds `node` as a member reached at `address` (or changes its address) and bumps the
    /// version.
    ///
    /// # Errors
    ///
    /// [`RoutingError::ReservedNodeId`] for `NodeId(0)`, [`RoutingError::NodeRevoked`] for a
    /// revoked node.
    pub fn add_member(&mut self, node: NodeId, address: String) -> Result<(), RoutingError> {
        if node == NodeId(0) {
            return Err(RoutingError::ReservedNodeId);
        }
        self.check_not_revoked(&[node])?;
        if self.members.get(&node) == Some(&address) {
            return Ok(());
        }
        self.members.insert(node, address);
        self.bump();
        Ok(())
    }

    /// Removes a member that holds no replica, and bumps the version.
    ///
    /// # Errors
    ///
    /// [`RoutingError::UnknownNode`] for a node that is not a member,
    /// [`RoutingError::NodeStillHoldsReplicas`] while groups still list it.
    pub fn remove_member(&mut self, node: NodeId) -> Result<(), RoutingError> {
        if !self.members.contains_key(&node) {
            return Err(RoutingError::UnknownNode { node });
        }
        let held = self.groups_on_node(node).len();
        if held > 0 {
            return Err(RoutingError::NodeStillHoldsReplicas { node, groups: held });
        }
        self.members.remove(&node);
        self.bump();
        Ok(())
    }

    /// The vShards a group owns, in ascending order (empty for an unknown group).
    #[must_use]
    pub fn vshards_of_group(&self, group: GroupId) -> Vec<VShardId> {
        self.vshards
            .iter()
            .enumerate()
            .filter(|&(_, &g)| g == group)
            .filter_map(|(v, _)| u32::try_from(v).ok().map(VShardId))
            .collect()
    }

    /// Adds a group with the given replicas (its leader hint is the first replica) and bumps
    /// the version. It owns no vShards until [`Self::assign_vshard`] gives it some.
    ///
    /// # Errors
    ///
    /// [`RoutingError::ReservedGroupId`] for `GroupId(0)` and [`META_GROUP`], [`RoutingError::GroupExists`] for
    /// a known group, and the replica set errors of [`Self::set_replicas`].
    pub fn add_group(&mut self, group: GroupId, replicas: Vec<NodeId>) -> Result<(), RoutingError> {
        if group == GroupId(0) || group == META_GROUP {
            return Err(RoutingError::ReservedGroupId);
        }
        if self.groups.contains_key(&group) {
            return Err(RoutingError::GroupExists { group });
        }
        check_replicas(group, &replicas)?;
        self.check_not_revoked(&replicas)?;
        let leader_hint = replicas.first().copied();
        self.groups.insert(
            group,
            GroupPlacement {
                replicas,
                leader_hint,
            },
        );
        self.bump();
        Ok(())
    }

    /// Removes a group that owns no vShards, and bumps the version.
    ///
    /// # Errors
    ///
    /// [`RoutingError::UnknownGroup`] for a group not in the table,
    /// [`RoutingError::GroupStillOwnsVShards`] while vShards still map to it.
    pub fn remove_group(&mut self, group: GroupId) -> Result<GroupPlacement, RoutingError> {
        if !self.groups.contains_key(&group) {
            return Err(RoutingError::UnknownGroup { group });
        }
        let owned = self.vshards.iter().filter(|&&g| g == group).count();
        if owned > 0 {
            return Err(RoutingError::GroupStillOwnsVShards {
                group,
                vshards: owned,
            });
        }
        let removed = self
            .groups
            .remove(&group)
            .ok_or(RoutingError::UnknownGroup { group })?;
        self.bump();
        Ok(removed)
    }

    /// Replaces a group's replica set and bumps the version. The leader hint is kept if the
    /// node is still a replica, cleared otherwise.
    ///
    /// # Errors
    ///
    /// [`RoutingError::UnknownGroup`], [`RoutingError::EmptyReplicas`],
    /// [`RoutingError::ReservedNodeId`], [`RoutingError::DuplicateNode`] or
    /// [`RoutingError::NodeRevoked`] for a revoked replica.
    pub fn set_replicas(
        &mut self,
        group: GroupId,
        replicas: Vec<NodeId>,
    ) -> Result<(), RoutingError> {
        check_replicas(group, &replicas)?;
        self.check_not_revoked(&replicas)?;
        let placement = self
            .groups
            .get_mut(&group)
            .ok_or(RoutingError::UnknownGroup { group })?;
        if placement.replicas == replicas {
            return Ok(());
        }
        if placement
            .leader_hint
            .is_some_and(|leader| !replicas.contains(&leader))
        {
            placement.leader_hint = None;
        }
        placement.replicas = replicas;
        self.bump();
        Ok(())
    }

    /// Maps a vShard to a group and bumps the version (unless it already mapped there:
    /// nothing changes then).
    ///
    /// ```
    /// use pontoon_routing::{GroupId, NodeId, RoutingTable, VShardId};
    ///
    /// let mut table = RoutingTable::uniform(8, 1, &[NodeId(1)], 1)?;
    /// table.add_group(GroupId(2), vec![NodeId(1)])?;
    /// table.assign_vshard(VShardId(7), GroupId(2))?;
    /// assert_eq!(table.group_of_vshard(VShardId(7))?, GroupId(2));
    /// assert_eq!(table.version(), 3);
    /// # Ok::<(), pontoon_routing::RoutingError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RoutingError::VShardOutOfRange`] or [`RoutingError::UnknownGroup`].
    pub fn assign_vshard(&mut self, vshard: VShardId, group: GroupId) -> Result<(), RoutingError> {
        if !self.groups.contains_key(&group) {
            return Err(RoutingError::UnknownGroup { group });
        }
        let count = self.vshard_count();
        let slot = usize::try_from(vshard.get())
            .ok()
            .and_then(|i| self.vshards.get_mut(i))
            .ok_or(RoutingError::VShardOutOfRange { vshard, count })?;
        if *slot != group {
            *slot = group;
            self.bump();
        }
        Ok(())
    }

    pub(crate) fn bump(&mut self) {
        self.version = self.version.saturating_add(1);
    }
}

pub(crate) fn check_vshard_count(count: u64) -> Result<(), RoutingError> {
    if count == 0 {
        return Err(RoutingError::ZeroVShards);
    }
    if count > u64::from(MAX_VSHARDS) {
        return Err(RoutingError::TooManyVShards {
            count,
            max: MAX_VSHARDS,
        });
    }
    Ok(())
}

fn check_nodes(nodes: &[NodeId]) -> Result<(), RoutingError> {
    let mut seen = BTreeSet::new();
    for &node in nodes {
        if node == NodeId(0) {
            return Err(RoutingError::ReservedNodeId);
        }
        if !seen.insert(node) {
            return Err(RoutingError::DuplicateNode { node });
        }
    }
    Ok(())
}

pub(crate) fn check_replicas(group: GroupId, replicas: &[NodeId]) -> Result<(), RoutingError> {
    if replicas.is_empty() {
        return Err(RoutingError::EmptyReplicas { group });
    }
    check_nodes(replicas)
}
