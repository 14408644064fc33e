//! Where replicas apply: on worker threads (a node), or inline on the caller (the
//! deterministic simulation). Both run the same [`Worker`] code; a group always goes to the
//! same worker, so its jobs run in the order they were submitted.

use std::collections::HashMap;
use std::sync::Arc;

use routing::{GroupId, VShardId};
use tokio::sync::mpsc::UnboundedSender;

use super::replica::{Item, Replica};
use crate::group_state_machine::{Position, StateMachineFactory};
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
    /// The state machine failed: the node must stop.
    Failed {
        group: GroupId,
        error: StateMachineError,
    },
}

/// The replicas of the groups pinned to one worker.
pub(crate) struct Worker {
    factory: Arc<dyn StateMachineFactory>,
    fences: Fences,
    vshard_count: u32,
    replicas: HashMap<GroupId, (Replica, u64)>,
}

impl Worker {
    pub(crate) fn new(
        factory: Arc<dyn StateMachineFactory>,
        fences: Fences,
        vshard_count: u32,
    ) -> Self {
        Self {
            factory,
            fences,
            vshard_count,
            replicas: HashMap::new(),
        }
    }

    fn replica(&mut self, group: GroupId) -> Result<&mut (Replica, u64), StateMachineError> {
        if !self.replicas.contains_key(&group) {
            let inner = self.factory.open(group)?;
            let replica = Replica::open(group, inner, self.fences.clone(), self.vshard_count);
            self.replicas.insert(group, (replica, 0));
        }
        self.replicas
            .get_mut(&group)
            .ok_or_else(|| format!("{group} has no replica").into())
    }

    /// Runs `job`; `None` for jobs that answer nothing.
    pub(crate) fn run(&mut self, job: Job) -> Option<Output> {
        let group = job.group();
        match self.try_run(job) {
            Ok(output) => output,
            Err(error) => Some(Output::Failed { group, error }),
        }
    }

    fn try_run(&mut self, job: Job) -> Result<Option<Output>, StateMachineError> {
        Ok(match job {
            Job::Apply {
                group,
                seq,
                items,
                tokens,
                through,
            } => {
                let (replica, applied) = self.replica(group)?;
                let replies = replica.apply(&items)?;
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
                })
            }
            Job::Restore {
                group,
                seq,
                index,
                data,
            } => {
                let (replica, applied) = self.replica(group)?;
                replica.restore(index, &data)?;
                *applied = index;
                Some(Output::Applied {
                    group,
                    seq,
                    replies: Vec::new(),
                    commands: 0,
                    durable: replica.durable_position(),
                })
            }
            Job::Snapshot { group } => {
                let (replica, applied) = self.replica(group)?;
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
                let (replica, _) = self.replica(group)?;
                Some(Output::Exported {
                    group,
                    token,
                    result: replica.export_vshard(vshard).map_err(|e| e.to_string()),
                })
            }
            Job::Close { group } => {
                if self.replicas.remove(&group).is_some() {
                    self.factory.removed(group);
                }
                None
            }
        })
    }
}

/// Runs jobs: on worker threads, or inline.
pub(crate) enum Applier {
    /// Each job runs at once on the caller's thread (deterministic).
    Inline {
        worker: Worker,
        outputs: UnboundedSender<Output>,
    },
    /// Jobs go to the worker their group is pinned to.
    Threads {
        queues: Vec<std::sync::mpsc::Sender<Job>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    },
}

impl Applier {
    pub(crate) fn inline(worker: Worker, outputs: UnboundedSender<Output>) -> Self {
        Self::Inline { worker, outputs }
    }

    /// `count` worker threads, each with its own [`Worker`] from `make`.
    ///
    /// # Errors
    /// A thread could not be started.
    pub(crate) fn threads(
        count: usize,
        mut make: impl FnMut() -> Worker,
        outputs: &UnboundedSender<Output>,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let mut worker = make();
            let outputs = outputs.clone();
            let span = tracing::Span::current();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pontoon-apply-{i}"))
                    .spawn(move || {
                        let _entered = span.enter();
                        while let Ok(job) = rx.recv() {
                            if let Some(output) = worker.run(job) {
                                let failed = matches!(output, Output::Failed { .. });
                                if outputs.send(output).is_err() || failed {
                                    break;
                                }
                            }
                        }
                    })?,
            );
            queues.push(tx);
        }
        Ok(Self::Threads { queues, threads })
    }

    pub(crate) fn submit(&mut self, job: Job) {
        match self {
            Self::Inline { worker, outputs } => {
                if let Some(output) = worker.run(job) {
                    // The receiver lives as long as the driver that submits.
                    let _ = outputs.send(output);
                }
            }
            Self::Threads { queues, .. } => {
                // Spread groups evenly whatever their ids look like (Fibonacci hashing).
                let hash = job.group().get().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
                let len = queues.len().max(1) as u64;
                let index = usize::try_from(hash % len).unwrap_or(0);
                if let Some(queue) = queues.get(index) {
                    // A worker that stopped reported why (a failed state machine); the driver
                    // stops on that output.
                    let _ = queue.send(job);
                }
            }
        }
    }
}

impl Drop for Applier {
    /// Waits for the workers to finish what they were given: once a node has stopped,
    /// nothing more is applied.
    fn drop(&mut self) {
        if let Self::Threads { queues, threads } = self {
            queues.clear();
            for thread in threads.drain(..) {
                let _ = thread.join();
            }
        }
    }
}
