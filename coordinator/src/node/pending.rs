//! The requests a driver has handed to its core and not yet answered, and how a cycle's
//! output answers them.
//!
//! One map of token → request, one path that completes or fails a request. The tokio
//! [`Driver`](super::driver) and the simulation's driver both use it, and both answer it
//! through [`crate::apply::Applying`], so a new kind of request is added in one place and
//! both drivers answer it the same way.

use std::collections::HashMap;

use raft::eraftpb::{ConfChangeV2, ConfState};
use routing::{GroupId, VShardId};

use crate::error::RequestError;
use crate::multiraft::{MultiRaft, Token};

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

impl Request {
    /// Whether it asks raft to commit something (a command or a membership change).
    pub(crate) fn proposes(&self) -> bool {
        matches!(self, Request::Propose(_) | Request::ConfChange(_))
    }
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

    /// What `token` waits for, if it waits.
    pub(crate) fn kind(&self, token: Token) -> Option<Kind> {
        self.requests.get(&token).map(|e| e.kind)
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

    /// Fails every request with the error `error` makes for its token, group and kind (the
    /// driver stops).
    pub(crate) fn fail_all(
        &mut self,
        error: impl Fn(Token, GroupId, Kind) -> RequestError,
    ) -> Vec<Completed<W>> {
        let tokens: Vec<Token> = self.requests.keys().copied().collect();
        tokens
            .into_iter()
            .filter_map(|t| self.complete(t, |group, kind| Err(error(t, group, kind))))
            .collect()
    }
}
