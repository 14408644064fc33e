//! `pontoon demo`: the whole job in one command. A cluster over real QUIC with mutual TLS on
//! loopback takes a write workload, loses the node that leads the most groups midway, keeps
//! writing, and at the end proves that every acknowledged write is on every surviving replica.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Args;
use coordinator::testkit::local::{LoadStats, LocalCluster};
use coordinator::testkit::series::SeriesWriter;
use pontoon::{GroupId, NodeId, RoutingTable};
use service::{KvCommand, KvStateMachine};

use super::CliError;

#[derive(Args, Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Nodes in the cluster (each group has min(3, nodes) replicas).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Raft groups.
    #[arg(long, default_value_t = 64)]
    groups: u64,
    /// vShards the keys hash to.
    #[arg(long, default_value_t = 1024)]
    vshards: u32,
    /// Seconds of writing (the busiest leader is killed halfway).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 256)]
    command_bytes: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Milliseconds per raft tick (elections take 10-20 ticks).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Do not kill a node midway.
    #[arg(long)]
    no_kill: bool,
    /// Write the run's time series to this file, one JSON line per second (throughput, p50 and
    /// p99 latency, leaders per node, the kill); `scripts/plot_series.py FILE` plots it.
    #[arg(long, value_name = "FILE")]
    series: Option<std::path::PathBuf>,
}

type Machines = Arc<Mutex<BTreeMap<NodeId, KvStateMachine>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default, Clone, Copy)]
struct NodeCounters {
    fsyncs: u64,
    heartbeats_coalesced: u64,
    heartbeat_batches: u64,
    wire_messages: u64,
}

async fn counters(cluster: &LocalCluster<KvStateMachine>) -> BTreeMap<NodeId, NodeCounters> {
    let mut out = BTreeMap::new();
    for node in cluster.running() {
        if let Ok(s) = node.status().await {
            out.insert(
                node.id(),
                NodeCounters {
                    fsyncs: s.storage.persists,
                    heartbeats_coalesced: s.coordinator.heartbeats_coalesced,
                    heartbeat_batches: s.coordinator.heartbeat_batches,
                    wire_messages: s.transport.frames_sent,
                },
            );
        }
    }
    out
}

pub(crate) fn run(args: DemoArgs) -> Result<ExitCode, CliError> {
    if args.nodes == 0 || args.groups == 0 || args.duration == 0 {
        return Err("--nodes, --groups and --duration must be at least 1".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> Result<ExitCode, CliError> {
    let dir = tempfile::tempdir()?;
    let node_ids: Vec<NodeId> = (1..=args.nodes).map(NodeId).collect();
    let replication = usize::try_from(args.nodes.min(3))?;
    let routing = RoutingTable::uniform(args.vshards, args.groups, &node_ids, replication)?;
    println!("Pontoon demo");
    println!(
        "  {} nodes × {} raft groups ({} replicas each), {} vShards, QUIC + mutual TLS on 127.0.0.1",
        args.nodes, args.groups, replication, args.vshards
    );
    println!(
        "  data and certificates in {} (removed at exit); every cycle fdatasync'd",
        dir.path().display()
    );

    let machines: Machines = Arc::default();
    let registry = machines.clone();
    let tick = Duration::from_millis(args.tick_ms.max(1));
    let started = Instant::now();
    let cluster = Arc::new(
        LocalCluster::start(
            dir.path(),
            routing.clone(),
            move |c| {
                c.tick_interval(tick)
                    .request_timeout(Duration::from_secs(10))
            },
            move |node| {
                let sm = KvStateMachine::new();
                lock(&registry).insert(node, sm.clone());
                sm
            },
        )
        .await?,
    );
    let start_time = started.elapsed();
    let Some(elected) = cluster.wait_for_leaders(Duration::from_secs(30)).await else {
        return Err("groups did not elect leaders within 30 s".into());
    };
    println!(
        "  started in {:.2} s; every group elected a leader {:.2} s later\n",
        start_time.as_secs_f64(),
        elected.as_secs_f64()
    );

    // Every write has its own key, so "acknowledged" means exactly one value to find later.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stats = Arc::new(LoadStats::default());
    let value_len = args.command_bytes;
    let load_start = Instant::now();
    let until = load_start + Duration::from_secs(args.duration);
    let load = {
        let (cluster, acked, stats) = (cluster.clone(), acked.clone(), stats.clone());
        tokio::spawn(async move {
            cluster
                .drive(
                    args.concurrency,
                    until,
                    Duration::from_secs(10),
                    move |n| {
                        (
                            key_of(n),
                            KvCommand::Put {
                                key: key_of(n),
                                value: value_of(n, value_len),
                            }
                            .encode(),
                        )
                    },
                    move |n, _, _| lock(&acked).push(n),
                    stats,
                )
                .await;
        })
    };

    let kill_at = load_start + Duration::from_secs(args.duration) / 2;
    let mut series = match &args.series {
        Some(path) => Some((
            SeriesWriter::create(path, load_start)
                .map_err(|e| format!("--series {}: {e}", path.display()))?,
            load_start + Duration::from_secs(1),
        )),
        None => None,
    };
    let mut killed: Option<(NodeId, usize, Instant)> = None;
    let mut failover: Option<Duration> = None;
    let mut counters_at_kill = BTreeMap::new();
    let interactive = std::io::stdout().is_terminal();
    let mut last = (Instant::now(), 0u64);
    let mut last_print = Instant::now();
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        if !args.no_kill && killed.is_none() && now >= kill_at {
            let counts = cluster.leader_counts().await;
            if let Some((&victim, &led)) = counts.iter().max_by_key(|(_, c)| **c) {
                counters_at_kill = counters(&cluster).await;
                cluster.kill(victim).await;
                killed = Some((victim, led, Instant::now()));
                if let Some((series, _)) = &mut series {
                    series.event(format!("killed {victim}, leader of {led} groups"));
                }
                println!(
                    "{}  ✗ killed {victim}, the leader of {led} groups, at {:.1} s",
                    if interactive { "\r\x1b[2K" } else { "" },
                    load_start.elapsed().as_secs_f64()
                );
            }
        }
        if let (Some((victim, _, at)), None) = (killed, failover) {
            let leaders = cluster.leaders().await;
            // Every data group and the meta group (which `leaders` lists too) led again.
            let groups: Vec<GroupId> = routing.groups().map(|(g, _)| g).collect();
            let mut wanted = groups.iter().chain([&pontoon::routing::META_GROUP]);
            if wanted.all(|g| leaders.contains_key(g)) {
                let took = at.elapsed();
                failover = Some(took);
                if let Some((series, _)) = &mut series {
                    series.event(format!(
                        "every group led again after {:.2} s",
                        took.as_secs_f64()
                    ));
                }
                let moved = groups
                    .iter()
                    .filter(|g| leaders.get(g) != Some(&victim))
                    .count();
                println!(
                    "{}  ✓ every group has a leader again {:.2} s after the kill ({moved} groups led by survivors)",
                    if interactive { "\r\x1b[2K" } else { "" },
                    took.as_secs_f64()
                );
            }
        }
        if let Some((series, next)) = &mut series
            && now >= *next
        {
            series.sample(&cluster, &stats).await?;
            *next += Duration::from_secs(1);
        }
        let acknowledged = stats.acknowledged();
        let rate =
            (acknowledged - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, acknowledged);
        let line = progress_line(&cluster, &stats, load_start.elapsed(), rate).await;
        if interactive {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if last_print.elapsed() >= Duration::from_secs(2) {
            println!("{line}");
            last_print = Instant::now();
        }
    }
    load.await?;
    let elapsed = load_start
        .elapsed()
        .min(Duration::from_secs(args.duration))
        .max(Duration::from_millis(1));
    if interactive {
        println!();
    }

    let end_counters = counters(&cluster).await;
    let verdict = verify(&cluster, &machines, &acked, value_len).await;

    let acknowledged = stats.acknowledged();
    // Survivors' counters at the end, plus the killed node's at the moment it died.
    let victim_counters = killed.and_then(|(victim, _, _)| counters_at_kill.get(&victim).copied());
    let mut totals = NodeCounters::default();
    for c in end_counters.values().chain(victim_counters.iter()) {
        totals.fsyncs += c.fsyncs;
        totals.heartbeats_coalesced += c.heartbeats_coalesced;
        totals.heartbeat_batches += c.heartbeat_batches;
        totals.wire_messages += c.wire_messages;
    }
    let [p50, p99, p999] =
        <[u64; 3]>::try_from(stats.latencies_us(&[0.5, 0.99, 0.999])).unwrap_or([0; 3]);
    let per_node_fsyncs = totals.fsyncs as f64 / args.nodes as f64;
    println!("\nSummary");
    let rows: Vec<(&str, String)> = vec![
        (
            "acknowledged writes",
            format!(
                "{acknowledged} ({} more failed or timed out, never acknowledged)",
                stats.failed.load(std::sync::atomic::Ordering::Relaxed)
            ),
        ),
        (
            "throughput",
            format!(
                "{:.0} proposals/s",
                acknowledged as f64 / elapsed.as_secs_f64()
            ),
        ),
        (
            "latency p50 / p99 / p99.9",
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                p50 as f64 / 1e3,
                p99 as f64 / 1e3,
                p999 as f64 / 1e3
            ),
        ),
        (
            "failover",
            match (killed, failover) {
                (Some((victim, led, _)), Some(t)) => {
                    format!("{:.2} s ({victim} led {led} groups)", t.as_secs_f64())
                }
                (Some((victim, _, _)), None) => {
                    format!("not every group re-elected after killing {victim}")
                }
                _ => "no node killed".to_string(),
            },
        ),
        (
            "fsyncs per proposal",
            format!(
                "{:.4} per node ({:.0} fsyncs per node)",
                per_node_fsyncs / acknowledged.max(1) as f64,
                per_node_fsyncs
            ),
        ),
        (
            "heartbeats coalesced",
            format!(
                "{} heartbeats sent as {} messages ({} messages saved)",
                totals.heartbeats_coalesced,
                totals.heartbeat_batches,
                totals
                    .heartbeats_coalesced
                    .saturating_sub(totals.heartbeat_batches)
            ),
        ),
        ("verification", verdict.summary.clone()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        println!("  {k:<width$}  {v}");
    }
    println!(
        "\n  (all replicas share this machine's disk and cores: every entry is written {replication} times)"
    );
    cluster.shutdown().await;
    if verdict.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("verification FAILED: {}", verdict.summary);
        Ok(ExitCode::FAILURE)
    }
}

fn key_of(n: u64) -> Vec<u8> {
    format!("key-{n:012}").into_bytes()
}

fn value_of(n: u64, len: usize) -> Vec<u8> {
    let mut value = n.to_be_bytes().to_vec();
    value.resize(len.max(8), b'.');
    value
}

async fn progress_line(
    cluster: &LocalCluster<KvStateMachine>,
    stats: &LoadStats,
    elapsed: Duration,
    rate: f64,
) -> String {
    let counts = cluster.leader_counts().await;
    let leaders: Vec<String> = counts
        .iter()
        .map(|(n, c)| format!("n{}:{c}", n.get()))
        .collect();
    let [p50, p99] = <[u64; 2]>::try_from(stats.latencies_us(&[0.5, 0.99])).unwrap_or([0; 2]);
    format!(
        "  {:>5.1} s  {:>7} writes  {:>7.0}/s  p50 {:>6.2} ms  p99 {:>7.2} ms  leaders {}",
        elapsed.as_secs_f64(),
        stats.acknowledged(),
        rate,
        p50 as f64 / 1e3,
        p99 as f64 / 1e3,
        leaders.join(" ")
    )
}

struct Verdict {
    ok: bool,
    summary: String,
}

/// Every acknowledged write must be readable, with its value, on every surviving replica of
/// its group, after a linearizable read barrier on that replica.
async fn verify(
    cluster: &LocalCluster<KvStateMachine>,
    machines: &Machines,
    acked: &Mutex<Vec<u64>>,
    value_len: usize,
) -> Verdict {
    let acked = lock(acked).clone();
    let routing = cluster.routing();
    let mut by_group: BTreeMap<GroupId, Vec<u64>> = BTreeMap::new();
    for n in &acked {
        by_group
            .entry(routing.group_for_key(&key_of(*n)))
            .or_default()
            .push(*n);
    }
    let running: BTreeSet<NodeId> = cluster.running().iter().map(|n| n.id()).collect();
    let mut checked = 0u64;
    let mut missing = Vec::new();
    for (group, writes) in &by_group {
        for replica in routing.replicas(*group).unwrap_or_default() {
            if !running.contains(replica) {
                continue;
            }
            let (Some(node), Some(sm)) =
                (cluster.node(*replica), lock(machines).get(replica).cloned())
            else {
                continue;
            };
            if let Err(e) = node.read_index(*group).await {
                missing.push(format!("read barrier on {replica} for {group}: {e}"));
                continue;
            }
            for n in writes {
                checked += 1;
                if sm.get(*group, &key_of(*n)) != Some(value_of(*n, value_len)) {
                    missing.push(format!("write {n} missing on {replica}"));
                }
            }
        }
    }
    if missing.is_empty() {
        Verdict {
            ok: true,
            summary: format!(
                "OK: {} writes × their surviving replicas = {checked} reads, all present",
                acked.len()
            ),
        }
    } else {
        let first: Vec<_> = missing.iter().take(5).cloned().collect();
        Verdict {
            ok: false,
            summary: format!("{} problems, first: {}", missing.len(), first.join("; ")),
        }
    }
}
