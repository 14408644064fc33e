//! The README's first command, shortened, and the embedding example: both must run to the end
//! and report success.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::Command;

#[test]
fn a_short_demo_kills_a_leader_and_verifies_every_acknowledged_write() {
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
        ])
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
