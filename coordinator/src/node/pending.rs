//! The requests a driver has handed to its core and not yet answered, and how a cycle's
//! output answers them.
//!
//! One map of token → request, one path that completes or fails a request, one mapping from
//! what the core and the state machine produced to what the caller receives. The tokio
//! [`Driver`](super::driver) and the simulation's driver both use it, so a new kind of
//! request is added in one place and both drivers answer it the same way.

use std::collections::HashMap;

use raft::eraftpb::{ConfChangeV2, ConfState};
use routing::{GroupId, VShardId};

use crate::error::{CoordinatorError, RequestError};
use crate::multiraft::{Apply, Event, MultiRaft, Token};
use crate::replicated::{Replicated, Reply};
use crate::state_machine::StateMachine;

/// A request to hand to the core.
#[derive(Debug)]
pub(crate) enum Request {
    /// Replicate a framed command.
    Propose(Vec<u8>),
    /// A linearizable read barrier; for a read of a key, the replica must still serve its
    /// vShard when the barrier is reached.
    Read { vshard: Option<VShardId> },
    /// A read barrier, then the vShard's data from the local replica.
    Export(VShardId),
    /// A membership change.
    ConfChange(ConfChangeV2),
}

/// What a request waits for (the part of [`Request`] the answer depends on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Propose,
    Read { vshard: Option<VShardId> },
    Export(VShardId),
    ConfChange,
}

/// A request's successful outcome.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Done {
    /// A command's response (the state machine's bytes), or an exported vShard's data.
    Response(Vec<u8>),
    /// A read barrier reached this applied index.
    Read(u64),
    /// A membership change is in force.
    Configured(ConfState),
}

/// A request answered by a cycle, with the waiter its driver registered.
pub(crate) struct Completed<W> {
    pub(crate) token: Token,
    pub(crate) group: GroupId,
    pub(crate) kind: Kind,
    pub(crate) waiter: W,
    pub(crate) result: Result<Done, RequestError>,
}

struct Entry<W> {
    group: GroupId,
    kind: Kind,
    waiter: W,
}

/// The requests in flight, keyed by the token the core carries for them. `W` is whatever the
/// driver answers through (a oneshot sender, a simulated client).
pub(crate) struct Pending<W> {
    requests: HashMap<Token, Entry<W>>,
}

impl<W> Default for Pending<W> {
    fn default() -> Self {
        Self {
            requests: HashMap::new(),
        }
    }
}

impl<W> Pending<W> {
    /// Hands `request` to `core` under `token`; on refusal gives the waiter back with why.
    pub(crate) fn submit(
        &mut self,
        core: &mut MultiRaft,
        token: Token,
        group: GroupId,
        request: Request,
        waiter: W,
    ) -> Result<(), (W, RequestError)> {
        let (kind, submitted) = match request {
            Request::Propose(data) => (Kind::Propose, core.propose(group, data, token)),
            Request::Read { vshard } => (Kind::Read { vshard }, core.read_index(group, token)),
            Request::Export(vshard) => (Kind::Export(vshard), core.read_index(group, token)),
            Request::ConfChange(change) => (
                Kind::ConfChange,
                core.propose_conf_change(group, &change, token),
            ),
        };
        match submitted {
            Ok(()) => {
                self.requests.insert(
                    token,
                    Entry {
                        group,
                        kind,
                        waiter,
                    },
                );
                Ok(())
            }
            Err(error) => Err((waiter, error)),
        }
    }

    /// How many requests wait (a queue depth the driver publishes).
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether `token` waits.
    #[cfg(feature = "test-util")]
    pub(crate) fn contains(&self, token: Token) -> bool {
        self.requests.contains_key(&token)
    }

    /// Answers `token` with `result`, if it waits.
    pub(crate) fn complete(
        &mut self,
        token: Token,
        result: impl FnOnce(GroupId, Kind) -> Result<Done, RequestError>,
    ) -> Option<Completed<W>> {
        let entry = self.requests.remove(&token)?;
        Some(Completed {
            token,
            group: entry.group,
            kind: entry.kind,
            result: result(entry.group, entry.kind),
            waiter: entry.waiter,
        })
    }

    /// Fails `token` with the error `error` makes for its group, if it waits.
    pub(crate) fn fail(
        &mut self,
        token: Token,
        error: impl FnOnce(GroupId) -> RequestError,
    ) -> Option<Completed<W>> {
        self.complete(token, |group, _| Err(error(group)))
    }

    /// Forgets `token` without answering it.
    #[cfg(feature = "test-util")]
    pub(crate) fn forget(&mut self, token: Token) -> Option<W> {
        self.requests.remove(&token).map(|e| e.waiter)
    }

    /// Fails every request with `error` (the driver stops).
    pub(crate) fn fail_all(&mut self, error: &RequestError) -> Vec<Completed<W>> {
        let tokens: Vec<Token> = self.requests.keys().copied().collect();
        tokens
            .into_iter()
            .filter_map(|t| self.fail(t, |_| error.clone()))
            .collect()
    }

    /// Applies a cycle's committed work to `state_machine` in log order and answers the
    /// proposals and membership changes it completes.
    ///
    /// # Errors
    /// The state machine failed: the node must stop.
    pub(crate) fn apply<S: StateMachine>(
        &mut self,
        state_machine: &mut Replicated<S>,
        applies: Vec<Apply>,
        completed: &mut Vec<Completed<W>>,
    ) -> Result<(), CoordinatorError> {
        for apply in applies {
            match apply {
                Apply::Restore { group, data, .. } => state_machine
                    .restore(group, &data)
                    .map_err(|source| CoordinatorError::StateMachine { group, source })?,
                Apply::Command {
                    group,
                    index,
                    data,
                    proposal,
                    ..
                } => {
                    let reply = state_machine
                        .apply(group, index, &data)
                        .map_err(|source| CoordinatorError::StateMachine { group, source })?;
                    let table_version = state_machine.table().version();
                    completed.extend(proposal.and_then(|token| {
                        self.complete(token, |group, _| match reply {
                            Reply::Applied(bytes) => Ok(Done::Response(bytes)),
                            Reply::StaleRouting(vshard) => Err(RequestError::StaleRouting {
                                vshard,
                                group,
                                table_version,
                            }),
                            Reply::Refused(reason) => Err(RequestError::Refused { group, reason }),
                        })
                    }));
                }
                Apply::ConfChanged {
                    conf_state,
                    proposal,
                    ..
                } => completed.extend(
                    proposal
                        .and_then(|t| self.complete(t, |_, _| Ok(Done::Configured(conf_state)))),
                ),
            }
        }
        Ok(())
    }

    /// Answers the request `event` completes, if any: read barriers reached (checked against
    /// the vShard fences, exported when asked), proposals dropped or lost track of.
    pub(crate) fn on_event<S: StateMachine>(
        &mut self,
        state_machine: &mut Replicated<S>,
        event: &Event,
    ) -> Option<Completed<W>> {
        match *event {
            Event::ReadReady { token, index, .. } => self.complete(token, |group, kind| {
                read_outcome(state_machine, group, kind, index)
            }),
            Event::ProposalDropped { token, .. } => {
                self.fail(token, |group| RequestError::ProposalDropped { group })
            }
            Event::ProposalOutcomeUnknown { token, .. } => {
                self.fail(token, |group| RequestError::OutcomeUnknown { group })
            }
            Event::LeaderChanged { .. } => None,
        }
    }
}

/// What a read barrier that reached `index` answers, by the kind of request it serves.
fn read_outcome<S: StateMachine>(
    state_machine: &mut Replicated<S>,
    group: GroupId,
    kind: Kind,
    index: u64,
) -> Result<Done, RequestError> {
    match kind {
        Kind::Read {
            vshard: Some(vshard),
        } if state_machine.is_fenced(group, vshard) => Err(RequestError::StaleRouting {
            vshard,
            group,
            table_version: state_machine.table().version(),
        }),
        Kind::Export(vshard) => state_machine
            .export_vshard(group, vshard)
            .map(Done::Response)
            .map_err(|e| RequestError::Refused {
                group,
                reason: e.to_string(),
            }),
        _ => Ok(Done::Read(index)),
    }
}
