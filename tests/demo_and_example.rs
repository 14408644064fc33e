//! The README's first command, shortened, and the embedding example: both must run to the end
//! and report success.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::Command;

#[test]
fn a_short_demo_kills_a_leader_and_verifies_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let series = dir.path().join("series.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_pontoon"))
        .args([
            "demo",
            "--duration",
            "4",
            "--groups",
            "16",
            "--concurrency",
            "64",
            "--tick-ms",
            "20",
            "--series",
        ])
        .arg(&series)
        .output()
        .expect("pontoon demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("✗ killed"),
        "the demo kills a leader:\n{stdout}"
    );
    assert!(
        stdout.contains("every group has a leader again"),
        "failover is reported:\n{stdout}"
    );
    let verification = stdout
        .lines()
        .find(|l| l.contains("verification"))
        .unwrap_or_default();
    assert!(
        verification.contains("OK"),
        "verification passed:\n{stdout}"
    );
    for row in [
        "throughput",
        "latency p50 / p99 / p99.9",
        "failover",
        "fsyncs per proposal",
        "heartbeats coalesced",
    ] {
        assert!(
            stdout.contains(row),
            "summary row {row:?} missing:\n{stdout}"
        );
    }
    // The time series: a line per second with throughput, quantiles and leaders, the kill in it.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&series)
        .expect("series written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    assert!(lines.iter().any(|l| l["acknowledged"].as_u64() > Some(0)
        && l["p99_us"].as_u64() >= l["p50_us"].as_u64()
        && l["leaders"].as_object().is_some_and(|m| !m.is_empty())));
    assert!(
        lines
            .iter()
            .any(|l| l["event"].as_str().is_some_and(|e| e.starts_with("killed"))),
        "{lines:?}"
    );
}

#[test]
fn the_embedding_example_runs() {
    // `cargo test` has already built the example; run it the way the README says.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--offline",
            "--example",
            "kv",
            "--",
            "--keys",
            "30",
        ])
        // From the workspace root, as the README says (this test belongs to pontoon-cli).
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo runs the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("wrote 30 keys"), "{stdout}");
    assert_eq!(
        stdout.matches("reads user:29 = Some(\"name-29\")").count(),
        3,
        "{stdout}"
    );
}
