//! Revocations live in the replicated routing table: a revoked certificate serial is refused
//! at every node's handshake once the table applies, while the cluster keeps serving; a node
//! id can only be revoked once it has left the cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::SharedKv;
use pontoon_coordinator::reshape::{ReshapeError, Revocation};
use pontoon_coordinator::testkit::local::LocalCluster;
use routing::{NodeId, RoutingTable};
use transport::{AddressBook, QuicTransport, TransportConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_serial_is_refused_by_every_node_and_a_member_id_cannot_be_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(64, 4, &nodes, 3).unwrap();
    let cluster = LocalCluster::start(
        dir.path(),
        routing,
        |c| c.tick_interval(Duration::from_millis(20)),
        |_| SharedKv::default(),
    )
    .await
    .unwrap();
    assert!(
        cluster
            .wait_for_leaders(Duration::from_secs(20))
            .await
            .is_some()
    );
    let reshaper = cluster.reshaper(200);

    let refused = reshaper.revoke(Revocation::Node(NodeId(2))).await;
    assert!(
        matches!(refused, Err(ReshapeError::Invalid(_))),
        "{refused:?}"
    );

    // Node 3's certificate is stolen: its serial is revoked while node 3 is still a member.
    let cert_dir = dir.path().join("certs");
    let stolen = certs::files::load_node(&cert_dir, NodeId(3)).unwrap();
    let serial = certs::leaf_serial(stolen.cert_chain()).unwrap();
    let table = reshaper
        .revoke(Revocation::Serial(serial.clone()))
        .await
        .unwrap();
    assert!(table.is_serial_revoked(&serial));
    for node in cluster.running() {
        node.wait_for_routing(table.version()).await;
    }

    // The thief dials node 1 with it and is refused at the handshake.
    let node1 = cluster.node(NodeId(1)).unwrap();
    let book = AddressBook::new();
    book.insert(NodeId(1), node1.local_addr());
    let (thief, _inbound) = QuicTransport::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        &stolen,
        TransportConfig::default(),
        book,
        Arc::new(|_| true),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = transport::Transport::send(
            &thief,
            NodeId(1),
            transport::Envelope::Heartbeats(transport::HeartbeatBatch::liveness()),
        );
        let status = node1.status().await.unwrap();
        if status.transport.connections_refused_revoked > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked certificate was never refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nodes 1 and 2 still make a quorum and keep serving once node 3 (cut off by its own
    // revoked certificate) is taken away and its groups elect new leaders.
    cluster.kill(NodeId(3)).await;
    assert!(
        cluster
            .wait_for_leaders(Duration::from_secs(20))
            .await
            .is_some()
    );
    cluster
        .propose(b"key", b"key=v".to_vec(), Duration::from_secs(10))
        .await
        .unwrap();
    cluster.shutdown().await;
}
