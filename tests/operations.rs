//! What an operator sees of real `pontoon node` processes: `/metrics` scraped under load moves
//! as the README's "Metrics" table says (proposals grow, a killed peer shows as down, a
//! handshake with a foreign certificate is counted under its reason), and a node whose storage
//! fails (its data directory on a full tmpfs) fails its health check and exits non-zero.
//!
//! The storage test mounts a tmpfs and so needs root (CI runs as root); without it, it fails
//! with a message saying so: a fault test that did not run must not read as passed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, pontoon};

const DEADLINE: Duration = Duration::from_secs(20);

/// One HTTP GET: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of the series `name` whose labels include every `labels` pair, if scraped.
fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

/// Scrapes `addr` until `check` holds for the scrape, or fails after [`DEADLINE`] with the last.
fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < DEADLINE {
        if let Ok((200, body)) = get(addr, "/metrics") {
            if check(&body) {
                return body;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} not seen within {DEADLINE:?}; last scrape:\n{last}");
}

fn sum(scrape: &str, name: &str, nodes: &[&str]) -> f64 {
    nodes
        .iter()
        .filter_map(|n| value(scrape, name, &[("node", n)]))
        .sum()
}

#[test]
fn metrics_show_proposals_a_killed_peer_and_a_refused_handshake() {
    let mut cluster = Cluster::new(3);
    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.enable_metrics(i)).collect();
    for i in 0..3 {
        cluster.start(i);
    }
    for k in 0..30 {
        cluster.put(k % 3, &format!("key-{k}"), "value", DEADLINE);
    }
    // Proposals are counted where they are submitted: their sum over the nodes reaches the
    // writes, and so do acknowledgements, with a commit latency histogram behind them.
    let start = Instant::now();
    loop {
        let scrapes: Vec<String> = addrs
            .iter()
            .map(|a| get(*a, "/metrics").map(|(_, b)| b).unwrap_or_default())
            .collect();
        let total = |name: &str| -> f64 {
            scrapes
                .iter()
                .zip(["1", "2", "3"])
                .map(|(s, n)| sum(s, name, &[n]))
                .sum()
        };
        if total("pontoon_proposals_total") >= 30.0
            && total("pontoon_proposals_acknowledged_total") >= 30.0
            && total("pontoon_commit_latency_seconds_count") >= 30.0
        {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "proposals did not grow to 30; node 1 scrape:\n{}",
            scrapes[0]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let scrape = get(addrs[0], "/metrics").unwrap().1;
    for name in [
        "pontoon_storage_fsyncs_total",
        "pontoon_storage_fsync_seconds_bucket",
        "pontoon_storage_persist_groups_bucket",
        "pontoon_storage_persist_bytes_bucket",
        "pontoon_cycles_total",
        "pontoon_groups",
        "pontoon_groups_quiet",
        "pontoon_groups_leaderless",
        "pontoon_elections_started_total",
        "pontoon_transport_frames_sent_total",
        "pontoon_transport_sent_bytes_total",
        "pontoon_transport_queued_envelopes",
        "pontoon_queue_depth",
        "pontoon_apply_seconds_bucket",
    ] {
        assert!(
            value(&scrape, name, &[("node", "1")]).is_some(),
            "{name} missing from node 1's scrape:\n{scrape}"
        );
    }
    assert!(value(&scrape, "pontoon_storage_fsyncs_total", &[]).unwrap() > 0.0);
    for name in [
        "pontoon_transport_frames_sent_total",
        "pontoon_transport_frames_received_total",
    ] {
        for kind in ["raft", "heartbeat"] {
            let frames = value(&scrape, name, &[("node", "1"), ("kind", kind)]);
            assert!(
                frames.is_some_and(|f| f > 0.0),
                "no {kind} {name}: {scrape}"
            );
        }
    }
    // Every series scraped is documented in the README's table.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let undocumented: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("pontoon_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
        })
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "series missing from the README's Metrics table: {undocumented:?}"
    );
    let peer_up =
        |s: &str, peer: &str| value(s, "pontoon_peer_up", &[("node", "1"), ("peer", peer)]);
    assert_eq!(peer_up(&scrape, "3"), Some(1.0), "{scrape}");
    let (code, health) = get(addrs[0], "/health").unwrap();
    assert_eq!(code, 200, "{health}");

    // A killed peer shows as down, from node-level liveness.
    cluster.kill(2);
    scrape_until(addrs[0], "peer 3 down on node 1", |s| {
        peer_up(s, "3") == Some(0.0)
    });

    // A client whose certificate comes from another CA is refused in the handshake, and the
    // refusal is counted under its reason.
    let refused = |s: &str| {
        value(
            s,
            "pontoon_transport_connections_refused_total",
            &[("node", "1"), ("reason", "handshake_failed")],
        )
    };
    let before = refused(&get(addrs[0], "/metrics").unwrap().1).unwrap_or(0.0);
    let other = cluster.dir.path().join("other-ca");
    let other_arg = other.to_str().unwrap();
    assert!(
        pontoon(&["certs", "init", "--dir", other_arg])
            .status
            .success()
    );
    let issued = pontoon(&[
        "certs", "issue", "--dir", other_arg, "--client", "admin", "--role", "admin",
    ]);
    assert!(issued.status.success(), "{issued:?}");
    let node1 = cluster.addrs[0].to_string();
    let put = pontoon(&[
        "kv", "--node", &node1, "--certs", other_arg, "put", "k", "v",
    ]);
    assert!(
        !put.status.success(),
        "a foreign certificate was served: {put:?}"
    );
    scrape_until(addrs[0], "a handshake_failed refusal", |s| {
        refused(s).is_some_and(|v| v > before)
    });
}

/// A tmpfs mounted for the test, unmounted (lazily, in case a process still holds it) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs: {} (this test needs root)",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_node_whose_disk_fills_fails_its_health_check_and_exits_non_zero() {
    let mut cluster = Cluster::new(1);
    let addr = cluster.enable_metrics(0);
    let _disk = Tmpfs::mount(&cluster.data_dir(0), "6m").unwrap_or_else(|e| panic!("{e}"));
    cluster.start(0);
    cluster.put(0, "first", "value", DEADLINE);
    let start = Instant::now();
    loop {
        let (code, body) = get(addr, "/health").unwrap();
        if code == 200 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never ready: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Values of 100 KB until the disk is full: a persist fails, the coordinator stops. The
    // bytes are scrambled so that no compression makes them small.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let big: String = (0..100_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'!' + (seed % 90) as u8)
        })
        .collect();
    let start = Instant::now();
    let mut k = 0;
    let status = loop {
        if let Some(status) = cluster.wait_exit(0, Duration::ZERO) {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the node did not stop on a full disk; log:\n{}",
            cluster.log(0)
        );
        cluster.try_put(0, &format!("big-{k}"), &big);
        k += 1;
    };
    assert!(!status.success(), "exited with {status}");
    assert!(
        get(addr, "/health").map_or(true, |(code, _)| code != 200),
        "health answers 200 after the node stopped"
    );
    let log = cluster.log(0);
    assert!(log.contains("stopped"), "{log}");
}
