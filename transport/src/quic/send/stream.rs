//! One stream toward the peer as the writer holds it: the quinn stream, the bytes not yet
//! handed to quinn and what each run of them is (a header or a queued envelope), so a partial
//! write, a lost connection or a reset can account for every frame it completes or drops.
//!
//! Pure bookkeeping over buffers: no locks, no quinn calls beyond holding the `SendStream`.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::{Buf, Bytes, BytesMut};
use quinn::SendStream;

/// Neighbouring pending chunks shorter than this are copied into one before a write: quinn
/// keeps every chunk as a segment until it is acknowledged and walks its segments to build
/// each packet, so a few large segments cost it far less than many frame-sized ones. Longer
/// chunks are handed over as they are (no copy).
const COALESCE_BELOW: usize = 4096;

/// Deque capacity kept by a stream that has drained: a burst does not pin its peak memory
/// on each of many idle groups.
const KEEP_CAPACITY: usize = 16;

/// What a run of pending bytes is: a stream header, or one queued envelope's frames.
#[derive(Clone, Copy)]
pub(super) struct Meta {
    pub(super) len: usize,
    pub(super) frames: u64,
    pub(super) messages: u64,
    /// A stream header, not a queued envelope (holds no place in the queue).
    pub(super) header: bool,
}

/// One stream toward the peer, as the writer sees it.
#[derive(Default)]
pub(super) struct Stream {
    /// The quinn stream and the `stable_id` of the connection it belongs to.
    pub(super) send: Option<(usize, SendStream)>,
    /// Bytes not yet handed to quinn, oldest first: the stream header after an open, then
    /// the frames (small neighbours copied into one before a write; quinn empties the chunks
    /// it takes and trims a partly taken one in place).
    pub(super) chunks: VecDeque<Bytes>,
    /// What those bytes are, in order.
    pub(super) meta: VecDeque<Meta>,
    /// Bytes of the first `meta` entry already handed to quinn.
    pub(super) head_written: usize,
    /// Created when the stream first runs out of credit.
    pub(super) waker: Option<Waker>,
    /// quinn holds our waker: nothing to try until it fires.
    pub(super) blocked: bool,
    /// On the writer's list of streams to write this pass.
    pub(super) scheduled: bool,
    /// Waiting for the connection to allow one more stream.
    pub(super) waiting_open: bool,
}

impl Stream {
    /// Removes what is left of the first entry (it cannot be completed on another stream).
    pub(super) fn drop_head(&mut self) -> Option<Meta> {
        let m = self.meta.pop_front()?;
        let mut left = m.len - std::mem::take(&mut self.head_written);
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
        Some(m)
    }

    /// Accounts `n` more bytes handed to quinn: calls `done` for each entry now wholly
    /// written, and drops the chunks quinn emptied.
    pub(super) fn consume(&mut self, mut n: usize, mut done: impl FnMut(Meta)) {
        while n > 0 {
            let Some(m) = self.meta.front() else {
                break;
            };
            let left = m.len - self.head_written;
            if n < left {
                self.head_written += n;
                break;
            }
            n -= left;
            self.head_written = 0;
            if let Some(m) = self.meta.pop_front() {
                done(m);
            }
        }
        while self.chunks.front().is_some_and(Bytes::is_empty) {
            self.chunks.pop_front();
        }
    }

    /// Copies each run of small neighbouring chunks into one (see [`COALESCE_BELOW`]).
    pub(super) fn coalesce(&mut self) {
        let small = |c: &Bytes| c.len() < COALESCE_BELOW;
        let chunks = self.chunks.make_contiguous();
        if !chunks.windows(2).any(|w| small(&w[0]) && small(&w[1])) {
            return;
        }
        // Compacted in place: `kept` chunks are final, `i` is the next to look at.
        let (mut kept, mut i) = (0, 0);
        while i < chunks.len() {
            let run = chunks[i..].iter().take_while(|c| small(c)).count();
            let merged = if run < 2 {
                i += 1;
                std::mem::take(&mut chunks[i - 1])
            } else {
                let len = chunks[i..i + run].iter().map(Bytes::len).sum();
                let mut b = BytesMut::with_capacity(len);
                for c in &chunks[i..i + run] {
                    b.extend_from_slice(c);
                }
                i += run;
                b.freeze()
            };
            chunks[kept] = merged;
            kept += 1;
        }
        self.chunks.truncate(kept);
    }

    pub(super) fn shrink(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > KEEP_CAPACITY {
            self.chunks = VecDeque::new();
            self.meta = VecDeque::new();
        }
    }
}
