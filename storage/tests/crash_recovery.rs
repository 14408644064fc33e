//! Crash test with a real child process. The child commits numbered batches across many
//! groups (SyncData) and prints `committed <n>` after each commit returns; the parent kills
//! it with SIGKILL at random moments, reopens the store, and checks that every reported batch
//! is whole and that no batch is partly present.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pontoon_storage::{GroupId, LogStore, StoreOptions};
use raft::eraftpb::HardState;

const DIR_ENV: &str = "PONTOON_STORAGE_CRASH_DIR";
const CHILD_TEST: &str = "child_commits_numbered_batches_until_killed";
const GROUPS: u64 = 24;
/// Every this many batches, each group saves a snapshot and compacts its log behind it.
const COMPACT_EVERY: u64 = 13;

/// The payload batch `n` writes for group `g`: its length varies so batches differ in size.
fn payload(n: u64, g: u64) -> Vec<u8> {
    let mut v = format!("b{n}g{g}:").into_bytes();
    v.resize(
        v.len() + ((n * 7919 + g * 104_729) % 3000) as usize,
        (n % 251) as u8,
    );
    v
}

fn batch_n(store: &LogStore, n: u64) -> pontoon_storage::WriteBatch {
    let mut b = store.batch();
    for g in 0..GROUPS {
        let group = GroupId(g);
        if n == 0 {
            b.create_group(group, voters(&[1, 2, 3]));
            continue;
        }
        b.append(group, &[ent_data(n, 1, &payload(n, g))]);
        b.set_hard_state(
            group,
            HardState {
                term: 1,
                vote: 1,
                commit: n,
                ..Default::default()
            },
        );
        b.set_applied(group, n);
        if n.is_multiple_of(COMPACT_EVERY) {
            b.save_snapshot(
                group,
                snap(n, 1, &[1, 2, 3], format!("snap{n}g{g}").as_bytes()),
            );
            b.compact(group, n - 3);
        }
    }
    b
}

/// The child role: only runs when the parent sets the env var.
#[test]
#[ignore = "child role of the crash test; run by crash_recovery_keeps_every_reported_batch_whole"]
fn child_commits_numbered_batches_until_killed() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let store = LogStore::open(&dir, StoreOptions::default()).unwrap();
    let mut n = match store.group(GroupId(0)) {
        Ok(g) => g.last_index() + 1,
        Err(_) => 0,
    };
    loop {
        store.write(batch_n(&store, n)).unwrap();
        println!("committed {n}");
        n += 1;
    }
}

/// Checks the reopened store; returns the last batch present.
fn verify(store: &LogStore, reported: Option<u64>) -> Option<u64> {
    let groups = store.groups();
    if groups.is_empty() {
        assert_eq!(reported, None, "batch 0 was reported but no group exists");
        return None;
    }
    assert_eq!(
        groups,
        (0..GROUPS).map(GroupId).collect::<Vec<_>>(),
        "batch 0 is partly present"
    );
    let last = store.group(GroupId(0)).unwrap().last_index();
    for g in 0..GROUPS {
        let s = store.group(GroupId(g)).unwrap();
        assert_eq!(
            s.last_index(),
            last,
            "group {g}: batch {} is partly present",
            last.max(s.last_index())
        );
        let hs = s.hard_state();
        assert_eq!(
            (hs.commit, s.applied()),
            (last, last),
            "group {g}: hard state/applied of another batch"
        );
        for e in all_entries(&s) {
            assert_eq!(
                e.data.to_vec(),
                payload(e.index, g),
                "group {g} entry {}",
                e.index
            );
        }
        let expect_first = if last >= COMPACT_EVERY {
            (last / COMPACT_EVERY) * COMPACT_EVERY - 3
        } else {
            1
        };
        assert_eq!(
            s.first_index(),
            expect_first,
            "group {g}: compaction of batch {last}"
        );
        if last >= COMPACT_EVERY {
            let m = s.snapshot_metadata().unwrap();
            assert_eq!(m.index, (last / COMPACT_EVERY) * COMPACT_EVERY, "group {g}");
        }
    }
    if let Some(r) = reported {
        assert!(
            last >= r,
            "batch {r} was reported committed, but the store ends at {last}"
        );
    }
    Some(last)
}

#[test]
fn crash_recovery_keeps_every_reported_batch_whole() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    let mut reported: Option<u64> = None;
    let mut last_present: Option<u64> = None;
    let mut kills = 0;
    while kills < 40 && started.elapsed() < Duration::from_secs(15) {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                CHILD_TEST,
                "--nocapture",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + rand() % 280));
        child.kill().unwrap(); // SIGKILL
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child.wait().unwrap();
        kills += 1;
        for line in out.lines() {
            if let Some(n) = line.strip_prefix("committed ") {
                let n: u64 = n.trim().parse().unwrap();
                reported = Some(reported.map_or(n, |r| r.max(n)));
            }
        }
        let store = LogStore::open(dir.path(), StoreOptions::default()).unwrap();
        let present = verify(&store, reported);
        assert!(
            present >= last_present,
            "the store went back from {last_present:?} to {present:?}"
        );
        last_present = present;
    }
    eprintln!(
        "crash test: {kills} kills, last reported batch {reported:?}, store at {last_present:?}"
    );
    assert!(kills >= 10, "too few kills to mean anything");
    assert!(
        reported.is_some_and(|r| r > 2 * COMPACT_EVERY),
        "the child committed too little: {reported:?}"
    );
}
