//! The stage/commit pipeline: [`Pipeline::stage`] validates a [`WriteBatch`] (pass 1,
//! `simulate`), builds the one fjall batch it will write, and publishes its effects to the
//! groups' in-memory state (pass 2) so raft can read them at once; [`Pipeline::commit`] later
//! writes that fjall batch with one persist, on any thread, in stage order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use tracing::{debug, error};

use crate::batch::{Op, WriteBatch};
use crate::db::Shared;
use crate::error::{PoisonCause, StorageError};
use crate::keys::MetaKey;
use crate::options::Persist;
use crate::simulate::{self, LogOps, Sim};
use crate::state::{Cell, GroupState};
use crate::sync;

/// What one commit wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitInfo {
    /// The batch's sequence number; [`LogStore::durable_seq`](crate::LogStore::durable_seq)
    /// is at least this now.
    pub seq: u64,
    /// Distinct groups touched.
    pub groups: usize,
    /// Log entries appended.
    pub entries: usize,
    /// Key and value bytes written.
    pub bytes: usize,
    /// The batch only raised commit indexes, so it was written without a sync whatever the
    /// persist mode: a crash may lose it, and raft learns the commit index again from the
    /// leader (etcd skips the sync for the same reason). Counted in `unsynced_batches`, not
    /// in `persists`.
    pub commit_index_only: bool,
}

/// A batch that [`LogStore::stage`](crate::LogStore::stage) validated and made visible to
/// reads, waiting for [`LogStore::commit`](crate::LogStore::commit). Dropping it uncommitted
/// poisons the store: its effects are already visible in memory and could never reach the
/// disk.
#[must_use = "a staged batch must be committed, dropping it poisons the store"]
pub struct StagedBatch {
    seq: u64,
    batch: fjall::OwnedWriteBatch,
    info: CommitInfo,
    unpersisted: PoisonOnDrop,
}

impl std::fmt::Debug for StagedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedBatch")
            .field("seq", &self.seq)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl StagedBatch {
    /// The batch's sequence number: it is durable once
    /// [`LogStore::durable_seq`](crate::LogStore::durable_seq) reaches it.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What the batch will write.
    #[must_use]
    pub fn info(&self) -> CommitInfo {
        self.info
    }
}

/// Poisons the store when dropped armed: a [`StagedBatch`] carries one, and `commit` disarms
/// it. Kept apart from the batch so `commit` can move the fjall batch out.
struct PoisonOnDrop {
    seq: u64,
    shared: Option<Arc<Shared>>,
}

impl PoisonOnDrop {
    fn disarm(mut self) {
        self.shared = None;
    }
}

impl Drop for PoisonOnDrop {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.poison(PoisonCause::StagedBatchDropped { seq: self.seq });
        }
    }
}

/// What `stage` serializes on: the next sequence number, and the groups of staged batches
/// whose caches may hold durable entries over the cap once their batch commits. `commit`
/// never touches a group's lock, so reads on the coordinator thread never wait for the
/// thread that fsyncs; the trimming happens here, on the staging thread, at the next
/// `stage` (or at the end of `write`).
struct StageState {
    next_seq: u64,
    untrimmed: VecDeque<(u64, Vec<Cell>)>,
}

impl StageState {
    /// Trims the caches of the groups of every batch durable by now.
    fn trim_durable(&mut self, cap: usize, durable: u64) {
        while self.untrimmed.front().is_some_and(|(s, _)| *s <= durable) {
            let Some((_, cells)) = self.untrimmed.pop_front() else {
                break;
            };
            for cell in cells {
                let mut st = sync::write(&cell);
                st.trim_cache(cap, durable);
                if st
                    .pending_snapshot
                    .as_ref()
                    .is_some_and(|(s, _)| *s <= durable)
                {
                    st.pending_snapshot = None;
                }
            }
        }
    }
}

/// The two serialization points of the write path: one `stage` at a time, one `commit` at a
/// time, each on its own lock so a commit (an fsync) never holds up the next stage.
pub(crate) struct Pipeline {
    stage: Mutex<StageState>,
    commit: Mutex<()>,
}

impl Pipeline {
    pub(crate) fn new() -> Self {
        Pipeline {
            stage: Mutex::new(StageState {
                next_seq: 1,
                untrimmed: VecDeque::new(),
            }),
            commit: Mutex::new(()),
        }
    }

    /// Trims the caches of batches durable by now; `write` calls it on the staging thread.
    pub(crate) fn trim_durable(&self, shared: &Shared) {
        let Ok(mut stage) = self.stage.lock() else {
            // A stage panicked (see `stage`): nothing is trimmed from a store that is poisoned.
            shared.poison(PoisonCause::StagePanicked);
            return;
        };
        stage.trim_durable(shared.options.entry_cache_per_group, shared.durable_seq());
    }

    /// See [`LogStore::stage`](crate::LogStore::stage).
    pub(crate) fn stage(
        &self,
        shared: &Arc<Shared>,
        batch: WriteBatch,
    ) -> Result<StagedBatch, StorageError> {
        shared.check_poison()?;
        // The one lock whose poisoning is not recovered (`sync`, crate doc): a stage that
        // panicked may have published part of a batch no commit will ever persist.
        let Ok(mut stage) = self.stage.lock() else {
            return Err(shared.poisoned(PoisonCause::StagePanicked));
        };
        let seq = stage.next_seq;
        let cap = shared.options.entry_cache_per_group;
        let durable = shared.durable_seq();
        stage.trim_durable(cap, durable);
        let mut info = CommitInfo {
            seq,
            groups: batch.groups_touched(),
            entries: batch.entry_count(),
            bytes: 0,
            commit_index_only: false,
        };
        let mut sims: Vec<Sim> = Vec::with_capacity(batch.groups.len());
        let mut log_ops = LogOps::with_capacity(batch.entry_count());
        // One entry per group and tag at most.
        let mut meta_ops: Vec<(MetaKey, Option<Vec<u8>>)> = Vec::with_capacity(batch.groups.len());

        // Pass 1: validate every op against a simulated state and collect the key writes.
        // Nothing shared changes here, so an error leaves the store as it was.
        {
            let map = shared.groups();
            for (g, ops) in &batch.groups {
                let cell = map.get(g).cloned();
                let meta = cell.as_ref().map(|c| sync::read(c).meta.clone());
                let mut sim = Sim::new(cell, meta);
                let mut snap = None;
                for op in ops {
                    simulate::stage_op(*g, op, &mut sim, &mut log_ops, &mut snap)?;
                }
                simulate::emit_meta(*g, &sim, snap, &mut meta_ops);
                sims.push(sim);
            }
        }

        let log_ops = log_ops.finish();
        info.commit_index_only = !sims.iter().any(Sim::must_sync);
        let persist = if info.commit_index_only {
            Persist::Buffer
        } else {
            shared.options.persist
        };
        let mut fb = fjall::OwnedWriteBatch::with_capacity(
            shared.db.clone(),
            log_ops.len() + meta_ops.len(),
        )
        .durability(Some(persist.to_fjall()));
        for (k, v) in log_ops {
            info.bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            match v {
                Some(v) => fb.insert(&shared.log, k, v),
                None => fb.remove(&shared.log, k),
            }
        }
        for (k, v) in meta_ops {
            info.bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            match v {
                Some(v) => fb.insert(&shared.meta, k, v),
                None => fb.remove(&shared.meta, k),
            }
        }

        // Pass 2: publish. Infallible from here on. The group map is only locked for writing
        // when a group comes or goes; plain appends only take each group's own lock, briefly.
        let structural = sims
            .iter()
            .any(|s| s.replaced || s.cell.is_none() || s.meta.is_none());
        let mut map = structural.then(|| shared.groups_mut());
        let mut touched = Vec::with_capacity(sims.len());
        for ((g, ops), sim) in batch.groups.into_iter().zip(sims) {
            let fresh = sim.replaced || sim.cell.is_none();
            if fresh && let Some(old) = &sim.cell {
                let mut st = sync::write(old);
                st.deleted = true;
                st.cache.clear();
                st.pending_snapshot = None;
            }
            let Some(meta) = sim.meta else {
                if let Some(map) = map.as_mut() {
                    map.remove(&g);
                }
                continue;
            };
            let cell = match (sim.cell, fresh) {
                (Some(c), false) => c,
                _ => {
                    let c: Cell = Arc::new(RwLock::new(GroupState::default()));
                    if let Some(map) = map.as_mut() {
                        map.insert(g, c.clone());
                    }
                    c
                }
            };
            {
                let mut st = sync::write(&cell);
                st.meta = meta;
                publish_ops(&mut st, seq, ops);
                st.trim_cache(cap, durable);
            }
            touched.push(cell);
        }
        drop(map);
        stage.untrimmed.push_back((seq, touched));
        stage.next_seq += 1;
        Ok(StagedBatch {
            seq,
            batch: fb,
            info,
            unpersisted: PoisonOnDrop {
                seq,
                shared: Some(shared.clone()),
            },
        })
    }

    /// See [`LogStore::commit`](crate::LogStore::commit).
    pub(crate) fn commit(
        &self,
        shared: &Shared,
        staged: StagedBatch,
    ) -> Result<CommitInfo, StorageError> {
        let _commit = sync::lock(&self.commit);
        let StagedBatch {
            seq,
            batch: fb,
            info,
            unpersisted,
        } = staged;
        // From here on every failure poisons the store explicitly, with its own cause.
        unpersisted.disarm();
        shared.check_poison()?;
        let expected = shared.durable_seq() + 1;
        if seq != expected {
            shared.poison(PoisonCause::OutOfOrderCommit { expected, got: seq });
            return Err(StorageError::OutOfOrderCommit { expected, got: seq });
        }
        let writes = !fb.is_empty();
        if let Err(source) = fb.commit() {
            error!(seq, error = %source, "persisting a batch failed");
            shared.poison(PoisonCause::PersistFailed { seq });
            return Err(StorageError::Persist { seq, source });
        }
        shared.set_durable_seq(seq);
        shared.stats.batches.inc(1);
        if writes && info.commit_index_only {
            shared.stats.unsynced_batches.inc(1);
        } else if writes {
            shared.stats.persists.inc(1);
        }
        shared.stats.entries_written.inc(info.entries as u64);
        shared.stats.bytes_written.inc(info.bytes as u64);
        debug!(
            seq,
            groups = info.groups,
            entries = info.entries,
            bytes = info.bytes,
            "committed batch"
        );
        Ok(info)
    }
}

/// Replays a validated group's ops on its in-memory state: the entries move into the cache
/// (they were only borrowed to encode them), snapshots into `pending_snapshot`.
fn publish_ops(st: &mut GroupState, seq: u64, ops: Vec<Op>) {
    let mut pending = None;
    for op in ops {
        match op {
            Op::Create(_) | Op::Delete => {
                st.cache.clear();
                pending = None;
            }
            Op::Append(entries) => st.cache_append(seq, entries),
            Op::ApplySnapshot(snap) => {
                st.cache.clear();
                pending = Some(snap);
            }
            Op::SaveSnapshot(snap) => pending = Some(snap),
            Op::Compact(index) => st.cache_drop_below(index),
            Op::HardState(_) | Op::ConfState(_) | Op::Applied(_) => {}
        }
    }
    if let Some(snap) = pending {
        st.pending_snapshot = Some((seq, snap));
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::ConfState;
    use routing::GroupId;

    use super::*;
    use crate::options::StoreOptions;

    /// A panic while staging may leave part of a batch published that no commit will persist:
    /// the next write is refused with a typed error instead of building on it.
    #[test]
    fn a_panic_while_staging_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(Shared::open(dir.path(), StoreOptions::default()).unwrap());
        let pipeline = Pipeline::new();
        let panicked = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = pipeline.stage.lock();
                panic!("simulated panic while staging");
            })
            .join()
            .is_err()
        });
        assert!(panicked);
        let mut batch = WriteBatch::new();
        batch.create_group(GroupId(1), ConfState::default());
        let err = pipeline.stage(&shared, batch).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Poisoned {
                    cause: PoisonCause::StagePanicked
                }
            ),
            "{err}"
        );
        assert!(shared.groups().is_empty(), "nothing was staged");
    }
}
