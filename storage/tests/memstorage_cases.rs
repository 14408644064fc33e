//! raft-rs's `MemStorage` test cases (raft 0.7 `src/storage.rs`), ported to run against the
//! fjall store in three ways: served from the entry cache, served from disk (cache of 0), and
//! after a reopen. Where the store deliberately differs from `MemStorage` (errors instead of
//! panics, snapshots that are stored rather than synthesized from the commit index), the case
//! says so.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use pontoon_storage::{GroupId, GroupStorage, LogStore, Persist, StorageError};
use protobuf::Message as _;
use raft::{GetEntriesContext, Storage, StorageError as RaftStorageError};

const G: GroupId = GroupId(9);

#[derive(Clone, Copy, Debug)]
enum Mode {
    Cached,
    Disk,
    Reopened,
}

const MODES: [Mode; 3] = [Mode::Cached, Mode::Disk, Mode::Reopened];

/// A store holding group G whose log is exactly `ents` (consecutive, first at `ents[0]`):
/// entries below are appended (terms = index) and compacted away, as MemStorage's tests
/// construct their "entries start at 3" state.
fn with_log(mode: Mode, ents: &[raft::eraftpb::Entry], f: impl FnOnce(&LogStore, &GroupStorage)) {
    let dir = tempfile::tempdir().unwrap();
    let cache = if matches!(mode, Mode::Disk) { 0 } else { 1024 };
    let store = open_with(dir.path(), Persist::SyncData, cache);
    let first = ents[0].index;
    let mut b = store.batch();
    b.create_group(G, voters(&[1, 2, 3]));
    let prefix: Vec<_> = (1..first).map(|i| ent(i, i)).collect();
    b.append(G, &prefix);
    b.append(G, ents);
    b.compact(G, first);
    store.write(b).unwrap();
    let store = if matches!(mode, Mode::Reopened) {
        drop(store);
        open(dir.path())
    } else {
        store
    };
    let g = store.group(G).unwrap();
    f(&store, &g);
    let reads = store.stats().disk_reads;
    if matches!(mode, Mode::Cached) {
        assert_eq!(reads, 0, "cached mode must not read the log from disk");
    }
}

/// raft's `StorageError` is not `Clone`: rebuild the expected result for each comparison.
fn expect<T: Clone>(w: &Result<T, RaftStorageError>) -> raft::Result<T> {
    match w {
        Ok(v) => Ok(v.clone()),
        Err(e) => Err(raft::Error::Store(match e {
            RaftStorageError::Compacted => RaftStorageError::Compacted,
            RaftStorageError::Unavailable => RaftStorageError::Unavailable,
            RaftStorageError::SnapshotTemporarilyUnavailable => {
                RaftStorageError::SnapshotTemporarilyUnavailable
            }
            other => panic!("no expectation for {other:?}"),
        })),
    }
}

fn size_of(e: &raft::eraftpb::Entry) -> u64 {
    u64::from(e.compute_size())
}

#[test]
fn test_storage_term() {
    let ents = vec![ent(3, 3), ent(4, 4), ent(5, 5)];
    let cases = [
        (2, Err(RaftStorageError::Compacted)),
        (3, Ok(3)),
        (4, Ok(4)),
        (5, Ok(5)),
        (6, Err(RaftStorageError::Unavailable)),
    ];
    for mode in MODES {
        for (idx, want) in &cases {
            with_log(mode, &ents, |_, g| {
                let got = g.term(*idx);
                let want = expect(want);
                assert_eq!(got, want, "{mode:?} term({idx})");
            });
        }
    }
}

#[test]
fn test_storage_entries() {
    let ents = vec![ent(3, 3), ent(4, 4), ent(5, 5), ent(6, 6)];
    let max = u64::MAX;
    let cases = vec![
        (2, 6, max, Err(RaftStorageError::Compacted)),
        (3, 4, max, Ok(vec![ent(3, 3)])),
        (4, 5, max, Ok(vec![ent(4, 4)])),
        (4, 6, max, Ok(vec![ent(4, 4), ent(5, 5)])),
        (4, 7, max, Ok(vec![ent(4, 4), ent(5, 5), ent(6, 6)])),
        // even if max size is zero, the first entry is returned
        (4, 7, 0, Ok(vec![ent(4, 4)])),
        // limit to 2
        (
            4,
            7,
            size_of(&ents[1]) + size_of(&ents[2]),
            Ok(vec![ent(4, 4), ent(5, 5)]),
        ),
        (
            4,
            7,
            size_of(&ents[1]) + size_of(&ents[2]) + size_of(&ents[3]) / 2,
            Ok(vec![ent(4, 4), ent(5, 5)]),
        ),
        (
            4,
            7,
            size_of(&ents[1]) + size_of(&ents[2]) + size_of(&ents[3]) - 1,
            Ok(vec![ent(4, 4), ent(5, 5)]),
        ),
        // all
        (
            4,
            7,
            size_of(&ents[1]) + size_of(&ents[2]) + size_of(&ents[3]),
            Ok(vec![ent(4, 4), ent(5, 5), ent(6, 6)]),
        ),
        // MemStorage panics past the last index; the store reports Unavailable
        (4, 8, max, Err(RaftStorageError::Unavailable)),
    ];
    for mode in MODES {
        for (i, (lo, hi, max_size, want)) in cases.iter().enumerate() {
            with_log(mode, &ents, |_, g| {
                let got = g.entries(*lo, *hi, *max_size, GetEntriesContext::empty(false));
                let want = expect(want);
                assert_eq!(got, want, "{mode:?} case #{i}");
            });
        }
    }
}

#[test]
fn test_storage_last_index() {
    for mode in MODES {
        with_log(mode, &[ent(3, 3), ent(4, 4), ent(5, 5)], |store, g| {
            assert_eq!(Storage::last_index(g), Ok(5));
            let mut b = store.batch();
            b.append(G, &[ent(6, 5)]);
            store.write(b).unwrap();
            assert_eq!(Storage::last_index(g), Ok(6), "{mode:?}");
        });
    }
}

#[test]
fn test_storage_first_index() {
    for mode in MODES {
        with_log(mode, &[ent(3, 3), ent(4, 4), ent(5, 5)], |store, g| {
            assert_eq!(Storage::first_index(g), Ok(3));
            let mut b = store.batch();
            b.compact(G, 4);
            store.write(b).unwrap();
            assert_eq!(Storage::first_index(g), Ok(4), "{mode:?}");
        });
    }
}

#[test]
fn test_storage_compact() {
    let ents = vec![ent(3, 3), ent(4, 4), ent(5, 5)];
    let cases = [(2, 3, 3, 3), (3, 3, 3, 3), (4, 4, 4, 2), (5, 5, 5, 1)];
    for mode in MODES {
        for (idx, want_index, want_term, want_len) in cases {
            with_log(mode, &ents, |store, g| {
                let mut b = store.batch();
                b.compact(G, idx);
                store.write(b).unwrap();
                let index = Storage::first_index(g).unwrap();
                assert_eq!(index, want_index, "{mode:?} compact({idx})");
                let term = g
                    .entries(index, index + 1, 1, GetEntriesContext::empty(false))
                    .unwrap()[0]
                    .term;
                assert_eq!(term, want_term, "{mode:?} compact({idx})");
                let last = Storage::last_index(g).unwrap();
                let len = g
                    .entries(index, last + 1, 100, GetEntriesContext::empty(false))
                    .unwrap()
                    .len();
                assert_eq!(len, want_len, "{mode:?} compact({idx})");
            });
        }
    }
}

#[test]
fn compacting_past_the_log_is_an_error_not_a_panic() {
    with_log(Mode::Cached, &[ent(3, 3), ent(4, 4)], |store, g| {
        let mut b = store.batch();
        b.compact(G, 6);
        let err = store.write(b).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::CompactBeyondLog {
                    index: 6,
                    last_index: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(Storage::first_index(g), Ok(3));
    });
}

/// MemStorage synthesizes a snapshot from its commit index; the store returns the snapshot
/// the coordinator saved (metadata and data), and is unavailable when that one is too old.
#[test]
fn test_storage_create_snapshot() {
    let ents = vec![ent(3, 3), ent(4, 4), ent(5, 5)];
    let nodes = [1, 2, 3];
    let cases = [
        (4, 0, Ok(snap(4, 4, &nodes, b"sm@4"))),
        (5, 5, Ok(snap(5, 5, &nodes, b"sm@5"))),
        (5, 6, Err(RaftStorageError::SnapshotTemporarilyUnavailable)),
    ];
    for mode in MODES {
        for (idx, request, want) in &cases {
            with_log(mode, &ents, |store, g| {
                let data = format!("sm@{idx}");
                let mut b = store.batch();
                b.save_snapshot(G, snap(*idx, *idx, &nodes, data.as_bytes()));
                store.write(b).unwrap();
                let got = g.snapshot(*request, 0);
                assert_eq!(got, expect(want), "{mode:?}");
            });
        }
    }
}

#[test]
fn snapshot_before_any_compaction_describes_the_empty_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(G, voters(&[1, 2]));
    b.append(G, &[ent(1, 1), ent(2, 1)]);
    store.write(b).unwrap();
    let g = store.group(G).unwrap();
    let s = g.snapshot(0, 0).unwrap();
    assert_eq!((s.get_metadata().index, s.get_metadata().term), (0, 0));
    assert_eq!(s.get_metadata().get_conf_state(), &voters(&[1, 2]));
    assert!(s.data.is_empty());
    assert_eq!(
        g.snapshot(1, 0),
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable
        ))
    );
    // once compacted without a saved snapshot, nothing can describe the prefix
    let mut b = store.batch();
    b.compact(G, 2);
    store.write(b).unwrap();
    assert_eq!(
        g.snapshot(0, 0),
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable
        ))
    );
}

#[test]
fn test_storage_append() {
    let ents = vec![ent(3, 3), ent(4, 4), ent(5, 5)];
    let cases: Vec<(Vec<_>, Option<Vec<_>>)> = vec![
        (
            vec![ent(3, 3), ent(4, 4), ent(5, 5)],
            Some(vec![ent(3, 3), ent(4, 4), ent(5, 5)]),
        ),
        (
            vec![ent(3, 3), ent(4, 6), ent(5, 6)],
            Some(vec![ent(3, 3), ent(4, 6), ent(5, 6)]),
        ),
        (
            vec![ent(3, 3), ent(4, 4), ent(5, 5), ent(6, 5)],
            Some(vec![ent(3, 3), ent(4, 4), ent(5, 5), ent(6, 5)]),
        ),
        // overwriting compacted raft logs is not allowed (MemStorage panics; we refuse)
        (vec![ent(2, 3), ent(3, 3), ent(4, 5)], None),
        // truncate the existing entries and append
        (vec![ent(4, 5)], Some(vec![ent(3, 3), ent(4, 5)])),
        // direct append
        (
            vec![ent(6, 6)],
            Some(vec![ent(3, 3), ent(4, 4), ent(5, 5), ent(6, 6)]),
        ),
        // a gap after the last index is refused (MemStorage panics)
        (vec![ent(7, 6)], None),
    ];
    for mode in MODES {
        for (i, (append, want)) in cases.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            let mut b = store.batch();
            b.create_group(G, voters(&[1]));
            b.append(G, &[ent(1, 1), ent(2, 2)]);
            b.append(G, &ents);
            b.compact(G, 3);
            store.write(b).unwrap();
            let store = match mode {
                Mode::Cached => store,
                Mode::Disk => {
                    drop(store);
                    open_with(dir.path(), Persist::SyncData, 0)
                }
                Mode::Reopened => store,
            };
            let mut b = store.batch();
            b.append(G, append);
            let res = store.write(b);
            let store = if matches!(mode, Mode::Reopened) {
                drop(store);
                open(dir.path())
            } else {
                store
            };
            let g = store.group(G).unwrap();
            match want {
                Some(want) => {
                    res.unwrap();
                    assert_eq!(&all_entries(&g), want, "{mode:?} case #{i}");
                }
                None => {
                    assert!(res.is_err(), "{mode:?} case #{i}");
                    assert_eq!(
                        all_entries(&g),
                        ents,
                        "{mode:?} case #{i}: a refused batch changes nothing"
                    );
                }
            }
        }
    }
}

#[test]
fn test_storage_apply_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(G, voters(&[1]));
    store.write(b).unwrap();

    let mut b = store.batch();
    b.apply_snapshot(G, snap(4, 4, &[1, 2, 3], b"four"));
    store.write(b).unwrap();
    let g = store.group(G).unwrap();
    assert_eq!((g.first_index(), g.last_index()), (5, 4));
    assert_eq!(g.conf_state(), voters(&[1, 2, 3]));
    assert_eq!((g.hard_state().term, g.hard_state().commit), (4, 4));
    assert_eq!(Storage::term(&g, 4), Ok(4));

    let mut b = store.batch();
    b.apply_snapshot(G, snap(3, 3, &[1, 2, 3], b"three"));
    let err = store.write(b).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::SnapshotOutOfRange {
                index: 3,
                first_index: 5,
                ..
            }
        ),
        "{err}"
    );
    drop(g);
    drop(store);
    let store = open(dir.path());
    let g = store.group(G).unwrap();
    assert_eq!(g.snapshot(4, 0).unwrap(), snap(4, 4, &[1, 2, 3], b"four"));
    assert_eq!((g.first_index(), g.last_index()), (5, 4));
}
