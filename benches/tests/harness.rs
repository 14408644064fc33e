//! `run_cluster` and the report on a small real cluster: the figures are consistent with each
//! other and the JSON carries every name DESIGN.md fixes. No timing thresholds: only that the
//! numbers were measured and add up.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pontoon_benches::harness::{self, BenchConfig};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_of_a_short_three_node_run_is_consistent_and_complete() {
    let config = BenchConfig {
        nodes: 3,
        groups: 8,
        concurrency: 64,
        duration: Duration::from_secs(2),
        baseline_duration: Duration::from_secs(1),
        ..BenchConfig::default()
    };
    let report = harness::run(&config, |step| eprintln!("{step}"))
        .await
        .unwrap();

    assert!(report.acknowledged > 0);
    assert!(report.proposals_per_sec > 0.0);
    assert!(close(
        report.proposals_per_sec,
        report.acknowledged as f64 / report.elapsed_s
    ));
    assert!(report.fsyncs_per_proposal > 0.0);
    assert!(report.wire_bytes_per_proposal > 0.0);
    assert!(report.wire_msgs_per_proposal > 0.0);
    // A committed command reached at least one follower, so its bytes crossed the wire.
    assert!(report.wire_bytes_per_proposal >= config.command_bytes as f64);
    assert!(report.latency_us.p50 <= report.latency_us.p99);
    assert!(report.latency_us.p99 <= report.latency_us.p999);
    assert!(report.latency_us.p50 > 0);
    assert!(report.baselines.fjall_append_per_sec > 0.0);
    assert!(report.baselines.quinn_stream_msgs_per_sec > 0.0);
    assert!(report.baselines.fjall_batch_entries >= 1);
    assert!(close(
        report.ratios.vs_fjall_append,
        report.proposals_per_sec / report.baselines.fjall_append_per_sec
    ));
    assert!(close(
        report.ratios.vs_quinn_stream,
        report.proposals_per_sec / report.baselines.quinn_stream_msgs_per_sec
    ));
    if cfg!(target_os = "linux") {
        let cpu = report.cpu_sec_per_1k.unwrap();
        assert!(cpu > 0.0);
        assert!(close(
            cpu,
            report.cpu_seconds.unwrap() * 1000.0 / report.acknowledged as f64
        ));
    }

    let json = report.to_json().unwrap();
    assert!(!json.contains('\n'), "the report is one line");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in [
        "proposals_per_sec",
        "fsyncs_per_proposal",
        "wire_bytes_per_proposal",
        "wire_msgs_per_proposal",
        "cpu_sec_per_1k",
    ] {
        assert!(value[key].is_number(), "{key} in {json}");
    }
    for key in ["p50", "p99", "p999"] {
        assert!(value["latency_us"][key].is_number(), "latency_us.{key}");
        for stage in ["replicate", "apply"] {
            let v = &value["latency_breakdown_us"][stage][key];
            assert!(v.is_number(), "latency_breakdown_us.{stage}.{key}");
        }
    }
    // Raft and apply happen inside what the client waited for: each stage's median is at
    // most the slowest end-to-end time measured.
    let b = report.latency_breakdown_us;
    assert!(b.replicate.p50 > 0 && b.replicate.p50 <= b.replicate.p99);
    assert!(b.apply.p50 <= b.apply.p99);
    assert!(
        b.replicate.p50 <= report.latency_us.p999.max(1) * 2,
        "{b:?}"
    );
    for key in [
        "nodes",
        "groups",
        "vshards",
        "command_bytes",
        "concurrency",
        "duration_s",
    ] {
        assert!(value["config"][key].is_number(), "config.{key}");
    }
    assert_eq!(value["config"]["groups"], 8);
    assert_eq!(value["config"]["nodes"], 3);
    for key in ["fjall_append_per_sec", "quinn_stream_msgs_per_sec"] {
        assert!(value["baselines"][key].is_number(), "baselines.{key}");
    }
    for key in ["vs_fjall_append", "vs_quinn_stream"] {
        assert!(value["ratios"][key].is_number(), "ratios.{key}");
    }
    assert!(report.table().contains("raw quinn"));
}

/// `pontoon bench --slow-group-apply-ms`: both kinds of phase ran on the fast groups, the
/// slow group was written to (and slowly), and the JSON names every figure. No threshold on
/// the ratio: a timing is a benchmark's to report, not a test's to assert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_group_report_measures_both_phases_and_the_slow_group() {
    let config = BenchConfig {
        nodes: 3,
        groups: 4,
        concurrency: 8,
        duration: Duration::from_millis(600),
        ..BenchConfig::default()
    };
    let apply = Duration::from_millis(30);
    let report = harness::run_slow_group(&config, apply, |step| eprintln!("{step}"))
        .await
        .unwrap();
    for phase in [&report.without, &report.with] {
        assert!(phase.acknowledged > 0);
        assert!(phase.proposals_per_sec > 0.0);
        assert!(phase.latency_us.p50 <= phase.latency_us.p99);
    }
    // One client, two phases of 600 ms, 30 ms per command: at most 40 applied.
    assert!(
        (1..=40).contains(&report.slow_group_acknowledged),
        "{report:?}"
    );
    assert!(close(
        report.p99_ratio,
        report.with.latency_us.p99 as f64 / report.without.latency_us.p99 as f64
    ));
    let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    for key in [
        "apply_ms",
        "without",
        "with",
        "slow_group_acknowledged",
        "p99_ratio",
    ] {
        assert!(json.get(key).is_some(), "{key} missing");
    }
    let too_few = BenchConfig {
        groups: 1,
        ..config
    };
    assert!(
        harness::run_slow_group(&too_few, apply, |_| {})
            .await
            .is_err()
    );
}
