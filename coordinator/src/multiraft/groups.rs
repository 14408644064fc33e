//! Which groups this node holds: loading them from the store, creating new ones (one batch,
//! one fsync), and placing or removing replicas as the routing table says.

use super::*;

impl MultiRaft {
    pub(super) fn load_group(
        &mut self,
        group: GroupId,
        storage: GroupStorage,
    ) -> Result<(), CoordinatorError> {
        let applied = storage.snapshot_metadata().map_or(0, |m| m.index);
        let logger = group_logger(self.id.get(), group.get());
        let mut g = Group::new(
            &self.config.raft_config(self.id.get(), applied),
            storage,
            &logger,
            applied,
        )
        .map_err(|source| CoordinatorError::Raft { group, source })?;
        // raft-rs drew this group's first election timeout from the thread RNG: redraw it
        // from ours, or a simulation would not replay.
        Self::draw_election_timeout(&mut self.rng, &self.config, &mut g);
        // The state machine starts from the stored snapshot; raft replays the log after it.
        if let Some(snapshot) = g.stored_snapshot() {
            let index = snapshot.get_metadata().index;
            if index != 0 {
                self.pending_applies.push(Apply::Restore {
                    group,
                    index,
                    data: snapshot.data.to_vec(),
                });
            }
        }
        self.groups.insert(group, g);
        self.dirty.insert(group);
        self.awake.insert(group);
        self.peers_stale = true;
        Ok(())
    }

    /// Creates `group` with `voters` as its first configuration. Every initial replica calls
    /// this with the same voters; the group starts from a snapshot at index 1 holding that
    /// configuration, so replicas added later learn it by snapshot.
    ///
    /// A group the store already holds is left as it is (a restart), so calling this for every
    /// group of the routing table at start-up is safe.
    ///
    /// # Errors
    /// Invalid voters, a storage failure, or raft rejecting the new group.
    pub fn create_group(
        &mut self,
        group: GroupId,
        voters: &[NodeId],
    ) -> Result<(), CoordinatorError> {
        self.create_groups([(group, voters.to_vec())]).map(|_| ())
    }

    /// [`MultiRaft::create_group`] for many groups at once: one batch, one fsync. Returns the
    /// groups that were new (the others already existed in the store).
    ///
    /// # Errors
    /// As [`MultiRaft::create_group`]; no group is created when any is invalid.
    pub fn create_groups(
        &mut self,
        groups: impl IntoIterator<Item = (GroupId, Vec<NodeId>)>,
    ) -> Result<Vec<GroupId>, CoordinatorError> {
        self.create_groups_with_learners(
            groups
                .into_iter()
                .map(|(group, voters)| (group, voters, Vec::new())),
        )
    }

    /// [`MultiRaft::create_groups`] with learners in the first configuration too (the meta
    /// group keeps at most five voters and makes every other node a learner).
    ///
    /// # Errors
    /// As [`MultiRaft::create_group`].
    pub fn create_groups_with_learners(
        &mut self,
        groups: impl IntoIterator<Item = (GroupId, Vec<NodeId>, Vec<NodeId>)>,
    ) -> Result<Vec<GroupId>, CoordinatorError> {
        let mut batch = self.store.batch();
        let mut created = Vec::new();
        for (group, voters, learners) in groups {
            if self.groups.contains_key(&group) {
                continue;
            }
            if group.get() == 0
                || voters.is_empty()
                || voters.iter().chain(&learners).any(|v| v.get() == 0)
            {
                return Err(CoordinatorError::InvalidVoters { group });
            }
            let ids = |nodes: &[NodeId]| nodes.iter().map(|v| v.get()).collect::<Vec<_>>();
            let conf_state = ConfState::from((ids(&voters), ids(&learners)));
            let mut snapshot = Snapshot::default();
            let meta = snapshot.mut_metadata();
            meta.index = BOOTSTRAP_INDEX;
            meta.term = BOOTSTRAP_TERM;
            meta.set_conf_state(conf_state.clone());
            batch.create_group(group, conf_state);
            batch.apply_snapshot(group, snapshot);
            let hs = raft::eraftpb::HardState {
                term: BOOTSTRAP_TERM,
                commit: BOOTSTRAP_INDEX,
                ..Default::default()
            };
            batch.set_hard_state(group, hs);
            created.push(group);
        }
        self.load_new_groups(batch, created)
    }

    /// Creates `group` on a node that is joining it: no configuration yet, it learns everything
    /// from the leader's snapshot once a membership change adds it.
    ///
    /// # Errors
    /// A storage failure, or raft rejecting the new group.
    pub fn create_joining_group(&mut self, group: GroupId) -> Result<(), CoordinatorError> {
        if self.groups.contains_key(&group) {
            return Ok(());
        }
        let mut batch = self.store.batch();
        batch.create_group(group, ConfState::default());
        self.load_new_groups(batch, vec![group]).map(|_| ())
    }

    pub(super) fn load_new_groups(
        &mut self,
        batch: WriteBatch,
        created: Vec<GroupId>,
    ) -> Result<Vec<GroupId>, CoordinatorError> {
        if created.is_empty() {
            return Ok(created);
        }
        if let Some(cycle) = self.inflight.front() {
            // Written on its own, the batch would overtake the cycle's (and poison the store).
            return Err(CoordinatorError::CycleInFlight { cycle: cycle.id.0 });
        }
        // Durable before raft runs on it: a group must never exist in memory only.
        self.store.write(batch)?;
        for group in &created {
            let storage = self.store.group(*group)?;
            self.load_group(*group, storage)?;
        }
        self.spread_first_elections(&created);
        Ok(created)
    }

    /// Removes `group` from this node and deletes its storage (in the next cycle's batch).
    /// Returns the tokens of its pending proposals, whose outcome is now unknown here.
    ///
    /// # Errors
    /// [`CoordinatorError::GroupNotFound`].
    pub fn remove_group(&mut self, group: GroupId) -> Result<Vec<Token>, CoordinatorError> {
        if self.groups.remove(&group).is_none() {
            return Err(CoordinatorError::GroupNotFound { group });
        }
        self.pending.delete_group(group);
        self.conf_changed_at.remove(&group);
        self.durable.remove(&group);
        Ok(self.take_proposals(group, u64::MAX))
    }

    /// Whether the meta group has applied everything this node knows committed (the only
    /// time a node may act on the routing table it holds: see [`MultiRaft::place_replicas`]).
    pub fn meta_caught_up(&self) -> bool {
        self.status(routing::META_GROUP)
            .is_some_and(|s| s.applied >= s.commit)
    }

    /// Records where `table` places each group and which nodes make the cluster: a node
    /// placed on a group is heard by its replicas here before the membership change that adds
    /// it applies, and a node outside the cluster is never heard (see [`crate::Refusal`]).
    /// [`MultiRaft::place_replicas`] calls this; call it too with the table a node starts with.
    pub fn set_placement(&mut self, table: &routing::RoutingTable) {
        self.placement = table
            .groups()
            .map(|(group, placement)| (group, placement.replicas.iter().copied().collect()))
            .collect();
        self.cluster = Some(table.members().map(|(node, _)| node).collect());
    }

    /// Makes this node hold exactly the replicas `table` places on it: joins the groups it
    /// lists this node in (empty, to be filled by the leader's snapshot), deletes the ones it
    /// no longer lists.
    /// Returns the tokens of proposals pending in deleted groups (their outcome is unknown
    /// here). Call between cycles, with a table the meta group applied once
    /// [`MultiRaft::meta_caught_up`]: an older table could delete a replica a later one
    /// placed here again.
    ///
    /// # Errors
    /// Storage failures, or [`CoordinatorError::CycleInFlight`].
    pub fn place_replicas(
        &mut self,
        table: &routing::RoutingTable,
    ) -> Result<Vec<Token>, CoordinatorError> {
        self.set_placement(table);
        let me = self.id;
        let placed: BTreeSet<GroupId> = table.groups_on_node(me).into_iter().collect();
        for group in &placed {
            if !self.groups.contains_key(group) {
                tracing::info!(%group, "routing places a replica here; joining the group");
                self.create_joining_group(*group)?;
            }
        }
        // The meta replica stays, even on a node that left: it is out of the meta group's
        // configuration (so it never campaigns), and it marks the data directory as one that
        // belonged to a cluster, so a restart never bootstraps groups from a config file again.
        let gone: Vec<GroupId> = self
            .groups
            .keys()
            .copied()
            .filter(|g| *g != routing::META_GROUP && !placed.contains(g))
            .collect();
        if !table.is_member(me) {
            tracing::info!(
                "this node is no longer a member; stop it and delete its data directory"
            );
        }
        let mut tokens = Vec::new();
        for group in gone {
            tracing::info!(%group, "routing moved this replica away; deleting it");
            tokens.extend(self.remove_group(group)?);
        }
        Ok(tokens)
    }
}
