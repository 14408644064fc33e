//! Changing a running cluster's shape: add and remove nodes, move replicas and vShards, and
//! balance leadership, while it serves writes.
//!
//! Every operation is written once, as an async plan over [`ClusterControl`]: the handful of
//! primitives it needs (read the routing table, change it through the meta group, a group's
//! status on a node, membership changes, leader transfers, vShard fences and export). The
//! same plan runs against in-process [`crate::Node`]s ([`NodeSet`]), against remote nodes
//! over the client protocol (the `pontoon cluster` CLI), and inside the deterministic
//! simulation, where faults hit it between any two steps.
//!
//! Each step is idempotent and checks the state first, so a plan that fails half-way can
//! be re-run to finish; steps that fail before a change is committed are rolled back.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfChangeType, ConfChangeV2};
use routing::{GroupId, META_GROUP, NodeId, RoutingChange, RoutingError, RoutingTable, VShardId};

use crate::error::RequestError;
use crate::multiraft::{GroupStatus, Role};
use crate::node::placement::META_VOTERS;

mod balance;
mod control;
mod node_set;

pub use crate::replicated::VShardStep;
use balance::{changes, next_move};
pub use control::{ClusterControl, ReshapeError, ReshapeReport};
use control::{rolled_back, stalled};

/// What [`Reshaper::revoke`] revokes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// A node id, whatever certificate it presents.
    Node(NodeId),
    /// One certificate, by its serial (big-endian bytes).
    Serial(Vec<u8>),
}
pub use node_set::NodeSet;

/// Runs reshaping plans over a [`ClusterControl`].
pub struct Reshaper<C> {
    control: C,
    /// How many pauses a step may wait before it gives up.
    patience: u32,
}

impl<C: ClusterControl> Reshaper<C> {
    /// Plans over `control`; a step waits at most `patience` pauses.
    pub fn new(control: C, patience: u32) -> Self {
        Self { control, patience }
    }

    /// The control it runs over.
    pub fn control(&self) -> &C {
        &self.control
    }

    fn nodes(&self, table: &RoutingTable) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = table.nodes().into_iter().collect();
        for n in self.control.contact_points() {
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
        nodes
    }

    /// The newest routing table any reachable node has applied.
    ///
    /// # Errors
    /// [`ReshapeError::Stalled`] when no node answers.
    pub async fn table(&self) -> Result<RoutingTable, ReshapeError> {
        for _ in 0..=self.patience {
            let mut best: Option<RoutingTable> = None;
            for node in self.control.contact_points() {
                if let Some(t) = self.control.table(node).await
                    && best.as_ref().is_none_or(|b| t.version() > b.version())
                {
                    best = Some(t);
                }
            }
            if let Some(best) = best {
                // Members the contact points did not list may have seen newer versions.
                let mut newest = best.clone();
                for node in best.nodes() {
                    if let Some(t) = self.control.table(node).await
                        && t.version() > newest.version()
                    {
                        newest = t;
                    }
                }
                return Ok(newest);
            }
            self.control.pause().await;
        }
        Err(stalled("reading the routing table", "no node answered"))
    }

    /// The leader of `group` with the highest term among reachable nodes, and its status.
    async fn find_leader(&self, table: &RoutingTable, group: GroupId) -> Option<GroupStatus> {
        let mut best: Option<GroupStatus> = None;
        for node in self.nodes(table) {
            if let Some(s) = self.control.status(node, group).await
                && s.role == Role::Leader
                && s.leader == Some(node)
                && best.as_ref().is_none_or(|b| s.term > b.term)
            {
                best = Some(s);
            }
        }
        best
    }

    async fn leader(&self, group: GroupId) -> Result<GroupStatus, ReshapeError> {
        for _ in 0..=self.patience {
            let table = self.table().await?;
            if let Some(s) = self.find_leader(&table, group).await {
                return Ok(s);
            }
            self.control.pause().await;
        }
        Err(stalled(
            format!("finding the leader of {group}"),
            "no leader",
        ))
    }

    /// Applies the change `plan` computes from the current table (`None`: already done),
    /// retrying on version conflicts and on leadership changes of the meta group.
    async fn route(
        &self,
        what: &str,
        plan: impl Fn(&RoutingTable) -> Result<Option<RoutingChange>, ReshapeError>,
    ) -> Result<RoutingTable, ReshapeError> {
        let mut last = String::from("no attempt");
        for _ in 0..=self.patience {
            let table = self.table().await?;
            let Some(change) = plan(&table)? else {
                return Ok(table);
            };
            let Some(meta) = self.find_leader(&table, META_GROUP).await else {
                last = "the meta group has no leader".into();
                self.control.pause().await;
                continue;
            };
            let node = meta.leader.unwrap_or(NodeId(0));
            match self
                .control
                .change_routing(node, change.clone(), table.version())
                .await
            {
                Ok(table) => return Ok(table),
                // Everything else (conflict, lost leadership, timeout) is retried from a fresh
                // read of the table, where a change that did land plans to `None`.
                Err(e) => last = e.to_string(),
            }
            self.control.pause().await;
        }
        Err(stalled(what, last))
    }

    /// Runs a membership change of `group` until `done` holds for its leader's view.
    async fn reconfigure(
        &self,
        what: &str,
        group: GroupId,
        done: impl Fn(&GroupStatus) -> bool,
        change: impl Fn(&GroupStatus) -> ConfChangeV2,
    ) -> Result<(), ReshapeError> {
        let mut last = String::from("no attempt");
        for _ in 0..=self.patience {
            let status = self.leader(group).await?;
            if done(&status) && !status.joint {
                return Ok(());
            }
            let node = status.leader.unwrap_or(NodeId(0));
            // A joint configuration is left on its own (auto transition); wait for it.
            if !status.joint
                && let Err(e) = self
                    .control
                    .change_membership(node, group, change(&status))
                    .await
            {
                last = e.to_string();
            }
            self.control.pause().await;
        }
        Err(stalled(what, last))
    }

    /// Waits until `node`'s replica of `group` has applied what the leader had committed
    /// when the wait began.
    async fn catch_up(&self, group: GroupId, node: NodeId) -> Result<(), ReshapeError> {
        let target = self.leader(group).await?.commit;
        let mut last = String::from("no status");
        for _ in 0..=self.patience {
            match self.control.status(node, group).await {
                Some(s) if s.applied >= target => return Ok(()),
                Some(s) => last = format!("applied {} of {target}", s.applied),
                None => last = "no replica yet".into(),
            }
            self.control.pause().await;
        }
        Err(stalled(format!("{node} catching up on {group}"), last))
    }

    /// Moves leadership of `group` away from `from` to another voter (`prefer` first).
    async fn lead_elsewhere(
        &self,
        group: GroupId,
        from: NodeId,
        prefer: Option<NodeId>,
    ) -> Result<(), ReshapeError> {
        let mut last = String::from("no attempt");
        for _ in 0..=self.patience {
            let status = self.leader(group).await?;
            if status.leader != Some(from) {
                return Ok(());
            }
            let to = prefer
                .filter(|p| status.voters.contains(p))
                .or_else(|| status.voters.iter().copied().find(|v| *v != from));
            let Some(to) = to else {
                // A lone voter: the membership change that removes it makes it step down.
                return Ok(());
            };
            if let Err(e) = self.control.transfer_leader(from, group, to).await {
                last = e.to_string();
            }
            self.control.pause().await;
        }
        Err(stalled(
            format!("moving leadership of {group} off {from}"),
            last,
        ))
    }

    /// Moves `group`'s replica from `from` to `to`: the routing table lists `to`, `to` joins
    /// as a learner and catches up (by snapshot if need be), a joint change swaps the two
    /// voters, and the table drops `from`, which then deletes its replica. Before the swap
    /// commits, a failure rolls the learner back out.
    ///
    /// # Errors
    /// [`ReshapeError`].
    pub async fn move_replica(
        &self,
        group: GroupId,
        from: NodeId,
        to: NodeId,
    ) -> Result<(), ReshapeError> {
        let table = self.table().await?;
        let replicas = table
            .replicas(group)
            .ok_or(RoutingError::UnknownGroup { group })?
            .to_vec();
        if !table.is_member(to) {
            return Err(RoutingError::UnknownNode { node: to }.into());
        }
        if !replicas.contains(&from) && replicas.contains(&to) {
            return Ok(()); // Done by an earlier run.
        }
        if !replicas.contains(&from) {
            return Err(ReshapeError::Invalid(format!(
                "{from} holds no replica of {group}"
            )));
        }
        tracing::info!(%group, %from, %to, "move replica: starting");
        self.route("listing the new replica", |t| {
            let mut r = t.replicas(group).unwrap_or_default().to_vec();
            if r.contains(&to) {
                return Ok(None);
            }
            r.push(to);
            Ok(Some(RoutingChange::SetReplicas { group, replicas: r }))
        })
        .await?;
        let joined = async {
            self.reconfigure(
                "adding the learner",
                group,
                |s| s.learners.contains(&to) || s.voters.contains(&to),
                |_| changes(&[(ConfChangeType::AddLearnerNode, to)]),
            )
            .await?;
            self.catch_up(group, to).await
        }
        .await;
        if let Err(cause) = joined {
            self.undo_join(group, to).await;
            return Err(rolled_back("joining the new replica", &cause));
        }
        self.lead_elsewhere(group, from, Some(to)).await?;
        self.reconfigure(
            "swapping the voters",
            group,
            |s| s.voters.contains(&to) && !s.voters.contains(&from) && !s.learners.contains(&from),
            |s| {
                if s.voters.contains(&from) {
                    changes(&[
                        (ConfChangeType::AddNode, to),
                        (ConfChangeType::RemoveNode, from),
                    ])
                } else {
                    changes(&[(ConfChangeType::AddNode, to)])
                }
            },
        )
        .await?;
        self.route("dropping the old replica", |t| {
            let r = t.replicas(group).unwrap_or_default();
            if !r.contains(&from) {
                return Ok(None);
            }
            let replicas = r.iter().copied().filter(|n| *n != from).collect();
            Ok(Some(RoutingChange::SetReplicas { group, replicas }))
        })
        .await?;
        Ok(())
    }

    /// Best effort: takes `to` back out of `group` after a failed join.
    async fn undo_join(&self, group: GroupId, to: NodeId) {
        let _ = self
            .reconfigure(
                "removing the learner",
                group,
                |s| !s.learners.contains(&to) && !s.voters.contains(&to),
                |_| changes(&[(ConfChangeType::RemoveNode, to)]),
            )
            .await;
        let _ = self
            .route("unlisting the new replica", |t| {
                let r = t.replicas(group).unwrap_or_default();
                if !r.contains(&to) {
                    return Ok(None);
                }
                let replicas = r.iter().copied().filter(|n| *n != to).collect();
                Ok(Some(RoutingChange::SetReplicas { group, replicas }))
            })
            .await;
    }

    /// Adds `node` (already started with `join`, reachable at `address`): it becomes a
    /// member, joins the meta group (voting while it has fewer than five voters), then takes
    /// an even share of replicas, one replica move at a time, and of leaders.
    ///
    /// # Errors
    /// [`ReshapeError`]; [`ReshapeError::Invalid`] for a node that is already a member.
    pub async fn add_node(
        &self,
        node: NodeId,
        address: &str,
    ) -> Result<ReshapeReport, ReshapeError> {
        let table = self.table().await?;
        if table.is_member(node) && !table.groups_on_node(node).is_empty() {
            return Err(ReshapeError::Invalid(format!("{node} is already a member")));
        }
        tracing::info!(%node, "add node: starting");
        self.route("adding the member", |t| {
            Ok((!t.is_member(node)).then(|| RoutingChange::AddMember {
                node,
                address: address.to_string(),
            }))
        })
        .await?;
        self.reconfigure(
            "adding the node to the meta group",
            META_GROUP,
            |s| s.learners.contains(&node) || s.voters.contains(&node),
            |_| changes(&[(ConfChangeType::AddLearnerNode, node)]),
        )
        .await?;
        self.catch_up(META_GROUP, node).await?;
        let meta = self.leader(META_GROUP).await?;
        if meta.voters.len() < META_VOTERS && !meta.voters.contains(&node) {
            self.reconfigure(
                "promoting the node in the meta group",
                META_GROUP,
                |s| s.voters.contains(&node),
                |_| changes(&[(ConfChangeType::AddNode, node)]),
            )
            .await?;
        }
        let mut report = self.spread_replicas(None).await?;
        let leaders = self.balance_leaders().await?;
        report.leaders_moved = leaders.leaders_moved;
        report.routing_version = self.table().await?.version();
        Ok(report)
    }

    /// Removes `node`: its replicas move to the least-loaded other members first, then it
    /// leaves the meta group and the member list. The node's process can be stopped after.
    ///
    /// # Errors
    /// [`ReshapeError`]; [`ReshapeError::Invalid`] when too few nodes would remain for a
    /// group's replicas.
    pub async fn remove_node(&self, node: NodeId) -> Result<ReshapeReport, ReshapeError> {
        let table = self.table().await?;
        if !table.is_member(node) {
            return Err(RoutingError::UnknownNode { node }.into());
        }
        let others = table.members().filter(|(n, _)| *n != node).count();
        let widest = table
            .groups()
            .map(|(_, p)| p.replicas.len())
            .max()
            .unwrap_or(0);
        if others < widest || others == 0 {
            return Err(ReshapeError::Invalid(format!(
                "removing {node} leaves {others} nodes for groups of {widest} replicas"
            )));
        }
        tracing::info!(%node, "remove node: starting");
        let mut report = self.spread_replicas(Some(node)).await?;
        // The meta group: hand over leadership, bring in a learner as voter if one waits.
        self.lead_elsewhere(META_GROUP, node, None).await?;
        self.reconfigure(
            "removing the node from the meta group",
            META_GROUP,
            |s| !s.voters.contains(&node) && !s.learners.contains(&node),
            |s| {
                let standby = s.learners.iter().copied().find(|l| *l != node);
                match standby {
                    Some(l) if s.voters.contains(&node) => changes(&[
                        (ConfChangeType::AddNode, l),
                        (ConfChangeType::RemoveNode, node),
                    ]),
                    _ => changes(&[(ConfChangeType::RemoveNode, node)]),
                }
            },
        )
        .await?;
        let table = self
            .route("removing the member", |t| {
                Ok(t.is_member(node)
                    .then_some(RoutingChange::RemoveMember { node }))
            })
            .await?;
        report.leaders_moved = self.balance_leaders().await?.leaders_moved;
        report.routing_version = table.version();
        Ok(report)
    }

    /// Moves replicas until every member holds an even share (`draining`: that node ends
    /// with none).
    async fn spread_replicas(
        &self,
        draining: Option<NodeId>,
    ) -> Result<ReshapeReport, ReshapeError> {
        let mut report = ReshapeReport::default();
        loop {
            let table = self.table().await?;
            let Some((group, from, to)) = next_move(&table, draining) else {
                break;
            };
            self.move_replica(group, from, to).await?;
            report.replicas_moved.push((group, from, to));
        }
        Ok(report)
    }

    /// Revokes a node id or a certificate serial in the replicated routing table: every node
    /// refuses it at the handshake and closes its live connections once it applies the table.
    /// A node id must leave the cluster first ([`Reshaper::remove_node`]); a serial may be
    /// revoked at any time (the emergency cut-off for a stolen certificate).
    ///
    /// # Errors
    /// [`ReshapeError::Invalid`] for a node id that is still a member; otherwise as every plan.
    pub async fn revoke(&self, revocation: Revocation) -> Result<RoutingTable, ReshapeError> {
        if let Revocation::Node(node) = revocation
            && self.table().await?.is_member(node)
        {
            return Err(ReshapeError::Invalid(format!(
                "{node} is still a member: remove it (pontoon cluster remove-node) before \
                 revoking its id, or revoke its certificate's serial now"
            )));
        }
        self.route("revoking", |t| {
            Ok(match &revocation {
                Revocation::Node(node) => {
                    (!t.is_node_revoked(*node)).then_some(RoutingChange::RevokeNode { node: *node })
                }
                Revocation::Serial(serial) => {
                    (!t.is_serial_revoked(serial)).then(|| RoutingChange::RevokeSerial {
                        serial: serial.clone(),
                    })
                }
            })
        })
        .await
    }

    /// Transfers leadership until no node leads more than its share (rounded up) of the
    /// groups it holds replicas of.
    ///
    /// # Errors
    /// [`ReshapeError`].
    pub async fn balance_leaders(&self) -> Result<ReshapeReport, ReshapeError> {
        let mut report = ReshapeReport::default();
        let table = self.table().await?;
        let mut leaders: BTreeMap<GroupId, (NodeId, Vec<NodeId>)> = BTreeMap::new();
        for (group, _) in table.groups() {
            if let Some(s) = self.find_leader(&table, group).await
                && let Some(l) = s.leader
            {
                leaders.insert(group, (l, s.voters));
            }
        }
        let members: Vec<NodeId> = table.members().map(|(n, _)| n).collect();
        let mut counts: BTreeMap<NodeId, usize> = members.iter().map(|n| (*n, 0)).collect();
        for (leader, _) in leaders.values() {
            *counts.entry(*leader).or_default() += 1;
        }
        let share = leaders.len().div_ceil(members.len().max(1));
        for (group, (leader, voters)) in &leaders {
            if counts.get(leader).copied().unwrap_or(0) <= share {
                continue;
            }
            let target = voters
                .iter()
                .filter(|v| *v != leader)
                .min_by_key(|v| counts.get(v).copied().unwrap_or(0))
                .copied();
            let Some(to) = target.filter(|t| counts.get(t).copied().unwrap_or(0) < share) else {
                continue;
            };
            if self
                .control
                .transfer_leader(*leader, *group, to)
                .await
                .is_ok()
            {
                *counts.entry(*leader).or_default() -= 1;
                *counts.entry(to).or_default() += 1;
                report.leaders_moved.push((*group, *leader, to));
            }
        }
        // Transfers take an election round trip: wait for them to show (best effort).
        for _ in 0..self.patience.min(200) {
            let mut pending = 0;
            for (group, _, to) in &report.leaders_moved {
                if self
                    .control
                    .status(*to, *group)
                    .await
                    .is_none_or(|s| s.role != Role::Leader)
                {
                    pending += 1;
                }
            }
            if pending == 0 {
                break;
            }
            self.control.pause().await;
        }
        report.routing_version = table.version();
        Ok(report)
    }

    /// Moves `vshard` to `to`: its group fences it (commands for it are refused from then
    /// on), its data is exported from a current replica and imported by `to` through the
    /// state machine's hooks, the routing table maps it to `to`, and the old group drops the
    /// data. Proposers holding the old table get `StaleRouting` and retry on the new one.
    /// If `to` cannot take the vShard, the old group takes it back (rolled back).
    ///
    /// # Errors
    /// [`ReshapeError`].
    pub async fn move_vshard(&self, vshard: VShardId, to: GroupId) -> Result<(), ReshapeError> {
        let table = self.table().await?;
        let from = table.group_of_vshard(vshard)?;
        if table.placement(to).is_none() {
            return Err(RoutingError::UnknownGroup { group: to }.into());
        }
        if from == to {
            return Ok(());
        }
        tracing::info!(%vshard, %from, %to, "move vshard: starting");
        self.vshard_step("fencing the vShard", from, vshard, &VShardStep::Release)
            .await?;
        let moved = async {
            let data = self.export(from, vshard).await?;
            self.vshard_step(
                "importing the vShard",
                to,
                vshard,
                &VShardStep::Acquire(Some(data)),
            )
            .await
        }
        .await;
        if let Err(cause) = moved {
            // `to` may or may not have imported it: fence it there too, then take it back.
            let undone = async {
                self.vshard_step("fencing the new group", to, vshard, &VShardStep::Release)
                    .await?;
                self.vshard_step(
                    "taking the vShard back",
                    from,
                    vshard,
                    &VShardStep::Acquire(None),
                )
                .await
            }
            .await;
            return match undone {
                Ok(()) => Err(rolled_back("moving the vShard's data", &cause)),
                Err(e) => Err(e),
            };
        }
        self.route("mapping the vShard to its new group", |t| {
            Ok((t.group_of_vshard(vshard)? != to)
                .then_some(RoutingChange::AssignVShard { vshard, group: to }))
        })
        .await?;
        // The old copy is unreachable now; dropping it is housekeeping, and a failure here
        // leaves only garbage behind.
        if let Err(e) = self
            .vshard_step("dropping the old copy", from, vshard, &VShardStep::Purge)
            .await
        {
            tracing::warn!(%vshard, %from, error = %e, "old vShard data not purged");
        }
        Ok(())
    }

    async fn vshard_step(
        &self,
        what: &str,
        group: GroupId,
        vshard: VShardId,
        step: &VShardStep,
    ) -> Result<(), ReshapeError> {
        let mut last = String::from("no attempt");
        for _ in 0..=self.patience {
            let leader = self.leader(group).await?;
            let node = leader.leader.unwrap_or(NodeId(0));
            // Every step is idempotent, so an unknown outcome is simply tried again.
            match self
                .control
                .vshard_step(node, group, vshard, step.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(RequestError::Refused { reason, .. }) => {
                    return Err(ReshapeError::Invalid(reason));
                }
                Err(e) => last = e.to_string(),
            }
            self.control.pause().await;
        }
        Err(stalled(what, last))
    }

    async fn export(&self, group: GroupId, vshard: VShardId) -> Result<Vec<u8>, ReshapeError> {
        let mut last = String::from("no attempt");
        for _ in 0..=self.patience {
            let leader = self.leader(group).await?;
            let node = leader.leader.unwrap_or(NodeId(0));
            match self.control.export_vshard(node, group, vshard).await {
                Ok(data) => return Ok(data),
                Err(RequestError::Refused { reason, .. }) => {
                    return Err(ReshapeError::Invalid(reason));
                }
                Err(e) => last = e.to_string(),
            }
            self.control.pause().await;
        }
        Err(stalled("exporting the vShard", last))
    }
}
