//! The storage-engine contract: one state machine per group replica, made by a factory, fed
//! batches of committed commands with their exact positions, on apply workers.
//!
//! This is the contract for a database that keeps its own durable state (an LSM engine, a
//! B-tree): it applies batches, reports how far it has durably applied so a restart replays
//! only what follows, and writes and reads snapshots and vShard exports as byte streams. The
//! simpler [`StateMachine`] (one in-memory object for every group) is adapted to it by
//! [`StateMachines::shared`].
//!
//! # Threading
//! A node runs [`RaftConfig::apply_workers`](crate::RaftConfig) apply worker threads. Each
//! group is pinned to one worker (by its id), so one group's commands are applied in log
//! order by one thread, while different groups apply in parallel and never on the
//! coordinator's task: a slow state machine delays its own group's responses, not the
//! ticks, heartbeats, elections or commits of the others.
//!
//! # Restart
//! [`GroupStateMachine::durable_position`] says how far the group's state is durable. On start,
//! the node skips every command at or before it (commands batched into one raft entry share
//! the index and differ by [`Position::offset`], so nothing is skipped twice or missed), and
//! it never compacts the log past it. A state machine that keeps nothing on disk reports
//! `None` and is rebuilt from the stored snapshot and the log, as before.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use routing::{GroupId, VShardId};

use crate::lock;
use crate::state_machine::{StateMachine, StateMachineError, VShardScope};

/// Where one committed command sits in its group's log: the raft index of its entry and its
/// place inside that entry (proposals made together share one entry). Ordered as the log is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The raft log index of the entry holding the command.
    pub index: u64,
    /// The command's place inside the entry, from 0.
    pub offset: u32,
}

impl Position {
    /// The position after every command of the entry at `index`: what a snapshot taken at
    /// `index` covers.
    #[must_use]
    pub fn end_of(index: u64) -> Self {
        Self {
            index,
            offset: u32::MAX,
        }
    }
}

/// One committed command, as a group's state machine receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed<'a> {
    /// The group.
    pub group: GroupId,
    /// Its exact place in the group's log (unique within the group).
    pub position: Position,
    /// The vShard the proposer routed it by, when it was routed by key.
    pub vshard: Option<VShardId>,
    /// The command bytes, as proposed.
    pub command: &'a [u8],
}

/// One group replica's state, for a database that owns its storage.
///
/// Calls for one group come from one thread at a time, in log order. Applying must be
/// deterministic: every replica applies the same commands and must reach the same state.
/// Every error stops the node (fail-stop): a replica that cannot apply a committed command
/// must not keep acknowledging writes. A command the database rejects should return a
/// response saying so instead.
pub trait GroupStateMachine: Send + 'static {
    /// The last position whose effect is durable in this state machine's own storage, or
    /// `None` when it keeps nothing durable (the node then restores it from the stored
    /// snapshot and replays the log). Read when the group opens and after each batch: the log
    /// is never compacted past it.
    fn durable_position(&self) -> Option<Position> {
        None
    }

    /// Applies `batch`, in order, and returns one response per command (the bytes its
    /// proposer receives), in the same order.
    ///
    /// # Errors
    /// Failures that make the replica unusable (disk full, corruption).
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError>;

    /// Writes the whole state, as of the last applied command, to `out`. Used to compact the
    /// log and to bring a lagging or new replica up to date.
    ///
    /// # Errors
    /// When the state cannot be read or written out.
    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError>;

    /// Replaces the whole state with the snapshot read from `input` (nothing to read: the
    /// empty state), which covers everything up to `covers`. The bytes come from a peer:
    /// reject malformed input with an error, never panic.
    ///
    /// # Errors
    /// A malformed snapshot, or the state cannot be written.
    fn restore(&mut self, covers: Position, input: &mut dyn Read) -> Result<(), StateMachineError>;

    /// Writes the data of one vShard to `out`, for moving it to another group. Called after
    /// the vShard was fenced (no command for it is applied here any more) on a replica that
    /// has applied everything committed. The default refuses.
    ///
    /// # Errors
    /// When the data cannot be read, or moves are not supported.
    fn export_vshard(
        &mut self,
        scope: VShardScope,
        out: &mut dyn Write,
    ) -> Result<(), StateMachineError> {
        let _ = out;
        Err(format!(
            "this state machine cannot export {}: implement GroupStateMachine::export_vshard",
            scope.vshard
        )
        .into())
    }

    /// Adds (replacing) one vShard's data, as [`GroupStateMachine::export_vshard`] wrote it on
    /// the old group. Applied from the log at `at`, like a command: deterministic, and `input`
    /// came from a peer (reject malformed data, never panic). The default refuses.
    ///
    /// # Errors
    /// A malformed export, or moves are not supported (the node then stops: an import that
    /// cannot be applied would make replicas diverge).
    fn import_vshard(
        &mut self,
        scope: VShardScope,
        at: Position,
        input: &mut dyn Read,
    ) -> Result<(), StateMachineError> {
        let _ = (at, input);
        Err(format!(
            "this state machine cannot import {}: implement GroupStateMachine::import_vshard",
            scope.vshard
        )
        .into())
    }

    /// Drops the data of a vShard that moved away, applied from the log at `at`. The default
    /// keeps it (it is unreachable: the group refuses every command for the vShard).
    ///
    /// # Errors
    /// When the data cannot be removed.
    fn drop_vshard(&mut self, scope: VShardScope, at: Position) -> Result<(), StateMachineError> {
        let _ = (scope, at);
        Ok(())
    }
}

/// Makes the state machine of each group replica a node holds.
pub trait StateMachineFactory: Send + Sync + 'static {
    /// Opens `group`'s state machine on this node: its durable state if it has some (see
    /// [`GroupStateMachine::durable_position`]), else an empty one. Called on an apply worker
    /// when the group first has work.
    ///
    /// # Errors
    /// When the state cannot be opened; the node stops.
    fn open(&self, group: GroupId) -> Result<Box<dyn GroupStateMachine>, StateMachineError>;

    /// The routing table moved `group`'s replica away from this node: its state may be
    /// deleted. The default keeps it.
    fn removed(&self, group: GroupId) {
        let _ = group;
    }

    /// Checks the bytes of a snapshot of `group` a peer sent (what
    /// [`GroupStateMachine::snapshot`] wrote), before raft installs it: an error refuses the
    /// snapshot, and the sender retries later. Without this check a snapshot that
    /// [`GroupStateMachine::restore`] then refuses sets this node's replica aside
    /// ([`crate::RequestError::ReplicaFailed`]). Runs on the node's coordinator task, so it
    /// must be a quick, pure check of the bytes. The default accepts everything.
    ///
    /// # Errors
    /// Bytes `restore` would refuse.
    fn check_snapshot(&self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let _ = (group, snapshot);
        Ok(())
    }
}

/// What a node applies committed commands to: per-group state machines from a
/// [`StateMachineFactory`], or one [`StateMachine`] shared by every group.
///
/// Every `StateMachine` converts into it, so `Node::start(…, my_state_machine)` keeps working.
#[derive(Clone)]
pub struct StateMachines(pub(crate) Arc<dyn StateMachineFactory>);

impl std::fmt::Debug for StateMachines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateMachines")
    }
}

impl StateMachines {
    /// One state machine per group replica, made by `factory`.
    pub fn per_group(factory: impl StateMachineFactory) -> Self {
        Self(Arc::new(factory))
    }

    /// One [`StateMachine`] for every group, behind a lock: groups still apply on their
    /// workers, but one at a time. Right for an in-memory map; a database with real storage
    /// should implement [`StateMachineFactory`] so its groups apply in parallel.
    pub fn shared<S: StateMachine>(state_machine: S) -> Self {
        Self::shared_arc(Arc::new(Mutex::new(state_machine)))
    }

    /// [`StateMachines::shared`] over a state machine the caller keeps a handle on.
    pub fn shared_arc<S: StateMachine>(state_machine: Arc<Mutex<S>>) -> Self {
        Self(Arc::new(Shared(state_machine)))
    }
}

impl<S: StateMachine> From<S> for StateMachines {
    fn from(state_machine: S) -> Self {
        Self::shared(state_machine)
    }
}

/// The adapter behind [`StateMachines::shared`].
struct Shared<S>(Arc<Mutex<S>>);

impl<S: StateMachine> StateMachineFactory for Shared<S> {
    fn open(&self, group: GroupId) -> Result<Box<dyn GroupStateMachine>, StateMachineError> {
        Ok(Box::new(SharedGroup {
            group,
            inner: self.0.clone(),
        }))
    }

    fn check_snapshot(&self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        S::check_snapshot(group, snapshot)
    }
}

struct SharedGroup<S> {
    group: GroupId,
    inner: Arc<Mutex<S>>,
}

impl<S: StateMachine> GroupStateMachine for SharedGroup<S> {
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        let mut inner = lock::mutex(&self.inner);
        batch
            .iter()
            .map(|c| inner.apply(self.group, c.position.index, c.command))
            .collect()
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        let bytes = lock::mutex(&self.inner).snapshot(self.group)?;
        out.write_all(&bytes)?;
        Ok(())
    }

    fn restore(&mut self, _: Position, input: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        lock::mutex(&self.inner).restore(self.group, &bytes)
    }

    fn export_vshard(
        &mut self,
        scope: VShardScope,
        out: &mut dyn Write,
    ) -> Result<(), StateMachineError> {
        let bytes = lock::mutex(&self.inner).export_vshard(self.group, scope)?;
        out.write_all(&bytes)?;
        Ok(())
    }

    fn import_vshard(
        &mut self,
        scope: VShardScope,
        _: Position,
        input: &mut dyn Read,
    ) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        lock::mutex(&self.inner).import_vshard(self.group, scope, &bytes)
    }

    fn drop_vshard(&mut self, scope: VShardScope, _: Position) -> Result<(), StateMachineError> {
        lock::mutex(&self.inner).drop_vshard(self.group, scope)
    }
}
