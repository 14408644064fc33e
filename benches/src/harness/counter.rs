//! [`CountingStateMachine`]: the cheapest state machine that still does the contract's work,
//! so a benchmark measures replication, not the database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use coordinator::{StateMachine, StateMachineError};
use routing::GroupId;

/// Counts the commands applied to each group; a snapshot is that count (8 bytes, big-endian).
///
/// Clones share one node-wide [`CountingStateMachine::applied`] counter, so a benchmark can
/// read how many commands a node applied while it runs.
#[derive(Clone, Debug, Default)]
pub struct CountingStateMachine {
    per_group: BTreeMap<GroupId, u64>,
    total: Arc<AtomicU64>,
}

impl CountingStateMachine {
    /// An empty state machine.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Commands applied through this machine and its clones since it was made.
    #[must_use]
    pub fn applied(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The count of `group` (commands applied, or restored from a snapshot).
    #[must_use]
    pub fn count(&self, group: GroupId) -> u64 {
        self.per_group.get(&group).copied().unwrap_or(0)
    }
}

impl StateMachine for CountingStateMachine {
    fn apply(
        &mut self,
        group: GroupId,
        _index: u64,
        _command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError> {
        let count = self.per_group.entry(group).or_default();
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Vec::new())
    }

    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        Ok(self.count(group).to_be_bytes().to_vec())
    }

    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let count = match snapshot.len() {
            0 => 0,
            8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(snapshot);
                u64::from_be_bytes(bytes)
            }
            n => return Err(format!("counter snapshot of {n} bytes, expected 0 or 8").into()),
        };
        self.per_group.insert(group, count);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_restores_the_count_and_rejects_malformed_bytes() {
        let mut sm = CountingStateMachine::new();
        for i in 1..=3 {
            sm.apply(GroupId(1), i, b"x").unwrap();
        }
        let snap = sm.snapshot(GroupId(1)).unwrap();
        let mut other = CountingStateMachine::new();
        other.restore(GroupId(1), &snap).unwrap();
        assert_eq!(other.count(GroupId(1)), 3);
        other.restore(GroupId(1), &[]).unwrap();
        assert_eq!(other.count(GroupId(1)), 0);
        assert!(other.restore(GroupId(1), &[1, 2, 3]).is_err());
        assert_eq!(sm.applied(), 3);
    }
}
