//! Head-of-line blocking: a group whose stream the receiver stops reading (flow control
//! exhausted) does not delay another group's messages, and its own backlog stays bounded.

// Helpers outside #[test] fns unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use pontoon_transport::wire::{FrameDecoder, RaftBatch, StreamHeader, decode_body};
use pontoon_transport::{AddressBook, Envelope, SendError, Transport, TransportConfig};
use routing::{GroupId, NodeId};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_group_stream_does_not_stall_other_groups() {
    let ca = certs::ClusterCa::generate("hol").unwrap();
    // The receiver (a raw quinn endpoint as node 2) grants 64 KiB per stream.
    let recv_config = TransportConfig::default().stream_receive_window(64 << 10);
    let receiver = raw_endpoint(&identity(&ca, 2), &recv_config, certs::ALPN);
    let book = AddressBook::new();
    book.insert(NodeId(2), receiver.local_addr().unwrap());
    let config = TransportConfig::default().stream_queue_len(8);
    let (sender, _inbound) = pontoon_transport::QuicTransport::bind(
        any_port(),
        &identity(&ca, 1),
        config,
        book,
        all_groups(),
    )
    .await
    .unwrap();

    // Receiver: reads every stream except group 1's, which it holds unread.
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<(u64, u64)>();
    tokio::spawn(async move {
        let conn = receiver.accept().await.unwrap().await.unwrap();
        let mut held = Vec::new();
        while let Ok(mut s) = conn.accept_uni().await {
            let mut dec = FrameDecoder::new(64);
            let mut header = None;
            while header.is_none() {
                let chunk = s.read_chunk(1, true).await.unwrap().unwrap();
                dec.extend(&chunk.bytes);
                header = dec
                    .next_frame()
                    .unwrap()
                    .map(|b| decode_body::<StreamHeader>("h", b).unwrap());
            }
            let group = header.unwrap().group_id;
            if group == 1 {
                held.push(s);
                continue;
            }
            let tx = got_tx.clone();
            tokio::spawn(async move {
                dec.set_max_frame_bytes(1 << 20);
                while let Ok(Some(chunk)) = s.read_chunk(1 << 16, true).await {
                    dec.extend(&chunk.bytes);
                    while let Some(body) = dec.next_frame().unwrap() {
                        for m in decode_body::<RaftBatch>("b", body).unwrap().messages {
                            let _ = tx.send((group, m.index));
                        }
                    }
                }
            });
        }
        drop(held);
    });

    // Group 1 floods far beyond its stream window: its queue fills and `send` refuses, but
    // never blocks.
    let mut refused = 0;
    for i in 0..2_000 {
        match sender.send(
            NodeId(2),
            Envelope::Raft {
                group: GroupId(1),
                messages: vec![append(1, 2, i, 16 << 10)],
            },
        ) {
            Ok(()) => {}
            Err(SendError::QueueFull { to }) => {
                assert_eq!(to, NodeId(2));
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    wait_for("group 1 to be refused", || {
        refused += usize::from(
            sender
                .send(
                    NodeId(2),
                    Envelope::Raft {
                        group: GroupId(1),
                        messages: vec![append(1, 2, 0, 16 << 10)],
                    },
                )
                .is_err(),
        );
        refused > 0
    })
    .await;
    assert!(sender.stats().dropped_queue_full >= 1);

    // Group 2's messages all arrive, in order, while group 1 stays stuck.
    // (Its own queue is small too: when it is full, wait for room, as a coordinator would
    // retry on its next cycle.)
    for i in 0..500 {
        let env = Envelope::Raft {
            group: GroupId(2),
            messages: vec![append(1, 2, i, 256)],
        };
        wait_for("room in group 2's queue", || {
            sender.send(NodeId(2), env.clone()).is_ok()
        })
        .await;
    }
    for i in 0..500 {
        let got = tokio::time::timeout(DEADLINE, got_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (2, i));
    }
    // Group 1 is still stuck: none of its messages reached the application.
    assert!(got_rx.try_recv().is_err());
}
