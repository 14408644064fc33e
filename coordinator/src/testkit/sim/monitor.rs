//! The safety monitor: what the harness checks from the cores while it runs.

use std::collections::BTreeMap;
use std::fmt;

use raft::eraftpb::ConfState;
use routing::{GroupId, NodeId};
use transport::Envelope;

use crate::Apply;
use crate::node::pending::Completed;

/// A safety property the harness saw broken. See the [module docs](super).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two nodes led (or were followed as leader of) the same group in the same term.
    TwoLeaders {
        /// The group.
        group: GroupId,
        /// The term.
        term: u64,
        /// The leader seen first.
        first: NodeId,
        /// The other one.
        second: NodeId,
        /// The node that reported `second` (the leader itself, or a follower of it).
        seen_by: NodeId,
        /// Virtual time.
        at: u64,
    },
    /// An entry was applied with another term or other bytes than before.
    CommittedEntryChanged {
        /// The group.
        group: GroupId,
        /// Its log index.
        index: u64,
        /// Position of the command inside a batched entry.
        position: u32,
        /// The node that applied it first, with (term, hash of the bytes).
        first: (NodeId, u64, u64),
        /// The node that applied something else, with (term, hash).
        now: (NodeId, u64, u64),
        /// Virtual time.
        at: u64,
    },
    /// A committed membership change left a node with another configuration than before
    /// (another node, or the same node replaying its log after a restart).
    ConfigurationDiverged {
        /// The group.
        group: GroupId,
        /// Log index of the conf change.
        index: u64,
        /// The node that applied it first, and the configuration it reached.
        first: (NodeId, String),
        /// The node that reached another configuration, and that configuration.
        now: (NodeId, String),
        /// Virtual time.
        at: u64,
    },
    /// A node's leader said the node acknowledged entries its log no longer holds: its durable
    /// log was lost (see `CoordinatorStats::log_behind_leader`).
    LogLost {
        /// The node.
        node: NodeId,
        /// Virtual time.
        at: u64,
    },
    /// A node panicked; the harness crashed it.
    NodePanicked {
        /// The node.
        node: NodeId,
        /// The panic message.
        message: String,
        /// Virtual time.
        at: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TwoLeaders {
                group,
                term,
                first,
                second,
                seen_by,
                at,
            } => write!(
                f,
                "t={at}: {group} has two leaders in term {term}: {first} and {second} (seen by {seen_by})"
            ),
            Self::CommittedEntryChanged {
                group,
                index,
                position,
                first,
                now,
                at,
            } => write!(
                f,
                "t={at}: committed entry {group}/{index}#{position} changed: {} applied term {} \
                 hash {:016x}, {} applied term {} hash {:016x}",
                first.0, first.1, first.2, now.0, now.1, now.2
            ),
            Self::ConfigurationDiverged {
                group,
                index,
                first,
                now,
                at,
            } => write!(
                f,
                "t={at}: conf change {group}/{index} led to different configurations: {} reached \
                 {}, {} reached {}",
                first.0, first.1, now.0, now.1
            ),
            Self::LogLost { node, at } => {
                write!(f, "t={at}: {node} lost log entries it had acknowledged")
            }
            Self::NodePanicked { node, message, at } => {
                write!(f, "t={at}: {node} panicked: {message}")
            }
        }
    }
}

/// What the harness saw: the leader of each (group, term), and each applied entry.
#[derive(Default)]
pub(super) struct Monitor {
    leaders: BTreeMap<(GroupId, u64), NodeId>,
    applied: BTreeMap<(GroupId, u64, u32), (NodeId, u64, u64)>,
    configurations: BTreeMap<(GroupId, u64), (NodeId, String)>,
    pub(super) violations: Vec<Violation>,
}

impl Monitor {
    pub(super) fn leader(
        &mut self,
        group: GroupId,
        term: u64,
        leader: NodeId,
        seen_by: NodeId,
        at: u64,
    ) {
        let first = *self.leaders.entry((group, term)).or_insert(leader);
        if first != leader {
            self.violations.push(Violation::TwoLeaders {
                group,
                term,
                first,
                second: leader,
                seen_by,
                at,
            });
        }
    }

    pub(super) fn configuration(
        &mut self,
        group: GroupId,
        index: u64,
        now: (NodeId, String),
        at: u64,
    ) {
        let first = self
            .configurations
            .entry((group, index))
            .or_insert_with(|| now.clone())
            .clone();
        if first.1 != now.1 {
            self.violations.push(Violation::ConfigurationDiverged {
                group,
                index,
                first,
                now,
                at,
            });
        }
    }

    pub(super) fn applied(&mut self, key: (GroupId, u64, u32), now: (NodeId, u64, u64), at: u64) {
        let first = *self.applied.entry(key).or_insert(now);
        if (first.1, first.2) != (now.1, now.2) {
            self.violations.push(Violation::CommittedEntryChanged {
                group: key.0,
                index: key.1,
                position: key.2,
                first,
                now,
                at,
            });
        }
    }
}

pub(super) fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A configuration as text, ids sorted (raft-rs lists them in hash-set order).
pub(super) fn describe(cs: &ConfState) -> String {
    let sorted = |ids: &[u64]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids
    };
    let mut text = format!("voters {:?}", sorted(&cs.voters));
    if !cs.voters_outgoing.is_empty() {
        text.push_str(&format!(" outgoing {:?}", sorted(&cs.voters_outgoing)));
    }
    if !cs.learners.is_empty() || !cs.learners_next.is_empty() {
        text.push_str(&format!(
            " learners {:?}/{:?}",
            sorted(&cs.learners),
            sorted(&cs.learners_next)
        ));
    }
    if cs.auto_leave {
        text.push_str(" auto_leave");
    }
    text
}

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}

/// What one node's cycles of a step produced, for the monitor, the network and the clients.
#[derive(Default)]
pub(super) struct Seen {
    /// Applied commands: (group, index, position in a batched entry), term, hash of the bytes.
    pub(super) applied: Vec<((GroupId, u64, u32), u64, u64)>,
    pub(super) configurations: Vec<(GroupId, u64, String)>,
    pub(super) leaders: Vec<(GroupId, u64, NodeId)>,
    pub(super) messages: Vec<(NodeId, Envelope)>,
    pub(super) completed: Vec<Completed<()>>,
}

impl Seen {
    pub(super) fn observe(&mut self, applies: &[Apply]) {
        let mut position: Option<((GroupId, u64), u32)> = None;
        for apply in applies {
            match apply {
                Apply::Command {
                    group,
                    index,
                    term,
                    data,
                    ..
                } => {
                    let pos = match position {
                        Some((at, p)) if at == (*group, *index) => p + 1,
                        _ => 0,
                    };
                    position = Some(((*group, *index), pos));
                    self.applied
                        .push(((*group, *index, pos), *term, fnv(data.iter().copied())));
                }
                Apply::ConfChanged {
                    group,
                    index,
                    conf_state,
                    ..
                } => self
                    .configurations
                    .push((*group, *index, describe(conf_state))),
                Apply::Restore { .. } => {}
            }
        }
    }
}
