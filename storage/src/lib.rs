//! Durable raft log for many groups in one fjall database.
//!
//! `pontoon-storage` keeps the raft log, hard state, conf state, applied index and snapshot
//! of every group on a node in one fjall database (two keyspaces, one journal), so one
//! persist makes a whole coordinator cycle durable, however many groups it touched.
//!
//! 1. [`LogStore::open`] opens or creates the store and recovers every group.
//! 2. [`LogStore::group`] hands out a [`GroupStorage`], which implements `raft::Storage`: a
//!    `raft::RawNode` runs directly on it.
//! 3. Each cycle, collect every group's `Ready` into one [`WriteBatch`].
//! 4. [`LogStore::stage`] validates it and makes it readable at once (for raft-rs's
//!    `advance_append_async`); [`LogStore::commit`], on any thread, writes it with one fjall
//!    batch and one fsync. [`LogStore::write`] does both.
//!
//! ```
//! use pontoon_storage::{LogStore, StoreOptions};
//! use raft::{eraftpb::{ConfState, Entry}, Storage};
//! use pontoon_storage::GroupId;
//!
//! let dir = tempfile::tempdir()?;
//! let store = LogStore::open(dir.path(), StoreOptions::default())?;
//! let mut batch = store.batch();
//! batch.create_group(GroupId(7), ConfState { voters: vec![1, 2, 3], ..Default::default() });
//! batch.append(GroupId(7), &[Entry { index: 1, term: 1, ..Default::default() }]);
//! let staged = store.stage(batch)?;
//! let g7 = store.group(GroupId(7))?;
//! assert_eq!(Storage::last_index(&g7)?, 1); // readable before it is durable
//! assert!(store.durable_seq() < staged.seq());
//! let info = store.commit(staged)?; // one fsync
//! assert_eq!(store.durable_seq(), info.seq);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(unreachable_pub)]
// Records come back from disk: a short or damaged one must be a typed error, never a panic.
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

mod batch;
mod db;
mod error;
mod group;
mod keys;
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
