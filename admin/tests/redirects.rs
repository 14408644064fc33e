//! `NodeClient` following redirects over real QUIC: a node that keeps redirecting to a node
//! that does not answer ends the call after one connect timeout, as not sent, instead of
//! dialling the dead node again on every redirect; the next call, within
//! `UNREACHABLE_FOR`, does not dial it at all.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::RequestError;
use pontoon_admin::wire::{ClientReply, ClientRequest, Failure};
use pontoon_admin::{ClientError, NodeClient, RemoteError};
use routing::{GroupId, NodeId};
use transport::{AddressBook, QuicTransport, TransportConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_again_to_a_node_that_did_not_answer_fails_as_not_sent() {
    let ca = certs::ClusterCa::generate("redirects").unwrap();
    let identity = ca
        .issue_node(NodeId(1), &["127.0.0.1".to_string()])
        .unwrap();
    let (node, _inbound) = QuicTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        TransportConfig::default().accept_clients(true),
        AddressBook::new(),
        Arc::new(|_| true),
    )
    .await
    .unwrap();
    // Node 2's address: bound, and never answering.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let mut clients = node.take_client_connections().unwrap();
    tokio::spawn(async move {
        while let Some(client) = clients.recv().await {
            tokio::spawn(async move {
                while let Ok(incoming) = client.accept_request().await {
                    let Ok(mut request) = incoming.read().await else {
                        continue;
                    };
                    let mut failure =
                        Failure::from_error(&RemoteError::Propose(RequestError::NotLeader {
                            group: GroupId(1),
                            leader: Some(NodeId(2)),
                        }));
                    failure.leader_addr = Some(dead_addr.to_string());
                    let reply =
                        pontoon_admin::wire::encode(&ClientReply::failure(failure)).unwrap();
                    let _ = request.reply.write_all(&reply).await;
                    let _ = request.reply.finish();
                }
            });
        }
    });
    let client = NodeClient::new(&ca.issue_client("writer").unwrap()).unwrap();
    let started = Instant::now();
    let error = client
        .call(
            node.local_addr(),
            None,
            &ClientRequest::app(b"k=1".to_vec()),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    match &error {
        ClientError::Connect { addr, .. } => assert_eq!(*addr, dead_addr),
        other => panic!("expected the dead node's connect error, got {other}"),
    }
    assert!(!error.may_have_taken_effect(), "{error}");
    // One connect timeout (10 s), not one per redirect (8 of them).
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // The next call does not dial the silent node again: it fails at once.
    let started = Instant::now();
    let again = client
        .call(
            node.local_addr(),
            None,
            &ClientRequest::app(b"k=1".to_vec()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(again, ClientError::Connect { addr, .. } if addr == dead_addr),
        "{again}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    drop(dead);
}
