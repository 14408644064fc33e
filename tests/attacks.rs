//! The trust-boundary Bar (#17) as a test: every attack class of the issue, one at a time,
//! against three `pontoon node` processes under a steady writer, through real QUIC and TLS
//! (`pontoon-testkit`'s attacks). For each: no node process dies, every node's resident
//! memory grows by at most 256 MiB over its level before the attack, and writes keep being
//! acknowledged throughout; at the end every acknowledged write is read back.
//!
//! Each attack runs `PONTOON_ATTACK_SECS` seconds (default 3; the Bar run is
//! `PONTOON_ATTACK_SECS=60 cargo test --release -p pontoon-cli --test attacks -- --nocapture`).
//! `PONTOON_ATTACK_ONLY=snapshot` runs only the attacks whose name contains that text.
//!
//! The routing table lists four nodes and nodes 2, 3 and 4 run: the attacker holds node 1's
//! certificate, a member with no live link (the strongest stolen identity: the target admits
//! it), node 2's (a running member, for the dial storm against its real link) and a
//! stranger's. Node 4, the highest id, is the target.
//!
//! The nodes run with `max_snapshot_mib = 128` (`PONTOON_MAX_SNAPSHOT_MIB=N` sets another,
//! `=default` leaves it out). A snapshot travels whole in memory today, so
//! a member's stalled snapshot transfers may hold up to the snapshot budget: with the default
//! (1 GiB per peer) the 60 s run measured +465 MiB on the target. Streamed snapshots (#18)
//! remove that dependence.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use pontoon::NodeId;
use testkit::{Arsenal, Attack};

const MIB: u64 = 1 << 20;
/// The Bar: node RSS growth under any one attack.
const RSS_BOUND: u64 = 256 * MIB;
/// The longest the writer may go without an acknowledgement during an attack.
const MAX_ACK_GAP: Duration = Duration::from_secs(5);
const RUNNING: [usize; 3] = [1, 2, 3];
const TARGET: usize = 3;

fn attack_secs() -> u64 {
    std::env::var("PONTOON_ATTACK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Acknowledged writes: key number, and when the acknowledgement came.
type Acks = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Puts `k<n>` = `n` for n = 0, 1, ..., each to the next running node (any node forwards to
/// the leader), resending after an error until it is acknowledged.
fn steady_writer(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
    acks: Acks,
) -> std::thread::JoinHandle<()> {
    let addrs: Vec<_> = RUNNING.iter().map(|&i| cluster.addrs[i]).collect();
    let identity = pontoon::certs::files::load_client(&cluster.certs(), "admin").unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = service::KvClient::new(&identity).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("k{n}"), n.to_string());
                for attempt in 0.. {
                    let node = addrs[(n as usize + attempt) % addrs.len()];
                    let put = client.put(node, key.as_bytes(), value.as_bytes());
                    // Short: a node may redirect to one that does not answer (the attacker holds
                    // node 1's identity, so the target believes node 1 is up).
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), put).await {
                        acks.lock().unwrap().push((n, Instant::now()));
                        break;
                    }
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n += 1;
            }
        });
    })
}

/// The longest stretch of `[from, to]` without an acknowledgement.
fn longest_gap(acks: &[(u64, Instant)], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &(_, at) in acks.iter().filter(|(_, at)| *at >= from && *at <= to) {
        gap = gap.max(at - last);
        last = at;
    }
    gap.max(to - last)
}

/// Waits until the writer gets acknowledgements without pause: until the running nodes have
/// declared node 1 down (node-level liveness), a redirect may still name it.
fn wait_for_steady_writes(acks: &Acks) {
    let start = Instant::now();
    let mut steady = 0;
    while steady < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the writer never got steady acknowledgements"
        );
        std::thread::sleep(Duration::from_millis(500));
        let now = Instant::now();
        let gap = longest_gap(&acks.lock().unwrap(), now - Duration::from_secs(1), now);
        steady = if gap < Duration::from_millis(500) {
            steady + 1
        } else {
            0
        };
    }
    eprintln!("writes steady after {:?}", start.elapsed());
}

#[test]
fn every_attack_class_alone_leaves_the_cluster_serving_its_data_in_bounded_memory() {
    let secs = attack_secs();
    let mut cluster = Cluster::with_groups(4, 8);
    let snapshot_mib = std::env::var("PONTOON_MAX_SNAPSHOT_MIB").unwrap_or_else(|_| "128".into());
    for i in RUNNING {
        if snapshot_mib != "default" {
            cluster.set(i, &format!("max_snapshot_mib = {snapshot_mib}"));
        }
        cluster.start(i);
    }
    cluster.put(1, "warmup", "ok", Duration::from_secs(60));
    let ca = pontoon::certs::files::load_ca(&cluster.certs()).unwrap();
    let arsenal = Arsenal::new(
        ca,
        cluster.addrs[TARGET],
        NodeId(TARGET as u64 + 1),
        NodeId(1),
        NodeId(2),
        1..=8,
    );
    let pids: Vec<u32> = RUNNING.iter().map(|&i| cluster.pid(i).unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let writer = steady_writer(&cluster, stop.clone(), acks.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    wait_for_steady_writes(&acks);
    let mut failures = Vec::new();
    eprintln!("each attack runs {secs} s against node {}", TARGET + 1);
    let only = std::env::var("PONTOON_ATTACK_ONLY").unwrap_or_default();
    for attack in Attack::ALL.into_iter().filter(|a| a.name().contains(&only)) {
        let baseline: Vec<u64> = pids.iter().map(|&p| rss_of(p).unwrap_or(0)).collect();
        let started = Instant::now();
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        let sampler_stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (pids, stop) = (pids.clone(), sampler_stop.clone());
            std::thread::spawn(move || {
                let mut peak = vec![0u64; pids.len()];
                while !stop.load(Ordering::SeqCst) {
                    for (p, &pid) in peak.iter_mut().zip(&pids) {
                        *p = (*p).max(rss_of(pid).unwrap_or(0));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            })
        };
        let report = runtime.block_on(attack.run(&arsenal, until)).unwrap();
        // The attacker is gone: memory held for it must not stay either.
        sampler_stop.store(true, Ordering::SeqCst);
        let peak = sampler.join().unwrap();
        let ended = Instant::now();
        let growth: Vec<u64> = peak
            .iter()
            .zip(&baseline)
            .map(|(p, b)| p.saturating_sub(*b))
            .collect();
        let (acked, gap) = {
            let acks = acks.lock().unwrap();
            let during = acks.iter().filter(|(_, at)| *at >= started).count();
            (during, longest_gap(&acks, started, ended))
        };
        let alive: Vec<bool> = RUNNING
            .iter()
            .map(|&i| cluster.wait_exit(i, Duration::ZERO).is_none())
            .collect();
        eprintln!(
            "{:<36} | {report} | {acked} writes acknowledged, longest gap {} ms | RSS growth MiB (nodes 2, 3, 4): {:?}",
            attack.name(),
            gap.as_millis(),
            growth.iter().map(|g| g / MIB).collect::<Vec<_>>()
        );
        if alive.iter().any(|a| !a) {
            failures.push(format!("{}: a node exited ({alive:?})", attack.name()));
            break;
        }
        if let Some(g) = growth.iter().find(|&&g| g > RSS_BOUND) {
            failures.push(format!("{}: RSS grew by {} MiB", attack.name(), g / MIB));
        }
        if gap > MAX_ACK_GAP {
            failures.push(format!(
                "{}: no write acknowledged for {gap:?}",
                attack.name()
            ));
        }
        if report.sent == 0 {
            failures.push(format!("{}: the attacker sent nothing", attack.name()));
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    // Every acknowledged write is there, read linearizably through every running node.
    let acked = acks.lock().unwrap().clone();
    let identity = pontoon::certs::files::load_client(&cluster.certs(), "admin").unwrap();
    let missing = runtime.block_on(async {
        let client = service::KvClient::new(&identity).unwrap();
        let mut missing = Vec::new();
        for (i, &(n, _)) in acked.iter().enumerate() {
            let node = cluster.addrs[RUNNING[i % RUNNING.len()]];
            let key = format!("k{n}");
            let mut value = None;
            for _ in 0..20 {
                let get = client.get(node, key.as_bytes());
                if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(5), get).await {
                    value = Some(v);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if value != Some(Some(n.to_string().into_bytes())) {
                missing.push((n, value));
            }
        }
        missing
    });
    eprintln!(
        "{} acknowledged writes, {} missing",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    assert!(failures.is_empty(), "{failures:#?}");
}
