//! Durable raft log for many groups in one fjall database.
//!
//! `pontoon-storage` keeps the raft log, hard state, conf state, applied index and snapshot
//! of every group on a node in one fjall database (two keyspaces, one journal), so one
//! persist makes a whole coordinator cycle durable, however many groups it touched. Each
//! group is read through a [`GroupStorage`], which implements `raft::Storage`.
//!
//! # How data flows
//!
//! 1. **Open and recover.** [`LogStore::open`] opens or creates the database and rebuilds
//!    every group's state from disk, checking each record: a damaged store fails to open with
//!    [`StorageError::CorruptRecord`] or [`StorageError::LogGap`] naming the group, never
//!    serves a log with holes.
//! 2. **Read.** [`LogStore::group`] hands out a [`GroupStorage`]; a `raft::RawNode` runs
//!    directly on it. Reads come from the group's staged state and its cache of recent
//!    entries, and from disk below the cache.
//! 3. **Stage one batch for many groups.** Each cycle the coordinator collects every group's
//!    `Ready` into one [`WriteBatch`]. [`LogStore::stage`] validates it against a simulated
//!    copy of each group (nothing changes on error), builds the one fjall batch it will write,
//!    and publishes its effects so raft reads them at once (for raft-rs's
//!    `advance_append_async`).
//! 4. **One persist.** [`LogStore::commit`], on any thread and in stage order, writes that
//!    fjall batch with one fsync (per [`Persist`]); [`LogStore::durable_seq`] then reaches the
//!    batch's [`StagedBatch::seq`]. [`LogStore::write`] stages and commits in one call.
//! 5. **Compact.** [`WriteBatch::compact`] drops a group's entries below an index (one remove
//!    per key, since fjall has no range delete) and moves its first index, which reads never
//!    go below; [`WriteBatch::save_snapshot`] and [`WriteBatch::apply_snapshot`] store the
//!    snapshot that stands for what was dropped.
//!
//! ```
//! use pontoon_storage::{GroupId, LogStore, StoreOptions};
//! use raft::{eraftpb::{ConfState, Entry}, Storage};
//!
//! let ent = |index| Entry { index, term: 1, ..Default::default() };
//! let dir = tempfile::tempdir()?;
//! let store = LogStore::open(dir.path(), StoreOptions::default())?;
//! let mut batch = store.batch();
//! for g in [GroupId(7), GroupId(8)] {
//!     batch.create_group(g, ConfState { voters: vec![1, 2, 3], ..Default::default() });
//!     batch.append(g, &[ent(1), ent(2), ent(3)]);
//! }
//! let staged = store.stage(batch)?;
//! let g7 = store.group(GroupId(7))?;
//! assert_eq!(Storage::last_index(&g7)?, 3); // readable before it is durable
//! assert!(store.durable_seq() < staged.seq());
//! let info = store.commit(staged)?; // two groups, one fsync
//! assert_eq!((store.durable_seq(), info.groups), (info.seq, 2));
//!
//! let mut batch = store.batch();
//! batch.compact(GroupId(7), 3);
//! store.write(batch)?;
//! drop((g7, store));
//!
//! let store = LogStore::open(dir.path(), StoreOptions::default())?; // recovers both groups
//! let g7 = store.group(GroupId(7))?;
//! assert_eq!((Storage::first_index(&g7)?, Storage::last_index(&g7)?), (3, 3));
//! assert_eq!(g7.entries(3, 4, None, raft::GetEntriesContext::empty(false))?, vec![ent(3)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Modules
//!
//! Dependencies between the files point one way, from the public handle down to the disk
//! format: `store` ([`LogStore`]) uses `staging` (the stage/commit pipeline, [`StagedBatch`])
//! and `group` ([`GroupStorage`]); both use `db` (the shared fjall handle, group map and poison
//! latch), which uses `recovery` (rebuilding groups on open); `simulate` (validating a batch's
//! ops) serves `staging`; everything builds on `state` (a group's in-memory state), `keys`
//! (the on-disk layout), `batch` ([`WriteBatch`]), `stats`, `options`, `sync` and `error`.
//!
//! # Errors and locks
//!
//! [`StorageError`] is the one error of the crate; a write that may leave memory ahead of the
//! disk poisons the store, after which every write gets [`StorageError::Poisoned`] with its
//! [`PoisonCause`]: restart and reopen. The same rule covers locks: a poisoned std lock is
//! recovered with `PoisonError::into_inner` wherever its data stays consistent through a
//! panic, which is every lock but the one that serializes staging; finding that one poisoned
//! poisons the store ([`PoisonCause::StagePanicked`]).

#![warn(unreachable_pub)]
// Records come back from disk: a short or damaged one must be a typed error, never a panic.
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

mod batch;
mod db;
mod error;
mod group;
mod keys;
pub mod metrics;
mod options;
mod recovery;
mod simulate;
mod staging;
mod state;
mod stats;
mod store;
mod sync;

pub use batch::WriteBatch;
pub use error::{CorruptReason, PoisonCause, StorageError};
pub use group::GroupStorage;
pub use options::{Persist, StoreOptions};
pub use routing::GroupId;
pub use staging::{CommitInfo, StagedBatch};
pub use stats::StorageStats;
pub use store::LogStore;
