//! `pontoon node --config FILE`: one node of the example key-value service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use pontoon::coordinator::NodeStopped;
use pontoon::{Node, NodeConfig, NodeId, RoutingTable};
use serde::Deserialize;
use service::{KvService, KvStateMachine};

use super::{CliError, observe};

/// How long a SIGTERM drain may take before the node stops anyway: a few election timeouts
/// for the transfers, and the default request timeout for requests in flight. Supervisors
/// (systemd's 90 s, Kubernetes' 30 s grace period) wait longer before they SIGKILL.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Args, Debug)]
pub(crate) struct NodeArgs {
    /// The node's TOML config (see the README for an example).
    #[arg(long)]
    config: PathBuf,
}

/// The TOML config of one node. Every node of a new cluster lists the same nodes and routing
/// settings, so each computes the same routing table. A node with `join = true` joins a
/// running cluster instead (`pontoon cluster add-node` then adds it): it lists the running
/// nodes, itself not required, hears only them until it receives the cluster's routing table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeFile {
    /// This node's id (must match its certificate).
    pub node_id: u64,
    /// UDP address to bind, e.g. "0.0.0.0:7001".
    pub listen: SocketAddr,
    /// Directory of the log store.
    pub data_dir: PathBuf,
    /// Certificate files.
    pub certs: CertPaths,
    /// Every node of the cluster, this one included: id and the address others reach it at.
    /// With `join`, the running nodes (itself may be left out): until the cluster's table
    /// arrives the node hears only these, so list every voter of the meta group.
    pub nodes: Vec<PeerEntry>,
    /// Join a running cluster rather than bootstrap one from `nodes` (ignored on a restart:
    /// the data directory then says what the node holds).
    #[serde(default)]
    pub join: bool,
    /// Routing settings.
    #[serde(default)]
    pub routing: RoutingSettings,
    /// Milliseconds per raft tick.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// TCP address of the operators' HTTP endpoint (`/metrics`, `/health`, `/ready`, `/live`),
    /// or `"off"`. Default: loopback, on the port number of `listen` (QUIC is UDP, so the two
    /// never collide).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Forward a proposal made on a follower to its group's leader (default true); off, the
    /// follower answers `NotLeader` and the client follows the redirect.
    #[serde(default = "default_forward")]
    pub forward_to_leader: bool,
    /// Forwarded requests in flight to or from one peer before more are refused as busy
    /// (default 1024).
    #[serde(default = "default_max_forwarded")]
    pub max_forwarded_per_peer: usize,
    /// Client sessions one client certificate may open through this node within an hour
    /// (default 100000); past it, writes in a new session are refused (see
    /// `pontoon_service::SessionBudget`).
    #[serde(default = "default_max_client_sessions")]
    pub max_client_sessions: usize,
    /// The largest snapshot this node sends or receives, in MiB, and all the snapshot data it
    /// buffers from peers at once (default: 1024 per snapshot, 1024 per peer, 2048 in all).
    /// A snapshot travels whole in memory today, so this is what a peer's snapshot transfers
    /// (stalled ones included) may cost this node: set it to the largest group you expect.
    #[serde(default)]
    pub max_snapshot_mib: Option<u64>,
}

/// Where the operators' endpoint listens, and whether the config chose it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MetricsListen {
    Off,
    Default(SocketAddr),
    Configured(SocketAddr),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerEntry {
    pub id: u64,
    pub addr: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutingSettings {
    #[serde(default = "default_vshards")]
    pub vshards: u32,
    #[serde(default = "default_groups")]
    pub groups: u64,
    #[serde(default = "default_replication")]
    pub replication: usize,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            vshards: default_vshards(),
            groups: default_groups(),
            replication: default_replication(),
        }
    }
}

fn default_tick_ms() -> u64 {
    100
}
fn default_forward() -> bool {
    true
}
fn default_max_forwarded() -> usize {
    1024
}
fn default_max_client_sessions() -> usize {
    service::session_budget::SESSIONS_PER_CLIENT
}
fn default_vshards() -> u32 {
    1024
}
fn default_groups() -> u64 {
    64
}
fn default_replication() -> usize {
    3
}

impl NodeFile {
    /// Reads and checks a config file.
    pub(crate) fn load(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let file: NodeFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.join {
            if !file.nodes.iter().any(|n| n.id != file.node_id) {
                return Err(format!(
                    "{}: a joining node lists at least one running node in [[nodes]]",
                    path.display()
                )
                .into());
            }
        } else if !file.nodes.iter().any(|n| n.id == file.node_id) {
            return Err(format!(
                "{}: node_id {} is not listed in [[nodes]]",
                path.display(),
                file.node_id
            )
            .into());
        }
        if file.tick_ms == 0 {
            return Err(format!("{}: tick_ms must be at least 1", path.display()).into());
        }
        if file.max_snapshot_mib == Some(0) {
            return Err(format!(
                "{}: max_snapshot_mib must be at least 1 (leave it out for the default)",
                path.display()
            )
            .into());
        }
        if file.max_forwarded_per_peer == 0 {
            return Err(format!(
                "{}: max_forwarded_per_peer must be at least 1 (turn forwarding off with \
                 forward_to_leader = false)",
                path.display()
            )
            .into());
        }
        file.metrics_listen()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(file)
    }

    /// The operators' endpoint address (see [`NodeFile::metrics_listen`]).
    pub(crate) fn metrics_listen(&self) -> Result<MetricsListen, CliError> {
        match self.metrics_listen.as_deref() {
            None => Ok(MetricsListen::Default(SocketAddr::from((
                std::net::Ipv4Addr::LOCALHOST,
                self.listen.port(),
            )))),
            Some("off") => Ok(MetricsListen::Off),
            Some(addr) => addr.parse().map(MetricsListen::Configured).map_err(|e| {
                format!(
                    "metrics_listen {addr:?} is not an address like 127.0.0.1:9464 or \"off\": {e}"
                )
                .into()
            }),
        }
    }

    /// The routing table every node computes from the same settings. A joining node's is
    /// only a placeholder until the cluster's arrives, so it leaves itself out of it.
    pub(crate) fn routing(&self) -> Result<RoutingTable, CliError> {
        let nodes: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| !self.join || n.id != self.node_id)
            .map(|n| NodeId(n.id))
            .collect();
        Ok(RoutingTable::uniform(
            self.routing.vshards,
            self.routing.groups,
            &nodes,
            self.routing.replication.min(nodes.len()),
        )?)
    }

    fn addresses(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.nodes.iter().map(|n| (NodeId(n.id), n.addr)).collect()
    }
}

pub(crate) fn run(args: NodeArgs) -> Result<ExitCode, CliError> {
    let file = NodeFile::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(file))
}

async fn serve(file: NodeFile) -> Result<ExitCode, CliError> {
    let id = NodeId(file.node_id);
    // Before the node starts: the libraries take their metric handles as they start, and
    // health says "starting" (503) until the node is up.
    let (started, starting) = tokio::sync::watch::channel(None);
    if let listen @ (MetricsListen::Default(_) | MetricsListen::Configured(_)) =
        file.metrics_listen()?
    {
        serve_metrics(observe::install_recorder()?, listen, starting).await?;
    }
    let identity = pontoon::certs::NodeIdentity::from_pem_files(
        &file.certs.cert,
        &file.certs.key,
        &file.certs.ca,
    )?;
    let routing = file.routing()?;
    let addresses = file.addresses();
    let mut config = NodeConfig::new(id, file.listen, &file.data_dir)
        .tick_interval(Duration::from_millis(file.tick_ms))
        .join(file.join)
        .forward_to_leader(file.forward_to_leader)
        .max_forwarded_per_peer(file.max_forwarded_per_peer);
    config.transport = config.transport.accept_clients(true);
    if let Some(mib) = file.max_snapshot_mib {
        let bytes = mib.saturating_mul(1 << 20);
        config.transport = config
            .transport
            .max_snapshot_bytes(bytes)
            .snapshot_receive_bytes_per_peer(bytes)
            .snapshot_receive_bytes_per_node(bytes);
    }
    for (peer, addr) in &addresses {
        if *peer != id {
            config = config.peer(*peer, *addr);
        }
    }
    let state = KvStateMachine::new();
    let node = Node::start(config, &identity, routing.clone(), state.clone()).await?;
    started.send_replace(Some(node.clone()));
    let Some(mut clients) = node.take_client_connections() else {
        return Err("the transport does not hand over client connections".into());
    };
    if file.join {
        println!(
            "node {id} waiting to be added on {} (data in {})",
            node.local_addr(),
            file.data_dir.display()
        );
    } else {
        println!(
            "node {id} serving {} groups on {} (data in {})",
            routing.groups_on_node(id).len(),
            node.local_addr(),
            file.data_dir.display()
        );
    }
    let service = KvService::new(node.clone(), state, addresses).with_session_budget(
        service::SessionBudget::new(
            file.max_client_sessions,
            service::session_budget::SESSION_LIFETIME,
        ),
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // SIGTERM (what a supervisor sends to stop a service) drains: leadership moves away
    // and requests in flight finish before the node stops. SIGINT stops at once.
    let mut drain = false;
    loop {
        tokio::select! {
            client = clients.recv() => match client {
                Some(client) => {
                    tracing::debug!(client = %client.name, "client connected");
                    tokio::spawn(service.clone().serve(client));
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => {
                drain = true;
                break;
            }
            _ = hangup.recv() => reload_tls(&node, &file),
            // A node that cannot serve exits: its endpoint is already closed.
            stopped = node.stopped() => {
                if let NodeStopped::Fatal { reason } = stopped {
                    eprintln!("node {id} stopped: {reason}");
                    return Ok(ExitCode::FAILURE);
                }
                break;
            }
        }
    }
    if drain {
        println!("node {id} draining (up to {} s)", DRAIN_DEADLINE.as_secs());
        let drained = node.drain(DRAIN_DEADLINE).await;
        println!(
            "node {id} drained: led {} groups, {} still led and {} requests unanswered at the stop",
            drained.led_at_start, drained.still_leading, drained.in_flight_at_stop
        );
    } else {
        println!("node {id} shutting down");
        node.shutdown().await;
    }
    if let Some(NodeStopped::Fatal { reason }) = node.stop_reason() {
        eprintln!("node {id} stopped: {reason}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Binds the operators' endpoint and serves it. A configured address that cannot be bound
/// stops the start; the default one only warns (another process may hold that TCP port).
async fn serve_metrics(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    listen: MetricsListen,
    node: observe::Started,
) -> Result<(), CliError> {
    let (addr, configured) = match listen {
        MetricsListen::Off => return Ok(()),
        MetricsListen::Default(addr) => (addr, false),
        MetricsListen::Configured(addr) => (addr, true),
    };
    match observe::bind(addr).await {
        Ok(listener) => {
            let bound = listener.local_addr()?;
            println!("metrics and health on http://{bound}/metrics and http://{bound}/health");
            tokio::spawn(observe::serve(listener, handle, node));
            Ok(())
        }
        Err(e) if configured => Err(format!("metrics_listen {addr}: {e}").into()),
        Err(error) => {
            tracing::warn!(%addr, %error, "default metrics address unavailable; set metrics_listen");
            Ok(())
        }
    }
}

/// SIGHUP: reads the node's certificate, key and CA bundle again (rotation, CA rollover) and
/// swaps them in; a file that does not load leaves the running ones in place.
fn reload_tls(node: &Node, file: &NodeFile) {
    let loaded = pontoon::certs::NodeIdentity::from_pem_files(
        &file.certs.cert,
        &file.certs.key,
        &file.certs.ca,
    )
    .and_then(|identity| {
        pontoon::certs::files::load_ca_bundle(&file.certs.ca).map(|cas| (identity, cas))
    });
    let result = loaded
        .map_err(|e| e.to_string())
        .and_then(|(identity, cas)| node.reload_tls(&identity, &cas).map_err(|e| e.to_string()));
    match result {
        Ok(()) => tracing::info!("SIGHUP: certificates reloaded"),
        Err(error) => {
            tracing::error!(%error, "SIGHUP: certificates not reloaded; the old ones stay")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<NodeFile, CliError> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text)?;
        NodeFile::load(&path)
    }

    const HEAD: &str = "listen = \"127.0.0.1:7004\"\ndata_dir = \"d\"\n\
        [certs]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";
    const RUNNING: &str = "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n\
        [[nodes]]\nid = 2\naddr = \"127.0.0.1:7002\"\n";

    #[test]
    fn a_joining_node_lists_only_the_running_nodes_and_leaves_itself_out_of_the_table() {
        let file = load(&format!("node_id = 4\njoin = true\n{HEAD}{RUNNING}")).unwrap();
        assert!(file.join);
        let table = file.routing().unwrap();
        assert!(!table.is_member(NodeId(4)));
        assert!(table.is_member(NodeId(1)) && table.is_member(NodeId(2)));
        // Listing itself is fine too; it stays out of the placeholder table.
        let listed = format!("{RUNNING}[[nodes]]\nid = 4\naddr = \"127.0.0.1:7004\"\n");
        let file = load(&format!("node_id = 4\njoin = true\n{HEAD}{listed}")).unwrap();
        assert!(!file.routing().unwrap().is_member(NodeId(4)));
    }

    #[test]
    fn a_bootstrapping_node_must_list_itself_and_a_joining_one_someone_else() {
        let missing = load(&format!("node_id = 4\n{HEAD}{RUNNING}")).unwrap_err();
        assert!(missing.to_string().contains("not listed"), "{missing}");
        let alone = "[[nodes]]\nid = 4\naddr = \"127.0.0.1:7004\"\n";
        let lonely = load(&format!("node_id = 4\njoin = true\n{HEAD}{alone}")).unwrap_err();
        assert!(lonely.to_string().contains("running node"), "{lonely}");
    }

    #[test]
    fn forwarding_is_on_by_default_and_its_settings_are_checked() {
        let file = load(&format!("node_id = 1\n{HEAD}{RUNNING}")).unwrap();
        assert!(file.forward_to_leader);
        assert_eq!(file.max_forwarded_per_peer, 1024);
        assert_eq!(file.max_client_sessions, 100_000);
        let off = "forward_to_leader = false\nmax_forwarded_per_peer = 8\n";
        let file = load(&format!("node_id = 1\n{off}{HEAD}{RUNNING}")).unwrap();
        assert!(!file.forward_to_leader);
        assert_eq!(file.max_forwarded_per_peer, 8);
        let zero = "max_forwarded_per_peer = 0\n";
        let refused = load(&format!("node_id = 1\n{zero}{HEAD}{RUNNING}")).unwrap_err();
        assert!(
            refused.to_string().contains("max_forwarded_per_peer"),
            "{refused}"
        );
    }

    #[test]
    fn the_snapshot_bound_is_optional_and_never_zero() {
        let file = load(&format!("node_id = 1\n{HEAD}{RUNNING}")).unwrap();
        assert_eq!(file.max_snapshot_mib, None);
        let set = load(&format!(
            "node_id = 1\nmax_snapshot_mib = 128\n{HEAD}{RUNNING}"
        ))
        .unwrap();
        assert_eq!(set.max_snapshot_mib, Some(128));
        let zero = load(&format!(
            "node_id = 1\nmax_snapshot_mib = 0\n{HEAD}{RUNNING}"
        ));
        let refused = zero.unwrap_err();
        assert!(
            refused.to_string().contains("max_snapshot_mib"),
            "{refused}"
        );
    }
}
