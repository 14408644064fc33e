//! Harness for tests that run real `pontoon node` processes: certificates and configs made
//! with the `pontoon` binary itself, nodes started, killed, paused and restarted, and the
//! `pontoon kv` client run against them. Nodes run on loopback, or each in its own network
//! namespace when a [`Netns`] is given.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pontoon");

/// Network namespaces of one test: a hub with a bridge, and one namespace per node wired to
/// it by a veth pair. Only addresses inside these namespaces are used. Removed on drop.
pub struct Netns {
    hub: String,
    nodes: Vec<String>,
    subnet: u8,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespaces, or says what is missing (not root, no `ip`, no netns support).
    pub fn create(nodes: usize) -> Result<Self, String> {
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("the `ip` command (iproute2) is not installed".into());
        }
        let tag = std::process::id() % 100_000;
        let this = Self {
            hub: format!("pt{tag}hub"),
            nodes: (0..nodes).map(|i| format!("pt{tag}n{}", i + 1)).collect(),
            subnet: u8::try_from(10 + tag % 200).unwrap_or(10),
        };
        ip(&["netns", "add", &this.hub])?;
        ip(&["-n", &this.hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &this.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &this.hub,
            "addr",
            "add",
            &format!("10.199.{}.254/24", this.subnet),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &this.hub, "link", "set", "br0", "up"])?;
        for (i, ns) in this.nodes.iter().enumerate() {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            let hub_side = format!("h{}", i + 1);
            ip(&[
                "-n", &this.hub, "link", "add", &hub_side, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            ip(&[
                "-n", &this.hub, "link", "set", &hub_side, "master", "br0", "up",
            ])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.199.{}.{}/24", this.subnet, i + 1),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(this)
    }

    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((
            [10, 199, self.subnet, u8::try_from(i + 1).unwrap_or(1)],
            7000,
        ))
    }

    /// Cuts node `i` off the network (its link goes down) or brings it back.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.nodes[i],
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ])
        .expect("link state changes");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    pub netns: Option<Netns>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn pontoon(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("pontoon runs")
}

fn free_port() -> SocketAddr {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

impl Cluster {
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Issues client certificate `name` with `role` (`kv` or `admin`).
    pub fn issue_client(&self, name: &str, role: &str) {
        let certs = self.certs();
        let out = pontoon(&[
            "certs",
            "issue",
            "--dir",
            certs.to_str().expect("utf-8 path"),
            "--client",
            name,
            "--role",
            role,
        ]);
        assert!(out.status.success(), "{out:?}");
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}.toml", i + 1))
    }

    pub fn new(nodes: usize) -> Self {
        Self::with_netns(nodes, None)
    }

    /// Nodes each in their own namespace of `netns` (or on loopback with `None`).
    pub fn with_netns(nodes: usize, netns: Option<Netns>) -> Self {
        Self::build(nodes, netns, 8)
    }

    /// Nodes on loopback whose routing table has `groups` groups.
    pub fn with_groups(nodes: usize, groups: u64) -> Self {
        Self::build(nodes, None, groups)
    }

    fn build(nodes: usize, netns: Option<Netns>, groups: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<SocketAddr> = match &netns {
            Some(n) => (0..nodes).map(|i| n.addr(i)).collect(),
            None => (0..nodes).map(|_| free_port()).collect(),
        };
        let this = Self {
            dir,
            addrs,
            children: Vec::new(),
            netns,
        };
        let certs = this.certs();
        let certs_arg = certs.to_str().expect("utf-8 path");
        assert!(
            pontoon(&["certs", "init", "--dir", certs_arg])
                .status
                .success()
        );
        assert!(
            pontoon(&[
                "certs", "issue", "--dir", certs_arg, "--client", "admin", "--role", "admin"
            ])
            .status
            .success()
        );
        let node_list = this.node_list();
        for i in 0..this.addrs.len() {
            this.write_config(i, &node_list, groups, false);
        }
        this
    }

    /// `[[nodes]]` entries for every node so far.
    fn node_list(&self) -> String {
        self.addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("[[nodes]]\nid = {}\naddr = \"{a}\"\n", i + 1))
            .collect()
    }

    /// Issues node `i`'s certificate and writes its config listing `node_list`.
    fn write_config(&self, i: usize, node_list: &str, groups: u64, join: bool) {
        let certs = self.certs();
        let certs_arg = certs.to_str().expect("utf-8 path");
        let addr = self.addrs[i];
        let id = (i + 1).to_string();
        let san = addr.ip().to_string();
        let out = pontoon(&[
            "certs", "issue", "--dir", certs_arg, "--node", &id, "--san", &san,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = format!(
            "node_id = {id}\nlisten = \"{addr}\"\ndata_dir = \"{data}\"\ntick_ms = 20\njoin = {join}\n\n[certs]\nca = \"{c}/ca.pem\"\ncert = \"{c}/node-{id}.pem\"\nkey = \"{c}/node-{id}.key\"\n\n[routing]\nvshards = 256\ngroups = {groups}\nreplication = 3\n\n{node_list}",
            data = self.dir.path().join(format!("data-{id}")).display(),
            c = certs.display(),
        );
        std::fs::write(self.config(i), config).expect("config written");
    }

    /// Prepares one more node (loopback only) that joins the running cluster: its certificate,
    /// and a config with `join = true` that lists only the nodes before it. Returns its index;
    /// start it with [`Cluster::start`], add it with `pontoon cluster add-node`.
    pub fn add_joiner(&mut self) -> usize {
        assert!(self.netns.is_none(), "joiners run on loopback");
        let node_list = self.node_list();
        self.addrs.push(free_port());
        let i = self.addrs.len() - 1;
        self.write_config(i, &node_list, 1, true);
        i
    }

    /// Gives node `i` an operators' endpoint on a free loopback TCP port (config key
    /// `metrics_listen`) and returns its address.
    pub fn enable_metrics(&self, i: usize) -> SocketAddr {
        let addr = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free TCP port");
        self.set(i, &format!("metrics_listen = \"{addr}\""));
        addr
    }

    /// Adds a top-level `key = value` line to node `i`'s config (before it starts).
    pub fn set(&self, i: usize, line: &str) {
        let path = self.config(i);
        let config = std::fs::read_to_string(&path).expect("config read");
        std::fs::write(&path, format!("{line}\n{config}")).expect("config written");
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("data-{}", i + 1))
    }

    /// Waits up to `deadline` for node `i`'s process to exit; its status, if it did.
    pub fn wait_exit(&mut self, i: usize, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        let child = self.children.get_mut(i)?.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.children[i] = None;
                return Some(status);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i`'s log so far (its stderr).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}.log", i + 1))
    }

    /// A command for the `pontoon` binary, run inside namespace `ns` when there are any.
    fn command(&self, ns: Option<&str>) -> Command {
        match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        }
    }

    pub fn start(&mut self, i: usize) {
        let ns = self.netns.as_ref().map(|n| n.nodes[i].clone());
        // Kept for a failing test to show (appended across restarts).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("node log opens");
        let child = self
            .command(ns.as_deref())
            .args([
                "node",
                "--config",
                self.config(i).to_str().expect("utf-8 path"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("node starts");
        if self.children.len() <= i {
            self.children.resize_with(i + 1, || None);
        }
        self.children[i] = Some(child);
    }

    /// The OS process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to node `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(pid) = self.pid(i) {
            let ok = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status()
                .map(|s| s.success());
            assert!(matches!(ok, Ok(true)), "kill -{signal} {pid}");
        }
    }

    pub fn kv(&self, node: usize, args: &[&str]) -> Output {
        self.kv_with_certs(node, &self.certs(), args)
    }

    /// `pontoon kv` with the CA bundle and client certificates of `certs`.
    pub fn kv_with_certs(&self, node: usize, certs: &std::path::Path, args: &[&str]) -> Output {
        let addr = self.addrs[node].to_string();
        let mut all = vec![
            "kv",
            "--node",
            &addr,
            "--certs",
            certs.to_str().expect("utf-8 path"),
        ];
        all.extend_from_slice(args);
        let hub = self.netns.as_ref().map(|n| n.hub.clone());
        self.command(hub.as_deref())
            .args(&all)
            .output()
            .expect("pontoon kv runs")
    }

    /// `pontoon cluster ARGS --node <node's address> --certs DIR`.
    pub fn cluster(&self, node: usize, args: &[&str]) -> Output {
        let addr = self.addrs[node].to_string();
        let certs = self.certs();
        let mut all = vec!["cluster"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--node",
            &addr,
            "--certs",
            certs.to_str().expect("utf-8 path"),
        ]);
        let hub = self.netns.as_ref().map(|n| n.hub.clone());
        self.command(hub.as_deref())
            .args(&all)
            .output()
            .expect("pontoon cluster runs")
    }

    /// One put attempt; `true` when the cluster acknowledged it.
    pub fn try_put(&self, node: usize, key: &str, value: &str) -> bool {
        self.kv(node, &["put", key, value]).status.success()
    }

    /// Retries a put until the cluster accepts it (leaders are being elected).
    pub fn put(&self, node: usize, key: &str, value: &str, deadline: Duration) {
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

    pub fn get(&self, node: usize, key: &str, deadline: Duration) -> String {
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
