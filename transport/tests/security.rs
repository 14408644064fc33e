//! Security through real handshakes: unknown CA, expired certificate, no client certificate,
//! wrong ALPN and a frame claiming another sender are refused; bad frames reset only their
//! own stream.

// Helpers outside #[test] fns unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use pontoon_transport::wire::{self, RaftBatch, StreamHeader, StreamKind};
use pontoon_transport::{Envelope, Inbound, Transport, TransportConfig, codes, to_wire};
use routing::{GroupId, NodeId};

fn frame<M: prost::Message>(m: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::encode_frame(m, 1 << 20, &mut out).unwrap();
    out.to_vec()
}

fn raft_frame(claimed: u64, to: u64, index: u64) -> Vec<u8> {
    frame(&RaftBatch {
        from: claimed,
        messages: vec![to_wire(&append(claimed, to, index, 4))],
    })
}

/// Node 1 dials node 2 whose peer fails to authenticate; node 1 hears `Unreachable` and node 2
/// hands nothing to its coordinator.
async fn refused_dial(one: certs::NodeIdentity, two: certs::NodeIdentity) {
    let book = pontoon_transport::AddressBook::new();
    let (t1, mut in1) = pontoon_transport::QuicTransport::bind(
        any_port(),
        &one,
        TransportConfig::default(),
        book.clone(),
        all_groups(),
    )
    .await
    .unwrap();
    let (t2, mut in2) = pontoon_transport::QuicTransport::bind(
        any_port(),
        &two,
        TransportConfig::default(),
        book.clone(),
        all_groups(),
    )
    .await
    .unwrap();
    book.insert(NodeId(2), t2.local_addr());
    t1.send(
        NodeId(2),
        Envelope::Raft {
            group: GroupId(1),
            messages: vec![append(1, 2, 0, 4)],
        },
    )
    .unwrap();
    // Either the dial fails, or (TLS 1.3: the client finishes first) the connection is
    // closed by the server's verdict: either way node 1 hears that node 2 is unreachable.
    match next(&mut in1).await {
        Inbound::Unreachable { to, group } => {
            assert_eq!(to, NodeId(2));
            assert!(matches!(group, Some(GroupId(1)) | None));
        }
        other => panic!("unexpected {other:?}"),
    }
    wait_for("node 2 to count the refusal", || {
        t2.stats().connections_refused >= 1
    })
    .await;
    assert!(in2.try_recv().is_err());
    // (Node 1 may briefly hold its side of a handshake the server then rejects.)
    assert!(t2.connected_peers().is_empty());
    assert_eq!(t2.stats().messages_received, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_an_unknown_ca_is_refused() {
    let ours = certs::ClusterCa::generate("ours").unwrap();
    let theirs = certs::ClusterCa::generate("theirs").unwrap();
    refused_dial(identity(&theirs, 1), identity(&ours, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let ca = certs::ClusterCa::generate("expiry").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_node_with_validity(
            NodeId(1),
            &["127.0.0.1".into()],
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    refused_dial(expired, identity(&ca, 2)).await;
}

async fn handshake_fails(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    target: std::net::SocketAddr,
) {
    match endpoint
        .connect_with(client, target, &certs::node_server_name(NodeId(1)))
        .unwrap()
        .await
    {
        Err(_) => {}
        // TLS 1.3: the client may finish first; the server's verdict then closes it.
        Ok(conn) => {
            let closed = tokio::time::timeout(DEADLINE, conn.closed()).await.unwrap();
            assert!(
                !matches!(closed, quinn::ConnectionError::TimedOut),
                "refused, not timed out: {closed}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_without_a_client_certificate_is_refused() {
    let ca = certs::ClusterCa::generate("noclient").unwrap();
    let (nodes, _book) = cluster(&ca, &[1], TransportConfig::default(), all_groups()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![certs::ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let ep = quinn::Endpoint::client(any_port()).unwrap();
    handshake_fails(&ep, client, nodes[0].transport.local_addr()).await;
    wait_for("the refusal to be counted", || {
        nodes[0].transport.stats().connections_refused >= 1
    })
    .await;
    assert!(nodes[0].transport.connected_peers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_with_the_wrong_alpn_is_refused() {
    let ca = certs::ClusterCa::generate("alpn").unwrap();
    let (nodes, _book) = cluster(&ca, &[1], TransportConfig::default(), all_groups()).await;
    let (_, client) = pontoon_transport::quinn_configs(
        &identity(&ca, 2),
        &TransportConfig::default(),
        b"not-pontoon/9",
    )
    .unwrap();
    let ep = quinn::Endpoint::client(any_port()).unwrap();
    handshake_fails(&ep, client, nodes[0].transport.local_addr()).await;
    wait_for("the refusal to be counted", || {
        nodes[0].transport.stats().connections_refused >= 1
    })
    .await;
    assert!(nodes[0].transport.connected_peers().is_empty());
}

/// Opens a stream, writes `bytes`, and returns the reset code the receiver chose.
async fn reset_code(conn: &quinn::Connection, bytes: &[u8]) -> Option<u32> {
    let mut s = conn.open_uni().await.unwrap();
    // Not finished: a finished stream whose data was all acknowledged reports `None` even
    // when the receiver stopped it.
    let _ = s.write_all(bytes).await;
    match tokio::time::timeout(DEADLINE, s.stopped()).await.unwrap() {
        Ok(Some(code)) => Some(u32::try_from(code.into_inner()).unwrap()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_reset_alone_and_the_connection_carries_on() {
    let ca = certs::ClusterCa::generate("frames").unwrap();
    let config = TransportConfig::default()
        .max_frame_bytes(4096)
        .snapshot_chunk_bytes(1024);
    let (mut nodes, _book) = cluster(&ca, &[1], config.clone(), groups([1, 2, 3, 4, 5, 6])).await;
    // A genuine node 3 (valid certificate), speaking raw QUIC.
    let raw = raw_endpoint(&identity(&ca, 3), &config, certs::ALPN);
    let conn = raw
        .connect(
            nodes[0].transport.local_addr(),
            &certs::node_server_name(NodeId(1)),
        )
        .unwrap()
        .await
        .unwrap();
    let header = |g: u64| frame(&StreamHeader::new(StreamKind::Raft, g));

    // A stream stuck inside a frame (announces 100 bytes, sends 10, stays open).
    let mut stuck = conn.open_uni().await.unwrap();
    stuck
        .write_all(&[header(6), 100u32.to_be_bytes().to_vec(), vec![0; 10]].concat())
        .await
        .unwrap();

    // A frame claiming to come from node 2: dropped, counted, stream reset.
    assert_eq!(
        reset_code(&conn, &[header(1), raft_frame(2, 1, 0)].concat()).await,
        Some(codes::SENDER_MISMATCH)
    );
    // Oversized frame: refused from its prefix.
    assert_eq!(
        reset_code(
            &conn,
            &[header(2), (1u32 << 30).to_be_bytes().to_vec()].concat()
        )
        .await,
        Some(codes::TOO_LARGE)
    );
    // Garbage body.
    assert_eq!(
        reset_code(
            &conn,
            &[header(3), 5u32.to_be_bytes().to_vec(), vec![0xff; 5]].concat()
        )
        .await,
        Some(codes::MALFORMED)
    );
    // Unknown stream kind, unknown group.
    let unknown_kind = frame(&StreamHeader {
        version: wire::WIRE_VERSION,
        kind: 42,
        group_id: 4,
    });
    assert_eq!(
        reset_code(&conn, &unknown_kind).await,
        Some(codes::UNKNOWN_KIND)
    );
    assert_eq!(
        reset_code(&conn, &header(99)).await,
        Some(codes::UNKNOWN_GROUP)
    );

    // Meanwhile a well-formed stream on the same connection is delivered.
    let mut good = conn.open_uni().await.unwrap();
    good.write_all(&[header(5), raft_frame(3, 1, 7)].concat())
        .await
        .unwrap();
    match next(&mut nodes[0].inbound).await {
        Inbound::Message {
            from,
            envelope: Envelope::Raft { group, messages },
        } => {
            assert_eq!((from, group, messages[0].index), (NodeId(3), GroupId(5), 7));
        }
        other => panic!("unexpected {other:?}"),
    }
    let s = nodes[0].transport.stats();
    assert_eq!(s.dropped_sender_mismatch, 1);
    assert_eq!(
        (
            s.resets_sender_mismatch,
            s.resets_too_large,
            s.resets_malformed,
            s.resets_unknown_kind,
            s.resets_unknown_group
        ),
        (1, 1, 1, 1, 1)
    );
    assert_eq!(s.streams_reset, 5);
    assert_eq!(s.messages_received, 1);
    assert!(conn.close_reason().is_none(), "the connection survived");
    drop(stuck);
}
