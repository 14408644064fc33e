//! A linearizability checker for key-value histories, so a simulation can prove that what
//! clients saw is what one register per key could have done.
//!
//! The search is Wing & Gong's, with the memoization of Lowe ("Testing for linearizability",
//! 2017) that porcupine and Knossos use: walk the history's call and return events in time
//! order, try to linearize each pending call at the current point, remember every
//! (set of linearized operations, register state) already explored, and backtrack when a
//! return is reached whose call could not be placed. A history is linearizable iff every key's
//! sub-history is (P-compositionality), so keys are checked one by one.
//!
//! **Indeterminate operations** (a put or compare-and-set that timed out, or whose node
//! crashed) may or may not have taken effect. They are modelled as never returning: they may
//! be linearized at any point after their invocation, and linearizing one after everything
//! else is the same as it never happening.
//!
//! ```
//! use pontoon_coordinator::testkit::linearizability::{check, OpKind, OpResult, Operation};
//!
//! let history = vec![
//!     Operation::returned(1, OpKind::Put(7), 0, 2, OpResult::Written),
//!     // Concurrent with the put: may see it or not.
//!     Operation::returned(1, OpKind::Get, 1, 3, OpResult::Read(None)),
//!     // After the put returned: must see it.
//!     Operation::returned(1, OpKind::Get, 4, 5, OpResult::Read(Some(7))),
//! ];
//! assert!(check(&history).is_ok());
//!
//! let stale = vec![
//!     Operation::returned(1, OpKind::Put(7), 0, 2, OpResult::Written),
//!     Operation::returned(1, OpKind::Get, 3, 4, OpResult::Read(None)),
//! ];
//! assert!(check(&stale).is_err());
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A key of the register model.
pub type Key = u64;
/// A value of the register model. Workloads write each value at most once, so a read names
/// the write it saw.
pub type Value = u64;

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Set the key to the value.
    Put(Value),
    /// Set the key to `new` if it holds `expected` (`None`: the key was never written).
    Cas {
        /// The value the key must hold.
        expected: Option<Value>,
        /// The value it then takes.
        new: Value,
    },
    /// Read the key.
    Get,
}

/// What the client was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// A put was acknowledged.
    Written,
    /// A compare-and-set answered whether it swapped.
    Cas(bool),
    /// A read returned this value (`None`: never written).
    Read(Option<Value>),
}

/// When an operation returned, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The client got `result` at time `at`.
    Returned {
        /// Time of the response (same clock as [`Operation::invoked`]).
        at: u64,
        /// The response.
        result: OpResult,
    },
    /// No answer: the operation may take effect at any point after its invocation, or never.
    Indeterminate,
}

/// One client operation on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The key.
    pub key: Key,
    /// What was asked.
    pub kind: OpKind,
    /// Time of the invocation. Any clock works as long as calls and returns share it; an
    /// operation that returned at the time another was invoked counts as concurrent with it.
    pub invoked: u64,
    /// The response, if any.
    pub outcome: Outcome,
}

impl Operation {
    /// An operation that returned `result` at `returned`.
    #[must_use]
    pub fn returned(key: Key, kind: OpKind, invoked: u64, returned: u64, result: OpResult) -> Self {
        Self {
            key,
            kind,
            invoked,
            outcome: Outcome::Returned {
                at: returned,
                result,
            },
        }
    }

    /// An operation whose outcome is unknown (timed out, or its node crashed).
    #[must_use]
    pub fn indeterminate(key: Key, kind: OpKind, invoked: u64) -> Self {
        Self {
            key,
            kind,
            invoked,
            outcome: Outcome::Indeterminate,
        }
    }

    fn result(&self) -> Option<OpResult> {
        match self.outcome {
            Outcome::Returned { result, .. } => Some(result),
            Outcome::Indeterminate => None,
        }
    }

    fn returned_at(&self) -> u64 {
        match self.outcome {
            Outcome::Returned { at, .. } => at,
            Outcome::Indeterminate => u64::MAX,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<Value>| v.map_or("nil".to_string(), |v| v.to_string());
        match self.kind {
            OpKind::Put(v) => write!(f, "put({v})")?,
            OpKind::Cas { expected, new } => write!(f, "cas({}->{new})", show(expected))?,
            OpKind::Get => write!(f, "get()")?,
        }
        match self.outcome {
            Outcome::Returned { at, result } => {
                write!(f, " [{}..{at}] -> ", self.invoked)?;
                match result {
                    OpResult::Written => write!(f, "ok"),
                    OpResult::Cas(swapped) => write!(f, "{swapped}"),
                    OpResult::Read(v) => write!(f, "{}", show(v)),
                }
            }
            Outcome::Indeterminate => write!(f, " [{}..] -> ?", self.invoked),
        }
    }
}

/// Why a history was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// No order of the key's operations is consistent with both real time and a register.
    NotLinearizable {
        /// The key.
        key: Key,
        /// The key's operations, by invocation time.
        history: Vec<Operation>,
    },
    /// An operation returned before it was invoked, or with a result of another kind (a put
    /// answering with a read value): the history is broken, not the system.
    Malformed {
        /// The operation.
        op: Operation,
    },
    /// The search explored more than its budget of states without an answer: bound the
    /// operations per key (or their concurrency) in the workload.
    TooComplex {
        /// The key.
        key: Key,
        /// Operations on it.
        ops: usize,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLinearizable { key, history } => {
                writeln!(
                    f,
                    "key {key}: the history of {} operations is not linearizable:",
                    history.len()
                )?;
                for op in history {
                    writeln!(f, "  {op}")?;
                }
                Ok(())
            }
            Self::Malformed { op } => write!(f, "malformed operation on key {}: {op}", op.key),
            Self::TooComplex { key, ops } => write!(
                f,
                "key {key}: {ops} operations exceeded the search budget; bound the workload"
            ),
        }
    }
}

impl std::error::Error for CheckError {}

/// Most (linearized set, state) pairs explored for one key before giving up.
const SEARCH_BUDGET: usize = 2_000_000;

/// Checks a whole history, key by key.
///
/// # Errors
/// The first key (in key order) whose history is not linearizable, or a malformed operation.
pub fn check(history: &[Operation]) -> Result<(), CheckError> {
    let mut by_key: BTreeMap<Key, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(*op);
    }
    for (key, ops) in by_key {
        check_key(key, ops)?;
    }
    Ok(())
}

/// The register: `state` is the key's value (`None`: never written). Returns the state after
/// `kind`, or `None` when `result` is impossible from `state`. Unknown results accept
/// whatever the operation would have done.
fn step(state: Option<Value>, kind: OpKind, result: Option<OpResult>) -> Option<Option<Value>> {
    match (kind, result) {
        (OpKind::Put(v), None | Some(OpResult::Written)) => Some(Some(v)),
        (OpKind::Cas { expected, new }, None) => {
            Some(if state == expected { Some(new) } else { state })
        }
        (OpKind::Cas { expected, new }, Some(OpResult::Cas(true))) => {
            (state == expected).then_some(Some(new))
        }
        (OpKind::Cas { expected, .. }, Some(OpResult::Cas(false))) => {
            (state != expected).then_some(state)
        }
        (OpKind::Get, None) => Some(state),
        (OpKind::Get, Some(OpResult::Read(v))) => (v == state).then_some(state),
        _ => None,
    }
}

fn well_formed(op: &Operation) -> bool {
    let kind_ok = matches!(
        (op.kind, op.result()),
        (_, None)
            | (OpKind::Put(_), Some(OpResult::Written))
            | (OpKind::Cas { .. }, Some(OpResult::Cas(_)))
            | (OpKind::Get, Some(OpResult::Read(_)))
    );
    kind_ok && op.returned_at() >= op.invoked
}

const NONE: usize = usize::MAX;

/// One call or return event in the doubly linked list the search lifts entries out of.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
    /// For a call: its return event.
    partner: usize,
    prev: usize,
    next: usize,
}

struct Events {
    list: Vec<Event>,
    head: usize,
}

impl Events {
    fn new(ops: &[Operation]) -> Self {
        // (time, returns after calls at the same time, op): ties count as concurrent.
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.invoked, false, i));
            order.push((op.returned_at(), true, i));
        }
        order.sort_unstable();
        let n = order.len();
        let head = n;
        let mut list = vec![
            Event {
                op: NONE,
                call: false,
                partner: NONE,
                prev: NONE,
                next: NONE,
            };
            n + 1
        ];
        let mut return_of = vec![NONE; ops.len()];
        for (pos, &(_, is_return, op)) in order.iter().enumerate() {
            if is_return {
                return_of[op] = pos;
            }
        }
        for (pos, &(_, is_return, op)) in order.iter().enumerate() {
            list[pos] = Event {
                op,
                call: !is_return,
                partner: if is_return { NONE } else { return_of[op] },
                prev: if pos == 0 { head } else { pos - 1 },
                next: if pos + 1 == n { NONE } else { pos + 1 },
            };
        }
        list[head].next = if n == 0 { NONE } else { 0 };
        Self { list, head }
    }

    fn first(&self) -> usize {
        self.list[self.head].next
    }

    fn unlink(&mut self, e: usize) {
        let Event { prev, next, .. } = self.list[e];
        self.list[prev].next = next;
        if next != NONE {
            self.list[next].prev = prev;
        }
    }

    fn relink(&mut self, e: usize) {
        let Event { prev, next, .. } = self.list[e];
        self.list[prev].next = e;
        if next != NONE {
            self.list[next].prev = e;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.list[call].partner);
    }

    /// Undoes [`Events::lift`] (in reverse order, so the links it restores are current).
    fn unlift(&mut self, call: usize) {
        self.relink(self.list[call].partner);
        self.relink(call);
    }
}

fn check_key(key: Key, mut ops: Vec<Operation>) -> Result<(), CheckError> {
    ops.sort_by_key(|op| (op.invoked, op.returned_at()));
    if let Some(op) = ops.iter().find(|op| !well_formed(op)) {
        return Err(CheckError::Malformed { op: *op });
    }
    let mut events = Events::new(&ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    let mut state: Option<Value> = None;
    let mut entry = events.first();
    while events.first() != NONE {
        let e = events.list[entry];
        if e.call {
            if let Some(next_state) = step(state, ops[e.op].kind, ops[e.op].result()) {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                if seen.insert((linearized.clone(), next_state)) {
                    if seen.len() > SEARCH_BUDGET {
                        return Err(CheckError::TooComplex {
                            key,
                            ops: ops.len(),
                        });
                    }
                    stack.push((entry, state));
                    state = next_state;
                    events.lift(entry);
                    entry = events.first();
                    continue;
                }
                linearized[e.op / 64] &= !(1 << (e.op % 64));
            }
            entry = e.next;
        } else {
            // A return whose call could not be placed before it: undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                return Err(CheckError::NotLinearizable { key, history: ops });
            };
            let op = events.list[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous;
            events.unlift(call);
            entry = events.list[call].next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: Value, call: u64, ret: u64) -> Operation {
        Operation::returned(1, OpKind::Put(v), call, ret, OpResult::Written)
    }
    fn get(v: Option<Value>, call: u64, ret: u64) -> Operation {
        Operation::returned(1, OpKind::Get, call, ret, OpResult::Read(v))
    }
    fn cas(expected: Option<Value>, new: Value, ok: bool, call: u64, ret: u64) -> Operation {
        Operation::returned(
            1,
            OpKind::Cas { expected, new },
            call,
            ret,
            OpResult::Cas(ok),
        )
    }
    fn lost_put(v: Value, call: u64) -> Operation {
        Operation::indeterminate(1, OpKind::Put(v), call)
    }

    fn not_linearizable(history: &[Operation]) -> bool {
        matches!(check(history), Err(CheckError::NotLinearizable { .. }))
    }

    #[test]
    fn the_empty_history_and_a_sequential_one_are_linearizable() {
        assert_eq!(check(&[]), Ok(()));
        let h = [
            get(None, 0, 1),
            put(1, 2, 3),
            get(Some(1), 4, 5),
            cas(Some(1), 2, true, 6, 7),
            cas(Some(1), 3, false, 8, 9),
            get(Some(2), 10, 11),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [None, Some(1)] {
            assert_eq!(check(&[put(1, 0, 10), get(seen, 2, 5)]), Ok(()));
        }
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        assert!(not_linearizable(&[
            put(1, 0, 1),
            put(2, 2, 3),
            get(Some(1), 4, 5)
        ]));
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught() {
        assert!(not_linearizable(&[put(1, 0, 1), get(Some(9), 2, 3)]));
    }

    #[test]
    fn two_readers_must_agree_on_the_order_of_concurrent_writes() {
        // Writes 1 and 2 overlap; one reader sees 1 then 2, the other 2 then 1: no single order.
        let h = [
            put(1, 0, 100),
            put(2, 0, 100),
            get(Some(1), 10, 11),
            get(Some(2), 12, 13),
            get(Some(2), 10, 11),
            get(Some(1), 14, 15),
        ];
        assert!(not_linearizable(&h));
        // The same reads without the contradiction are fine.
        let h = [
            put(1, 0, 100),
            put(2, 0, 100),
            get(Some(1), 10, 11),
            get(Some(2), 12, 13),
            get(Some(2), 14, 15),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn compare_and_set_must_agree_with_the_register() {
        assert_eq!(
            check(&[cas(None, 1, true, 0, 1), get(Some(1), 2, 3)]),
            Ok(())
        );
        // A CAS that succeeded on a value the key never held.
        assert!(not_linearizable(&[
            put(5, 0, 1),
            cas(Some(4), 6, true, 2, 3)
        ]));
        // A CAS that failed although the key held the expected value all along.
        assert!(not_linearizable(&[
            put(5, 0, 1),
            cas(Some(5), 6, false, 2, 3)
        ]));
        // Two CAS from the same value cannot both win.
        assert!(not_linearizable(&[
            put(5, 0, 1),
            cas(Some(5), 6, true, 2, 10),
            cas(Some(5), 7, true, 2, 10),
        ]));
    }

    #[test]
    fn an_indeterminate_write_may_take_effect_late_or_never() {
        // Seen by a later read, long after it was invoked.
        assert_eq!(
            check(&[lost_put(1, 0), get(None, 5, 6), get(Some(1), 50, 51)]),
            Ok(())
        );
        // Never seen at all.
        assert_eq!(check(&[lost_put(1, 0), get(None, 50, 51)]), Ok(()));
        // But not before it was invoked.
        assert!(not_linearizable(&[get(Some(1), 0, 1), lost_put(1, 5)]));
        // And once seen and overwritten, it cannot come back.
        assert!(not_linearizable(&[
            lost_put(1, 0),
            get(Some(1), 5, 6),
            put(2, 7, 8),
            get(Some(1), 9, 10),
        ]));
    }

    #[test]
    fn an_indeterminate_cas_applies_only_if_its_expectation_holds() {
        let lost_cas = Operation::indeterminate(
            1,
            OpKind::Cas {
                expected: Some(1),
                new: 2,
            },
            2,
        );
        assert_eq!(check(&[put(1, 0, 1), lost_cas, get(Some(2), 5, 6)]), Ok(()));
        assert!(not_linearizable(&[
            put(3, 0, 1),
            lost_cas,
            get(Some(2), 5, 6)
        ]));
    }

    #[test]
    fn keys_are_checked_independently() {
        let other = Operation::returned(2, OpKind::Get, 4, 5, OpResult::Read(None));
        assert_eq!(check(&[put(1, 0, 1), other]), Ok(()));
        let mut bad = put(1, 0, 1);
        bad.key = 2;
        let stale = Operation::returned(2, OpKind::Get, 4, 5, OpResult::Read(None));
        let err = check(&[put(1, 0, 1), bad, stale]);
        assert!(
            matches!(err, Err(CheckError::NotLinearizable { key: 2, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_operations_are_refused() {
        let wrong_kind = Operation::returned(1, OpKind::Put(1), 0, 1, OpResult::Read(None));
        assert!(matches!(
            check(&[wrong_kind]),
            Err(CheckError::Malformed { .. })
        ));
        assert!(matches!(
            check(&[put(1, 5, 4)]),
            Err(CheckError::Malformed { .. })
        ));
    }

    #[test]
    fn a_violation_names_the_key_and_lists_its_operations() {
        let err = check(&[put(1, 0, 1), get(None, 2, 3)]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("key 1"), "{text}");
        assert!(text.contains("put(1) [0..1] -> ok"), "{text}");
        assert!(text.contains("get() [2..3] -> nil"), "{text}");
    }

    #[test]
    fn many_concurrent_writes_with_late_reads_stay_fast() {
        // 12 overlapping puts and reads that pin one order: the memo keeps this small.
        let mut h: Vec<Operation> = (1..=12).map(|v| put(v, 0, 100)).collect();
        for v in 1..=12 {
            h.push(get(Some(v), 100 + 2 * v, 101 + 2 * v));
        }
        // Reads after all writes returned must agree on the last one: only one order
        // of the puts ends at 1 and then at 2..12, which is impossible.
        assert!(not_linearizable(&h));
        let h: Vec<Operation> = (1..=12)
            .map(|v| put(v, 0, 100))
            .chain([get(Some(7), 200, 201), get(Some(7), 202, 203)])
            .collect();
        assert_eq!(check(&h), Ok(()));
    }
}
