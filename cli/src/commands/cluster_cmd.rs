//! `pontoon cluster status|add-node|remove-node|balance|move-vshard`: change a running
//! cluster's shape from outside, through the nodes' client protocol.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use pontoon::admin::{ClusterView, NodeClient, RemoteControl};
use pontoon::coordinator::reshape::{ReshapeReport, Reshaper, Revocation};
use pontoon::routing::META_GROUP;
use pontoon::{GroupId, NodeId, VShardId};

use super::CliError;

/// How long a plan waits between looks at the cluster.
const PAUSE: Duration = Duration::from_millis(50);

#[derive(Args, Debug)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    op: ClusterOp,
}

/// How to reach the cluster; every subcommand takes these.
#[derive(Args, Debug)]
struct Connect {
    /// Address of a running member (repeat for more); the others are found from it.
    #[arg(long = "node", value_name = "ADDR", required = true)]
    nodes: Vec<SocketAddr>,
    /// Directory holding ca.pem and the client certificate (`pontoon certs issue --client NAME`).
    #[arg(long)]
    certs: PathBuf,
    /// The client certificate's name.
    #[arg(long, default_value = "admin")]
    client: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds one step of an operation may wait (for a leader, a replica to catch up)
    /// before the operation stops; re-running it finishes what it started.
    #[arg(long, default_value_t = 60)]
    step_timeout: u64,
}

#[derive(Subcommand, Debug)]
enum ClusterOp {
    /// Members, groups with their replicas and leaders, and the routing version.
    Status {
        #[command(flatten)]
        connect: Connect,
    },
    /// Add a node started with `join = true`: it joins the meta group and takes its share of
    /// replicas and leaders.
    AddNode {
        /// The new node's id (as in its certificate).
        #[arg(long)]
        id: u64,
        /// Where the other nodes reach it (HOST:PORT).
        #[arg(long)]
        address: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Move every replica off a node and take it out of the cluster; stop its process after.
    RemoveNode {
        /// The node's id.
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        connect: Connect,
    },
    /// Transfer leadership until no node leads more than its share of groups.
    Balance {
        #[command(flatten)]
        connect: Connect,
    },
    /// Revoke a node id (after remove-node) or a certificate serial (at any time): every node
    /// refuses it at the handshake and drops its live connections.
    Revoke {
        /// A node id that left the cluster.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        node: Option<u64>,
        /// A certificate serial, in hex (as `openssl x509 -serial` prints it).
        #[arg(long)]
        serial: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Move one vShard (and its data) to another group.
    MoveVshard {
        /// The vShard.
        #[arg(long)]
        vshard: u32,
        /// The group it moves to.
        #[arg(long)]
        group: u64,
        #[command(flatten)]
        connect: Connect,
    },
}

impl ClusterOp {
    fn connect(&self) -> &Connect {
        match self {
            ClusterOp::Status { connect }
            | ClusterOp::AddNode { connect, .. }
            | ClusterOp::RemoveNode { connect, .. }
            | ClusterOp::Balance { connect }
            | ClusterOp::Revoke { connect, .. }
            | ClusterOp::MoveVshard { connect, .. } => connect,
        }
    }
}

pub(crate) fn run(args: ClusterArgs) -> Result<ExitCode, CliError> {
    let connect = args.op.connect();
    let identity = pontoon::certs::files::load_client(&connect.certs, &connect.client)?;
    // The nodes refuse it anyway (and audit the attempt); saying so here spares the operator
    // a plan that retries a refusal until --step-timeout.
    if !matches!(args.op, ClusterOp::Status { .. }) && !identity.role().is_admin() {
        return Err(format!(
            "client {} has role {}: changing the cluster needs a client certificate issued \
             with `pontoon certs issue --client NAME --role admin`",
            identity.name(),
            identity.role()
        )
        .into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = NodeClient::new(&identity)?;
        let control = RemoteControl::connect(client, &connect.nodes, PAUSE).await?;
        let patience = u32::try_from(
            Duration::from_secs(connect.step_timeout).as_millis() / PAUSE.as_millis(),
        )
        .unwrap_or(u32::MAX);
        let reshaper = Reshaper::new(control, patience);
        let result = execute(&args.op, &reshaper).await;
        reshaper.control().client().close().await;
        result
    })
}

async fn execute(op: &ClusterOp, reshaper: &Reshaper<RemoteControl>) -> Result<ExitCode, CliError> {
    let json = op.connect().json;
    let started = Instant::now();
    match op {
        ClusterOp::Status { .. } => {
            let view = reshaper.control().view().await?;
            if json {
                println!("{}", serde_json::to_string(&view)?);
            } else {
                print!("{}", render(&view));
            }
            return Ok(ExitCode::SUCCESS);
        }
        ClusterOp::AddNode { id, address, .. } => {
            let node = NodeId(*id);
            if let Ok(addr) = address.parse() {
                reshaper.control().learn(node, addr);
            }
            let report = reshaper.add_node(node, address).await?;
            let what = format!("added {node} ({address})");
            print_report(json, "add-node", &what, started.elapsed(), &report)?;
        }
        ClusterOp::RemoveNode { id, .. } => {
            let node = NodeId(*id);
            let report = reshaper.remove_node(node).await?;
            let what = format!("removed {node}; its process can be stopped now");
            print_report(json, "remove-node", &what, started.elapsed(), &report)?;
        }
        ClusterOp::Balance { .. } => {
            let report = reshaper.balance_leaders().await?;
            print_report(
                json,
                "balance",
                "balanced leaders",
                started.elapsed(),
                &report,
            )?;
        }
        ClusterOp::Revoke { node, serial, .. } => {
            let revocation = match (node, serial) {
                (Some(node), _) => Revocation::Node(NodeId(*node)),
                (None, Some(hex)) => Revocation::Serial(parse_hex(hex)?),
                (None, None) => return Err(CliError::from("revoke needs --node or --serial")),
            };
            let table = reshaper.revoke(revocation.clone()).await?;
            let report = ReshapeReport {
                routing_version: table.version(),
                ..ReshapeReport::default()
            };
            let what = format!("revoked {revocation:?}");
            print_report(json, "revoke", &what, started.elapsed(), &report)?;
        }
        ClusterOp::MoveVshard { vshard, group, .. } => {
            let (vshard, to) = (VShardId(*vshard), GroupId(*group));
            let from = reshaper.table().await?.group_of_vshard(vshard)?;
            reshaper.move_vshard(vshard, to).await?;
            let report = ReshapeReport {
                routing_version: reshaper.table().await?.version(),
                ..ReshapeReport::default()
            };
            let what = format!("moved {vshard} from {from} to {to}");
            print_report(json, "move-vshard", &what, started.elapsed(), &report)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(
    json: bool,
    op: &str,
    what: &str,
    elapsed: Duration,
    report: &ReshapeReport,
) -> Result<(), CliError> {
    if json {
        let value = serde_json::json!({
            "op": op,
            "done": what,
            "elapsed_ms": elapsed.as_millis(),
            "report": report,
        });
        println!("{value}");
        return Ok(());
    }
    let moves = |list: &[(GroupId, NodeId, NodeId)]| {
        list.iter()
            .map(|(g, from, to)| format!("{} {from}→{to}", group_name(*g)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut line = format!("{what} in {:.1} s", elapsed.as_secs_f64());
    if !report.replicas_moved.is_empty() {
        let _ = write!(
            line,
            "; {} replicas moved ({})",
            report.replicas_moved.len(),
            moves(&report.replicas_moved)
        );
    }
    if !report.leaders_moved.is_empty() {
        let _ = write!(
            line,
            "; {} leaders moved ({})",
            report.leaders_moved.len(),
            moves(&report.leaders_moved)
        );
    }
    let _ = write!(line, "; routing version {}", report.routing_version);
    println!("{line}");
    Ok(())
}

fn group_name(group: GroupId) -> String {
    if group == META_GROUP {
        "meta".into()
    } else {
        group.to_string()
    }
}

fn ids(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "-".into();
    }
    nodes
        .iter()
        .map(|n| n.get().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The status as two aligned tables.
fn render(view: &ClusterView) -> String {
    let mut out = String::new();
    let data_groups = view.groups.iter().filter(|g| g.group != META_GROUP).count();
    let _ = writeln!(
        out,
        "routing version {} · {} vShards · {} members · {data_groups} groups",
        view.routing_version,
        view.vshards,
        view.members.len()
    );
    let _ = writeln!(
        out,
        "\n{:<6} {:<24} {:>8} {:>6}  state",
        "node", "address", "replicas", "leads"
    );
    for m in &view.members {
        let _ = writeln!(
            out,
            "{:<6} {:<24} {:>8} {:>6}  {}",
            m.node.get(),
            m.address,
            m.replicas,
            m.leads,
            if m.reachable { "up" } else { "unreachable" }
        );
    }
    let _ = writeln!(
        out,
        "\n{:<6} {:>7}  {:<14} {:>6}  {:<14} {:<10}",
        "group", "vshards", "replicas", "leader", "voters", "learners"
    );
    for g in &view.groups {
        let leader = g
            .leader
            .map_or_else(|| "none".to_string(), |l| l.get().to_string());
        let voters = if g.joint {
            format!("{} (joint)", ids(&g.voters))
        } else {
            ids(&g.voters)
        };
        let name = if g.group == META_GROUP {
            "meta".to_string()
        } else {
            g.group.get().to_string()
        };
        let _ = writeln!(
            out,
            "{name:<6} {:>7}  {:<14} {leader:>6}  {voters:<14} {:<10}",
            if g.group == META_GROUP {
                "-".to_string()
            } else {
                g.vshards.to_string()
            },
            ids(&g.replicas),
            ids(&g.learners),
        );
    }
    let outside: Vec<NodeId> = view
        .unreachable
        .iter()
        .copied()
        .filter(|n| !view.members.iter().any(|m| m.node == *n))
        .collect();
    if !outside.is_empty() {
        let _ = writeln!(out, "\nunreachable non-members: {}", ids(&outside));
    }
    out
}

/// A certificate serial as hex digits (colons allowed, as openssl prints them).
fn parse_hex(text: &str) -> Result<Vec<u8>, CliError> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err(CliError::from(format!(
            "--serial {text}: an even number of hex digits"
        )));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| CliError::from(format!("--serial {text}: not hex")))
        })
        .collect()
}
