//! `pontoon kv` against any node: three nodes over real QUIC and mutual TLS, each serving the
//! KV service. A put and a get sent to a follower of the key's group, with no redirect
//! followed (one request to one node, `NodeClient::request`), succeed: the follower forwards
//! the write to the leader over the peer connection, and reads through its own replica.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use admin::NodeClient;
use admin::wire::{ClientReply, ClientRequest, client_reply};
use certs::{ClientRole, ClusterCa};
use coordinator::{ClientSession, Node, NodeConfig};
use pontoon_service::{KvReply, KvRequest, KvService, KvStateMachine};
use prost::Message as _;
use routing::{NodeId, RoutingTable};
use tokio::time::Instant;

/// Three nodes of one data group on loopback, each serving the KV service.
async fn serve_three(ca: &ClusterCa, dir: &std::path::Path) -> Vec<(Node, SocketAddr)> {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(16, 1, &ids, 3).unwrap();
    let mut nodes = Vec::new();
    for &id in &ids {
        let identity = ca.issue_node(id, &["127.0.0.1".to_string()]).unwrap();
        let mut config = NodeConfig::new(
            id,
            "127.0.0.1:0".parse().unwrap(),
            dir.join(format!("n{id}")),
        )
        .tick_interval(Duration::from_millis(10))
        .request_timeout(Duration::from_secs(5));
        config.transport = config.transport.accept_clients(true);
        let state = KvStateMachine::new();
        let node = Node::start(config, &identity, routing.clone(), state.clone())
            .await
            .unwrap();
        nodes.push((node, state));
    }
    let addrs: BTreeMap<NodeId, SocketAddr> = nodes
        .iter()
        .map(|(n, _)| (n.id(), n.local_addr()))
        .collect();
    for (node, _) in &nodes {
        for (&peer, &addr) in &addrs {
            if peer != node.id() {
                node.set_peer_address(peer, addr);
            }
        }
    }
    let mut served = Vec::new();
    for (node, state) in nodes {
        let mut clients = node.take_client_connections().unwrap();
        let service = KvService::new(node.clone(), state, addrs.clone());
        tokio::spawn(async move {
            while let Some(client) = clients.recv().await {
                tokio::spawn(service.clone().serve(client));
            }
        });
        let addr = node.local_addr();
        served.push((node, addr));
    }
    served
}

/// A node that does not lead the key's group, once every node agrees on the leader.
async fn follower_of(nodes: &[(Node, SocketAddr)], key: &[u8]) -> (Node, SocketAddr) {
    let group = nodes[0].0.group_for_key(key);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for (node, _) in nodes {
            leaders.push(
                node.group_status(group)
                    .await
                    .unwrap()
                    .and_then(|s| s.leader),
            );
        }
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*leader))
        {
            let (node, addr) = nodes.iter().find(|(n, _)| n.id() != *leader).unwrap();
            return (node.clone(), *addr);
        }
        assert!(Instant::now() < until, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kv_reply(reply: &ClientReply) -> KvReply {
    match &reply.body {
        Some(client_reply::Body::App(bytes)) => KvReply::decode(bytes.as_slice()).unwrap(),
        _ => panic!("the follower did not answer the request itself: {reply:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_and_reads_sent_to_a_follower_succeed_without_a_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("forwarding test").unwrap();
    let nodes = serve_three(&ca, dir.path()).await;
    let client =
        NodeClient::new(&ca.issue_client_with_role("app", ClientRole::Kv).unwrap()).unwrap();
    let (follower, addr) = follower_of(&nodes, b"k").await;
    let follower = follower.id();
    let send = |request: KvRequest| {
        let client = &client;
        async move {
            client
                .request(
                    addr,
                    Some(follower),
                    &ClientRequest::app(request.to_bytes()),
                )
                .await
                .unwrap()
        }
    };
    let put = send(KvRequest::put(b"k".to_vec(), b"v1".to_vec())).await;
    assert_eq!(kv_reply(&put).value(), None);
    // A write in a client session is forwarded with its session: answered, and applied once.
    let session = ClientSession::new();
    let command = session.command();
    let once = KvRequest::put(b"k".to_vec(), b"v2".to_vec()).in_session(&command);
    assert_eq!(
        kv_reply(&send(once.clone()).await).value(),
        Some(&b"v1"[..])
    );
    assert_eq!(kv_reply(&send(once).await).value(), Some(&b"v1"[..]));
    let get = send(KvRequest::get(b"k".to_vec())).await;
    assert_eq!(kv_reply(&get).value(), Some(&b"v2"[..]));
    // The writes went over the follower's forward stream, one request frame each (the second
    // session write too: the follower does not hold the session's answers, the group does).
    let by_id = |id: NodeId| nodes.iter().find(|(n, _)| n.id() == id).unwrap();
    let stats = by_id(follower).0.status().await.unwrap().transport;
    assert_eq!(stats.forward_frames_sent, 3, "{stats:?}");
    // A client that goes straight to the leader costs no forward at all.
    let group = nodes[0].0.group_for_key(b"k");
    let leader = by_id(follower)
        .0
        .group_status(group)
        .await
        .unwrap()
        .unwrap()
        .leader
        .unwrap();
    let (leader_node, leader_addr) = by_id(leader);
    let before = leader_node
        .status()
        .await
        .unwrap()
        .transport
        .forward_frames_sent;
    let direct = client
        .request(
            *leader_addr,
            Some(leader),
            &ClientRequest::app(KvRequest::put(b"k".to_vec(), b"v3".to_vec()).to_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(kv_reply(&direct).value(), Some(&b"v2"[..]));
    let after = leader_node.status().await.unwrap().transport;
    assert_eq!(after.forward_frames_sent, before, "{after:?}");
    assert_eq!(after.forward_frames_received, 3, "{after:?}");
    for (node, _) in &nodes {
        node.shutdown().await;
    }
}
