//! The coordinator's figures for operators, through the `metrics` facade. The library installs
//! no recorder: the `pontoon` binary installs a Prometheus one; an embedder picks its own.
//!
//! Most figures are counters the core already keeps ([`CoordinatorStats`](crate::CoordinatorStats),
//! with the store's and the transport's): the driver publishes a [`NodeStatus`] about once a
//! second with [`publish`] (once [`describe`] said a recorder is installed), so the cycle
//! itself never touches the facade. Latencies are real
//! histograms, recorded where they are measured: commit latency (proposal to acknowledgement),
//! apply time per cycle, and the persist of each cycle (in `storage::metrics`). Every name is
//! in the README's "Metrics" table. Labels are bounded (`node`, `peer`, `role`, `reason`,
//! `kind`): never one series per group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use routing::NodeId;

use crate::error::RequestError;
use crate::multiraft::{CoordinatorStats, GroupCounts, Role};
use crate::node::NodeStatus;

/// Counter: proposals submitted to this node.
pub const PROPOSALS: &str = "pontoon_proposals_total";
/// Counter: proposals committed, applied and acknowledged to their caller.
pub const PROPOSALS_ACKNOWLEDGED: &str = "pontoon_proposals_acknowledged_total";
/// Counter, label `reason`: requests that failed (see [`request_failure_reason`]).
pub const REQUESTS_FAILED: &str = "pontoon_requests_failed_total";
/// Counter, label `direction` (`sent`, `served`, `refused`): proposals a follower forwarded
/// to its leader, forwarded proposals this node took as leader, and those it refused.
pub const FORWARDED: &str = "pontoon_forwarded_requests_total";
/// Counter: committed entries handed to the state machine.
pub const ENTRIES_APPLIED: &str = "pontoon_entries_applied_total";
/// Counter: coordinator cycles (one storage batch and one persist each).
pub const CYCLES: &str = "pontoon_cycles_total";
/// Counter: group `Ready`s gathered into cycles.
pub const READIES: &str = "pontoon_readies_total";
/// Counter: raft messages produced by all groups.
pub const RAFT_MESSAGES: &str = "pontoon_raft_messages_total";
/// Counter: envelopes handed to the transport (after coalescing).
pub const ENVELOPES: &str = "pontoon_envelopes_total";
/// Counter: heartbeats that travelled inside coalesced batches.
pub const HEARTBEATS_COALESCED: &str = "pontoon_heartbeats_coalesced_total";
/// Counter, label `reason`: raft messages from peers that were not stepped.
pub const MESSAGES_REFUSED: &str = "pontoon_messages_refused_total";
/// Counter: messages for groups this node does not hold.
pub const UNKNOWN_GROUP_MESSAGES: &str = "pontoon_unknown_group_messages_total";
/// Counter: heartbeats that committed past this replica's log (lost durable log; an alarm).
pub const LOG_BEHIND_LEADER: &str = "pontoon_log_behind_leader_total";
/// Counter: log compactions.
pub const COMPACTIONS: &str = "pontoon_compactions_total";
/// Counter: times a group went quiet.
pub const QUIESCED: &str = "pontoon_groups_quiesced_total";
/// Counter: times a quiet group woke up.
pub const WOKEN: &str = "pontoon_groups_woken_total";
/// Counter: peers declared unresponsive by node-level liveness.
pub const PEERS_LOST: &str = "pontoon_peers_lost_total";
/// Counter: elections started by a timeout.
pub const ELECTIONS_STARTED: &str = "pontoon_elections_started_total";
/// Counter: ticks on which an election had to wait for the node's campaign budget.
pub const ELECTIONS_DEFERRED: &str = "pontoon_elections_deferred_total";
/// Gauge, label `role`: groups in which this node has that role.
pub const GROUPS: &str = "pontoon_groups";
/// Gauge: groups that are quiet (idle, not ticking).
pub const GROUPS_QUIET: &str = "pontoon_groups_quiet";
/// Gauge: groups that are awake.
pub const GROUPS_AWAKE: &str = "pontoon_groups_awake";
/// Gauge: groups whose leader this node does not know.
pub const GROUPS_LEADERLESS: &str = "pontoon_groups_leaderless";
/// Gauge: replicas set aside on this node (their state machine failed to restore a snapshot).
pub const GROUPS_SET_ASIDE: &str = "pontoon_groups_set_aside";
/// Gauge: the routing table version this node has applied.
pub const ROUTING_VERSION: &str = "pontoon_routing_version";
/// Gauge, label `peer`: 1 while node-level liveness hears from the peer, 0 once it is silent
/// past the liveness timeout.
pub const PEER_UP: &str = "pontoon_peer_up";
/// Gauge, label `kind` (`commands`, `inbound`, `requests`): queue depths of the driver.
pub const QUEUE_DEPTH: &str = "pontoon_queue_depth";
/// Histogram: seconds from a proposal's submission to its acknowledgement.
pub const COMMIT_SECONDS: &str = "pontoon_commit_latency_seconds";
/// Histogram: seconds the state machine took to apply one cycle's committed entries.
pub const APPLY_SECONDS: &str = "pontoon_apply_seconds";
/// Histogram: a proposal led here, by stage: `replicate` (taken by the driver to committed)
/// and `apply` (committed to answered).
pub const STAGE_SECONDS: &str = "pontoon_proposal_stage_seconds";

/// Whether [`describe`] was called: until then no recorder is assumed and the driver skips its
/// periodic publication (a status of every group each second), so a process that exports
/// nothing pays nothing for it.
static PUBLISHING: AtomicBool = AtomicBool::new(false);

/// Registers the description and unit of every Pontoon series (the coordinator's, the
/// store's and the transport's) with the installed recorder, and turns on the periodic
/// publication of the counters and gauges. Call it once, after installing a recorder and
/// before starting nodes.
pub fn describe() {
    PUBLISHING.store(true, Ordering::Relaxed);
    storage::metrics::describe();
    transport::metrics::describe();
    describe_counter!(PROPOSALS, "Proposals submitted to this node.");
    describe_counter!(
        PROPOSALS_ACKNOWLEDGED,
        "Proposals committed by a quorum, applied and acknowledged."
    );
    describe_counter!(
        REQUESTS_FAILED,
        "Requests that failed, by reason (not_leader, group_not_found, proposal_dropped, \
         timeout, outcome_unknown, stale_routing, refused, shutting_down)."
    );
    describe_counter!(
        FORWARDED,
        "Proposals forwarded to a leader (sent), served for a follower (served), or refused."
    );
    describe_counter!(
        ENTRIES_APPLIED,
        "Committed entries handed to the state machine."
    );
    describe_counter!(
        CYCLES,
        "Coordinator cycles: one storage batch and one persist each."
    );
    describe_counter!(READIES, "Group Readies gathered into cycles.");
    describe_counter!(RAFT_MESSAGES, "Raft messages produced by all groups.");
    describe_counter!(
        ENVELOPES,
        "Envelopes handed to the transport after coalescing."
    );
    describe_counter!(
        HEARTBEATS_COALESCED,
        "Heartbeats sent inside coalesced batches."
    );
    describe_counter!(
        MESSAGES_REFUSED,
        "Raft messages from peers not stepped, by the rule they broke."
    );
    describe_counter!(
        UNKNOWN_GROUP_MESSAGES,
        "Messages for groups this node does not hold."
    );
    describe_counter!(
        LOG_BEHIND_LEADER,
        "Heartbeats that committed past this replica's log: its durable log was lost."
    );
    describe_counter!(COMPACTIONS, "Log compactions.");
    describe_counter!(QUIESCED, "Times a group went quiet.");
    describe_counter!(WOKEN, "Times a quiet group woke up.");
    describe_counter!(
        PEERS_LOST,
        "Peers declared unresponsive by node-level liveness."
    );
    describe_counter!(ELECTIONS_STARTED, "Elections started by a timeout.");
    describe_counter!(
        ELECTIONS_DEFERRED,
        "Ticks on which an election waited for the node's campaign budget."
    );
    describe_gauge!(GROUPS, "Groups held, by this node's role in them.");
    describe_gauge!(GROUPS_QUIET, "Groups that are quiet (idle, not ticking).");
    describe_gauge!(GROUPS_AWAKE, "Groups that are awake.");
    describe_gauge!(
        GROUPS_LEADERLESS,
        "Groups whose leader this node does not know."
    );
    describe_gauge!(
        GROUPS_SET_ASIDE,
        "Replicas set aside: their state machine failed to restore a snapshot; replace them."
    );
    describe_gauge!(
        ROUTING_VERSION,
        "Version of the routing table this node applied."
    );
    describe_gauge!(
        PEER_UP,
        "1 while node-level liveness hears from the peer, 0 once it is silent too long."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Queue depths of the coordinator's driver, by kind."
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time from a proposal's submission to its acknowledgement."
    );
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "Time the state machine took to apply one cycle's committed entries."
    );
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "A proposal led here, by stage: replicate (taken to committed), apply (to answered)."
    );
}

/// The `reason` label of a failed request.
pub fn request_failure_reason(error: &RequestError) -> &'static str {
    match error {
        RequestError::NotLeader { .. } => "not_leader",
        RequestError::GroupNotFound { .. } => "group_not_found",
        RequestError::ProposalDropped { .. } => "proposal_dropped",
        RequestError::Timeout { .. } => "timeout",
        RequestError::OutcomeUnknown { .. } => "outcome_unknown",
        RequestError::StaleRouting { .. } => "stale_routing",
        RequestError::Refused { .. } => "refused",
        RequestError::ShuttingDown => "shutting_down",
        RequestError::StoppedInFlight { .. } => "stopped_in_flight",
        RequestError::TransferFailed { .. } => "transfer_failed",
        RequestError::QuorumUnreachable { .. } => "quorum_unreachable",
        RequestError::ReplicaFailed { .. } => "replica_failed",
        RequestError::Busy { .. } => "busy",
        RequestError::AppliedEarlier { .. } => "applied_earlier",
    }
}

/// Publishes a node's status: the coordinator's, the store's and the transport's counters,
/// and the groups by role, quiet, awake and leaderless. An embedder driving
/// [`MultiRaft`](crate::MultiRaft) itself may call it; [`crate::Node`] publishes the same
/// figures about once a second through [`publish_counts`], without copying every group's
/// status.
pub fn publish(status: &NodeStatus) {
    let mut groups = GroupCounts::default();
    for g in &status.groups {
        groups.add(g.role, g.quiet, g.leader.is_none(), g.set_aside);
    }
    publish_counts(&NodeFigures {
        node: status.node,
        groups,
        coordinator: &status.coordinator,
        storage: &status.storage,
        transport: &status.transport,
        routing_version: status.routing_version,
    });
}

/// What [`publish_counts`] publishes: a node's figures, its groups only counted.
#[derive(Debug)]
pub struct NodeFigures<'a> {
    /// The node.
    pub node: NodeId,
    /// Its groups, counted ([`MultiRaft::group_counts`](crate::MultiRaft::group_counts)).
    pub groups: GroupCounts,
    /// Coordinator counters.
    pub coordinator: &'a CoordinatorStats,
    /// Log store counters.
    pub storage: &'a storage::StorageStats,
    /// Transport counters.
    pub transport: &'a transport::TransportStats,
    /// The routing-table version the node applied.
    pub routing_version: u64,
}

/// Publishes `figures`, as [`publish`] does a whole status.
pub fn publish_counts(figures: &NodeFigures<'_>) {
    let node = figures.node;
    let n = node.get().to_string();
    let c = figures.coordinator;
    let counters = [
        (ENTRIES_APPLIED, c.entries_applied),
        (CYCLES, c.cycles),
        (READIES, c.readies),
        (RAFT_MESSAGES, c.raft_messages),
        (ENVELOPES, c.envelopes),
        (HEARTBEATS_COALESCED, c.heartbeats_coalesced),
        (UNKNOWN_GROUP_MESSAGES, c.unknown_group_messages),
        (LOG_BEHIND_LEADER, c.log_behind_leader),
        (COMPACTIONS, c.compactions),
        (QUIESCED, c.quiesced),
        (WOKEN, c.woken),
        (PEERS_LOST, c.peers_lost),
        (ELECTIONS_STARTED, c.campaigns_started),
        (ELECTIONS_DEFERRED, c.campaigns_deferred),
    ];
    for (name, value) in counters {
        counter!(name, "node" => n.clone()).absolute(value);
    }
    for (reason, value) in &c.refused_messages {
        counter!(MESSAGES_REFUSED, "node" => n.clone(), "reason" => *reason).absolute(*value);
    }
    let g = &figures.groups;
    for role in [
        Role::Follower,
        Role::Candidate,
        Role::PreCandidate,
        Role::Leader,
    ] {
        let value = g.in_role(role) as f64;
        gauge!(GROUPS, "node" => n.clone(), "role" => role_label(role)).set(value);
    }
    gauge!(GROUPS_QUIET, "node" => n.clone()).set(g.quiet as f64);
    gauge!(GROUPS_AWAKE, "node" => n.clone()).set(g.total.saturating_sub(g.quiet) as f64);
    gauge!(GROUPS_LEADERLESS, "node" => n.clone()).set(g.leaderless as f64);
    gauge!(GROUPS_SET_ASIDE, "node" => n.clone()).set(g.set_aside as f64);
    gauge!(ROUTING_VERSION, "node" => n).set(figures.routing_version as f64);
    storage::metrics::publish(node, figures.storage);
    transport::metrics::publish(node, figures.transport);
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre_candidate",
        Role::Leader => "leader",
    }
}

/// How often the driver publishes its status.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// The driver's side: handles for the series it records as they happen, and when it last
/// published the rest. Handles are taken once, when the driver starts; a recorder installed
/// later is not seen (the binary installs it before it starts the node).
pub(crate) struct DriverMetrics {
    node: NodeId,
    label: String,
    proposals: Counter,
    acknowledged: Counter,
    commit_seconds: Histogram,
    apply_seconds: Histogram,
    replicate_seconds: Histogram,
    apply_wait_seconds: Histogram,
    last_published: Option<Instant>,
}

impl DriverMetrics {
    pub(crate) fn new(node: NodeId) -> Self {
        let label = node.get().to_string();
        Self {
            node,
            proposals: counter!(PROPOSALS, "node" => label.clone()),
            acknowledged: counter!(PROPOSALS_ACKNOWLEDGED, "node" => label.clone()),
            commit_seconds: histogram!(COMMIT_SECONDS, "node" => label.clone()),
            apply_seconds: histogram!(APPLY_SECONDS, "node" => label.clone()),
            replicate_seconds: histogram!(STAGE_SECONDS, "node" => label.clone(), "stage" => "replicate"),
            apply_wait_seconds: histogram!(STAGE_SECONDS, "node" => label.clone(), "stage" => "apply"),
            label,
            last_published: None,
        }
    }

    /// A proposal was submitted.
    pub(crate) fn proposed(&self) {
        self.proposals.increment(1);
    }

    /// A proposal was acknowledged, `latency` after it was submitted (when known).
    /// A proposal was acknowledged `latency` after the driver took it; `stages` splits it
    /// into raft (to commit) and apply (commit to answer) when this node committed it.
    pub(crate) fn acknowledged(
        &self,
        latency: Option<Duration>,
        stages: Option<(Duration, Duration)>,
    ) {
        self.acknowledged.increment(1);
        if let Some(latency) = latency {
            self.commit_seconds.record(latency.as_secs_f64());
        }
        if let Some((replicate, apply)) = stages {
            self.replicate_seconds.record(replicate.as_secs_f64());
            self.apply_wait_seconds.record(apply.as_secs_f64());
        }
    }

    /// A request failed.
    pub(crate) fn failed(&self, error: &RequestError) {
        let reason = request_failure_reason(error);
        counter!(REQUESTS_FAILED, "node" => self.label.clone(), "reason" => reason).increment(1);
    }

    /// One cycle's applies took `elapsed`.
    pub(crate) fn applied(&self, elapsed: Duration) {
        self.apply_seconds.record(elapsed.as_secs_f64());
    }

    /// Whether the periodic publication is due at `now` (and, if so, that it is done); never
    /// before [`describe`] was called.
    pub(crate) fn publish_due(&mut self, now: Instant) -> bool {
        if !PUBLISHING.load(Ordering::Relaxed) {
            return false;
        }
        let due = self
            .last_published
            .is_none_or(|at| now.duration_since(at) >= PUBLISH_INTERVAL);
        if due {
            self.last_published = Some(now);
        }
        due
    }

    /// Publishes what only the driver sees: peer liveness, links and its queue depths.
    pub(crate) fn publish_driver(
        &self,
        liveness: impl Iterator<Item = (NodeId, bool)>,
        links: &[(NodeId, bool)],
        queues: [(&'static str, usize); 3],
    ) {
        for (peer, up) in liveness {
            let value = if up { 1.0 } else { 0.0 };
            gauge!(PEER_UP, "node" => self.label.clone(), "peer" => peer.get().to_string())
                .set(value);
        }
        transport::metrics::publish_links(self.node, links);
        for (kind, depth) in queues {
            gauge!(QUEUE_DEPTH, "node" => self.label.clone(), "kind" => kind).set(depth as f64);
        }
    }
}
