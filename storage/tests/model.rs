//! Property test: random interleavings of append / overwrite-suffix / compact / snapshot
//! install / snapshot save / hard state / delete+recreate on several groups, batched, staged
//! and committed, with reopens in between, match a simple in-memory model of raft storage.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use pontoon_storage::{GroupId, LogStore, Persist, WriteBatch};
use proptest::prelude::*;
use raft::Storage;
use raft::eraftpb::{Entry, HardState};

const GROUPS: u64 = 3;

#[derive(Clone, Debug)]
enum Act {
    /// Append `n` entries starting `back` entries before the end (overwriting that suffix).
    Append {
        g: u64,
        back: u64,
        n: u64,
        term: u64,
    },
    Compact {
        g: u64,
        k: u64,
    },
    InstallSnapshot {
        g: u64,
        ahead: u64,
        term: u64,
    },
    SaveSnapshot {
        g: u64,
    },
    HardState {
        g: u64,
        term: u64,
    },
    Applied {
        g: u64,
        v: u64,
    },
    Recreate {
        g: u64,
    },
}

fn act() -> impl Strategy<Value = Act> {
    let g = 0..GROUPS;
    prop_oneof![
        6 => (g.clone(), 0..6u64, 1..5u64, 1..4u64).prop_map(|(g, back, n, term)| Act::Append { g, back, n, term }),
        2 => (g.clone(), 0..20u64).prop_map(|(g, k)| Act::Compact { g, k }),
        1 => (g.clone(), 0..5u64, 1..4u64).prop_map(|(g, ahead, term)| Act::InstallSnapshot { g, ahead, term }),
        1 => g.clone().prop_map(|g| Act::SaveSnapshot { g }),
        2 => (g.clone(), 1..9u64).prop_map(|(g, term)| Act::HardState { g, term }),
        1 => (g.clone(), 0..50u64).prop_map(|(g, v)| Act::Applied { g, v }),
        1 => g.prop_map(|g| Act::Recreate { g }),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<Act>),
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop::collection::vec(act(), 1..6).prop_map(Step::Batch),
        1 => Just(Step::Reopen),
    ]
}

/// The model of one group: raft-rs MemStorage semantics, plus what the store persists.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    first: u64,
    entries: Vec<Entry>,
    /// (index, term) of the last installed snapshot, term lookups at its index.
    trunc: (u64, u64),
    hs: HardState,
    applied: u64,
    snapshot: Option<(u64, u64, Vec<u8>)>,
    voters: Vec<u64>,
}

impl Model {
    fn new(voters: Vec<u64>) -> Self {
        Model {
            first: 1,
            entries: vec![],
            trunc: (0, 0),
            hs: HardState::default(),
            applied: 0,
            snapshot: None,
            voters,
        }
    }
    fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }
    fn term(&self, idx: u64) -> Option<u64> {
        if idx >= self.first && idx <= self.last() {
            return Some(self.entries[(idx - self.first) as usize].term);
        }
        if idx == self.trunc.0 {
            return Some(self.trunc.1);
        }
        self.snapshot.as_ref().filter(|s| s.0 == idx).map(|s| s.1)
    }
}

/// Turns a random action into a valid one against the model, records it in the batch and
/// applies it to the model.
fn apply(act: &Act, models: &mut BTreeMap<u64, Model>, b: &mut WriteBatch, counter: &mut u64) {
    *counter += 1;
    let c = *counter;
    match *act {
        Act::Append { g, back, n, term } => {
            let m = models.get_mut(&g).unwrap();
            let start = (m.last() + 1).saturating_sub(back).max(m.first);
            let ents: Vec<Entry> = (start..start + n)
                .map(|i| ent_data(i, term, format!("c{c}i{i}").as_bytes()))
                .collect();
            b.append(GroupId(g), &ents);
            m.entries.truncate((start - m.first) as usize);
            m.entries.extend(ents);
        }
        Act::Compact { g, k } => {
            let m = models.get_mut(&g).unwrap();
            let index = m.first + k % (m.last() + 2 - m.first);
            b.compact(GroupId(g), index);
            if index > m.first {
                m.entries.drain(..(index - m.first) as usize);
                m.first = index;
            }
        }
        Act::InstallSnapshot { g, ahead, term } => {
            let m = models.get_mut(&g).unwrap();
            let index = (m.last() + ahead).max(m.first);
            let term = m.term(index).unwrap_or(term);
            let data = format!("install{c}");
            b.apply_snapshot(
                GroupId(g),
                snap(index, term, &[1, 2, 3, g + 4], data.as_bytes()),
            );
            m.first = index + 1;
            m.entries.clear();
            m.trunc = (index, term);
            m.hs.term = m.hs.term.max(term);
            m.hs.commit = index;
            m.voters = vec![1, 2, 3, g + 4];
            m.snapshot = Some((index, term, data.into_bytes()));
        }
        Act::SaveSnapshot { g } => {
            let m = models.get_mut(&g).unwrap();
            let index = m.last();
            if m.snapshot.as_ref().is_some_and(|s| s.0 > index) {
                return;
            }
            let Some(term) = m.term(index) else { return };
            let data = format!("save{c}");
            b.save_snapshot(GroupId(g), snap(index, term, &m.voters, data.as_bytes()));
            m.snapshot = Some((index, term, data.into_bytes()));
        }
        Act::HardState { g, term } => {
            let m = models.get_mut(&g).unwrap();
            // raft never truncates below commit; first - 1 stays within the log forever.
            let hs = HardState {
                term,
                vote: term % 3,
                commit: m.first - 1,
                ..Default::default()
            };
            b.set_hard_state(GroupId(g), hs.clone());
            m.hs = hs;
        }
        Act::Applied { g, v } => {
            b.set_applied(GroupId(g), v);
            models.get_mut(&g).unwrap().applied = v;
        }
        Act::Recreate { g } => {
            b.delete_group(GroupId(g));
            b.create_group(GroupId(g), voters(&[g + 1]));
            models.insert(g, Model::new(vec![g + 1]));
        }
    }
}

fn check(store: &LogStore, models: &BTreeMap<u64, Model>, when: &str) {
    assert_eq!(
        store.groups(),
        models.keys().map(|g| GroupId(*g)).collect::<Vec<_>>(),
        "{when}"
    );
    for (g, m) in models {
        let s = store.group(GroupId(*g)).unwrap();
        assert_eq!(
            (s.first_index(), s.last_index()),
            (m.first, m.last()),
            "{when} g{g}"
        );
        assert_eq!(all_entries(&s), m.entries, "{when} g{g}");
        assert_eq!(s.hard_state(), m.hs, "{when} g{g}");
        assert_eq!(s.applied(), m.applied, "{when} g{g}");
        assert_eq!(s.conf_state().voters, m.voters, "{when} g{g}");
        for idx in m.first.saturating_sub(2)..=m.last() + 1 {
            assert_eq!(s.term(idx).ok(), m.term(idx), "{when} g{g} term({idx})");
        }
        match &m.snapshot {
            None => assert_eq!(s.snapshot_metadata(), None, "{when} g{g}"),
            Some((index, term, data)) => {
                let snap = s.snapshot(*index, 0).unwrap();
                let meta = snap.get_metadata();
                assert_eq!((meta.index, meta.term), (*index, *term), "{when} g{g}");
                assert_eq!(&snap.data.to_vec(), data, "{when} g{g}");
            }
        }
    }
}

fn run(steps: Vec<Step>, cache: usize) {
    let dir = tempfile::tempdir().unwrap();
    let open = |cache| open_with(dir.path(), Persist::Buffer, cache);
    let mut store = open(cache);
    let mut models: BTreeMap<u64, Model> = BTreeMap::new();
    let mut b = store.batch();
    for g in 0..GROUPS {
        b.create_group(GroupId(g), voters(&[g + 1]));
        models.insert(g, Model::new(vec![g + 1]));
    }
    store.write(b).unwrap();
    let mut counter = 0;
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Batch(acts) => {
                let mut b = store.batch();
                for a in acts {
                    apply(a, &mut models, &mut b, &mut counter);
                }
                let staged = store.stage(b).unwrap();
                check(&store, &models, &format!("step {i} staged"));
                store.commit(staged).unwrap();
                check(&store, &models, &format!("step {i} committed"));
            }
            Step::Reopen => {
                drop(store);
                store = open(cache);
                check(&store, &models, &format!("step {i} reopened"));
            }
        }
    }
    drop(store);
    check(&open(cache), &models, "final reopen");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_across_batches_and_reopens(
        steps in prop::collection::vec(step(), 1..14),
        cache in prop_oneof![Just(0usize), Just(2), Just(1024)],
    ) {
        run(steps, cache);
    }
}
