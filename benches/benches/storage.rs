//! Durable appends through `pontoon-storage`, next to a raw fjall baseline in the same run.
//!
//! Each iteration is one coordinator cycle: every group appends `E` entries of 256 bytes and
//! a hard state, and the whole batch is made durable with `PersistMode::SyncData`. The raw
//! baseline writes the same keys (group BE ++ index BE), the same protobuf-encoded values and
//! the same hard-state records into two fjall keyspaces with one `OwnedWriteBatch` and the
//! same persist mode, so the ratio between the two is the cost of the store itself.
//!
//! The baseline does exactly the work the store cannot skip, no more, no less: it encodes the
//! same entries with the same encoder (`write_to_bytes`, as the store does), under the same
//! keys, in a database opened with the store's default options. What it does not do is the
//! store's own job: validate the batch against each group's state, keep the entries readable
//! before they are durable (the entry cache), and publish the new state to readers.
//!
//! Throughput is in entries/s. After each pair the fsyncs per entry of both are printed.
//! All writes go to one local disk; nothing here is replicated (a replicated entry is written
//! once per replica, on one machine all on the same disk).
//!
//! The machine these run on is noisy; for a figure it cannot distort, count instructions with
//! a fixed number of batches instead of criterion's timing loop:
//!
//! ```text
//! PONTOON_STORAGE_PROFILE=raw,1024,16,40 valgrind --tool=callgrind \
//!     --toggle-collect='*run_batches*' target/release/deps/storage-<hash>
//! PONTOON_STORAGE_PROFILE=store,1024,16,40 valgrind ...   # same, through the store
//! ```
//!
//! and divide the collected instructions by the entries written (printed at the end).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use storage::{GroupId, LogStore, Persist, StoreOptions};

/// The allocator the `pontoon` binary uses; `--no-default-features` measures the system one.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENTRY_BYTES: usize = 256;
/// (groups, entries per group per batch)
const SHAPES: &[(u64, u64)] = &[
    (1, 1),
    (1, 16),
    (1, 256),
    (64, 1),
    (64, 16),
    (1024, 1),
    (1024, 16),
];

/// An entry as raft hands it to storage; the payload is shared (refcounted), not copied.
fn entry(index: u64, data: &Bytes) -> Entry {
    Entry {
        index,
        term: 1,
        data: data.clone(),
        ..Default::default()
    }
}

fn hard_state(commit: u64) -> HardState {
    HardState {
        term: 1,
        vote: 1,
        commit,
        ..Default::default()
    }
}

struct Raw {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    next: u64,
    commits: u64,
    entries: u64,
    _dir: tempfile::TempDir,
}

impl Raw {
    fn new() -> Raw {
        let dir = tempfile::tempdir().unwrap();
        // The options `LogStore::open` uses by default.
        let db = Database::builder(dir.path())
            .cache_size(StoreOptions::default().block_cache_bytes)
            .manual_journal_persist(true)
            .open()
            .unwrap();
        let log = db.keyspace("log", KeyspaceCreateOptions::default).unwrap();
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
        Raw {
            db,
            log,
            meta,
            next: 1,
            commits: 0,
            entries: 0,
            _dir: dir,
        }
    }

    fn append(&mut self, groups: u64, per_group: u64, data: &Bytes) {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncData));
        let last = self.next + per_group - 1;
        for g in 0..groups {
            for i in self.next..=last {
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&g.to_be_bytes());
                key[8..].copy_from_slice(&i.to_be_bytes());
                b.insert(&self.log, key, entry(i, data).write_to_bytes().unwrap());
            }
            let mut key = [0u8; 9];
            key[..8].copy_from_slice(&g.to_be_bytes());
            key[8] = 2;
            b.insert(&self.meta, key, hard_state(last).write_to_bytes().unwrap());
        }
        b.commit().unwrap();
        self.next = last + 1;
        self.commits += 1;
        self.entries += groups * per_group;
    }
}

struct Store {
    store: LogStore,
    next: u64,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new(groups: u64) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(
            dir.path(),
            StoreOptions::default().persist(Persist::SyncData),
        )
        .unwrap();
        let mut b = store.batch();
        for g in 0..groups {
            b.create_group(
                GroupId(g),
                ConfState {
                    voters: vec![1],
                    ..Default::default()
                },
            );
        }
        store.write(b).unwrap();
        Store {
            store,
            next: 1,
            _dir: dir,
        }
    }

    fn append(&mut self, groups: u64, per_group: u64, data: &Bytes) {
        let mut b = self.store.batch();
        let last = self.next + per_group - 1;
        let mut ents = Vec::with_capacity(per_group as usize);
        for g in 0..groups {
            ents.clear();
            ents.extend((self.next..=last).map(|i| entry(i, data)));
            b.append(GroupId(g), &ents);
            b.set_hard_state(GroupId(g), hard_state(last));
        }
        black_box(self.store.write(b).unwrap());
        self.next = last + 1;
    }
}

fn durable_appends(c: &mut Criterion) {
    let data = Bytes::from(vec![0xA5u8; ENTRY_BYTES]);
    let mut group = c.benchmark_group("storage_durable_append");
    group.sample_size(10);
    for &(groups, per_group) in SHAPES {
        let shape = format!("{groups}g_x_{per_group}e");
        group.throughput(Throughput::Elements(groups * per_group));

        let mut raw = Raw::new();
        group.bench_with_input(BenchmarkId::new("raw_fjall", &shape), &(), |b, ()| {
            b.iter(|| raw.append(groups, per_group, &data));
        });
        eprintln!(
            "raw_fjall/{shape}: {} fsyncs for {} entries = {:.6} fsyncs/entry",
            raw.commits,
            raw.entries,
            raw.commits as f64 / raw.entries.max(1) as f64
        );
        drop(raw);

        let mut store = Store::new(groups);
        let before = store.store.stats();
        group.bench_with_input(BenchmarkId::new("pontoon_store", &shape), &(), |b, ()| {
            b.iter(|| store.append(groups, per_group, &data));
        });
        let after = store.store.stats();
        let (fsyncs, entries) = (
            after.persists - before.persists,
            after.entries_written - before.entries_written,
        );
        eprintln!(
            "pontoon_store/{shape}: {fsyncs} fsyncs for {entries} entries = {:.6} fsyncs/entry",
            fsyncs as f64 / entries.max(1) as f64
        );
    }
    group.finish();
}

/// A fixed number of batches of one shape, through `raw` or `store`: for instruction counts.
#[inline(never)]
fn run_batches(which: &str, groups: u64, per_group: u64, batches: u64, data: &Bytes) -> u64 {
    match which {
        "raw" => {
            let mut raw = Raw::new();
            for _ in 0..batches {
                raw.append(groups, per_group, data);
            }
            raw.entries
        }
        _ => {
            let mut store = Store::new(groups);
            let before = store.store.stats().entries_written;
            for _ in 0..batches {
                store.append(groups, per_group, data);
            }
            store.store.stats().entries_written - before
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = durable_appends
}

fn main() {
    // PONTOON_STORAGE_PROFILE=<raw|store>,<groups>,<entries per group>,<batches>
    if let Ok(spec) = std::env::var("PONTOON_STORAGE_PROFILE") {
        let parts: Vec<&str> = spec.split(',').collect();
        let num = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok()).unwrap();
        let data = Bytes::from(vec![0xA5u8; ENTRY_BYTES]);
        let entries = run_batches(parts[0], num(1), num(2), num(3), &data);
        println!("{spec}: {entries} entries written");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
