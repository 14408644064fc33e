//! Pass 1 of staging: each op of a batch is checked against a simulated copy of its group's
//! state, and turned into the key writes it implies. Nothing shared is touched here, so a batch
//! that fails validation leaves the store exactly as it was.

use std::sync::Arc;

use raft::eraftpb::Snapshot;
use routing::GroupId;

use crate::batch::Op;
use crate::error::StorageError;
use crate::keys::{self, Bounds, LogKey, MetaKey, Tag};
use crate::state::{Cell, GroupMeta};

/// Per-group bookkeeping while staging.
pub(crate) struct Sim {
    /// The group's cell when staging began, if it existed.
    pub(crate) cell: Option<Cell>,
    /// The simulated state; `None`: the group does not exist (now).
    pub(crate) meta: Option<GroupMeta>,
    /// The group was deleted (and maybe re-created) in this batch: its old cell goes.
    pub(crate) replaced: bool,
    /// Which meta records (`D_*` bits) the batch changed.
    dirty: u8,
    /// Highest log index written for this group in this batch.
    max_written: Option<u64>,
    /// The batch changes something a crash must not lose: anything but a hard state that
    /// only moves the commit index (see [`Sim::must_sync`]).
    must_sync: bool,
}

impl Sim {
    /// Starts simulating a group from its state when staging began (`None`: it does not
    /// exist).
    pub(crate) fn new(cell: Option<Cell>, meta: Option<GroupMeta>) -> Self {
        Sim {
            cell,
            meta,
            replaced: false,
            dirty: 0,
            max_written: None,
            must_sync: false,
        }
    }

    /// Whether this group's ops need the batch synced. A hard state that only raises the
    /// commit index does not: a commit index lost in a crash is learnt again from the leader
    /// (raft persists it for convenience, as etcd does without a sync), and journal order
    /// makes it durable with the next synced batch anyway. Entries, a term or a vote, a
    /// snapshot, a configuration, a compaction, a group created or deleted all do.
    pub(crate) fn must_sync(&self) -> bool {
        self.must_sync
    }
}

// Bits of `Sim::dirty`, one per meta record, so a batch rewrites only the records it changed.
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
pub(crate) struct LogOps {
    items: Vec<(LogKey, Option<Vec<u8>>)>,
    needs_dedup: bool,
}

impl LogOps {
    /// Room for `entries` writes: a batch of plain appends writes one key per entry.
    pub(crate) fn with_capacity(entries: usize) -> Self {
        LogOps {
            items: Vec::with_capacity(entries),
            needs_dedup: false,
        }
    }

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

    pub(crate) fn finish(mut self) -> Vec<(LogKey, Option<Vec<u8>>)> {
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
pub(crate) fn emit_meta(
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

/// Applies one op to the simulated state of its group, recording key writes.
pub(crate) fn stage_op<'b>(
    g: GroupId,
    op: &'b Op,
    sim: &mut Sim,
    log_ops: &mut LogOps,
    snap_out: &mut Option<&'b Snapshot>,
) -> Result<(), StorageError> {
    sim.must_sync |= match (op, sim.meta.as_ref()) {
        (Op::HardState(hs), Some(m)) => {
            hs.term != m.hard_state.term || hs.vote != m.hard_state.vote
        }
        _ => true,
    };
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
            if let Some((prev, next)) = entries
                .iter()
                .zip(entries.iter().skip(1))
                .find(|(prev, next)| next.index != prev.index + 1)
            {
                return Err(StorageError::NonContiguousAppend {
                    group: g,
                    last_index: prev.index,
                    first_appended: next.index,
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
