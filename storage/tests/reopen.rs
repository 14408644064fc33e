//! Reopen-and-compare, the stage/commit contract, poisoning, typed errors on damaged disks,
//! and a raft-rs `RawNode` running directly on a group's storage.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use pontoon_storage::{CorruptReason, GroupId, LogStore, Persist, PoisonCause, StorageError};
use raft::eraftpb::HardState;
use raft::{GetEntriesContext, RawNode, Storage};

fn raw_db(dir: &Path) -> (fjall::Database, fjall::Keyspace, fjall::Keyspace) {
    let db = fjall::Database::builder(dir).open().unwrap();
    let log = db
        .keyspace("log", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let meta = db
        .keyspace("meta", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    (db, log, meta)
}

fn log_key(g: u64, i: u64) -> Vec<u8> {
    [g.to_be_bytes(), i.to_be_bytes()].concat()
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// A busy history over several groups: appends, overwrites, compaction, snapshots, deletes.
fn busy_history(store: &LogStore) {
    let mut b = store.batch();
    for g in 1..=5 {
        b.create_group(GroupId(g), voters(&[1, 2, 3]));
        let ents: Vec<_> = (1..=20)
            .map(|i| ent_data(i, 1, format!("g{g}i{i}").as_bytes()))
            .collect();
        b.append(GroupId(g), &ents);
        b.set_hard_state(GroupId(g), hs(1, 1, 10));
        b.set_applied(GroupId(g), 8);
    }
    store.write(b).unwrap();
    let mut b = store.batch();
    b.append(
        GroupId(1),
        &[ent_data(15, 2, b"new15"), ent_data(16, 2, b"new16")],
    );
    b.set_hard_state(GroupId(1), hs(2, 2, 14));
    b.save_snapshot(GroupId(2), snap(10, 1, &[1, 2, 3], b"state@10"));
    b.compact(GroupId(2), 11);
    b.apply_snapshot(GroupId(3), snap(40, 3, &[1, 2, 4], b"leader state"));
    b.append(GroupId(3), &[ent(41, 3), ent(42, 3)]);
    b.delete_group(GroupId(4));
    b.set_conf_state(GroupId(5), voters(&[1, 2, 3, 4]));
    store.write(b).unwrap();
}

#[test]
fn reopened_store_holds_exactly_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    busy_history(&store);
    let before = dump_all(&store);
    assert_eq!(
        store.groups(),
        vec![GroupId(1), GroupId(2), GroupId(3), GroupId(5)]
    );
    drop(store);
    let store = open(dir.path());
    let after = dump_all(&store);
    assert_eq!(before, after);
    // spot checks, so the comparison is not between two equally wrong states
    let g1 = &after[0].1;
    assert_eq!(g1.last, 16);
    assert_eq!(&g1.entries[14].data[..], b"new15");
    assert_eq!(g1.hard_state, hs(2, 2, 14));
    let g2 = &after[1].1;
    assert_eq!((g2.first, g2.term_before_first), (11, Some(1)));
    assert_eq!(g2.snapshot_data.as_deref(), Some(&b"state@10"[..]));
    let g3 = &after[2].1;
    assert_eq!(
        (g3.first, g3.last, g3.conf_state.clone()),
        (41, 42, voters(&[1, 2, 4]))
    );
    assert_eq!(g3.hard_state.commit, 40);
    assert_eq!(after[3].1.conf_state, voters(&[1, 2, 3, 4]));
    assert_eq!(after[3].1.applied, 8);
}

#[test]
fn a_hard_state_written_alone_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(GroupId(1), voters(&[1]));
    store.write(b).unwrap();
    let mut b = store.batch();
    b.set_hard_state(GroupId(1), hs(7, 3, 0));
    store.write(b).unwrap();
    drop(store);
    let store = open(dir.path());
    let g = store.group(GroupId(1)).unwrap();
    assert_eq!(g.initial_state().unwrap().hard_state, hs(7, 3, 0));
}

#[test]
fn staged_entries_are_readable_before_they_are_durable_and_commit_on_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(GroupId(1), voters(&[1]));
    b.append(GroupId(1), &[ent(1, 1), ent(2, 1)]);
    let s1 = store.stage(b).unwrap();
    let mut b = store.batch();
    b.append(GroupId(1), &[ent(2, 2), ent(3, 2)]);
    b.set_hard_state(GroupId(1), hs(2, 1, 1));
    let s2 = store.stage(b).unwrap();
    assert_eq!((s1.seq(), s2.seq()), (1, 2));
    assert_eq!(store.durable_seq(), 0);
    let g = store.group(GroupId(1)).unwrap();
    assert_eq!(all_entries(&g), vec![ent(1, 1), ent(2, 2), ent(3, 2)]);
    assert_eq!(g.hard_state(), hs(2, 1, 1));

    let committer = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.commit(s1).unwrap();
            let seq = store.durable_seq();
            store.commit(s2).unwrap();
            seq
        })
    };
    assert_eq!(committer.join().unwrap(), 1);
    assert_eq!(store.durable_seq(), 2);
    assert_eq!(store.stats().persists, 2);
    drop(g);
    drop(store);
    let store = open(dir.path());
    let g = store.group(GroupId(1)).unwrap();
    assert_eq!(all_entries(&g), vec![ent(1, 1), ent(2, 2), ent(3, 2)]);
}

#[test]
fn committing_out_of_stage_order_is_refused_and_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(GroupId(1), voters(&[1]));
    let s1 = store.stage(b).unwrap();
    let mut b = store.batch();
    b.append(GroupId(1), &[ent(1, 1)]);
    let s2 = store.stage(b).unwrap();
    let err = store.commit(s2).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::OutOfOrderCommit {
                expected: 1,
                got: 2
            }
        ),
        "{err}"
    );
    let err = store.commit(s1).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Poisoned {
                cause: PoisonCause::OutOfOrderCommit {
                    expected: 1,
                    got: 2
                }
            }
        ),
        "{err}"
    );
    assert!(matches!(
        store.write(store.batch()),
        Err(StorageError::Poisoned { .. })
    ));
    assert_eq!(store.durable_seq(), 0);
}

#[test]
fn dropping_a_staged_batch_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(GroupId(1), voters(&[1]));
    drop(store.stage(b).unwrap());
    let err = store.write(store.batch()).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Poisoned {
                cause: PoisonCause::StagedBatchDropped { seq: 1 }
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("dropped without being committed"),
        "{err}"
    );
    drop(store);
    // nothing of the dropped batch reached the disk
    assert!(open(dir.path()).groups().is_empty());
}

#[test]
fn an_invalid_batch_changes_nothing_in_any_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(GroupId(1), voters(&[1]));
    b.create_group(GroupId(2), voters(&[1]));
    b.append(GroupId(1), &[ent(1, 1)]);
    store.write(b).unwrap();
    let before = dump_all(&store);

    let mut b = store.batch();
    b.append(GroupId(1), &[ent(2, 1)]);
    b.delete_group(GroupId(2));
    b.append(GroupId(3), &[ent(1, 1)]);
    let err = store.write(b).unwrap_err();
    assert!(
        matches!(err, StorageError::UnknownGroup { group: GroupId(3) }),
        "{err}"
    );

    let mut b = store.batch();
    b.append(GroupId(1), &[ent(3, 1)]);
    let err = store.write(b).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NonContiguousAppend {
                last_index: 1,
                first_appended: 3,
                ..
            }
        ),
        "{err}"
    );
    let mut b = store.batch();
    b.append(GroupId(1), &[ent(2, 1), ent(4, 1)]);
    assert!(matches!(
        store.write(b),
        Err(StorageError::NonContiguousAppend { .. })
    ));
    let mut b = store.batch();
    b.create_group(GroupId(2), voters(&[1]));
    assert!(matches!(
        store.write(b),
        Err(StorageError::GroupExists { group: GroupId(2) })
    ));
    assert!(matches!(
        store.group(GroupId(9)),
        Err(StorageError::UnknownGroup { group: GroupId(9) })
    ));

    assert_eq!(dump_all(&store), before);
    // refused batches took no sequence numbers and poisoned nothing
    assert_eq!(store.write(store.batch()).unwrap().seq, 2);
}

#[test]
fn deleting_a_group_removes_every_key_it_owned() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    busy_history(&store);
    let g1 = store.group(GroupId(1)).unwrap();
    let mut b = store.batch();
    for g in [1, 2, 3, 5] {
        b.delete_group(GroupId(g));
    }
    b.create_group(GroupId(6), voters(&[1]));
    store.write(b).unwrap();
    assert!(g1.is_deleted());
    assert!(g1.initial_state().is_err());
    assert_eq!(store.groups(), vec![GroupId(6)]);
    drop(g1);
    drop(store);
    let (_db, log, meta) = raw_db(dir.path());
    assert_eq!(log.iter().count(), 0);
    let owners: Vec<u64> = meta
        .iter()
        .map(|kv| {
            let k = kv.key().unwrap();
            u64::from_be_bytes(k[..8].try_into().unwrap())
        })
        .collect();
    assert!(
        !owners.is_empty() && owners.iter().all(|g| *g == 6),
        "{owners:?}"
    );
}

#[test]
fn a_deleted_and_recreated_group_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    busy_history(&store);
    let mut b = store.batch();
    b.delete_group(GroupId(2));
    b.create_group(GroupId(2), voters(&[7]));
    b.append(GroupId(2), &[ent(1, 9)]);
    store.write(b).unwrap();
    let check = |store: &LogStore| {
        let d = dump(store, GroupId(2));
        assert_eq!(
            (d.first, d.last, d.entries.clone()),
            (1, 1, vec![ent(1, 9)])
        );
        assert_eq!(
            (d.conf_state.clone(), d.snapshot.clone(), d.applied),
            (voters(&[7]), None, 0)
        );
    };
    check(&store);
    drop(store);
    check(&open(dir.path()));
}

fn damaged(prepare: impl FnOnce(&fjall::Keyspace, &fjall::Keyspace)) -> StorageError {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(GroupId(4), voters(&[1]));
    b.append(GroupId(4), &(1..=5).map(|i| ent(i, 1)).collect::<Vec<_>>());
    b.set_hard_state(GroupId(4), hs(1, 1, 5));
    store.write(b).unwrap();
    drop(store);
    {
        let (db, log, meta) = raw_db(dir.path());
        prepare(&log, &meta);
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    LogStore::open(dir.path(), Default::default()).unwrap_err()
}

#[test]
fn reopen_names_a_corrupt_entry() {
    let err = damaged(|log, _| log.insert(log_key(4, 3), [0xff, 0xff, 0xff]).unwrap());
    assert!(
        matches!(
            err,
            StorageError::CorruptRecord {
                group: GroupId(4),
                index: Some(3),
                record: "entry",
                reason: CorruptReason::Decode { .. },
            }
        ),
        "{err}"
    );
}

#[test]
fn reopen_names_a_gap_in_the_log() {
    let err = damaged(|log, _| log.remove(log_key(4, 3)).unwrap());
    assert!(
        matches!(
            err,
            StorageError::LogGap {
                group: GroupId(4),
                expected: 3,
                found: 4
            }
        ),
        "{err}"
    );
}

#[test]
fn reopen_refuses_a_commit_index_past_the_log() {
    let err = damaged(|log, _| log.remove(log_key(4, 5)).unwrap());
    assert!(
        matches!(
            err,
            StorageError::CorruptRecord {
                group: GroupId(4),
                record: "hard state",
                reason: CorruptReason::CommitPastLog {
                    commit: 5,
                    last_index: 4
                },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn reopen_names_a_corrupt_hard_state_and_an_orphan_entry() {
    let mut hs_key = 4u64.to_be_bytes().to_vec();
    hs_key.push(2);
    let err = damaged(|_, meta| meta.insert(hs_key, [0x0a, 0xff]).unwrap());
    assert!(
        matches!(
            err,
            StorageError::CorruptRecord {
                group: GroupId(4),
                record: "hard state",
                ..
            }
        ),
        "{err}"
    );
    let err = damaged(|log, _| log.insert(log_key(8, 1), [0u8; 0]).unwrap());
    assert!(
        matches!(
            err,
            StorageError::CorruptRecord {
                group: GroupId(8),
                reason: CorruptReason::OrphanEntry,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn recent_entries_come_from_the_cache_and_older_ones_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), Persist::SyncData, 8);
    let mut b = store.batch();
    b.create_group(GroupId(1), voters(&[1]));
    b.append(
        GroupId(1),
        &(1..=100).map(|i| ent(i, 1)).collect::<Vec<_>>(),
    );
    store.write(b).unwrap();
    let g = store.group(GroupId(1)).unwrap();
    let tail = g
        .entries(93, 101, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(tail.len(), 8);
    assert_eq!(store.stats().disk_reads, 0);
    assert_eq!(store.stats().cache_hits, 8);
    let span = g
        .entries(90, 101, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(span, (90..=100).map(|i| ent(i, 1)).collect::<Vec<_>>());
    assert_eq!(store.stats().disk_reads, 3);
    assert_eq!(Storage::term(&g, 10), Ok(1));
    assert_eq!(store.stats().disk_reads, 4);
}

#[test]
fn a_batch_over_a_thousand_groups_is_one_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch();
    for g in 0..1024 {
        b.create_group(GroupId(g), voters(&[1]));
        b.append(
            GroupId(g),
            &(1..=16)
                .map(|i| ent_data(i, 1, &[7; 256]))
                .collect::<Vec<_>>(),
        );
        b.set_hard_state(GroupId(g), hs(1, 1, 16));
    }
    let info = store.write(b).unwrap();
    assert_eq!((info.groups, info.entries), (1024, 16 * 1024));
    let stats = store.stats();
    assert_eq!(
        (
            stats.batches,
            stats.persists,
            stats.entries_written,
            stats.groups
        ),
        (1, 1, 16384, 1024)
    );
    assert!(stats.bytes_written > 16 * 1024 * 256);
}

/// raft-rs `single_mem_node`, with the store in place of MemStorage: elect, propose, persist
/// with `advance_append_async` on a staged batch, commit from another thread, restart.
#[test]
fn raw_node_runs_on_group_storage_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let config = raft::Config {
        id: 1,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    let store = open(dir.path());
    let mut b = store.batch();
    b.create_group(GroupId(1), voters(&[1]));
    store.write(b).unwrap();
    let mut node = RawNode::new(&config, store.group(GroupId(1)).unwrap(), &logger).unwrap();
    node.campaign().unwrap();
    let mut applied = Vec::new();
    let mut proposed = 0;
    for _round in 0..50 {
        if node.raft.state == raft::StateRole::Leader && proposed < 5 {
            node.propose(vec![], format!("cmd{proposed}").into_bytes())
                .unwrap();
            proposed += 1;
        }
        if !node.has_ready() {
            continue;
        }
        let mut rd = node.ready();
        let mut b = store.batch();
        b.append(GroupId(1), rd.entries());
        if let Some(h) = rd.hs() {
            b.set_hard_state(GroupId(1), h.clone());
        }
        for e in rd.take_committed_entries() {
            if !e.data.is_empty() {
                applied.push(String::from_utf8(e.data.to_vec()).unwrap());
            }
            b.set_applied(GroupId(1), e.index);
        }
        let number = rd.number();
        let staged = store.stage(b).unwrap();
        node.advance_append_async(rd);
        let s = store.clone();
        std::thread::spawn(move || s.commit(staged).unwrap())
            .join()
            .unwrap();
        node.on_persist_ready(number);
    }
    assert_eq!(
        applied,
        (0..5).map(|i| format!("cmd{i}")).collect::<Vec<_>>()
    );
    let last = node.raft.raft_log.last_index();
    drop(node);
    drop(store);

    let store = open(dir.path());
    let g = store.group(GroupId(1)).unwrap();
    assert_eq!(g.last_index(), last);
    assert_eq!(g.hard_state().commit, last);
    let config = raft::Config {
        applied: g.applied(),
        ..config
    };
    let node = RawNode::new(&config, g, &logger).unwrap();
    assert_eq!(node.raft.raft_log.committed, last);
    assert_eq!(node.raft.raft_log.applied, last);
}
