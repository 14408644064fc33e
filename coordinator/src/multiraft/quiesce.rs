//! Quiescence and node-level liveness (see the `impl` block's docs).

use super::*;

/// Quiescence (CockroachDB's idea, TiKV's "hibernate"): a leader whose group is fully
/// replicated, applied and idle tells its followers with a last heartbeat marked `quiesce`, and
/// from then on neither side ticks the group: no heartbeats, no election timers. Any proposal,
/// read, conf change or incoming message (other than a heartbeat response) wakes it at once.
/// Failure detection for quiet groups moves to the node: each node pings each peer once per
/// liveness interval; a peer silent for the liveness timeout has its quiet groups woken on
/// every other node, where raft's own election then replaces it.
impl MultiRaft {
    pub(super) fn quiesce_leader(&mut self, group: GroupId) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if g.has_ready() {
            return;
        }
        let (term, commit) = (g.term(), g.committed());
        for peer in g.peers() {
            if peer != self.id {
                self.own_messages.push_quiesce(group, peer, term, commit);
            }
        }
        g.quiet = true;
        g.idle_ticks = 0;
        self.stats.quiesced += 1;
        self.pending_events.push(Event::Quiet { group });
    }

    pub(super) fn wake(
        g: &mut Group,
        stats: &mut CoordinatorStats,
        awake: &mut BTreeSet<GroupId>,
        events: &mut Vec<Event>,
        id: GroupId,
    ) {
        awake.insert(id);
        events.push(Event::Woken { group: id });
        g.quiet = false;
        g.idle_ticks = 0;
        g.refresh_quorum_window();
        stats.woken += 1;
    }

    /// A quiet group whose leader the liveness check declared dead: its followers were all
    /// caught up, so any of them may lead. The node-level detector already waited out the
    /// leader, so there is no lease left to honour: forget the leader (voters grant at once)
    /// and let the surviving voters campaign in node-id order, half an election apart, so one
    /// of them wins the first round instead of splitting the vote.
    pub(super) fn stagger_election(me: NodeId, lost: NodeId, election_tick: usize, g: &mut Group) {
        g.forget_lost_leader(me, lost, |rank| rank * (election_tick / 2).max(1));
    }

    /// Whether node-level liveness holds `peer` down now (never with quiescence off).
    pub fn is_peer_down(&self, peer: NodeId) -> bool {
        self.silent_ticks
            .get(&peer)
            .is_some_and(|silent| *silent >= self.config.liveness_timeout_ticks)
    }

    /// [`RequestError::ReplicaFailed`] for a replica set aside.
    pub(super) fn refuse_quarantined(&self, group: GroupId) -> Result<(), RequestError> {
        if self.groups.get(&group).is_some_and(|g| g.quarantined) {
            return Err(RequestError::ReplicaFailed { group });
        }
        Ok(())
    }

    /// Whether a request to `group` may be handed to raft: the group is held here, enough of
    /// its voters are up (per node-level liveness) to commit anything, and this node leads
    /// it (`lead`) or knows a live leader. A request refused here did not take effect; a
    /// leader that liveness holds down is not named (the caller would only be sent to it).
    pub(super) fn admit_request(&self, group: GroupId, lead: bool) -> Result<(), RequestError> {
        let g = self
            .groups
            .get(&group)
            .ok_or(RequestError::GroupNotFound { group })?;
        self.refuse_quarantined(group)?;
        // The configuration is read only when some peer is down: not on every proposal.
        if self.down_peers().next().is_some() {
            let voters = g.voters();
            let up = voters
                .iter()
                .filter(|v| **v == self.id || !self.is_peer_down(**v))
                .count();
            if !voters.is_empty() && up * 2 <= voters.len() {
                return Err(RequestError::QuorumUnreachable { group });
            }
        }
        let leader = g.leader().filter(|l| !self.is_peer_down(*l));
        if (lead && !g.is_leader()) || leader.is_none() {
            return Err(RequestError::NotLeader { group, leader });
        }
        Ok(())
    }

    /// A peer declared down is heard again (it restarted, or a partition healed). A quiet
    /// group led here sends nothing it could learn its leader from, so each one it holds
    /// gets one quiesce heartbeat now, all in one coalesced message: it knows its leader
    /// within a liveness interval instead of an election timeout (or never, while quiet).
    pub(super) fn remind_leadership(&mut self, peer: NodeId) {
        tracing::debug!(%peer, "a peer declared silent is heard again");
        self.pending_events.push(Event::PeerUp { peer });
        // This side may have lost its leaders too (a partition from the peer that led).
        self.probe_rounds = LEADER_PROBE_ROUNDS;
        for (&id, g) in &self.groups {
            if g.quiet
                && g.is_leader()
                && let Some(commit) = g.heartbeat_commit(peer)
            {
                self.own_messages.push_quiesce(id, peer, g.term(), commit);
            }
        }
    }

    /// The peers node-level liveness holds down now: silent past the liveness timeout (none
    /// with quiescence off, which turns node-level liveness off).
    pub fn down_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let timeout = self.config.liveness_timeout_ticks;
        self.silent_ticks
            .iter()
            .filter(move |(_, silent)| **silent >= timeout)
            .map(|(peer, _)| *peer)
    }

    /// For a few liveness rounds after a start or a reconnection: every replica that follows
    /// no leader asks each voter of its group (one coalesced batch per peer). A quiet leader
    /// answers with a quiesce heartbeat, so a restarted node learns every quiet group's
    /// leader within a liveness interval, even when its peers never missed it; otherwise it
    /// would wait out an election timeout, and its pre-vote would wake the group.
    fn probe_leaders(&mut self) {
        if self.probe_rounds == 0 {
            return;
        }
        self.probe_rounds -= 1;
        for (&id, g) in &self.groups {
            if g.leader().is_some() || g.role() != raft::StateRole::Follower {
                continue;
            }
            let term = g.term();
            for voter in g.voters() {
                if voter != self.id {
                    self.own_messages.push_leader_probe(id, voter, term);
                }
            }
        }
    }

    pub(super) fn tick_liveness(&mut self) {
        if !self.config.quiesce {
            return;
        }
        if self.peers_stale {
            let mut peers = BTreeSet::new();
            for g in self.groups.values() {
                peers.extend(g.peers());
            }
            peers.remove(&self.id);
            self.silent_ticks.retain(|p, _| peers.contains(p));
            for p in peers {
                self.silent_ticks.entry(p).or_insert(0);
            }
            self.peers_stale = false;
        }
        let timeout = self.config.liveness_timeout_ticks;
        let mut lost = Vec::new();
        for (peer, silent) in &mut self.silent_ticks {
            *silent += 1;
            if *silent == timeout {
                lost.push(*peer);
            }
        }
        if self
            .ticks
            .is_multiple_of(self.config.liveness_interval_ticks as u64)
        {
            for peer in self.silent_ticks.keys() {
                self.own_messages.push_liveness(*peer);
                self.stats.liveness_pings += 1;
            }
            self.probe_leaders();
        }
        for peer in lost {
            self.stats.peers_lost += 1;
            self.pending_events.push(Event::PeerDown { peer });
            tracing::debug!(%peer, "peer silent past the liveness timeout; waking the groups it leads");
            for (&id, g) in &mut self.groups {
                if g.quiet && g.leader() == Some(peer) {
                    Self::wake(
                        g,
                        &mut self.stats,
                        &mut self.awake,
                        &mut self.pending_events,
                        id,
                    );
                    Self::stagger_election(self.id, peer, self.config.election_tick, g);
                    self.dirty.insert(id);
                }
            }
        }
    }
}
