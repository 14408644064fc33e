//! [`LogStore`]: the public handle that ties the parts together. It opens the database
//! (`db`, which recovers every group), hands out [`GroupStorage`] handles, and runs the
//! stage/commit pipeline (`staging`).

use std::path::Path;
use std::sync::Arc;

use routing::GroupId;

use crate::batch::WriteBatch;
use crate::db::Shared;
use crate::error::StorageError;
use crate::group::GroupStorage;
use crate::options::StoreOptions;
use crate::staging::{CommitInfo, Pipeline, StagedBatch};
use crate::stats::StorageStats;
use crate::sync;

/// The raft log, hard state, conf state, applied index and snapshot of every group on a node,
/// in one fjall database. Cheap to clone; `Send + Sync`.
///
/// ```
/// use pontoon_storage::{LogStore, StoreOptions};
/// use raft::{eraftpb::{ConfState, Entry, HardState}, Storage};
/// use pontoon_storage::GroupId;
///
/// let dir = tempfile::tempdir()?;
/// let store = LogStore::open(dir.path(), StoreOptions::default())?;
/// let mut batch = store.batch();
/// for g in 1..=3 {
///     batch.create_group(GroupId(g), ConfState { voters: vec![1], ..Default::default() });
///     batch.append(GroupId(g), &[Entry { index: 1, term: 1, ..Default::default() }]);
///     batch.set_hard_state(GroupId(g), HardState { term: 1, vote: 1, commit: 1, ..Default::default() });
/// }
/// let info = store.write(batch)?; // three groups, one fsync
/// assert_eq!((info.groups, info.entries), (3, 3));
/// drop(store);
///
/// let store = LogStore::open(dir.path(), StoreOptions::default())?;
/// assert_eq!(store.groups(), vec![GroupId(1), GroupId(2), GroupId(3)]);
/// let g2 = store.group(GroupId(2))?;
/// assert_eq!(g2.initial_state()?.hard_state.commit, 1);
/// assert_eq!(g2.term(1)?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    pipeline: Arc<Pipeline>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("durable_seq", &self.durable_seq())
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the database in `dir`, creating it if needed, and recovers every group it holds.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidOptions`]; [`StorageError::Db`] if fjall cannot open or
    /// recover; [`StorageError::CorruptRecord`] or [`StorageError::LogGap`] naming the group
    /// (and index) whose records do not decode or whose log has a hole.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<LogStore, StorageError> {
        Ok(LogStore {
            shared: Arc::new(Shared::open(dir.as_ref(), options)?),
            pipeline: Arc::new(Pipeline::new()),
        })
    }

    /// Every group held, in id order (on reopen: every group recovered).
    #[must_use]
    pub fn groups(&self) -> Vec<GroupId> {
        let mut v: Vec<GroupId> = self.shared.groups().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The storage handle of a group.
    ///
    /// # Errors
    ///
    /// [`StorageError::UnknownGroup`] if the store does not hold it.
    pub fn group(&self, id: GroupId) -> Result<GroupStorage, StorageError> {
        let cell = self
            .shared
            .groups()
            .get(&id)
            .cloned()
            .ok_or(StorageError::UnknownGroup { group: id })?;
        Ok(GroupStorage::new(id, self.shared.clone(), cell))
    }

    /// A new, empty batch.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new()
    }

    /// The sequence number of the last batch that is durable (0: none since open).
    #[must_use]
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq()
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.shared.options
    }

    /// Groups whose leader needed a snapshot to send that the store could not give (none
    /// stored, older than raft asked for, or taken before the receiver joined the group).
    /// Take a state-machine snapshot of each and save it (`WriteBatch::save_snapshot`); raft
    /// retries the send by itself. Each request is returned once.
    pub fn take_snapshot_requests(&self) -> Vec<GroupId> {
        std::mem::take(&mut *sync::lock(&self.shared.snapshot_requests))
            .into_iter()
            .collect()
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> StorageStats {
        let groups = self.shared.groups().len() as u64;
        self.shared.stats.snapshot(groups)
    }

    /// Stages and commits a batch: on success it is durable.
    ///
    /// # Errors
    ///
    /// As [`LogStore::stage`] and [`LogStore::commit`].
    pub fn write(&self, batch: WriteBatch) -> Result<CommitInfo, StorageError> {
        let staged = self.stage(batch)?;
        let info = self.commit(staged)?;
        // Same thread as the stage: trim the caches this batch filled now that it is durable.
        self.pipeline.trim_durable(&self.shared);
        Ok(info)
    }

    /// Validates a batch and makes its effects visible to every [`GroupStorage`] read at
    /// once, without I/O. Entries stay in memory at least until the batch is durable. Stage
    /// order is commit order.
    ///
    /// # Errors
    ///
    /// Nothing is staged on error: [`StorageError::Poisoned`], [`StorageError::UnknownGroup`],
    /// [`StorageError::GroupExists`], [`StorageError::NonContiguousAppend`],
    /// [`StorageError::Compacted`] (append below the first index),
    /// [`StorageError::CompactBeyondLog`], [`StorageError::SnapshotOutOfRange`].
    pub fn stage(&self, batch: WriteBatch) -> Result<StagedBatch, StorageError> {
        self.pipeline.stage(&self.shared, batch)
    }

    /// Writes a staged batch with one fjall write batch and one persist in the configured
    /// mode. When it returns `Ok`, every part of the batch is durable. Callable from another
    /// thread than `stage`; batches must be committed in stage order. It takes no group's
    /// lock: reads of every group proceed while it runs.
    ///
    /// # Errors
    ///
    /// [`StorageError::Poisoned`]; [`StorageError::OutOfOrderCommit`] (the store is poisoned,
    /// since the batch's staged effects can no longer be made durable in order);
    /// [`StorageError::Persist`] if the write or sync failed (the store is poisoned and the
    /// batch must be considered lost: never acknowledge it).
    pub fn commit(&self, staged: StagedBatch) -> Result<CommitInfo, StorageError> {
        self.pipeline.commit(&self.shared, staged)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use raft::eraftpb::{ConfState, Entry};

    use super::*;

    /// A batch that only raises a commit index needs no sync; entries, a term or a vote do.
    #[test]
    fn only_a_batch_that_raises_nothing_but_commit_indexes_skips_the_sync() {
        let hs = |term, vote, commit| raft::eraftpb::HardState {
            term,
            vote,
            commit,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), StoreOptions::default()).unwrap();
        let g = GroupId(1);
        let mut b = store.batch();
        b.create_group(g, ConfState::default());
        assert!(!store.write(b).unwrap().commit_index_only);
        let mut b = store.batch();
        b.append(
            g,
            &[Entry {
                index: 1,
                term: 1,
                ..Default::default()
            }],
        );
        b.set_hard_state(g, hs(1, 2, 0));
        assert!(
            !store.write(b).unwrap().commit_index_only,
            "entries and a vote"
        );
        let before = store.stats();
        let mut b = store.batch();
        b.set_hard_state(g, hs(1, 2, 1));
        assert!(store.write(b).unwrap().commit_index_only);
        let after = store.stats();
        assert_eq!(after.persists, before.persists, "no fsync counted");
        assert_eq!(after.unsynced_batches, before.unsynced_batches + 1);
        // Readers see it at once, like any staged write.
        assert_eq!(store.group(g).unwrap().hard_state().commit, 1);
        for hs in [hs(2, 2, 1), hs(2, 3, 1)] {
            let mut b = store.batch();
            b.set_hard_state(g, hs);
            assert!(
                !store.write(b).unwrap().commit_index_only,
                "a new term or vote"
            );
        }
    }

    /// A reader on the coordinator thread must never wait for the thread that fsyncs: commit
    /// takes no group's lock. Here a group's lock is held for writing while another thread
    /// commits a batch of that group; the commit must finish regardless.
    #[test]
    fn commit_takes_no_group_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), StoreOptions::default()).unwrap();
        let g = GroupId(1);
        let mut b = store.batch();
        b.create_group(g, ConfState::default());
        b.append(
            g,
            &[Entry {
                index: 1,
                term: 1,
                ..Default::default()
            }],
        );
        let staged = store.stage(b).unwrap();
        let cell = store.shared.groups().get(&g).cloned().unwrap();
        let held = sync::write(&cell);
        let (tx, rx) = mpsc::channel();
        let committer = {
            let store = store.clone();
            std::thread::spawn(move || tx.send(store.commit(staged).map(|i| i.seq)))
        };
        let done = rx.recv_timeout(Duration::from_secs(30));
        drop(held);
        committer.join().unwrap().ok();
        assert_eq!(done.unwrap().unwrap(), 1);
        assert_eq!(store.durable_seq(), 1);
    }
}
