//! Client roles over real QUIC and mutual TLS: one node serving the KV service, and three
//! callers. A kv-role client reads and writes keys and reads the cluster's shape, and is
//! refused every operation that changes it, with a typed `Forbidden` that says it did not
//! take effect, and nothing changes. An admin client runs the same operations. A node
//! certificate is refused on the client protocol altogether. Every changing operation leaves
//! an audit event naming the caller.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use admin::proto::admin_request::vshard_step::{Acquire, Step};
use admin::proto::admin_request::{self, Body};
use admin::proto::{AdminRequest, ConfStep, Empty, StepKind, admin_reply};
use admin::wire::{ClientReply, ClientRequest, client_reply};
use admin::{AUDIT_TARGET, ClientError, NodeClient, RemoteError};
use certs::{ClientRole, ClusterCa};
use coordinator::{Node, NodeConfig};
use pontoon_service::{KvClient, KvService, KvStateMachine, SessionBudget};
use routing::{GroupId, NodeId, RoutingChange, RoutingTable, VShardId};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

const DEADLINE: Duration = Duration::from_secs(30);

/// One audit event's fields.
type Fields = BTreeMap<String, String>;

/// Collects the events of the audit target.
#[derive(Clone, Default)]
struct AuditLog(Arc<Mutex<Vec<Fields>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != AUDIT_TARGET {
            return;
        }
        struct Collect(Fields);
        impl Visit for Collect {
            fn record_str(&mut self, field: &Field, value: &str) {
                self.0.insert(field.name().into(), value.into());
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().into(), format!("{value:?}"));
            }
        }
        let mut fields = Collect(Fields::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

fn audit_log() -> AuditLog {
    static LOG: OnceLock<AuditLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = AuditLog::default();
        let subscriber = tracing_subscriber::registry().with(log.clone());
        tracing::subscriber::set_global_default(subscriber)
            .expect("one subscriber per test binary");
        log
    })
    .clone()
}

/// A one-node cluster (two data groups) serving the KV service on loopback.
async fn serve_one_node(ca: &ClusterCa, dir: &std::path::Path) -> (Node, SocketAddr) {
    serve_one_node_with(ca, dir, SessionBudget::default()).await
}

/// The same, with the service's per-client session budget `budget`.
async fn serve_one_node_with(
    ca: &ClusterCa,
    dir: &std::path::Path,
    budget: SessionBudget,
) -> (Node, SocketAddr) {
    let id = NodeId(1);
    let identity = ca.issue_node(id, &["127.0.0.1".to_string()]).unwrap();
    let routing = RoutingTable::uniform(16, 2, &[id], 1).unwrap();
    let mut config = NodeConfig::new(id, "127.0.0.1:0".parse().unwrap(), dir)
        .tick_interval(Duration::from_millis(10));
    config.transport = config.transport.accept_clients(true);
    let state = KvStateMachine::new();
    let node = Node::start(config, &identity, routing, state.clone())
        .await
        .unwrap();
    let addr = node.local_addr();
    let mut clients = node.take_client_connections().unwrap();
    let service = KvService::new(node.clone(), state, BTreeMap::from([(id, addr)]))
        .with_session_budget(budget);
    tokio::spawn(async move {
        while let Some(client) = clients.recv().await {
            tokio::spawn(service.clone().serve(client));
        }
    });
    (node, addr)
}

/// Puts `key` until the node has elected its leaders and answers.
async fn put_when_ready(client: &KvClient, addr: SocketAddr, key: &str, value: &str) {
    let start = tokio::time::Instant::now();
    loop {
        match client.put(addr, key.as_bytes(), value.as_bytes()).await {
            Ok(_) => return,
            Err(e) => assert!(start.elapsed() < DEADLINE, "put never succeeded: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin(client: &NodeClient, addr: SocketAddr, body: Body) -> ClientReply {
    client
        .request(addr, None, &ClientRequest::admin(AdminRequest::new(body)))
        .await
        .unwrap()
}

/// Every operation that changes the cluster (or exports its data), aimed at `group` and
/// `vshard` of a one-node cluster.
fn changing_operations(group: GroupId, vshard: VShardId, version: u64) -> Vec<Body> {
    let step = |step| {
        Body::VShardStep(admin_request::VShardStep {
            group: group.get(),
            vshard: vshard.get(),
            step: Some(step),
        })
    };
    vec![
        Body::ChangeMembership(admin_request::ChangeMembership {
            group: group.get(),
            steps: vec![ConfStep {
                kind: StepKind::AddLearner.into(),
                node: 2,
            }],
            ..Default::default()
        }),
        Body::ChangeRouting(admin_request::ChangeRouting {
            change: RoutingChange::AddMember {
                node: NodeId(9),
                address: "127.0.0.1:9".into(),
            }
            .encode(version),
        }),
        Body::TransferLeader(admin_request::TransferLeader {
            group: group.get(),
            to: 2,
        }),
        step(Step::Release(Empty {})),
        step(Step::Acquire(Acquire {
            data: Some(Vec::new()),
        })),
        step(Step::Purge(Empty {})),
        Body::ExportVShard(admin_request::ExportVShard {
            group: group.get(),
            vshard: vshard.get(),
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_clients_are_refused_every_admin_operation_admins_are_not_and_nodes_are_refused_all() {
    let log = audit_log();
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("roles test").unwrap();
    let (node, addr) = serve_one_node(&ca, dir.path()).await;

    // The kv client reads and writes keys.
    let reader =
        KvClient::new(&ca.issue_client_with_role("reader", ClientRole::Kv).unwrap()).unwrap();
    put_when_ready(&reader, addr, "k", "v1").await;
    assert_eq!(
        reader.put(addr, b"k", b"v2").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(
        reader.get(addr, b"k").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    // ... and reads the cluster's shape.
    let table = admin(reader.nodes(), addr, Body::Table(Empty {})).await;
    assert!(
        matches!(table.body, Some(client_reply::Body::Admin(_))),
        "{table:?}"
    );

    // It is refused everything that changes the cluster, and nothing changes.
    let routing = node.routing();
    let vshard = routing.vshard_of_key(b"k");
    let group = routing.group_for_key(b"k");
    let voters_before = node
        .status()
        .await
        .unwrap()
        .groups
        .into_iter()
        .find(|g| g.group == group)
        .unwrap();
    let operations = changing_operations(group, vshard, routing.version());
    for body in operations.clone() {
        let operation = AdminRequest::new(body.clone()).operation();
        let reply = admin(reader.nodes(), addr, body).await;
        let error = reply.failed().expect("refused").to_error();
        assert!(
            matches!(&error, RemoteError::Forbidden { operation: o, caller, .. }
                if o == operation && caller.contains("reader") && caller.contains("kv")),
            "{operation}: {error}"
        );
        assert!(!error.may_have_taken_effect());
    }
    assert_eq!(node.routing().version(), routing.version());
    let voters_after = node
        .status()
        .await
        .unwrap()
        .groups
        .into_iter()
        .find(|g| g.group == group)
        .unwrap();
    assert_eq!(voters_after.voters, voters_before.voters);
    assert!(voters_after.learners.is_empty());
    assert_eq!(voters_after.leader, Some(NodeId(1)));
    assert!(node.serves(group, vshard), "the vShard was not released");
    assert_eq!(
        reader.get(addr, b"k").await.unwrap().as_deref(),
        Some(&b"v2"[..]),
        "the vShard was not purged"
    );

    // Each refusal was audited with the caller's identity.
    {
        let events = log.0.lock().unwrap();
        for body in &operations {
            let operation = AdminRequest::new(body.clone()).operation();
            let event = events
                .iter()
                .find(|e| e.get("operation").map(String::as_str) == Some(operation))
                .unwrap_or_else(|| panic!("no audit event for {operation}: {events:?}"));
            assert_eq!(event.get("client").map(String::as_str), Some("reader"));
            assert_eq!(event.get("role").map(String::as_str), Some("kv"));
            assert!(event["outcome"].contains("may not"), "{event:?}");
        }
    }

    // An admin client runs changing operations: export, release, take back.
    let ops =
        NodeClient::new(&ca.issue_client_with_role("ops", ClientRole::Admin).unwrap()).unwrap();
    let export = admin(
        &ops,
        addr,
        Body::ExportVShard(admin_request::ExportVShard {
            group: group.get(),
            vshard: vshard.get(),
        }),
    )
    .await;
    assert!(
        matches!(
            &export.body,
            Some(client_reply::Body::Admin(admin::AdminReply {
                body: Some(admin_reply::Body::Export(e))
            })) if !e.data.is_empty()
        ),
        "{export:?}"
    );
    for step in [
        Step::Release(Empty {}),
        Step::Acquire(Acquire { data: None }),
    ] {
        let reply = admin(
            &ops,
            addr,
            Body::VShardStep(admin_request::VShardStep {
                group: group.get(),
                vshard: vshard.get(),
                step: Some(step),
            }),
        )
        .await;
        assert!(reply.failed().is_none(), "{reply:?}");
    }
    assert!(node.serves(group, vshard));
    {
        let events = log.0.lock().unwrap();
        let allowed: Vec<&Fields> = events
            .iter()
            .filter(|e| e.get("client").map(String::as_str) == Some("ops"))
            .collect();
        assert_eq!(allowed.len(), 3, "{allowed:?}");
        for event in allowed {
            assert_eq!(event.get("role").map(String::as_str), Some("admin"));
            assert_eq!(event.get("outcome").map(String::as_str), Some("ok"));
            // The arguments say what was changed.
            let what = format!("group {} vShard {}", group.get(), vshard.get());
            assert!(
                event.get("arguments").is_some_and(|a| a.starts_with(&what)),
                "{event:?}"
            );
        }
    }

    // A node certificate is refused on the client protocol, keys included.
    let node2 = ca.issue_node(NodeId(2), &[]).unwrap();
    let impostor =
        NodeClient::with_tls(node2.client_config(&[certs::CLIENT_ALPN]).unwrap()).unwrap();
    let reply = admin(&impostor, addr, Body::Table(Empty {})).await;
    assert!(
        matches!(reply.failed().map(admin::Failure::to_error), Some(RemoteError::Forbidden { caller, .. }) if caller == "node 2"),
        "{reply:?}"
    );
    let put = KvClient::over(impostor).put(addr, b"k", b"stolen").await;
    assert!(
        matches!(put, Err(ClientError::Remote(RemoteError::Forbidden { .. }))),
        "{put:?}"
    );
    assert_eq!(
        reader.get(addr, b"k").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );

    reader.close().await;
    ops.close().await;
    node.shutdown().await;
}

/// A client certificate may open only so many sessions through one node (each `KvClient` is
/// one session): past the budget a new session's write is refused as did-not-take-effect,
/// while the sessions it has go on and another certificate is untouched. The groups' tables,
/// bounded per group only, cannot be grown group after group by one client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opening_sessions_without_end_is_refused_past_its_budget_and_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("session budget test").unwrap();
    let budget = SessionBudget::new(3, Duration::from_secs(3600));
    let (node, addr) = serve_one_node_with(&ca, dir.path(), budget).await;
    let flood = ca.issue_client_with_role("flood", ClientRole::Kv).unwrap();
    let first = KvClient::new(&flood).unwrap();
    put_when_ready(&first, addr, "k0", "v").await;
    let mut clients = vec![first];
    for i in 1..3 {
        let client = KvClient::new(&flood).unwrap();
        client
            .put(addr, format!("k{i}").as_bytes(), b"v")
            .await
            .unwrap();
        clients.push(client);
    }
    let one_too_many = KvClient::new(&flood).unwrap();
    let refused = one_too_many.put(addr, b"k3", b"v").await.unwrap_err();
    assert!(!refused.may_have_taken_effect(), "{refused}");
    assert!(refused.to_string().contains("reuse a session"), "{refused}");
    assert_eq!(one_too_many.get(addr, b"k3").await.unwrap(), None);
    // Its sessions go on; another certificate has its own budget.
    for (i, client) in clients.iter().enumerate() {
        client
            .put(addr, format!("k{i}").as_bytes(), b"again")
            .await
            .unwrap();
    }
    let other =
        KvClient::new(&ca.issue_client_with_role("other", ClientRole::Kv).unwrap()).unwrap();
    other.put(addr, b"k3", b"v").await.unwrap();
    node.shutdown().await;
}
