//! A whole cluster: proposals/s and commit latency of 3 durable nodes in this process over
//! QUIC with mutual TLS on loopback, 64 groups, 256-byte commands, every log commit
//! fdatasync'd. One `LocalCluster` is started once and measured with `iter_custom`.
//!
//! `cargo bench -p pontoon-benches --bench cluster`
//!
//! The baselines that bound it run in the storage and transport benches (raw fjall, raw
//! quinn), and all side by side in `pontoon bench`. All three nodes share this machine's disk
//! and cores: every entry is written (and fsynced) three times on the same disk.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coordinator::testkit::local::LocalCluster;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pontoon_benches::harness::{self, BenchConfig, CountingStateMachine};
use tokio::runtime::Runtime;

/// The allocator the `pontoon` binary uses; `--no-default-features` measures the system one.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Proposals per measured iteration of the throughput bench.
const PROPOSALS: u64 = 2_000;
const CONCURRENCY: u64 = 256;
const COMMAND_BYTES: usize = 256;

type Cluster = Arc<LocalCluster<CountingStateMachine>>;

/// Proposes `n` commands with `CONCURRENCY` closed-loop clients; the time until the last is
/// acknowledged.
async fn proposals(cluster: &Cluster, seq: &Arc<AtomicU64>, n: u64) -> Duration {
    let end = seq.load(Ordering::Relaxed) + n;
    let start = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY.min(n) {
        let (cluster, seq) = (cluster.clone(), seq.clone());
        clients.spawn(async move {
            loop {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let mut command = i.to_be_bytes().to_vec();
                command.resize(COMMAND_BYTES, 0xA5);
                cluster
                    .propose(&i.to_be_bytes(), command, Duration::from_secs(10))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    // Clients overshoot `seq` by one each when they stop; keep the sequence dense.
    seq.store(end, Ordering::Relaxed);
    start.elapsed()
}

async fn persists(cluster: &Cluster) -> u64 {
    let mut total = 0;
    for node in cluster.running() {
        total += node.status().await.unwrap().storage.persists;
    }
    total
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = BenchConfig {
        nodes: 3,
        groups: 64,
        command_bytes: COMMAND_BYTES,
        ..BenchConfig::default()
    };
    let (cluster, _) = rt
        .block_on(harness::start_cluster(&config, dir.path()))
        .unwrap();
    let seq = Arc::new(AtomicU64::new(0));

    let mut group = c.benchmark_group("cluster_3n_64g_256B_sync_data");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15));

    group.throughput(Throughput::Elements(PROPOSALS));
    let (persists_before, seq_before) =
        (rt.block_on(persists(&cluster)), seq.load(Ordering::Relaxed));
    group.bench_function(format!("proposals_{CONCURRENCY}_clients"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    t += proposals(&cluster, &seq, PROPOSALS).await;
                }
                t
            })
        });
    });
    let fsyncs = rt.block_on(persists(&cluster)) - persists_before;
    let proposed = seq.load(Ordering::Relaxed) - seq_before;
    eprintln!(
        "cluster: {fsyncs} persists over 3 nodes for {proposed} proposals = {:.5} fsyncs per proposal per node",
        fsyncs as f64 / 3.0 / proposed.max(1) as f64
    );

    group.throughput(Throughput::Elements(1));
    group.bench_function("commit_latency_1_client", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    t += proposals(&cluster, &seq, 1).await;
                }
                t
            })
        });
    });
    group.finish();
    rt.block_on(cluster.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
