//! A [`RequestError`] on the forward stream and back: the leader's typed error reaches the
//! caller on the follower as the same variant, so its outcome class is the leader's. A code
//! this build does not know (a newer node's) keeps its class through the `not_applied` flag.

use routing::{GroupId, NodeId, VShardId};
use transport::ForwardError;

use crate::error::{BusyReason, Outcome, RequestError};

const NOT_LEADER: u32 = 1;
const GROUP_NOT_FOUND: u32 = 2;
const PROPOSAL_DROPPED: u32 = 3;
const TIMEOUT: u32 = 4;
const OUTCOME_UNKNOWN: u32 = 5;
const STALE_ROUTING: u32 = 6;
const REFUSED: u32 = 7;
const APPLIED_EARLIER: u32 = 8;
const BUSY: u32 = 9;
const SHUTTING_DOWN: u32 = 10;
const STOPPED_IN_FLIGHT: u32 = 11;
const TRANSFER_FAILED: u32 = 12;
const QUORUM_UNREACHABLE: u32 = 13;
const REPLICA_FAILED: u32 = 14;

const BUSY_APPLY_BACKLOG: &str = "apply_backlog";
const BUSY_UNCOMMITTED_BYTES: &str = "uncommitted_bytes";
const BUSY_FORWARDED: &str = "forwarded_requests";

/// What a caller waiting on a request forwarded to a leader learns when that leader goes
/// down first: the outcome is unknown (it may have committed the command before it went).
pub(super) fn leader_went_down() -> ForwardError {
    ForwardError {
        code: OUTCOME_UNKNOWN,
        not_applied: false,
        ..ForwardError::default()
    }
}

/// The wire form of `error` (its group is the request's, known to both sides).
pub(super) fn to_wire(error: &RequestError) -> ForwardError {
    let mut wire = ForwardError {
        not_applied: error.outcome() == Outcome::NotApplied,
        ..ForwardError::default()
    };
    wire.code = match error {
        RequestError::NotLeader { leader, .. } => {
            wire.node = leader.map_or(0, NodeId::get);
            NOT_LEADER
        }
        RequestError::GroupNotFound { .. } => GROUP_NOT_FOUND,
        RequestError::ProposalDropped { .. } => PROPOSAL_DROPPED,
        RequestError::Timeout { .. } => TIMEOUT,
        RequestError::OutcomeUnknown { .. } => OUTCOME_UNKNOWN,
        RequestError::StaleRouting {
            vshard,
            table_version,
            ..
        } => {
            wire.vshard = vshard.get();
            wire.table_version = *table_version;
            STALE_ROUTING
        }
        RequestError::Refused { reason, .. } => {
            wire.reason.clone_from(reason);
            REFUSED
        }
        RequestError::AppliedEarlier { .. } => APPLIED_EARLIER,
        RequestError::Busy { reason, .. } => {
            wire.reason = match reason {
                BusyReason::ApplyBacklog => BUSY_APPLY_BACKLOG,
                BusyReason::UncommittedBytes => BUSY_UNCOMMITTED_BYTES,
                BusyReason::ForwardedRequests => BUSY_FORWARDED,
            }
            .into();
            BUSY
        }
        RequestError::ShuttingDown => SHUTTING_DOWN,
        RequestError::StoppedInFlight { .. } => STOPPED_IN_FLIGHT,
        RequestError::TransferFailed { to, .. } => {
            wire.node = to.get();
            TRANSFER_FAILED
        }
        RequestError::QuorumUnreachable { .. } => QUORUM_UNREACHABLE,
        RequestError::ReplicaFailed { .. } => REPLICA_FAILED,
    };
    wire
}

/// The typed error a leader answered a request to `group` with.
pub(super) fn from_wire(group: GroupId, wire: ForwardError) -> RequestError {
    let node = (wire.node != 0).then_some(NodeId(wire.node));
    match wire.code {
        NOT_LEADER => RequestError::NotLeader {
            group,
            leader: node,
        },
        GROUP_NOT_FOUND => RequestError::GroupNotFound { group },
        PROPOSAL_DROPPED => RequestError::ProposalDropped { group },
        TIMEOUT => RequestError::Timeout { group },
        OUTCOME_UNKNOWN => RequestError::OutcomeUnknown { group },
        STALE_ROUTING => RequestError::StaleRouting {
            vshard: VShardId(wire.vshard),
            group,
            table_version: wire.table_version,
        },
        REFUSED => RequestError::Refused {
            group,
            reason: wire.reason,
        },
        APPLIED_EARLIER => RequestError::AppliedEarlier { group },
        BUSY => RequestError::Busy {
            group,
            reason: match wire.reason.as_str() {
                BUSY_UNCOMMITTED_BYTES => BusyReason::UncommittedBytes,
                BUSY_FORWARDED => BusyReason::ForwardedRequests,
                _ => BusyReason::ApplyBacklog,
            },
        },
        SHUTTING_DOWN => RequestError::ShuttingDown,
        STOPPED_IN_FLIGHT => RequestError::StoppedInFlight { group },
        TRANSFER_FAILED => match node {
            Some(to) => RequestError::TransferFailed { group, to },
            None => unknown(group, wire.not_applied, wire.code),
        },
        QUORUM_UNREACHABLE => RequestError::QuorumUnreachable { group },
        REPLICA_FAILED => RequestError::ReplicaFailed { group },
        code => unknown(group, wire.not_applied, code),
    }
}

/// An error this build cannot name, in the class the leader gave it.
fn unknown(group: GroupId, not_applied: bool, code: u32) -> RequestError {
    if not_applied {
        RequestError::Refused {
            group,
            reason: format!("the leader refused the request (error code {code})"),
        }
    } else {
        RequestError::OutcomeUnknown { group }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_crosses_the_forward_stream_as_itself_with_its_outcome_class() {
        let g = GroupId(4);
        let errors = [
            RequestError::NotLeader {
                group: g,
                leader: Some(NodeId(2)),
            },
            RequestError::NotLeader {
                group: g,
                leader: None,
            },
            RequestError::GroupNotFound { group: g },
            RequestError::ProposalDropped { group: g },
            RequestError::Timeout { group: g },
            RequestError::OutcomeUnknown { group: g },
            RequestError::StaleRouting {
                vshard: VShardId(9),
                group: g,
                table_version: 12,
            },
            RequestError::Refused {
                group: g,
                reason: "no".into(),
            },
            RequestError::AppliedEarlier { group: g },
            RequestError::Busy {
                group: g,
                reason: BusyReason::ApplyBacklog,
            },
            RequestError::Busy {
                group: g,
                reason: BusyReason::UncommittedBytes,
            },
            RequestError::Busy {
                group: g,
                reason: BusyReason::ForwardedRequests,
            },
            RequestError::ShuttingDown,
            RequestError::StoppedInFlight { group: g },
            RequestError::TransferFailed {
                group: g,
                to: NodeId(3),
            },
            RequestError::QuorumUnreachable { group: g },
            RequestError::ReplicaFailed { group: g },
        ];
        for error in errors {
            let back = from_wire(g, to_wire(&error));
            assert_eq!(back, error);
            assert_eq!(back.outcome(), error.outcome());
        }
    }

    #[test]
    fn an_error_code_this_build_does_not_know_keeps_its_outcome_class() {
        let g = GroupId(1);
        let newer = |not_applied| ForwardError {
            code: 99,
            not_applied,
            ..ForwardError::default()
        };
        assert_eq!(from_wire(g, newer(true)).outcome(), Outcome::NotApplied);
        assert_eq!(from_wire(g, newer(false)).outcome(), Outcome::Unknown);
    }
}
