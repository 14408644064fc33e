//! Where replicas apply: on worker threads (a node), or inline on the caller (the
//! deterministic simulation). Both run the same [`Replicas`] code. A group's jobs wait in its
//! own queue and run in the order they were submitted, by one worker at a time: whichever is
//! free, so one slow group holds one worker and never the others' groups.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use routing::{GroupId, VShardId};
use tokio::sync::mpsc::UnboundedSender;

use super::replica::{Item, Replica};
use crate::group_state_machine::{Position, StateMachineFactory};
use crate::lock;
use crate::multiraft::Token;
use crate::replicated::{Fences, Reply};
use crate::state_machine::StateMachineError;

/// Work for one group's replica.
#[derive(Debug)]
pub(crate) enum Job {
    /// Apply committed commands; `tokens` holds the proposal each item completes. Everything
    /// up to `through` (conf changes included) has been handed out once this is done.
    Apply {
        group: GroupId,
        seq: u64,
        items: Vec<Item>,
        tokens: Vec<Option<Token>>,
        through: u64,
    },
    /// Replace the replica's state with a snapshot taken at `index`.
    Restore {
        group: GroupId,
        seq: u64,
        index: u64,
        data: Vec<u8>,
    },
    /// Take a snapshot for compaction (or for a new replica).
    Snapshot { group: GroupId },
    /// A read barrier was reached: export the vShard's data for `token`.
    Export {
        group: GroupId,
        vshard: VShardId,
        token: Token,
    },
    /// The replica left this node.
    Close { group: GroupId },
}

impl Job {
    pub(crate) fn group(&self) -> GroupId {
        match self {
            Self::Apply { group, .. }
            | Self::Restore { group, .. }
            | Self::Snapshot { group }
            | Self::Export { group, .. }
            | Self::Close { group } => *group,
        }
    }
}

/// What a job produced, back to the driver.
#[derive(Debug)]
pub(crate) enum Output {
    /// Job `seq` of `group` is done: its proposals' replies, the index applied through, and
    /// the state machine's durable position.
    Applied {
        group: GroupId,
        seq: u64,
        replies: Vec<(Token, Reply)>,
        /// How many commands the job held.
        commands: usize,
        durable: Option<Position>,
        /// How long the state machine took.
        took: std::time::Duration,
    },
    /// A snapshot of `group` taken at `index`.
    Snapshot {
        group: GroupId,
        index: u64,
        data: Vec<u8>,
    },
    /// The data of an exported vShard, or why it could not be exported.
    Exported {
        group: GroupId,
        token: Token,
        result: Result<Vec<u8>, String>,
    },
    /// The replica was set aside (its state machine could not restore a snapshot) and ran
    /// none of job `seq` (0: a job that counts none), which held `commands` commands: the
    /// driver quarantines the group, the node goes on with the others.
    SetAside {
        group: GroupId,
        seq: u64,
        commands: usize,
        /// The proposals the refused job would have completed.
        tokens: Vec<Token>,
        reason: String,
    },
    /// The state machine failed: the node must stop.
    Failed {
        group: GroupId,
        error: StateMachineError,
    },
}

/// Opens replicas and runs jobs on them; shared by every worker.
pub(crate) struct Replicas {
    factory: Arc<dyn StateMachineFactory>,
    fences: Fences,
    vshard_count: u32,
    dedup_sessions: bool,
}

/// One group's replica with the index it has applied through.
type Slot = Option<(Replica, u64)>;

impl Replicas {
    pub(crate) fn new(
        factory: Arc<dyn StateMachineFactory>,
        fences: Fences,
        vshard_count: u32,
        dedup_sessions: bool,
    ) -> Self {
        Self {
            factory,
            fences,
            vshard_count,
            dedup_sessions,
        }
    }

    fn replica<'s>(
        &self,
        group: GroupId,
        slot: &'s mut Slot,
    ) -> Result<&'s mut (Replica, u64), StateMachineError> {
        if slot.is_none() {
            let inner = self.factory.open(group)?;
            let replica = Replica::open(group, inner, self.fences.clone(), self.vshard_count);
            let replica = if self.dedup_sessions {
                replica
            } else {
                replica.without_dedup()
            };
            *slot = Some((replica, 0));
        }
        slot.as_mut()
            .ok_or_else(|| format!("{group} has no replica").into())
    }

    /// Runs `job` on its group's `slot`; `None` for jobs that answer nothing.
    pub(crate) fn run(&self, slot: &mut Slot, job: Job) -> Option<Output> {
        let group = job.group();
        match self.try_run(slot, job) {
            Ok(output) => output,
            Err(error) => Some(Output::Failed { group, error }),
        }
    }

    fn try_run(&self, slot: &mut Slot, job: Job) -> Result<Option<Output>, StateMachineError> {
        if let Some((replica, _)) = slot
            && let Some(reason) = replica.set_aside()
            && !matches!(job, Job::Close { .. })
        {
            return Ok(Self::refused_by_set_aside(job, reason));
        }
        Ok(match job {
            Job::Apply {
                group,
                seq,
                items,
                tokens,
                through,
            } => {
                let (replica, applied) = self.replica(group, slot)?;
                let started = std::time::Instant::now();
                let replies = replica.apply(&items)?;
                let took = started.elapsed();
                *applied = through.max(*applied);
                Some(Output::Applied {
                    group,
                    seq,
                    commands: items.len(),
                    replies: tokens
                        .into_iter()
                        .zip(replies)
                        .filter_map(|(token, reply)| Some((token?, reply)))
                        .collect(),
                    durable: replica.durable_position(),
                    took,
                })
            }
            Job::Restore {
                group,
                seq,
                index,
                data,
            } => {
                let (replica, applied) = self.replica(group, slot)?;
                // Bytes a peer sent that this state machine cannot take: this replica is set
                // aside, the node's other groups are not stopped for it.
                if let Err(error) = replica.restore(index, &data) {
                    return Ok(Some(Output::SetAside {
                        group,
                        seq,
                        commands: 0,
                        tokens: Vec::new(),
                        reason: error.to_string(),
                    }));
                }
                *applied = index;
                Some(Output::Applied {
                    group,
                    seq,
                    replies: Vec::new(),
                    commands: 0,
                    durable: replica.durable_position(),
                    took: std::time::Duration::ZERO,
                })
            }
            Job::Snapshot { group } => {
                let (replica, applied) = self.replica(group, slot)?;
                let index = *applied;
                Some(Output::Snapshot {
                    group,
                    index,
                    data: replica.snapshot()?,
                })
            }
            Job::Export {
                group,
                vshard,
                token,
            } => {
                let (replica, _) = self.replica(group, slot)?;
                Some(Output::Exported {
                    group,
                    token,
                    result: replica.export_vshard(vshard).map_err(|e| e.to_string()),
                })
            }
            Job::Close { group } => {
                if slot.take().is_some() {
                    self.factory.removed(group);
                }
                None
            }
        })
    }
}

impl Replicas {
    /// What `job` answers on a replica set aside for `reason`: it runs nothing.
    fn refused_by_set_aside(job: Job, reason: &str) -> Option<Output> {
        let reason = reason.to_string();
        match job {
            Job::Apply {
                group,
                seq,
                items,
                tokens,
                ..
            } => Some(Output::SetAside {
                group,
                seq,
                commands: items.len(),
                tokens: tokens.into_iter().flatten().collect(),
                reason,
            }),
            Job::Restore { group, seq, .. } => Some(Output::SetAside {
                group,
                seq,
                commands: 0,
                tokens: Vec::new(),
                reason,
            }),
            Job::Snapshot { group } => Some(Output::SetAside {
                group,
                seq: 0,
                commands: 0,
                tokens: Vec::new(),
                reason,
            }),
            Job::Export { group, token, .. } => Some(Output::Exported {
                group,
                token,
                result: Err(format!("this replica was set aside: {reason}")),
            }),
            // A set-aside replica still closes (see `try_run`): never here.
            Job::Close { .. } => None,
        }
    }
}

/// A group's jobs waiting for a worker, and its replica while no worker holds it.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    slot: Slot,
    /// A worker is running this group's jobs (and holds its replica).
    running: bool,
}

/// The groups with work, shared by the worker threads. A group is run by one worker at a
/// time (its order kept), but by whichever worker is free: a slow group holds one worker,
/// and the others keep serving every other group.
#[derive(Default)]
struct Schedule {
    queues: HashMap<GroupId, Queue>,
    /// Groups with jobs and no worker, in the order they became ready.
    ready: VecDeque<GroupId>,
    closed: bool,
}

pub(crate) struct Shared {
    schedule: Mutex<Schedule>,
    wake: Condvar,
}

/// Runs jobs: on worker threads, or inline.
pub(crate) enum Applier {
    /// Each job runs at once on the caller's thread (deterministic).
    Inline {
        replicas: Replicas,
        slots: HashMap<GroupId, Slot>,
        outputs: UnboundedSender<Output>,
    },
    /// Jobs wait in their group's queue for a free worker.
    Threads {
        shared: Arc<Shared>,
        threads: Vec<std::thread::JoinHandle<()>>,
    },
}

impl Applier {
    pub(crate) fn inline(replicas: Replicas, outputs: UnboundedSender<Output>) -> Self {
        Self::Inline {
            replicas,
            slots: HashMap::new(),
            outputs,
        }
    }

    /// `count` worker threads.
    ///
    /// # Errors
    /// A thread could not be started.
    pub(crate) fn threads(
        count: usize,
        replicas: Replicas,
        outputs: &UnboundedSender<Output>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            schedule: Mutex::new(Schedule::default()),
            wake: Condvar::new(),
        });
        let replicas = Arc::new(replicas);
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let (mine, replicas, outputs) = (shared.clone(), replicas.clone(), outputs.clone());
            let span = tracing::Span::current();
            let spawned = std::thread::Builder::new()
                .name(format!("pontoon-apply-{i}"))
                .spawn(move || {
                    let _entered = span.enter();
                    work(&mine, &replicas, &outputs);
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    // The ones already started stop when they see the schedule closed.
                    lock::mutex(&shared.schedule).closed = true;
                    shared.wake.notify_all();
                    return Err(error);
                }
            }
        }
        Ok(Self::Threads { shared, threads })
    }

    pub(crate) fn submit(&mut self, job: Job) {
        match self {
            Self::Inline {
                replicas,
                slots,
                outputs,
            } => {
                let slot = slots.entry(job.group()).or_default();
                if let Some(output) = replicas.run(slot, job) {
                    // The receiver lives as long as the driver that submits.
                    let _ = outputs.send(output);
                }
            }
            Self::Threads { shared, .. } => {
                let group = job.group();
                let mut schedule = lock::mutex(&shared.schedule);
                let queue = schedule.queues.entry(group).or_default();
                queue.jobs.push_back(job);
                if !queue.running && queue.jobs.len() == 1 {
                    schedule.ready.push_back(group);
                    drop(schedule);
                    shared.wake.notify_one();
                }
            }
        }
    }
}

/// A worker thread: takes a ready group, runs all its queued jobs, gives it back.
fn work(shared: &Shared, replicas: &Replicas, outputs: &UnboundedSender<Output>) {
    let mut schedule = lock::mutex(&shared.schedule);
    loop {
        let Some(group) = schedule.ready.pop_front() else {
            if schedule.closed {
                return;
            }
            schedule = shared
                .wake
                .wait(schedule)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        };
        let Some(queue) = schedule.queues.get_mut(&group) else {
            continue;
        };
        queue.running = true;
        let jobs = std::mem::take(&mut queue.jobs);
        let mut slot = queue.slot.take();
        drop(schedule);
        let mut failed = false;
        for job in jobs {
            let closes = matches!(job, Job::Close { .. });
            // A panicking state machine stops the node like a failing one: its group's queue
            // must not stay claimed by a worker that is gone.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                replicas.run(&mut slot, job)
            }))
            .unwrap_or_else(|payload| {
                let message = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
                    .to_string();
                Some(Output::Failed {
                    group,
                    error: format!("the state machine panicked: {message}").into(),
                })
            });
            if let Some(output) = ran {
                failed |= matches!(output, Output::Failed { .. });
                // A driver that stopped takes no more outputs; the remaining jobs still run
                // (nothing is half-applied), their answers go nowhere.
                let _ = outputs.send(output);
            }
            if failed {
                break;
            }
            if closes {
                slot = None;
            }
        }
        schedule = lock::mutex(&shared.schedule);
        if failed {
            // A failed state machine stops the node; no more work for anyone.
            schedule.closed = true;
            schedule.ready.clear();
            shared.wake.notify_all();
            return;
        }
        let Some(queue) = schedule.queues.get_mut(&group) else {
            continue;
        };
        queue.running = false;
        if slot.is_none() && queue.jobs.is_empty() {
            schedule.queues.remove(&group);
        } else {
            queue.slot = slot;
            if !queue.jobs.is_empty() {
                schedule.ready.push_back(group);
            }
        }
    }
}

impl Drop for Applier {
    /// Waits for the workers to finish what they were given: once a node has stopped,
    /// nothing more is applied (a restart may open the same state at once). A state machine
    /// stuck inside apply therefore holds the node's shutdown until it returns.
    fn drop(&mut self) {
        if let Self::Threads { shared, threads } = self {
            lock::mutex(&shared.schedule).closed = true;
            shared.wake.notify_all();
            for thread in threads.drain(..) {
                let _ = thread.join();
            }
        }
    }
}
