//! What a `pontoon node` process does when things go wrong around it: a coordinator that stops
//! on a fatal error (here a real full disk) ends the process with a non-zero exit and the
//! reason, and frees its UDP port; SIGHUP swaps the node's certificates and trusted CAs without
//! a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::io::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_pontoon");
const DEADLINE: Duration = Duration::from_secs(30);

/// A small tmpfs mounted over a directory, unmounted on drop (lazily, in case a process still
/// holds files in it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Self(dir.to_owned()),
            Ok(out) => panic!(
                "this test fills a small tmpfs (a real full disk) and must mount one: run it as \
                 root, as CI does. mount said: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("this test needs the `mount` command (util-linux): {e}"),
        }
    }

    /// Writes a file until the file system has no space left.
    fn fill(&self) {
        let mut file = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).and_then(|()| file.flush()).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `len` characters no compressor shrinks much, so they reach the disk at about that size.
fn incompressible(len: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [(x % 62) as usize],
            )
        })
        .collect()
}

#[test]
fn a_node_whose_disk_fills_up_exits_non_zero_with_the_reason_and_frees_its_port() {
    let mut cluster = Cluster::new(1);
    // Declared after the cluster so it is unmounted before the cluster's directory goes.
    let disk = Tmpfs::mount(&cluster.dir.path().join("data-1"), "8m");
    cluster.start(0);
    cluster.put(0, "before", "full", DEADLINE);

    disk.fill();
    let put = cluster.kv(0, &["put", "after", &incompressible(48 * 1024)]);
    assert!(
        !put.status.success(),
        "a write to a full disk is not acknowledged"
    );

    let status = cluster
        .wait_exit(0, Duration::from_secs(10))
        .expect("the node exits promptly once its coordinator stopped");
    assert!(!status.success(), "a fatal stop exits non-zero: {status}");
    let log = cluster.log(0);
    assert!(
        log.contains("node n1 stopped: storage failed") && log.contains("No space left on device"),
        "the reason is printed:\n{log}"
    );
    UdpSocket::bind(cluster.addrs[0]).expect("the node's UDP port is free again");
}

fn pontoon(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "pontoon {args:?}: {out:?}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Runs `put` with the client certificates of `certs` until it succeeds (`true`) or fails
/// (`false`), as `want`, up to the deadline.
fn wait_for_put(cluster: &Cluster, certs: &Path, want: bool) -> bool {
    let start = Instant::now();
    loop {
        let ok = cluster
            .kv_with_certs(0, certs, &["put", "k", "v"])
            .status
            .success();
        if ok == want || start.elapsed() > DEADLINE {
            return ok;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_makes_a_node_present_its_rotated_certificate_and_trust_the_new_ca() {
    let mut cluster = Cluster::new(1);
    cluster.start(0);
    let files = cluster.certs();
    // A client of the first CA, with its own copy of what it trusts (that CA alone).
    let old = cluster.dir.path().join("client-old");
    std::fs::create_dir_all(&old).unwrap();
    for name in ["ca.pem", "client-admin.pem", "client-admin.key"] {
        std::fs::copy(files.join(name), old.join(name)).unwrap();
    }
    assert!(wait_for_put(&cluster, &old, true), "the node serves");

    // A second CA, with this node's next certificate and a client of its own.
    let new = cluster.dir.path().join("certs-new");
    let new_arg = new.to_str().unwrap();
    pontoon(&["certs", "init", "--dir", new_arg]);
    pontoon(&[
        "certs",
        "issue",
        "--dir",
        new_arg,
        "--node",
        "1",
        "--san",
        "127.0.0.1",
    ]);
    pontoon(&[
        "certs", "issue", "--dir", new_arg, "--client", "admin", "--role", "admin",
    ]);
    let put_new = cluster.kv_with_certs(0, &new, &["put", "k", "v"]);
    assert!(
        !put_new.status.success(),
        "the new CA's client is a stranger before the reload"
    );

    // Rotate the files the node's config names: the new certificate, and both CAs trusted
    // (the one that signed the node's certificate first), as during a CA rollover.
    std::fs::copy(new.join("node-1.pem"), files.join("node-1.pem")).unwrap();
    std::fs::copy(new.join("node-1.key"), files.join("node-1.key")).unwrap();
    let bundle = format!(
        "{}{}",
        read(&new.join("ca.pem")),
        read(&files.join("ca.pem"))
    );
    std::fs::write(files.join("ca.pem"), bundle).unwrap();
    cluster.signal(0, "HUP");
    assert!(
        wait_for_put(&cluster, &new, true),
        "after SIGHUP the node presents the new certificate and trusts the new CA:\n{}",
        cluster.log(0)
    );
    // New connections see the new certificate: a client that trusts only the first CA no
    // longer accepts the node.
    assert!(!wait_for_put(&cluster, &old, false));
    assert!(
        cluster.wait_exit(0, Duration::ZERO).is_none(),
        "the node ran throughout"
    );
}
