//! Gathering a cycle: proposals flushed into raft, every group's `Ready` into one batch,
//! committed entries handed out in log order, and the messages that wait for the fsync
//! released once it is done.

use super::*;

impl MultiRaft {
    /// Hands the commands queued since the last cycle to raft, one entry per group (split
    /// when larger than `max_size_per_msg`).
    pub(super) fn flush_proposals(&mut self, events: &mut Vec<Event>) {
        let max_bytes = usize::try_from(self.config.max_size_per_msg).unwrap_or(usize::MAX);
        for group in std::mem::take(&mut self.queued_groups) {
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            let mut queued = std::mem::take(&mut g.queued).into_iter().peekable();
            while queued.peek().is_some() {
                let (mut commands, mut tokens, mut bytes) = (Vec::new(), Vec::new(), 0);
                while let Some((data, _)) = queued.peek() {
                    if !commands.is_empty() && bytes + data.len() > max_bytes {
                        break;
                    }
                    if let Some((data, token)) = queued.next() {
                        bytes += data.len();
                        commands.push(data);
                        tokens.push(token);
                    }
                }
                let (context, data) = if commands.len() == 1 {
                    (Vec::new(), commands.pop().unwrap_or_default())
                } else {
                    (
                        proposal_batch::BATCH_CONTEXT.to_vec(),
                        proposal_batch::encode(commands),
                    )
                };
                // Leadership may have moved since `propose` checked; raft would then forward
                // the entry to the new leader and we could not track it, so drop it instead.
                if let Some((index, term)) = g.propose(context, data) {
                    self.proposals.insert(
                        (group, index),
                        Proposed {
                            term,
                            tokens,
                            conf_change: false,
                        },
                    );
                } else {
                    // Still leading and not handing over: raft refused it for its
                    // uncommitted-bytes limit, an overload the proposer should back off from.
                    let busy = g.is_leader() && !g.is_transferring_leadership();
                    events.extend(tokens.into_iter().map(|token| {
                        if busy {
                            Event::ProposalBusy { group, token }
                        } else {
                            Event::ProposalDropped { group, token }
                        }
                    }));
                }
            }
        }
    }

    /// Gathers the `Ready` of every group into one [`Cycle`], or `None` when there is nothing
    /// to do. See the crate docs for what the driver does with it.
    ///
    /// # Errors
    /// A committed conf change that cannot be decoded or applied.
    pub fn poll_cycle(&mut self) -> Result<Option<Cycle>, CoordinatorError> {
        if !self.has_ready() {
            return Ok(None);
        }
        let id = CycleId(self.next_cycle);
        self.next_cycle += 1;
        let mut batch = std::mem::replace(&mut self.pending, self.store.batch());
        let mut applies = std::mem::take(&mut self.pending_applies);
        let mut events = std::mem::take(&mut self.pending_events);
        self.flush_proposals(&mut events);
        let mut now = std::mem::take(&mut self.own_messages);
        let mut after_persist = Outbox::default();
        let mut readies = Vec::new();
        let mut still_dirty = Vec::new();

        for group in std::mem::take(&mut self.dirty) {
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            if !g.has_ready() {
                continue;
            }
            let mut rd = g.ready();
            self.stats.readies += 1;
            Self::report_leadership(group, g, &mut events);
            for m in rd.take_messages() {
                self.stats.raft_messages += 1;
                now.push(group, m);
            }
            if !rd.snapshot().is_empty() {
                let snapshot = rd.snapshot().clone();
                let index = snapshot.get_metadata().index;
                applies.push(Apply::Restore {
                    group,
                    index,
                    data: snapshot.data.to_vec(),
                });
                batch.apply_snapshot(group, snapshot);
                g.applied = index;
                // Proposals at or below the snapshot may or may not be in it: say so, never
                // "dropped" (the new leader may well have committed them).
                let stale: Vec<_> = self
                    .proposals
                    .range((group, 0)..=(group, index))
                    .map(|(k, _)| *k)
                    .collect();
                for key in stale {
                    if let Some(Proposed { tokens, .. }) = self.proposals.remove(&key) {
                        events.extend(
                            tokens
                                .into_iter()
                                .map(|token| Event::ProposalOutcomeUnknown { group, token }),
                        );
                    }
                }
            }
            let committed = rd.take_committed_entries();
            if !committed.is_empty() {
                self.applied_since_check.insert(group);
            }
            Self::hand_out(
                group,
                g,
                committed,
                &mut self.proposals,
                &mut applies,
                &mut events,
                &mut self.stats,
            )?;
            batch.append_owned(group, rd.take_entries());
            if let Some(hs) = rd.hs() {
                batch.set_hard_state(group, hs.clone());
            }
            for rs in rd.take_read_states() {
                let token = Token::from_be_bytes(
                    rs.request_ctx
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or_default(),
                );
                g.reads.push((rs.index, token));
            }
            Self::release_reads(group, g, &mut events);
            for m in rd.take_persisted_messages() {
                self.stats.raft_messages += 1;
                after_persist.push(group, m);
            }
            readies.push((group, rd.number()));
            g.advance_append_async(rd);
            if g.has_ready() {
                still_dirty.push(group);
            }
        }
        self.dirty.extend(still_dirty);
        for apply in &applies {
            if let Apply::ConfChanged { group, index, .. } = apply {
                self.peers_stale = true;
                self.conf_changed_at.insert(*group, *index);
            }
        }

        // Staged before raft runs again: advance_append_async made these entries "stable",
        // so from here on raft reads them from the store, not from its unstable log.
        let batch = self.store.stage(batch)?;
        let mut count = CoalesceCount::default();
        let messages = now.into_envelopes(&mut count);
        self.count_sent(&messages, count);
        self.stats.cycles += 1;
        self.inflight.push_back(Inflight {
            id,
            readies,
            after_persist,
        });
        Ok(Some(Cycle {
            id,
            batch,
            messages,
            applies,
            events,
        }))
    }

    /// Entries committed in `group`, in log order: conf changes take effect here; commands go to
    /// the state machine, each with the proposal it completes.
    pub(super) fn hand_out(
        group: GroupId,
        g: &mut Group,
        entries: Vec<Entry>,
        proposals: &mut BTreeMap<(GroupId, u64), Proposed>,
        applies: &mut Vec<Apply>,
        events: &mut Vec<Event>,
        stats: &mut CoordinatorStats,
    ) -> Result<(), CoordinatorError> {
        for entry in entries {
            let (index, term) = (entry.index, entry.term);
            let (tokens, conf_change) = match proposals.remove(&(group, index)) {
                Some(p) if p.term == term => (p.tokens, p.conf_change),
                Some(p) => {
                    events.extend(
                        p.tokens
                            .into_iter()
                            .map(|token| Event::ProposalDropped { group, token }),
                    );
                    (Vec::new(), false)
                }
                None => (Vec::new(), false),
            };
            let proposal = tokens.first().copied();
            g.applied = index;
            stats.entries_applied += 1;
            match entry.get_entry_type() {
                EntryType::EntryNormal
                    if entry.context.as_ref() == proposal_batch::BATCH_CONTEXT =>
                {
                    let commands = proposal_batch::decode(&entry.data).map_err(|source| {
                        CoordinatorError::BadBatch {
                            group,
                            index,
                            source,
                        }
                    })?;
                    for (i, data) in commands.into_iter().enumerate() {
                        let proposal = tokens.get(i).copied();
                        applies.push(Apply::Command {
                            group,
                            index,
                            offset: u32::try_from(i).unwrap_or(u32::MAX),
                            term,
                            data,
                            proposal,
                        });
                    }
                }
                EntryType::EntryNormal => {
                    if conf_change {
                        // raft-rs turns a conf change it will not accept (another one is still
                        // pending) into an empty normal entry: it did not take effect.
                        events.extend(
                            tokens
                                .iter()
                                .map(|&token| Event::ProposalDropped { group, token }),
                        );
                        continue;
                    }
                    // Empty entries are the ones new leaders append; nothing to apply.
                    if !entry.data.is_empty() || proposal.is_some() {
                        applies.push(Apply::Command {
                            group,
                            index,
                            offset: 0,
                            term,
                            data: entry.data.to_vec(),
                            proposal,
                        });
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let change = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                        conf_change::decode_v2(&entry.data)
                    } else {
                        conf_change::decode_v1(&entry.data)
                    }
                    .map_err(|source| CoordinatorError::BadConfChange {
                        group,
                        index,
                        source,
                    })?;
                    // A leader that removed itself steps down here (see `Group`).
                    let conf_state = g
                        .apply_conf_change(&change)
                        .map_err(|source| CoordinatorError::Raft { group, source })?;
                    // Not persisted here: the stored conf state is the one at the stored
                    // snapshot, and a restart replays conf changes after it in log order.
                    // Persisting the latest one would make the replay apply them twice.
                    applies.push(Apply::ConfChanged {
                        group,
                        index,
                        conf_state,
                        proposal,
                    });
                }
            }
        }
        Ok(())
    }

    /// Role and leader changes since the last `Ready` of `group`. A leader re-elected in a
    /// new term is a change too: anything the caller keyed on the old term is stale.
    fn report_leadership(group: GroupId, g: &mut Group, events: &mut Vec<Event>) {
        let (role, leader, term) = (g.role(), g.leader(), g.term());
        if role != g.reported_role {
            g.reported_role = role;
            events.push(Event::RoleChanged {
                group,
                role: role.into(),
                term,
            });
        }
        if leader != g.leader || (leader.is_some() && term != g.leader_term) {
            g.leader = leader;
            g.leader_term = term;
            events.push(Event::LeaderChanged {
                group,
                leader,
                term,
            });
        }
    }

    pub(super) fn release_reads(group: GroupId, g: &mut Group, events: &mut Vec<Event>) {
        let applied = g.applied;
        g.reads.retain(|&(index, token)| {
            if index <= applied {
                events.push(Event::ReadReady {
                    group,
                    token,
                    index: applied,
                });
                false
            } else {
                true
            }
        });
    }

    pub(super) fn count_sent(&mut self, messages: &[(NodeId, Envelope)], count: CoalesceCount) {
        self.stats.envelopes += messages.len() as u64;
        self.stats.heartbeats_coalesced += count.heartbeats;
        self.stats.heartbeat_batches += count.batches;
    }

    /// The batch of cycle `id` is durable: returns the messages that had to wait for it.
    /// Cycles must be reported in the order they were produced.
    ///
    /// # Errors
    /// [`CoordinatorError::CycleOutOfOrder`] when `id` is not the oldest cycle in flight.
    pub fn on_persisted(
        &mut self,
        id: CycleId,
    ) -> Result<Vec<(NodeId, Envelope)>, CoordinatorError> {
        match self.inflight.front() {
            Some(front) if front.id == id => {}
            _ => return Err(CoordinatorError::CycleOutOfOrder { cycle: id.0 }),
        }
        let Some(cycle) = self.inflight.pop_front() else {
            return Err(CoordinatorError::CycleOutOfOrder { cycle: id.0 });
        };
        for (group, number) in cycle.readies {
            // A group removed meanwhile has nothing left to advance.
            if let Some(g) = self.groups.get_mut(&group) {
                g.on_persisted(number);
                self.dirty.insert(group);
            }
        }
        let mut count = CoalesceCount::default();
        let messages = cycle.after_persist.into_envelopes(&mut count);
        self.count_sent(&messages, count);
        Ok(messages)
    }

    /// Runs a whole cycle synchronously: persist with [`LogStore::write`], then release the
    /// waiting messages. For tests and simple drivers; [`crate::Node`] overlaps the fsync with
    /// other work instead.
    ///
    /// # Errors
    /// A storage failure (the store is then poisoned) or a conf change error.
    pub fn run_cycle(&mut self) -> Result<Option<CycleOutput>, CoordinatorError> {
        let Some(cycle) = self.poll_cycle()? else {
            return Ok(None);
        };
        let Cycle {
            id,
            batch,
            mut messages,
            applies,
            events,
        } = cycle;
        self.store.commit(batch)?;
        messages.extend(self.on_persisted(id)?);
        Ok(Some(CycleOutput {
            messages,
            applies,
            events,
        }))
    }
}
