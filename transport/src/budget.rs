//! Byte budgets shared by the streams of one peer and by all peers of a node: what a snapshot
//! receive may hold before its data is complete. A transfer reserves the size its header
//! announces before any of its data is buffered, so the bytes held by unfinished snapshots
//! never exceed either budget, whatever a peer declares or how many streams it opens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A number of bytes handed out and given back.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    held: AtomicU64,
    max: u64,
}

impl ByteBudget {
    pub(crate) fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicU64::new(0),
            max,
        })
    }

    /// Takes `n` bytes if they fit; `false` (and nothing taken) otherwise.
    fn try_take(&self, n: u64) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }
}

/// The budgets one snapshot receive draws from: its peer's and the node's.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotBudget {
    pub(crate) peer: Arc<ByteBudget>,
    pub(crate) node: Arc<ByteBudget>,
}

/// Which budget refused a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exhausted {
    /// The peer's snapshots in flight hold too much already.
    Peer { held: u64, max: u64 },
    /// All peers' snapshots in flight hold too much already.
    Node { held: u64, max: u64 },
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Peer { held, max } => write!(
                f,
                "the peer's snapshots in flight hold {held} of snapshot_receive_bytes_per_peer ({max})"
            ),
            Self::Node { held, max } => write!(
                f,
                "all snapshots in flight hold {held} of snapshot_receive_bytes_per_node ({max})"
            ),
        }
    }
}

impl SnapshotBudget {
    /// Reserves `n` bytes in both budgets, or in neither.
    pub(crate) fn reserve(&self, n: u64) -> Result<Reservation, Exhausted> {
        if !self.peer.try_take(n) {
            return Err(Exhausted::Peer {
                held: self.peer.held(),
                max: self.peer.max,
            });
        }
        if !self.node.try_take(n) {
            self.peer.give(n);
            return Err(Exhausted::Node {
                held: self.node.held(),
                max: self.node.max,
            });
        }
        Ok(Reservation {
            budget: self.clone(),
            bytes: n,
        })
    }
}

/// Bytes reserved in a [`SnapshotBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: SnapshotBudget,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.peer.give(self.bytes);
        self.budget.node.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_fits_both_budgets_or_takes_nothing_and_is_given_back_on_drop() {
        let node = ByteBudget::new(100);
        let a = SnapshotBudget {
            peer: ByteBudget::new(60),
            node: node.clone(),
        };
        let b = SnapshotBudget {
            peer: ByteBudget::new(60),
            node: node.clone(),
        };
        let first = a.reserve(50).unwrap();
        assert_eq!(
            a.reserve(20).unwrap_err(),
            Exhausted::Peer { held: 50, max: 60 }
        );
        let second = b.reserve(50).unwrap();
        assert_eq!(
            b.reserve(5).unwrap_err(),
            Exhausted::Node {
                held: 100,
                max: 100
            }
        );
        // The refused node reservation gave the peer's bytes back.
        assert_eq!(b.peer.held(), 50);
        drop(first);
        drop(second);
        assert_eq!((node.held(), a.peer.held(), b.peer.held()), (0, 0, 0));
        assert!(a.reserve(u64::MAX).is_err(), "no overflow");
    }
}
