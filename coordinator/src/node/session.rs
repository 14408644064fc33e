//! Client sessions: exactly-once proposals across retries, leader changes, restarts and
//! nodes.
//!
//! A [`ClientSession`] numbers its commands. Each [`SessionCommand`] carries the session's id
//! and its sequence number into the log; the group that applies it remembers the response
//! (replicated: in every replica, in snapshots and in vShard moves) until the session says it
//! has the answer, so the same command proposed again, on any node, after any error, is
//! answered with the first response and never applied twice.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use super::Node;
use crate::error::RequestError;
use crate::lock;
use crate::replicated::SessionTag;

/// A client's session: see the module docs. Cheap to clone (shared); one per client
/// process or logical client is enough, used by any number of concurrent commands.
#[derive(Clone, Debug)]
pub struct ClientSession {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last sequence number handed out.
    last: u64,
    /// Commands handed out whose final answer the client does not have yet.
    open: BTreeSet<u64>,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSession {
    /// A session with a random id (64 bits: two clients never share one in practice).
    #[must_use]
    pub fn new() -> Self {
        Self::with_id(rand::random::<u64>() | 1)
    }

    /// A session with a chosen id: a client that restarts and keeps its id and numbering can
    /// retry the commands it had in flight.
    #[must_use]
    pub fn with_id(id: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                id,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The session's id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The id a server relaying remote clients' sessions ([`SessionCommand::relayed`]) should
    /// give session `session` of the client authenticated as `owner` (its certificate name,
    /// say): the same on every node, different for two owners naming the same session, and
    /// with a hash of `owner` in its top 16 bits, which name the session's owner in each
    /// group's table. One owner may hold at most half of a group's 100,000 sessions, so a
    /// client that opens sessions without end cannot fill the table every other client needs.
    #[must_use]
    pub fn relayed_id(owner: &[u8], session: u64) -> u64 {
        let owner_hash = fnv1a(owner.iter());
        let mixed = fnv1a(owner.iter().chain(&session.to_be_bytes()));
        let shift = u64::BITS - crate::apply::SESSION_OWNER_BITS;
        (owner_hash >> shift << shift) | (mixed & ((1 << shift) - 1))
    }

    /// A new command of this session. Propose it with [`crate::Node::propose_once`], as often
    /// and on as many nodes as it takes: it is applied once. Drop it once you have its final
    /// answer (the groups then forget its response).
    #[must_use]
    pub fn command(&self) -> SessionCommand {
        let mut state = lock::mutex(&self.inner.state);
        state.last += 1;
        let seq = state.last;
        state.open.insert(seq);
        SessionCommand {
            session: self.clone(),
            seq,
            relayed_acked: None,
        }
    }

    /// Every command up to this one has its final answer.
    fn acknowledged(&self) -> u64 {
        let state = lock::mutex(&self.inner.state);
        state
            .open
            .first()
            .map_or(state.last, |first| first.saturating_sub(1))
    }
}

/// FNV-1a, 64 bits: stable across nodes and builds (not a defence against a chosen owner).
fn fnv1a<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One command of a [`ClientSession`]: the same command however often it is proposed.
#[derive(Debug)]
pub struct SessionCommand {
    session: ClientSession,
    seq: u64,
    /// For a command relayed from a remote client: what that client has acknowledged.
    relayed_acked: Option<u64>,
}

impl SessionCommand {
    /// Its sequence number in the session (from 1).
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The session it belongs to.
    #[must_use]
    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// A remote client's command, as its request carried it (a server relaying it to
    /// [`crate::Node::propose_once`]): command `seq` of session `client`, which has every
    /// answer up to `acked`.
    #[must_use]
    pub fn relayed(client: u64, seq: u64, acked: u64) -> Self {
        Self {
            session: ClientSession::with_id(client),
            seq,
            relayed_acked: Some(acked),
        }
    }

    /// Every command of its session up to this sequence number has its final answer: the
    /// groups may forget their responses.
    #[must_use]
    pub fn acknowledged(&self) -> u64 {
        self.relayed_acked
            .unwrap_or_else(|| self.session.acknowledged())
            .min(self.seq.saturating_sub(1))
    }

    /// The tag the log carries for it, stamped with this node's clock (the group's
    /// replicated time, which expires idle sessions).
    pub(crate) fn tag(&self) -> SessionTag {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        SessionTag {
            client: self.session.id(),
            seq: self.seq,
            acked: self.acknowledged(),
            time_ms,
        }
    }
}

impl Drop for SessionCommand {
    fn drop(&mut self) {
        lock::mutex(&self.session.inner.state)
            .open
            .remove(&self.seq);
    }
}

impl Node {
    /// [`Node::propose`] for a command of a client session: however often it is proposed (on
    /// this node or any other, after any error), it is applied once, and every attempt that
    /// succeeds answers with the first response. So every error may be retried with the same
    /// `command`; this call itself retries the ones this node can (a dropped proposal, an
    /// outcome it lost track of, an outdated route, an overloaded group) until the request
    /// timeout.
    ///
    /// # Errors
    /// As [`Node::propose`], plus [`RequestError::AppliedEarlier`] (it took effect; its response
    /// is gone after a restart). `NotLeader`, `ShuttingDown` and `Timeout`: retry the same
    /// `command` on the leader or another node.
    pub async fn propose_once(
        &self,
        command: &SessionCommand,
        key: &[u8],
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, RequestError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut backoff = Duration::from_millis(5);
        loop {
            let result = self
                .routed(key, |group, vshard| {
                    // On a follower the command goes to the leader with its session tag, so a
                    // retry (here, or by the caller on any node) still applies once.
                    self.propose_user(group, Some(vshard), &bytes, Some(command.tag()))
                })
                .await;
            match result {
                Err(
                    RequestError::ProposalDropped { .. }
                    | RequestError::OutcomeUnknown { .. }
                    | RequestError::Busy { .. },
                ) if tokio::time::Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_ids_are_stable_distinct_per_owner_and_carry_the_owner_in_their_top_bits() {
        let shift = u64::BITS - crate::apply::SESSION_OWNER_BITS;
        let alice = ClientSession::relayed_id(b"alice", 42);
        assert_eq!(alice, ClientSession::relayed_id(b"alice", 42));
        assert_ne!(alice, ClientSession::relayed_id(b"bob", 42));
        assert_ne!(alice, ClientSession::relayed_id(b"alice", 43));
        let owners = |name: &[u8]| {
            (0..100)
                .map(|s| ClientSession::relayed_id(name, s) >> shift)
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(
            owners(b"alice").len(),
            1,
            "one owner for all of alice's sessions"
        );
        assert_ne!(owners(b"alice"), owners(b"bob"));
    }

    #[test]
    fn a_session_acknowledges_only_what_every_earlier_command_has_answered() {
        let session = ClientSession::with_id(5);
        let one = session.command();
        let two = session.command();
        assert_eq!((one.seq(), two.seq()), (1, 2));
        assert_eq!(two.tag().acked, 0);
        drop(two);
        // 2 is answered but 1 is not: nothing past 0 may be forgotten.
        assert_eq!(session.acknowledged(), 0);
        drop(one);
        assert_eq!(session.acknowledged(), 2);
        let three = session.command();
        assert_eq!(three.tag().acked, 2);
        assert_eq!(three.tag().client, 5);
    }
}
