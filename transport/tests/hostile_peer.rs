//! A peer holding a genuine node certificate of the cluster CA attacks a node over real QUIC
//! and TLS. Each test states the attack, the bound the node keeps (memory measured as the
//! process's RSS where the issue measured it so), and that legitimate traffic still flows.

// Helpers outside #[test] fns unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use pontoon_transport::wire::{self, StreamHeader, StreamKind};
use pontoon_transport::{Transport, TransportConfig, codes};

const MIB: u64 = 1 << 20;

fn header(kind: StreamKind, group: u64) -> Bytes {
    let mut out = BytesMut::new();
    wire::encode_frame(&StreamHeader::new(kind, group), 64, &mut out).unwrap();
    out.freeze()
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// A length-prefixed frame of at most `max` bytes: one field `outer` (length-delimited)
/// holding as many empty occurrences of field `inner` as fit (2 bytes each on the wire), or,
/// with `inner == None`, as many empty occurrences of `outer` itself at the top level.
fn amplifying_frame(from: u64, outer: u32, inner: Option<u32>, max: usize) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(1 << 3);
    put_varint(&mut body, from);
    match inner {
        Some(inner) => {
            let n = (max - body.len() - 16) / 2;
            body.put_u8((outer << 3 | 2) as u8);
            put_varint(&mut body, 2 * n as u64);
            for _ in 0..n {
                body.put_slice(&[(inner << 3 | 2) as u8, 0]);
            }
        }
        None => {
            while body.len() + 2 <= max {
                body.put_slice(&[(outer << 3 | 2) as u8, 0]);
            }
        }
    }
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32(u32::try_from(body.len()).unwrap());
    out.put_slice(&body);
    out.freeze()
}

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
