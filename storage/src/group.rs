//! One group's view of the store: [`GroupStorage`] implements `raft::Storage`, reading the
//! staged state (so entries handed to a batch are readable before they are durable), the
//! recent-entries cache, and the disk below the cache.

use std::sync::{Arc, RwLockReadGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use routing::GroupId;

use crate::db::Shared;
use crate::error::StorageError;
use crate::state::{Cell, GroupState};
use crate::sync::{self, read};

/// The storage of one group: implements `raft::Storage`, so a `raft::RawNode` runs directly on
/// it. Cheap to clone; `Send + Sync`. Reads see everything staged, durable or not.
#[derive(Clone)]
pub struct GroupStorage {
    id: GroupId,
    shared: Arc<Shared>,
    cell: Cell,
}

impl std::fmt::Debug for GroupStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupStorage")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl GroupStorage {
    pub(crate) fn new(id: GroupId, shared: Arc<Shared>, cell: Cell) -> Self {
        Self { id, shared, cell }
    }

    /// The group.
    #[must_use]
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The staged hard state.
    #[must_use]
    pub fn hard_state(&self) -> HardState {
        read(&self.cell).meta.hard_state.clone()
    }

    /// The staged conf state.
    #[must_use]
    pub fn conf_state(&self) -> ConfState {
        ConfState::clone(&read(&self.cell).meta.conf_state)
    }

    /// The staged applied index.
    #[must_use]
    pub fn applied(&self) -> u64 {
        read(&self.cell).meta.applied
    }

    /// The first index readable from the log.
    #[must_use]
    pub fn first_index(&self) -> u64 {
        read(&self.cell).meta.bounds.first_index
    }

    /// The last index of the log (`first_index - 1` when it is empty).
    #[must_use]
    pub fn last_index(&self) -> u64 {
        read(&self.cell).meta.last_index
    }

    /// Metadata of the stored snapshot, if any.
    #[must_use]
    pub fn snapshot_metadata(&self) -> Option<SnapshotMetadata> {
        read(&self.cell).meta.snapshot_meta.as_deref().cloned()
    }

    /// Whether the group was deleted since this handle was taken.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        read(&self.cell).deleted
    }

    fn live(&self) -> Result<RwLockReadGuard<'_, GroupState>, StorageError> {
        let st = read(&self.cell);
        if st.deleted {
            return Err(StorageError::UnknownGroup { group: self.id });
        }
        Ok(st)
    }

    /// The term of a log entry, cache first, then disk.
    fn entry_term(&self, st: &GroupState, index: u64) -> Result<u64, StorageError> {
        if let Some(e) = st.cached(index) {
            self.shared.stats.cache_hits.inc(1);
            return Ok(e.term);
        }
        let mut term = None;
        self.shared.read_log(self.id, index, index + 1, |e| {
            term = Some(e.term);
            false
        })?;
        term.ok_or(StorageError::LogGap {
            group: self.id,
            expected: index,
            found: index.saturating_sub(1),
        })
    }
}

/// Adds entries up to `max_size` bytes, always at least one (raft-rs `limit_size`).
struct Limited {
    out: Vec<Entry>,
    size: u64,
    max: u64,
}

impl Limited {
    /// Returns false once the limit is reached (the entry is then not added).
    fn push(&mut self, e: Entry) -> bool {
        if self.max == u64::MAX {
            // No limit: skip sizing the entry (a protobuf size computation per entry).
            self.out.push(e);
            return true;
        }
        let s = u64::from(e.compute_size());
        if !self.out.is_empty() && self.size.saturating_add(s) > self.max {
            return false;
        }
        self.size = self.size.saturating_add(s);
        self.out.push(e);
        true
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let st = self.live()?;
        Ok(RaftState::new(
            st.meta.hard_state.clone(),
            ConfState::clone(&st.meta.conf_state),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let st = self.live()?;
        let first = st.meta.bounds.first_index;
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > st.meta.last_index + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut acc = Limited {
            // raft asks for up to a whole log with a size limit that often stops at a few
            // entries: start small rather than reserve for the whole range.
            out: Vec::with_capacity(usize::try_from(high - low).unwrap_or(0).min(64)),
            size: 0,
            max: max_size.into().unwrap_or(u64::MAX),
        };
        let front = st.cache_front();
        let mut full = false;
        if low < front {
            let disk_high = high.min(front);
            let mut next = low;
            self.shared.read_log(self.id, low, disk_high, |e| {
                next = e.index + 1;
                full = !acc.push(e);
                !full
            })?;
            if !full && next != disk_high {
                return Err(StorageError::LogGap {
                    group: self.id,
                    expected: next,
                    found: disk_high,
                }
                .into());
            }
        }
        if !full {
            let mut hits = 0;
            for i in low.max(front)..high {
                let Some(e) = st.cached(i) else { break };
                hits += 1;
                if !acc.push(e.clone()) {
                    break;
                }
            }
            self.shared.stats.cache_hits.inc(hits);
        }
        Ok(acc.out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let st = self.live()?;
        let m = &st.meta;
        if idx >= m.bounds.first_index && idx <= m.last_index {
            return Ok(self.entry_term(&st, idx)?);
        }
        if idx == m.bounds.trunc_index {
            return Ok(m.bounds.trunc_term);
        }
        if let Some(sm) = m.snapshot_meta.as_ref().filter(|sm| sm.index == idx) {
            return Ok(sm.term);
        }
        if idx < m.bounds.first_index {
            Err(raft::Error::Store(raft::StorageError::Compacted))
        } else {
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.live()?.meta.bounds.first_index)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.live()?.meta.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let st = self.live()?;
        let unavailable = || {
            sync::lock(&self.shared.snapshot_requests).insert(self.id);
            raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)
        };
        if let Some(meta) = &st.meta.snapshot_meta {
            // A snapshot from before `to` joined would be refused by it (raft ignores a
            // snapshot whose configuration does not name it): ask for a fresh one.
            let cs = meta.get_conf_state();
            let names_receiver = to == 0
                || cs
                    .voters
                    .iter()
                    .chain(&cs.learners)
                    .chain(&cs.voters_outgoing)
                    .chain(&cs.learners_next)
                    .any(|id| *id == to);
            if meta.index < request_index || !names_receiver {
                return Err(unavailable());
            }
            if let Some((_, snap)) = &st.pending_snapshot {
                return Ok(snap.clone());
            }
            let data = self.shared.read_snapshot_data(self.id)?;
            let mut snap = Snapshot::default();
            snap.set_metadata(SnapshotMetadata::clone(meta));
            snap.data = data.to_vec().into();
            return Ok(snap);
        }
        // Nothing stored: only a group that never compacted can describe its state without a
        // state-machine snapshot.
        let index = st.meta.bounds.first_index - 1;
        if st.meta.bounds.first_index != 1 || index < request_index {
            return Err(unavailable());
        }
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = st.meta.bounds.trunc_term;
        meta.set_conf_state(ConfState::clone(&st.meta.conf_state));
        Ok(snap)
    }
}
