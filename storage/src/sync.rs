//! The crate's one rule for poisoned locks, in one place so every lock follows it.
//!
//! A std lock is poisoned when a thread panicked while holding it. The rule: **a panic that
//! may have left memory ahead of the disk poisons the store; any other poisoned lock is
//! recovered.** Every lock taken through these helpers guards data that stays consistent at
//! every point a panic could strike (a group's state is replaced field by whole field, the
//! group map and the snapshot-request set by single inserts and removes, the commit lock
//! guards nothing), so the guard is recovered with [`PoisonError::into_inner`] and reads go
//! on. The one critical section that could leave memory ahead of the disk is staging a batch
//! (it publishes group by group): its lock is taken without these helpers, and finding it
//! poisoned poisons the store with [`PoisonCause::StagePanicked`](crate::PoisonCause), so
//! writes get a typed [`StorageError::Poisoned`](crate::StorageError::Poisoned).

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks a mutex, recovering the guard of a poisoned one (see the module doc).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks, recovering the guard of a poisoned lock (see the module doc).
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks, recovering the guard of a poisoned lock (see the module doc).
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
