//! The admin protocol's messages: one [`AdminRequest`] with a typed body per operation, one
//! [`AdminReply`] with a typed body per kind of answer. They travel inside the client
//! protocol's envelope ([`crate::wire`]).

use coordinator::{GroupStatus, Role};
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use routing::{GroupId, NodeId};

/// No fields.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Empty {}

/// An admin request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminRequest {
    /// The operation.
    #[prost(oneof = "admin_request::Body", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub body: Option<admin_request::Body>,
}

/// The operations of an [`AdminRequest`].
pub mod admin_request {
    use super::{ConfStep, Empty};

    /// Propose a routing change through the meta group (the node must lead it).
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct ChangeRouting {
        /// The change with the table version it expects, as `RoutingChange::encode` writes it.
        #[prost(bytes = "vec", tag = "1")]
        pub change: Vec<u8>,
    }

    /// One group's status on the node, or every group's.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct GroupStatus {
        /// The group; absent: every group of the node.
        #[prost(uint64, optional, tag = "1")]
        pub group: Option<u64>,
    }

    /// Propose a membership change of a group (the node must lead it).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ChangeMembership {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
        /// The steps, at least one.
        #[prost(message, repeated, tag = "2")]
        pub steps: Vec<ConfStep>,
        /// How the change enters and leaves a joint configuration.
        #[prost(enumeration = "super::Transition", tag = "3")]
        pub transition: i32,
        /// The change's context.
        #[prost(bytes = "vec", tag = "4")]
        pub context: Vec<u8>,
    }

    /// Hand leadership of a group to another node (the node must lead it).
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct TransferLeader {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
        /// The node to hand it to.
        #[prost(uint64, tag = "2")]
        pub to: u64,
    }

    /// Propose one step of a vShard move to a group (the node must lead it).
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct VShardStep {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
        /// The vShard.
        #[prost(uint32, tag = "2")]
        pub vshard: u32,
        /// The step.
        #[prost(oneof = "vshard_step::Step", tags = "3, 4, 5")]
        pub step: Option<vshard_step::Step>,
    }

    /// The steps of a [`VShardStep`].
    pub mod vshard_step {
        use super::Empty;

        /// Serve the vShard, importing `data` when present (absent: take back a released one).
        #[derive(Clone, PartialEq, Eq, prost::Message)]
        pub struct Acquire {
            /// The export to import.
            #[prost(bytes = "vec", optional, tag = "1")]
            pub data: Option<Vec<u8>>,
        }

        /// A vShard step.
        #[derive(Clone, PartialEq, Eq, prost::Oneof)]
        pub enum Step {
            /// Fence the vShard in the group.
            #[prost(message, tag = "3")]
            Release(Empty),
            /// Serve the vShard.
            #[prost(message, tag = "4")]
            Acquire(Acquire),
            /// Drop the released vShard's data.
            #[prost(message, tag = "5")]
            Purge(Empty),
        }
    }

    /// Export a vShard's data from the node's replica of a group, after a read barrier.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct ExportVShard {
        /// The group.
        #[prost(uint64, tag = "1")]
        pub group: u64,
        /// The vShard.
        #[prost(uint32, tag = "2")]
        pub vshard: u32,
    }

    /// An admin operation.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// The routing table as the node applied it, with the addresses it knows.
        #[prost(message, tag = "1")]
        Table(Empty),
        /// See [`ChangeRouting`].
        #[prost(message, tag = "2")]
        ChangeRouting(ChangeRouting),
        /// See [`GroupStatus`].
        #[prost(message, tag = "3")]
        GroupStatus(GroupStatus),
        /// See [`ChangeMembership`].
        #[prost(message, tag = "4")]
        ChangeMembership(ChangeMembership),
        /// See [`TransferLeader`].
        #[prost(message, tag = "5")]
        TransferLeader(TransferLeader),
        /// See [`VShardStep`].
        #[prost(message, tag = "6")]
        VShardStep(VShardStep),
        /// See [`ExportVShard`].
        #[prost(message, tag = "7")]
        ExportVShard(ExportVShard),
        /// The node's status (every group, its counters) as JSON.
        #[prost(message, tag = "8")]
        NodeStatus(Empty),
    }
}

/// How a membership change enters and leaves a joint configuration (raft's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Transition {
    /// Raft decides (joint only for more than one step, left automatically).
    Auto = 0,
    /// Joint, left automatically.
    Implicit = 1,
    /// Joint, left by an explicit empty change.
    Explicit = 2,
}

/// What a membership step does to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StepKind {
    /// Add (or promote) a voter.
    AddVoter = 0,
    /// Remove the node.
    Remove = 1,
    /// Add a learner (or demote a voter).
    AddLearner = 2,
}

/// One step of a membership change.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConfStep {
    /// What to do.
    #[prost(enumeration = "StepKind", tag = "1")]
    pub kind: i32,
    /// The node.
    #[prost(uint64, tag = "2")]
    pub node: u64,
}

/// The node's answer to an [`AdminRequest`] that succeeded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminReply {
    /// The answer.
    #[prost(oneof = "admin_reply::Body", tags = "1, 2, 3, 4, 5")]
    pub body: Option<admin_reply::Body>,
}

/// The answers of an [`AdminReply`].
pub mod admin_reply {
    use super::{Address, Empty, GroupStatusMsg};

    /// A routing table, with the addresses the node knows.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Table {
        /// The table, as `RoutingTable::encode` writes it.
        #[prost(bytes = "vec", tag = "1")]
        pub table: Vec<u8>,
        /// Where the node reaches its peers (empty after a routing change).
        #[prost(message, repeated, tag = "2")]
        pub addresses: Vec<Address>,
    }

    /// Group statuses.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Statuses {
        /// One per group asked about.
        #[prost(message, repeated, tag = "1")]
        pub statuses: Vec<GroupStatusMsg>,
    }

    /// A vShard's export.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Export {
        /// The data, in the state machine's own encoding.
        #[prost(bytes = "vec", tag = "1")]
        pub data: Vec<u8>,
    }

    /// The node's status.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct NodeStatus {
        /// The status as JSON (its fields are the coordinator's `NodeStatus`).
        #[prost(string, tag = "1")]
        pub json: String,
    }

    /// An answer.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// The routing table (answers `Table` and `ChangeRouting`).
        #[prost(message, tag = "1")]
        Table(Table),
        /// Group statuses.
        #[prost(message, tag = "2")]
        Statuses(Statuses),
        /// Done (membership change, leader transfer, vShard step).
        #[prost(message, tag = "3")]
        Done(Empty),
        /// A vShard export.
        #[prost(message, tag = "4")]
        Export(Export),
        /// The node's status.
        #[prost(message, tag = "5")]
        NodeStatus(NodeStatus),
    }
}

/// A node and the address it is reached at.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Address {
    /// The node.
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// `host:port`.
    #[prost(string, tag = "2")]
    pub addr: String,
}

/// [`GroupStatus`] on the wire.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupStatusMsg {
    /// The group.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The node's role in it.
    #[prost(enumeration = "WireRole", tag = "2")]
    pub role: i32,
    /// The term.
    #[prost(uint64, tag = "3")]
    pub term: u64,
    /// The leader the node knows of.
    #[prost(uint64, optional, tag = "4")]
    pub leader: Option<u64>,
    /// Commit index.
    #[prost(uint64, tag = "5")]
    pub commit: u64,
    /// Applied index.
    #[prost(uint64, tag = "6")]
    pub applied: u64,
    /// First log index.
    #[prost(uint64, tag = "7")]
    pub first_index: u64,
    /// Last log index.
    #[prost(uint64, tag = "8")]
    pub last_index: u64,
    /// Voters.
    #[prost(uint64, repeated, tag = "9")]
    pub voters: Vec<u64>,
    /// Learners.
    #[prost(uint64, repeated, tag = "10")]
    pub learners: Vec<u64>,
    /// In a joint configuration.
    #[prost(bool, tag = "11")]
    pub joint: bool,
    /// Quiescent.
    #[prost(bool, tag = "12")]
    pub quiet: bool,
    /// The replica was set aside (its state machine failed to restore a snapshot).
    #[prost(bool, tag = "13")]
    pub set_aside: bool,
}

/// [`Role`] on the wire (0 is left unset so that a missing role is not read as a follower).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WireRole {
    /// Not set.
    Unknown = 0,
    /// Follower.
    Follower = 1,
    /// Candidate.
    Candidate = 2,
    /// Pre-candidate.
    PreCandidate = 3,
    /// Leader.
    Leader = 4,
}

impl From<&GroupStatus> for GroupStatusMsg {
    fn from(s: &GroupStatus) -> Self {
        let role = match s.role {
            Role::Follower => WireRole::Follower,
            Role::Candidate => WireRole::Candidate,
            Role::PreCandidate => WireRole::PreCandidate,
            Role::Leader => WireRole::Leader,
        };
        Self {
            group: s.group.get(),
            role: role.into(),
            term: s.term,
            leader: s.leader.map(NodeId::get),
            commit: s.commit,
            applied: s.applied,
            first_index: s.first_index,
            last_index: s.last_index,
            voters: s.voters.iter().map(|n| n.get()).collect(),
            learners: s.learners.iter().map(|n| n.get()).collect(),
            joint: s.joint,
            quiet: s.quiet,
            set_aside: s.set_aside,
        }
    }
}

impl GroupStatusMsg {
    /// The status it carries; `None` for a role this build does not know.
    #[must_use]
    pub fn to_status(&self) -> Option<GroupStatus> {
        let role = match WireRole::try_from(self.role).ok()? {
            WireRole::Unknown => return None,
            WireRole::Follower => Role::Follower,
            WireRole::Candidate => Role::Candidate,
            WireRole::PreCandidate => Role::PreCandidate,
            WireRole::Leader => Role::Leader,
        };
        Some(GroupStatus {
            group: GroupId(self.group),
            role,
            term: self.term,
            leader: self.leader.map(NodeId),
            commit: self.commit,
            applied: self.applied,
            first_index: self.first_index,
            last_index: self.last_index,
            voters: self.voters.iter().copied().map(NodeId).collect(),
            learners: self.learners.iter().copied().map(NodeId).collect(),
            joint: self.joint,
            quiet: self.quiet,
            set_aside: self.set_aside,
        })
    }
}

impl admin_request::ChangeMembership {
    /// The request for `change` of `group`.
    #[must_use]
    pub fn new(group: GroupId, change: &ConfChangeV2) -> Self {
        let steps = change
            .changes
            .iter()
            .map(|c| ConfStep {
                kind: match c.get_change_type() {
                    ConfChangeType::AddNode => StepKind::AddVoter,
                    ConfChangeType::RemoveNode => StepKind::Remove,
                    ConfChangeType::AddLearnerNode => StepKind::AddLearner,
                }
                .into(),
                node: c.node_id,
            })
            .collect();
        let transition = match change.get_transition() {
            ConfChangeTransition::Auto => Transition::Auto,
            ConfChangeTransition::Implicit => Transition::Implicit,
            ConfChangeTransition::Explicit => Transition::Explicit,
        };
        Self {
            group: group.get(),
            steps,
            transition: transition.into(),
            context: change.get_context().to_vec(),
        }
    }

    /// Raft's membership change it carries.
    ///
    /// # Errors
    /// A step kind or transition this build does not know, node id 0, or no steps at all
    /// (raft reads an empty change as "leave the joint configuration", which a remote caller
    /// must not trigger by accident).
    pub fn to_conf_change(&self) -> Result<ConfChangeV2, String> {
        if self.steps.is_empty() {
            return Err("a membership change needs at least one step".into());
        }
        let mut change = ConfChangeV2::default();
        change.set_transition(match Transition::try_from(self.transition) {
            Ok(Transition::Auto) => ConfChangeTransition::Auto,
            Ok(Transition::Implicit) => ConfChangeTransition::Implicit,
            Ok(Transition::Explicit) => ConfChangeTransition::Explicit,
            Err(_) => {
                return Err(format!("unknown membership transition {}", self.transition));
            }
        });
        for step in &self.steps {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(match StepKind::try_from(step.kind) {
                Ok(StepKind::AddVoter) => ConfChangeType::AddNode,
                Ok(StepKind::Remove) => ConfChangeType::RemoveNode,
                Ok(StepKind::AddLearner) => ConfChangeType::AddLearnerNode,
                Err(_) => return Err(format!("unknown membership change kind {}", step.kind)),
            });
            if step.node == 0 {
                return Err("node id 0 is reserved by raft".into());
            }
            single.node_id = step.node;
            change.mut_changes().push(single);
        }
        change.set_context(self.context.clone().into());
        Ok(change)
    }
}

impl AdminRequest {
    /// A request with `body`.
    #[must_use]
    pub fn new(body: admin_request::Body) -> Self {
        Self { body: Some(body) }
    }

    /// The operation's name, as the audit log and refusals write it.
    #[must_use]
    pub fn operation(&self) -> &'static str {
        use admin_request::Body;
        use admin_request::vshard_step::Step;
        match &self.body {
            None => "unknown operation",
            Some(Body::Table(_)) => "read the routing table",
            Some(Body::GroupStatus(_)) => "read group status",
            Some(Body::NodeStatus(_)) => "read node status",
            Some(Body::ChangeRouting(_)) => "change routing",
            Some(Body::ChangeMembership(_)) => "change membership",
            Some(Body::TransferLeader(_)) => "transfer leadership",
            Some(Body::VShardStep(s)) => match s.step {
                Some(Step::Release(_)) => "release a vShard",
                Some(Step::Acquire(_)) => "acquire a vShard",
                Some(Step::Purge(_)) => "purge a vShard",
                None => "unknown vShard step",
            },
            Some(Body::ExportVShard(_)) => "export a vShard",
        }
    }

    /// Whether the operation only reads the cluster's shape (open to kv clients). Everything
    /// else changes the cluster or reads its data wholesale (an export), and needs the admin
    /// role.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        use admin_request::Body;
        matches!(
            self.body,
            Some(Body::Table(_) | Body::GroupStatus(_) | Body::NodeStatus(_))
        )
    }

    /// The operation's arguments in one line, for the audit log (never a vShard's data).
    #[must_use]
    pub fn arguments(&self) -> String {
        use admin_request::Body;
        use admin_request::vshard_step::Step;
        match &self.body {
            None | Some(Body::Table(_) | Body::NodeStatus(_)) => String::new(),
            Some(Body::GroupStatus(g)) => g
                .group
                .map_or_else(|| "every group".into(), |g| format!("group {g}")),
            Some(Body::ChangeRouting(c)) => match routing::RoutingChange::decode(&c.change) {
                Ok((change, expected)) => format!("{change:?} at version {expected}"),
                Err(e) => format!("undecodable change ({e})"),
            },
            Some(Body::ChangeMembership(m)) => {
                let steps: Vec<String> = m
                    .steps
                    .iter()
                    .map(|s| {
                        let kind = StepKind::try_from(s.kind)
                            .map_or_else(|_| format!("kind {}", s.kind), |k| format!("{k:?}"));
                        format!("{kind} {}", s.node)
                    })
                    .collect();
                format!("group {}: {}", m.group, steps.join(", "))
            }
            Some(Body::TransferLeader(t)) => format!("group {} to node {}", t.group, t.to),
            Some(Body::VShardStep(s)) => {
                let bytes = match &s.step {
                    Some(Step::Acquire(a)) => a
                        .data
                        .as_ref()
                        .map_or_else(String::new, |d| format!(" ({} bytes)", d.len())),
                    _ => String::new(),
                };
                format!("group {} vShard {}{bytes}", s.group, s.vshard)
            }
            Some(Body::ExportVShard(e)) => format!("group {} vShard {}", e.group, e.vshard),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::admin_request::{Body, ChangeMembership};
    use super::*;
    use crate::wire::{decode, encode};
    use proptest::prelude::*;

    #[test]
    fn membership_changes_round_trip_and_bad_ones_are_errors() {
        let mut change = ConfChangeV2::default();
        change.set_transition(ConfChangeTransition::Explicit);
        for (kind, node) in [
            (ConfChangeType::AddNode, 4),
            (ConfChangeType::RemoveNode, 1),
            (ConfChangeType::AddLearnerNode, 5),
        ] {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(kind);
            single.node_id = node;
            change.mut_changes().push(single);
        }
        let wire = ChangeMembership::new(GroupId(3), &change);
        assert_eq!(wire.to_conf_change().unwrap(), change);
        let step = |kind, node| ConfStep { kind, node };
        let with = |steps: Vec<ConfStep>, transition| ChangeMembership {
            group: 1,
            steps,
            transition,
            context: vec![],
        };
        assert!(with(vec![], 0).to_conf_change().is_err());
        assert!(with(vec![step(3, 4)], 0).to_conf_change().is_err());
        assert!(with(vec![step(0, 4)], 3).to_conf_change().is_err());
        assert!(with(vec![step(0, 0)], 0).to_conf_change().is_err());
    }

    #[test]
    fn group_status_round_trips_and_an_unknown_role_is_none() {
        let status = GroupStatus {
            group: GroupId(3),
            role: Role::Leader,
            term: 5,
            leader: Some(NodeId(2)),
            commit: 40,
            applied: 39,
            first_index: 10,
            last_index: 41,
            voters: vec![NodeId(1), NodeId(2), NodeId(4)],
            learners: vec![NodeId(5)],
            joint: true,
            quiet: false,
            set_aside: true,
        };
        assert_eq!(
            GroupStatusMsg::from(&status).to_status(),
            Some(status.clone())
        );
        for role in [0, 9] {
            let unknown = GroupStatusMsg {
                role,
                ..GroupStatusMsg::from(&status)
            };
            assert_eq!(unknown.to_status(), None);
        }
    }

    #[test]
    fn only_table_and_status_reads_are_read_only() {
        use admin_request::vshard_step::{Acquire, Step};
        let read = [
            Body::Table(Empty {}),
            Body::GroupStatus(admin_request::GroupStatus { group: None }),
            Body::NodeStatus(Empty {}),
        ];
        for body in read {
            assert!(AdminRequest::new(body).is_read_only());
        }
        let step = |step| {
            Body::VShardStep(admin_request::VShardStep {
                group: 1,
                vshard: 2,
                step: Some(step),
            })
        };
        let write = [
            Body::ChangeRouting(admin_request::ChangeRouting { change: vec![] }),
            Body::ChangeMembership(ChangeMembership::default()),
            Body::TransferLeader(admin_request::TransferLeader { group: 1, to: 2 }),
            step(Step::Release(Empty {})),
            step(Step::Acquire(Acquire { data: None })),
            step(Step::Purge(Empty {})),
            Body::ExportVShard(admin_request::ExportVShard {
                group: 1,
                vshard: 2,
            }),
        ];
        for body in write {
            let request = AdminRequest::new(body);
            assert!(!request.is_read_only(), "{}", request.operation());
        }
        assert!(!AdminRequest::default().is_read_only());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_admin_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(request) = decode::<AdminRequest>("admin request", &bytes) {
                let _ = request.operation();
                let _ = request.arguments();
                if let Some(Body::ChangeMembership(m)) = &request.body {
                    let _ = m.to_conf_change();
                }
            }
            if let Ok(reply) = decode::<AdminReply>("admin reply", &bytes)
                && let Some(admin_reply::Body::Statuses(s)) = &reply.body
            {
                for status in &s.statuses {
                    let _ = status.to_status();
                }
            }
        }

        #[test]
        fn transfer_and_export_requests_round_trip(group in any::<u64>(), to in any::<u64>(), vshard in any::<u32>()) {
            for body in [
                Body::TransferLeader(admin_request::TransferLeader { group, to }),
                Body::ExportVShard(admin_request::ExportVShard { group, vshard }),
            ] {
                let request = AdminRequest::new(body);
                let back: AdminRequest = decode("admin request", &encode(&request).unwrap()).unwrap();
                prop_assert_eq!(back, request);
            }
        }
    }
}
