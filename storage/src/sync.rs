//! The crate's one rule for poisoned locks, in one place so every lock follows it.
//!
//! A std lock is poisoned when a thread panicked while holding it. Every lock of this crate
//! guards data that stays consistent at every point a panic could strike (group state is
//! replaced field by whole field, counters are atomics, the snapshot-request set is a plain
//! insert/take), so the guard is recovered with [`PoisonError::into_inner`] and the store keeps
//! serving reads.

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
