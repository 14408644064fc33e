//! Store configuration: a plain struct with safe defaults, chainable setters, and a
//! `validate` that runs when the store opens.

use crate::error::StorageError;

/// How hard `commit` pushes a batch towards the disk before it returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Persist {
    /// `fdatasync` the journal (the default): a committed batch survives power loss.
    #[default]
    SyncData,
    /// `fsync` the journal, metadata included.
    SyncAll,
    /// Hand the journal to the OS only. Survives a process crash, **not** a power loss or OS
    /// crash. For tests and benchmarks; never for a node whose acks matter.
    Buffer,
}

impl Persist {
    pub(crate) fn to_fjall(self) -> fjall::PersistMode {
        match self {
            Self::SyncData => fjall::PersistMode::SyncData,
            Self::SyncAll => fjall::PersistMode::SyncAll,
            Self::Buffer => fjall::PersistMode::Buffer,
        }
    }

    /// Whether this mode issues an fsync-family call per commit.
    #[must_use]
    pub fn syncs(self) -> bool {
        !matches!(self, Self::Buffer)
    }
}

/// Options of [`LogStore::open`](crate::LogStore::open).
#[derive(Clone, Debug)]
#[must_use]
pub struct StoreOptions {
    /// Durability of every commit. Default [`Persist::SyncData`].
    pub persist: Persist,
    /// Durable log entries kept in memory per group, so catch-up and leader appends read the
    /// recent tail without touching disk. Entries staged but not yet durable are always kept,
    /// whatever this says. Default 1024.
    pub entry_cache_per_group: usize,
    /// fjall block cache in bytes. Default 64 MiB, minimum 1 MiB.
    pub block_cache_bytes: u64,
    /// fjall background workers (flush, compaction). `None` keeps fjall's default.
    pub worker_threads: Option<usize>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            persist: Persist::SyncData,
            entry_cache_per_group: 1024,
            block_cache_bytes: 64 << 20,
            worker_threads: None,
        }
    }
}

impl StoreOptions {
    /// Sets [`StoreOptions::persist`].
    pub fn persist(mut self, persist: Persist) -> Self {
        self.persist = persist;
        self
    }

    /// Sets [`StoreOptions::entry_cache_per_group`].
    pub fn entry_cache_per_group(mut self, entries: usize) -> Self {
        self.entry_cache_per_group = entries;
        self
    }

    /// Sets [`StoreOptions::block_cache_bytes`].
    pub fn block_cache_bytes(mut self, bytes: u64) -> Self {
        self.block_cache_bytes = bytes;
        self
    }

    /// Sets [`StoreOptions::worker_threads`].
    pub fn worker_threads(mut self, threads: Option<usize>) -> Self {
        self.worker_threads = threads;
        self
    }

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidOptions`] naming the first value out of range.
    pub fn validate(&self) -> Result<(), StorageError> {
        const MIN_BLOCK_CACHE: u64 = 1 << 20;
        if self.block_cache_bytes < MIN_BLOCK_CACHE {
            return Err(StorageError::InvalidOptions {
                option: "block_cache_bytes",
                value: self.block_cache_bytes,
                min: MIN_BLOCK_CACHE,
            });
        }
        if self.worker_threads == Some(0) {
            return Err(StorageError::InvalidOptions {
                option: "worker_threads",
                value: 0,
                min: 1,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_options_name_the_field_and_its_minimum() {
        assert!(StoreOptions::default().validate().is_ok());
        let cases = [
            (
                StoreOptions::default().block_cache_bytes(1024),
                ("block_cache_bytes", 1024, 1 << 20),
            ),
            (
                StoreOptions::default().worker_threads(Some(0)),
                ("worker_threads", 0, 1),
            ),
        ];
        for (options, expected) in cases {
            match options.validate() {
                Err(StorageError::InvalidOptions { option, value, min }) => {
                    assert_eq!((option, value, min), expected);
                }
                other => panic!("expected InvalidOptions {expected:?}, got {other:?}"),
            }
        }
    }
}
