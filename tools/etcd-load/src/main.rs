//! `etcd-load`: N closed-loop clients (one put in flight each) of `--value-bytes` values on
//! random keys against an etcd cluster, for `--duration` seconds. Prints writes/s, failures,
//! p50/p99/p99.9 latency and, given `--server-pid`, the servers' CPU seconds per 1k writes:
//! the same workload and the same report as `pontoon load`, so scripts/race_etcd.sh can set
//! the two side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use hdrhistogram::Histogram;
use rand::Rng as _;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop put load against an etcd cluster")]
struct Args {
    /// Client URLs of the members (repeat), e.g. https://127.0.0.1:2379.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
    /// CA bundle (PEM) that signed the members' certificates; with https endpoints.
    #[arg(long)]
    ca: Option<String>,
    /// Client certificate (PEM), for members that require client certificates.
    #[arg(long)]
    cert: Option<String>,
    /// The client certificate's key (PEM).
    #[arg(long)]
    key: Option<String>,
    /// Closed-loop clients, each with one put in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections the clients share (each a client over all endpoints).
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
    /// A server process to charge CPU to (repeat); read from /proc/PID/stat around the load.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let mut options = ConnectOptions::new().with_timeout(Duration::from_secs(10));
    if let Some(ca) = &args.ca {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    let mut clients = Vec::new();
    for _ in 0..args.connections.clamp(1, args.clients.max(1)) {
        clients.push(Client::connect(&args.endpoints, Some(options.clone())).await?);
    }
    // One put before the clock starts: connections up, a leader elected.
    clients[0].put("etcd-load/warm", "x", None).await?;

    let value = vec![b'v'; args.value_bytes];
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(&args.server_pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients.max(1) {
        let mut kv = clients[i % clients.len()].kv_client();
        let (stop, failed, value, keys) = (stop.clone(), failed.clone(), value.clone(), args.keys);
        tasks.push(tokio::spawn(async move {
            let mut latencies = new_histogram();
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{:016x}", rand::rng().random_range(0..keys.max(1)));
                let sent = Instant::now();
                match kv.put(key, value.clone(), None).await {
                    Ok(_) => {
                        let _ = latencies.record(micros(sent.elapsed()));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    // Requests still in flight finish inside the window we count: the clock stops after them.
    let mut latencies = new_histogram();
    for task in tasks {
        latencies.add(task.await?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(&args.server_pids);
    let writes = latencies.len();
    let server_cpu = cpu_before.zip(cpu_after).map(|(b, a)| (a - b).max(0.0));
    let report = serde_json::json!({
        "system": "etcd",
        "clients": args.clients,
        "connections": clients.len(),
        "value_bytes": args.value_bytes,
        "duration_s": elapsed,
        "writes": writes,
        "failed": failed.load(Ordering::Relaxed),
        "writes_per_sec": writes as f64 / elapsed,
        "latency_us": {
            "p50": latencies.value_at_quantile(0.5),
            "p99": latencies.value_at_quantile(0.99),
            "p999": latencies.value_at_quantile(0.999),
        },
        "server_cpu_s": server_cpu,
        "server_cpu_sec_per_1k": server_cpu.filter(|_| writes > 0).map(|s| s * 1000.0 / writes as f64),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "etcd: {:.0} writes/s ({writes} in {elapsed:.1} s, {} failed), p50 {} us, p99 {} us, p99.9 {} us{}",
            writes as f64 / elapsed,
            failed.load(Ordering::Relaxed),
            latencies.value_at_quantile(0.5),
            latencies.value_at_quantile(0.99),
            latencies.value_at_quantile(0.999),
            report["server_cpu_sec_per_1k"]
                .as_f64()
                .map(|c| format!(", server CPU {c:.3} s per 1k writes"))
                .unwrap_or_default(),
        );
    }
    for client in &mut clients {
        let _ = client.delete("etcd-load/warm", None).await;
    }
    Ok(())
}

fn new_histogram() -> Histogram<u64> {
    // 1 us .. 60 s at 3 significant digits; larger values saturate instead of failing.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 60_000_000)
}

/// Summed user + system CPU seconds of `pids` (`None` without pids or if one cannot be read).
/// The same reading as `pontoon load`'s: fields 14 and 15 of /proc/PID/stat, in USER_HZ
/// (fixed at 100 on Linux).
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        total += (utime + stime) as f64 / 100.0;
    }
    Some(total)
}
