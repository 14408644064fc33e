//! [`ClusterControl`]: the primitives a reshaping plan runs over, and what a plan reports.

use std::future::Future;

use raft::eraftpb::ConfChangeV2;
use routing::{GroupId, NodeId, RoutingChange, RoutingError, RoutingTable, VShardId};

use super::VShardStep;
use crate::error::RequestError;
use crate::multiraft::GroupStatus;

/// The primitives a reshaping plan needs. Every method talks to one node; the plan finds the
/// right node itself (the leader of a group, a node that holds a replica).
pub trait ClusterControl {
    /// The routing table as `node` has applied it (`None`: the node is unreachable).
    fn table(&self, node: NodeId) -> impl Future<Output = Option<RoutingTable>>;
    /// Proposes a routing change on `node` (the meta group's leader).
    fn change_routing(
        &self,
        node: NodeId,
        change: RoutingChange,
        expected_version: u64,
    ) -> impl Future<Output = Result<RoutingTable, RequestError>>;
    /// `group` as `node` sees it (`None`: unreachable, or it holds no replica).
    fn status(&self, node: NodeId, group: GroupId) -> impl Future<Output = Option<GroupStatus>>;
    /// Proposes a membership change of `group` on `node` (its leader).
    fn change_membership(
        &self,
        node: NodeId,
        group: GroupId,
        change: ConfChangeV2,
    ) -> impl Future<Output = Result<(), RequestError>>;
    /// Asks `node`, leader of `group`, to hand leadership to `to`.
    fn transfer_leader(
        &self,
        node: NodeId,
        group: GroupId,
        to: NodeId,
    ) -> impl Future<Output = Result<(), RequestError>>;
    /// Proposes a vShard step to `group` on `node` (its leader).
    fn vshard_step(
        &self,
        node: NodeId,
        group: GroupId,
        vshard: VShardId,
        step: VShardStep,
    ) -> impl Future<Output = Result<(), RequestError>>;
    /// Exports `vshard` from `node`'s replica of `group` after a read barrier.
    fn export_vshard(
        &self,
        node: NodeId,
        group: GroupId,
        vshard: VShardId,
    ) -> impl Future<Output = Result<Vec<u8>, RequestError>>;
    /// Waits a little before looking again (a tick in a simulation, tens of ms for real).
    fn pause(&self) -> impl Future<Output = ()>;
    /// Nodes to ask when looking for leaders, besides the table's members (a node being
    /// added is not in every table yet).
    fn contact_points(&self) -> Vec<NodeId>;
}

/// Why a reshaping operation stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReshapeError {
    /// The request does not fit the cluster (unknown node, a node added twice, too few nodes
    /// left for the replication factor, ...). Nothing was changed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The routing table refused a change.
    #[error("routing change refused: {0}")]
    Routing(#[from] RoutingError),
    /// A step did not complete within the operation's patience; the cluster is in a valid
    /// intermediate state and re-running the same operation finishes it.
    #[error("{step} did not complete ({last}); re-run the operation to finish it")]
    Stalled {
        /// The step.
        step: String,
        /// The last error or state seen.
        last: String,
    },
    /// A step failed and what it had done was undone; the cluster is as before the operation.
    #[error("{step} failed ({cause}); rolled back")]
    RolledBack {
        /// The step.
        step: String,
        /// Why it failed.
        cause: String,
    },
}

/// What one operation did, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReshapeReport {
    /// Replicas moved (group, from, to).
    pub replicas_moved: Vec<(GroupId, NodeId, NodeId)>,
    /// Leader transfers made (group, from, to).
    pub leaders_moved: Vec<(GroupId, NodeId, NodeId)>,
    /// The routing version at the end.
    pub routing_version: u64,
}

pub(super) fn stalled(step: impl Into<String>, last: impl Into<String>) -> ReshapeError {
    ReshapeError::Stalled {
        step: step.into(),
        last: last.into(),
    }
}

pub(super) fn rolled_back(step: &str, cause: &ReshapeError) -> ReshapeError {
    ReshapeError::RolledBack {
        step: step.into(),
        cause: cause.to_string(),
    }
}
