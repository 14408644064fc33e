//! The crate's one rule for poisoned locks: recover the data and go on.
//!
//! A lock here guards a value every writer replaces or updates in one step (a routing table,
//! a set of groups, a fence set), so a thread that panicked while holding it cannot have left
//! it half-written. Failing every later reader would turn one panic into a dead node; the
//! data is still good, so [`PoisonError::into_inner`] it is, everywhere.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Reads `lock`, poisoned or not.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `lock`, poisoned or not.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `mutex`, poisoned or not.
pub(crate) fn mutex<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
