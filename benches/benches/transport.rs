//! Transport throughput: messages/s of 256-byte raft messages between two QUIC nodes on
//! loopback, spread over 1, 64 and 1024 group streams, NEXT TO a raw quinn baseline that
//! writes the same frame bytes on one stream with the same TLS configs, in the same run.
//!
//! The baseline does the receiving work any reader of these bytes must do: it splits frames
//! by their length prefix AND decodes every body with prost (`wire::RaftBatch`), as pontoon
//! does (pontoon additionally converts to raft-rs' types and routes by group). Its sender
//! writes a pre-encoded frame (no per-message encode), so the ratio is conservative. Both
//! consumers drain their channel in batches and publish progress once per batch, as a
//! coordinator drains its inbound queue once per cycle.
//!
//! `cargo bench -p pontoon-benches --bench transport`
//!
//! Both endpoints run in this one process on the same machine (2 cores here): sender,
//! receiver and quinn's drivers share the CPUs, as they do for the raw baseline.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use raft::eraftpb;
use routing::{GroupId, NodeId};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use transport::wire::{self, FrameDecoder};
use transport::{
    AddressBook, Envelope, Inbound, QuicTransport, SendError, Transport, TransportConfig,
};

const MESSAGES: u64 = 20_000;
const PAYLOAD: usize = 256;

fn message(index: u64) -> eraftpb::Message {
    let mut m = eraftpb::Message {
        msg_type: eraftpb::MessageType::MsgAppend,
        from: 1,
        to: 2,
        term: 1,
        index,
        ..Default::default()
    };
    let entry = eraftpb::Entry {
        term: 1,
        index,
        data: vec![0xab; PAYLOAD].into(),
        ..Default::default()
    };
    m.set_entries(vec![entry].into());
    m
}

struct Pontoon {
    sender: QuicTransport,
    _receiver: QuicTransport,
    received: watch::Receiver<u64>,
}

async fn pontoon(ca: &certs::ClusterCa) -> Pontoon {
    let book = AddressBook::new();
    let any = "127.0.0.1:0".parse().unwrap();
    let all: transport::GroupFilter = Arc::new(|_| true);
    let config = TransportConfig::default();
    let one = ca.issue_node(NodeId(1), &[]).unwrap();
    let two = ca.issue_node(NodeId(2), &[]).unwrap();
    let (sender, _) = QuicTransport::bind(any, &one, config.clone(), book.clone(), all.clone())
        .await
        .unwrap();
    let (receiver, mut inbound) = QuicTransport::bind(any, &two, config, book.clone(), all)
        .await
        .unwrap();
    book.insert(NodeId(2), receiver.local_addr());
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut n = 0;
        let mut events = Vec::with_capacity(1024);
        while inbound.recv_many(&mut events, 1024).await > 0 {
            for ev in events.drain(..) {
                if let Inbound::Message {
                    envelope: Envelope::Raft { messages, .. },
                    ..
                } = ev
                {
                    n += messages.len() as u64;
                }
            }
            tx.send_replace(n);
        }
    });
    Pontoon {
        sender,
        _receiver: receiver,
        received: rx,
    }
}

async fn run_pontoon(p: &mut Pontoon, groups: u64) -> Duration {
    // The messages exist before the clock starts, as the raw baseline's frame does: building
    // them is the coordinator's work, not the transport's.
    let envelopes: Vec<Envelope> = (0..MESSAGES)
        .map(|i| Envelope::Raft {
            group: GroupId(i % groups),
            messages: vec![message(i)],
        })
        .collect();
    let target = *p.received.borrow() + MESSAGES;
    let start = Instant::now();
    for env in envelopes {
        // `send` consumes the envelope: keep a copy only for a retry after `QueueFull`.
        let mut next = env;
        loop {
            let retry = next.clone();
            match p.sender.send(NodeId(2), next) {
                Ok(()) => break,
                Err(SendError::QueueFull { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
            next = retry;
        }
    }
    p.received.wait_for(|&n| n >= target).await.unwrap();
    start.elapsed()
}

struct Raw {
    stream: quinn::SendStream,
    received: watch::Receiver<u64>,
    frame: Vec<u8>,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

/// Raw quinn, same TLS configs and transport limits, one stream; the receiver splits frames
/// by their length prefix and decodes each body with prost, as pontoon must.
async fn raw(ca: &certs::ClusterCa) -> Raw {
    let config = TransportConfig::default();
    let any = "127.0.0.1:0".parse().unwrap();
    let (s1, c1) = transport::quinn_configs(
        &ca.issue_node(NodeId(1), &[]).unwrap(),
        &config,
        certs::ALPN,
    )
    .unwrap();
    let (s2, _) = transport::quinn_configs(
        &ca.issue_node(NodeId(2), &[]).unwrap(),
        &config,
        certs::ALPN,
    )
    .unwrap();
    let mut a = quinn::Endpoint::server(s1, any).unwrap();
    a.set_default_client_config(c1);
    let b = quinn::Endpoint::server(s2, any).unwrap();
    // quinn handshakes an incoming connection only once it is accepted: do both at once.
    let target = b.local_addr().unwrap();
    let (conn, accepted) = tokio::join!(
        async {
            a.connect(target, &certs::node_server_name(NodeId(2)))
                .unwrap()
                .await
                .unwrap()
        },
        async { b.accept().await.unwrap().await.unwrap() },
    );
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&[0]).await.unwrap();
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let _conn = conn;
        let mut recv = accepted.accept_uni().await.unwrap();
        let mut dec = FrameDecoder::new(1 << 20);
        let mut n = 0;
        let mut first = true;
        while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
            let bytes = if first {
                &chunk.bytes[1..]
            } else {
                &chunk.bytes[..]
            };
            first = false;
            dec.extend(bytes);
            while let Ok(Some(body)) = dec.next_frame() {
                let batch: wire::RaftBatch = wire::decode_body("RaftBatch", body).unwrap();
                n += batch.messages.len() as u64;
            }
            tx.send_replace(n);
        }
    });
    let batch = wire::RaftBatch {
        from: 1,
        messages: vec![transport::to_wire(&message(0))],
    };
    let mut frame = BytesMut::new();
    wire::encode_frame(&batch, 1 << 20, &mut frame).unwrap();
    Raw {
        stream,
        received: rx,
        frame: frame.to_vec(),
        _endpoints: (a, b),
    }
}

async fn run_raw(r: &mut Raw) -> Duration {
    let target = *r.received.borrow() + MESSAGES;
    let start = Instant::now();
    for _ in 0..MESSAGES {
        r.stream.write_all(&r.frame).await.unwrap();
    }
    r.received.wait_for(|&n| n >= target).await.unwrap();
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let ca = certs::ClusterCa::generate("bench").unwrap();
    let mut group = c.benchmark_group("transport_256B");
    group.throughput(Throughput::Elements(MESSAGES));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));

    let mut r = rt.block_on(raw(&ca));
    group.bench_function("raw_quinn_1_stream", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    t += run_raw(&mut r).await;
                }
                t
            })
        });
    });
    let mut p = rt.block_on(pontoon(&ca));
    for groups in [1u64, 64, 1024] {
        group.bench_function(format!("pontoon_{groups}_groups"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        t += run_pontoon(&mut p, groups).await;
                    }
                    t
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
