//! Three real `pontoon node` processes on loopback, written to and read from through
//! `pontoon kv` with a client certificate; one is killed with SIGKILL and everything written
//! is read back from the survivors; the killed node restarts from its data directory.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pontoon");

struct Cluster {
    dir: tempfile::TempDir,
    addrs: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn pontoon(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("pontoon runs")
}

fn free_port() -> SocketAddr {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

impl Cluster {
    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}.toml", i + 1))
    }

    fn new(nodes: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<SocketAddr> = (0..nodes).map(|_| free_port()).collect();
        let this = Self {
            dir,
            addrs,
            children: Vec::new(),
        };
        let certs = this.certs();
        let certs_arg = certs.to_str().expect("utf-8 path");
        assert!(
            pontoon(&["certs", "init", "--dir", certs_arg])
                .status
                .success()
        );
        assert!(
            pontoon(&["certs", "issue", "--dir", certs_arg, "--client", "admin"])
                .status
                .success()
        );
        let node_list: String = this
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("[[nodes]]\nid = {}\naddr = \"{a}\"\n", i + 1))
            .collect();
        for (i, addr) in this.addrs.iter().enumerate() {
            let id = (i + 1).to_string();
            let out = pontoon(&[
                "certs",
                "issue",
                "--dir",
                certs_arg,
                "--node",
                &id,
                "--san",
                "127.0.0.1",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let config = format!(
                "node_id = {id}\nlisten = \"{addr}\"\ndata_dir = \"{data}\"\ntick_ms = 20\n\n[certs]\nca = \"{c}/ca.pem\"\ncert = \"{c}/node-{id}.pem\"\nkey = \"{c}/node-{id}.key\"\n\n[routing]\nvshards = 256\ngroups = 8\nreplication = 3\n\n{node_list}",
                data = this.dir.path().join(format!("data-{id}")).display(),
                c = certs.display(),
            );
            std::fs::write(this.config(i), config).expect("config written");
        }
        this
    }

    fn start(&mut self, i: usize) {
        let child = Command::new(BIN)
            .args([
                "node",
                "--config",
                self.config(i).to_str().expect("utf-8 path"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node starts");
        if self.children.len() <= i {
            self.children.resize_with(i + 1, || None);
        }
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
    }

    fn kv(&self, node: usize, args: &[&str]) -> Output {
        let addr = self.addrs[node].to_string();
        let certs = self.certs();
        let mut all = vec![
            "kv",
            "--node",
            &addr,
            "--certs",
            certs.to_str().expect("utf-8 path"),
        ];
        all.extend_from_slice(args);
        pontoon(&all)
    }

    /// Retries a put until the cluster accepts it (leaders are being elected).
    fn put(&self, node: usize, key: &str, value: &str, deadline: Duration) {
        let start = Instant::now();
        loop {
            let out = self.kv(node, &["put", key, value]);
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "put {key} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, node: usize, key: &str, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            let out = self.kv(node, &["get", key]);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            assert!(
                start.elapsed() < deadline,
                "get {key} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn data_dir_exists(dir: &Path) -> bool {
    dir.read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

#[test]
fn three_node_processes_survive_a_sigkill_and_a_restart() {
    let mut cluster = Cluster::new(3);
    for i in 0..3 {
        cluster.start(i);
    }
    let deadline = Duration::from_secs(30);
    for k in 0..40 {
        cluster.put(k % 3, &format!("key-{k}"), &format!("value-{k}"), deadline);
    }
    cluster.kill(0);
    for k in 40..60 {
        cluster.put(
            1 + k % 2,
            &format!("key-{k}"),
            &format!("value-{k}"),
            deadline,
        );
    }
    for node in 1..3 {
        for k in 0..60 {
            assert_eq!(
                cluster.get(node, &format!("key-{k}"), deadline),
                format!("value-{k}"),
                "key-{k} on node {}",
                node + 1
            );
        }
    }
    assert!(data_dir_exists(&cluster.dir.path().join("data-1")));
    cluster.start(0);
    for k in [0, 41, 59] {
        assert_eq!(
            cluster.get(0, &format!("key-{k}"), deadline),
            format!("value-{k}"),
            "key-{k} on the restarted node"
        );
    }
    let status = cluster.kv(0, &["status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("\"groups\""));
}
