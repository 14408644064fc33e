//! The sending side of a connection: ONE writer task per peer owns every stream toward it.
//!
//! `send` puts encoded frames on the peer's [`Queue`] (bounded per peer in envelopes and
//! bytes, and per stream in frames) and wakes the writer only when it sleeps. The writer
//! takes everything queued at once, appends each frame to its stream's pending chunks, and
//! hands each stream's pending chunks to quinn in one `write_chunks` call: consecutive frames
//! of a group cost one write, and the connection is locked once per stream per pass, not once
//! per frame.
//!
//! Every write is polled once, never awaited. A stream out of flow-control credit keeps its
//! chunks and leaves a waker of its own with quinn; when credit returns, that waker puts the
//! stream on the queue's writable list and wakes the writer. So a stalled stream only holds
//! its own frames (until its per-stream bound refuses more), never the writer, and the other
//! streams keep moving: no head-of-line blocking across groups.
//!
//! Per-stream state is created on a stream's first frame and is small (a quinn `SendStream`,
//! two empty deques, a few flags): a node with 100k groups holds no task per group.

//!
//! The queue shared with `send` is in [`queue`]; the per-stream bookkeeping in [`stream`];
//! this file is the writer task itself.

mod queue;
mod stream;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use quinn::{Connection, ConnectionError, SendStream};
use routing::NodeId;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::Shared;
use super::peer::{ConnState, PeerEvent};
use crate::Inbound;
use crate::codec::{Frames, StreamKey};
use crate::stats::Counters;

pub(crate) use queue::{FxHasher, Queue};
use queue::{KeyMap, StreamWaker};
use stream::{Meta, Stream};

/// Chunks handed to quinn in one call: bounds the time one stream holds the connection lock.
const MAX_WRITE_CHUNKS: usize = 1024;

type Opening = Pin<Box<dyn Future<Output = Result<SendStream, ConnectionError>> + Send>>;

/// What the writer may do with the connection right now.
enum Link {
    Up(Connection),
    /// Being (re)established: keep the frames.
    Wait,
    /// The last dial failed: drop the frames and report.
    Down,
}

/// The last [`Link`] a pass saw.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Up(usize),
    Wait,
    Down,
}

/// Releases and counts accumulated during one pass, applied together (the counters are
/// shared with every other task of the endpoint: one update per pass, not per stream).
#[derive(Default)]
struct Released {
    envelopes: usize,
    bytes: usize,
    per_stream: Vec<(StreamKey, usize)>,
    frames_sent: u64,
    messages_sent: u64,
    bytes_sent: u64,
    heartbeat_frames_sent: u64,
    heartbeat_bytes_sent: u64,
    forward_frames_sent: u64,
    forward_bytes_sent: u64,
}

struct Writer {
    shared: Arc<Shared>,
    peer: NodeId,
    queue: Arc<Queue>,
    events: mpsc::UnboundedSender<PeerEvent>,
    streams: KeyMap<Stream>,
    /// Streams to write this pass, each once.
    ready: Vec<StreamKey>,
    /// Streams waiting for the stream budget, in the order they asked.
    waiting_open: VecDeque<StreamKey>,
    /// The one open waiting for the connection's stream budget, and that connection's id.
    opening: Option<(usize, Opening)>,
    /// The connection changed: every stream with pending chunks must be looked at.
    rescan: bool,
    seen: Seen,
    released: Released,
}

/// The peer's writer task; runs until the peer is stopped (its task is aborted).
pub(crate) async fn writer(
    shared: Arc<Shared>,
    peer: NodeId,
    queue: Arc<Queue>,
    mut conn_rx: watch::Receiver<ConnState>,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    let mut w = Writer {
        shared,
        peer,
        queue,
        events,
        streams: KeyMap::default(),
        ready: Vec::new(),
        waiting_open: VecDeque::new(),
        opening: None,
        rescan: false,
        seen: Seen::Wait,
        released: Released::default(),
    };
    let mut frames: Vec<Frames> = Vec::new();
    let mut writable: Vec<StreamKey> = Vec::new();
    loop {
        let parked = w.take(&mut frames, &mut writable);
        if !parked {
            let link = w.link(&mut conn_rx);
            w.pass(&link, &mut frames, &mut writable);
            w.settle();
            // Let quinn's driver and the other tasks run before taking more. Under load the
            // queue fills meanwhile and the next pass writes several frames per stream in one
            // call (at 1024 groups, ~3x fewer stream writes); idle, the next take finds
            // nothing and the writer sleeps, so a lone message waits for nothing.
            tokio::task::yield_now().await;
            continue;
        }
        let waiting = w.opening.is_some();
        let opening = w.opening.as_mut().map(|(_, o)| o);
        tokio::select! {
            () = w.queue.notify.notified() => {}
            changed = conn_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                w.rescan = true;
            }
            opened = async {
                match opening {
                    Some(o) => o.await,
                    None => std::future::pending().await,
                }
            }, if waiting => w.opened(opened),
        }
    }
}

impl Writer {
    /// Gives back the queue places, and counts the frames, of what the last pass wrote or
    /// dropped: right after the pass, so the bounds and gauges never lag behind the writer.
    fn settle(&mut self) {
        let r = &mut self.released;
        let c = &self.shared.counters;
        Counters::add_all([
            (&c.frames_sent, std::mem::take(&mut r.frames_sent)),
            (&c.messages_sent, std::mem::take(&mut r.messages_sent)),
            (&c.bytes_sent, std::mem::take(&mut r.bytes_sent)),
            (
                &c.heartbeat_frames_sent,
                std::mem::take(&mut r.heartbeat_frames_sent),
            ),
            (
                &c.heartbeat_bytes_sent,
                std::mem::take(&mut r.heartbeat_bytes_sent),
            ),
            (
                &c.forward_frames_sent,
                std::mem::take(&mut r.forward_frames_sent),
            ),
            (
                &c.forward_bytes_sent,
                std::mem::take(&mut r.forward_bytes_sent),
            ),
        ]);
        if r.envelopes == 0 && r.bytes == 0 && r.per_stream.is_empty() {
            return;
        }
        let mut h = self.queue.lock();
        h.envelopes = h.envelopes.saturating_sub(std::mem::take(&mut r.envelopes));
        h.bytes = h.bytes.saturating_sub(std::mem::take(&mut r.bytes));
        for (key, n) in r.per_stream.drain(..) {
            if let Some(left) = h.per_stream.get_mut(&key) {
                *left = left.saturating_sub(n);
                if *left == 0 {
                    h.per_stream.remove(&key);
                }
            }
        }
    }

    /// Takes what `send` and quinn left; `true` when there is nothing to do (the writer then
    /// sleeps until notified).
    fn take(&mut self, frames: &mut Vec<Frames>, writable: &mut Vec<StreamKey>) -> bool {
        let mut h = self.queue.lock();
        std::mem::swap(&mut h.frames, frames);
        std::mem::swap(&mut h.writable, writable);
        let idle =
            frames.is_empty() && writable.is_empty() && self.ready.is_empty() && !self.rescan;
        h.parked = idle;
        idle
    }

    /// The connection as it is now; a change since the last pass makes this pass look at
    /// every stream (those that waited for a connection, those on a lost one).
    fn link(&mut self, conn_rx: &mut watch::Receiver<ConnState>) -> Link {
        let link = match &*conn_rx.borrow_and_update() {
            ConnState::Up(c) if c.close_reason().is_none() => Link::Up(c.clone()),
            ConnState::Down => Link::Down,
            _ => Link::Wait,
        };
        let seen = match &link {
            Link::Up(c) => Seen::Up(c.stable_id()),
            Link::Wait => Seen::Wait,
            Link::Down => Seen::Down,
        };
        if seen != self.seen {
            self.seen = seen;
            self.rescan = true;
        }
        link
    }

    fn schedule(ready: &mut Vec<StreamKey>, key: StreamKey, st: &mut Stream) {
        if !st.scheduled && !st.blocked && !st.waiting_open {
            st.scheduled = true;
            ready.push(key);
        }
    }

    /// One pass: files the new frames under their streams, then writes every stream that has
    /// something to write and credit to write it.
    fn pass(&mut self, link: &Link, frames: &mut Vec<Frames>, writable: &mut Vec<StreamKey>) {
        for f in frames.drain(..) {
            let st = self.streams.entry(f.key).or_default();
            st.meta.push_back(Meta {
                len: f.bytes.len(),
                frames: f.frames,
                messages: f.messages,
                header: false,
            });
            st.chunks.push_back(f.bytes);
            Self::schedule(&mut self.ready, f.key, st);
        }
        if frames.capacity() > 4096 {
            frames.shrink_to(4096);
        }
        for key in writable.drain(..) {
            if let Some(st) = self.streams.get_mut(&key) {
                st.blocked = false;
                if !st.chunks.is_empty() {
                    Self::schedule(&mut self.ready, key, st);
                }
            }
        }
        if std::mem::take(&mut self.rescan) {
            // An open waiting on a connection now gone waits for nothing: try them all again.
            self.opening = None;
            self.waiting_open.clear();
            for (key, st) in &mut self.streams {
                st.blocked = false;
                st.waiting_open = false;
                if !st.chunks.is_empty() {
                    Self::schedule(&mut self.ready, *key, st);
                }
            }
        }
        if self.ready.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.ready);
        match link {
            Link::Up(conn) => {
                for &key in &ready {
                    if let Some(st) = self.streams.get_mut(&key) {
                        st.scheduled = false;
                    }
                    self.flush(key, conn);
                }
            }
            Link::Wait => {
                // Kept: the connection change that ends the wait rescans every stream.
                let _ = self.events.send(PeerEvent::Want);
                for key in &ready {
                    if let Some(st) = self.streams.get_mut(key) {
                        st.scheduled = false;
                    }
                }
            }
            Link::Down => {
                let _ = self.events.send(PeerEvent::Want);
                for &key in &ready {
                    if let Some(st) = self.streams.get_mut(&key) {
                        st.scheduled = false;
                    }
                    self.lose(key, "peer down");
                }
            }
        }
        // Nothing schedules during a pass: keep the list's capacity.
        ready.clear();
        self.ready = ready;
    }

    /// Hands a stream's pending chunks to quinn, opening the stream on this connection first
    /// if needed.
    fn flush(&mut self, key: StreamKey, conn: &Connection) {
        let cid = conn.stable_id();
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        if st.chunks.is_empty() || st.waiting_open {
            return;
        }
        if st.send.as_ref().is_none_or(|(id, _)| *id != cid) {
            if st.send.take().is_some() {
                if st.meta.front().is_some_and(|m| m.header) {
                    // The old stream's header: the new stream gets its own.
                    st.drop_head();
                } else if st.head_written > 0 {
                    // Its start went on a stream of a lost connection: the rest cannot
                    // follow on a new stream.
                    self.lose_head(key);
                }
            }
            if !self.open(key, conn) {
                return;
            }
        }
        self.write(key);
    }

    /// Opens the stream's quinn stream on `conn`; `false` when it has to wait for the
    /// connection's stream budget (or failed and dropped its frames).
    fn open(&mut self, key: StreamKey, conn: &Connection) -> bool {
        if self.opening.is_some() {
            // Streams are opened in the order they asked.
            self.wait_open(key);
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(conn.open_uni()).poll(&mut cx) {
            Poll::Ready(Ok(s)) => {
                self.opened_stream(key, conn.stable_id(), s);
                true
            }
            Poll::Ready(Err(e)) => {
                debug!(error = %e, "cannot open stream");
                self.lose(key, "cannot open stream");
                false
            }
            Poll::Pending => {
                let c = conn.clone();
                self.opening = Some((
                    conn.stable_id(),
                    Box::pin(async move { c.open_uni().await }),
                ));
                self.wait_open(key);
                false
            }
        }
    }

    fn wait_open(&mut self, key: StreamKey) {
        if let Some(st) = self.streams.get_mut(&key)
            && !st.waiting_open
        {
            st.waiting_open = true;
            self.waiting_open.push_back(key);
        }
    }

    /// The open that waited for the stream budget completed.
    fn opened(&mut self, result: Result<SendStream, ConnectionError>) {
        let Some((cid, _)) = self.opening.take() else {
            return;
        };
        let waiting: Vec<StreamKey> = self.waiting_open.drain(..).collect();
        for key in &waiting {
            if let Some(st) = self.streams.get_mut(key) {
                st.waiting_open = false;
            }
        }
        match result {
            Ok(s) => {
                if let Some(&first) = waiting.first() {
                    self.opened_stream(first, cid, s);
                }
                // The others try again in order (on whatever connection is current then).
                for key in waiting {
                    if let Some(st) = self.streams.get_mut(&key) {
                        Self::schedule(&mut self.ready, key, st);
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "connection lost while opening streams");
                self.rescan = true;
            }
        }
    }

    fn opened_stream(&mut self, key: StreamKey, cid: usize, s: SendStream) {
        let _ = s.set_priority(match key {
            // Forwarded requests and replies are small and a caller waits on each.
            StreamKey::Heartbeats | StreamKey::Forward => 1,
            StreamKey::Raft(_) => 0,
        });
        Counters::add(&self.shared.counters.streams_opened, 1);
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        let header = key.header();
        st.meta.push_front(Meta {
            len: header.len(),
            frames: 0,
            messages: 0,
            header: true,
        });
        st.chunks.push_front(header);
        st.send = Some((cid, s));
        st.blocked = false;
    }

    /// Writes what quinn takes now; leaves the stream's waker with quinn if it takes less.
    fn write(&mut self, key: StreamKey) {
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        let mut sent = (0u64, 0u64, 0u64); // frames, messages, bytes
        let mut gone = (0usize, 0usize); // envelopes, their queued bytes
        let mut failed = None;
        st.coalesce();
        while !st.chunks.is_empty() {
            let Some((_, send)) = st.send.as_mut() else {
                break;
            };
            let waker = st.waker.get_or_insert_with(|| {
                Waker::from(Arc::new(StreamWaker {
                    key,
                    queue: self.queue.clone(),
                }))
            });
            let mut cx = Context::from_waker(waker);
            let n = st.chunks.len().min(MAX_WRITE_CHUNKS);
            let polled = {
                let chunks = &mut st.chunks.make_contiguous()[..n];
                pin!(send.write_chunks(chunks)).poll(&mut cx)
            };
            match polled {
                Poll::Pending => {
                    st.blocked = true;
                    break;
                }
                Poll::Ready(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                Poll::Ready(Ok(written)) => {
                    sent.2 += written.bytes as u64;
                    st.consume(written.bytes, |m| {
                        if !m.header {
                            sent.0 += m.frames;
                            sent.1 += m.messages;
                            gone.0 += 1;
                            gone.1 += m.len;
                        }
                    });
                }
            }
        }
        let r = &mut self.released;
        r.frames_sent += sent.0;
        r.messages_sent += sent.1;
        r.bytes_sent += sent.2;
        match key {
            StreamKey::Heartbeats => {
                r.heartbeat_frames_sent += sent.0;
                r.heartbeat_bytes_sent += sent.2;
            }
            StreamKey::Forward => {
                r.forward_frames_sent += sent.0;
                r.forward_bytes_sent += sent.2;
            }
            StreamKey::Raft(_) => {}
        }
        self.released.envelopes += gone.0;
        self.released.bytes += gone.1;
        if gone.0 > 0 {
            self.released.per_stream.push((key, gone.0));
        }
        st.shrink();
        if let Some(e) = failed {
            if let quinn::WriteError::Stopped(code) = e {
                warn!(%code, group = ?key.group(), "peer reset the stream");
            }
            st.send = None;
            self.lose(key, "write failed");
        }
    }

    /// Drops a partly written first frame.
    fn lose_head(&mut self, key: StreamKey) {
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        if let Some(m) = st.drop_head()
            && !m.header
        {
            Counters::add(&self.shared.counters.dropped_unreachable, m.frames);
            self.released.envelopes += 1;
            self.released.bytes += m.len;
            self.released.per_stream.push((key, 1));
            self.shared.report(Inbound::Unreachable {
                to: self.peer,
                group: key.group(),
            });
        }
    }

    /// Drops every pending frame of a stream and tells the coordinator.
    fn lose(&mut self, key: StreamKey, reason: &str) {
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        st.chunks.clear();
        st.head_written = 0;
        let (mut envelopes, mut bytes, mut frames) = (0usize, 0usize, 0u64);
        for m in st.meta.drain(..).filter(|m| !m.header) {
            envelopes += 1;
            bytes += m.len;
            frames += m.frames;
        }
        st.shrink();
        if envelopes == 0 {
            return;
        }
        Counters::add(&self.shared.counters.dropped_unreachable, frames);
        debug!(reason, frames, group = ?key.group(), "frames lost");
        self.released.envelopes += envelopes;
        self.released.bytes += bytes;
        self.released.per_stream.push((key, envelopes));
        self.shared.report(Inbound::Unreachable {
            to: self.peer,
            group: key.group(),
        });
    }
}
