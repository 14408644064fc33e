//! Replica balancing: which replica move evens out the table next. Pure: a table in, a move
//! out, so it is tested on tables alone.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use routing::{GroupId, NodeId, RoutingTable};

/// The next replica move that evens out replica counts: from the fullest member (or the
/// draining node) to the emptiest member that lacks the group.
pub(super) fn next_move(
    table: &RoutingTable,
    draining: Option<NodeId>,
) -> Option<(GroupId, NodeId, NodeId)> {
    let mut counts: BTreeMap<NodeId, usize> = table
        .members()
        .filter(|(n, _)| Some(*n) != draining)
        .map(|(n, _)| (n, 0))
        .collect();
    for (_, p) in table.groups() {
        for r in &p.replicas {
            if let Some(c) = counts.get_mut(r) {
                *c += 1;
            }
        }
    }
    let emptiest_lacking = |replicas: &[NodeId]| {
        counts
            .iter()
            .filter(|(n, _)| !replicas.contains(n))
            .min_by_key(|(n, c)| (**c, **n))
            .map(|(n, c)| (*n, *c))
    };
    if let Some(d) = draining {
        return table
            .groups()
            .filter(|(_, p)| p.replicas.contains(&d))
            .find_map(|(g, p)| emptiest_lacking(&p.replicas).map(|(to, _)| (g, d, to)));
    }
    let (&fullest, &most) = counts
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))?;
    table
        .groups()
        .filter(|(_, p)| p.replicas.contains(&fullest))
        .filter_map(|(g, p)| emptiest_lacking(&p.replicas).map(|(to, c)| (g, to, c)))
        .filter(|(_, _, c)| c + 1 < most)
        .min_by_key(|(g, _, c)| (*c, *g))
        .map(|(g, to, _)| (g, fullest, to))
}

pub(super) fn changes(steps: &[(ConfChangeType, NodeId)]) -> ConfChangeV2 {
    let mut change = ConfChangeV2::default();
    for (kind, node) in steps {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(*kind);
        single.node_id = node.get();
        change.mut_changes().push(single);
    }
    if steps.len() > 1 {
        // Enter the joint configuration and let raft leave it on its own.
        change.set_transition(ConfChangeTransition::Auto);
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(nodes: u64, groups: u64) -> RoutingTable {
        let ids: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
        RoutingTable::uniform(64, groups, &ids, 3).unwrap()
    }

    /// Plays `next_move` to its end on a table alone.
    fn settle(mut t: RoutingTable, draining: Option<NodeId>) -> RoutingTable {
        let mut moves = 0;
        while let Some((g, from, to)) = next_move(&t, draining) {
            let mut r: Vec<NodeId> = t.replicas(g).unwrap().to_vec();
            r.retain(|n| *n != from);
            r.push(to);
            t.set_replicas(g, r).unwrap();
            moves += 1;
            assert!(moves < 1000, "next_move does not converge");
        }
        t
    }

    fn load(t: &RoutingTable) -> Vec<usize> {
        t.members()
            .map(|(n, _)| t.groups_on_node(n).len())
            .collect()
    }

    #[test]
    fn a_new_node_gets_an_even_share_and_a_drained_node_none() {
        let mut t = table(3, 10);
        t.add_member(NodeId(4), String::new()).unwrap();
        t.add_member(NodeId(5), String::new()).unwrap();
        let grown = settle(t, None);
        let l = load(&grown);
        assert!(
            l.iter().max().unwrap() - l.iter().min().unwrap() <= 1,
            "{l:?}"
        );
        assert_eq!(l.iter().sum::<usize>(), 30);
        let shrunk = settle(grown, Some(NodeId(5)));
        assert!(shrunk.groups_on_node(NodeId(5)).is_empty());
        for (_, p) in shrunk.groups() {
            assert_eq!(p.replicas.len(), 3);
        }
    }

    #[test]
    fn several_changes_make_a_joint_change_and_one_a_simple_change() {
        let joint = changes(&[
            (ConfChangeType::AddNode, NodeId(4)),
            (ConfChangeType::RemoveNode, NodeId(1)),
        ]);
        assert_eq!(joint.get_transition(), ConfChangeTransition::Auto);
        assert_eq!(joint.changes.len(), 2);
        assert_eq!(
            changes(&[(ConfChangeType::AddLearnerNode, NodeId(4))])
                .changes
                .len(),
            1
        );
    }
}
