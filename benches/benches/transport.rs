//! Transport throughput: messages/s, and MB/s of their 256-byte payloads, between two QUIC
//! nodes on loopback, spread over 1, 64 and 1024 group streams, NEXT TO a raw quinn baseline
//! that writes the same frame bytes on one stream with the same TLS configs, in the same run.
//!
//! `raw_quinn_1024_streams` is a reference, not the baseline: the same raw writes spread
//! round-robin over 1024 streams, one reader task per stream. It shows what quinn itself
//! charges for many small streams (per-stream frames, acknowledgements and buffers), a cost
//! pontoon's one-stream-per-group design pays in full at 1024 groups.
//!
//! The baseline does the receiving work any reader of these bytes must do: it splits frames
//! by their length prefix AND decodes every body with prost (`wire::RaftBatch`), as pontoon
//! does (pontoon additionally converts to raft-rs' types and routes by group). Its sender
//! writes a pre-encoded frame (no per-message encode), so the ratio is conservative. Every
//! receiver counts what it decoded and wakes the runner once, when the batch is complete.
//!
//! `cargo bench -p pontoon-benches --bench transport` (mimalloc, as the `pontoon` binary);
//! add `--no-default-features` for the system allocator. glibc's malloc is slow at what the
//! transport does all day, freeing on one thread what another allocated: on 2 cores pontoon
//! at 1024 groups moved 51% of the raw stream's messages with it, while the raw single
//! stream barely changes.
//!
//! On a small shared machine criterion's setups, measured for seconds one after the other,
//! see different neighbours: ratios between them swing by 15 points from run to run.
//! `PONTOON_BENCH_ROUNDS=N` skips criterion and times every setup in turn within each of N
//! rounds (5 x 20,000 messages each), takes each ratio to the raw stream within its round
//! and prints the median, min and max over rounds, and each setup's median messages/s and
//! MB/s. Next to them it prints what each setup cost over all rounds: CPU time of all threads
//! per message (steadier than the wall clock on a shared machine) and how many cores were busy
//! meanwhile.
//!
//! Both endpoints run in this one process on the same machine (2 cores here): sender,
//! receiver and quinn's drivers share the CPUs, as they do for the raw baseline. Each
//! setup's sending loop runs as a task on the runtime, as pontoon's coordinator calls `send`
//! from its task; `PONTOON_BENCH_SENDER=thread` runs it on the bench's own thread instead
//! (see [`Sender`]): on 2 cores that third thread changes the ratios by 15 points, so both
//! placements are reported.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group};
use raft::eraftpb;
use routing::{GroupId, NodeId};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use transport::wire::{self, FrameDecoder};
use transport::{
    AddressBook, Envelope, Inbound, QuicTransport, SendError, Transport, TransportConfig,
};

/// The allocator the `pontoon` binary uses; `--no-default-features` measures the system one.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MESSAGES: u64 = 20_000;
const PAYLOAD: usize = 256;

/// One timed batch: wall time, and the CPU time of every thread of this process meanwhile.
#[derive(Clone, Copy, Default)]
struct Timed {
    wall: Duration,
    cpu: f64,
}

/// Started right before a batch's first send (after its messages are built).
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    fn stop(self) -> Timed {
        Timed {
            wall: self.wall.elapsed(),
            cpu: cpu_seconds() - self.cpu,
        }
    }
}

/// Process CPU seconds, all threads. Its 10 ms ticks are coarse for one batch, so only sums
/// over many batches are reported.
fn cpu_seconds() -> f64 {
    pontoon_benches::harness::process_cpu_seconds().unwrap_or(0.0)
}

/// Messages a setup's receiver has taken, and the count its runner waits for. The receiver
/// wakes the runner once, when the target is reached: a wake-up per received batch would
/// spend a third thread's context switches on the same 2 cores as the transport.
#[derive(Default)]
struct Progress {
    received: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Progress {
    /// Counts `n` more messages received.
    fn add(&self, n: u64) {
        let now = self.received.fetch_add(n, Ordering::AcqRel) + n;
        let target = self.target.load(Ordering::Acquire);
        if now >= target && now - n < target {
            self.reached.notify_one();
        }
    }

    /// Sets the target `n` messages past what was received so far; returns it.
    fn expect(&self, n: u64) -> u64 {
        let target = self.received.load(Ordering::Acquire) + n;
        self.target.store(target, Ordering::Release);
        target
    }

    async fn wait(&self, target: u64) {
        while self.received.load(Ordering::Acquire) < target {
            self.reached.notified().await;
        }
    }
}

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
    progress: Arc<Progress>,
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
    let progress = Arc::new(Progress::default());
    let counted = progress.clone();
    tokio::spawn(async move {
        let mut events = Vec::with_capacity(1024);
        while inbound.recv_many(&mut events, 1024).await > 0 {
            let mut n = 0;
            for ev in events.drain(..) {
                if let Inbound::Message {
                    envelope: Envelope::Raft { messages, .. },
                    ..
                } = ev
                {
                    n += messages.len() as u64;
                }
            }
            counted.add(n);
        }
    });
    Pontoon {
        sender,
        _receiver: receiver,
        progress,
    }
}

async fn run_pontoon(p: Pontoon, groups: u64) -> (Pontoon, Timed) {
    // The messages exist before the clock starts, as the raw baseline's frame does: building
    // them is the coordinator's work, not the transport's.
    let envelopes: Vec<Envelope> = (0..MESSAGES)
        .map(|i| Envelope::Raft {
            group: GroupId(i % groups),
            messages: vec![message(i)],
        })
        .collect();
    let target = p.progress.expect(MESSAGES);
    let start = Clock::start();
    for (i, env) in (0..MESSAGES).zip(envelopes) {
        let mut next = env;
        loop {
            match p.sender.send(NodeId(2), next) {
                Ok(()) => break,
                // `send` never blocks: a full queue is refused and the envelope is gone. Build
                // it again for the retry: rare, where a copy kept of every envelope just in
                // case cost an allocation per message that neither the raw baseline nor a
                // coordinator pays.
                Err(SendError::QueueFull { .. }) => {
                    tokio::task::yield_now().await;
                    next = Envelope::Raft {
                        group: GroupId(i % groups),
                        messages: vec![message(i)],
                    };
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    p.progress.wait(target).await;
    (p, start.stop())
}

struct Raw {
    stream: quinn::SendStream,
    progress: Arc<Progress>,
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
    let progress = Arc::new(Progress::default());
    let counted = progress.clone();
    tokio::spawn(async move {
        let _conn = conn;
        let mut recv = accepted.accept_uni().await.unwrap();
        let mut dec = FrameDecoder::new(1 << 20);
        let mut first = true;
        while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
            let bytes = if first {
                &chunk.bytes[1..]
            } else {
                &chunk.bytes[..]
            };
            first = false;
            dec.extend(bytes);
            let mut n = 0;
            while let Ok(Some(body)) = dec.next_frame() {
                let batch: wire::RaftBatch = wire::decode_body("RaftBatch", body).unwrap();
                n += batch.messages.len() as u64;
            }
            counted.add(n);
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
        progress,
        frame: frame.to_vec(),
        _endpoints: (a, b),
    }
}

async fn run_raw(mut r: Raw) -> (Raw, Timed) {
    let target = r.progress.expect(MESSAGES);
    let start = Clock::start();
    for _ in 0..MESSAGES {
        r.stream.write_all(&r.frame).await.unwrap();
    }
    r.progress.wait(target).await;
    (r, start.stop())
}

/// Raw quinn over `streams` streams, the frames written round-robin as pontoon's groups get
/// them; one reader task per stream decodes with prost. Not what pontoon is measured against
/// (that is the single stream): it shows what quinn itself charges for many streams.
struct RawMany {
    streams: Vec<quinn::SendStream>,
    _conn: quinn::Connection,
    progress: Arc<Progress>,
    frame: bytes::Bytes,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

async fn raw_many(ca: &certs::ClusterCa, streams: usize) -> RawMany {
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
    let progress = Arc::new(Progress::default());
    let counted = progress.clone();
    tokio::spawn(async move {
        while let Ok(mut recv) = accepted.accept_uni().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut dec = FrameDecoder::new(1 << 20);
                let mut first = true;
                while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                    let bytes = if first {
                        &chunk.bytes[1..]
                    } else {
                        &chunk.bytes[..]
                    };
                    first = false;
                    dec.extend(bytes);
                    let mut got = 0;
                    while let Ok(Some(body)) = dec.next_frame() {
                        let batch: wire::RaftBatch = wire::decode_body("RaftBatch", body).unwrap();
                        got += batch.messages.len() as u64;
                    }
                    counted.add(got);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&[0]).await.unwrap();
        out.push(s);
    }
    let batch = wire::RaftBatch {
        from: 1,
        messages: vec![transport::to_wire(&message(0))],
    };
    let mut frame = BytesMut::new();
    wire::encode_frame(&batch, 1 << 20, &mut frame).unwrap();
    RawMany {
        streams: out,
        _conn: conn,
        progress,
        frame: frame.freeze(),
        _endpoints: (a, b),
    }
}

async fn run_raw_many(mut r: RawMany) -> (RawMany, Timed) {
    let target = r.progress.expect(MESSAGES);
    let start = Clock::start();
    let n = r.streams.len();
    for i in 0..MESSAGES as usize {
        r.streams[i % n].write_all(&r.frame).await.unwrap();
    }
    r.progress.wait(target).await;
    (r, start.stop())
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let ca = certs::ClusterCa::generate("bench").unwrap();
    let mut group = c.benchmark_group("transport_256B");
    // Bytes are the raft entries' payload (256 per message), not framing or QUIC overhead.
    group.throughput(Throughput::ElementsAndBytes {
        elements: MESSAGES,
        bytes: MESSAGES * PAYLOAD as u64,
    });
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));

    let sender = Sender::from_env();
    let wall = |mut each: Box<dyn FnMut() -> Timed + '_>, iters: u64| -> Duration {
        (0..iters).map(|_| each().wall).sum()
    };
    let mut r = Some(rt.block_on(raw(&ca)));
    group.bench_function("raw_quinn_1_stream", |b| {
        b.iter_custom(|iters| wall(Box::new(|| sender.batch(&rt, &mut r, run_raw)), iters));
    });
    let mut many = Some(rt.block_on(raw_many(&ca, 1024)));
    group.bench_function("raw_quinn_1024_streams", |b| {
        b.iter_custom(|iters| {
            wall(
                Box::new(|| sender.batch(&rt, &mut many, run_raw_many)),
                iters,
            )
        });
    });
    let mut p = Some(rt.block_on(pontoon(&ca)));
    for groups in [1u64, 64, 1024] {
        group.bench_function(format!("pontoon_{groups}_groups"), |b| {
            b.iter_custom(|iters| {
                wall(
                    Box::new(|| sender.batch(&rt, &mut p, |p| run_pontoon(p, groups))),
                    iters,
                )
            });
        });
    }
    group.finish();
}

/// Side by side, round by round: each round times every setup once, in turn, and the ratio
/// to the raw single stream is taken within the round. On a small, noisy machine this pairs
/// each figure with a baseline measured a few milliseconds apart, where criterion measures
/// each setup for seconds, one after the other.
fn rounds(rounds: usize) {
    let rt = Runtime::new().unwrap();
    let ca = certs::ClusterCa::generate("bench").unwrap();
    let (mut r, mut many, mut p) = rt.block_on(async {
        (
            Some(raw(&ca).await),
            Some(raw_many(&ca, 1024).await),
            Some(pontoon(&ca).await),
        )
    });
    let sender = Sender::from_env();
    const SETUPS: [&str; 5] = [
        "raw_quinn_1_stream",
        "raw_quinn_1024_streams",
        "pontoon_1_groups",
        "pontoon_64_groups",
        "pontoon_1024_groups",
    ];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
    // Wall and CPU seconds (all threads) of each setup over the measured rounds: what a
    // message costs, which the machine's noise moves far less than the wall clock, and how
    // busy the cores were.
    let mut totals = [Timed::default(); SETUPS.len()];
    // Each timing covers 5 batches of MESSAGES: long enough to smooth a scheduler hiccup.
    let time = |f: &mut dyn FnMut() -> Timed| {
        (0..5).map(|_| f()).fold(Timed::default(), |a, b| Timed {
            wall: a.wall + b.wall,
            cpu: a.cpu + b.cpu,
        })
    };
    for round in 0..=rounds {
        let timed = [
            time(&mut || sender.batch(&rt, &mut r, run_raw)),
            time(&mut || sender.batch(&rt, &mut many, run_raw_many)),
            time(&mut || sender.batch(&rt, &mut p, |p| run_pontoon(p, 1))),
            time(&mut || sender.batch(&rt, &mut p, |p| run_pontoon(p, 64))),
            time(&mut || sender.batch(&rt, &mut p, |p| run_pontoon(p, 1024))),
        ];
        if round == 0 {
            continue; // warm-up
        }
        for (total, x) in totals.iter_mut().zip(timed) {
            total.wall += x.wall;
            total.cpu += x.cpu;
        }
        let t = timed.map(|x| x.wall);
        let rate = |d: Duration| (5 * MESSAGES) as f64 / d.as_secs_f64();
        let line: Vec<String> = t
            .iter()
            .zip(ratios.iter_mut().zip(&mut rates))
            .map(|(&d, (ratio, absolute))| {
                ratio.push(rate(d) / rate(t[0]));
                absolute.push(rate(d));
                format!("{:>6.0}k", rate(d) / 1e3)
            })
            .collect();
        println!("round {round:>3}: {}", line.join(" "));
    }
    println!(
        "median of {rounds} rounds, senders on {sender:?}, throughput relative to \
         raw_quinn_1_stream; median messages/s and MB/s of payload; over all rounds, CPU (all \
         threads) per message and cores busy:"
    );
    let messages = (rounds * 5) as f64 * MESSAGES as f64;
    let min_median_max = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    for ((name, (r, a)), total) in SETUPS
        .into_iter()
        .zip(ratios.into_iter().zip(rates))
        .zip(totals)
    {
        let (min, med, max) = min_median_max(r);
        let (_, per_second, _) = min_median_max(a);
        println!(
            "  {name:<24} {:>5.1}%  (min {:.1}%, max {:.1}%)  {:>5.0}k msgs/s {:>4.0} MB/s  \
             {:.2} µs CPU/msg, {:.2} cores",
            100.0 * med,
            100.0 * min,
            100.0 * max,
            per_second / 1e3,
            per_second * PAYLOAD as f64 / 1e6,
            1e6 * total.cpu / messages,
            total.cpu / total.wall.as_secs_f64()
        );
    }
}

/// Where each setup's sending loop runs (`PONTOON_BENCH_SENDER`).
#[derive(Clone, Copy, Debug)]
enum Sender {
    /// A task on the runtime (the default), as pontoon's coordinator calls `send` from its
    /// task on the node's runtime: every setup's whole stack shares the runtime's workers.
    Task,
    /// The bench's own thread, outside the runtime (`PONTOON_BENCH_SENDER=thread`): a third
    /// thread beside the two workers, which favours the setup whose sending call does more
    /// of the work itself (raw quinn's `write_all` copies into and locks the connection on
    /// the caller's thread; pontoon's `send` encodes and queues, and its writer task writes
    /// on the runtime).
    Thread,
}

impl Sender {
    fn from_env() -> Self {
        match std::env::var("PONTOON_BENCH_SENDER").as_deref() {
            Ok("thread") => Self::Thread,
            _ => Self::Task,
        }
    }

    /// Times one batch of `setup`, which `run` takes and gives back.
    fn batch<S, F>(self, rt: &Runtime, setup: &mut Option<S>, run: impl FnOnce(S) -> F) -> Timed
    where
        S: Send + 'static,
        F: std::future::Future<Output = (S, Timed)> + Send + 'static,
    {
        let s = setup.take().expect("a setup is put back after every batch");
        let (s, timed) = match self {
            Self::Task => rt.block_on(async { tokio::spawn(run(s)).await.unwrap() }),
            Self::Thread => rt.block_on(run(s)),
        };
        *setup = Some(s);
        timed
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("PONTOON_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        rounds(n.max(1));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
