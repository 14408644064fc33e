//! Three `Node`s over the in-process `LocalNetwork`: the node holds its transport through the
//! `NodeTransport` trait alone, so the same handle runs without sockets, and says honestly what
//! such a transport cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::time::Duration;

use common::SharedKv;
use pontoon_coordinator::{Node, NodeConfig, NodeError, RequestError};
use routing::{NodeId, RoutingTable};
use transport::mem::LocalNetwork;
use transport::{AddressBook, NodeTransport, TransportError};

async fn start(dir: &std::path::Path, net: &LocalNetwork, routing: &RoutingTable) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in routing.nodes() {
        let (transport, inbound) = net.join(id, 4096);
        let config = NodeConfig::new(id, transport.local_addr(), dir.join(format!("n{id}")))
            .tick_interval(Duration::from_millis(10))
            .request_timeout(Duration::from_secs(2));
        let node = Node::start_with_transport(
            config,
            transport,
            inbound,
            AddressBook::new(),
            routing.clone(),
            SharedKv::default(),
        )
        .unwrap();
        nodes.push(node);
    }
    nodes
}

/// Proposes on each node in turn until one leads the key's group, up to `deadline`.
async fn put_anywhere(nodes: &[Node], key: &str, deadline: Duration) -> Result<(), RequestError> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let mut last = None;
        for node in nodes {
            match node
                .propose(key.as_bytes(), format!("{key}=v").into_bytes())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        if tokio::time::Instant::now() >= until {
            return Err(last.unwrap_or(RequestError::ShuttingDown));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_the_local_network_elect_and_replicate_without_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(64, 4, &ids, 3).unwrap();
    let net = LocalNetwork::new();
    let nodes = start(dir.path(), &net, &routing).await;
    for i in 0..16 {
        put_anywhere(&nodes, &format!("k{i}"), Duration::from_secs(20))
            .await
            .unwrap();
    }
    let stats = nodes[0].status().await.unwrap().transport;
    assert!(
        stats.messages_sent > 0,
        "raft traffic went through the local network"
    );
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_tls_refuses_a_certificate_reload_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let ids = [NodeId(1)];
    let routing = RoutingTable::uniform(8, 1, &ids, 1).unwrap();
    let net = LocalNetwork::new();
    let nodes = start(dir.path(), &net, &routing).await;
    let ca = certs::ClusterCa::generate("test").unwrap();
    let identity = ca.issue_node(NodeId(1), &[]).unwrap();
    let refused = nodes[0].reload_tls(&identity, &[ca.cert_der().clone()]);
    assert!(
        matches!(
            refused,
            Err(NodeError::Transport(TransportError::NoTls { .. }))
        ),
        "{refused:?}"
    );
    nodes[0].shutdown().await;
    // The endpoint is gone from the network once the node shut down.
    let (other, _rx) = net.join(NodeId(2), 8);
    let probe = transport::Envelope::Raft {
        group: routing::GroupId(1),
        messages: vec![],
    };
    assert!(transport::Transport::send(&*other, NodeId(1), probe).is_err());
}
