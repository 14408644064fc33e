//! Applying committed entries off the coordinator's task.
//!
//! [`Applying`] sits between a driver and the replicas: the meta group's routing table is
//! applied at once, on the driver (it is small and every routing decision reads it); every
//! other group's commands go, batched per group and cycle, to the apply worker the group is
//! pinned to ([`workers`]). Proposals complete when their worker's [`Output`] comes back, and
//! a read barrier is answered only once its group's worker has applied everything handed out
//! before it. Both the tokio driver and the simulation use it, so both answer alike.
//!
//! - `replica`: one group's system layer (fences, framing, snapshots, restart positions).
//! - `sessions`: the replicated table that makes a session's retried command apply once.
//! - `workers`: the jobs, and where they run (worker threads taking whichever group is
//!   ready, or inline).

mod replica;
mod sessions;
mod workers;

pub(crate) use sessions::OWNER_BITS as SESSION_OWNER_BITS;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use routing::{GroupId, META_GROUP, RoutingTable};
use tokio::sync::mpsc;

use crate::error::{BusyReason, CoordinatorError, RequestError};
use crate::group_state_machine::{Position, StateMachineFactory};
use crate::multiraft::{Apply, Event, MultiRaft, SnapshotCheck, Token};
use crate::node::pending::{Completed, Done, Kind, Pending};
use crate::replicated::{Fences, Meta, Reply};

use replica::Item;
pub(crate) use workers::Output;
use workers::{Applier, Job, Replicas};

/// The check a node's core runs on every snapshot a peer sends for a group other than the
/// meta group, before raft installs it (see [`MultiRaft::set_snapshot_check`]): the system
/// header here, the database's bytes by its factory.
pub(crate) fn snapshot_check(factory: Arc<dyn StateMachineFactory>) -> SnapshotCheck {
    Arc::new(move |group, data| {
        replica::check_snapshot(&*factory, group, data).map_err(|e| e.to_string())
    })
}

/// Where a group stands between the driver and its worker.
#[derive(Default)]
struct Progress {
    /// Jobs submitted (the sequence number of the last one).
    submitted: u64,
    /// Jobs done.
    done: u64,
    /// Commands submitted and not yet applied.
    backlog: usize,
    /// Read barriers reached by raft, waiting for the worker: (jobs that must be done, token,
    /// the applied index the read reflects).
    reads: Vec<(u64, Token, u64)>,
    /// A snapshot job is out.
    snapshotting: bool,
}

/// One group's commands of one cycle, gathered into one job.
#[derive(Default)]
struct Gathered {
    items: Vec<Item>,
    /// The proposal each item completes.
    tokens: Vec<Option<Token>>,
    /// The last index handed out (conf changes included).
    through: u64,
}

/// See the module docs.
pub(crate) struct Applying {
    meta: Meta,
    /// The meta group's applied index (it applies here, not on a worker).
    meta_applied: u64,
    fences: Fences,
    applier: Applier,
    /// Until a tokio driver takes it (see [`Applying::take_outputs`]).
    outputs: Option<mpsc::UnboundedReceiver<Output>>,
    progress: HashMap<GroupId, Progress>,
    /// How many commands of one group may wait for its worker before proposals are refused
    /// as busy.
    max_backlog: usize,
    /// Groups whose replica was set aside here (its state machine could not restore a
    /// snapshot): they take no snapshots and answer no reads.
    set_aside: HashSet<GroupId>,
}

impl Applying {
    /// Applies on `workers` threads (0: inline, on the caller: the deterministic simulation).
    ///
    /// # Errors
    /// A worker thread could not be started.
    pub(crate) fn new(
        factory: Arc<dyn StateMachineFactory>,
        initial: RoutingTable,
        workers: usize,
        max_backlog: usize,
        dedup_sessions: bool,
    ) -> std::io::Result<Self> {
        let fences = Fences::default();
        let vshard_count = initial.vshard_count();
        let (tx, outputs) = mpsc::unbounded_channel();
        let replicas = Replicas::new(factory, fences.clone(), vshard_count, dedup_sessions);
        let applier = if workers == 0 {
            Applier::inline(replicas, tx)
        } else {
            Applier::threads(workers, replicas, &tx)?
        };
        Ok(Self {
            meta: Meta::new(initial),
            meta_applied: 0,
            fences,
            applier,
            outputs: Some(outputs),
            progress: HashMap::new(),
            max_backlog,
            set_aside: HashSet::new(),
        })
    }

    /// A handle on the fences, for readers on other threads.
    pub(crate) fn fences(&self) -> Fences {
        self.fences.clone()
    }

    /// The routing table as the meta group has applied it here.
    pub(crate) fn table(&self) -> &RoutingTable {
        self.meta.table()
    }

    /// The table, if it changed since the last call.
    pub(crate) fn take_table_change(&mut self) -> Option<RoutingTable> {
        self.meta.take_table_change()
    }

    /// Whether `group`'s worker is so far behind that new proposals must wait.
    pub(crate) fn busy(&self, group: GroupId) -> bool {
        self.progress
            .get(&group)
            .is_some_and(|p| p.backlog >= self.max_backlog)
    }

    /// The workers' outputs, for a driver that awaits them (hand each to
    /// [`Applying::on_output`]). Afterwards [`Applying::try_output`] returns nothing.
    pub(crate) fn take_outputs(&mut self) -> mpsc::UnboundedReceiver<Output> {
        self.outputs
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1)
    }

    /// An output already waiting, if any (the simulation, after inline jobs).
    #[cfg(feature = "test-util")]
    pub(crate) fn try_output(&mut self) -> Option<Output> {
        self.outputs.as_mut()?.try_recv().ok()
    }

    fn submit(&mut self, job: Job) {
        self.applier.submit(job);
    }

    fn next_seq(&mut self, group: GroupId) -> u64 {
        let p = self.progress.entry(group).or_default();
        p.submitted += 1;
        p.submitted
    }

    /// Hands a cycle's committed work to the replicas, in log order per group: the meta group's
    /// at once, the others' to their workers. Answers what completes now (meta proposals,
    /// membership changes).
    pub(crate) fn dispatch<W>(
        &mut self,
        pending: &mut Pending<W>,
        applies: Vec<Apply>,
        completed: &mut Vec<Completed<W>>,
    ) -> Result<(), CoordinatorError> {
        let mut jobs: BTreeMap<GroupId, Gathered> = BTreeMap::new();
        for apply in applies {
            match apply {
                Apply::Restore { group, index, data } if group == META_GROUP => {
                    self.meta
                        .restore(&data)
                        .map_err(|source| CoordinatorError::StateMachine { group, source })?;
                    self.meta_applied = index;
                }
                Apply::Restore { group, index, data } => {
                    if let Some(job) = jobs.remove(&group) {
                        self.submit_commands(group, job);
                    }
                    let seq = self.next_seq(group);
                    self.submit(Job::Restore {
                        group,
                        seq,
                        index,
                        data,
                    });
                }
                Apply::Command {
                    group,
                    index,
                    data,
                    proposal,
                    ..
                } if group == META_GROUP => {
                    let reply = self.meta.apply(&data);
                    self.meta_applied = index;
                    completed.extend(proposal.and_then(|token| self.answer(pending, token, reply)));
                }
                Apply::Command {
                    group,
                    index,
                    offset,
                    data,
                    proposal,
                    ..
                } => {
                    let job = jobs.entry(group).or_default();
                    job.items.push(Item {
                        position: Position { index, offset },
                        framed: data,
                    });
                    job.tokens.push(proposal);
                    job.through = index;
                }
                Apply::ConfChanged {
                    group,
                    index,
                    conf_state,
                    proposal,
                } => {
                    if group == META_GROUP {
                        self.meta_applied = index;
                    } else {
                        jobs.entry(group).or_default().through = index;
                    }
                    completed.extend(proposal.and_then(|t| {
                        pending.complete(t, |_, _| Ok(Done::Configured(conf_state)))
                    }));
                }
            }
        }
        for (group, job) in jobs {
            self.submit_commands(group, job);
        }
        Ok(())
    }

    fn submit_commands(&mut self, group: GroupId, job: Gathered) {
        let Gathered {
            items,
            tokens,
            through,
        } = job;
        let seq = self.next_seq(group);
        if let Some(p) = self.progress.get_mut(&group) {
            p.backlog += items.len();
        }
        self.submit(Job::Apply {
            group,
            seq,
            items,
            tokens,
            through,
        });
    }

    /// The answer a reply makes for the proposal `token`.
    fn answer<W>(
        &self,
        pending: &mut Pending<W>,
        token: Token,
        reply: Reply,
    ) -> Option<Completed<W>> {
        let table_version = self.meta.table().version();
        pending.complete(token, |group, _| match reply {
            Reply::Applied(bytes) => Ok(Done::Response(bytes)),
            Reply::StaleRouting(vshard) => Err(RequestError::StaleRouting {
                vshard,
                group,
                table_version,
            }),
            Reply::Refused(reason) => Err(RequestError::Refused { group, reason }),
            Reply::AppliedEarlier => Err(RequestError::AppliedEarlier { group }),
        })
    }

    /// Answers the request `event` completes, if it can be answered now: a read barrier
    /// waits until its group's worker has applied everything handed out before it.
    pub(crate) fn on_event<W>(
        &mut self,
        pending: &mut Pending<W>,
        event: &Event,
    ) -> Option<Completed<W>> {
        match *event {
            Event::ReadReady { group, token, .. } if self.set_aside.contains(&group) => {
                pending.fail(token, |group| RequestError::ReplicaFailed { group })
            }
            Event::ReadReady {
                group,
                token,
                index,
            } => {
                let waits_for = self
                    .progress
                    .get(&group)
                    .filter(|p| p.done < p.submitted)
                    .map(|p| p.submitted);
                match waits_for {
                    Some(seq) => {
                        if let Some(p) = self.progress.get_mut(&group) {
                            p.reads.push((seq, token, index));
                        }
                        None
                    }
                    None => self.read_reached(pending, group, token, index),
                }
            }
            Event::ProposalDropped { token, .. } => {
                pending.fail(token, |group| RequestError::ProposalDropped { group })
            }
            Event::ProposalBusy { token, .. } => pending.fail(token, |group| RequestError::Busy {
                group,
                reason: BusyReason::UncommittedBytes,
            }),
            Event::ProposalOutcomeUnknown { token, .. } => {
                pending.fail(token, |group| RequestError::OutcomeUnknown { group })
            }
            Event::LeaderChanged { .. }
            | Event::RoleChanged { .. }
            | Event::Quiet { .. }
            | Event::Woken { .. }
            | Event::PeerDown { .. }
            | Event::PeerUp { .. }
            | Event::ReplicaFailed { .. } => None,
        }
    }

    /// A read barrier of `group` is reached and applied: answer it (checked against the
    /// vShard fences), or have the worker export the vShard it asks for.
    fn read_reached<W>(
        &mut self,
        pending: &mut Pending<W>,
        group: GroupId,
        token: Token,
        index: u64,
    ) -> Option<Completed<W>> {
        match pending.kind(token)? {
            Kind::Export(vshard) if group != META_GROUP => {
                self.submit(Job::Export {
                    group,
                    vshard,
                    token,
                });
                None
            }
            Kind::Export(_) => pending.fail(token, |group| RequestError::Refused {
                group,
                reason: "the meta group holds no vShards".into(),
            }),
            Kind::Read {
                vshard: Some(vshard),
            } if !self.fences.serves(group, vshard) => {
                let table_version = self.meta.table().version();
                pending.fail(token, |group| RequestError::StaleRouting {
                    vshard,
                    group,
                    table_version,
                })
            }
            _ => pending.complete(token, |_, _| Ok(Done::Read(index))),
        }
    }

    /// Handles what a worker produced: answers proposals and the reads that were waiting,
    /// stores snapshots, and quarantines a group whose replica was set aside.
    ///
    /// # Errors
    /// A state machine failed applying (the node must stop), or compaction failed.
    pub(crate) fn on_output<W>(
        &mut self,
        pending: &mut Pending<W>,
        core: &mut MultiRaft,
        output: Output,
        completed: &mut Vec<Completed<W>>,
    ) -> Result<(), CoordinatorError> {
        match output {
            Output::Applied {
                group,
                seq,
                replies,
                commands,
                durable,
                ..
            } => {
                for (token, reply) in replies {
                    completed.extend(self.answer(pending, token, reply));
                }
                let Some(p) = self.progress.get_mut(&group) else {
                    return Ok(());
                };
                p.done = p.done.max(seq);
                p.backlog = p.backlog.saturating_sub(commands);
                let done = p.done;
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut p.reads)
                    .into_iter()
                    .partition(|&(s, ..)| s <= done);
                p.reads = waiting;
                core.set_durable_position(group, durable);
                for (_, token, index) in ready {
                    completed.extend(self.read_reached(pending, group, token, index));
                }
            }
            Output::Snapshot { group, index, data } => {
                if let Some(p) = self.progress.get_mut(&group) {
                    p.snapshotting = false;
                }
                // The replica may have moved away while its worker took the snapshot.
                if core.has_group(group) {
                    core.compact(group, index, data)?;
                }
            }
            Output::Exported {
                group,
                token,
                result,
            } => completed.extend(pending.complete(token, |_, _| {
                result
                    .map(Done::Response)
                    .map_err(|reason| RequestError::Refused { group, reason })
            })),
            Output::SetAside {
                group,
                seq,
                commands,
                tokens,
                reason,
            } => {
                self.set_aside.insert(group);
                core.quarantine(group, reason);
                // Committed, never applied here: the group's other replicas apply them.
                for token in tokens {
                    completed.extend(
                        pending.fail(token, |group| RequestError::OutcomeUnknown { group }),
                    );
                }
                if let Some(p) = self.progress.get_mut(&group) {
                    p.done = p.done.max(seq);
                    p.backlog = p.backlog.saturating_sub(commands);
                    if seq == 0 {
                        p.snapshotting = false;
                    }
                    for (_, token, _) in std::mem::take(&mut p.reads) {
                        completed.extend(
                            pending.fail(token, |group| RequestError::ReplicaFailed { group }),
                        );
                    }
                }
            }
            Output::Failed { group, error } => {
                return Err(CoordinatorError::StateMachine {
                    group,
                    source: error,
                });
            }
        }
        Ok(())
    }

    /// Takes the snapshots the core asks for: the meta group's here, the others' on their
    /// workers (stored when their output comes back).
    ///
    /// # Errors
    /// Compacting the meta group failed.
    pub(crate) fn compact(&mut self, core: &mut MultiRaft) -> Result<(), CoordinatorError> {
        for group in core.compaction_due() {
            if group == META_GROUP {
                core.compact(group, self.meta_applied, self.meta.snapshot())?;
                continue;
            }
            // A replica set aside has no state to snapshot; its log waits for its removal.
            if self.set_aside.contains(&group) {
                continue;
            }
            let p = self.progress.entry(group).or_default();
            if !p.snapshotting {
                p.snapshotting = true;
                self.submit(Job::Snapshot { group });
            }
        }
        Ok(())
    }

    /// Closes the replicas of groups `core` no longer holds (the routing table moved them
    /// away).
    pub(crate) fn close_gone(&mut self, core: &MultiRaft) {
        let gone: Vec<GroupId> = self
            .progress
            .keys()
            .copied()
            .filter(|g| !core.has_group(*g))
            .collect();
        for group in gone {
            self.progress.remove(&group);
            self.set_aside.remove(&group);
            self.submit(Job::Close { group });
        }
    }
}
