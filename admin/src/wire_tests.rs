//! Tests of the client envelope: every error crosses the wire unchanged (kind and class), a
//! failure of an unknown kind keeps its class, and oversized requests are refused.
#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn every_error() -> Vec<RemoteError> {
    let group = GroupId(7);
    let mut all: Vec<RemoteError> = [
        RequestError::NotLeader {
            group,
            leader: Some(NodeId(3)),
        },
        RequestError::NotLeader {
            group,
            leader: None,
        },
        RequestError::GroupNotFound { group },
        RequestError::ProposalDropped { group },
        RequestError::Timeout { group },
        RequestError::OutcomeUnknown { group },
        RequestError::StaleRouting {
            vshard: VShardId(12),
            group,
            table_version: 9,
        },
        RequestError::Refused {
            group,
            reason: "version 4 expected, table is at 5".into(),
        },
        RequestError::Busy {
            group,
            reason: BusyReason::ApplyBacklog,
        },
        RequestError::Busy {
            group,
            reason: BusyReason::UncommittedBytes,
        },
        RequestError::AppliedEarlier { group },
        RequestError::ShuttingDown,
        RequestError::StoppedInFlight { group },
        RequestError::TransferFailed {
            group,
            to: NodeId(2),
        },
        RequestError::QuorumUnreachable { group },
        RequestError::ReplicaFailed { group },
    ]
    .into_iter()
    .map(RemoteError::Propose)
    .collect();
    all.push(RemoteError::Forbidden {
        caller: "client reader (role kv)".into(),
        operation: "transfer leader".into(),
        reason: "needs the admin role".into(),
    });
    all.push(RemoteError::BadRequest {
        reason: "no body".into(),
    });
    all.push(RemoteError::Unrecognised {
        outcome: Outcome::Unknown,
    });
    all.push(RemoteError::Unrecognised {
        outcome: Outcome::NotApplied,
    });
    all
}

#[test]
fn every_error_crosses_the_wire_unchanged() {
    for error in every_error() {
        let reply = ClientReply::failure(Failure::from_error(&error));
        let back: ClientReply = decode("reply", &encode(&reply).unwrap()).unwrap();
        assert_eq!(back.failed().unwrap().to_error(), error);
    }
    assert!(ClientReply::app(vec![1]).failed().is_none());
}

#[test]
fn only_timeouts_lost_proposals_and_stops_with_the_proposal_in_raft_may_have_taken_effect() {
    for error in every_error() {
        let unknown = matches!(
            error,
            RemoteError::Propose(
                RequestError::Timeout { .. }
                    | RequestError::OutcomeUnknown { .. }
                    | RequestError::StoppedInFlight { .. }
                    // It did: a session's command applied before a restart.
                    | RequestError::AppliedEarlier { .. }
            ) | RemoteError::Unrecognised {
                outcome: Outcome::Unknown
            }
        );
        assert_eq!(error.may_have_taken_effect(), unknown, "{error}");
    }
}

#[test]
fn the_class_crosses_the_wire_beside_the_kind() {
    for error in every_error() {
        let failure = Failure::from_error(&error);
        let class = if error.may_have_taken_effect() {
            failure::Class::Unknown
        } else {
            failure::Class::NotApplied
        };
        assert_eq!(failure.class(), class, "{error}");
    }
}

#[test]
fn a_failure_of_a_kind_this_build_does_not_know_keeps_its_class() {
    // A newer node's kind decodes as no kind at all; the class still says what happened.
    let mut newer = Failure::default();
    newer.set_class(failure::Class::Unknown);
    let back: Failure = decode("failure", &encode(&newer).unwrap()).unwrap();
    assert!(back.to_error().may_have_taken_effect());
    let empty = Failure::default();
    assert!(matches!(empty.to_error(), RemoteError::BadRequest { .. }));
}

#[test]
fn oversized_requests_are_refused_by_the_encoder() {
    let request = ClientRequest::app(vec![0; MAX_MESSAGE_BYTES + 1]);
    assert!(encode(&request).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<ClientRequest>("request", &bytes);
        if let Ok(reply) = decode::<ClientReply>("reply", &bytes)
            && let Some(failure) = reply.failed()
        {
            let _ = failure.to_error();
        }
    }

    #[test]
    fn app_requests_round_trip(body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let request = ClientRequest::app(body);
        let back: ClientRequest = decode("request", &encode(&request).unwrap()).unwrap();
        prop_assert_eq!(back, request);
    }
}
