//! [`LogStore`]: the fjall database, the groups it holds, and the stage/commit pipeline that
//! turns a [`WriteBatch`] into one atomic, durable fjall batch with one persist.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use raft::eraftpb::{Entry, Snapshot};
use routing::GroupId;
use tracing::{debug, error, info, info_span};

use crate::batch::{Op, WriteBatch};
use crate::group::{self, Cell, GroupMeta, GroupState, GroupStorage};
use crate::keys::{self, Bounds, LogKey, MetaKey, Tag};
use crate::{StorageError, StoreOptions};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: Counter,
    persists: Counter,
    entries_written: Counter,
    bytes_written: Counter,
    pub(crate) cache_hits: Counter,
    pub(crate) disk_reads: Counter,
}

/// Counters of a [`LogStore`], read with [`LogStore::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Batches committed.
    pub batches: u64,
    /// Persist calls that reached the journal (one per non-empty committed batch); with a
    /// syncing [`Persist`](crate::Persist) mode, each is one fsync/fdatasync.
    pub persists: u64,
    /// Log entries written.
    pub entries_written: u64,
    /// Key and value bytes written (tombstones count their key).
    pub bytes_written: u64,
    /// Groups held now.
    pub groups: u64,
    /// Entries (or terms) served from the in-memory cache.
    pub cache_hits: u64,
    /// Entries read back from disk.
    pub disk_reads: u64,
}

/// What one commit wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitInfo {
    /// The batch's sequence number; [`LogStore::durable_seq`] is at least this now.
    pub seq: u64,
    /// Distinct groups touched.
    pub groups: usize,
    /// Log entries appended.
    pub entries: usize,
    /// Key and value bytes written.
    pub bytes: usize,
}

pub(crate) struct Inner {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    options: StoreOptions,
    groups: RwLock<HashMap<GroupId, Cell>>,
    /// Serializes `stage`.
    stage: Mutex<StageState>,
    /// Serializes `commit`.
    commit: Mutex<()>,
    durable_seq: AtomicU64,
    poisoned: AtomicBool,
    poison_reason: Mutex<String>,
    pub(crate) stats: Counters,
    /// Groups for which raft asked a snapshot the store could not give (none stored, too old,
    /// or not naming the receiver): the coordinator takes a fresh one.
    pub(crate) snapshot_requests: Mutex<std::collections::BTreeSet<GroupId>>,
}

impl Inner {
    fn poison(&self, reason: String) {
        error!(%reason, "log store poisoned");
        let mut r = lock(&self.poison_reason);
        if r.is_empty() {
            *r = reason;
        }
        self.poisoned.store(true, Ordering::SeqCst);
    }

    fn check_poison(&self) -> Result<(), StorageError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StorageError::Poisoned {
                reason: lock(&self.poison_reason).clone(),
            });
        }
        Ok(())
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
                    reason: format!("key of {} bytes", k.len()),
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
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("durable_seq", &self.durable_seq())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// A batch that [`LogStore::stage`] validated and made visible to reads, waiting for
/// [`LogStore::commit`]. Dropping it uncommitted poisons the store: its effects are already
/// visible in memory and could never reach the disk.
#[must_use = "a staged batch must be committed, dropping it poisons the store"]
pub struct StagedBatch {
    seq: u64,
    batch: Option<fjall::OwnedWriteBatch>,
    info: CommitInfo,
    inner: Arc<Inner>,
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
    /// The batch's sequence number: it is durable once [`LogStore::durable_seq`] reaches it.
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

impl Drop for StagedBatch {
    fn drop(&mut self) {
        if self.batch.is_some() {
            self.inner.poison(format!(
                "staged batch {} was dropped without being committed",
                self.seq
            ));
        }
    }
}

/// What `stage` serializes on: the next sequence number, and the groups of staged batches
/// whose caches may hold durable entries over the cap once their batch commits. `commit`
/// never touches a group's lock, so reads on the coordinator thread never wait for the
/// thread that fsyncs; the trimming happens here, on the staging thread, at the next
/// `stage` (or at the end of `write`).
pub(crate) struct StageState {
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
                let mut st = group::write(&cell);
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

/// Per-group bookkeeping while staging.
struct Sim {
    /// The group's cell when staging began, if it existed.
    cell: Option<Cell>,
    /// The simulated state; `None`: the group does not exist (now).
    meta: Option<GroupMeta>,
    /// The group was deleted (and maybe re-created) in this batch: its old cell goes.
    replaced: bool,
    dirty: u8,
    /// Highest log index written for this group in this batch.
    max_written: Option<u64>,
}

const D_BOUNDS: u8 = 1;
const D_HS: u8 = 2;
const D_CS: u8 = 4;
const D_APPLIED: u8 = 8;
const D_SNAP: u8 = 16;
const D_ALL: u8 = 31;

/// The log writes of a batch, group by group, each group's in op order. A batch of plain
/// appends writes every key once, so the writes go to fjall as they are; only when a key may
/// be written twice (an append over this batch's own suffix, a compaction after an append,
/// ...) are they sorted and deduplicated, last write winning: fjall gives every item of a
/// batch the same seqno, so two writes of one key in one batch would be ambiguous.
#[derive(Default)]
struct LogOps {
    items: Vec<(LogKey, Option<Vec<u8>>)>,
    needs_dedup: bool,
}

impl LogOps {
    fn put(&mut self, sim_max: &mut Option<u64>, group: GroupId, index: u64, v: Option<Vec<u8>>) {
        if sim_max.is_some_and(|m| index <= m) {
            self.needs_dedup = true;
        }
        *sim_max = Some(sim_max.map_or(index, |m| m.max(index)));
        self.items.push((keys::log_key(group, index), v));
    }

    fn remove_range(
        &mut self,
        sim_max: &mut Option<u64>,
        group: GroupId,
        from: u64,
        to_inclusive: u64,
    ) {
        for i in from..=to_inclusive {
            self.put(sim_max, group, i, None);
        }
    }

    fn finish(mut self) -> Vec<(LogKey, Option<Vec<u8>>)> {
        if !self.needs_dedup {
            return self.items;
        }
        // Stable: among equal keys the later write stays later; keep the last of each run.
        self.items.sort_by_key(|item| item.0);
        let mut out: Vec<(LogKey, Option<Vec<u8>>)> = Vec::with_capacity(self.items.len());
        for item in self.items {
            match out.last_mut() {
                Some(last) if last.0 == item.0 => *last = item,
                _ => out.push(item),
            }
        }
        out
    }
}

/// Emits the meta records of one group after its ops were simulated; `snap` is the snapshot
/// this batch stored for it, if any.
fn emit_meta(
    g: GroupId,
    sim: &Sim,
    snap: Option<&Snapshot>,
    meta_ops: &mut Vec<(MetaKey, Option<Vec<u8>>)>,
) {
    let Some(m) = &sim.meta else {
        if sim.cell.is_some() {
            for tag in Tag::ALL {
                meta_ops.push((keys::meta_key(g, tag), None));
            }
        }
        return;
    };
    let mut put = |tag, v: Option<Vec<u8>>| meta_ops.push((keys::meta_key(g, tag), v));
    if sim.dirty & D_BOUNDS != 0 {
        put(Tag::Bounds, Some(m.bounds.encode()));
    }
    if sim.dirty & D_HS != 0 {
        put(Tag::HardState, Some(keys::encode_pb(&m.hard_state)));
    }
    if sim.dirty & D_CS != 0 {
        put(Tag::ConfState, Some(keys::encode_pb(&*m.conf_state)));
    }
    if sim.dirty & D_APPLIED != 0 {
        put(Tag::Applied, Some(keys::encode_u64(m.applied)));
    }
    if sim.dirty & D_SNAP != 0 {
        match (&m.snapshot_meta, snap) {
            (Some(sm), Some(snap)) => {
                put(Tag::SnapshotMeta, Some(keys::encode_pb(&**sm)));
                put(Tag::SnapshotData, Some(snap.data.to_vec()));
            }
            _ => {
                put(Tag::SnapshotMeta, None);
                put(Tag::SnapshotData, None);
            }
        }
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

impl LogStore {
    /// Opens the database in `dir`, creating it if needed, and recovers every group it holds.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidOptions`]; [`StorageError::Db`] if fjall cannot open or
    /// recover; [`StorageError::CorruptRecord`] or [`StorageError::LogGap`] naming the group
    /// (and index) whose records do not decode or whose log has a hole.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<LogStore, StorageError> {
        options.validate()?;
        let dir = dir.as_ref();
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
        let groups = recover(&log, &meta, options.entry_cache_per_group)?;
        info!(groups = groups.len(), "opened log store");
        let groups = groups
            .into_iter()
            .map(|(g, st)| (g, Arc::new(RwLock::new(st))))
            .collect();
        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                log,
                meta,
                options,
                groups: RwLock::new(groups),
                stage: Mutex::new(StageState {
                    next_seq: 1,
                    untrimmed: VecDeque::new(),
                }),
                commit: Mutex::new(()),
                durable_seq: AtomicU64::new(0),
                poisoned: AtomicBool::new(false),
                poison_reason: Mutex::new(String::new()),
                stats: Counters::default(),
                snapshot_requests: Mutex::new(std::collections::BTreeSet::new()),
            }),
        })
    }

    fn groups_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupId, Cell>> {
        self.inner
            .groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every group held, in id order (on reopen: every group recovered).
    #[must_use]
    pub fn groups(&self) -> Vec<GroupId> {
        let mut v: Vec<GroupId> = self.groups_map().keys().copied().collect();
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
            .groups_map()
            .get(&id)
            .cloned()
            .ok_or(StorageError::UnknownGroup { group: id })?;
        Ok(GroupStorage::new(id, self.inner.clone(), cell))
    }

    /// A new, empty batch.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new()
    }

    /// The sequence number of the last batch that is durable (0: none since open).
    #[must_use]
    pub fn durable_seq(&self) -> u64 {
        self.inner.durable_seq.load(Ordering::Acquire)
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Groups whose leader needed a snapshot to send that the store could not give (none
    /// stored, older than raft asked for, or taken before the receiver joined the group).
    /// Take a state-machine snapshot of each and save it (`WriteBatch::save_snapshot`); raft
    /// retries the send by itself. Each request is returned once.
    pub fn take_snapshot_requests(&self) -> Vec<GroupId> {
        std::mem::take(&mut *lock(&self.inner.snapshot_requests))
            .into_iter()
            .collect()
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> StorageStats {
        let s = &self.inner.stats;
        StorageStats {
            batches: s.batches.get(),
            persists: s.persists.get(),
            entries_written: s.entries_written.get(),
            bytes_written: s.bytes_written.get(),
            groups: self.groups_map().len() as u64,
            cache_hits: s.cache_hits.get(),
            disk_reads: s.disk_reads.get(),
        }
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
        lock(&self.inner.stage)
            .trim_durable(self.inner.options.entry_cache_per_group, self.durable_seq());
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
        self.inner.check_poison()?;
        let mut stage = lock(&self.inner.stage);
        let seq = stage.next_seq;
        let cap = self.inner.options.entry_cache_per_group;
        let durable = self.durable_seq();
        stage.trim_durable(cap, durable);
        let mut info = CommitInfo {
            seq,
            groups: batch.groups_touched(),
            entries: batch.entry_count(),
            bytes: 0,
        };
        let mut sims: Vec<Sim> = Vec::with_capacity(batch.groups.len());
        let mut log_ops = LogOps {
            items: Vec::with_capacity(batch.entry_count()),
            needs_dedup: false,
        };
        // One entry per group and tag at most.
        let mut meta_ops: Vec<(MetaKey, Option<Vec<u8>>)> = Vec::with_capacity(batch.groups.len());

        // Pass 1: validate every op against a simulated state and collect the key writes.
        // Nothing shared changes here, so an error leaves the store as it was.
        {
            let map = self.groups_map();
            for (g, ops) in &batch.groups {
                let cell = map.get(g).cloned();
                let meta = cell.as_ref().map(|c| group::read(c).meta.clone());
                let mut sim = Sim {
                    cell,
                    meta,
                    replaced: false,
                    dirty: 0,
                    max_written: None,
                };
                let mut snap = None;
                for op in ops {
                    stage_op(*g, op, &mut sim, &mut log_ops, &mut snap)?;
                }
                emit_meta(*g, &sim, snap, &mut meta_ops);
                sims.push(sim);
            }
        }

        let log_ops = log_ops.finish();
        let mut fb = fjall::OwnedWriteBatch::with_capacity(
            self.inner.db.clone(),
            log_ops.len() + meta_ops.len(),
        )
        .durability(Some(self.inner.options.persist.to_fjall()));
        for (k, v) in log_ops {
            info.bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            match v {
                Some(v) => fb.insert(&self.inner.log, k, v),
                None => fb.remove(&self.inner.log, k),
            }
        }
        for (k, v) in meta_ops {
            info.bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            match v {
                Some(v) => fb.insert(&self.inner.meta, k, v),
                None => fb.remove(&self.inner.meta, k),
            }
        }

        // Pass 2: publish. Infallible from here on. The group map is only locked for writing
        // when a group comes or goes; plain appends only take each group's own lock, briefly.
        let structural = sims
            .iter()
            .any(|s| s.replaced || s.cell.is_none() || s.meta.is_none());
        let mut map = structural.then(|| {
            self.inner
                .groups
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        let mut touched = Vec::with_capacity(sims.len());
        for ((g, ops), sim) in batch.groups.into_iter().zip(sims) {
            let fresh = sim.replaced || sim.cell.is_none();
            if fresh && let Some(old) = &sim.cell {
                let mut st = group::write(old);
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
                let mut st = group::write(&cell);
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
            batch: Some(fb),
            info,
            inner: self.inner.clone(),
        })
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
    pub fn commit(&self, mut staged: StagedBatch) -> Result<CommitInfo, StorageError> {
        let inner = &self.inner;
        let _commit = lock(&inner.commit);
        let seq = staged.seq;
        let Some(fb) = staged.batch.take() else {
            return Err(StorageError::Poisoned {
                reason: format!("batch {seq} has no write batch"),
            });
        };
        inner.check_poison()?;
        let expected = inner.durable_seq.load(Ordering::Acquire) + 1;
        if seq != expected {
            inner.poison(format!(
                "batch {seq} committed while batch {expected} was due"
            ));
            return Err(StorageError::OutOfOrderCommit { expected, got: seq });
        }
        let writes = !fb.is_empty();
        if let Err(source) = fb.commit() {
            inner.poison(format!("persisting batch {seq} failed: {source}"));
            return Err(StorageError::Persist { seq, source });
        }
        inner.durable_seq.store(seq, Ordering::Release);
        let info = staged.info;
        inner.stats.batches.inc(1);
        if writes {
            inner.stats.persists.inc(1);
        }
        inner.stats.entries_written.inc(info.entries as u64);
        inner.stats.bytes_written.inc(info.bytes as u64);
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

/// Applies one op to the simulated state of its group, recording key writes.
fn stage_op<'b>(
    g: GroupId,
    op: &'b Op,
    sim: &mut Sim,
    log_ops: &mut LogOps,
    snap_out: &mut Option<&'b Snapshot>,
) -> Result<(), StorageError> {
    if let Op::Create(cs) = op {
        if sim.meta.is_some() {
            return Err(StorageError::GroupExists { group: g });
        }
        sim.meta = Some(GroupMeta::new(cs.clone()));
        sim.replaced = sim.cell.is_some();
        sim.dirty = D_ALL;
        *snap_out = None;
        return Ok(());
    }
    let Some(m) = sim.meta.as_mut() else {
        return Err(StorageError::UnknownGroup { group: g });
    };
    let first = m.bounds.first_index;
    match op {
        Op::Create(_) => {}
        Op::Append(entries) => {
            let (Some(head), Some(tail)) = (entries.first(), entries.last()) else {
                return Ok(());
            };
            if head.index < first {
                return Err(StorageError::Compacted {
                    group: g,
                    index: head.index,
                    first_index: first,
                });
            }
            if head.index > m.last_index + 1 {
                return Err(StorageError::NonContiguousAppend {
                    group: g,
                    last_index: m.last_index,
                    first_appended: head.index,
                });
            }
            if let Some(w) = entries.windows(2).find(|w| w[1].index != w[0].index + 1) {
                return Err(StorageError::NonContiguousAppend {
                    group: g,
                    last_index: w[0].index,
                    first_appended: w[1].index,
                });
            }
            let new_last = tail.index;
            if m.last_index > new_last {
                log_ops.remove_range(&mut sim.max_written, g, new_last + 1, m.last_index);
            }
            for e in entries {
                log_ops.put(&mut sim.max_written, g, e.index, Some(keys::encode_pb(e)));
            }
            m.last_index = new_last;
        }
        Op::HardState(hs) => {
            m.hard_state = hs.clone();
            sim.dirty |= D_HS;
        }
        Op::ConfState(cs) => {
            m.conf_state = Arc::new(cs.clone());
            sim.dirty |= D_CS;
        }
        Op::Applied(index) => {
            m.applied = *index;
            sim.dirty |= D_APPLIED;
        }
        Op::ApplySnapshot(snap) => {
            let sm = snap.get_metadata();
            if sm.index < first {
                return Err(StorageError::SnapshotOutOfRange {
                    group: g,
                    index: sm.index,
                    first_index: first,
                    last_index: m.last_index,
                });
            }
            if m.last_index >= first {
                log_ops.remove_range(&mut sim.max_written, g, first, m.last_index);
            }
            m.bounds = Bounds {
                first_index: sm.index + 1,
                trunc_index: sm.index,
                trunc_term: sm.term,
            };
            m.last_index = sm.index;
            m.conf_state = Arc::new(sm.get_conf_state().clone());
            m.hard_state.term = m.hard_state.term.max(sm.term);
            m.hard_state.commit = sm.index;
            m.snapshot_meta = Some(Arc::new(sm.clone()));
            sim.dirty |= D_BOUNDS | D_HS | D_CS | D_SNAP;
            *snap_out = Some(snap);
        }
        Op::SaveSnapshot(snap) => {
            let sm = snap.get_metadata();
            let older = m.snapshot_meta.as_ref().is_some_and(|s| sm.index < s.index);
            if sm.index > m.last_index || older {
                return Err(StorageError::SnapshotOutOfRange {
                    group: g,
                    index: sm.index,
                    first_index: first,
                    last_index: m.last_index,
                });
            }
            m.snapshot_meta = Some(Arc::new(sm.clone()));
            sim.dirty |= D_SNAP;
            *snap_out = Some(snap);
        }
        Op::Compact(index) => {
            let index = *index;
            if index <= first {
                return Ok(());
            }
            if index > m.last_index + 1 {
                return Err(StorageError::CompactBeyondLog {
                    group: g,
                    index,
                    last_index: m.last_index,
                });
            }
            log_ops.remove_range(&mut sim.max_written, g, first, index - 1);
            m.bounds.first_index = index;
            sim.dirty |= D_BOUNDS;
        }
        Op::Delete => {
            if m.last_index >= first {
                log_ops.remove_range(&mut sim.max_written, g, first, m.last_index);
            }
            sim.meta = None;
            sim.replaced = sim.cell.is_some();
            sim.dirty = D_ALL;
            *snap_out = None;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Recovered {
    bounds: Option<Bounds>,
    meta: GroupMeta,
}

/// Rebuilds every group's state from disk, checking each record.
fn recover(
    log: &Keyspace,
    meta: &Keyspace,
    cache_cap: usize,
) -> Result<BTreeMap<GroupId, GroupState>, StorageError> {
    let mut found: BTreeMap<GroupId, Recovered> = BTreeMap::new();
    for kv in meta.iter() {
        let (k, v) = kv.into_inner()?;
        let (g, tag) = match keys::parse_meta_key(&k) {
            Some(Ok(gt)) => gt,
            Some(Err(g)) => {
                return Err(StorageError::CorruptRecord {
                    group: g,
                    index: None,
                    record: "meta",
                    reason: format!("unknown record tag {}", k.last().copied().unwrap_or(0)),
                });
            }
            None => {
                return Err(StorageError::CorruptRecord {
                    group: GroupId(0),
                    index: None,
                    record: "meta",
                    reason: format!("key of {} bytes", k.len()),
                });
            }
        };
        let r = found.entry(g).or_default();
        match tag {
            Tag::Bounds => r.bounds = Some(Bounds::decode(g, &v)?),
            Tag::HardState => r.meta.hard_state = keys::decode_hard_state(g, &v)?,
            Tag::ConfState => r.meta.conf_state = Arc::new(keys::decode_conf_state(g, &v)?),
            Tag::Applied => r.meta.applied = keys::decode_u64(g, "applied", &v)?,
            Tag::SnapshotMeta => {
                r.meta.snapshot_meta = Some(Arc::new(keys::decode_snapshot_meta(g, &v)?));
            }
            Tag::SnapshotData => {}
        }
    }
    let mut groups = BTreeMap::new();
    for (g, r) in found {
        let Some(bounds) = r.bounds else {
            return Err(StorageError::CorruptRecord {
                group: g,
                index: None,
                record: "bounds",
                reason: "missing, though the group has other records".into(),
            });
        };
        let mut meta = r.meta;
        meta.bounds = bounds;
        meta.last_index = bounds.first_index - 1;
        groups.insert(
            g,
            GroupState {
                meta,
                ..Default::default()
            },
        );
    }
    for kv in log.iter() {
        let (k, v) = kv.into_inner()?;
        let Some((g, index)) = keys::parse_log_key(&k) else {
            return Err(StorageError::CorruptRecord {
                group: GroupId(0),
                index: None,
                record: "entry key",
                reason: format!("key of {} bytes", k.len()),
            });
        };
        let Some(st) = groups.get_mut(&g) else {
            return Err(StorageError::CorruptRecord {
                group: g,
                index: Some(index),
                record: "entry",
                reason: "log entry of a group that has no bounds record".into(),
            });
        };
        if index < st.meta.bounds.first_index {
            // Below the persisted first index: logically compacted, never read.
            continue;
        }
        if index != st.meta.last_index + 1 {
            return Err(StorageError::LogGap {
                group: g,
                expected: st.meta.last_index + 1,
                found: index,
            });
        }
        let e = keys::decode_entry(g, index, &v)?;
        st.meta.last_index = index;
        st.cache.push_back((0, e));
        st.trim_cache(cache_cap, 0);
    }
    for (g, st) in &groups {
        let m = &st.meta;
        if m.hard_state.commit > m.last_index {
            return Err(StorageError::CorruptRecord {
                group: *g,
                index: Some(m.hard_state.commit),
                record: "hard state",
                reason: format!(
                    "commit index {} is past the last log index {}: committed entries are missing",
                    m.hard_state.commit, m.last_index
                ),
            });
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use raft::eraftpb::ConfState;

    use super::*;

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
        let cell = store.groups_map().get(&g).cloned().unwrap();
        let held = group::write(&cell);
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
