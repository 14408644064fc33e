//! Counters a caller reads with [`LogStore::stats`](crate::LogStore::stats) instead of scraping
//! logs: relaxed atomics bumped on the write and read paths, copied out on demand.

use std::sync::atomic::{AtomicU64, Ordering};

/// One relaxed counter: the figures are for operators, never for synchronisation.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The live counters of a store, shared by every handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) batches: Counter,
    pub(crate) persists: Counter,
    pub(crate) unsynced_batches: Counter,
    pub(crate) entries_written: Counter,
    pub(crate) bytes_written: Counter,
    pub(crate) cache_hits: Counter,
    pub(crate) disk_reads: Counter,
}

impl Counters {
    /// A copy of the counters; `groups` is the number of groups held now.
    pub(crate) fn snapshot(&self, groups: u64) -> StorageStats {
        StorageStats {
            batches: self.batches.get(),
            persists: self.persists.get(),
            unsynced_batches: self.unsynced_batches.get(),
            entries_written: self.entries_written.get(),
            bytes_written: self.bytes_written.get(),
            groups,
            cache_hits: self.cache_hits.get(),
            disk_reads: self.disk_reads.get(),
        }
    }
}

/// Counters of a [`LogStore`](crate::LogStore), read with
/// [`LogStore::stats`](crate::LogStore::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Batches committed.
    pub batches: u64,
    /// Persist calls that reached the journal (one per non-empty committed batch that needs
    /// one); with a syncing [`Persist`](crate::Persist) mode, each is one fsync/fdatasync.
    pub persists: u64,
    /// Non-empty batches written without a sync because they only raised commit indexes (see
    /// [`CommitInfo::commit_index_only`](crate::CommitInfo::commit_index_only)).
    pub unsynced_batches: u64,
    /// Log entries written.
    pub entries_written: u64,
    /// Key and value bytes written (tombstones count their key).
    pub bytes_written: u64,
    /// Groups held now.
    pub groups: u64,
    /// Entries (or terms) served from the in-memory cache.
    pub cache_hits: u64,
    /// Entries read back from disk.
    pub disk_reads: u64,
}
