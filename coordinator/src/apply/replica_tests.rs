//! Tests of a replica's system layer: batching, positions, fences, sessions, snapshots.
use super::*;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// What reached the state machine (shared with the test).
#[derive(Default)]
struct Seen {
    applied: Vec<(Position, Vec<u8>)>,
    batches: usize,
    imported: Vec<(VShardId, Vec<u8>)>,
    dropped: Vec<VShardId>,
    restored: Option<Vec<u8>>,
}

/// Records what reaches it; its snapshot is the applied commands, concatenated.
struct Log {
    seen: Arc<Mutex<Seen>>,
    durable: Option<Position>,
}

impl GroupStateMachine for Log {
    fn durable_position(&self) -> Option<Position> {
        self.durable
    }
    fn apply(&mut self, batch: &[Committed<'_>]) -> Result<Vec<Vec<u8>>, StateMachineError> {
        let mut seen = self.seen.lock().unwrap();
        seen.batches += 1;
        seen.applied
            .extend(batch.iter().map(|c| (c.position, c.command.to_vec())));
        Ok(batch.iter().map(|_| b"ok".to_vec()).collect())
    }
    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        for (_, c) in &self.seen.lock().unwrap().applied {
            out.write_all(c)?;
        }
        Ok(())
    }
    fn restore(&mut self, _: Position, input: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        self.seen.lock().unwrap().restored = Some(bytes);
        Ok(())
    }
    fn export_vshard(
        &mut self,
        _: VShardScope,
        out: &mut dyn Write,
    ) -> Result<(), StateMachineError> {
        out.write_all(b"rows")?;
        Ok(())
    }
    fn import_vshard(
        &mut self,
        scope: VShardScope,
        _: Position,
        input: &mut dyn Read,
    ) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        self.seen
            .lock()
            .unwrap()
            .imported
            .push((scope.vshard, bytes));
        Ok(())
    }
    fn drop_vshard(&mut self, scope: VShardScope, _: Position) -> Result<(), StateMachineError> {
        self.seen.lock().unwrap().dropped.push(scope.vshard);
        Ok(())
    }
}

/// A replica of group 1 whose state machine is durable through `durable`.
fn replica(durable: Option<Position>) -> (Replica, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = Log {
        seen: seen.clone(),
        durable,
    };
    (
        Replica::open(GroupId(1), Box::new(log), Fences::default(), 16),
        seen,
    )
}

fn at(index: u64, offset: u32) -> Position {
    Position { index, offset }
}

fn item(position: Position, frame: &Frame) -> Item {
    Item {
        position,
        framed: frame.encode(),
    }
}

fn put(vshard: u32, data: &[u8]) -> Frame {
    Frame::User {
        vshard: Some(VShardId(vshard)),
        data: data.to_vec(),
        session: None,
    }
}

#[test]
fn consecutive_commands_reach_the_state_machine_as_one_batch_with_exact_positions() {
    let (mut r, seen) = replica(None);
    let items = [
        item(at(5, 0), &put(1, b"a")),
        item(at(5, 1), &put(2, b"b")),
        item(at(6, 0), &put(1, b"c")),
    ];
    let replies = r.apply(&items).unwrap();
    assert_eq!(replies, vec![Reply::Applied(b"ok".to_vec()); 3]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.batches, 1);
    let positions: Vec<_> = seen.applied.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, vec![at(5, 0), at(5, 1), at(6, 0)]);
}

#[test]
fn a_restart_skips_exactly_what_the_state_machine_made_durable() {
    // Durable through the first command of the batched entry at index 5.
    let (mut r, seen) = replica(Some(at(5, 0)));
    let items = [
        item(at(4, 0), &put(1, b"old")),
        item(at(5, 0), &put(1, b"done")),
        item(at(5, 1), &put(1, b"new-in-same-entry")),
        item(at(6, 0), &put(1, b"new")),
    ];
    r.apply(&items).unwrap();
    let applied: Vec<_> = seen.lock().unwrap().applied.clone();
    assert_eq!(
        applied,
        vec![
            (at(5, 1), b"new-in-same-entry".to_vec()),
            (at(6, 0), b"new".to_vec())
        ]
    );
}

#[test]
fn fences_replay_even_where_commands_are_skipped() {
    let (mut r, seen) = replica(Some(at(10, 0)));
    let v = VShardId(3);
    r.apply(&[
        item(at(8, 0), &Frame::Release { vshard: v }),
        item(at(11, 0), &put(3, b"after")),
    ])
    .unwrap();
    // The release at 8 was before the durable position, but the fence (kept in memory)
    // still holds: the command for the vShard after it is refused.
    assert!(seen.lock().unwrap().applied.is_empty());
    let replies = r.apply(&[item(at(12, 0), &put(3, b"x"))]).unwrap();
    assert_eq!(replies, vec![Reply::StaleRouting(v)]);
}

#[test]
fn a_released_vshard_refuses_commands_until_taken_back_and_survives_snapshots() {
    let (mut r, _) = replica(None);
    let v = VShardId(3);
    assert_eq!(
        r.apply(&[
            item(at(2, 0), &put(3, b"put")),
            item(at(3, 0), &Frame::Release { vshard: v }),
            item(at(4, 0), &put(3, b"put")),
            item(at(5, 0), &put(4, b"other")),
        ])
        .unwrap(),
        vec![
            Reply::Applied(b"ok".to_vec()),
            Reply::Applied(Vec::new()),
            Reply::StaleRouting(v),
            Reply::Applied(b"ok".to_vec()),
        ]
    );
    // The fence travels in the snapshot, ahead of the database's bytes.
    let snapshot = r.snapshot().unwrap();
    let (mut fresh, seen) = replica(None);
    fresh.restore(5, &snapshot).unwrap();
    assert_eq!(
        seen.lock().unwrap().restored.as_deref(),
        Some(&b"putother"[..])
    );
    assert_eq!(
        fresh.apply(&[item(at(6, 0), &put(3, b"x"))]).unwrap(),
        vec![Reply::StaleRouting(v)]
    );
    // Taken back without data (a rolled-back move), it serves again; purge then no-ops.
    fresh
        .apply(&[
            item(
                at(7, 0),
                &Frame::Acquire {
                    vshard: v,
                    data: None,
                },
            ),
            item(at(8, 0), &Frame::Purge { vshard: v }),
        ])
        .unwrap();
    assert!(seen.lock().unwrap().dropped.is_empty());
    assert_eq!(
        fresh.apply(&[item(at(9, 0), &put(3, b"x"))]).unwrap(),
        vec![Reply::Applied(b"ok".to_vec())]
    );
}

#[test]
fn snapshots_of_the_older_format_are_still_read() {
    let legacy = LegacySnapshot {
        user: b"state".to_vec(),
        fenced: vec![7],
    }
    .encode_to_vec();
    let (mut r, seen) = replica(None);
    r.restore(9, &legacy).unwrap();
    assert_eq!(
        seen.lock().unwrap().restored.as_deref(),
        Some(&b"state"[..])
    );
    assert_eq!(
        r.apply(&[item(at(10, 0), &put(7, b"x"))]).unwrap(),
        vec![Reply::StaleRouting(VShardId(7))]
    );
}

#[test]
fn a_state_machine_past_the_snapshot_keeps_its_state() {
    let (mut r, seen) = replica(Some(at(20, 0)));
    let snapshot = {
        let (mut other, _) = replica(None);
        other.snapshot().unwrap()
    };
    r.restore(9, &snapshot).unwrap();
    assert!(seen.lock().unwrap().restored.is_none());
}

#[test]
fn acquire_imports_and_purge_drops_only_fenced_data() {
    let (mut r, seen) = replica(None);
    let v = VShardId(9);
    r.apply(&[
        item(
            at(2, 0),
            &Frame::Acquire {
                vshard: v,
                data: Some(b"rows".to_vec()),
            },
        ),
        item(at(3, 0), &Frame::Release { vshard: v }),
        item(at(4, 0), &Frame::Purge { vshard: v }),
    ])
    .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.imported, vec![(v, b"rows".to_vec())]);
    assert_eq!(seen.dropped, vec![v]);
}

#[test]
fn garbage_commands_and_snapshots_are_refused_not_applied() {
    let (mut r, seen) = replica(None);
    for bytes in [&b"\xff\xff\xff"[..], b"", b"\x0a"] {
        let replies = r
            .apply(&[Item {
                position: at(1, 0),
                framed: bytes.to_vec(),
            }])
            .unwrap();
        assert!(matches!(replies[..], [Reply::Refused(_)]), "{bytes:?}");
    }
    assert!(seen.lock().unwrap().applied.is_empty());
    assert!(
        r.set_aside().is_none(),
        "a refused command sets nothing aside"
    );
    assert!(r.restore(3, b"\x00\xff\xff\xff").is_err());
    assert!(r.restore(3, b"\xff\xff").is_err());
    // Its state is no longer the group's: it runs no more jobs (see `workers`).
    assert!(r.set_aside().is_some());
}

/// A factory whose check accepts only user bytes that start with `ok`.
struct Picky;

impl StateMachineFactory for Picky {
    fn open(&self, _: GroupId) -> Result<Box<dyn GroupStateMachine>, StateMachineError> {
        Err("not opened in this test".into())
    }
    fn check_snapshot(&self, _: GroupId, user: &[u8]) -> Result<(), StateMachineError> {
        if user.starts_with(b"ok") {
            Ok(())
        } else {
            Err("unreadable".into())
        }
    }
}

#[test]
fn a_snapshot_is_checked_header_first_then_by_the_state_machine_with_its_own_bytes() {
    let (mut r, _) = replica(None);
    r.apply(&[Item {
        position: at(1, 0),
        framed: Frame::User {
            vshard: Some(VShardId(0)),
            data: b"ok-and-more".to_vec(),
            session: None,
        }
        .encode(),
    }])
    .unwrap();
    // The replica's own snapshot: a header, then its state machine's bytes (the commands).
    let good = r.snapshot().unwrap();
    assert!(check_snapshot(&Picky, GroupId(1), &good).is_ok());
    // A sound header before bytes the state machine refuses.
    let mut bad = good.clone();
    let user_at = bad.len() - b"ok-and-more".len();
    bad[user_at] = b'x';
    assert_eq!(
        check_snapshot(&Picky, GroupId(1), &bad)
            .unwrap_err()
            .to_string(),
        "unreadable"
    );
    // A broken header never reaches the state machine's check.
    assert!(check_snapshot(&Picky, GroupId(1), b"\x00\xff\xff\xff").is_err());
}

fn in_session(vshard: u32, data: &[u8], seq: u64) -> Frame {
    Frame::User {
        vshard: Some(VShardId(vshard)),
        data: data.to_vec(),
        session: Some(crate::replicated::SessionTag {
            client: 42,
            seq,
            acked: 0,
            time_ms: 1,
        }),
    }
}

#[test]
fn a_session_retry_in_the_same_batch_after_a_snapshot_or_a_move_is_answered_not_applied() {
    let (mut r, seen) = replica(None);
    let once = in_session(3, b"x", 1);
    let replies = r
        .apply(&[item(at(2, 0), &once), item(at(2, 1), &once)])
        .unwrap();
    assert_eq!(replies, vec![Reply::Applied(b"ok".to_vec()); 2]);
    assert_eq!(seen.lock().unwrap().applied.len(), 1);
    // The table travels in the snapshot...
    let snapshot = r.snapshot().unwrap();
    let (mut copy, copy_seen) = replica(None);
    copy.restore(2, &snapshot).unwrap();
    assert_eq!(
        copy.apply(&[item(at(3, 0), &once)]).unwrap(),
        vec![Reply::Applied(b"ok".to_vec())]
    );
    assert!(copy_seen.lock().unwrap().applied.is_empty());
    // ...and with its vShard's export, into the group it moves to.
    r.apply(&[item(
        at(3, 0),
        &Frame::Release {
            vshard: VShardId(3),
        },
    )])
    .unwrap();
    let export = r.export_vshard(VShardId(3)).unwrap();
    let (mut target, target_seen) = replica(None);
    target
        .apply(&[
            item(
                at(5, 0),
                &Frame::Acquire {
                    vshard: VShardId(3),
                    data: Some(export),
                },
            ),
            item(at(6, 0), &once),
        ])
        .unwrap();
    let target_seen = target_seen.lock().unwrap();
    assert!(target_seen.applied.is_empty());
    assert_eq!(target_seen.imported, vec![(VShardId(3), b"rows".to_vec())]);
}

#[test]
fn a_session_command_replayed_below_the_durable_position_says_it_applied_earlier() {
    let (mut r, seen) = replica(Some(at(4, 0)));
    let once = in_session(1, b"x", 1);
    assert_eq!(
        r.apply(&[item(at(4, 0), &once), item(at(5, 0), &once)])
            .unwrap(),
        vec![Reply::AppliedEarlier, Reply::AppliedEarlier]
    );
    assert!(seen.lock().unwrap().applied.is_empty());
}
