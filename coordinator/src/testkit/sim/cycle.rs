//! Moving the simulation forward: one [`SimCluster::step`] of virtual time delivers what the
//! network has due, ticks, and runs every node's cycle (persist, then release messages, then
//! apply, as [`crate::Node`] does) inside a guard that turns a panic into a crashed node and a
//! [`Violation`]. What the cycles show is fed to the monitor and mixed into the trace hash.
//!
//! The unsynced-log model (batches staged and lost on a crash) and the byzantine sender live
//! here too, as both act between or inside these cycles.

use std::panic::{AssertUnwindSafe, catch_unwind};

use routing::{GroupId, NodeId};
use transport::Inbound;

use super::monitor::{Seen, panic_message};
use super::{Completion, SimCluster, SimNode, UNSYNCED_WINDOW, Violation, byzantine};
use crate::node::pending::Done;
use crate::{CoordinatorError, CycleOutput, Event, Role, StateMachine};

impl<S: StateMachine> SimCluster<S> {
    /// Between cycles: a node whose meta group applied a new table joins and deletes
    /// replicas as it says (as [`crate::Node`] does).
    fn place_replicas(&mut self, id: NodeId) -> Result<(), CoordinatorError> {
        if !self.config.meta {
            return Ok(());
        }
        let Some(Some(node)) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        if node.applying.take_table_change().is_some() {
            node.table_pending = true;
        }
        if !node.table_pending || !node.core.meta_caught_up() {
            return Ok(());
        }
        // Group creation writes to the store directly: staged batches go first.
        self.flush_unsynced(Some(id))?;
        let Some(Some(node)) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        node.table_pending = false;
        let table = node.applying.table().clone();
        for token in node.core.place_replicas(&table)? {
            // Their outcome is unknown here: the client keeps waiting and times out.
            node.pending.forget(token);
        }
        self.mix(&[5, self.now, id.get(), table.version()]);
        Ok(())
    }

    /// Advances virtual time by one unit: delivers what is due, ticks on tick boundaries, and
    /// runs every node's cycles until they are idle. A node that panics is recorded as a
    /// [`Violation::NodePanicked`] and crashed.
    ///
    /// # Errors
    /// A node's coordinator or state machine failed.
    pub fn step(&mut self) -> Result<(), CoordinatorError> {
        self.forge()?;
        for (to, inbound) in self.net.deliver(self.now) {
            self.guarded(to, |node, _| {
                match inbound {
                    Inbound::Message { from, envelope } => node.core.step(from, envelope),
                    Inbound::Unreachable { to: peer, group } => {
                        node.core.report_unreachable(peer, group)
                    }
                    Inbound::SnapshotStatus {
                        to: peer,
                        group,
                        delivered,
                    } => node.core.report_snapshot(peer, group, delivered),
                }
                Ok(())
            })?;
        }
        self.check_log_lost();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        if self.now.is_multiple_of(self.config.tick_every) {
            for id in &ids {
                self.guarded(*id, |node, _| {
                    node.core.tick();
                    // As the Node driver does: snapshot the state machine, then compact the log.
                    node.applying.compact(&mut node.core)?;
                    let mut completed = Vec::new();
                    Self::drain_applied(node, &mut completed)?;
                    // Nothing waits on a snapshot; a request it completed times out instead.
                    drop(completed);
                    Ok(())
                })?;
            }
        }
        for id in ids {
            self.run_node(id)?;
            self.place_replicas(id)?;
        }
        self.flush_unsynced(None)?;
        self.observe_leaders();
        self.now += 1;
        Ok(())
    }

    /// Runs `f` on a running node; a panic inside it crashes the node and is recorded.
    fn guarded<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut SimNode<S>, u64) -> Result<R, CoordinatorError>,
    ) -> Result<Option<R>, CoordinatorError> {
        let now = self.now;
        let Some(Some(node)) = self.nodes.get_mut(&id) else {
            return Ok(None);
        };
        match catch_unwind(AssertUnwindSafe(|| f(node, now))) {
            Ok(result) => result.map(Some),
            Err(payload) => {
                self.monitor.violations.push(Violation::NodePanicked {
                    node: id,
                    message: panic_message(payload.as_ref()),
                    at: now,
                });
                self.crash(id);
                Ok(None)
            }
        }
    }

    /// Writes the unsynced batches that are old enough (or all of `only`'s), as the OS would
    /// flush an unsynced log eventually.
    pub(super) fn flush_unsynced(&mut self, only: Option<NodeId>) -> Result<(), CoordinatorError> {
        let now = self.now;
        for (id, node) in &mut self.nodes {
            let Some(node) = node else { continue };
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            while let Some((staged_at, _)) = node.unsynced.front() {
                if only.is_none() && staged_at + UNSYNCED_WINDOW > now {
                    break;
                }
                if let Some((_, staged)) = node.unsynced.pop_front() {
                    node.store.commit(staged)?;
                }
            }
        }
        Ok(())
    }

    /// Every node's view of every group's leader, into the monitor.
    fn observe_leaders(&mut self) {
        let mut seen = Vec::new();
        for (id, node) in &self.nodes {
            let Some(node) = node else { continue };
            for group in node.core.groups() {
                if let Some(status) = node.core.status(group)
                    && status.role == Role::Leader
                {
                    seen.push((group, status.term, *id));
                }
            }
        }
        for (group, term, id) in seen {
            self.monitor.leader(group, term, id, id, self.now);
        }
    }

    /// One cycle of a node: persisted (or, under [`SimConfig::unsynced_log`], only staged)
    /// before its messages are released.
    fn node_cycle(
        node: &mut SimNode<S>,
        unsynced: bool,
        now: u64,
    ) -> Result<Option<CycleOutput>, CoordinatorError> {
        let Some(cycle) = node.core.poll_cycle()? else {
            return Ok(None);
        };
        let staged = cycle.batch;
        if unsynced || staged.info().commit_index_only {
            // A batch that only raises commit indexes is written without a sync, as the
            // store does: a crash before the next synced batch loses it. Under
            // `unsynced_log`, the bug: every batch is only in memory.
            node.unsynced.push_back((now, staged));
        } else {
            // A synced batch makes everything written before it durable too.
            while let Some((_, held)) = node.unsynced.pop_front() {
                node.store.commit(held)?;
            }
            node.store.commit(staged)?;
        }
        // Raft hears the batch is durable (under `unsynced_log`, while it is only in memory).
        let mut messages = cycle.messages;
        messages.extend(node.core.on_persisted(cycle.id)?);
        Ok(Some(CycleOutput {
            messages,
            applies: cycle.applies,
            events: cycle.events,
        }))
    }

    /// Hands what the inline workers produced to the same code a node's driver runs.
    fn drain_applied(
        node: &mut SimNode<S>,
        completed: &mut Vec<crate::node::pending::Completed<()>>,
    ) -> Result<(), CoordinatorError> {
        while let Some(output) = node.applying.try_output() {
            node.applying
                .on_output(&mut node.pending, &mut node.core, output, completed)?;
        }
        Ok(())
    }

    fn run_node(&mut self, id: NodeId) -> Result<(), CoordinatorError> {
        let unsynced = self.config.unsynced_log;
        let produced = self.guarded(id, |node, now| {
            let mut seen = Seen::default();
            for _ in 0..16 {
                let Some(output) = Self::node_cycle(node, unsynced, now)? else {
                    break;
                };
                seen.observe(&output.applies);
                // Applied and answered exactly as the Node driver does.
                node.applying
                    .dispatch(&mut node.pending, output.applies, &mut seen.completed)?;
                for event in &output.events {
                    match *event {
                        Event::LeaderChanged {
                            group,
                            leader: Some(leader),
                            term,
                        } => seen.leaders.push((group, term, leader)),
                        // The client keeps waiting and times out: an indeterminate operation.
                        Event::ProposalOutcomeUnknown { .. } => {}
                        _ => seen
                            .completed
                            .extend(node.applying.on_event(&mut node.pending, event)),
                    }
                }
                Self::drain_applied(node, &mut seen.completed)?;
                seen.messages.extend(output.messages);
            }
            Ok(seen)
        })?;
        let Some(seen) = produced else {
            return Ok(());
        };
        for (group, index, conf) in seen.configurations {
            self.monitor
                .configuration(group, index, (id, conf), self.now);
        }
        for (to, envelope) in seen.messages {
            self.net.send(self.now, id, to, envelope);
        }
        for (key, term, hash) in seen.applied {
            self.mix(&[3, id.get(), key.0.get(), key.1]);
            self.monitor.applied(key, (id, term, hash), self.now);
        }
        for (group, term, leader) in seen.leaders {
            self.monitor.leader(group, term, leader, id, self.now);
        }
        for done in seen.completed {
            self.mix(&[6, id.get(), done.group.get(), done.token]);
            let completion = Completion {
                node: id,
                group: done.group,
                token: done.token,
                result: done.result.map(|done| match done {
                    Done::Response(bytes) => bytes,
                    Done::Read(index) => index.to_be_bytes().to_vec(),
                    Done::Configured(_) => Vec::new(),
                }),
            };
            if self.reserved.contains(&done.token) {
                self.reserved_done.insert(done.token, completion);
            } else {
                self.completions.push(completion);
            }
        }
        Ok(())
    }

    /// Every alarm of a lost log is a violation: raft-rs would have panicked there.
    fn check_log_lost(&mut self) {
        for (id, node) in &mut self.nodes {
            let Some(node) = node else { continue };
            let alarms = node.core.stats().log_behind_leader;
            if alarms > node.log_lost_seen {
                node.log_lost_seen = alarms;
                self.monitor.violations.push(Violation::LogLost {
                    node: *id,
                    at: self.now,
                });
            }
        }
    }

    /// Delivers one forged message, as [`SimConfig::byzantine`] says.
    fn forge(&mut self) -> Result<(), CoordinatorError> {
        use rand::Rng as _;
        if self.config.byzantine <= 0.0 || !self.forger.random_bool(self.config.byzantine.min(1.0))
        {
            return Ok(());
        }
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        let groups: Vec<GroupId> = self.routing.groups().map(|(g, _)| g).collect();
        let Some(forged) = byzantine::forge(&mut self.forger, &nodes, &groups) else {
            return Ok(());
        };
        self.forged += 1;
        self.guarded(forged.to, |node, _| {
            node.core.step(forged.from, forged.envelope);
            Ok(())
        })
        .map(|_| ())
    }
}
