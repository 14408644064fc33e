//! The driver task: the only owner of the core, the state machine and the pending requests.
//! It ticks the groups, steps what the transport delivers, runs cycles (persisted on a
//! persister thread while the next cycle's work piles up), and answers requests.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::ConfState;
use routing::{GroupId, NodeId};
use storage::LogStore;
use tokio::sync::{mpsc, oneshot};
use transport::{Envelope, Inbound, Transport};

use super::DrainProgress;
use super::NodeStatus;
use super::events::{self, NodeEvent};
use super::forward::Forwarding;
use super::handle::Command;
use super::latency::StageClock;
use super::pending::{Completed, Done, Kind, Pending, Request};
use super::reconcile::Placement;
use super::transfers::Transfers;
use crate::apply::{Applying, Output};
use crate::error::{BusyReason, CoordinatorError, RequestError};
use crate::metrics::DriverMetrics;
use crate::multiraft::{CycleId, Event, MultiRaft, Token};

/// Where a caller waits for its answer.
pub(super) type Reply<T> = oneshot::Sender<Result<T, RequestError>>;

/// A caller waiting for a request, typed by what it waits for.
pub(super) enum Waiter {
    /// A command's response, or an exported vShard's data.
    Response(Reply<Vec<u8>>),
    /// A read barrier's applied index.
    Index(Reply<u64>),
    /// The configuration after a membership change.
    Configured(Reply<ConfState>),
}

impl Waiter {
    fn send(self, group: GroupId, token: Token, result: Result<Done, RequestError>) {
        // A closed receiver is a caller that gave up waiting: nothing to tell it.
        let _ = match (self, result) {
            (Self::Response(tx), Ok(Done::Response(bytes))) => tx.send(Ok(bytes)).map_err(drop),
            (Self::Index(tx), Ok(Done::Read(index))) => tx.send(Ok(index)).map_err(drop),
            (Self::Configured(tx), Ok(Done::Configured(conf))) => tx.send(Ok(conf)).map_err(drop),
            (waiter, Err(error)) => waiter.fail(error),
            (waiter, Ok(other)) => {
                // Each request kind completes with its own outcome; this is a driver bug.
                tracing::error!(%group, token, ?other, "a request completed with another kind's outcome");
                waiter.fail(RequestError::OutcomeUnknown { group })
            }
        };
    }

    fn fail(self, error: RequestError) -> Result<(), ()> {
        match self {
            Self::Response(tx) => tx.send(Err(error)).map_err(drop),
            Self::Index(tx) => tx.send(Err(error)).map_err(drop),
            Self::Configured(tx) => tx.send(Err(error)).map_err(drop),
        }
    }
}

pub(super) struct Driver {
    core: MultiRaft,
    store: LogStore,
    transport: Arc<dyn Transport>,
    applying: Applying,
    placement: Placement,
    pending: Pending<Waiter>,
    /// Tokens in the order they were issued; their deadlines grow in the same order.
    deadlines: VecDeque<(Instant, Token)>,
    next_token: Token,
    request_timeout: Duration,
    acknowledged: u64,
    /// Where subscribers hear what happens (see `events`).
    events: tokio::sync::broadcast::Sender<NodeEvent>,
    /// Leadership transfers callers wait on.
    transfers: Transfers,
    /// Draining (see [`crate::Node::drain`]): no new proposal is taken.
    draining: bool,
    metrics: DriverMetrics,
    /// Where the time of this node's proposals goes (see `latency`).
    stages: StageClock,
    /// Requests followers forward here, and replies to those this node forwarded.
    forwarding: Arc<Forwarding>,
}

type PersistResult = Result<(), storage::StorageError>;

impl Driver {
    pub(super) fn new(
        core: MultiRaft,
        store: LogStore,
        transport: Arc<dyn Transport>,
        applying: Applying,
        placement: Placement,
        request_timeout: Duration,
        events: tokio::sync::broadcast::Sender<NodeEvent>,
    ) -> Self {
        let core_id = core.id();
        Self {
            metrics: DriverMetrics::new(core_id),
            stages: StageClock::default(),
            core,
            store,
            transport,
            applying,
            placement,
            pending: Pending::default(),
            deadlines: VecDeque::new(),
            next_token: 1,
            request_timeout,
            acknowledged: 0,
            events,
            transfers: Transfers::default(),
            draining: false,
            forwarding: Arc::new(Forwarding::off(core_id)),
        }
    }

    /// Shares the node's forwarding state (see `forward`) with the driver.
    pub(super) fn with_forwarding(mut self, forwarding: Arc<Forwarding>) -> Self {
        self.forwarding = forwarding;
        self
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut stop: oneshot::Receiver<()>,
        tick_interval: Duration,
    ) -> Result<(), CoordinatorError> {
        let (persist_tx, persist_rx) = std::sync::mpsc::channel::<storage::StagedBatch>();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<PersistResult>();
        let store = self.store.clone();
        let node = self.core.id();
        let persister = std::thread::Builder::new()
            .name("pontoon-persist".into())
            .spawn(move || {
                while let Ok(staged) = persist_rx.recv() {
                    let (info, started) = (staged.info(), Instant::now());
                    let result = store.commit(staged).map(|_| ());
                    storage::metrics::record_persist(node, started.elapsed(), &info);
                    let failed = result.is_err();
                    if done_tx.send(result).is_err() || failed {
                        break;
                    }
                }
            });
        if let Err(error) = persister {
            tracing::error!(%error, "cannot start the persister thread; node stops");
            self.fail_all();
            Self::refuse_unread(&mut commands);
            return Err(CoordinatorError::PersisterStopped);
        }
        let mut ticker = tokio::time::interval(tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persisting: Option<CycleId> = None;
        let mut applied = self.applying.take_outputs();
        let result: Result<(), CoordinatorError> = async {
            loop {
                if persisting.is_none() {
                    // Between cycles: creating a replica writes to the store on its own,
                    // which must not overtake a cycle's batch still being made durable.
                    self.reconcile()?;
                }
                if persisting.is_none()
                    && let Some(cycle) = self.core.poll_cycle()?
                {
                    self.send(cycle.messages);
                    self.answer(cycle.applies, &cycle.events)?;
                    events::publish(&self.events, &cycle.events);
                    self.transfers.check(&self.core, Instant::now());
                    if persist_tx.send(cycle.batch).is_err() {
                        return Err(CoordinatorError::PersisterStopped);
                    }
                    persisting = Some(cycle.id);
                }
                tokio::select! {
                    biased;
                    _ = &mut stop => return Ok(()),
                    done = done_rx.recv(), if persisting.is_some() => {
                        match done {
                            Some(Ok(())) => {}
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err(CoordinatorError::PersisterStopped),
                        }
                        if let Some(id) = persisting.take() {
                            let messages = self.core.on_persisted(id)?;
                            self.send(messages);
                        }
                    }
                    Some(output) = applied.recv() => {
                        self.on_applied(output)?;
                        while let Ok(output) = applied.try_recv() {
                            self.on_applied(output)?;
                        }
                    }
                    _ = ticker.tick() => {
                        self.core.tick();
                        self.transfers.check(&self.core, Instant::now());
                        self.expire_requests();
                        self.compact()?;
                        self.publish_metrics(commands.len(), inbound.len());
                    }
                    Some(message) = inbound.recv() => {
                        self.on_inbound(message);
                        // Drain what is already queued so one cycle covers it all.
                        for _ in 0..1024 {
                            match inbound.try_recv() {
                                Ok(message) => self.on_inbound(message),
                                Err(_) => break,
                            }
                        }
                    }
                    command = commands.recv() => match command {
                        Some(command) => {
                            self.on_command(command);
                            for _ in 0..1024 {
                                match commands.try_recv() {
                                    Ok(command) => self.on_command(command),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => return Ok(()),
                    },
                }
            }
        }
        .await;
        if let Err(error) = &result {
            tracing::error!(%error, "coordinator stopped on a fatal error; pending requests fail");
        }
        // Wait for an fsync in flight, so a restart does not race it; then fail what is left.
        if persisting.is_some() {
            let _ = done_rx.recv().await;
        }
        drop(persist_tx);
        self.fail_all();
        Self::refuse_unread(&mut commands);
        result
    }

    fn send(&mut self, messages: Vec<(NodeId, Envelope)>) {
        for (to, envelope) in messages {
            let group = envelope.group();
            if let Err(error) = self.transport.send(to, envelope) {
                tracing::debug!(%to, %error, "send failed; raft will retry");
                self.core.report_unreachable(to, group);
            }
        }
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message {
                from,
                envelope: Envelope::Forward(forward),
            } => {
                // A forwarded request that passes the checks is served as a local caller's.
                let accepted =
                    self.forwarding
                        .on_envelope(from, forward, &self.core, &self.transport);
                if let Some((group, request, waiter)) = accepted {
                    self.on_command(Command::Request {
                        group,
                        request,
                        waiter,
                    });
                }
            }
            Inbound::Message { from, envelope } => self.core.step(from, envelope),
            Inbound::Unreachable { to, group } => self.core.report_unreachable(to, group),
            Inbound::SnapshotStatus {
                to,
                group,
                delivered,
            } => self.core.report_snapshot(to, group, delivered),
        }
    }

    fn token(&mut self) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        self.deadlines
            .push_back((Instant::now() + self.request_timeout, token));
        token
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                waiter, request, ..
            } if self.draining && request.proposes() => {
                let _ = waiter.fail(RequestError::ShuttingDown);
            }
            Command::Request {
                group,
                request,
                waiter,
            } => {
                if matches!(request, Request::Propose(_)) && self.applying.busy(group) {
                    let _ = waiter.fail(RequestError::Busy {
                        group,
                        reason: BusyReason::ApplyBacklog,
                    });
                    return;
                }
                let token = self.token();
                if matches!(request, Request::Propose(_)) {
                    self.metrics.proposed();
                }
                if let Err((waiter, error)) =
                    self.pending
                        .submit(&mut self.core, token, group, request, waiter)
                {
                    self.metrics.failed(&error);
                    let _ = waiter.fail(self.with_leader_hint(error));
                }
            }
            Command::TransferLeader { group, to, reply } => {
                let deadline = Instant::now() + self.request_timeout;
                self.transfers
                    .start(&mut self.core, group, to, reply, deadline);
            }
            Command::Drain { reply } => {
                let _ = reply.send(self.drain());
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    /// Stops taking proposals and moves every leadership held here to a caught-up voter
    /// (again for a group whose last transfer failed); says what is left.
    fn drain(&mut self) -> DrainProgress {
        if !self.draining {
            tracing::info!("draining: moving leadership away, refusing new proposals");
        }
        self.draining = true;
        let led = self.core.led_groups();
        for group in &led {
            self.core.hand_off(*group);
        }
        DrainProgress {
            leading: led.len(),
            in_flight: self.pending.len(),
        }
    }

    fn status(&self) -> NodeStatus {
        let groups = self
            .core
            .groups()
            .filter_map(|g| self.core.status(g))
            .collect();
        NodeStatus {
            node: self.core.id(),
            groups,
            coordinator: self.core.stats().clone(),
            storage: self.store.stats(),
            transport: self.transport.stats(),
            proposals_acknowledged: self.acknowledged,
            routing_version: self.applying.table().version(),
            peers_down: self.core.down_peers().collect(),
            latency: self.stages.summary(),
        }
    }

    /// About once a second: the node's figures through the `metrics` facade.
    fn publish_metrics(&mut self, commands: usize, inbound: usize) {
        if !self.metrics.publish_due(Instant::now()) {
            return;
        }
        crate::metrics::publish_counts(&crate::metrics::NodeFigures {
            node: self.core.id(),
            groups: self.core.group_counts(),
            coordinator: self.core.stats(),
            storage: &self.store.stats(),
            transport: &self.transport.stats(),
            routing_version: self.applying.table().version(),
        });
        let queues = [
            ("commands", commands),
            ("inbound", inbound),
            ("requests", self.pending.len()),
        ];
        let links = self.transport.peer_links();
        self.metrics
            .publish_driver(self.core.peer_liveness(), &links, queues);
    }

    /// When the request behind `token` was issued: its deadline, less the timeout (tokens and
    /// deadlines grow together, so the queue is sorted by token).
    fn issued_at(&self, token: Token) -> Option<Instant> {
        let i = self
            .deadlines
            .binary_search_by_key(&token, |(_, t)| *t)
            .ok()?;
        let (deadline, _) = self.deadlines.get(i)?;
        deadline.checked_sub(self.request_timeout)
    }

    /// `error` with the leader this node last saw, when raft does not know one.
    fn with_leader_hint(&self, error: RequestError) -> RequestError {
        match error {
            RequestError::NotLeader {
                group,
                leader: None,
            } => RequestError::NotLeader {
                group,
                leader: self
                    .placement
                    .leader_hint(group)
                    .filter(|l| *l != self.core.id() && !self.core.is_peer_down(*l)),
            },
            other => other,
        }
    }

    /// Applies a cycle's committed work and answers the requests it and its events complete.
    fn answer(
        &mut self,
        applies: Vec<crate::multiraft::Apply>,
        events: &[Event],
    ) -> Result<(), CoordinatorError> {
        let now = Instant::now();
        for apply in &applies {
            if let crate::multiraft::Apply::Command {
                proposal: Some(token),
                ..
            } = apply
                && self.pending.kind(*token).is_some()
            {
                self.stages.committed(*token, now);
            }
        }
        let mut completed = Vec::new();
        self.applying
            .dispatch(&mut self.pending, applies, &mut completed)?;
        for event in events {
            match *event {
                Event::LeaderChanged {
                    group,
                    leader,
                    term,
                } => {
                    tracing::debug!(%group, ?leader, term, "leader changed");
                    self.placement.set_leader_hint(group, leader);
                }
                Event::PeerDown { peer } => {
                    let lost = self.forwarding.peer_down(peer);
                    if lost > 0 {
                        tracing::debug!(%peer, lost, "requests forwarded to a node that went down: outcome unknown");
                    }
                }
                Event::PeerUp { peer } => self.forwarding.peer_up(peer),
                _ => {}
            }
            completed.extend(self.applying.on_event(&mut self.pending, event));
        }
        for done in completed {
            self.reply(done);
        }
        Ok(())
    }

    fn reply(&mut self, done: Completed<Waiter>) {
        match &done.result {
            Ok(_) if done.kind == Kind::Propose => {
                self.acknowledged += 1;
                let (issued, now) = (self.issued_at(done.token), Instant::now());
                let stages = self.stages.answered(done.token, issued, now);
                self.metrics
                    .acknowledged(issued.map(|at| now.duration_since(at)), stages);
            }
            Ok(_) => self.stages.forget(done.token),
            Err(error) => {
                self.stages.forget(done.token);
                self.metrics.failed(error);
            }
        }
        done.waiter.send(done.group, done.token, done.result);
    }

    fn fail(&mut self, token: Token, error: impl FnOnce(GroupId) -> RequestError) {
        if let Some(done) = self.pending.fail(token, error) {
            self.reply(done);
        }
    }

    fn expire_requests(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, token)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            self.fail(token, |group| RequestError::Timeout { group });
        }
    }

    fn compact(&mut self) -> Result<(), CoordinatorError> {
        self.applying.compact(&mut self.core)
    }

    /// What an apply worker finished: answers its proposals and the reads that waited for it.
    fn on_applied(&mut self, output: Output) -> Result<(), CoordinatorError> {
        if let Output::Applied { took, .. } = &output {
            self.metrics.applied(*took);
        }
        let mut completed = Vec::new();
        self.applying
            .on_output(&mut self.pending, &mut self.core, output, &mut completed)?;
        for done in completed {
            self.reply(done);
        }
        Ok(())
    }

    /// The driver stops: every request still waiting fails. Only what never reached raft
    /// (reads, and commands still queued in the core) certainly did not take effect; a
    /// proposal raft holds may yet commit, here before the stop or under a new leader.
    fn fail_all(&mut self) {
        let unproposed: HashSet<Token> = self.core.queued_tokens().collect();
        let failed = self.pending.fail_all(|token, group, kind| match kind {
            Kind::Propose | Kind::ConfChange if !unproposed.contains(&token) => {
                RequestError::StoppedInFlight { group }
            }
            _ => RequestError::ShuttingDown,
        });
        for done in failed {
            self.reply(done);
        }
    }

    /// Commands that were sent but not yet read never reached the core: they fail as
    /// `ShuttingDown` (did not take effect) instead of with a dropped reply.
    fn refuse_unread(commands: &mut mpsc::Receiver<Command>) {
        commands.close();
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Request { waiter, .. } => {
                    let _ = waiter.fail(RequestError::ShuttingDown);
                }
                Command::TransferLeader { reply, .. } => {
                    let _ = reply.send(Err(RequestError::ShuttingDown));
                }
                // Dropping the sender tells the caller the node is gone.
                Command::Status { .. } | Command::Drain { .. } => {}
            }
        }
    }

    /// See [`Placement::reconcile`]; the proposals it lost track of fail as outcome unknown.
    fn reconcile(&mut self) -> Result<(), CoordinatorError> {
        let lost = self
            .placement
            .reconcile(&mut self.core, &mut self.applying)?;
        self.applying.close_gone(&self.core);
        for token in lost {
            self.fail(token, |group| RequestError::OutcomeUnknown { group });
        }
        Ok(())
    }
}
