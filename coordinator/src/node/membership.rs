//! Membership changes of one group, as calls on [`Node`].

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use routing::{GroupId, NodeId};

use super::Node;
use super::driver::Waiter;
use super::pending::Request;
use crate::error::RequestError;

impl Node {
    /// Changes `group`'s membership through raft (joint consensus when `change` has several
    /// steps; leave the joint state with an empty change). Resolves with the configuration in
    /// force once the change is committed and applied.
    ///
    /// # Errors
    /// As [`Node::propose`].
    pub async fn change_membership(
        &self,
        group: GroupId,
        change: ConfChangeV2,
    ) -> Result<ConfState, RequestError> {
        self.request(group, Request::ConfChange(change), Waiter::Configured)
            .await
    }

    /// Adds `node` to `group` as a learner (it receives the log but does not vote).
    ///
    /// # Errors
    /// As [`Node::change_membership`].
    pub async fn add_learner(
        &self,
        group: GroupId,
        node: NodeId,
    ) -> Result<ConfState, RequestError> {
        self.change_membership(group, single_change(ConfChangeType::AddLearnerNode, node))
            .await
    }

    /// Adds `node` to `group` as a voter, or promotes it when it is a learner.
    ///
    /// # Errors
    /// As [`Node::change_membership`].
    pub async fn add_voter(&self, group: GroupId, node: NodeId) -> Result<ConfState, RequestError> {
        self.change_membership(group, single_change(ConfChangeType::AddNode, node))
            .await
    }

    /// Removes `node` from `group`.
    ///
    /// # Errors
    /// As [`Node::change_membership`].
    pub async fn remove_member(
        &self,
        group: GroupId,
        node: NodeId,
    ) -> Result<ConfState, RequestError> {
        self.change_membership(group, single_change(ConfChangeType::RemoveNode, node))
            .await
    }
}

fn single_change(kind: ConfChangeType, node: NodeId) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node.get();
    let mut change = ConfChangeV2::default();
    change.mut_changes().push(single);
    change
}
