//! Handing leadership away: what a draining node does for every group it leads, and what
//! [`crate::Node::transfer_leader`] watches to say whether a transfer completed.

use super::*;

impl MultiRaft {
    /// The groups this node leads now. Walks every group.
    pub fn led_groups(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, g)| g.is_leader())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The leader this node knows of for `group` (possibly itself), if it holds the group.
    pub fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group).and_then(Group::leader)
    }

    /// Whether this node leads `group`.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(Group::is_leader)
    }

    /// The voter a leadership transfer of `group` is under way to, if any.
    pub fn transferring_to(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group).and_then(Group::transferring_to)
    }

    /// Moves leadership of `group` (led here) to its most caught-up voter that node-level
    /// liveness does not hold down. Returns that voter, or `None` when no transfer started
    /// (not the leader, one already under way, or no voter to take over).
    pub fn hand_off(&mut self, group: GroupId) -> Option<NodeId> {
        let down: BTreeSet<NodeId> = self.down_peers().collect();
        let g = self.groups.get(&group)?;
        if g.transferring_to().is_some() {
            return None;
        }
        let to = g.best_successor(self.id, |n| down.contains(&n))?;
        self.transfer_leader(group, to).ok()?;
        Some(to)
    }
}
