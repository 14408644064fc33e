//! Three endpoints on loopback exchange messages for 1000 groups: every message arrives
//! once, in order per group; snapshots arrive whole and report back.

// Helpers outside #[test] fns unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use pontoon_transport::{
    Envelope, GroupHeartbeat, HeartbeatBatch, HeartbeatKind, Inbound, Transport, TransportConfig,
};
use raft::eraftpb;
use routing::{GroupId, NodeId};

const GROUPS: u64 = 1000;
const PER_GROUP: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_1000_groups_every_message_once_in_order() {
    every_message_once_in_order(TransportConfig::default()).await;
}

/// Streams spread unevenly over more readers than cores: a group's stream stays with one
/// reader, so its order holds whatever the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_with_five_readers_per_connection() {
    every_message_once_in_order(TransportConfig::default().readers_per_connection(5)).await;
}

async fn every_message_once_in_order(config: TransportConfig) {
    let ca = certs::ClusterCa::generate("loopback").unwrap();
    let (mut nodes, _book) = cluster(&ca, &[1, 2, 3], config, all_groups()).await;
    // Every node sends to both others, all at once: simultaneous dials included.
    for round in 0..PER_GROUP {
        for n in &nodes {
            let from = n.transport.node_id().get();
            for to in [1, 2, 3].into_iter().filter(|&t| t != from) {
                for g in 0..GROUPS {
                    let env = Envelope::Raft {
                        group: GroupId(g),
                        messages: vec![append(from, to, round, 16)],
                    };
                    n.transport.send(NodeId(to), env).unwrap();
                }
            }
        }
    }
    for n in &mut nodes {
        let me = n.transport.node_id().get();
        let mut next_index: HashMap<(u64, u64), u64> = HashMap::new();
        let mut count = 0;
        while count < 2 * GROUPS * PER_GROUP {
            match next(&mut n.inbound).await {
                Inbound::Message {
                    from,
                    envelope: Envelope::Raft { group, messages },
                } => {
                    for m in messages {
                        assert_eq!((m.from, m.to), (from.get(), me));
                        let expected = next_index.entry((from.get(), group.get())).or_insert(0);
                        assert_eq!(m.index, *expected, "in order, once, for {from} {group}");
                        *expected += 1;
                        count += 1;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(next_index.len() as u64, 2 * GROUPS);
        assert!(next_index.values().all(|&i| i == PER_GROUP));
    }
    for n in &nodes {
        // A writer counts what it sent right after its pass, which may be after the peer has
        // read the pass's last frames; the receiver counts before it delivers.
        wait_for("every message counted as sent", || {
            n.transport.stats().messages_sent == 2 * GROUPS * PER_GROUP
        })
        .await;
        let s = n.transport.stats();
        assert_eq!(s.messages_received, 2 * GROUPS * PER_GROUP);
        assert_eq!(s.messages_sent, 2 * GROUPS * PER_GROUP);
        assert_eq!(s.streams_reset, 0);
        assert_eq!(
            n.transport.connected_peers().len(),
            2,
            "one connection to each peer"
        );
    }
    // One connection per pair, whoever dialled: each node adopted exactly two.
    let opened: u64 = nodes
        .iter()
        .map(|n| n.transport.stats().connections_opened)
        .sum();
    assert_eq!(opened, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_arrive_whole_and_their_fate_comes_back() {
    let ca = certs::ClusterCa::generate("snap").unwrap();
    let config = TransportConfig::default().snapshot_chunk_bytes(4096);
    let (mut nodes, _book) = cluster(&ca, &[1, 2], config, groups([5])).await;
    let mut msg = eraftpb::Message {
        msg_type: eraftpb::MessageType::MsgSnapshot,
        from: 1,
        to: 2,
        ..Default::default()
    };
    msg.mut_snapshot().data = (0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>().into();
    msg.mut_snapshot().mut_metadata().index = 42;
    nodes[0]
        .transport
        .send(
            NodeId(2),
            Envelope::Snapshot {
                group: GroupId(5),
                message: msg.clone(),
            },
        )
        .unwrap();
    let got = next(&mut nodes[1].inbound).await;
    assert_eq!(
        got,
        Inbound::Message {
            from: NodeId(1),
            envelope: Envelope::Snapshot {
                group: GroupId(5),
                message: msg.clone()
            }
        }
    );
    assert_eq!(
        next(&mut nodes[0].inbound).await,
        Inbound::SnapshotStatus {
            to: NodeId(2),
            group: GroupId(5),
            delivered: true
        }
    );
    // A group the receiver does not know: refused, and the sender hears so.
    nodes[0]
        .transport
        .send(
            NodeId(2),
            Envelope::Snapshot {
                group: GroupId(6),
                message: msg,
            },
        )
        .unwrap();
    assert_eq!(
        next(&mut nodes[0].inbound).await,
        Inbound::SnapshotStatus {
            to: NodeId(2),
            group: GroupId(6),
            delivered: false
        }
    );
    // Heartbeats still flow on the same connection.
    let hb = HeartbeatBatch::new(
        HeartbeatKind::Responses,
        vec![GroupHeartbeat {
            group: GroupId(5),
            term: 1,
            commit: 3,
            quiesce: false,
        }],
    );
    nodes[0]
        .transport
        .send(NodeId(2), Envelope::Heartbeats(hb.clone()))
        .unwrap();
    let expected = hb;
    assert_eq!(
        next(&mut nodes[1].inbound).await,
        Inbound::Message {
            from: NodeId(1),
            envelope: Envelope::Heartbeats(expected)
        }
    );
    assert_eq!(nodes[1].transport.stats().resets_unknown_group, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reconnected_without_the_caller() {
    let ca = certs::ClusterCa::generate("restart").unwrap();
    let config = TransportConfig::default()
        .reconnect_backoff_min(std::time::Duration::from_millis(10))
        .reconnect_backoff_max(std::time::Duration::from_millis(200));
    let (mut nodes, book) = cluster(&ca, &[1, 2], config.clone(), all_groups()).await;
    nodes[0]
        .transport
        .send(
            NodeId(2),
            Envelope::Raft {
                group: GroupId(1),
                messages: vec![append(1, 2, 0, 8)],
            },
        )
        .unwrap();
    assert!(matches!(
        next(&mut nodes[1].inbound).await,
        Inbound::Message { .. }
    ));
    let addr = nodes[1].transport.local_addr();
    let old = nodes.pop().unwrap();
    old.transport.shutdown().await;
    drop(old);
    // The old endpoint's tasks release the socket as they wind down: retry until the port
    // is free (a restarted process would find it free at once).
    let start = tokio::time::Instant::now();
    let (restarted, mut inbound) = loop {
        match pontoon_transport::QuicTransport::bind(
            addr,
            &identity(&ca, 2),
            config.clone(),
            book.clone(),
            all_groups(),
        )
        .await
        {
            Ok(t) => break t,
            Err(e) => assert!(start.elapsed() < DEADLINE, "port never freed: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    // No send from node 1: its connection task notices the loss and redials on its own.
    wait_for("node 1 to reconnect", || {
        nodes[0].transport.connected_peers() == vec![NodeId(2)]
            && restarted.connected_peers() == vec![NodeId(1)]
    })
    .await;
    nodes[0]
        .transport
        .send(
            NodeId(2),
            Envelope::Raft {
                group: GroupId(1),
                messages: vec![append(1, 2, 1, 8)],
            },
        )
        .unwrap();
    match next(&mut inbound).await {
        Inbound::Message {
            from,
            envelope: Envelope::Raft { messages, .. },
        } => assert_eq!((from, messages[0].index), (NodeId(1), 1)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(nodes[0].transport.stats().connections_closed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_moved_is_reached_though_its_old_address_swallows_dials() {
    let ca = certs::ClusterCa::generate("moved").unwrap();
    // The dial to the old address must give up long before the idle timeout, which here
    // outlasts the test's deadline: only a dial that gives up lets node 2 in.
    let config = TransportConfig::default()
        .idle_timeout(std::time::Duration::from_secs(60))
        .handshake_timeout(std::time::Duration::from_millis(500))
        .reconnect_backoff_min(std::time::Duration::from_millis(10))
        .reconnect_backoff_max(std::time::Duration::from_millis(100));
    let (nodes, book) = cluster(&ca, &[1], config.clone(), all_groups()).await;
    // Node 2's address answers nothing: a UDP socket that reads and never replies.
    let black_hole = tokio::net::UdpSocket::bind(any_port()).await.unwrap();
    book.insert(NodeId(2), black_hole.local_addr().unwrap());
    nodes[0]
        .transport
        .send(
            NodeId(2),
            Envelope::Raft {
                group: GroupId(1),
                messages: vec![append(1, 2, 0, 8)],
            },
        )
        .unwrap();
    // Node 1 is dialling it: its first handshake packet arrived.
    let mut packet = [0u8; 2048];
    tokio::time::timeout(DEADLINE, black_hole.recv_from(&mut packet))
        .await
        .expect("node 1 never dialled node 2's old address")
        .unwrap();
    // Node 2 comes up elsewhere and dials node 1 itself; node 1 (the lower id, whose own
    // dial wins) is dialling the black hole meanwhile, and must still be reached.
    let moved_book = pontoon_transport::AddressBook::new();
    moved_book.insert(NodeId(1), nodes[0].transport.local_addr());
    let (moved, mut inbound) = pontoon_transport::QuicTransport::bind(
        any_port(),
        &identity(&ca, 2),
        config,
        moved_book,
        all_groups(),
    )
    .await
    .unwrap();
    book.insert(NodeId(2), moved.local_addr());
    moved
        .send(
            NodeId(1),
            Envelope::Raft {
                group: GroupId(1),
                messages: vec![append(2, 1, 0, 8)],
            },
        )
        .unwrap();
    wait_for("the moved peer to be connected", || {
        nodes[0].transport.connected_peers() == vec![NodeId(2)]
            && moved.connected_peers() == vec![NodeId(1)]
    })
    .await;
    // Traffic flows both ways on the new link.
    nodes[0]
        .transport
        .send(
            NodeId(2),
            Envelope::Raft {
                group: GroupId(1),
                messages: vec![append(1, 2, 1, 8)],
            },
        )
        .unwrap();
    loop {
        if let Inbound::Message { from, .. } = next(&mut inbound).await {
            assert_eq!(from, NodeId(1));
            break;
        }
    }
}
