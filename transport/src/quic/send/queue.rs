//! The handoff between `send` and a peer's writer task: the [`Queue`] of frames waiting for
//! the writer (bounded per peer in envelopes and bytes, per stream in frames), and the waker
//! a stream out of flow-control credit leaves with quinn to put itself back on that queue.
//!
//! It lives apart from the writer because it is the only part other tasks touch: everything
//! here runs under the queue's one lock, on the sending thread or quinn's.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Wake;

use routing::NodeId;
use tokio::sync::Notify;

use crate::SendError;
use crate::codec::{Frames, StreamKey};
use crate::quic::Shared;
use crate::stats::Counters;

/// A map by stream: hashed with a multiply, not SipHash, as it is looked up once per frame
/// and its keys are group ids our own coordinator picks (nothing a peer can choose).
pub(super) type KeyMap<V> = HashMap<StreamKey, V, BuildHasherDefault<FxHasher>>;

/// FxHash's mix: enough to spread ids we pick ourselves (groups, peers) over a table.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}

/// Frames queued toward one peer, shared by `send` and the peer's writer.
///
/// Everything `send` touches lives under the one lock of [`Handoff`]: a send is one
/// uncontended lock while the writer works through its last take, not a handful of atomics
/// whose cache lines bounce between the sending thread and the writer's.
pub(crate) struct Queue {
    handoff: Mutex<Handoff>,
    /// Wakes the writer; used only when it sleeps (`Handoff::parked`).
    pub(super) notify: Notify,
}

/// What `send` and quinn's wakers leave for the writer.
#[derive(Default)]
pub(super) struct Handoff {
    /// Frames in the order they were queued, not yet taken by the writer.
    pub(super) frames: Vec<Frames>,
    /// Streams quinn said are writable again since the writer last looked.
    pub(super) writable: Vec<StreamKey>,
    /// Frames queued or held by the writer, per stream (no entry at zero).
    pub(super) per_stream: KeyMap<usize>,
    /// Envelopes queued or held by the writer, and snapshot transfers in flight.
    pub(super) envelopes: usize,
    /// Encoded bytes of the queued and held frames.
    pub(super) bytes: usize,
    /// The writer found nothing to do and waits for `notify`.
    pub(super) parked: bool,
}

impl Queue {
    pub(crate) fn new() -> Self {
        Self {
            handoff: Mutex::new(Handoff::default()),
            notify: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Handoff> {
        self.handoff.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Envelopes and bytes queued now (the `queued_*` gauges of the stats).
    pub(crate) fn queued(&self) -> (usize, usize) {
        let h = self.lock();
        (h.envelopes, h.bytes)
    }

    /// Takes a place for a snapshot transfer under the peer's envelope bound; `false` when
    /// it is full. Given back by [`Queue::snapshot_done`].
    pub(crate) fn admit_snapshot(&self, limit: usize) -> bool {
        let mut h = self.lock();
        if h.envelopes >= limit {
            return false;
        }
        h.envelopes += 1;
        true
    }

    /// A snapshot transfer ended: its place is free.
    pub(crate) fn snapshot_done(&self) {
        let mut h = self.lock();
        h.envelopes = h.envelopes.saturating_sub(1);
    }

    /// Queues frames for the writer, under the peer's bounds (envelopes, bytes) and the
    /// stream's.
    pub(crate) fn push(&self, shared: &Shared, peer: NodeId, f: Frames) -> Result<(), SendError> {
        let cfg = &shared.config;
        let wake = {
            let mut h = self.lock();
            // Admitted while under the byte bound, so any one envelope fits.
            let full = h.envelopes >= cfg.peer_queue_len
                || h.bytes >= cfg.peer_queue_bytes
                || h.per_stream
                    .get(&f.key)
                    .is_some_and(|&n| n >= cfg.stream_queue_len);
            if full {
                drop(h);
                Counters::add(&shared.counters.dropped_queue_full, 1);
                return Err(SendError::QueueFull { to: peer });
            }
            h.envelopes += 1;
            h.bytes += f.bytes.len();
            *h.per_stream.entry(f.key).or_insert(0) += 1;
            h.frames.push(f);
            std::mem::take(&mut h.parked)
        };
        if wake {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// quinn's wake-up for a stream that was out of credit.
    fn writable(&self, key: StreamKey) {
        let wake = {
            let mut h = self.lock();
            h.writable.push(key);
            std::mem::take(&mut h.parked)
        };
        if wake {
            self.notify.notify_one();
        }
    }
}

/// The waker a blocked stream leaves with quinn.
pub(super) struct StreamWaker {
    pub(super) key: StreamKey,
    pub(super) queue: Arc<Queue>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.queue.writable(self.key);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.writable(self.key);
    }
}
