//! The receiving side of a connection: a FIXED number of reader tasks per connection
//! (`TransportConfig::readers_per_connection`, default 1) read every unidirectional stream,
//! so a node holds no task per group stream, and a stream stuck mid-frame or out of data
//! holds up nobody else. The connection's accept loop hands each new stream to the readers
//! in turn; a stream stays with its reader, so a group's messages keep their order, while a
//! busy peer's decoding can use more than one core.
//!
//! Each stream is polled once, never awaited. A stream with nothing to read leaves a waker
//! of its own with quinn; when data arrives, that waker puts the stream on its reader's
//! ready list and wakes the reader, which reads only the streams on that list (a bounded
//! number of reads each per round, so one busy stream cannot starve the others). Snapshot
//! transfers (bidirectional streams, rare and large) keep a task each.

// This module reads bytes a peer controls: every access is checked.
#![warn(clippy::indexing_slicing)]

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use routing::NodeId;
use tokio::sync::{Notify, mpsc};
use tracing::{Instrument, debug, info_span, warn};

use super::Shared;
use super::peer::{PeerEvent, snapshot_ack};
use crate::Inbound;
use crate::budget::{ByteBudget, SnapshotBudget};
use crate::codec::{Refusal, StreamReader};
use crate::stats::Counters;
use crate::wire::StreamKind;

/// Received chunks taken from a stream at once (one lock of the connection each time).
const READ_CHUNKS: usize = 16;

/// Reads of one stream per round before the others get their turn.
const READS_PER_ROUND: usize = 4;

/// Streams with data to read, filled by their wakers.
struct Ready {
    slots: Mutex<Vec<usize>>,
    notify: Notify,
}

impl Ready {
    fn lock(&self) -> MutexGuard<'_, Vec<usize>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The waker a stream leaves with quinn while it has nothing to read.
struct SlotWaker {
    slot: usize,
    /// On the ready list already (a burst of wake-ups files it once).
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl SlotWaker {
    fn file(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.lock().push(self.slot);
            self.ready.notify.notify_one();
        }
    }
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.file();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.file();
    }
}

/// One incoming unidirectional stream.
struct Incoming {
    recv: RecvStream,
    reader: StreamReader,
    /// What this stream's decoder holds, as last added to `receive_buffered_bytes`.
    held: usize,
    /// When bytes last arrived.
    progress: Instant,
    slot_waker: Arc<SlotWaker>,
    waker: Waker,
}

/// What reading a stream came to.
enum Step {
    /// Nothing more now: quinn holds the stream's waker.
    Wait,
    /// Still readable after its reads of this round.
    More,
    /// Finished, reset or refused: the stream is done.
    Done,
}

/// The connection's unidirectional streams, by slot.
struct Streams {
    slots: Vec<Option<Incoming>>,
    free: Vec<usize>,
    ready: Arc<Ready>,
    /// Bytes held by the decoders of every stream of the connection (all its readers).
    partial: Arc<AtomicUsize>,
}

impl Streams {
    fn add(&mut self, shared: &Shared, peer: NodeId, recv: RecvStream) {
        let slot = self.free.pop().unwrap_or(self.slots.len());
        let slot_waker = Arc::new(SlotWaker {
            slot,
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        });
        let cfg = &shared.config;
        let incoming = Incoming {
            recv,
            reader: StreamReader::new(
                peer,
                cfg.max_frame_bytes,
                cfg.max_snapshot_bytes,
                shared.known_groups.clone(),
                shared.caps,
            ),
            held: 0,
            progress: Instant::now(),
            waker: Waker::from(slot_waker.clone()),
            slot_waker: slot_waker.clone(),
        };
        if slot == self.slots.len() {
            self.slots.push(Some(incoming));
        } else {
            if let Some(free) = self.slots.get_mut(slot) {
                *free = Some(incoming);
            }
        }
        // Read it at once: it was accepted because data arrived.
        slot_waker.file();
    }

    fn remove(&mut self, c: &Counters, slot: usize) {
        if let Some(mut s) = self.slots.get_mut(slot).and_then(Option::take) {
            track_held(c, &self.partial, &mut s.held, 0);
            self.free.push(slot);
        }
        if self.free.len() == self.slots.len() {
            // No stream left: give the memory of a past burst back.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }

    /// Reads every stream on the ready list, delivering what they complete.
    async fn read_ready(
        &mut self,
        shared: &Shared,
        peer: NodeId,
        events: &mpsc::UnboundedSender<PeerEvent>,
        conn_id: usize,
    ) {
        let ready = std::mem::take(&mut *self.ready.lock());
        let mut again = Vec::new();
        for slot in ready {
            let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            s.slot_waker.queued.store(false, Ordering::Release);
            match read_some(shared, peer, s, &self.partial, events, conn_id).await {
                Step::Wait => {}
                Step::More => again.push(slot),
                Step::Done => self.remove(&shared.counters, slot),
            }
        }
        for slot in again {
            if let Some(s) = self.slots.get(slot).and_then(Option::as_ref) {
                s.slot_waker.file();
            }
        }
    }

    /// Resets the streams that hold an unfinished frame and received nothing for `timeout`.
    fn reset_stalled(&mut self, shared: &Shared, peer: NodeId, timeout: Duration) {
        let now = Instant::now();
        let stalled: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                (s.reader.unfinished() && now.duration_since(s.progress) >= timeout).then_some(i)
            })
            .collect();
        for slot in stalled {
            if let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                refuse(&shared.counters, peer, s, &Refusal::Stalled(timeout));
            }
            self.remove(&shared.counters, slot);
        }
    }
}

/// Accepts the peer's streams and reads them until the connection ends, then tells the peer
/// task.
pub(crate) async fn drive(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: Connection,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    let sid = conn.stable_id();
    let partial = Arc::new(AtomicUsize::new(0));
    // One connection per peer: its budget is the peer's.
    let snapshots = SnapshotBudget {
        peer: ByteBudget::new(shared.config.snapshot_receive_bytes_per_peer),
        node: shared.snapshot_bytes.clone(),
    };
    // Validated to be at least 1.
    let readers = shared.config.readers_per_connection.max(1);
    let (to_reader, tasks): (Vec<_>, Vec<_>) = (0..readers)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = shared.runtime.spawn(
                read_streams(
                    shared.clone(),
                    peer,
                    rx,
                    events.clone(),
                    sid,
                    partial.clone(),
                )
                .instrument(tracing::Span::current()),
            );
            (tx, task)
        })
        .unzip();
    let mut next = to_reader.iter().cycle();
    let reason = loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    // A reader ends only once this loop has dropped its sender.
                    if let Some(reader) = next.next() {
                        let _ = reader.send(recv);
                    }
                }
                Err(e) => break e,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let span = info_span!("snapshot_stream", id = %recv.id(), group = tracing::field::Empty);
                    let budget = snapshots.clone();
                    tokio::spawn(read_snapshot(shared.clone(), peer, recv, send, partial.clone(), budget).instrument(span));
                }
                Err(e) => break e,
            },
        }
    };
    // The readers end once their streams are handed over and done: what they deliver comes
    // before the peer task hears that the connection is gone.
    drop(to_reader);
    for task in tasks {
        let _ = task.await;
    }
    debug!(%reason, "connection ended");
    let _ = events.send(PeerEvent::Closed(sid));
}

/// Reads the unidirectional streams `drive` hands it, each polled only when its waker says
/// it has data, until the connection ends.
async fn read_streams(
    shared: Arc<Shared>,
    peer: NodeId,
    mut incoming: mpsc::UnboundedReceiver<RecvStream>,
    events: mpsc::UnboundedSender<PeerEvent>,
    sid: usize,
    partial: Arc<AtomicUsize>,
) {
    let mut streams = Streams {
        slots: Vec::new(),
        free: Vec::new(),
        ready: Arc::new(Ready {
            slots: Mutex::new(Vec::new()),
            notify: Notify::new(),
        }),
        partial,
    };
    let ready = streams.ready.clone();
    let timeout = shared.config.partial_frame_timeout;
    let mut sweep = tokio::time::interval(timeout / 2);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            recv = incoming.recv() => match recv {
                Some(recv) => streams.add(&shared, peer, recv),
                None => break,
            },
            () = ready.notify.notified() => streams.read_ready(&shared, peer, &events, sid).await,
            _ = sweep.tick() => streams.reset_stalled(&shared, peer, timeout),
        }
    }
    for slot in 0..streams.slots.len() {
        streams.remove(&shared.counters, slot);
    }
}

/// Moves the `receive_buffered_bytes` gauge and the connection's `partial` total from what a
/// stream held to what it holds now; returns the connection's total.
fn track_held(c: &Counters, partial: &AtomicUsize, held: &mut usize, now: usize) -> usize {
    let total = if now > *held {
        Counters::add(&c.receive_buffered_bytes, (now - *held) as u64);
        partial.fetch_add(now - *held, Ordering::AcqRel) + (now - *held)
    } else if now < *held {
        Counters::sub(&c.receive_buffered_bytes, (*held - now) as u64);
        partial
            .fetch_sub(*held - now, Ordering::AcqRel)
            .saturating_sub(*held - now)
    } else {
        partial.load(Ordering::Acquire)
    };
    *held = now;
    total
}

/// The refusal of a read that took the connection's partial frames past their budget.
fn over_budget(total: usize, max: usize) -> Refusal {
    Refusal::TooLarge(format!(
        "{total} bytes of unfinished frames on the connection exceed \
         max_partial_bytes_per_connection ({max})"
    ))
}

/// Reads what a unidirectional stream has now (a few reads at most) and delivers it.
async fn read_some(
    shared: &Shared,
    peer: NodeId,
    s: &mut Incoming,
    partial: &AtomicUsize,
    events: &mpsc::UnboundedSender<PeerEvent>,
    conn_id: usize,
) -> Step {
    let max_partial = shared.config.max_partial_bytes_per_connection;
    let c = &shared.counters;
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    for _ in 0..READS_PER_ROUND {
        let polled = {
            let mut cx = Context::from_waker(&s.waker);
            pin!(s.recv.read_chunks(&mut chunks)).poll(&mut cx)
        };
        let outcome = match polled {
            Poll::Pending => return Step::Wait,
            Poll::Ready(Ok(Some(n))) => {
                s.progress = Instant::now();
                let reads = chunks.iter_mut().take(n).map(std::mem::take);
                let envelopes = s.reader.feed_all(reads, c);
                let total = track_held(c, partial, &mut s.held, s.reader.held_bytes());
                let envelopes = match envelopes {
                    Ok(_) if total > max_partial => Err(over_budget(total, max_partial)),
                    other => other,
                };
                match envelopes {
                    Ok(envelopes) => {
                        for envelope in envelopes {
                            shared
                                .deliver(Inbound::Message {
                                    from: peer,
                                    envelope,
                                })
                                .await;
                        }
                        match s.reader.kind() {
                            // The snapshot kind travels only on a bidirectional stream.
                            Some((StreamKind::Snapshot, _)) => Err(Refusal::UnknownKind(
                                crate::WireError::UnknownStreamKind(StreamKind::Snapshot as i32),
                            )),
                            _ => Ok(()),
                        }
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            Poll::Ready(Ok(None)) => {
                if let Some((StreamKind::Control, _)) = s.reader.kind() {
                    let _ = events.send(PeerEvent::Confirmed(conn_id));
                }
                // No snapshot on a unidirectional stream: nothing to complete, only to check.
                return match s.reader.finish(c) {
                    Ok(_) => Step::Done,
                    Err(refusal) => {
                        refuse(c, peer, s, &refusal);
                        Step::Done
                    }
                };
            }
            // Reset by the sender or the connection ended: nothing to answer.
            Poll::Ready(Err(e)) => {
                debug!(error = %e, stream = %s.recv.id(), "stream ended early");
                return Step::Done;
            }
        };
        if let Err(refusal) = outcome {
            refuse(c, peer, s, &refusal);
            return Step::Done;
        }
    }
    Step::More
}

/// Resets a stream that broke the protocol; the others carry on.
fn refuse(c: &Counters, peer: NodeId, s: &mut Incoming, refusal: &Refusal) {
    refusal.count(c);
    let kind = s.reader.kind();
    warn!(%peer, stream = %s.recv.id(), ?kind, reason = %refusal, code = refusal.code(), "resetting stream");
    let _ = s.recv.stop(VarInt::from_u32(refusal.code()));
}

/// Reads a snapshot transfer (a bidirectional stream) to its end and answers on it.
async fn read_snapshot(
    shared: Arc<Shared>,
    peer: NodeId,
    mut recv: RecvStream,
    mut answer: SendStream,
    partial: Arc<AtomicUsize>,
    budget: SnapshotBudget,
) {
    let c = &shared.counters;
    let timeout = shared.config.partial_frame_timeout;
    let cfg = &shared.config;
    let mut reader = StreamReader::new(
        peer,
        cfg.max_frame_bytes,
        cfg.max_snapshot_bytes,
        shared.known_groups.clone(),
        shared.caps,
    )
    .with_snapshot_budget(budget);
    // What this stream's decoder holds, as last added to `receive_buffered_bytes`.
    let mut held = 0usize;
    // The snapshot's reassembled data, counted in the gauge but not in the frame budget.
    let mut held_data = 0usize;
    let mut recorded = false;
    let outcome: Result<(), Refusal> = async {
        let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
        loop {
            // A transfer that stops sending holds its reassembled data: not for long.
            let read = tokio::time::timeout(timeout, recv.read_chunks(&mut chunks))
                .await
                .map_err(|_| Refusal::Stalled(timeout))?;
            match read {
                Ok(Some(n)) => {
                    let reads = chunks.iter_mut().take(n).map(std::mem::take);
                    let envelopes = reader.feed_all(reads, c);
                    // Only the unfinished frame counts against the connection's budget: the
                    // snapshot itself is bounded by `max_snapshot_bytes`.
                    let frame = reader.frame_bytes();
                    let total = track_held(c, &partial, &mut held, frame);
                    let data = reader.held_bytes().saturating_sub(frame);
                    track_held(c, &AtomicUsize::new(0), &mut held_data, data);
                    let envelopes = envelopes?;
                    if total > shared.config.max_partial_bytes_per_connection {
                        return Err(over_budget(
                            total,
                            shared.config.max_partial_bytes_per_connection,
                        ));
                    }
                    for envelope in envelopes {
                        shared
                            .deliver(Inbound::Message {
                                from: peer,
                                envelope,
                            })
                            .await;
                    }
                    if let Some((kind, group)) = reader.kind() {
                        // Only the snapshot kind travels on a bidirectional stream.
                        if kind != StreamKind::Snapshot {
                            return Err(Refusal::UnknownKind(crate::WireError::UnknownStreamKind(
                                kind as i32,
                            )));
                        }
                        if !recorded {
                            recorded = true;
                            tracing::Span::current().record(
                                "group",
                                tracing::field::display(group.map_or(0, |g| g.get())),
                            );
                        }
                    }
                }
                Ok(None) => {
                    if let Some(envelope) = reader.finish(c)? {
                        shared
                            .deliver(Inbound::Message {
                                from: peer,
                                envelope,
                            })
                            .await;
                        let _ = answer.write_all(&snapshot_ack(true)).await;
                        let _ = answer.finish();
                    }
                    return Ok(());
                }
                // Reset by the sender or the connection ended: nothing to answer.
                Err(e) => {
                    debug!(error = %e, "stream ended early");
                    return Ok(());
                }
            }
        }
    }
    .await;
    track_held(c, &partial, &mut held, 0);
    track_held(c, &AtomicUsize::new(0), &mut held_data, 0);
    if let Err(refusal) = outcome {
        refusal.count(c);
        let kind = reader.kind();
        warn!(%peer, ?kind, reason = %refusal, code = refusal.code(), "resetting stream");
        let _ = recv.stop(VarInt::from_u32(refusal.code()));
        let _ = answer.write_all(&snapshot_ack(false)).await;
        let _ = answer.finish();
    }
}
