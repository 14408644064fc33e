//! A peer holding a genuine node certificate of the cluster CA attacks a node over real QUIC
//! and TLS. Each test states the attack, the bound the node keeps (memory measured as the
//! process's RSS where the issue measured it so), and that legitimate traffic still flows.

// Helpers outside #[test] fns unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use pontoon_transport::wire::StreamKind;
use pontoon_transport::{PeerAdmission, Revocations, Transport, TransportConfig, codes};
use routing::NodeId;
use testkit::{amplifying_frame, header, snapshot_chunk, stalled_snapshot_opening};

const MIB: u64 = 1 << 20;

/// Writes `header` then `frame` on a new stream and returns the code it was reset with.
async fn reset_code(conn: &quinn::Connection, header: Bytes, frame: Bytes) -> Option<u32> {
    let mut s = conn.open_uni().await.unwrap();
    // Zero-copy: the attacker's own send buffer must not count against the victim's RSS.
    let _ = s.write_chunk(header).await;
    let _ = s.write_chunk(frame).await;
    // Left open: the reset, not the end of the stream, is what we wait for.
    match tokio::time::timeout(DEADLINE, s.stopped()).await.unwrap() {
        Ok(Some(code)) => u32::try_from(code.into_inner()).ok(),
        other => {
            eprintln!("stream ended with {other:?}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_fields_over_their_caps_are_refused_before_decoding_and_memory_stays_bounded() {
    const ROUNDS: usize = 3;
    // The issue measured +1.6 GiB for one such entries frame and +2.6 GiB for one heartbeat
    // frame; refused by counting, all rounds together stay within this.
    const BOUND: u64 = 96 * MIB;
    let _rss = RSS_LOCK.lock().await;
    let ca = certs::ClusterCa::generate("amplification").unwrap();
    let config = TransportConfig::default();
    let max = config.max_frame_bytes;
    let (victim, mut peer) = victim_and_legit_peer(&ca, config).await;
    let conn = raw_node_connection(&ca, 3, victim.transport.local_addr(), 1)
        .await
        .unwrap();
    // 8 M empty entries in one message; 8 M empty messages; 8 M empty heartbeats.
    let entries = amplifying_frame(3, 2, Some(7), max);
    let messages = amplifying_frame(3, 2, None, max);
    let heartbeats = amplifying_frame(3, 3, None, max);
    let before = rss_bytes();
    for _ in 0..ROUNDS {
        for (kind, frame) in [
            (StreamKind::Raft, &entries),
            (StreamKind::Raft, &messages),
            (StreamKind::Heartbeats, &heartbeats),
        ] {
            let code = reset_code(&conn, header(kind, 1), frame.clone()).await;
            assert_eq!(code, Some(codes::TOO_MANY), "{kind:?} frame");
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!("RSS grew by {} MiB", grown / MIB);
    assert!(
        grown <= BOUND,
        "RSS grew by {} MiB for {} refused frames",
        grown / MIB,
        3 * ROUNDS
    );
    let s = victim.transport.stats();
    assert_eq!(s.resets_too_many, 3 * ROUNDS as u64);
    assert!(conn.close_reason().is_none(), "only the streams are reset");
    // Node 2's traffic still arrives, whole and in order.
    let mut victim = victim;
    legit_traffic_flows(&peer, &mut victim, 200).await;
    legit_traffic_flows(&victim, &mut peer, 200).await;
}

/// The application code a connection was closed with, once it is closed.
async fn close_code(conn: &quinn::Connection) -> Option<u32> {
    match tokio::time::timeout(DEADLINE, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            u32::try_from(close.error_code.into_inner()).ok()
        }
        _ => None,
    }
}

/// A raw dial to `target` from `identity`, closed by the victim after the handshake: the code.
async fn refused_after_handshake(
    identity: &certs::NodeIdentity,
    target: std::net::SocketAddr,
    server: u64,
) -> Option<u32> {
    let raw = raw_endpoint(identity, &TransportConfig::default(), certs::ALPN);
    let conn = raw
        .connect(target, &certs::node_server_name(NodeId(server)))
        .unwrap()
        .await;
    match conn {
        Ok(conn) => close_code(&conn).await,
        Err(quinn::ConnectionError::ApplicationClosed(close)) => {
            u32::try_from(close.error_code.into_inner()).ok()
        }
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_storm_with_a_stolen_id_does_not_replace_the_live_link() {
    const DIALS: u64 = 30;
    let ca = certs::ClusterCa::generate("dial-storm").unwrap();
    // Node 5 is the victim: node 2 (lower) owns the link between them.
    let config = TransportConfig::default()
        .keep_alive(Duration::from_millis(300))
        .idle_timeout(Duration::from_secs(5));
    let (mut nodes, _book) = cluster(&ca, &[2, 5], config, groups(1..=4)).await;
    legit_traffic_flows_between(&mut nodes, 0, 1, 50).await;
    let closed_before = nodes[0].transport.stats().connections_closed;
    // A holder of a genuine certificate for id 2 dials node 5 over and over.
    let stolen = identity(&ca, 2);
    let target = nodes[1].transport.local_addr();
    for _ in 0..DIALS {
        assert_eq!(
            refused_after_handshake(&stolen, target, 5).await,
            Some(codes::LINK_KEPT)
        );
    }
    let s = nodes[1].transport.stats();
    assert_eq!(s.connections_refused_replace, DIALS);
    // Node 2's link was never cut: no connection of it closed, and traffic still flows.
    assert_eq!(nodes[0].transport.stats().connections_closed, closed_before);
    assert_eq!(nodes[1].transport.connected_peers(), vec![NodeId(2)]);
    legit_traffic_flows_between(&mut nodes, 0, 1, 50).await;
    legit_traffic_flows_between(&mut nodes, 1, 0, 50).await;
}

async fn legit_traffic_flows_between(nodes: &mut [Node], from: usize, to: usize, count: u64) {
    let (a, b) = nodes.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    match (from, to) {
        (0, 1) => legit_traffic_flows(a, b, count).await,
        _ => legit_traffic_flows(b, a, count).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_not_admitted_is_refused_counted_and_forgotten() {
    const DIALS: u64 = 10;
    let ca = certs::ClusterCa::generate("admission").unwrap();
    let (mut nodes, _book) = cluster(&ca, &[1, 2], TransportConfig::default(), groups(1..=4)).await;
    let admitted: PeerAdmission = Arc::new(|id: NodeId| id == NodeId(2));
    nodes[0].transport.set_peer_admission(Some(admitted));
    let target = nodes[0].transport.local_addr();
    // Node 7 is no member of anything here: every dial is closed after its handshake.
    for _ in 0..DIALS {
        assert_eq!(
            refused_after_handshake(&identity(&ca, 7), target, 1).await,
            Some(codes::NOT_ADMITTED)
        );
    }
    let s = nodes[0].transport.stats();
    assert_eq!(s.connections_refused_not_admitted, DIALS);
    // No peer state was made for it: nothing redials it, no connection to it appears.
    assert!(!nodes[0].transport.connected_peers().contains(&NodeId(7)));
    assert_eq!(s.connections_opened, 0);
    // The admitted node connects and exchanges traffic.
    legit_traffic_flows_between(&mut nodes, 1, 0, 50).await;
    legit_traffic_flows_between(&mut nodes, 0, 1, 50).await;
    assert_eq!(nodes[0].transport.connected_peers(), vec![NodeId(2)]);
    // Refusing node 2 later closes its live link and forgets it.
    nodes[0]
        .transport
        .set_peer_admission(Some(Arc::new(|_: NodeId| false)));
    wait_for("node 2's link to close", || {
        nodes[1].transport.connected_peers().is_empty()
    })
    .await;
    assert!(nodes[0].transport.connected_peers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_at_the_handshake_and_its_live_link_closed() {
    let ca = certs::ClusterCa::generate("revocation").unwrap();
    let (mut nodes, _book) =
        cluster(&ca, &[1, 2, 3], TransportConfig::default(), groups(1..=4)).await;
    legit_traffic_flows_between(&mut nodes, 0, 1, 20).await;
    {
        let (a, rest) = nodes.split_at_mut(1);
        legit_traffic_flows(&rest[1], &mut a[0], 20).await;
    }
    wait_for("node 1 to hold links to 2 and 3", || {
        nodes[0].transport.connected_peers() == vec![NodeId(2), NodeId(3)]
    })
    .await;
    // Node 3 is revoked by id; a certificate of node 4 by serial.
    let four = identity(&ca, 4);
    let serial = certs::leaf_serial(four.cert_chain()).unwrap();
    nodes[0].transport.set_revocations(Revocations {
        nodes: [NodeId(3)].into_iter().collect(),
        serials: [serial].into_iter().collect(),
    });
    wait_for("node 3's live link to close", || {
        nodes[0].transport.connected_peers() == vec![NodeId(2)]
    })
    .await;
    let target = nodes[0].transport.local_addr();
    assert_eq!(
        refused_after_handshake(&identity(&ca, 3), target, 1).await,
        Some(codes::REVOKED)
    );
    assert_eq!(
        refused_after_handshake(&four, target, 1).await,
        Some(codes::REVOKED)
    );
    // A fresh certificate for node 4 (another serial) is still welcome.
    assert_eq!(
        tokio::time::timeout(
            Duration::from_millis(500),
            refused_after_handshake(&identity(&ca, 4), target, 1)
        )
        .await
        .ok(),
        None,
        "node 4's new certificate is held open"
    );
    assert!(nodes[0].transport.stats().connections_refused_revoked >= 3);
    // Node 2 is untouched.
    legit_traffic_flows_between(&mut nodes, 1, 0, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_of_partial_frames_are_bounded_by_the_budget_and_stalled_ones_dropped() {
    const STREAMS: u64 = 10_000;
    const BUDGET: usize = 4 << 20;
    // The issue measured +850 MiB for 10 000 streams of two tiny writes each.
    const BOUND: u64 = 64 * MIB;
    let _rss = RSS_LOCK.lock().await;
    let ca = certs::ClusterCa::generate("partial-frames").unwrap();
    let config = TransportConfig::default()
        .max_frame_bytes(1 << 20)
        .snapshot_chunk_bytes(512 << 10)
        .max_concurrent_uni_streams(20_000)
        .max_partial_bytes_per_connection(BUDGET)
        .partial_frame_timeout(Duration::from_secs(1));
    let (victim, mut peer) = victim_and_legit_peer(&ca, config).await;
    let conn = raw_node_connection(&ca, 3, victim.transport.local_addr(), 1)
        .await
        .unwrap();
    let before = rss_bytes();
    let mut peak = 0;
    let mut streams = Vec::new();
    // Two small writes: the header, then a prefix announcing 512 KiB and 2 KiB of it: 20 MiB
    // of unfinished frames in all, five times the budget.
    let partial = Bytes::from([(512u32 << 10).to_be_bytes().as_slice(), &[0; 2048]].concat());
    for i in 0..STREAMS {
        let mut s = conn.open_uni().await.unwrap();
        let _ = s.write_chunk(header(StreamKind::Raft, 1 + i % 16)).await;
        let _ = s.write_chunk(partial.clone()).await;
        streams.push(s);
        if i % 100 == 0 {
            peak = peak.max(victim.transport.stats().receive_buffered_bytes);
        }
    }
    wait_for("every stream to be reset (budget or stalled)", || {
        let s = victim.transport.stats();
        peak = peak.max(s.receive_buffered_bytes);
        s.resets_too_large + s.resets_stalled == STREAMS
    })
    .await;
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "RSS grew by {} MiB, peak held {} KiB",
        grown / MIB,
        peak >> 10
    );
    let s = victim.transport.stats();
    assert!(s.resets_too_large > 0, "the budget refused streams");
    assert!(s.resets_stalled > 0, "stalled streams were dropped");
    // A stream's read may pass the budget by one read before it is reset.
    assert!(peak <= (BUDGET + (1 << 20)) as u64, "held {peak} bytes");
    assert_eq!(
        s.receive_buffered_bytes, 0,
        "nothing held once they are reset"
    );
    assert!(grown <= BOUND, "RSS grew by {} MiB", grown / MIB);
    assert!(conn.close_reason().is_none(), "only the streams are reset");
    drop(streams);
    let mut victim = victim;
    legit_traffic_flows(&peer, &mut victim, 200).await;
    legit_traffic_flows(&victim, &mut peer, 200).await;
}

/// Dials node 1 at `target` as `id` with `identity`, trusting `cas`.
async fn dial_trusting(
    identity: &certs::NodeIdentity,
    cas: &[rustls::pki_types::CertificateDer<'static>],
    target: std::net::SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let tls = identity
        .client_config_trusting(&[certs::ALPN], cas)
        .unwrap();
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let ep = quinn::Endpoint::client(any_port()).unwrap();
    ep.connect_with(config, target, &certs::node_server_name(NodeId(1)))
        .unwrap()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_tls_with_two_cas_accepts_peers_of_both() {
    let old = certs::ClusterCa::generate("old-ca").unwrap();
    let new = certs::ClusterCa::generate("new-ca").unwrap();
    let both = [old.cert_der().clone(), new.cert_der().clone()];
    let (mut nodes, _book) =
        cluster(&old, &[1, 2], TransportConfig::default(), groups(1..=4)).await;
    legit_traffic_flows_between(&mut nodes, 1, 0, 20).await;
    let target = nodes[0].transport.local_addr();
    // Node 3 already holds a certificate of the new CA: node 1 does not trust it yet.
    let three = identity(&new, 3);
    let refused = dial_trusting(&three, &both, target).await;
    let refused = match refused {
        Ok(conn) => tokio::time::timeout(DEADLINE, conn.closed()).await.is_ok(),
        Err(_) => true,
    };
    assert!(refused, "node 1 trusted the new CA before the reload");
    // Another node's identity is refused, and the old configs stay.
    assert!(matches!(
        nodes[0].transport.reload_tls(&identity(&old, 9), &both),
        Err(pontoon_transport::TransportError::IdentityChanged { .. })
    ));
    // Node 1 rolls over: a certificate of the new CA, both CAs trusted.
    nodes[0]
        .transport
        .reload_tls(&identity(&new, 1), &both)
        .unwrap();
    let conn = dial_trusting(&three, &both, target).await.unwrap();
    wait_for("node 1 to adopt node 3", || {
        nodes[0].transport.connected_peers().contains(&NodeId(3))
    })
    .await;
    assert!(conn.close_reason().is_none());
    // A node of the old CA (trusting both) is accepted too, and the live link carries on.
    let conn = dial_trusting(&identity(&old, 4), &both, target)
        .await
        .unwrap();
    wait_for("node 1 to adopt node 4", || {
        nodes[0].transport.connected_peers().contains(&NodeId(4))
    })
    .await;
    assert!(conn.close_reason().is_none());
    legit_traffic_flows_between(&mut nodes, 1, 0, 50).await;
    legit_traffic_flows_between(&mut nodes, 0, 1, 50).await;
}

/// Opens a snapshot stream toward node 1 as node `from`, announcing `total` bytes and sending
/// `sent` of them, then stalls. Returns the stream, kept open by the caller.
async fn stalled_snapshot(
    conn: &quinn::Connection,
    from: u64,
    group: u64,
    total: u64,
    sent: usize,
) -> quinn::SendStream {
    let (mut s, _answer) = conn.open_bi().await.unwrap();
    let _ = s
        .write_chunk(stalled_snapshot_opening(from, 1, group, total))
        .await;
    let _ = s.write_chunk(snapshot_chunk(sent)).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_streams_beyond_the_peer_and_node_budgets_are_refused_before_buffering() {
    const SNAPSHOT: u64 = 8 * MIB;
    const PER_PEER: u64 = 16 * MIB;
    const PER_NODE: u64 = 24 * MIB;
    const STREAMS: u64 = 24;
    // The issue measured +446 MiB for 3 stalled snapshot streams; here 48 streams announce
    // 384 MiB and send 48 MiB, and at most PER_NODE is ever held.
    const BOUND: u64 = 96 * MIB;
    let _rss = RSS_LOCK.lock().await;
    let ca = certs::ClusterCa::generate("snapshot-budget").unwrap();
    let config = TransportConfig::default()
        .max_snapshot_bytes(SNAPSHOT)
        .snapshot_receive_bytes_per_peer(PER_PEER)
        .snapshot_receive_bytes_per_node(PER_NODE)
        .partial_frame_timeout(Duration::from_secs(2));
    let (victim, mut peer) = victim_and_legit_peer(&ca, config).await;
    let target = victim.transport.local_addr();
    let before = rss_bytes();
    let mut peak = 0;
    let mut held = Vec::new();
    let mut conns = Vec::new();
    // Node 3 first takes its whole budget, then node 4 what is left of the node's.
    for attacker in [3, 4] {
        let conn = raw_node_connection(&ca, attacker, target, 1).await.unwrap();
        for i in 0..STREAMS {
            let s = stalled_snapshot(&conn, attacker, 1 + i % 16, SNAPSHOT, 1 << 20).await;
            held.push(s);
            peak = peak.max(victim.transport.stats().receive_buffered_bytes);
        }
        conns.push(conn);
    }
    // Two transfers of node 3 fit its budget, one of node 4 fits what the node has left.
    let accepted = PER_PEER / SNAPSHOT + (PER_NODE - PER_PEER) / SNAPSHOT;
    wait_for("every transfer beyond the budgets to be refused", || {
        let s = victim.transport.stats();
        peak = peak.max(s.receive_buffered_bytes);
        s.resets_snapshot_budget == 2 * STREAMS - accepted
    })
    .await;
    assert!(
        peak <= PER_NODE + (2 << 20),
        "held {} MiB of snapshots, the node's budget is {} MiB",
        peak / MIB,
        PER_NODE / MIB
    );
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "RSS grew by {} MiB, peak held {} MiB",
        grown / MIB,
        peak / MIB
    );
    assert!(grown <= BOUND, "RSS grew by {} MiB", grown / MIB);
    // The accepted ones stall and are dropped, giving their budget back.
    wait_for("the stalled transfers to be dropped", || {
        let s = victim.transport.stats();
        s.resets_stalled >= accepted && s.receive_buffered_bytes == 0
    })
    .await;
    assert!(
        conns.iter().all(|c| c.close_reason().is_none()),
        "only the streams are reset"
    );
    drop((held, conns));
    let mut victim = victim;
    legit_traffic_flows(&peer, &mut victim, 200).await;
    legit_traffic_flows(&victim, &mut peer, 200).await;
}
