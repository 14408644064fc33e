//! The in-memory state of one group, as staged: what [`GroupStorage`](crate::GroupStorage)
//! reads, what staging simulates and publishes, and what recovery rebuilds from disk. Plain
//! data and cache bookkeeping only, so every other module can build on it.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use crate::keys::Bounds;

/// The small, cheaply cloned part of a group's state: what `stage` simulates and validates.
/// `stage` clones it for every group a batch touches, so the parts that own heap memory and
/// rarely change are shared, not copied.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupMeta {
    pub(crate) hard_state: HardState,
    pub(crate) conf_state: Arc<ConfState>,
    pub(crate) applied: u64,
    pub(crate) bounds: Bounds,
    pub(crate) last_index: u64,
    pub(crate) snapshot_meta: Option<Arc<SnapshotMetadata>>,
}

impl GroupMeta {
    pub(crate) fn new(conf_state: ConfState) -> Self {
        Self {
            conf_state: Arc::new(conf_state),
            bounds: Bounds {
                first_index: 1,
                trunc_index: 0,
                trunc_term: 0,
            },
            ..Default::default()
        }
    }
}

/// The in-memory state of a group, as staged.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    pub(crate) meta: GroupMeta,
    /// A contiguous suffix of the log ending at `meta.last_index` (or empty), each entry
    /// tagged with the sequence number of the batch that wrote it (0: recovered from disk).
    /// Sequence numbers never decrease front to back, so entries not yet durable are always a
    /// suffix of the cache and trimming the front never drops one.
    pub(crate) cache: VecDeque<(u64, Entry)>,
    /// A snapshot staged and not yet durable (kept whole until its batch commits).
    pub(crate) pending_snapshot: Option<(u64, Snapshot)>,
    pub(crate) deleted: bool,
}

impl GroupState {
    /// Appends entries a batch wrote, dropping the cached suffix they replace.
    pub(crate) fn cache_append(&mut self, seq: u64, entries: Vec<Entry>) {
        let Some(start) = entries.first().map(|e| e.index) else {
            return;
        };
        while self.cache.back().is_some_and(|(_, e)| e.index >= start) {
            self.cache.pop_back();
        }
        self.cache.extend(entries.into_iter().map(|e| (seq, e)));
    }

    /// Drops the cached entries below `index` (a compaction).
    pub(crate) fn cache_drop_below(&mut self, index: u64) {
        while self.cache.front().is_some_and(|(_, e)| e.index < index) {
            self.cache.pop_front();
        }
    }

    /// Drops durable entries from the front while the cache is over its capacity.
    pub(crate) fn trim_cache(&mut self, capacity: usize, durable_seq: u64) {
        while self.cache.len() > capacity
            && self
                .cache
                .front()
                .is_some_and(|(seq, _)| *seq <= durable_seq)
        {
            self.cache.pop_front();
        }
    }

    /// The first index served from the cache; everything in `[first_index, cache_front)` is
    /// durable on disk.
    pub(crate) fn cache_front(&self) -> u64 {
        self.cache
            .front()
            .map_or(self.meta.last_index + 1, |(_, e)| e.index)
    }

    pub(crate) fn cached(&self, index: u64) -> Option<&Entry> {
        let front = self.cache.front()?.1.index;
        let off = usize::try_from(index.checked_sub(front)?).ok()?;
        self.cache.get(off).map(|(_, e)| e)
    }
}

/// A group's state behind its own lock, shared by the store's group map and every
/// [`GroupStorage`](crate::GroupStorage) handed out for it.
pub(crate) type Cell = Arc<RwLock<GroupState>>;
