//! What a node tells its embedder as it happens: leadership, roles, quiescence, peer liveness
//! and its own stop, on a bounded broadcast channel ([`Node::subscribe`](super::Node::subscribe)),
//! so nobody has to poll `status()` (which copies every group) to learn of a failover.

use routing::{GroupId, NodeId};
use tokio::sync::broadcast;

use super::NodeStopped;
use crate::multiraft::{Event, Role};

/// How many events a subscriber may fall behind by before it misses some (see
/// [`Node::subscribe`](super::Node::subscribe)).
pub(super) const DEFAULT_CAPACITY: usize = 4096;

/// Something that happened on a node. See [`Node::subscribe`](super::Node::subscribe).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A group's leader changed, became unknown, or was elected again in a new term, as this
    /// node sees it.
    LeaderChanged {
        /// The group.
        group: GroupId,
        /// The leader (`None`: unknown, an election is under way).
        leader: Option<NodeId>,
        /// The term.
        term: u64,
    },
    /// This node's role in a group changed.
    RoleChanged {
        /// The group.
        group: GroupId,
        /// The new role.
        role: Role,
        /// The term.
        term: u64,
    },
    /// A group went quiet here: idle, not ticking, kept alive by node-level liveness.
    Quiet {
        /// The group.
        group: GroupId,
    },
    /// A quiet group woke up (work arrived, or its leader was declared down).
    Woken {
        /// The group.
        group: GroupId,
    },
    /// A peer was silent past the liveness timeout (with quiescence on, the default).
    PeerDown {
        /// The peer.
        peer: NodeId,
    },
    /// A peer declared down was heard from again.
    PeerUp {
        /// The peer.
        peer: NodeId,
    },
    /// This node's replica of a group stopped serving: its state machine could not restore a
    /// snapshot a peer sent. The node serves its other groups; requests for this one get
    /// [`RequestError::ReplicaFailed`](crate::RequestError::ReplicaFailed). Replace the
    /// replica with a membership change (remove it here, add one elsewhere).
    ReplicaFailed {
        /// The group.
        group: GroupId,
        /// The state machine's error.
        reason: String,
    },
    /// The node stopped, and why: the last event a subscriber receives.
    Stopped(NodeStopped),
}

impl NodeEvent {
    /// The event a core event becomes, if the embedder is told of it.
    pub(super) fn from_core(event: &Event) -> Option<Self> {
        Some(match event {
            &Event::LeaderChanged {
                group,
                leader,
                term,
            } => Self::LeaderChanged {
                group,
                leader,
                term,
            },
            &Event::RoleChanged { group, role, term } => Self::RoleChanged { group, role, term },
            &Event::Quiet { group } => Self::Quiet { group },
            &Event::Woken { group } => Self::Woken { group },
            &Event::PeerDown { peer } => Self::PeerDown { peer },
            &Event::PeerUp { peer } => Self::PeerUp { peer },
            Event::ReplicaFailed { group, reason } => Self::ReplicaFailed {
                group: *group,
                reason: reason.clone(),
            },
            Event::ReadReady { .. }
            | Event::ProposalDropped { .. }
            | Event::ProposalBusy { .. }
            | Event::ProposalOutcomeUnknown { .. } => return None,
        })
    }
}

/// Sends each of a cycle's events that the embedder is told of, when anyone listens.
pub(super) fn publish(sender: &broadcast::Sender<NodeEvent>, events: &[Event]) {
    // Without a subscriber, not even the conversion is paid.
    if sender.receiver_count() == 0 {
        return;
    }
    for event in events.iter().filter_map(NodeEvent::from_core) {
        // Only fails without receivers: nobody to tell.
        let _ = sender.send(event);
    }
}
