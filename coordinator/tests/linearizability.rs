//! The linearizability checker against two independent oracles: a brute-force search over
//! every order of small random histories, and histories generated from a real register
//! execution (always linearizable) with one response corrupted (never linearizable when the
//! history is sequential).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use pontoon_coordinator::testkit::linearizability::{
    CheckError, OpKind, OpResult, Operation, Outcome, Value, check,
};
use proptest::prelude::*;

/// The register applied to `kind`; `None` when `result` is impossible.
fn apply(state: Option<Value>, op: &Operation, include_result: bool) -> Option<Option<Value>> {
    let result = match op.outcome {
        Outcome::Returned { result, .. } if include_result => Some(result),
        _ => None,
    };
    match op.kind {
        OpKind::Put(v) => Some(Some(v)),
        OpKind::Cas { expected, new } => {
            let swaps = state == expected;
            match result {
                Some(OpResult::Cas(ok)) if ok != swaps => None,
                _ => Some(if swaps { Some(new) } else { state }),
            }
        }
        OpKind::Get => match result {
            Some(OpResult::Read(v)) if v != state => None,
            _ => Some(state),
        },
    }
}

fn returned_at(op: &Operation) -> u64 {
    match op.outcome {
        Outcome::Returned { at, .. } => at,
        Outcome::Indeterminate => u64::MAX,
    }
}

/// Every subset of the indeterminate operations, every order of the chosen operations that
/// respects real time (an operation that returned strictly before another was invoked goes
/// first), run against the register.
fn brute_force(history: &[Operation]) -> bool {
    let unknown: Vec<usize> = (0..history.len())
        .filter(|i| history[*i].outcome == Outcome::Indeterminate)
        .collect();
    for mask in 0..(1u32 << unknown.len()) {
        let chosen: Vec<usize> = (0..history.len())
            .filter(|i| match unknown.iter().position(|u| u == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .collect();
        if orders(history, &chosen, &mut Vec::new(), None) {
            return true;
        }
    }
    false
}

fn orders(
    history: &[Operation],
    left: &[usize],
    done: &mut Vec<usize>,
    state: Option<Value>,
) -> bool {
    if left.is_empty() {
        return true;
    }
    for (pos, &i) in left.iter().enumerate() {
        // `i` may go next only if nothing still left returned before `i` was invoked.
        let blocked = left
            .iter()
            .any(|&j| j != i && returned_at(&history[j]) < history[i].invoked);
        if blocked {
            continue;
        }
        let Some(next) = apply(state, &history[i], true) else {
            continue;
        };
        let mut rest = left.to_vec();
        rest.remove(pos);
        done.push(i);
        if orders(history, &rest, done, next) {
            return true;
        }
        done.pop();
    }
    false
}

fn arb_op() -> impl Strategy<Value = Operation> {
    let value = 1u64..4;
    let kind = prop_oneof![
        value.clone().prop_map(OpKind::Put),
        (proptest::option::of(value.clone()), value.clone())
            .prop_map(|(expected, new)| OpKind::Cas { expected, new }),
        Just(OpKind::Get),
    ];
    (
        kind,
        0u64..20,
        0u64..8,
        any::<bool>(),
        proptest::option::of(1u64..4),
        0u8..5,
    )
        .prop_map(|(kind, invoked, len, ok, read, lost)| {
            let result = match kind {
                OpKind::Put(_) => OpResult::Written,
                OpKind::Cas { .. } => OpResult::Cas(ok),
                OpKind::Get => OpResult::Read(read),
            };
            // Reads that time out carry no information; only writes are indeterminate.
            if lost == 0 && kind != OpKind::Get {
                Operation::indeterminate(1, kind, invoked)
            } else {
                Operation::returned(1, kind, invoked, invoked + len, result)
            }
        })
}

/// A register execution: operations applied in order at distinct instants, each given an
/// interval around its instant. When `lossy`, some writes lose their response and some never
/// happened at all.
fn arb_execution(lossy: bool) -> impl Strategy<Value = Vec<Operation>> {
    proptest::collection::vec(
        (
            0u8..3,
            proptest::option::of(0u64..6),
            0u64..15,
            0u64..15,
            0u8..6,
        ),
        1..40,
    )
    .prop_map(move |steps| {
        let mut state: Option<Value> = None;
        let mut out = Vec::new();
        for (i, (kind, expected, before, after, fate)) in steps.into_iter().enumerate() {
            let at = 100 + 20 * i as u64;
            let fresh = i as u64 + 1;
            let kind = match kind {
                0 => OpKind::Put(fresh),
                1 => OpKind::Cas {
                    // Expect the current value about half the time.
                    expected: if expected.is_some_and(|e| e % 2 == 0) {
                        state
                    } else {
                        expected
                    },
                    new: fresh,
                },
                _ => OpKind::Get,
            };
            let (invoked, returned) = (at - before, at + after);
            if lossy && fate == 0 && kind != OpKind::Get {
                // Never took effect and never answered.
                out.push(Operation::indeterminate(1, kind, invoked));
                continue;
            }
            let result = match kind {
                OpKind::Put(v) => {
                    state = Some(v);
                    OpResult::Written
                }
                OpKind::Cas { expected, new } => {
                    let ok = state == expected;
                    if ok {
                        state = Some(new);
                    }
                    OpResult::Cas(ok)
                }
                OpKind::Get => OpResult::Read(state),
            };
            if lossy && fate == 1 && kind != OpKind::Get {
                // Took effect, but the client never heard.
                out.push(Operation::indeterminate(1, kind, invoked));
            } else {
                out.push(Operation::returned(1, kind, invoked, returned, result));
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_checker_agrees_with_brute_force_on_small_histories(
        history in proptest::collection::vec(arb_op(), 0..7)
    ) {
        let expected = brute_force(&history);
        let got = check(&history);
        prop_assert_eq!(got.is_ok(), expected, "checker said {:?}", got);
        if let Err(e) = got {
            let is_violation = matches!(e, CheckError::NotLinearizable { .. });
            prop_assert!(is_violation, "{:?}", e);
        }
    }

    #[test]
    fn a_history_from_a_register_execution_is_linearizable(history in arb_execution(true)) {
        prop_assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn corrupting_a_read_of_a_sequential_history_is_caught(
        history in arb_execution(false),
        pick in any::<prop::sample::Index>(),
        wrong in 1_000u64..2_000,
    ) {
        // Sequential: one interval per instant, no overlap, every operation answered.
        let mut seq: Vec<Operation> = history
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op.outcome {
                Outcome::Returned { result, .. } => {
                    let at = 100 + 20 * i as u64;
                    Some(Operation::returned(op.key, op.kind, at, at + 1, result))
                }
                Outcome::Indeterminate => None,
            })
            .collect();
        prop_assert_eq!(seq.len(), history.len());
        let i = pick.index(seq.len());
        let corrupt = match seq[i].outcome {
            Outcome::Returned { result: OpResult::Read(_), .. } => OpResult::Read(Some(wrong)),
            Outcome::Returned { result: OpResult::Cas(ok), .. } => OpResult::Cas(!ok),
            // A put's answer carries nothing to corrupt: read its value back wrongly instead.
            _ => OpResult::Read(Some(wrong)),
        };
        if let OpKind::Put(_) = seq[i].kind {
            let at = seq[i].invoked;
            seq.insert(i + 1, Operation::returned(1, OpKind::Get, at + 2, at + 3, corrupt));
        } else {
            let (invoked, kind) = (seq[i].invoked, seq[i].kind);
            seq[i] = Operation::returned(1, kind, invoked, invoked + 1, corrupt);
        }
        let is_violation = matches!(check(&seq), Err(CheckError::NotLinearizable { .. }));
        prop_assert!(is_violation);
    }
}

#[test]
fn a_long_history_of_one_key_with_bounded_concurrency_checks_within_budget() {
    // 600 operations, up to 5 in flight at once, some indeterminate: more than one key sees
    // in a simulation run.
    let mut state: Option<Value> = None;
    let mut history = Vec::new();
    for i in 0..600u64 {
        let at = 10 * i;
        let (invoked, returned) = (at.saturating_sub(20), at + 25);
        match i % 5 {
            0 | 1 => {
                state = Some(i);
                if i % 7 == 0 {
                    history.push(Operation::indeterminate(1, OpKind::Put(i), invoked));
                } else {
                    history.push(Operation::returned(
                        1,
                        OpKind::Put(i),
                        invoked,
                        returned,
                        OpResult::Written,
                    ));
                }
            }
            2 => {
                let kind = OpKind::Cas {
                    expected: state,
                    new: i,
                };
                state = Some(i);
                history.push(Operation::returned(
                    1,
                    kind,
                    invoked,
                    returned,
                    OpResult::Cas(true),
                ));
            }
            _ => history.push(Operation::returned(
                1,
                OpKind::Get,
                invoked,
                returned,
                OpResult::Read(state),
            )),
        }
    }
    // An exponential search would run out of its budget and answer `TooComplex`.
    assert_eq!(check(&history), Ok(()));
}
