//! Resource exhaustion against a live endpoint: stream floods, oversized frames, many
//! connections and a peer that never reads. The node stays within its configured bounds
//! (streams, connections, queues, memory) and keeps serving its legitimate peer.
//!
//! Memory is measured by the transport's own gauges (bytes queued toward peers, bytes held by
//! incoming streams' decoders), never by RSS.

// Helpers outside #[test] fns unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::task::Poll;

use bytes::BytesMut;
use common::*;
use pontoon_transport::wire::{self, StreamHeader, StreamKind};
use pontoon_transport::{Envelope, Inbound, SendError, Transport, TransportConfig};
use routing::{GroupId, NodeId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

fn frame<M: prost::Message>(m: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::encode_frame(m, 1 << 20, &mut out).unwrap();
    out.to_vec()
}

fn header(group: u64) -> Vec<u8> {
    frame(&StreamHeader::new(StreamKind::Raft, group))
}

/// `from` sends `per_group` appends to `to` in each of `groups`, waiting for room when its
/// queue is full (as a coordinator retries on its next cycle).
async fn send_appends(from: &Node, to: u64, groups: &[u64], per_group: u64, payload: usize) {
    let me = from.transport.node_id().get();
    for i in 0..per_group {
        for &g in groups {
            let env = Envelope::Raft {
                group: GroupId(g),
                messages: vec![append(me, to, i, payload)],
            };
            wait_for("room toward the peer", || {
                from.transport.send(NodeId(to), env.clone()).is_ok()
            })
            .await;
        }
    }
}

/// Receives until every group of `groups` got `per_group` appends from `from`, each once and
/// in order.
async fn receive_appends(to: &mut Node, from: u64, groups: &[u64], per_group: u64) {
    let mut next_index: HashMap<u64, u64> = groups.iter().map(|&g| (g, 0)).collect();
    let mut left = groups.len() as u64 * per_group;
    while left > 0 {
        match next(&mut to.inbound).await {
            Inbound::Message {
                from: sender,
                envelope: Envelope::Raft { group, messages },
            } => {
                assert_eq!(sender, NodeId(from));
                let expected = next_index
                    .get_mut(&group.get())
                    .expect("a legitimate group");
                for m in messages {
                    assert_eq!(m.index, *expected, "once, in order, in {group}");
                    *expected += 1;
                    left -= 1;
                }
            }
            Inbound::Message {
                envelope: Envelope::Heartbeats(_),
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Node 2 and node 1 exchange `per_group` appends in each of `groups`, both ways.
async fn exchange(victim: &mut Node, peer: &mut Node, groups: &[u64], per_group: u64) {
    tokio::join!(
        send_appends(peer, 1, groups, per_group, 64),
        receive_appends(victim, 2, groups, per_group),
    );
    tokio::join!(
        send_appends(victim, 2, groups, per_group, 64),
        receive_appends(peer, 1, groups, per_group),
    );
}

/// A raw QUIC connection to node 1 from a genuine node `id` (valid certificate).
async fn attacker(ca: &certs::ClusterCa, id: u64, victim: &Node) -> quinn::Connection {
    let raw = raw_endpoint(&identity(ca, id), &TransportConfig::default(), certs::ALPN);
    raw.connect(
        victim.transport.local_addr(),
        &certs::node_server_name(NodeId(1)),
    )
    .unwrap()
    .await
    .unwrap()
}

/// A new stream if one can open now (the peer has granted the credit), polled once.
async fn open_now(conn: &quinn::Connection) -> Option<quinn::SendStream> {
    let mut open = std::pin::pin!(conn.open_uni());
    std::future::poll_fn(|cx| match open.as_mut().poll(cx) {
        Poll::Ready(s) => Poll::Ready(Some(s.unwrap())),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_is_bounded_by_the_stream_limit_and_peers_keep_their_order() {
    const LIMIT: u32 = 64;
    const FLOOD: u64 = 4_000;
    let ca = certs::ClusterCa::generate("stream-flood").unwrap();
    let config = TransportConfig::default().max_concurrent_uni_streams(LIMIT);
    let (mut victim, mut peer, _book) = victim_and_peer_with_book(&ca, config).await;
    let conn = attacker(&ca, 3, &victim).await;

    // As fast as it can: streams for unknown groups and streams of garbage, each finished at
    // once. The attacker can only open more as node 1 resets and releases them.
    let flood = {
        let conn = conn.clone();
        tokio::spawn(async move {
            for i in 0..FLOOD {
                let mut s = conn.open_uni().await.unwrap();
                let bytes = if i % 2 == 0 {
                    header(1_000 + i)
                } else {
                    [5u32.to_be_bytes().as_slice(), &[0xff; 5]].concat()
                };
                // The victim may reset it before the data is written.
                let _ = s.write_all(&bytes).await;
                let _ = s.finish();
            }
        })
    };
    // Meanwhile node 2's traffic arrives whole and in order.
    let legit: Vec<u64> = (1..=8).collect();
    exchange(&mut victim, &mut peer, &legit, 250).await;
    flood.await.unwrap();
    wait_for("every flooded stream to be reset", || {
        victim.transport.stats().streams_reset == FLOOD
    })
    .await;
    let s = victim.transport.stats();
    assert_eq!(s.resets_unknown_group, FLOOD / 2);
    assert_eq!(s.resets_malformed, FLOOD / 2);

    // Streams held open (stuck inside their header) take at most the limit: open them until
    // the next one cannot open now.
    let mut held = Vec::new();
    while let Some(mut s) = open_now(&conn).await {
        s.write_all(&header(1)[..1]).await.unwrap();
        held.push(s);
        assert!(
            held.len() <= LIMIT as usize,
            "a stream beyond max_concurrent_uni_streams opened"
        );
    }
    // Node 2, on its own connection, is not held up by them.
    exchange(&mut victim, &mut peer, &legit, 50).await;
    assert_eq!(victim.transport.stats().streams_reset, FLOOD);
    assert!(conn.close_reason().is_none());
    assert!(!held.is_empty());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_at_scale_are_reset_without_allocating_their_length() {
    const STREAMS: u64 = 2_000;
    const HELD: usize = 400;
    // Frames up to 32 MiB are allowed, so a 30 MiB announcement is legal until its bytes
    // fail to come.
    const ANNOUNCED: u32 = 30 << 20;
    let ca = certs::ClusterCa::generate("oversized").unwrap();
    let config = TransportConfig::default()
        .max_frame_bytes(32 << 20)
        .peer_queue_bytes(64 << 20);
    let (mut victim, mut peer, _book) = victim_and_peer_with_book(&ca, config).await;
    let conn = attacker(&ca, 3, &victim).await;

    // Thousands of streams announcing 4 GiB frames: each refused from its prefix.
    let mut flood = JoinSet::new();
    for i in 0..STREAMS {
        let conn = conn.clone();
        flood.spawn(async move {
            let mut s = conn.open_uni().await.unwrap();
            let bytes = [header(1 + i % 16), u32::MAX.to_be_bytes().to_vec()].concat();
            let _ = s.write_all(&bytes).await;
            let _ = s.finish();
        });
    }
    // Meanwhile node 2's traffic arrives whole and in order.
    let legit: Vec<u64> = (1..=8).collect();
    exchange(&mut victim, &mut peer, &legit, 100).await;
    flood.join_all().await;
    wait_for("every oversized frame to be refused", || {
        victim.transport.stats().resets_too_large == STREAMS
    })
    .await;

    // Hundreds of streams announcing a legal but huge frame, then stalling after 16 bytes:
    // 12 GiB announced, none of it may be allocated ahead of its bytes.
    let received = victim.transport.stats().bytes_received;
    let mut held = Vec::new();
    let mut sent = 0;
    for _ in 0..HELD {
        let mut s = conn.open_uni().await.unwrap();
        let bytes = [header(1), ANNOUNCED.to_be_bytes().to_vec(), vec![0; 16]].concat();
        s.write_all(&bytes).await.unwrap();
        sent += bytes.len() as u64;
        held.push(s);
    }
    wait_for("node 1 to read every stalled stream", || {
        victim.transport.stats().bytes_received >= received + sent
    })
    .await;
    exchange(&mut victim, &mut peer, &legit, 100).await;
    let held_bytes = victim.transport.stats().receive_buffered_bytes;
    assert!(
        held_bytes < 64 << 20,
        "{held_bytes} bytes held for {HELD} frames announced but not sent"
    );
    let s = victim.transport.stats();
    assert_eq!(s.streams_reset, STREAMS, "stalled streams are not reset");
    assert!(conn.close_reason().is_none());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_incoming_are_refused_and_counted() {
    const LIMIT: usize = 8;
    const ATTEMPTS: u64 = 40;
    let ca = certs::ClusterCa::generate("many-conns").unwrap();
    let config = TransportConfig::default().max_incoming_connections(LIMIT);
    let (mut victim, mut peer, _book) = victim_and_peer_with_book(&ca, config).await;
    let target = victim.transport.local_addr();

    // Invalid certificates (another CA): the handshakes fail and free their permits.
    let rogue = certs::ClusterCa::generate("rogue").unwrap();
    let mut attempts = JoinSet::new();
    for id in 0..ATTEMPTS {
        let ep = raw_endpoint(
            &identity(&rogue, 100 + id),
            &TransportConfig::default(),
            certs::ALPN,
        );
        attempts.spawn(async move {
            let result = ep
                .connect(target, &certs::node_server_name(NodeId(1)))
                .unwrap()
                .await;
            match result {
                Err(_) => {}
                // TLS 1.3: the client may finish first; the server's verdict closes it.
                Ok(conn) => {
                    tokio::time::timeout(DEADLINE, conn.closed()).await.unwrap();
                }
            }
        });
    }
    attempts.join_all().await;
    wait_for("the rogue attempts to be refused", || {
        victim.transport.stats().connections_refused >= ATTEMPTS
    })
    .await;
    assert!(victim.transport.connected_peers() == vec![NodeId(2)]);

    // Valid certificates of many different node ids, all at once, held open: `LIMIT` get
    // in, the rest are refused before their handshake.
    let refused_before = victim.transport.stats().connections_refused_limit;
    let mut attempts = JoinSet::new();
    for id in 0..ATTEMPTS {
        let ep = raw_endpoint(
            &identity(&ca, 100 + id),
            &TransportConfig::default(),
            certs::ALPN,
        );
        attempts.spawn(async move {
            let result = ep
                .connect(target, &certs::node_server_name(NodeId(1)))
                .unwrap()
                .await;
            (ep, result)
        });
    }
    let mut held = Vec::new();
    let mut refused = 0u64;
    for (ep, result) in attempts.join_all().await {
        match result {
            Ok(conn) => held.push((ep, conn)),
            Err(quinn::ConnectionError::ConnectionClosed(_)) => refused += 1,
            Err(e) => panic!("refused, not {e}"),
        }
    }
    assert_eq!(held.len(), LIMIT, "exactly max_incoming_connections got in");
    assert_eq!(refused, ATTEMPTS - LIMIT as u64);
    // Every refused attempt was counted. The counter counts attempts as the endpoint sees
    // them: on a loaded machine a client may resend its first packet before the refusal
    // reaches it, and the resent packet is refused (and counted) again.
    let s = victim.transport.stats();
    assert!(s.connections_refused_limit - refused_before >= refused);
    wait_for("the admitted nodes to be adopted", || {
        victim.transport.connected_peers().len() == 1 + LIMIT
    })
    .await;
    // At the limit even a rogue certificate is refused before any crypto.
    let ep = raw_endpoint(
        &identity(&rogue, 99),
        &TransportConfig::default(),
        certs::ALPN,
    );
    let refused_at_limit = ep
        .connect(target, &certs::node_server_name(NodeId(1)))
        .unwrap()
        .await;
    assert!(matches!(
        refused_at_limit,
        Err(quinn::ConnectionError::ConnectionClosed(_))
    ));
    assert!(victim.transport.stats().connections_refused_limit > s.connections_refused_limit);

    // The legitimate peer keeps exchanging messages throughout.
    let legit: Vec<u64> = (1..=8).collect();
    exchange(&mut victim, &mut peer, &legit, 100).await;

    // Closed connections give their permits back: a newcomer gets in.
    for (_, conn) in &held {
        conn.close(0u32.into(), b"bye");
    }
    let ep = raw_endpoint(
        &identity(&ca, 200),
        &TransportConfig::default(),
        certs::ALPN,
    );
    let start = tokio::time::Instant::now();
    let _newcomer = loop {
        match ep
            .connect(target, &certs::node_server_name(NodeId(1)))
            .unwrap()
            .await
        {
            Ok(conn) => break conn,
            Err(e) => assert!(start.elapsed() < DEADLINE, "permits never freed: {e}"),
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_costs_bounded_queues_and_others_keep_flowing() {
    const PEER_QUEUE_LEN: usize = 4_096;
    const PEER_QUEUE_BYTES: usize = 1 << 20;
    const PAYLOAD: usize = 2_048;
    const SENDS: u64 = 50_000;
    let ca = certs::ClusterCa::generate("never-reads").unwrap();
    let config = TransportConfig::default()
        .max_frame_bytes(64 << 10)
        .snapshot_chunk_bytes(32 << 10)
        .peer_queue_len(PEER_QUEUE_LEN)
        .peer_queue_bytes(PEER_QUEUE_BYTES)
        .stream_queue_len(64);
    let (mut victim, mut peer, book) = victim_and_peer_with_book(&ca, config).await;

    // Node 3 accepts node 1's connection and streams, and never reads a byte.
    let sink = raw_endpoint(
        &identity(&ca, 3),
        &TransportConfig::default()
            .stream_receive_window(16 << 10)
            .connection_receive_window(256 << 10),
        certs::ALPN,
    );
    book.insert(NodeId(3), sink.local_addr().unwrap());
    let (streams_tx, mut streams_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let conn = sink.accept().await.unwrap().await.unwrap();
        let _ = streams_tx.send(None);
        while let Ok(s) = conn.accept_uni().await {
            // Kept, unread, until the test ends.
            let _ = streams_tx.send(Some(s));
        }
        drop(conn);
    });

    // Node 1 sends 100 MiB toward node 3 in 64 groups as fast as it can.
    let max_envelope = 2 * PAYLOAD;
    let (mut queued, mut refused) = (0u64, 0u64);
    for i in 0..SENDS {
        let env = Envelope::Raft {
            group: GroupId(1 + i % 64),
            messages: vec![append(1, 3, i, PAYLOAD)],
        };
        match victim.transport.send(NodeId(3), env) {
            Ok(()) => queued += 1,
            Err(SendError::QueueFull { to }) => {
                assert_eq!(to, NodeId(3));
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        let s = victim.transport.stats();
        assert!(s.queued_envelopes <= PEER_QUEUE_LEN as u64);
        assert!(
            s.queued_bytes <= (PEER_QUEUE_BYTES + max_envelope) as u64,
            "{} bytes queued",
            s.queued_bytes
        );
        if i % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(
        next_stream(&mut streams_rx).await.is_none(),
        "node 3 was connected"
    );
    // What node 3 can hold unread (its windows) plus the bounded queue: far below 100 MiB.
    assert!(
        queued < SENDS / 10,
        "{queued} of {SENDS} envelopes accepted"
    );
    let s = victim.transport.stats();
    assert_eq!(s.dropped_queue_full, refused);

    // Node 2 gets all of its messages, both ways, while node 3's queue stays full.
    let legit: Vec<u64> = (1..=8).collect();
    exchange(&mut victim, &mut peer, &legit, 200).await;
    assert!(
        victim
            .transport
            .send(
                NodeId(3),
                Envelope::Raft {
                    group: GroupId(1),
                    messages: vec![append(1, 3, SENDS, PAYLOAD)],
                },
            )
            .is_err(),
        "node 3 still reads nothing"
    );
    let s = victim.transport.stats();
    assert!(s.queued_bytes <= (PEER_QUEUE_BYTES + max_envelope) as u64);
    assert_eq!(s.dropped_unreachable, 0, "nothing lost: only refused");
}

async fn next_stream(
    rx: &mut mpsc::UnboundedReceiver<Option<quinn::RecvStream>>,
) -> Option<quinn::RecvStream> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("deadline")
        .expect("node 3 alive")
}
