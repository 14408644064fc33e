//! Bootstrap placement: the groups a brand-new cluster starts with on a node, and the meta
//! group's first membership. The one place both the node and the reshaping plans read
//! [`META_VOTERS`] from.

use routing::{GroupId, META_GROUP, NodeId, RoutingTable};

/// The most voters the meta group gets; every other member follows it as a learner.
pub(crate) const META_VOTERS: usize = 5;

/// The groups a brand-new cluster starts with on `node`: its replicas of the data groups, and
/// the meta group (the first [`META_VOTERS`] members vote, the rest learn).
pub(crate) fn bootstrap_groups(
    routing: &RoutingTable,
    node: NodeId,
) -> Vec<(GroupId, Vec<NodeId>, Vec<NodeId>)> {
    let mut groups: Vec<_> = routing
        .groups()
        .filter(|(_, placement)| placement.replicas.contains(&node))
        .map(|(group, placement)| (group, placement.replicas.clone(), Vec::new()))
        .collect();
    let (voters, learners) = meta_membership(routing);
    if voters.contains(&node) || learners.contains(&node) {
        groups.push((META_GROUP, voters, learners));
    }
    groups
}

/// The meta group's first configuration: the lowest-numbered members vote.
pub(crate) fn meta_membership(routing: &RoutingTable) -> (Vec<NodeId>, Vec<NodeId>) {
    let mut members: Vec<NodeId> = routing.members().map(|(n, _)| n).collect();
    let learners = members.split_off(members.len().min(META_VOTERS));
    (members, learners)
}
