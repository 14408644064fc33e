//! One raft group replica: raft-rs's `RawNode` and what the core keeps beside it.
//!
//! **This is the one file to check on a raft-rs upgrade.** Every read or write of raft-rs
//! internals (`RawNode::raft`: its role, term, log, progress tracker, election timer) happens
//! here, behind methods named for what the core means by them; the rest of `multiraft` calls
//! those methods and the `RawNode` cycle (`ready`, `advance_append_async`, `on_persist_ready`).
//! The writes (stepping down after removing itself, forgetting a dead leader, refreshing a
//! woken leader's quorum window, steering the election timer) each rely on raft-rs
//! behaviour that a new version may change: re-read them against its `raft.rs` and
//! `tracker` when upgrading. Admission reads a replica through
//! [`RaftView`](super::admission::RaftView) only.

use raft::eraftpb::{ConfChangeV2, ConfState, Message, Snapshot};
use raft::{RawNode, Ready, SnapshotStatus, StateRole, Storage as _};
use routing::{GroupId, NodeId};
use storage::GroupStorage;

use super::admission::RaftView;
use super::types::{GroupStatus, Token};

/// One group replica on this node.
pub(super) struct Group {
    /// Private to this file: see the module docs.
    raw: RawNode<GroupStorage>,
    /// Highest index handed out for applying.
    pub(super) applied: u64,
    /// The leader last reported in an [`super::Event::LeaderChanged`], and its term.
    pub(super) leader: Option<NodeId>,
    pub(super) leader_term: u64,
    /// The role last reported in an [`super::Event::RoleChanged`].
    pub(super) reported_role: StateRole,
    /// The term the election timeout was last drawn for (see `jitter_election`).
    pub(super) timer_term: u64,
    /// The role the election timeout was last drawn for.
    pub(super) timer_role: StateRole,
    /// Reads whose index is not applied yet.
    pub(super) reads: Vec<(u64, Token)>,
    /// Commands proposed since the last cycle, batched into one entry at the next.
    pub(super) queued: Vec<(Vec<u8>, Token)>,
    /// Quiescent: not ticked until something happens (see the quiescence docs in `quiesce`).
    pub(super) quiet: bool,
    /// Ticks this group has led with nothing to do.
    pub(super) idle_ticks: usize,
    /// Its first election timeout was spread out (see `spread_first_elections`).
    pub(super) first_spread: bool,
    /// Set aside: its state machine failed (see [`super::MultiRaft::quarantine`]). It keeps
    /// its log in step with the leader's but never campaigns and serves no request.
    pub(super) quarantined: bool,
}

impl Group {
    /// Opens the replica on `storage`, whose state machine has applied up to `applied`.
    pub(super) fn new(
        config: &raft::Config,
        storage: GroupStorage,
        logger: &slog::Logger,
        applied: u64,
    ) -> raft::Result<Self> {
        let raw = RawNode::new(config, storage, logger)?;
        let timer_term = raw.raft.term;
        Ok(Self {
            raw,
            applied,
            leader: None,
            leader_term: 0,
            reported_role: StateRole::Follower,
            timer_term,
            timer_role: StateRole::Follower,
            reads: Vec::new(),
            queued: Vec::new(),
            quiet: false,
            idle_ticks: 0,
            first_spread: false,
            quarantined: false,
        })
    }

    /// The replica as the admission rules read it.
    pub(super) fn view(&self) -> &impl RaftView {
        &self.raw
    }

    // --- Reading raft's state -------------------------------------------------------------

    /// This replica's raft role.
    pub(super) fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Whether this replica leads its group.
    pub(super) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Whether, as leader, it is handing leadership over (and refuses proposals meanwhile).
    pub(super) fn is_transferring_leadership(&self) -> bool {
        self.raw.raft.lead_transferee.is_some()
    }

    /// Whether it is campaigning (pre-vote or vote).
    pub(super) fn is_campaigning(&self) -> bool {
        matches!(
            self.raw.raft.state,
            StateRole::PreCandidate | StateRole::Candidate
        )
    }

    /// The leader this replica knows of in its current term (possibly itself).
    pub(super) fn leader(&self) -> Option<NodeId> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(NodeId(leader))
    }

    /// The current term.
    pub(super) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The last index of the log (persisted or not).
    pub(super) fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// The highest index known committed.
    pub(super) fn committed(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The first index still in the log.
    pub(super) fn first_index(&self) -> u64 {
        self.raw.raft.raft_log.first_index()
    }

    /// The term of the entry at `index`.
    pub(super) fn term_at(&self, index: u64) -> raft::Result<u64> {
        self.raw.raft.raft_log.term(index)
    }

    /// The configuration in force.
    pub(super) fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Every node with a progress entry (voters and learners, incoming and outgoing).
    pub(super) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.raw.raft.prs().iter().map(|(id, _)| NodeId(*id))
    }

    /// The snapshot the store holds, if any (what the state machine restarts from).
    pub(super) fn stored_snapshot(&self) -> Option<Snapshot> {
        self.raw.store().snapshot(0, 0).ok()
    }

    /// The status of this replica, as `group`.
    pub(super) fn status(&self, group: GroupId) -> GroupStatus {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        let mut voters: Vec<NodeId> = conf.voters().ids().iter().map(NodeId).collect();
        voters.sort();
        let mut learners: Vec<NodeId> = conf.learners().iter().copied().map(NodeId).collect();
        learners.sort();
        GroupStatus {
            group,
            role: raft.state.into(),
            term: raft.term,
            leader: self.leader(),
            commit: raft.raft_log.committed,
            applied: self.applied,
            first_index: raft.raft_log.first_index(),
            last_index: raft.raft_log.last_index(),
            voters,
            learners,
            joint: !conf.to_conf_state().voters_outgoing.is_empty(),
            quiet: self.quiet,
            set_aside: self.quarantined,
        }
    }

    /// A leader with nothing left to do: every command and read answered, every follower
    /// holding the whole log, no transfer or membership change under way. It may go quiet.
    pub(super) fn is_idle_leader(&self, me: NodeId) -> bool {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return false;
        }
        // Reading the last index takes the group's storage lock: followers, the many, skip it.
        let last = raft.raft_log.last_index();
        self.queued.is_empty()
            && self.reads.is_empty()
            && raft.pending_read_count() == 0
            && raft.lead_transferee.is_none()
            && raft.raft_log.committed == last
            && self.applied == last
            && raft.pending_conf_index <= self.applied
            && raft
                .prs()
                .iter()
                .all(|(id, pr)| *id == me.get() || pr.matched == last)
            // Not in the middle of a joint configuration change.
            && raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
    }

    /// A follower of `leader` that holds everything committed: a quiesce heartbeat from that
    /// leader may put it to sleep.
    pub(super) fn is_caught_up_follower_of(&self, leader: NodeId) -> bool {
        let raft = &self.raw.raft;
        raft.state == StateRole::Follower
            && raft.leader_id == leader.get()
            && raft.raft_log.committed == raft.raft_log.last_index()
    }

    /// The voters of the configuration in force (the incoming one during a joint change).
    pub(super) fn voters(&self) -> Vec<NodeId> {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        conf.voters.into_iter().map(NodeId).collect()
    }

    /// The commit index a heartbeat from this leader may carry to `peer` (what raft would
    /// send: no further than the peer's log is known to reach), if `peer` is in the group.
    pub(super) fn heartbeat_commit(&self, peer: NodeId) -> Option<u64> {
        let raft = &self.raw.raft;
        let pr = raft.prs().get(peer.get())?;
        Some(raft.raft_log.committed.min(pr.matched))
    }

    /// The voter a leadership transfer is under way to, if any.
    pub(super) fn transferring_to(&self) -> Option<NodeId> {
        self.raw.raft.lead_transferee.map(NodeId)
    }

    /// The voter (other than `me`, and not in `down`) best placed to take over leadership:
    /// the one whose log matches the leader's furthest, so the transfer need not wait for it
    /// to catch up. Only a leader knows its followers' progress.
    pub(super) fn best_successor(
        &self,
        me: NodeId,
        down: impl Fn(NodeId) -> bool,
    ) -> Option<NodeId> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let voters = raft.prs().conf().voters().ids();
        raft.prs()
            .iter()
            .filter(|(id, _)| **id != me.get() && voters.contains(**id) && !down(NodeId(**id)))
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| NodeId(*id))
    }

    /// Whether its election timer fires on the next tick (a follower's first round, a
    /// candidate's next one): such a tick needs a campaign token.
    pub(super) fn election_due(&self) -> bool {
        let raft = &self.raw.raft;
        raft.state != StateRole::Leader
            && raft.promotable()
            && raft.election_elapsed + 1 >= raft.randomized_election_timeout()
    }

    /// The election timeout raft drew (or we set) for this term.
    pub(super) fn election_timeout(&self) -> usize {
        self.raw.raft.randomized_election_timeout()
    }

    // --- Driving raft ---------------------------------------------------------------------

    /// Steps a message (already admitted, sender fixed).
    pub(super) fn step(&mut self, m: Message) -> raft::Result<()> {
        self.raw.step(m)
    }

    /// One logical tick; true when it stepped raft (and may have made a `Ready`).
    pub(super) fn tick(&mut self) -> bool {
        self.raw.tick()
    }

    /// Appends one entry as leader. Returns its (index, term), or `None` when this replica is
    /// not the leader or raft refused it (a transfer in progress, too many uncommitted bytes):
    /// a follower would forward it to the leader and we could not track it.
    pub(super) fn propose(&mut self, context: Vec<u8>, data: Vec<u8>) -> Option<(u64, u64)> {
        let last_before = self.last_index();
        let accepted = self.is_leader()
            && self.raw.propose(context, data).is_ok()
            && self.last_index() > last_before;
        accepted.then(|| (self.last_index(), self.term()))
    }

    /// Appends a membership change as leader; (index, term) as [`Group::propose`].
    pub(super) fn propose_conf_change(&mut self, change: &ConfChangeV2) -> Option<(u64, u64)> {
        let last_before = self.last_index();
        let accepted = self.is_leader()
            && self.raw.propose_conf_change(vec![], change.clone()).is_ok()
            && self.last_index() > last_before;
        accepted.then(|| (self.last_index(), self.term()))
    }

    /// Starts a read-index round carrying `context`.
    pub(super) fn read_index(&mut self, context: Vec<u8>) {
        self.raw.read_index(context);
    }

    /// Asks raft (as leader) to hand leadership to `to`.
    pub(super) fn transfer_leader(&mut self, to: NodeId) {
        self.raw.transfer_leader(to.get());
    }

    /// Starts an election now.
    pub(super) fn campaign(&mut self) -> raft::Result<()> {
        self.raw.campaign()
    }

    /// Raft probes `to` again instead of streaming appends to it.
    pub(super) fn report_unreachable(&mut self, to: NodeId) {
        self.raw.report_unreachable(to.get());
    }

    /// A snapshot to `to` was delivered, or failed.
    pub(super) fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to.get(), status);
    }

    /// Applies a committed membership change; returns the configuration now in force.
    /// A leader that removed itself steps down here.
    pub(super) fn apply_conf_change(&mut self, change: &ConfChangeV2) -> raft::Result<ConfState> {
        let conf_state = self.raw.apply_conf_change(change)?;
        self.become_follower_if_removed();
        Ok(conf_state)
    }

    /// raft-rs keeps a leader that removed itself leading without a progress entry of its
    /// own, which it later unwraps: step down now instead.
    fn become_follower_if_removed(&mut self) {
        let raft = &mut self.raw.raft;
        if raft.state == StateRole::Leader && raft.prs().get(raft.id).is_none() {
            let term = raft.term;
            raft.become_follower(term, raft::INVALID_ID);
        }
    }

    // --- The Ready cycle ------------------------------------------------------------------

    /// Whether raft has output for a cycle.
    pub(super) fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Raft's output since the last one.
    pub(super) fn ready(&mut self) -> Ready {
        self.raw.ready()
    }

    /// The `Ready` was staged; raft may go on (its persistence is reported later).
    pub(super) fn advance_append_async(&mut self, rd: Ready) {
        self.raw.advance_append_async(rd);
    }

    /// The `Ready` numbered `number` is durable: its waiting output may go.
    pub(super) fn on_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        self.raw.advance_apply();
    }

    // --- Steering timers (writes into raft's state; see the module docs) ------------------

    /// Sets the election timeout of the current term.
    pub(super) fn set_election_timeout(&mut self, ticks: usize) {
        self.raw.raft.set_randomized_election_timeout(ticks);
    }

    /// Puts the election timer at the brink: the next tick that may campaign does.
    pub(super) fn set_election_elapsed_to_brink(&mut self) {
        let raft = &mut self.raw.raft;
        raft.election_elapsed = raft.randomized_election_timeout().saturating_sub(1);
    }

    /// A leader woken from quiescence: its followers were quiet, not dead (liveness would
    /// have said so), so it gets a fresh check-quorum window instead of stepping down on
    /// stale activity flags.
    pub(super) fn refresh_quorum_window(&mut self) {
        let raft = &mut self.raw.raft;
        if raft.state != StateRole::Leader {
            return;
        }
        let me = raft.id;
        for (id, pr) in raft.mut_prs().iter_mut() {
            if *id != me {
                pr.recent_active = true;
            }
        }
        raft.election_elapsed = 0;
    }

    /// The leader `lost` is dead (node-level liveness waited it out, so no lease is left to
    /// honour): forget it, so voters grant at once, and campaign after `rank_delay(rank)`
    /// ticks less than a full timeout, where `rank` is this node's place among the surviving
    /// voters in node-id order. Does nothing on a replica that is not a surviving voter.
    pub(super) fn forget_lost_leader(
        &mut self,
        me: NodeId,
        lost: NodeId,
        rank_delay: impl Fn(usize) -> usize,
    ) {
        let raft = &mut self.raw.raft;
        let mut voters: Vec<u64> = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|v| *v != lost.get())
            .collect();
        voters.sort_unstable();
        let Some(rank) = voters.iter().position(|v| *v == me.get()) else {
            return;
        };
        raft.leader_id = raft::INVALID_ID;
        let timeout = raft.randomized_election_timeout();
        raft.election_elapsed = timeout.saturating_sub(1 + rank_delay(rank));
    }
}
