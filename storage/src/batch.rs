//! [`WriteBatch`]: everything one coordinator cycle produces, for many groups, collected in
//! call order. Nothing touches the store until [`LogStore::stage`](crate::LogStore::stage) or
//! [`LogStore::write`](crate::LogStore::write).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use routing::GroupId;

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Create(ConfState),
    Append(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    Applied(u64),
    ApplySnapshot(Snapshot),
    SaveSnapshot(Snapshot),
    Compact(u64),
    Delete,
}

/// Work for many groups, applied in the order it was added, atomically, by one commit.
///
/// ```
/// # use pontoon_storage::{LogStore, StoreOptions};
/// # use raft::eraftpb::{ConfState, Entry};
/// # use pontoon_storage::GroupId;
/// # let dir = tempfile::tempdir()?;
/// let store = LogStore::open(dir.path(), StoreOptions::default())?;
/// let mut batch = store.batch();
/// batch.create_group(GroupId(1), ConfState { voters: vec![1], ..Default::default() });
/// batch.append(GroupId(1), &[Entry { index: 1, term: 1, ..Default::default() }]);
/// assert_eq!((batch.groups_touched(), batch.entry_count()), (1, 1));
/// store.write(batch)?;
/// assert_eq!(store.group(GroupId(1))?.last_index(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "a batch does nothing until it is staged or written"]
pub struct WriteBatch {
    /// The ops of each group, in call order, groups in order of first touch. Ops of different
    /// groups commute, so keeping them apart loses nothing and spares `stage` a lookup per op.
    pub(crate) groups: Vec<(GroupId, Vec<Op>)>,
    /// Position of each group in `groups`.
    index: HashMap<GroupId, usize, BuildHasherDefault<IdHasher>>,
    entries: usize,
}

/// Hashes a `GroupId` with one multiply (Fibonacci hashing): ids are not attacker-chosen
/// here, and SipHash per op showed up in profiles of 1024-group batches.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl WriteBatch {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, group: GroupId, op: Op) {
        // A coordinator adds a group's ops one after the other: skip the lookup then.
        if let Some((last, ops)) = self.groups.last_mut()
            && *last == group
        {
            ops.push(op);
            return;
        }
        match self.index.get(&group).and_then(|&i| self.groups.get_mut(i)) {
            Some((_, ops)) => ops.push(op),
            None => {
                self.index.insert(group, self.groups.len());
                // A cycle adds entries and a hard state per group at least: room for a few ops
                // spares the regrowth (measured: a realloc per group in 1024-group batches).
                let mut ops = Vec::with_capacity(4);
                ops.push(op);
                self.groups.push((group, ops));
            }
        }
    }

    /// Creates an empty group: that conf state, default hard state, empty log, first index 1.
    pub fn create_group(&mut self, group: GroupId, conf_state: ConfState) {
        self.push(group, Op::Create(conf_state));
    }

    /// Appends entries (consecutive indices). If they overlap the group's log, the
    /// conflicting suffix from the first appended index on is removed first, as raft requires.
    /// An empty slice does nothing.
    pub fn append(&mut self, group: GroupId, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        self.entries += entries.len();
        self.push(group, Op::Append(entries.to_vec()));
    }

    /// As [`WriteBatch::append`], taking the entries by value: the store keeps them in its
    /// entry cache, so a caller that owns them (raft-rs `Ready::take_entries`) spares a clone
    /// of each.
    pub fn append_owned(&mut self, group: GroupId, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        self.entries += entries.len();
        self.push(group, Op::Append(entries));
    }

    /// Replaces the group's hard state.
    pub fn set_hard_state(&mut self, group: GroupId, hs: HardState) {
        self.push(group, Op::HardState(hs));
    }

    /// Replaces the group's conf state.
    pub fn set_conf_state(&mut self, group: GroupId, cs: ConfState) {
        self.push(group, Op::ConfState(cs));
    }

    /// Records the index the state machine has applied up to.
    pub fn set_applied(&mut self, group: GroupId, index: u64) {
        self.push(group, Op::Applied(index));
    }

    /// Installs a snapshot received from the leader: the whole log is reset to start after
    /// the snapshot's index, the conf state comes from its metadata, the hard state's commit
    /// moves to its index (term to at least its term), and the snapshot is stored.
    pub fn apply_snapshot(&mut self, group: GroupId, snapshot: Snapshot) {
        self.push(group, Op::ApplySnapshot(snapshot));
    }

    /// Stores a snapshot taken locally of the state machine, to send to lagging followers.
    /// The log is untouched.
    pub fn save_snapshot(&mut self, group: GroupId, snapshot: Snapshot) {
        self.push(group, Op::SaveSnapshot(snapshot));
    }

    /// Drops the entries below `index` (raft-rs `MemStorageCore::compact`): afterwards the
    /// first index is `index`. Compacting to or below the first index does nothing.
    pub fn compact(&mut self, group: GroupId, index: u64) {
        self.push(group, Op::Compact(index));
    }

    /// Removes the group and every key it owns.
    pub fn delete_group(&mut self, group: GroupId) {
        self.push(group, Op::Delete);
    }

    /// Whether nothing was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// How many distinct groups the batch touches.
    #[must_use]
    pub fn groups_touched(&self) -> usize {
        self.groups.len()
    }

    /// How many log entries the batch appends.
    #[must_use]
    pub fn entry_count(&self) -> usize {
        self.entries
    }
}
