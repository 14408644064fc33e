//! The store's figures for operators, through the `metrics` facade (no recorder installed
//! here: the binary picks the exporter).
//!
//! The counters already kept in [`StorageStats`] are published on the caller's tick with
//! [`publish`], so the write path touches no facade; [`record_persist`] is the one call on
//! it, once per persisted batch (one fsync), never per entry. Every name is in the README's
//! "Metrics" table. Labels are bounded: `node` only, never a group.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use routing::NodeId;

use crate::{CommitInfo, StorageStats};

/// Counter: batches committed.
pub const BATCHES: &str = "pontoon_storage_batches_total";
/// Counter: persists that reached the journal (each an fsync with a syncing persist mode).
pub const FSYNCS: &str = "pontoon_storage_fsyncs_total";
/// Counter: batches written without a sync, since they only raised commit indexes.
pub const UNSYNCED_BATCHES: &str = "pontoon_storage_unsynced_batches_total";
/// Counter: log entries written.
pub const ENTRIES_WRITTEN: &str = "pontoon_storage_entries_written_total";
/// Counter: key and value bytes written.
pub const BYTES_WRITTEN: &str = "pontoon_storage_written_bytes_total";
/// Counter: entries served from the in-memory cache.
pub const CACHE_HITS: &str = "pontoon_storage_cache_hits_total";
/// Counter: entries read back from disk.
pub const DISK_READS: &str = "pontoon_storage_disk_reads_total";
/// Gauge: groups held in the store.
pub const GROUPS: &str = "pontoon_storage_groups";
/// Histogram: seconds one batch took to commit and persist (the fsync).
pub const FSYNC_SECONDS: &str = "pontoon_storage_fsync_seconds";
/// Histogram: groups whose writes one persisted batch carried (the cycle's size in groups).
pub const PERSIST_GROUPS: &str = "pontoon_storage_persist_groups";
/// Histogram: bytes one persisted batch carried.
pub const PERSIST_BYTES: &str = "pontoon_storage_persist_bytes";

/// Registers the descriptions and units of the store's series with the installed recorder.
pub fn describe() {
    describe_counter!(BATCHES, "Batches committed to the log store.");
    describe_counter!(
        FSYNCS,
        "Persists that reached the journal: one fsync each with a syncing persist mode."
    );
    describe_counter!(
        UNSYNCED_BATCHES,
        "Batches written without a sync: they only raised commit indexes."
    );
    describe_counter!(ENTRIES_WRITTEN, "Raft log entries written.");
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "Key and value bytes written to the log store."
    );
    describe_counter!(CACHE_HITS, "Log entries served from the in-memory cache.");
    describe_counter!(DISK_READS, "Log entries read back from disk.");
    describe_gauge!(GROUPS, "Raft groups held in the log store.");
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Time to commit and persist one batch (the fsync of one coordinator cycle)."
    );
    describe_histogram!(
        PERSIST_GROUPS,
        "Groups whose writes one persisted batch carried."
    );
    describe_histogram!(
        PERSIST_BYTES,
        Unit::Bytes,
        "Bytes one persisted batch carried."
    );
}

/// Publishes a snapshot of the store's counters for `node`: call it on a periodic tick.
pub fn publish(node: NodeId, stats: &StorageStats) {
    let node = node.get().to_string();
    counter!(BATCHES, "node" => node.clone()).absolute(stats.batches);
    counter!(FSYNCS, "node" => node.clone()).absolute(stats.persists);
    counter!(UNSYNCED_BATCHES, "node" => node.clone()).absolute(stats.unsynced_batches);
    counter!(ENTRIES_WRITTEN, "node" => node.clone()).absolute(stats.entries_written);
    counter!(BYTES_WRITTEN, "node" => node.clone()).absolute(stats.bytes_written);
    counter!(CACHE_HITS, "node" => node.clone()).absolute(stats.cache_hits);
    counter!(DISK_READS, "node" => node.clone()).absolute(stats.disk_reads);
    gauge!(GROUPS, "node" => node).set(stats.groups as f64);
}

/// Records one persisted batch: how long its commit took and how much it carried.
pub fn record_persist(node: NodeId, elapsed: Duration, info: &CommitInfo) {
    // Only what the fsync histograms are about: a commit-index-only batch has no sync.
    if info.commit_index_only {
        return;
    }
    let node = node.get().to_string();
    histogram!(FSYNC_SECONDS, "node" => node.clone()).record(elapsed.as_secs_f64());
    histogram!(PERSIST_GROUPS, "node" => node.clone()).record(info.groups as f64);
    histogram!(PERSIST_BYTES, "node" => node).record(info.bytes as f64);
}
