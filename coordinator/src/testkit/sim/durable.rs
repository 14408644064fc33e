//! A state machine that keeps its own durable state, for the simulation: it makes a group's
//! state durable only every few batches, so a crash loses what it applied since, and the node
//! must replay exactly what follows the durable position (see
//! [`SimConfig::durable_state_machines`](super::SimConfig)). It wraps the simulation's
//! in-memory [`StateMachine`]: a "durable" copy of a group is its snapshot bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use routing::{GroupId, NodeId};

use crate::lock;
use crate::{
    Committed, GroupStateMachine, Position, StateMachine, StateMachineError, StateMachineFactory,
    VShardScope,
};

/// One node's state machine across its crashes and restarts.
pub(super) struct Shell<S> {
    /// What the node's process holds; the simulation's checks read it.
    pub(super) live: Arc<Mutex<S>>,
    /// Where each group's live state is.
    positions: BTreeMap<GroupId, Position>,
    /// Each group's durable state: its position and snapshot bytes.
    durable: BTreeMap<GroupId, (Position, Vec<u8>)>,
    batches: u64,
    /// A group's state is made durable every this many of its batches.
    every: u64,
}

impl<S: StateMachine> Shell<S> {
    pub(super) fn new(state_machine: S, every: u64) -> Self {
        Self {
            live: Arc::new(Mutex::new(state_machine)),
            positions: BTreeMap::new(),
            durable: BTreeMap::new(),
            batches: 0,
            every: every.max(1),
        }
    }

    /// The node crashed: what was not durable is gone. `fresh` is an empty state machine.
    ///
    /// # Errors
    /// A durable copy that does not restore (a bug of the wrapped state machine).
    pub(super) fn crash(&mut self, fresh: S) -> Result<(), crate::CoordinatorError> {
        let mut live = lock::mutex(&self.live);
        *live = fresh;
        for (group, (_, bytes)) in &self.durable {
            live.restore(*group, bytes).map_err(|source| {
                crate::CoordinatorError::StateMachine {
                    group: *group,
                    source,
                }
            })?;
        }
        self.positions = self.durable.iter().map(|(g, (p, _))| (*g, *p)).collect();
        Ok(())
    }
}

/// Opens each group of one node on its [`Shell`].
pub(super) struct Factory<S>(pub(super) Arc<Mutex<Shell<S>>>, pub(super) NodeId);

impl<S: StateMachine> StateMachineFactory for Factory<S> {
    fn open(&self, group: GroupId) -> Result<Box<dyn GroupStateMachine>, StateMachineError> {
        Ok(Box::new(Group {
            group,
            node: self.1,
            shell: self.0.clone(),
        }))
    }
}

struct Group<S> {
    group: GroupId,
    node: NodeId,
    shell: Arc<Mutex<Shell<S>>>,
}

impl<S: StateMachine> GroupStateMachine for Group<S> {
    fn durable_position(&self) -> Option<Position> {
        lock::mutex(&self.shell)
            .durable
            .get(&self.group)
            .map(|(p, _)| *p)
    }

    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        let mut shell = lock::mutex(&self.shell);
        let shell = &mut *shell;
        let mut live = lock::mutex(&shell.live);
        let mut responses = Vec::with_capacity(batch.len());
        for c in batch {
            let last = shell.positions.get(&self.group).copied();
            // The contract under test: never a command the state machine already holds.
            assert!(
                last.is_none_or(|last| c.position > last),
                "{} on {}: handed {:?} after {:?}",
                self.group,
                self.node,
                c.position,
                last
            );
            responses.push(live.apply(self.group, c.position.index, c.command)?);
            shell.positions.insert(self.group, c.position);
        }
        shell.batches += 1;
        if shell.batches.is_multiple_of(shell.every)
            && let Some(&position) = shell.positions.get(&self.group)
        {
            let bytes = live.snapshot(self.group)?;
            shell.durable.insert(self.group, (position, bytes));
        }
        Ok(responses)
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        let shell = lock::mutex(&self.shell);
        let bytes = lock::mutex(&shell.live).snapshot(self.group)?;
        out.write_all(&bytes)?;
        Ok(())
    }

    fn restore(&mut self, covers: Position, input: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut shell = lock::mutex(&self.shell);
        // A snapshot a leader sends covers more than this replica's log, so more than its
        // durable state; restoring an older one throws durable state away to replay it.
        let durable = shell.durable.get(&self.group).map(|(p, _)| *p);
        assert!(
            durable.is_none_or(|d| covers.index > d.index),
            "{} on {}: restored a snapshot at {} over durable state at {:?}",
            self.group,
            self.node,
            covers.index,
            durable
        );
        lock::mutex(&shell.live).restore(self.group, &bytes)?;
        shell.positions.insert(self.group, covers);
        Ok(())
    }

    fn export_vshard(
        &mut self,
        scope: VShardScope,
        out: &mut dyn Write,
    ) -> Result<(), StateMachineError> {
        let shell = lock::mutex(&self.shell);
        let bytes = lock::mutex(&shell.live).export_vshard(self.group, scope)?;
        out.write_all(&bytes)?;
        Ok(())
    }

    fn import_vshard(
        &mut self,
        scope: VShardScope,
        at: Position,
        input: &mut dyn Read,
    ) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut shell = lock::mutex(&self.shell);
        lock::mutex(&shell.live).import_vshard(self.group, scope, &bytes)?;
        shell.positions.insert(self.group, at);
        Ok(())
    }

    fn drop_vshard(&mut self, scope: VShardScope, at: Position) -> Result<(), StateMachineError> {
        let mut shell = lock::mutex(&self.shell);
        lock::mutex(&shell.live).drop_vshard(self.group, scope)?;
        shell.positions.insert(self.group, at);
        Ok(())
    }
}
