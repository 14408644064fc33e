//! [`LocalCluster`]: N real [`Node`]s in one process, over QUIC with mutual TLS on loopback,
//! certificates generated on the spot. What `pontoon demo`, the benchmarks and the QUIC
//! integration tests run; also handy in a database's own tests.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use certs::NodeIdentity;
use hdrhistogram::Histogram;
use routing::{GroupId, NodeId, RoutingTable};

use crate::lock;
use crate::reshape::NodeSet;
use crate::{ClientSession, Node, NodeConfig, NodeError, RequestError, StateMachines};

/// Builds the [`NodeConfig`] of each node from its id, address and data directory.
pub type ConfigFn = Box<dyn Fn(NodeConfig) -> NodeConfig + Send + Sync>;

/// N nodes of one cluster in this process. See the [module docs](self). `S` is what each
/// node's state machines are made from: a [`crate::StateMachine`] (one per node, shared by
/// its groups) or [`StateMachines`] (a factory of one per group).
pub struct LocalCluster<S: Into<StateMachines> + 'static> {
    identities: Mutex<BTreeMap<NodeId, NodeIdentity>>,
    addrs: Mutex<BTreeMap<NodeId, SocketAddr>>,
    nodes: Mutex<BTreeMap<NodeId, Option<Node>>>,
    dir: PathBuf,
    routing: RoutingTable,
    configure: ConfigFn,
    /// Where proposals last found each group's leader.
    leader_cache: Mutex<BTreeMap<GroupId, NodeId>>,
    /// The session [`LocalCluster::propose`] proposes in, so its retries apply once.
    session: ClientSession,
    make_state_machine: Box<dyn Fn(NodeId) -> S + Send + Sync>,
}

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// Certificates could not be made.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// A node could not start.
    #[error("node {node}: {source}")]
    Node {
        /// Which node.
        node: NodeId,
        /// Why.
        source: NodeError,
    },
    /// A loopback UDP port could not be reserved.
    #[error("reserving a loopback port: {0}")]
    Port(std::io::Error),
}

/// Counters of a [`LocalCluster::drive`] run, readable while it runs. Latencies go into HDR
/// histograms (1 µs to 10 min, 3 significant digits): quantiles of any run length in fixed
/// memory, one for the whole run and one for the window [`LoadStats::take_window`] reads.
#[derive(Debug)]
pub struct LoadStats {
    /// Proposals acknowledged.
    pub acknowledged: AtomicU64,
    /// Proposals that failed (timeouts, no leader within the deadline).
    pub failed: AtomicU64,
    latencies_us: Mutex<Latencies>,
}

#[derive(Debug)]
struct Latencies {
    run: Histogram<u64>,
    window: Histogram<u64>,
}

/// The highest latency a histogram records, in µs (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 600_000_000;

#[allow(clippy::expect_used)] // constant bounds, valid by construction
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("1 µs to 10 min at 3 significant digits are valid bounds")
}

impl Default for LoadStats {
    fn default() -> Self {
        Self {
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latencies_us: Mutex::new(Latencies {
                run: latency_histogram(),
                window: latency_histogram(),
            }),
        }
    }
}

/// Quantiles of one latency window, from [`LoadStats::take_window`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyWindow {
    /// Acknowledged proposals in the window.
    pub count: u64,
    /// Latency at each quantile asked for, in µs (0 for an empty window).
    pub quantiles_us: Vec<u64>,
}

impl LoadStats {
    fn record(&self, latency: Duration) {
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        let mut latencies = lock::mutex(&self.latencies_us);
        latencies.run.saturating_record(us);
        latencies.window.saturating_record(us);
    }

    /// The latency at quantile `q` (0.0..=1.0) of the proposals acknowledged so far, in µs.
    pub fn latency_us(&self, q: f64) -> u64 {
        self.latencies_us(&[q]).first().copied().unwrap_or(0)
    }

    /// Latencies at several quantiles at once, in µs (0 before any acknowledgement).
    pub fn latencies_us(&self, qs: &[f64]) -> Vec<u64> {
        quantiles(&lock::mutex(&self.latencies_us).run, qs)
    }

    /// The latencies recorded since the previous call (or the start), at quantiles `qs`; the
    /// window starts afresh. What a per-second time series reads.
    pub fn take_window(&self, qs: &[f64]) -> LatencyWindow {
        let mut latencies = lock::mutex(&self.latencies_us);
        let window = LatencyWindow {
            count: latencies.window.len(),
            quantiles_us: quantiles(&latencies.window, qs),
        };
        latencies.window.reset();
        window
    }

    /// Acknowledged proposals so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }
}

fn quantiles(histogram: &Histogram<u64>, qs: &[f64]) -> Vec<u64> {
    if histogram.is_empty() {
        return vec![0; qs.len()];
    }
    qs.iter()
        .map(|q| histogram.value_at_quantile(q.clamp(0.0, 1.0)))
        .collect()
}

fn free_udp_port() -> Result<SocketAddr, LocalClusterError> {
    let socket =
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(LocalClusterError::Port)?;
    socket.local_addr().map_err(LocalClusterError::Port)
}

impl<S: Into<StateMachines> + 'static> LocalCluster<S> {
    /// Starts one node per node of `routing`, certificates in `dir/certs` (a fresh cluster CA
    /// and one certificate per node), data under `dir`, each node's config passed
    /// through `configure` (tick interval, durability, raft settings).
    ///
    /// # Errors
    /// [`LocalClusterError`] naming what failed.
    pub async fn start(
        dir: &Path,
        routing: RoutingTable,
        configure: impl Fn(NodeConfig) -> NodeConfig + Send + Sync + 'static,
        make_state_machine: impl Fn(NodeId) -> S + Send + Sync + 'static,
    ) -> Result<Self, LocalClusterError> {
        // Real PEM files, as an operator would make them with `pontoon certs`.
        let cert_dir = dir.join("certs");
        certs::files::init_dir(&cert_dir, false)?;
        let mut identities = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for node in routing.nodes() {
            identities.insert(
                node,
                certs::files::issue_node_files(&cert_dir, node, &["127.0.0.1".to_string()], false)?,
            );
            addrs.insert(node, free_udp_port()?);
        }
        let this = Self {
            nodes: Mutex::new(identities.keys().map(|n| (*n, None)).collect()),
            identities: Mutex::new(identities),
            addrs: Mutex::new(addrs),
            dir: dir.to_path_buf(),
            routing,
            configure: Box::new(configure),
            leader_cache: Mutex::new(BTreeMap::new()),
            session: ClientSession::new(),
            make_state_machine: Box::new(make_state_machine),
        };
        for node in this.node_ids() {
            this.restart(node).await?;
        }
        Ok(this)
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<NodeId, Option<Node>>> {
        lock::mutex(&self.nodes)
    }

    /// Starts a new node `node` that joins the running cluster (a certificate of the
    /// cluster CA, a loopback port, an empty data directory), and returns its address. It holds
    /// nothing until [`crate::reshape::Reshaper::add_node`] adds it. It starts with a running
    /// node's routing table, so it knows (and hears) every node of the cluster.
    ///
    /// # Errors
    /// [`LocalClusterError`] naming what failed.
    pub async fn join_node(&self, node: NodeId) -> Result<SocketAddr, LocalClusterError> {
        let cert_dir = self.dir.join("certs");
        let identity =
            certs::files::issue_node_files(&cert_dir, node, &["127.0.0.1".to_string()], true)?;
        let addr = free_udp_port()?;
        lock::mutex(&self.identities).insert(node, identity);
        lock::mutex(&self.addrs).insert(node, addr);
        let known = self.running().first().map(Node::routing);
        self.nodes().insert(node, None);
        self.start_node(node, known.unwrap_or_else(|| self.routing.clone()), true)
            .await?;
        Ok(addr)
    }

    /// Forgets a node that left the cluster (after [`crate::reshape::Reshaper::remove_node`]):
    /// stops it if it runs.
    pub async fn forget_node(&self, node: NodeId) {
        self.kill(node).await;
        self.nodes().remove(&node);
        lock::mutex(&self.addrs).remove(&node);
    }

    /// A [`crate::reshape::Reshaper`] over the running nodes, waiting up to `patience` pauses of
    /// 20 ms per step.
    pub fn reshaper(&self, patience: u32) -> crate::reshape::Reshaper<NodeSet> {
        let nodes = NodeSet::new(self.running(), Duration::from_millis(20));
        crate::reshape::Reshaper::new(nodes, patience)
    }

    /// Every node id, running or not.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes().keys().copied().collect()
    }

    /// Starts `node` (again), on its address and data directory.
    ///
    /// # Errors
    /// [`LocalClusterError::Node`].
    pub async fn restart(&self, node: NodeId) -> Result<(), LocalClusterError> {
        self.start_node(node, self.routing.clone(), false).await
    }

    async fn start_node(
        &self,
        node: NodeId,
        routing: RoutingTable,
        join: bool,
    ) -> Result<(), LocalClusterError> {
        let identity = lock::mutex(&self.identities).get(&node).cloned();
        let Some(identity) = identity else {
            return Err(LocalClusterError::Node {
                node,
                source: NodeError::NoGroups(node),
            });
        };
        let addrs = lock::mutex(&self.addrs).clone();
        let listen = addrs
            .get(&node)
            .copied()
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let mut config = NodeConfig::new(node, listen, self.dir.join(format!("node-{node}")));
        for (peer, addr) in &addrs {
            if *peer != node {
                config = config.peer(*peer, *addr);
            }
        }
        let config = (self.configure)(config).join(join);
        let started = Node::start(config, &identity, routing, (self.make_state_machine)(node))
            .await
            .map_err(|source| LocalClusterError::Node { node, source })?;
        self.nodes().insert(node, Some(started));
        Ok(())
    }

    /// Stops `node` (its data stays; [`LocalCluster::restart`] brings it back).
    pub async fn kill(&self, node: NodeId) {
        let running = self.nodes().insert(node, None).flatten();
        if let Some(running) = running {
            running.shutdown().await;
        }
    }

    /// A running node (a cheap handle).
    pub fn node(&self, node: NodeId) -> Option<Node> {
        self.nodes().get(&node)?.clone()
    }

    /// Every running node.
    pub fn running(&self) -> Vec<Node> {
        self.nodes().values().flatten().cloned().collect()
    }

    /// The routing table the cluster started with.
    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    /// Each group's leader, as the running nodes report it (a leader must call itself leader).
    pub async fn leaders(&self) -> BTreeMap<GroupId, NodeId> {
        let mut leaders = BTreeMap::new();
        for node in self.running() {
            if let Ok(status) = node.status().await {
                for g in status.groups {
                    if g.leader == Some(node.id()) {
                        leaders.insert(g.group, node.id());
                    }
                }
            }
        }
        leaders
    }

    /// How many data groups each running node leads (the meta group not counted).
    pub async fn leader_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> =
            self.running().iter().map(|n| (n.id(), 0)).collect();
        let leaders = self.leaders().await;
        let data_groups = leaders.iter().filter(|(g, _)| **g != routing::META_GROUP);
        for (_, leader) in data_groups {
            *counts.entry(*leader).or_default() += 1;
        }
        counts
    }

    /// Waits until every group (and the meta group) has a running leader; returns how long that took, or `None`
    /// at the deadline.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let wanted: Vec<GroupId> = self
            .routing
            .groups()
            .map(|(g, _)| g)
            .chain([routing::META_GROUP])
            .collect();
        let groups = wanted.len();
        while start.elapsed() < timeout {
            let leaders = self.leaders().await;
            if wanted.iter().all(|g| leaders.contains_key(g)) {
                return Some(start.elapsed());
            }
            // A status of every group is not free: poll large clusters less often.
            tokio::time::sleep(Duration::from_millis(10 + groups as u64 / 100)).await;
        }
        None
    }

    /// Proposes `command` for `key` wherever its group's leader is, following `NotLeader`
    /// hints and retrying dropped proposals, until `timeout`.
    ///
    /// # Errors
    /// The last error when the deadline passes.
    pub async fn propose(
        &self,
        key: &[u8],
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RequestError> {
        let group = self
            .running()
            .first()
            .map_or_else(|| self.routing.group_for_key(key), |n| n.group_for_key(key));
        // Through `Node::propose_once`, so the command carries its vShard (a group the vShard
        // moved away from refuses it, and the node routes it again on its newer table) and
        // the cluster's session: every retry below, even of an outcome it lost track of, is
        // applied once.
        let once = self.session.command();
        self.on_leader(group, timeout, true, |node| {
            let command = command.clone();
            let once = &once;
            async move { node.propose_once(once, key, command).await }
        })
        .await
    }

    /// [`LocalCluster::propose`] to a group named directly.
    ///
    /// # Errors
    /// As [`LocalCluster::propose`].
    pub async fn propose_to_group(
        &self,
        group: GroupId,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RequestError> {
        self.on_leader(group, timeout, false, |node| {
            let command = command.clone();
            async move { node.propose_to_group(group, command).await }
        })
        .await
    }

    /// Runs `request` on the leader of `group`, following `NotLeader` hints and retrying
    /// requests that did not take effect (with `exactly_once`, a session's command: also
    /// those whose outcome is unknown), until `timeout`.
    async fn on_leader<F, Fut>(
        &self,
        group: GroupId,
        timeout: Duration,
        exactly_once: bool,
        request: F,
    ) -> Result<Vec<u8>, RequestError>
    where
        F: Fn(Node) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, RequestError>>,
    {
        let deadline = Instant::now() + timeout;
        let cached = lock::mutex(&self.leader_cache).get(&group).copied();
        let mut target = cached.or_else(|| self.routing.leader_hint(group));
        let mut last = RequestError::ShuttingDown;
        let candidates: Vec<NodeId> = self.running().iter().map(Node::id).collect();
        let mut next_candidate = 0;
        while Instant::now() < deadline {
            let node = match target.and_then(|t| self.node(t)) {
                Some(node) => node,
                None => {
                    let Some(id) = candidates.get(next_candidate % candidates.len().max(1)) else {
                        return Err(RequestError::ShuttingDown);
                    };
                    next_candidate += 1;
                    match self.node(*id) {
                        Some(node) => node,
                        None => continue,
                    }
                }
            };
            let id = node.id();
            let hint = node.clone();
            match request(node).await {
                Ok(response) => {
                    // The leader, not the node that answered: a follower forwards the command,
                    // and caching it would cost every later command that extra hop.
                    let leader = hint.leader_hint(group).unwrap_or(id);
                    lock::mutex(&self.leader_cache).insert(group, leader);
                    return Ok(response);
                }
                Err(RequestError::NotLeader { leader, group }) => {
                    last = RequestError::NotLeader { group, leader };
                    if leader.is_none() || leader == target {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    target = leader;
                }
                // Sent again: what did not take effect for a passing reason, and, for a
                // session's command (applied once however often it is sent), what may have.
                Err(
                    e @ (RequestError::ProposalDropped { .. }
                    | RequestError::ShuttingDown
                    | RequestError::Busy { .. }
                    | RequestError::QuorumUnreachable { .. }),
                ) => {
                    last = e;
                    target = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(
                    e @ (RequestError::Timeout { .. }
                    | RequestError::OutcomeUnknown { .. }
                    | RequestError::StoppedInFlight { .. }),
                ) if exactly_once => {
                    last = e;
                    target = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Runs `concurrency` closed-loop clients until `until`: each proposes `command(seq)` (a
    /// key and the command bytes) through [`LocalCluster::propose`], waits for the answer, and
    /// records it in `stats`; `on_ack` sees every acknowledged command.
    pub async fn drive(
        self: &std::sync::Arc<Self>,
        concurrency: usize,
        until: Instant,
        request_timeout: Duration,
        command: impl Fn(u64) -> (Vec<u8>, Vec<u8>) + Send + Sync + 'static,
        on_ack: impl Fn(u64, &[u8], &[u8]) + Send + Sync + 'static,
        stats: std::sync::Arc<LoadStats>,
    ) {
        let command = std::sync::Arc::new(command);
        let on_ack = std::sync::Arc::new(on_ack);
        let seq = std::sync::Arc::new(AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (cluster, command, on_ack, seq, stats) = (
                self.clone(),
                command.clone(),
                on_ack.clone(),
                seq.clone(),
                stats.clone(),
            );
            workers.spawn(async move {
                while Instant::now() < until {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let (key, bytes) = command(n);
                    let started = Instant::now();
                    match cluster.propose(&key, bytes, request_timeout).await {
                        Ok(response) => {
                            stats.record(started.elapsed());
                            on_ack(n, &key, &response);
                        }
                        Err(_) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
    }

    /// Stops every node.
    pub async fn shutdown(&self) {
        for node in self.node_ids() {
            self.kill(node).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_stats_quantiles_cover_the_run_and_a_window_restarts_when_read() {
        let stats = LoadStats::default();
        assert_eq!(stats.latencies_us(&[0.5, 0.99]), vec![0, 0]);
        for ms in 1..=100 {
            stats.record(Duration::from_millis(ms));
        }
        let [p50, p99] = <[u64; 2]>::try_from(stats.latencies_us(&[0.5, 0.99])).unwrap();
        // Three significant digits: within 0.1% of the exact ranks.
        assert!((49_950..=50_050).contains(&p50), "{p50}");
        assert!((98_900..=99_100).contains(&p99), "{p99}");
        let window = stats.take_window(&[0.5]);
        assert_eq!(window.count, 100);
        stats.record(Duration::from_secs(2));
        let window = stats.take_window(&[0.5]);
        assert_eq!(window.count, 1);
        assert!((1_998_000..=2_002_000).contains(&window.quantiles_us[0]));
        assert_eq!(stats.take_window(&[0.5]).quantiles_us, vec![0]);
        // The run keeps everything.
        assert_eq!(stats.acknowledged(), 101);
        assert!(stats.latency_us(1.0) >= 1_998_000);
    }
}
