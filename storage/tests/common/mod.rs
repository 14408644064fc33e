//! Small harness helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::path::Path;

use pontoon_storage::{GroupId, GroupStorage, LogStore, Persist, StoreOptions};
use raft::eraftpb::{ConfState, Entry, Snapshot};
use raft::{GetEntriesContext, Storage};

pub fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

pub fn ent_data(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

pub fn voters(v: &[u64]) -> ConfState {
    ConfState {
        voters: v.to_vec(),
        ..Default::default()
    }
}

pub fn snap(index: u64, term: u64, v: &[u64], data: &[u8]) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().set_conf_state(voters(v));
    s.data = data.to_vec().into();
    s
}

pub fn open(dir: &Path) -> LogStore {
    LogStore::open(dir, StoreOptions::default()).unwrap()
}

pub fn open_with(dir: &Path, persist: Persist, cache: usize) -> LogStore {
    LogStore::open(
        dir,
        StoreOptions::default()
            .persist(persist)
            .entry_cache_per_group(cache),
    )
    .unwrap()
}

/// Every entry of the group's log, read through raft::Storage.
pub fn all_entries(g: &GroupStorage) -> Vec<Entry> {
    let first = Storage::first_index(g).unwrap();
    let last = Storage::last_index(g).unwrap();
    g.entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap()
}

/// Everything a group holds, for reopen-and-compare.
#[derive(Debug, PartialEq)]
pub struct Dump {
    pub first: u64,
    pub last: u64,
    pub entries: Vec<Entry>,
    pub hard_state: raft::eraftpb::HardState,
    pub conf_state: ConfState,
    pub applied: u64,
    pub snapshot: Option<raft::eraftpb::SnapshotMetadata>,
    pub snapshot_data: Option<Vec<u8>>,
    pub term_before_first: Option<u64>,
}

pub fn dump(store: &LogStore, g: GroupId) -> Dump {
    let s = store.group(g).unwrap();
    let snapshot = s.snapshot_metadata();
    let snapshot_data = snapshot
        .as_ref()
        .map(|m| s.snapshot(m.index, 0).unwrap().data.to_vec());
    Dump {
        first: s.first_index(),
        last: s.last_index(),
        entries: all_entries(&s),
        hard_state: s.hard_state(),
        conf_state: s.conf_state(),
        applied: s.applied(),
        snapshot,
        snapshot_data,
        term_before_first: Storage::term(&s, s.first_index() - 1).ok(),
    }
}

pub fn dump_all(store: &LogStore) -> Vec<(GroupId, Dump)> {
    store
        .groups()
        .into_iter()
        .map(|g| (g, dump(store, g)))
        .collect()
}
