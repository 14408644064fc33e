//! The database handle every other handle shares: the fjall database and its two keyspaces,
//! the map of groups held, the durable sequence number, the poison latch, and the counters.
//! Opening it recovers every group from disk (`recovery`); reading below a group's cache goes
//! through it.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use raft::eraftpb::Entry;
use routing::GroupId;
use tracing::{error, info, info_span};

use crate::error::{CorruptReason, PoisonCause, StorageError};
use crate::keys::{self, Tag};
use crate::options::StoreOptions;
use crate::recovery;
use crate::state::Cell;
use crate::stats::Counters;
use crate::sync;

/// What every handle of one store shares: [`LogStore`](crate::LogStore),
/// [`GroupStorage`](crate::GroupStorage) and [`StagedBatch`](crate::StagedBatch) each hold an
/// `Arc` of it.
pub(crate) struct Shared {
    pub(crate) db: Database,
    pub(crate) log: Keyspace,
    pub(crate) meta: Keyspace,
    pub(crate) options: StoreOptions,
    groups: RwLock<HashMap<GroupId, Cell>>,
    /// The sequence number of the last batch that is durable (0: none since open).
    durable_seq: AtomicU64,
    /// Set once, by the first cause: later writes are refused with it.
    poisoned: OnceLock<PoisonCause>,
    pub(crate) stats: Counters,
    /// Groups for which raft asked a snapshot the store could not give (none stored, too old,
    /// or not naming the receiver): the coordinator takes a fresh one.
    pub(crate) snapshot_requests: Mutex<BTreeSet<GroupId>>,
}

impl Shared {
    /// Opens the database in `dir`, creating it if needed, and recovers every group it holds.
    pub(crate) fn open(dir: &Path, options: StoreOptions) -> Result<Shared, StorageError> {
        options.validate()?;
        let span = info_span!("storage_open", dir = %dir.display());
        let _enter = span.enter();
        let mut builder = Database::builder(dir)
            .cache_size(options.block_cache_bytes)
            .manual_journal_persist(true);
        if let Some(n) = options.worker_threads {
            builder = builder.worker_threads(n);
        }
        let db = builder.open()?;
        let log = db.keyspace(keys::LOG_KEYSPACE, KeyspaceCreateOptions::default)?;
        let meta = db.keyspace(keys::META_KEYSPACE, KeyspaceCreateOptions::default)?;
        let groups = recovery::recover(&log, &meta, options.entry_cache_per_group)?;
        info!(groups = groups.len(), "opened log store");
        let groups = groups
            .into_iter()
            .map(|(g, st)| (g, Arc::new(RwLock::new(st))))
            .collect();
        Ok(Shared {
            db,
            log,
            meta,
            options,
            groups: RwLock::new(groups),
            durable_seq: AtomicU64::new(0),
            poisoned: OnceLock::new(),
            stats: Counters::default(),
            snapshot_requests: Mutex::new(BTreeSet::new()),
        })
    }

    /// The groups held, for reading.
    pub(crate) fn groups(&self) -> RwLockReadGuard<'_, HashMap<GroupId, Cell>> {
        sync::read(&self.groups)
    }

    /// The groups held, for adding or removing one.
    pub(crate) fn groups_mut(&self) -> RwLockWriteGuard<'_, HashMap<GroupId, Cell>> {
        sync::write(&self.groups)
    }

    /// The sequence number of the last durable batch.
    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// Records that batch `seq` is durable; the commit lock orders the calls.
    pub(crate) fn set_durable_seq(&self, seq: u64) {
        self.durable_seq.store(seq, Ordering::Release);
    }

    /// Refuses every later write: the in-memory view and the disk may disagree. The first
    /// cause is kept; later ones are only logged.
    pub(crate) fn poison(&self, cause: PoisonCause) {
        error!(%cause, "log store poisoned");
        // A second cause finds the latch set: the first one is what readers are told.
        let _ = self.poisoned.set(cause);
    }

    /// Poisons the store and returns the error a write now gets (naming the first cause).
    pub(crate) fn poisoned(&self, cause: PoisonCause) -> StorageError {
        self.poison(cause.clone());
        StorageError::Poisoned {
            cause: self.poisoned.get().cloned().unwrap_or(cause),
        }
    }

    /// `Err(Poisoned)` once the store is poisoned.
    pub(crate) fn check_poison(&self) -> Result<(), StorageError> {
        match self.poisoned.get() {
            Some(cause) => Err(StorageError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Reads log entries `[lo, hi)` of a group from disk, in order, checking that they are
    /// consecutive; `f` returns false to stop early.
    pub(crate) fn read_log(
        &self,
        group: GroupId,
        lo: u64,
        hi: u64,
        mut f: impl FnMut(Entry) -> bool,
    ) -> Result<(), StorageError> {
        for (kv, expected) in self
            .log
            .range(keys::log_key(group, lo)..keys::log_key(group, hi))
            .zip(lo..)
        {
            let (k, v) = kv.into_inner()?;
            let Some((_, index)) = keys::parse_log_key(&k) else {
                return Err(StorageError::CorruptRecord {
                    group,
                    index: None,
                    record: "entry key",
                    reason: CorruptReason::KeyLength {
                        len: k.len(),
                        expected: keys::LOG_KEY_LEN,
                    },
                });
            };
            if index != expected {
                return Err(StorageError::LogGap {
                    group,
                    expected,
                    found: index,
                });
            }
            let e = keys::decode_entry(group, index, &v)?;
            self.stats.disk_reads.inc(1);
            if !f(e) {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn read_snapshot_data(&self, group: GroupId) -> Result<fjall::Slice, StorageError> {
        Ok(self
            .meta
            .get(keys::meta_key(group, Tag::SnapshotData))?
            .unwrap_or_default())
    }
}
