//! Client connections on the node's own endpoint, through real handshakes: a client
//! certificate on the client ALPN is handed over by name and serves streams; a client
//! certificate on the raft ALPN, and the client ALPN on an endpoint that does not serve
//! clients, are refused; a full client queue closes newcomers; raft traffic is unchanged.

// Helpers outside #[test] fns unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use pontoon_transport::{
    ClientConnection, Envelope, Inbound, Transport, TransportConfig, codes, quinn_configs,
};
use quinn::crypto::rustls::QuicClientConfig;
use routing::{GroupId, NodeId};
use tokio::sync::mpsc;

fn serving_clients() -> TransportConfig {
    TransportConfig::default().accept_clients(true)
}

/// A quinn client config presenting `client`'s certificate and offering `alpn`.
fn client_tls(client: &certs::ClientIdentity, alpn: &[u8]) -> quinn::ClientConfig {
    let tls = client.client_config(&[alpn]).unwrap();
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

/// Dials `target` (node 1) as a client would: any node of the cluster will do.
async fn dial(
    config: quinn::ClientConfig,
    target: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let ep = quinn::Endpoint::client(any_port()).unwrap();
    ep.connect_with(config, target, certs::CLUSTER_SERVER_NAME)
        .unwrap()
        .await
}

async fn next_client(rx: &mut mpsc::Receiver<ClientConnection>) -> ClientConnection {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("deadline")
        .expect("channel open")
}

/// The application code the connection was closed with, once it is closed.
async fn close_code(conn: &quinn::Connection) -> Option<u32> {
    match tokio::time::timeout(DEADLINE, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            Some(u32::try_from(close.error_code.into_inner()).unwrap())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_the_client_alpn_is_handed_over_by_name_and_serves_streams() {
    let ca = certs::ClusterCa::generate("clients").unwrap();
    let (nodes, _book) = cluster(&ca, &[1], serving_clients(), all_groups()).await;
    let node = &nodes[0].transport;
    let mut clients = node.take_client_connections().expect("accept_clients");
    assert!(node.take_client_connections().is_none(), "Some once");

    let kv = ca.issue_client("kv-cli").unwrap();
    let conn = dial(client_tls(&kv, certs::CLIENT_ALPN), node.local_addr())
        .await
        .unwrap();
    let accepted = next_client(&mut clients).await;
    assert_eq!(accepted.name, "kv-cli");

    // The service answers a request on a stream the client opens.
    let server = tokio::spawn(async move {
        let (mut send, mut recv) = accepted.connection.accept_bi().await.unwrap();
        let request = recv.read_to_end(64).await.unwrap();
        send.write_all(&[b"pong:".as_slice(), &request].concat())
            .await
            .unwrap();
        send.finish().unwrap();
        // Keep the connection until the client has read the answer and closed.
        accepted.connection.closed().await;
    });
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"ping").await.unwrap();
    send.finish().unwrap();
    let answer = tokio::time::timeout(DEADLINE, recv.read_to_end(64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"pong:ping");
    conn.close(0u32.into(), b"done");
    server.await.unwrap();

    let s = node.stats();
    assert_eq!(s.client_connections, 1);
    assert_eq!(s.connections_refused, 0);
    assert_eq!(s.connections_opened, 0, "a client is not a peer");
    assert!(node.connected_peers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_the_client_alpn_is_handed_over_as_node_id() {
    let ca = certs::ClusterCa::generate("node-as-client").unwrap();
    let (nodes, _book) = cluster(&ca, &[1], serving_clients(), all_groups()).await;
    let node = &nodes[0].transport;
    let mut clients = node.take_client_connections().unwrap();
    let (_, as_client) = quinn_configs(
        &identity(&ca, 7),
        &TransportConfig::default(),
        certs::CLIENT_ALPN,
    )
    .unwrap();
    let _conn = dial(as_client, node.local_addr()).await.unwrap();
    assert_eq!(next_client(&mut clients).await.name, "node-7");
    assert!(
        node.connected_peers().is_empty(),
        "not adopted as a raft peer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_on_the_raft_alpn_is_refused() {
    let ca = certs::ClusterCa::generate("client-on-raft").unwrap();
    let kv = ca.issue_client("kv-cli").unwrap();
    for config in [serving_clients(), TransportConfig::default()] {
        let (nodes, _book) = cluster(&ca, &[1], config.clone(), all_groups()).await;
        let node = &nodes[0].transport;
        let mut clients = node.take_client_connections();
        // The chain is the cluster CA's, so the handshake completes; the node then refuses.
        let conn = dial(client_tls(&kv, certs::ALPN), node.local_addr())
            .await
            .unwrap();
        assert_eq!(close_code(&conn).await, Some(codes::NOT_A_NODE));
        wait_for("the refusal to be counted", || {
            node.stats().connections_refused >= 1
        })
        .await;
        let s = node.stats();
        assert_eq!((s.connections_refused, s.client_connections), (1, 0));
        assert!(node.connected_peers().is_empty());
        if let Some(rx) = clients.as_mut() {
            assert!(rx.try_recv().is_err(), "not handed over as a client");
        }
    }
}

/// The handshake ends in a TLS alert (the server offers no common ALPN), not in an
/// application close by the node after a completed handshake.
async fn refused_by_tls(attempt: Result<quinn::Connection, quinn::ConnectionError>) {
    let error = match attempt {
        Err(e) => e,
        // TLS 1.3: the client may finish first; the server's alert then closes it.
        Ok(conn) => tokio::time::timeout(DEADLINE, conn.closed()).await.unwrap(),
    };
    assert!(
        matches!(
            error,
            quinn::ConnectionError::ConnectionClosed(_) | quinn::ConnectionError::TransportError(_)
        ),
        "refused by the TLS handshake: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_accept_clients_the_client_alpn_is_refused() {
    let ca = certs::ClusterCa::generate("no-clients").unwrap();
    let (nodes, _book) = cluster(&ca, &[1], TransportConfig::default(), all_groups()).await;
    let node = &nodes[0].transport;
    assert!(node.take_client_connections().is_none());
    let kv = ca.issue_client("kv-cli").unwrap();
    refused_by_tls(dial(client_tls(&kv, certs::CLIENT_ALPN), node.local_addr()).await).await;
    // Not even a node gets in on the client ALPN (nor becomes a raft peer through it).
    let (_, as_client) = quinn_configs(
        &identity(&ca, 7),
        &TransportConfig::default(),
        certs::CLIENT_ALPN,
    )
    .unwrap();
    refused_by_tls(dial(as_client, node.local_addr()).await).await;
    wait_for("both refusals to be counted", || {
        node.stats().connections_refused >= 2
    })
    .await;
    let s = node.stats();
    assert_eq!((s.client_connections, s.connections_opened), (0, 0));
    assert!(node.connected_peers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_client_queue_closes_newcomers_with_clients_busy() {
    let ca = certs::ClusterCa::generate("busy").unwrap();
    let (nodes, _book) = cluster(
        &ca,
        &[1],
        serving_clients().client_queue_len(1),
        all_groups(),
    )
    .await;
    let node = &nodes[0].transport;
    let mut clients = node.take_client_connections().unwrap();
    let kv = ca.issue_client("kv-cli").unwrap();
    let first = dial(client_tls(&kv, certs::CLIENT_ALPN), node.local_addr())
        .await
        .unwrap();
    wait_for("the first client to be queued", || {
        node.stats().client_connections == 1
    })
    .await;
    // Nobody takes the first one: the second finds the queue full.
    let second = dial(client_tls(&kv, certs::CLIENT_ALPN), node.local_addr())
        .await
        .unwrap();
    assert_eq!(close_code(&second).await, Some(codes::CLIENTS_BUSY));
    let s = node.stats();
    assert_eq!(
        (s.client_connections, s.client_connections_refused_busy),
        (1, 1)
    );
    // The queued one is intact and still handed over.
    let queued = next_client(&mut clients).await;
    assert_eq!(queued.name, "kv-cli");
    assert!(queued.connection.close_reason().is_none());
    assert!(first.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_traffic_is_unchanged_when_clients_are_served() {
    let ca = certs::ClusterCa::generate("both").unwrap();
    let (mut nodes, _book) = cluster(&ca, &[1, 2], serving_clients(), all_groups()).await;
    let mut clients = nodes[1].transport.take_client_connections().unwrap();
    nodes[0]
        .transport
        .send(
            NodeId(2),
            Envelope::Raft {
                group: GroupId(3),
                messages: vec![append(1, 2, 9, 16)],
            },
        )
        .unwrap();
    match next(&mut nodes[1].inbound).await {
        Inbound::Message {
            from,
            envelope: Envelope::Raft { group, messages },
        } => assert_eq!((from, group, messages[0].index), (NodeId(1), GroupId(3), 9)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(nodes[1].transport.connected_peers(), vec![NodeId(1)]);
    assert!(
        clients.try_recv().is_err(),
        "a node on the raft ALPN is no client"
    );
    assert_eq!(nodes[1].transport.stats().client_connections, 0);
}
