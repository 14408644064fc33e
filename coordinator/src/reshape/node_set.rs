//! [`NodeSet`]: the reshaping plans over in-process [`Node`] handles.

use std::collections::BTreeMap;
use std::time::Duration;

use routing::{GroupId, NodeId, RoutingTable};

use crate::{Node, RequestError};

/// [`crate::reshape::ClusterControl`] over in-process [`Node`] handles.
pub struct NodeSet {
    nodes: BTreeMap<NodeId, Node>,
    pause: Duration,
}

impl NodeSet {
    /// Control over `nodes`, pausing `pause` between looks.
    pub fn new(nodes: impl IntoIterator<Item = Node>, pause: Duration) -> Self {
        Self {
            nodes: nodes.into_iter().map(|n| (n.id(), n)).collect(),
            pause,
        }
    }

    fn node(&self, node: NodeId) -> Result<&Node, RequestError> {
        self.nodes.get(&node).ok_or(RequestError::ShuttingDown)
    }
}

impl crate::reshape::ClusterControl for NodeSet {
    async fn table(&self, node: NodeId) -> Option<RoutingTable> {
        let node = self.nodes.get(&node)?;
        // A stopped node answers nothing.
        node.status().await.ok()?;
        Some(node.routing())
    }

    async fn change_routing(
        &self,
        node: NodeId,
        change: routing::RoutingChange,
        expected_version: u64,
    ) -> Result<RoutingTable, RequestError> {
        self.node(node)?
            .propose_routing(&change, expected_version)
            .await
    }

    async fn status(&self, node: NodeId, group: GroupId) -> Option<crate::GroupStatus> {
        self.nodes.get(&node)?.group_status(group).await.ok()?
    }

    async fn change_membership(
        &self,
        node: NodeId,
        group: GroupId,
        change: raft::eraftpb::ConfChangeV2,
    ) -> Result<(), RequestError> {
        self.node(node)?
            .change_membership(group, change)
            .await
            .map(drop)
    }

    async fn transfer_leader(
        &self,
        node: NodeId,
        group: GroupId,
        to: NodeId,
    ) -> Result<(), RequestError> {
        self.node(node)?.transfer_leader(group, to).await
    }

    async fn vshard_step(
        &self,
        node: NodeId,
        group: GroupId,
        vshard: routing::VShardId,
        step: crate::reshape::VShardStep,
    ) -> Result<(), RequestError> {
        self.node(node)?.vshard_step(group, vshard, step).await
    }

    async fn export_vshard(
        &self,
        node: NodeId,
        group: GroupId,
        vshard: routing::VShardId,
    ) -> Result<Vec<u8>, RequestError> {
        self.node(node)?.export_vshard(group, vshard).await
    }

    async fn pause(&self) {
        tokio::time::sleep(self.pause).await;
    }

    fn contact_points(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }
}
