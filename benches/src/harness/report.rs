//! [`BenchReport`]: the figures of one run under the stable names of DESIGN.md ("The
//! benchmark report"), as JSON for scripts and as a table for people.

use serde::Serialize;
use storage::Persist;

use super::{BenchConfig, BenchError, ClusterFigures};

/// Commit latency quantiles, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencyUs {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

/// Where a proposal's time went on its leader, µs (see `coordinator::StageLatencies`): the
/// rest of the end-to-end latency is the wait for the leader's driver and the client's hops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencyBreakdownUs {
    /// Taken by the leader's driver to committed: batching into the cycle's entry, the
    /// leader's persist, replication and the followers' persists.
    pub replicate: LatencyUs,
    /// Committed to answered: the apply queue and the state machine.
    pub apply: LatencyUs,
}

impl LatencyBreakdownUs {
    fn from_stages(stages: &coordinator::StageLatencies) -> Self {
        let us = |q: coordinator::LatencyQuantiles| LatencyUs {
            p50: q.p50_us,
            p99: q.p99_us,
            p999: q.p999_us,
        };
        Self {
            replicate: us(stages.replicate),
            apply: us(stages.apply),
        }
    }
}

/// The run's configuration as the report names it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportConfig {
    /// Nodes.
    pub nodes: u64,
    /// Raft groups.
    pub groups: u64,
    /// vShards.
    pub vshards: u32,
    /// Bytes per command.
    pub command_bytes: usize,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Seconds of load asked for.
    pub duration_s: f64,
    /// Replicas per group.
    pub replication: usize,
    /// Raft tick, ms.
    pub tick_ms: f64,
    /// Log durability: `sync_data`, `sync_all` or `buffer`.
    pub persist: &'static str,
}

impl ReportConfig {
    /// How the report names `config`.
    #[must_use]
    pub fn of(config: &BenchConfig) -> Self {
        ReportConfig {
            nodes: config.nodes,
            groups: config.groups,
            vshards: config.vshards,
            command_bytes: config.command_bytes,
            concurrency: config.concurrency,
            duration_s: config.duration.as_secs_f64(),
            replication: config.replication(),
            tick_ms: config.tick.as_secs_f64() * 1e3,
            persist: persist_name(config.persist),
        }
    }
}

/// The raw baselines, measured in the same run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Baselines {
    /// Raw fjall entries/s, one keyspace, batches of `fjall_batch_entries` commands per
    /// persist, same persist mode.
    pub fjall_append_per_sec: f64,
    /// Raw quinn messages/s of `command_bytes`-byte length-prefixed messages on one stream.
    pub quinn_stream_msgs_per_sec: f64,
    /// Entries per fjall batch: the proposals per persist the cluster achieved (at least 1).
    pub fjall_batch_entries: u64,
}

/// Our proposals/s divided by each baseline.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Ratios {
    /// `proposals_per_sec / fjall_append_per_sec`.
    pub vs_fjall_append: f64,
    /// `proposals_per_sec / quinn_stream_msgs_per_sec`.
    pub vs_quinn_stream: f64,
}

/// One run's report. The first ten fields are DESIGN.md's stable names; the rest are extras.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// Acknowledged proposals per second.
    pub proposals_per_sec: f64,
    /// Commit latency of acknowledged proposals.
    pub latency_us: LatencyUs,
    /// The same split by stage on the leaders (each quantile the highest of any node).
    pub latency_breakdown_us: LatencyBreakdownUs,
    /// Log persists per node per acknowledged proposal (each an fsync when the mode syncs).
    pub fsyncs_per_proposal: f64,
    /// Bytes all nodes sent per acknowledged proposal.
    pub wire_bytes_per_proposal: f64,
    /// Frames all nodes sent per acknowledged proposal.
    pub wire_msgs_per_proposal: f64,
    /// CPU seconds of the whole process (all nodes, clients, QUIC) per 1000 proposals;
    /// `null` where the kernel does not report CPU time.
    pub cpu_sec_per_1k: Option<f64>,
    /// What ran.
    pub config: ReportConfig,
    /// The raw baselines of the same run.
    pub baselines: Baselines,
    /// Our figure over each baseline.
    pub ratios: Ratios,
    /// Proposals acknowledged.
    pub acknowledged: u64,
    /// Proposals that failed or timed out.
    pub failed: u64,
    /// Seconds the load actually ran.
    pub elapsed_s: f64,
    /// Seconds the groups took to elect leaders.
    pub election_s: f64,
    /// Raft log entries per persist, all nodes (one entry may carry several proposals).
    pub entries_per_persist: f64,
    /// Proposals written per persist, all nodes.
    pub proposals_per_persist: f64,
    /// Raft messages per proposal inside the frames (coalesced heartbeats count per group).
    pub wire_raft_msgs_per_proposal: f64,
    /// CPU seconds of the whole process during the load.
    pub cpu_seconds: Option<f64>,
    /// Heartbeats that travelled inside coalesced batches.
    pub heartbeats_coalesced: u64,
    /// Coalesced heartbeat batches sent.
    pub heartbeat_batches: u64,
    /// How to read these figures.
    pub note: String,
}

fn persist_name(persist: Persist) -> &'static str {
    match persist {
        Persist::SyncData => "sync_data",
        Persist::SyncAll => "sync_all",
        Persist::Buffer => "buffer",
    }
}

fn ratio(ours: f64, baseline: f64) -> f64 {
    if baseline > 0.0 { ours / baseline } else { 0.0 }
}

impl BenchReport {
    /// Puts the cluster's figures next to the baselines.
    #[must_use]
    pub fn new(config: &BenchConfig, cluster: &ClusterFigures, baselines: Baselines) -> Self {
        let ack = cluster.acknowledged.max(1) as f64;
        let replication = config.replication();
        let note = format!(
            "one process on one machine ({} cores): all {} nodes share its disk and CPUs, so \
             every entry is written and fsynced {replication} times on the same disk; the \
             baselines run on the same machine, after the cluster stopped",
            std::thread::available_parallelism().map_or(0, usize::from),
            config.nodes,
        );
        BenchReport {
            proposals_per_sec: cluster.proposals_per_sec,
            latency_us: LatencyUs {
                p50: cluster.latency_us[0],
                p99: cluster.latency_us[1],
                p999: cluster.latency_us[2],
            },
            latency_breakdown_us: LatencyBreakdownUs::from_stages(&cluster.stages),
            fsyncs_per_proposal: cluster.fsyncs_per_proposal,
            wire_bytes_per_proposal: cluster.wire_bytes_per_proposal,
            wire_msgs_per_proposal: cluster.wire_msgs_per_proposal,
            cpu_sec_per_1k: cluster.cpu_sec_per_1k,
            config: ReportConfig::of(config),
            ratios: Ratios {
                vs_fjall_append: ratio(cluster.proposals_per_sec, baselines.fjall_append_per_sec),
                vs_quinn_stream: ratio(
                    cluster.proposals_per_sec,
                    baselines.quinn_stream_msgs_per_sec,
                ),
            },
            baselines,
            acknowledged: cluster.acknowledged,
            failed: cluster.failed,
            elapsed_s: cluster.elapsed.as_secs_f64(),
            election_s: cluster.election.as_secs_f64(),
            entries_per_persist: cluster.entries_per_persist,
            proposals_per_persist: cluster.proposals_per_persist,
            wire_raft_msgs_per_proposal: cluster.wire_raft_messages as f64 / ack,
            cpu_seconds: cluster.cpu_seconds,
            heartbeats_coalesced: cluster.heartbeats_coalesced,
            heartbeat_batches: cluster.heartbeat_batches,
            note,
        }
    }

    /// The report as one line of JSON.
    ///
    /// # Errors
    /// [`BenchError::Json`] (not expected: every field is plain data).
    pub fn to_json(&self) -> Result<String, BenchError> {
        Ok(serde_json::to_string(self)?)
    }

    /// The report as a table: our figure, each baseline and the ratio side by side.
    #[must_use]
    pub fn table(&self) -> String {
        let c = &self.config;
        let b = &self.baselines;
        let mut rows: Vec<(String, String, String, String)> = vec![(
            "".into(),
            "pontoon".into(),
            "baseline (same run)".into(),
            "ratio".into(),
        )];
        let ours = format!("{:.0} proposals/s", self.proposals_per_sec);
        rows.push((
            "throughput".into(),
            ours.clone(),
            format!(
                "{:.0} entries/s raw fjall, {} per batch",
                b.fjall_append_per_sec, b.fjall_batch_entries
            ),
            format!("{:.3}", self.ratios.vs_fjall_append),
        ));
        rows.push((
            "".into(),
            "".into(),
            format!(
                "{:.0} msgs/s raw quinn, 1 stream",
                b.quinn_stream_msgs_per_sec
            ),
            format!("{:.3}", self.ratios.vs_quinn_stream),
        ));
        let ms = |us: u64| us as f64 / 1e3;
        let mut single =
            |k: &str, v: String| rows.push((k.into(), v, String::new(), String::new()));
        single(
            "latency p50/p99/p99.9",
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                ms(self.latency_us.p50),
                ms(self.latency_us.p99),
                ms(self.latency_us.p999)
            ),
        );
        let b = &self.latency_breakdown_us;
        for (name, stage) in [
            ("  of which raft (to commit)", b.replicate),
            ("  of which apply (to answer)", b.apply),
        ] {
            single(
                name,
                format!(
                    "{:.2} / {:.2} / {:.2} ms",
                    ms(stage.p50),
                    ms(stage.p99),
                    ms(stage.p999)
                ),
            );
        }
        single(
            "fsyncs per proposal",
            format!(
                "{:.4} per node ({:.1} proposals per persist)",
                self.fsyncs_per_proposal, self.proposals_per_persist
            ),
        );
        single(
            "wire per proposal",
            format!(
                "{:.0} B in {:.3} frames, all nodes",
                self.wire_bytes_per_proposal, self.wire_msgs_per_proposal
            ),
        );
        single(
            "cpu per 1k proposals",
            self.cpu_sec_per_1k
                .map_or_else(|| "unknown".into(), |s| format!("{s:.3} s (whole process)")),
        );
        single(
            "heartbeats coalesced",
            format!(
                "{} in {} messages",
                self.heartbeats_coalesced, self.heartbeat_batches
            ),
        );
        single(
            "acknowledged",
            format!(
                "{} in {:.2} s ({} failed)",
                self.acknowledged, self.elapsed_s, self.failed
            ),
        );
        let w: [usize; 3] = [0, 1, 2].map(|i| {
            rows.iter()
                .map(|r| [&r.0, &r.1, &r.2][i].chars().count())
                .max()
                .unwrap_or(0)
        });
        let mut out = format!(
            "Pontoon bench: {} nodes × {} groups ({} replicas), {} vShards, {}-byte commands, \
             {} clients, {:.0} s, {}\n",
            c.nodes,
            c.groups,
            c.replication,
            c.vshards,
            c.command_bytes,
            c.concurrency,
            c.duration_s,
            c.persist
        );
        for (k, v, base, r) in &rows {
            let line = format!(
                "  {k:<w0$}  {v:<w1$}  {base:<w2$}  {r}",
                w0 = w[0],
                w1 = w[1],
                w2 = w[2]
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push_str(&format!("  ({})\n", self.note));
        out
    }
}
