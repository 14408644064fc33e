//! `pontoon load`: closed-loop remote write load against a running cluster, the way its
//! clients would see it: N clients, each with one `KvClient::put` in flight, of
//! `--value-bytes` values on random keys, over QUIC + mutual TLS, each put sent to its key's
//! leader. Prints writes/s, failures, p50/p99/p99.9 latency and, given the server processes,
//! their CPU seconds per 1k writes. scripts/race_etcd.sh runs it beside the same workload
//! against etcd.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use benches::harness::pid_cpu_seconds;
use clap::Args;
use hdrhistogram::Histogram;
use pontoon::admin::{NodeClient, RemoteControl};
use pontoon::{GroupId, RoutingTable};
use rand::Rng as _;
use serde::Serialize;
use service::KvClient;

use super::CliError;

/// Latencies above this are recorded as this (a put times out long before).
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Args, Debug)]
pub(crate) struct LoadArgs {
    /// Client address of a running node (repeat for more); with an admin certificate the
    /// leaders of every group are found from it, otherwise puts go round these addresses and
    /// follow the nodes' redirects.
    #[arg(long = "node", value_name = "ADDR", required = true)]
    nodes: Vec<SocketAddr>,
    /// Directory holding ca.pem and the client certificate (`pontoon certs issue --client NAME`).
    #[arg(long)]
    certs: PathBuf,
    /// The client certificate's name.
    #[arg(long, default_value = "admin")]
    client: String,
    /// Closed-loop clients, each with one put in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// QUIC client endpoints the clients share (each holds one connection per node, which
    /// carries its clients' requests as concurrent streams).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Distinct keys the random keys are drawn from.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// A server process to charge CPU to (repeat): /proc/PID/stat is read before and after
    /// the load window.
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

/// What one run measured; printed as one JSON line with `--json`. etcd-load
/// (tools/etcd-load) prints the same keys.
#[derive(Serialize, Debug, PartialEq)]
struct LoadReport {
    system: &'static str,
    clients: usize,
    connections: usize,
    value_bytes: usize,
    /// Whether puts went to their group's leader (known from the routing table) rather than
    /// to any node and a redirect.
    leader_routed: bool,
    duration_s: f64,
    writes: u64,
    failed: u64,
    writes_per_sec: f64,
    latency_us: Quantiles,
    server_cpu_s: Option<f64>,
    server_cpu_sec_per_1k: Option<f64>,
}

#[derive(Serialize, Debug, PartialEq)]
struct Quantiles {
    p50: u64,
    p99: u64,
    p999: u64,
}

impl LoadReport {
    /// The report of `latencies` (one per acknowledged write) taken over `elapsed`, with the
    /// servers' CPU seconds spent meanwhile.
    fn new(
        setup: &Setup,
        latencies: &Histogram<u64>,
        failed: u64,
        elapsed: Duration,
        server_cpu_s: Option<f64>,
    ) -> Self {
        let writes = latencies.len();
        let seconds = elapsed.as_secs_f64();
        Self {
            system: "pontoon",
            clients: setup.clients,
            connections: setup.connections,
            value_bytes: setup.value_bytes,
            leader_routed: setup.leader_routed,
            duration_s: seconds,
            writes,
            failed,
            writes_per_sec: if seconds > 0.0 {
                writes as f64 / seconds
            } else {
                0.0
            },
            latency_us: Quantiles {
                p50: latencies.value_at_quantile(0.5),
                p99: latencies.value_at_quantile(0.99),
                p999: latencies.value_at_quantile(0.999),
            },
            server_cpu_s,
            server_cpu_sec_per_1k: server_cpu_s
                .filter(|_| writes > 0)
                .map(|s| s * 1000.0 / writes as f64),
        }
    }

    fn text(&self) -> String {
        let cpu = self
            .server_cpu_sec_per_1k
            .map(|c| format!(", server CPU {c:.3} s per 1k writes"))
            .unwrap_or_default();
        format!(
            "pontoon: {:.0} writes/s ({} in {:.1} s, {} failed; {} clients over {} connections, \
             {}), p50 {} us, p99 {} us, p99.9 {} us{cpu}",
            self.writes_per_sec,
            self.writes,
            self.duration_s,
            self.failed,
            self.clients,
            self.connections,
            if self.leader_routed {
                "sent to leaders"
            } else {
                "redirected by the nodes"
            },
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
        )
    }
}

/// The shape of a run, as the report repeats it.
struct Setup {
    clients: usize,
    connections: usize,
    value_bytes: usize,
    leader_routed: bool,
}

/// Where a key's put goes: its group's leader when the routing table and leaders are known,
/// else one of the given nodes (which redirects).
struct Router {
    table: Option<RoutingTable>,
    leaders: HashMap<GroupId, SocketAddr>,
    nodes: Vec<SocketAddr>,
}

impl Router {
    /// Asks the cluster for its routing table and group leaders (admin role needed); without
    /// them every put goes to one of `nodes`.
    async fn discover(client: NodeClient, nodes: &[SocketAddr]) -> Self {
        let mut router = Self {
            table: None,
            leaders: HashMap::new(),
            nodes: nodes.to_vec(),
        };
        let control = match RemoteControl::connect(client, nodes, Duration::from_millis(50)).await {
            Ok(control) => control,
            Err(e) => {
                tracing::warn!(error = %e, "no routing table: puts follow the nodes' redirects");
                return router;
            }
        };
        match control.view().await {
            Ok(view) => {
                for group in &view.groups {
                    if let Some(addr) = group.leader.and_then(|l| control.address(l)) {
                        router.leaders.insert(group.group, addr);
                    }
                }
                router.table = control.newest_table().await;
            }
            Err(e) => tracing::warn!(error = %e, "no cluster view: puts follow redirects"),
        }
        control.client().close().await;
        router
    }

    fn leader_routed(&self) -> bool {
        self.table.is_some() && !self.leaders.is_empty()
    }

    /// The address to send `key`'s put to; `spread` picks among the nodes when no leader is
    /// known, so clients without one do not all land on the first node.
    fn target(&self, key: &[u8], spread: usize) -> SocketAddr {
        self.table
            .as_ref()
            .and_then(|t| self.leaders.get(&t.group_for_key(key)))
            .copied()
            .unwrap_or(self.nodes[spread % self.nodes.len()])
    }
}

fn new_histogram() -> Result<Histogram<u64>, CliError> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_LATENCY_US)
}

/// Summed CPU seconds of `pids`; `None` without pids or if one cannot be read.
fn servers_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| pid_cpu_seconds(p)).sum()
}

pub(crate) fn run(args: LoadArgs) -> Result<ExitCode, CliError> {
    if args.clients == 0 || args.connections == 0 {
        return Err("--clients and --connections must be at least 1".into());
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return Err("--duration must be a positive number of seconds".into());
    }
    let identity = pontoon::certs::files::load_client(&args.certs, &args.client)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let router = Arc::new(Router::discover(NodeClient::new(&identity)?, &args.nodes).await);
        let mut clients = Vec::new();
        for _ in 0..args.connections.min(args.clients) {
            clients.push(Arc::new(KvClient::new(&identity)?));
        }
        // One put per client endpoint before the clock starts: connections up, leaders known.
        for (i, client) in clients.iter().enumerate() {
            let key = format!("load/warm/{i}");
            let addr = router.target(key.as_bytes(), i);
            client.put(addr, key.as_bytes(), b"x").await?;
        }
        let setup = Setup {
            clients: args.clients,
            connections: clients.len(),
            value_bytes: args.value_bytes,
            leader_routed: router.leader_routed(),
        };
        let value: Arc<[u8]> = vec![b'v'; args.value_bytes].into();
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let cpu_before = servers_cpu_seconds(&args.server_pids);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(args.clients);
        for i in 0..args.clients {
            let client = clients[i % clients.len()].clone();
            let (router, value, stop, failed) =
                (router.clone(), value.clone(), stop.clone(), failed.clone());
            let (keys, mut latencies) = (args.keys.max(1), new_histogram()?);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = rand::rng().random_range(0..keys);
                    let key = format!("k{n:016x}");
                    let addr = router.target(key.as_bytes(), i);
                    let sent = Instant::now();
                    match client.put(addr, key.as_bytes(), &value).await {
                        Ok(_) => latencies.saturating_record(micros(sent.elapsed())),
                        Err(e) => {
                            tracing::debug!(error = %e, "put failed");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        stop.store(true, Ordering::Relaxed);
        // Puts in flight finish inside the counted window: the clock stops after them.
        let mut latencies = new_histogram()?;
        for task in tasks {
            latencies.add(task.await?)?;
        }
        let elapsed = started.elapsed();
        let cpu_after = servers_cpu_seconds(&args.server_pids);
        let server_cpu = cpu_before.zip(cpu_after).map(|(b, a)| (a - b).max(0.0));
        let report = LoadReport::new(
            &setup,
            &latencies,
            failed.load(Ordering::Relaxed),
            elapsed,
            server_cpu,
        );
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.text());
        }
        for client in &clients {
            client.close().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            clients: 8,
            connections: 2,
            value_bytes: 256,
            leader_routed: true,
        }
    }

    #[test]
    fn report_quantiles_rate_and_cpu_per_1k_come_from_the_recorded_writes() {
        let mut latencies = new_histogram().unwrap();
        // 1000 writes: 1..=1000 us, so p50 is 500 us and p99.9 is 999 us.
        for us in 1..=1000 {
            latencies.record(us).unwrap();
        }
        let report = LoadReport::new(&setup(), &latencies, 3, Duration::from_secs(2), Some(0.5));
        assert_eq!(report.writes, 1000);
        assert_eq!(report.failed, 3);
        assert!((report.writes_per_sec - 500.0).abs() < 1e-9);
        assert_eq!(report.latency_us.p50, 500);
        assert_eq!(report.latency_us.p99, 990);
        assert_eq!(report.latency_us.p999, 999);
        assert_eq!(report.server_cpu_sec_per_1k, Some(0.5));
    }

    #[test]
    fn report_without_writes_or_pids_has_no_cpu_per_1k() {
        let latencies = new_histogram().unwrap();
        let none = LoadReport::new(&setup(), &latencies, 0, Duration::from_secs(1), Some(1.0));
        assert_eq!(none.server_cpu_sec_per_1k, None);
        let mut latencies = new_histogram().unwrap();
        latencies.record(10).unwrap();
        let no_pids = LoadReport::new(&setup(), &latencies, 0, Duration::from_secs(1), None);
        assert_eq!(no_pids.server_cpu_sec_per_1k, None);
    }

    #[test]
    fn report_json_keeps_the_keys_the_race_script_reads() {
        let mut latencies = new_histogram().unwrap();
        latencies.record(100).unwrap();
        let report = LoadReport::new(&setup(), &latencies, 0, Duration::from_secs(1), Some(0.1));
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        for key in [
            "writes_per_sec",
            "failed",
            "server_cpu_sec_per_1k",
            "clients",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["latency_us"]["p999"], 100);
        assert_eq!(json["system"], "pontoon");
    }

    #[test]
    fn latencies_beyond_the_bound_saturate_instead_of_failing() {
        assert_eq!(micros(Duration::from_secs(3600)), MAX_LATENCY_US);
        assert_eq!(micros(Duration::ZERO), 1);
    }

    #[test]
    fn router_with_a_table_sends_each_key_to_its_groups_leader() {
        let nodes = [pontoon::NodeId(1), pontoon::NodeId(2), pontoon::NodeId(3)];
        let table = RoutingTable::uniform(64, 4, &nodes, 3).unwrap();
        let leader_of =
            |g: GroupId| -> SocketAddr { format!("127.0.0.1:{}", 7000 + g.get()).parse().unwrap() };
        let leaders: HashMap<GroupId, SocketAddr> =
            table.groups().map(|(g, _)| (g, leader_of(g))).collect();
        let fallback: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let router = Router {
            table: Some(table.clone()),
            leaders,
            nodes: vec![fallback],
        };
        assert!(router.leader_routed());
        let mut seen = std::collections::HashSet::new();
        for n in 0..200u32 {
            let key = format!("k{n:016x}");
            let addr = router.target(key.as_bytes(), n as usize);
            assert_eq!(addr, leader_of(table.group_for_key(key.as_bytes())));
            seen.insert(addr);
        }
        assert!(
            seen.len() > 1,
            "random keys reach more than one group's leader"
        );
    }

    #[test]
    fn router_without_a_table_spreads_puts_over_the_given_nodes() {
        let nodes: Vec<SocketAddr> = vec![
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7002".parse().unwrap(),
        ];
        let router = Router {
            table: None,
            leaders: HashMap::new(),
            nodes: nodes.clone(),
        };
        assert!(!router.leader_routed());
        assert_eq!(router.target(b"a", 0), nodes[0]);
        assert_eq!(router.target(b"a", 1), nodes[1]);
        assert_eq!(router.target(b"a", 2), nodes[0]);
    }
}
