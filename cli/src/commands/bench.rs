//! `pontoon bench`: a local cluster over QUIC with mutual TLS under closed-loop load, next to
//! the raw baselines that bound it (fjall durable appends, one raw quinn stream), all measured
//! in this run. `--json` prints the report (DESIGN.md's names) as the last line of stdout.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use benches::harness::{self, BenchConfig, BenchError};
use clap::{Args, ValueEnum};
use pontoon::storage::Persist;

use super::CliError;

/// How each node's log commits reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PersistArg {
    /// fdatasync every commit (what a node whose acks matter uses).
    SyncData,
    /// fsync every commit, metadata included.
    SyncAll,
    /// Hand commits to the OS only: survives a crash of the process, not of the machine.
    Buffer,
}

impl From<PersistArg> for Persist {
    fn from(p: PersistArg) -> Self {
        match p {
            PersistArg::SyncData => Persist::SyncData,
            PersistArg::SyncAll => Persist::SyncAll,
            PersistArg::Buffer => Persist::Buffer,
        }
    }
}

/// Flags of `pontoon bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Nodes in the cluster (each group has min(3, nodes) replicas).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    nodes: u64,
    /// Raft groups (1..=10000).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    groups: u64,
    /// vShards the keys hash to (at least --groups).
    #[arg(long, default_value_t = 1024)]
    vshards: u32,
    /// Bytes of each proposed command.
    #[arg(long, default_value_t = 256)]
    command_bytes: usize,
    /// Closed-loop clients, one proposal in flight each.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds of load on the cluster.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds each raw baseline runs.
    #[arg(long, default_value_t = 2.0)]
    baseline_duration: f64,
    /// Milliseconds per raft tick.
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Durability of every log commit (and of the fjall baseline).
    #[arg(long, value_enum, default_value_t = PersistArg::SyncData)]
    persist: PersistArg,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Write the cluster run's time series to this file, one JSON line per second
    /// (throughput, p50 and p99 latency, leaders per node); `scripts/plot_series.py FILE`
    /// plots it.
    #[arg(long, value_name = "FILE")]
    series: Option<std::path::PathBuf>,
    /// Measure what idle groups cost instead: no load, quiescence on and off in the same run;
    /// wire messages per second per node pair and CPU per node (groups up to 100000).
    #[arg(long)]
    idle: bool,
    /// With --idle: which runs to make (`on` alone skips the quiescence-off run, which at
    /// 100,000 groups on a small machine never gets every group elected).
    #[arg(long, value_enum, default_value_t = QuiescenceArg::Both)]
    quiescence: QuiescenceArg,
    /// With --idle: seconds every group may take to elect a leader; past it the cluster is
    /// measured as it is and the report says how many groups were led.
    #[arg(long, default_value_t = 240.0)]
    election_limit: f64,
    /// Measure one slow state machine beside fast ones instead: the same load on every group
    /// but one, alone and then beside one client writing to a group whose state machine
    /// sleeps this many ms per command; reports the fast groups' latency of both runs.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    slow_group_apply_ms: Option<u64>,
}

/// Which idle runs `--idle` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum QuiescenceArg {
    /// Quiescence on, then off, side by side.
    Both,
    /// Quiescence on only.
    On,
    /// Quiescence off only.
    Off,
}

fn seconds(flag: &str, s: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| format!("--{flag} {s}: not a number of seconds").into())
}

impl BenchArgs {
    fn config(&self) -> Result<BenchConfig, CliError> {
        let config = BenchConfig {
            nodes: self.nodes,
            groups: self.groups,
            vshards: self.vshards,
            command_bytes: self.command_bytes,
            concurrency: self.concurrency,
            duration: seconds("duration", self.duration)?,
            tick: Duration::from_millis(self.tick_ms),
            persist: self.persist.into(),
            baseline_duration: seconds("baseline-duration", self.baseline_duration)?,
            series: self.series.clone(),
        };
        match config.validate() {
            Ok(()) => Ok(config),
            // Name the flag, not the field.
            Err(BenchError::Config { field, problem }) => {
                let flag = match field {
                    "tick" => "tick-ms".to_string(),
                    other => other.replace('_', "-"),
                };
                Err(format!("--{flag}: {problem}").into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Runs `pontoon bench`.
///
/// # Errors
/// A bad flag, or the step of the run that failed.
pub(crate) fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    if args.idle {
        return run_idle(&args);
    }
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(ms) = args.slow_group_apply_ms {
        let apply = Duration::from_millis(ms);
        let r = runtime.block_on(harness::run_slow_group(&config, apply, |step| {
            eprintln!("{step} ...");
        }))?;
        let mut out = std::io::stdout().lock();
        let row = |name: &str, f: &harness::FastGroups| {
            format!(
                "{name:<28}{:>12.0}{:>10.2}{:>10.2}{:>10.2}{:>8}\n",
                f.proposals_per_sec,
                f.latency_us.p50 as f64 / 1e3,
                f.latency_us.p99 as f64 / 1e3,
                f.latency_us.p999 as f64 / 1e3,
                f.failed
            )
        };
        write!(
            out,
            "fast groups ({} of {}){:>12}{:>10}{:>10}{:>10}{:>8}\n{}{}slow group {} acknowledged \
             {} commands at {ms} ms each; fast-group p99 with / without: {:.2}x\n",
            config.groups - 1,
            config.groups,
            "prop/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "failed",
            row("  alone", &r.without),
            row("  beside the slow group", &r.with),
            r.slow_group,
            r.slow_group_acknowledged,
            r.p99_ratio
        )?;
        if args.json {
            writeln!(out, "{}", r.to_json()?)?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    // Progress goes to stderr so stdout stays the table and the JSON line.
    let report = runtime.block_on(harness::run(&config, |step| eprintln!("{step} ...")))?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", report.table())?;
    if args.json {
        writeln!(out, "{}", report.to_json()?)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `pontoon bench --idle`: the same idle cluster with quiescence on, then off.
fn run_idle(args: &BenchArgs) -> Result<ExitCode, CliError> {
    let config = harness::IdleConfig {
        nodes: args.nodes,
        groups: args.groups,
        tick: Duration::from_millis(args.tick_ms.max(1)),
        duration: seconds("duration", args.duration)?,
        election_limit: seconds("election-limit", args.election_limit)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    let runs: &[bool] = match args.quiescence {
        QuiescenceArg::Both => &[true, false],
        QuiescenceArg::On => &[true],
        QuiescenceArg::Off => &[false],
    };
    for &quiesce in runs {
        let label = if quiesce { "on" } else { "off" };
        eprintln!("idle cluster, quiescence {label} ...");
        let r = runtime.block_on(harness::run_idle(&config, quiesce))?;
        // Printed as soon as measured: a large run's second half may take long or fail.
        eprintln!(
            "  quiescence {label}: {:.1} wire msgs/s per node pair, {:.1}% of a core per node, {:.1}% quiet",
            r.msgs_per_sec_per_pair,
            r.cpu_core_fraction_per_node * 100.0,
            r.quiet_fraction * 100.0
        );
        results.push(r);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Pontoon idle bench: {} nodes × {} idle groups, {} ms ticks, {:.0} s measured each",
        config.nodes,
        config.groups,
        config.tick.as_millis(),
        config.duration.as_secs_f64()
    )?;
    let micros = |us: Option<u64>| us.map_or("-".to_string(), |us| format!("{us} µs"));
    let mut header = format!("  {:<34}", "");
    for r in &results {
        let label = if r.quiesce {
            "quiescence on"
        } else {
            "quiescence off"
        };
        header.push_str(&format!(" {label:>20}"));
    }
    writeln!(out, "{header}")?;
    let row = |name: &str, f: &dyn Fn(&harness::IdleFigures) -> String| {
        let mut line = format!("  {name:<34}");
        for r in &results {
            line.push_str(&format!(" {:>20}", f(r)));
        }
        line
    };
    for line in [
        row("wire msgs/s per node pair", &|r| {
            format!("{:.1}", r.msgs_per_sec_per_pair)
        }),
        row("raft msgs/s per node (uncoalesced)", &|r| {
            format!("{:.0}", r.raft_msgs_per_sec_per_node)
        }),
        row("CPU per node (share of one core)", &|r| {
            format!("{:.1}%", r.cpu_core_fraction_per_node * 100.0)
        }),
        row("group replicas quiet", &|r| {
            format!("{:.1}%", r.quiet_fraction * 100.0)
        }),
        row("first proposal to a group (p50)", &|r| {
            micros(r.first_proposal_p50_us)
        }),
        row("the proposal after it (p50)", &|r| {
            micros(r.next_proposal_p50_us)
        }),
        row("memory per group replica", &|r| {
            r.rss_bytes_per_replica
                .map_or("-".to_string(), |b| format!("{:.1} KiB", b as f64 / 1024.0))
        }),
        row("elections took", &|r| match r.election_s {
            Some(s) => format!("{s:.1} s"),
            None => format!("{} of {} led", r.led, r.groups + 1),
        }),
    ] {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "  (all nodes in one process on one machine; CPU is the process's, divided by the nodes)"
    )?;
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "idle": results }))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
