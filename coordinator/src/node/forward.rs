//! Any node accepts a proposal: one made on a follower is forwarded to the group's leader over
//! the peer connection (the transport's forward stream) and its answer relayed to the caller.
//! A caller that goes straight to the leader pays nothing: the local attempt succeeds first.
//!
//! The rules, each for a reason:
//! - **One hop.** The leader hands a forwarded command to its driver like a local caller's
//!   (drain, apply backlog, quorum and leadership checks alike). A node that no longer leads
//!   answers `NotLeader` and never forwards it again; the node that forwarded it tries anew
//!   with the leader it knows then, so a request cannot circle between nodes.
//! - **Bounded.** At most [`NodeConfig::max_forwarded_per_peer`](super::NodeConfig) requests
//!   per peer in flight, on each side: past it, `Busy` (did not take effect). A command larger
//!   than a transport frame is refused before anything is sent.
//! - **Authorised.** The leader serves a forwarded command for a group only from a member
//!   (voter or learner) of the group's current configuration; the transport has already
//!   checked that the peer is the node its certificate names.
//! - **Honest outcomes.** Nothing sent: did not take effect. Sent, and no answer before the
//!   deadline: `Timeout` (outcome unknown); sent, and the leader went down before answering
//!   (node-level liveness says so, well before the deadline): `OutcomeUnknown`. The leader's
//!   own error comes back as the same typed error (see `forward_error`), its outcome class
//!   intact.
//! - **Reads are not forwarded.** A follower's read barrier already asks the leader through
//!   raft's ReadIndex messages and reads its own replica; what forwarding adds to reads is the
//!   wait for a leader when none is known.
//! - When no leader is known (an election, a quorum down), proposals and reads try again with
//!   backoff and jitter until the request's deadline, then fail as `NotLeader` with no leader
//!   (did not take effect).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use metrics::{Counter, counter};
use routing::{GroupId, NodeId, VShardId};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument as _;
use transport::{Envelope, Forward, ForwardError, SendError, Transport};

use super::Node;
use super::driver::Waiter;
use super::forward_error::{from_wire, leader_went_down, to_wire};
use super::pending::Request;
use crate::error::{BusyReason, RequestError};
use crate::lock;
use crate::metrics::FORWARDED;
use crate::multiraft::MultiRaft;
use crate::replicated::{Frame, SessionTag};

/// Where a forwarding caller waits for the leader's reply.
type ReplyTx = oneshot::Sender<Result<Bytes, ForwardError>>;

/// The forwarding state a node's handle and its driver share.
pub(super) struct Forwarding {
    node: NodeId,
    enabled: bool,
    max_per_peer: usize,
    next_id: AtomicU64,
    /// Requests this node forwarded and waits on.
    waiting: Mutex<Waiting>,
    /// Requests peers forwarded here that are not yet answered, by peer.
    served: Arc<Mutex<HashMap<NodeId, usize>>>,
    /// The peers node-level liveness holds down now: redirects avoid naming them.
    down: Mutex<HashSet<NodeId>>,
    sent: Counter,
    served_total: Counter,
    refused: Counter,
}

/// The requests a node forwarded: who waits on each, and how many went to each leader (the
/// cap is checked without walking every request).
#[derive(Default)]
struct Waiting {
    by_id: HashMap<u64, (NodeId, ReplyTx)>,
    per_leader: HashMap<NodeId, usize>,
}

impl Waiting {
    fn remove(&mut self, id: u64) -> Option<ReplyTx> {
        let (leader, reply) = self.by_id.remove(&id)?;
        if let Some(n) = self.per_leader.get_mut(&leader) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_leader.remove(&leader);
            }
        }
        Some(reply)
    }
}

impl Forwarding {
    pub(super) fn new(node: NodeId, enabled: bool, max_per_peer: usize) -> Self {
        let label = node.get().to_string();
        let counter = |direction: &'static str| counter!(FORWARDED, "node" => label.clone(), "direction" => direction);
        Self {
            sent: counter("sent"),
            served_total: counter("served"),
            refused: counter("refused"),
            ..Self::off(node)
        }
        .configured(enabled, max_per_peer)
    }

    /// Forwarding off, counting nothing: what a driver holds until its node shares its own.
    pub(super) fn off(node: NodeId) -> Self {
        Self {
            node,
            enabled: false,
            max_per_peer: 1,
            next_id: AtomicU64::new(1),
            waiting: Mutex::default(),
            served: Arc::default(),
            down: Mutex::default(),
            sent: Counter::noop(),
            served_total: Counter::noop(),
            refused: Counter::noop(),
        }
    }

    fn configured(mut self, enabled: bool, max_per_peer: usize) -> Self {
        self.enabled = enabled;
        self.max_per_peer = max_per_peer.max(1);
        self
    }

    /// Whether requests on a follower go to the leader (`NodeConfig::forward_to_leader`).
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Registers a request about to go to `leader`; `None` when `max_per_peer` already wait
    /// on it.
    fn register(&self, leader: NodeId, reply: ReplyTx) -> Option<u64> {
        let mut waiting = lock::mutex(&self.waiting);
        let to_leader = waiting.per_leader.entry(leader).or_insert(0);
        if *to_leader >= self.max_per_peer {
            return None;
        }
        *to_leader += 1;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        waiting.by_id.insert(id, (leader, reply));
        Some(id)
    }

    fn forget(&self, id: u64) {
        lock::mutex(&self.waiting).remove(id);
    }

    /// A reply arrived from `from`: it answers the request `id` only if that went to `from`.
    fn complete(&self, from: NodeId, id: u64, result: Result<Bytes, ForwardError>) {
        let mut waiting = lock::mutex(&self.waiting);
        match waiting.by_id.get(&id) {
            Some((leader, _)) if *leader == from => {
                if let Some(reply) = waiting.remove(id) {
                    // A caller that gave up (its deadline passed) is not waiting any more.
                    let _ = reply.send(result);
                }
            }
            Some((leader, _)) => {
                tracing::warn!(peer = %from, %leader, id, "a forward reply from a node the request did not go to; dropped");
            }
            None => tracing::debug!(peer = %from, id, "a forward reply nobody waits for (late)"),
        }
    }

    /// `peer` went down (node-level liveness): callers waiting on requests forwarded to it
    /// learn now, as outcome unknown (it may have committed them before it went), instead of
    /// at their deadline. Returns how many.
    pub(super) fn peer_down(&self, peer: NodeId) -> usize {
        lock::mutex(&self.down).insert(peer);
        let mut waiting = lock::mutex(&self.waiting);
        let lost: Vec<u64> = waiting
            .by_id
            .iter()
            .filter(|(_, (leader, _))| *leader == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in &lost {
            if let Some(reply) = waiting.remove(*id) {
                let _ = reply.send(Err(leader_went_down()));
            }
        }
        lost.len()
    }

    /// `peer` is heard again after node-level liveness held it down.
    pub(super) fn peer_up(&self, peer: NodeId) {
        lock::mutex(&self.down).remove(&peer);
    }

    /// The node stops: every caller still waiting learns it now instead of at its deadline.
    pub(super) fn close(&self) {
        *lock::mutex(&self.waiting) = Waiting::default();
    }

    /// What the driver does with a forward envelope from `from`: a reply is handed to its
    /// caller; a request comes back as a local caller's request when it passes the checks
    /// (it is answered with a refusal here otherwise). Its answer goes back to `from` on the
    /// forward stream.
    pub(super) fn on_envelope(
        &self,
        from: NodeId,
        forward: Forward,
        core: &MultiRaft,
        transport: &Arc<dyn Transport>,
    ) -> Option<(GroupId, Request, Waiter)> {
        let (id, group, vshard, command, session) = match forward {
            Forward::Reply { id, result } => {
                self.complete(from, id, result);
                return None;
            }
            Forward::Propose {
                id,
                group,
                vshard,
                command,
                session,
            } => (id, group, vshard, command, session),
        };
        let answer = move |result: Result<Vec<u8>, RequestError>| Forward::Reply {
            id,
            result: result.map(Bytes::from).map_err(|e| to_wire(&e)),
        };
        let refuse = |error: RequestError| {
            self.refused.increment(1);
            tracing::debug!(peer = %from, %group, id, %error, "forwarded request refused");
            if let Err(e) = transport.send(from, Envelope::Forward(answer(Err(error)))) {
                tracing::debug!(peer = %from, error = %e, "cannot send a forward refusal");
            }
            None
        };
        // Only a member of the group's current configuration may propose in it through us.
        let Some(status) = core.status(group) else {
            return refuse(RequestError::GroupNotFound { group });
        };
        if !status.voters.contains(&from) && !status.learners.contains(&from) {
            return refuse(RequestError::Refused {
                group,
                reason: format!(
                    "{from} is not a member of {group}; forwarded requests are taken only from members"
                ),
            });
        }
        let Some(slot) = ServedSlot::take(&self.served, from, self.max_per_peer) else {
            return refuse(RequestError::Busy {
                group,
                reason: BusyReason::ForwardedRequests,
            });
        };
        self.served_total.increment(1);
        let (tx, rx) = oneshot::channel();
        let transport = transport.clone();
        let span = tracing::debug_span!("forwarded", peer = %from, %group, id);
        tokio::spawn(
            async move {
                // A waiter the driver dropped unanswered belongs to a stopped driver, after the
                // command reached it: its outcome is unknown.
                let result = rx
                    .await
                    .unwrap_or(Err(RequestError::StoppedInFlight { group }));
                // Answered: no longer in flight here. Released before the reply leaves, or the
                // peer's next request, sent on reading it, could find the slot still taken.
                drop(slot);
                if let Err(e) = transport.send(from, Envelope::Forward(answer(result))) {
                    tracing::debug!(error = %e, "cannot send a forward reply; the peer times out");
                }
            }
            .instrument(span),
        );
        let frame = Frame::encode_user_from(vshard, &command, session.map(tag_from_wire));
        Some((group, Request::Propose(frame), Waiter::Response(tx)))
    }
}

/// One request a peer forwarded here, counted against its cap until dropped (answered).
struct ServedSlot {
    from: NodeId,
    served: Arc<Mutex<HashMap<NodeId, usize>>>,
}

impl ServedSlot {
    fn take(served: &Arc<Mutex<HashMap<NodeId, usize>>>, from: NodeId, max: usize) -> Option<Self> {
        let mut map = lock::mutex(served);
        let n = map.entry(from).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            from,
            served: served.clone(),
        })
    }
}

impl Drop for ServedSlot {
    fn drop(&mut self) {
        let mut map = lock::mutex(&self.served);
        if let Some(n) = map.get_mut(&self.from) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.from);
            }
        }
    }
}

fn tag_from_wire(s: transport::ForwardSession) -> SessionTag {
    SessionTag {
        client: s.client,
        seq: s.seq,
        acked: s.acked,
        time_ms: s.time_ms,
    }
}

fn tag_to_wire(t: SessionTag) -> transport::ForwardSession {
    transport::ForwardSession {
        client: t.client,
        seq: t.seq,
        acked: t.acked,
        time_ms: t.time_ms,
    }
}

/// Waits between attempts while no leader is known: doubling from 10 ms to 200 ms, each wait
/// drawn at random from its upper half, so the followers of a group that lost its leader do
/// not all ask again at the same instant.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(200);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// Sleeps for the next wait; `false` (at once) when it would end past `deadline`.
    async fn wait(&mut self, deadline: Instant) -> bool {
        let span = u64::try_from(self.next.as_micros())
            .unwrap_or(u64::MAX)
            .max(2);
        let wait = Duration::from_micros(span / 2 + rand::random::<u64>() % (span / 2));
        self.next = (self.next * 2).min(Self::MAX);
        if Instant::now() + wait >= deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
        true
    }
}

/// Why a forward was not sent: nothing took effect.
struct NotSent {
    error: RequestError,
    /// Whether trying again (after a wait) may succeed.
    retry: bool,
}

impl Node {
    /// The leader of `group` as this node last saw it (its routing table's hint, kept
    /// current by leadership changes), without copying the table. A client that caches "the
    /// node that answered" would, with forwarding on, keep paying a follower's extra hop:
    /// cache this instead.
    #[must_use]
    pub fn leader_hint(&self, group: GroupId) -> Option<NodeId> {
        crate::lock::read(&self.routing).leader_hint(group)
    }

    /// Whether node-level liveness holds `peer` down now (silent past the liveness timeout,
    /// counted from this node's start for a peer never heard). A service that redirects a client to another
    /// node should not name one that is down: the client would wait out its connect timeout.
    #[must_use]
    pub fn is_peer_down(&self, peer: NodeId) -> bool {
        lock::mutex(&self.forwarding.down).contains(&peer)
    }

    /// Proposes a user command to `group`: here when this node leads it, else (forwarding on)
    /// on the leader, waiting for one while none is known. See the module doc.
    pub(super) async fn propose_user(
        &self,
        group: GroupId,
        vshard: Option<VShardId>,
        command: &[u8],
        session: Option<SessionTag>,
    ) -> Result<Vec<u8>, RequestError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut backoff = Backoff::new();
        loop {
            // Borrowed, not copied: the leader's path costs what it did without forwarding.
            let framed = Frame::encode_user_from(vshard, command, session);
            let local = self.propose_frame(group, framed).await;
            let leader = match &local {
                Err(RequestError::NotLeader { leader, .. }) if self.forwarding.enabled() => {
                    leader.filter(|l| *l != self.id)
                }
                _ => return local,
            };
            let mut last = local;
            // Past the deadline nothing is sent: sent now, it could only come back unknown.
            if let Some(leader) = leader.filter(|_| Instant::now() < deadline) {
                let forwarded = self
                    .forward(leader, group, vshard, command, session, deadline)
                    .await;
                match forwarded {
                    // The leader moved on or is stepping down: nothing took effect there; ask
                    // again once this node knows the leader after it.
                    Ok(Err(e @ (RequestError::NotLeader { .. } | RequestError::ShuttingDown))) => {
                        last = Err(e);
                    }
                    Ok(answered) => return answered,
                    Err(NotSent { error, retry }) => {
                        if !retry {
                            return Err(error);
                        }
                        last = Err(error);
                    }
                }
            }
            if !backoff.wait(deadline).await {
                return last;
            }
        }
    }

    /// Runs `attempt` until it stops failing for want of a known leader (forwarding on), or
    /// until the request deadline: how a read on a follower waits out an election.
    pub(super) async fn with_leader<T, F>(
        &self,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T, RequestError>
    where
        F: Future<Output = Result<T, RequestError>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut backoff = Backoff::new();
        loop {
            let result = attempt().await;
            // A read barrier fails NotLeader only while raft knows no leader (with one, raft
            // asks it itself); a leader named then is the last one seen, a hint at best.
            match &result {
                Err(RequestError::NotLeader { .. })
                    if self.forwarding.enabled() && backoff.wait(deadline).await => {}
                _ => return result,
            }
        }
    }

    /// Sends one proposal to `leader` and waits for its reply until `deadline`.
    async fn forward(
        &self,
        leader: NodeId,
        group: GroupId,
        vshard: Option<VShardId>,
        command: &[u8],
        session: Option<SessionTag>,
        deadline: Instant,
    ) -> Result<Result<Vec<u8>, RequestError>, NotSent> {
        let forwarding = &self.forwarding;
        let (tx, rx) = oneshot::channel();
        let Some(id) = forwarding.register(leader, tx) else {
            return Err(NotSent {
                error: RequestError::Busy {
                    group,
                    reason: BusyReason::ForwardedRequests,
                },
                retry: true,
            });
        };
        // Forgotten however this ends (answered, timed out, or the caller gave up).
        let _registered = Registered { forwarding, id };
        let span = tracing::debug_span!("forward", node = %forwarding.node, %leader, %group, id);
        async {
            let request = Forward::Propose {
                id,
                group,
                vshard,
                command: Bytes::copy_from_slice(command),
                session: session.map(tag_to_wire),
            };
            match self.transport.send(leader, Envelope::Forward(request)) {
                Ok(()) => forwarding.sent.increment(1),
                Err(SendError::FrameTooLarge { len, max }) => {
                    return Err(NotSent {
                        error: RequestError::Refused {
                            group,
                            reason: format!(
                                "a command of {len} bytes does not fit in a frame of {max} bytes"
                            ),
                        },
                        retry: false,
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot forward to the leader");
                    return Err(NotSent {
                        error: RequestError::NotLeader {
                            group,
                            leader: Some(leader),
                        },
                        retry: true,
                    });
                }
            }
            Ok(match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(response))) => Ok(Vec::from(response)),
                Ok(Ok(Err(error))) => Err(from_wire(group, error)),
                // Sent, and the node stopped before the answer came: it may have committed.
                Ok(Err(_closed)) => Err(RequestError::StoppedInFlight { group }),
                // Sent, and no answer in time: the leader may have applied it.
                Err(_elapsed) => Err(RequestError::Timeout { group }),
            })
        }
        .instrument(span)
        .await
    }
}

/// Removes a forwarded request from the waiting map when its caller is done with it.
struct Registered<'a> {
    forwarding: &'a Forwarding,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.forwarding.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_to_one_leader_are_capped_and_a_finished_one_frees_its_place() {
        let f = Forwarding::new(NodeId(1), true, 2);
        let (a, b, c) = (
            oneshot::channel().0,
            oneshot::channel().0,
            oneshot::channel().0,
        );
        let first = f.register(NodeId(2), a).unwrap();
        assert!(f.register(NodeId(2), b).is_some());
        assert!(
            f.register(NodeId(2), c).is_none(),
            "a third to the same leader"
        );
        assert!(f.register(NodeId(3), oneshot::channel().0).is_some());
        f.forget(first);
        assert!(f.register(NodeId(2), oneshot::channel().0).is_some());
    }

    #[test]
    fn a_reply_answers_only_a_request_that_went_to_its_sender() {
        let f = Forwarding::new(NodeId(1), true, 8);
        let (tx, mut rx) = oneshot::channel();
        let id = f.register(NodeId(2), tx).unwrap();
        f.complete(NodeId(3), id, Ok(Bytes::from_static(b"forged")));
        assert!(rx.try_recv().is_err(), "another node cannot answer it");
        f.complete(NodeId(2), id, Ok(Bytes::from_static(b"ok")));
        assert_eq!(rx.try_recv().unwrap(), Ok(Bytes::from_static(b"ok")));
        // Answered once: a duplicate finds nobody waiting.
        f.complete(NodeId(2), id, Ok(Bytes::new()));
    }

    #[test]
    fn a_leader_that_went_down_fails_its_waiting_requests_as_outcome_unknown_at_once() {
        let f = Forwarding::new(NodeId(1), true, 8);
        let (to_two, mut two) = oneshot::channel();
        let (also_to_two, mut also_two) = oneshot::channel();
        let (to_three, mut three) = oneshot::channel();
        f.register(NodeId(2), to_two).unwrap();
        f.register(NodeId(2), also_to_two).unwrap();
        f.register(NodeId(3), to_three).unwrap();
        assert_eq!(f.peer_down(NodeId(2)), 2);
        for rx in [&mut two, &mut also_two] {
            let error = from_wire(GroupId(7), rx.try_recv().unwrap().unwrap_err());
            assert_eq!(error, RequestError::OutcomeUnknown { group: GroupId(7) });
        }
        assert!(three.try_recv().is_err(), "node 3 is up: still waiting");
        // Their places are free again.
        assert_eq!(f.peer_down(NodeId(2)), 0);
        for _ in 0..8 {
            assert!(f.register(NodeId(2), oneshot::channel().0).is_some());
        }
    }
}
