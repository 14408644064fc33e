//! One group replica's system layer around the database's [`GroupStateMachine`]: vShard
//! fences, framed commands, the snapshot's header, and skipping what the state machine had
//! already made durable before a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use prost::Message as _;
use routing::{GroupId, VShardId};

use super::sessions::{Check, Sessions, SessionsMsg};
use crate::group_state_machine::{Committed, GroupStateMachine, Position};
use crate::replicated::{Fences, Frame, Reply};
use crate::state_machine::{StateMachineError, VShardScope};

/// The first byte of a snapshot in the current format: a field number of 0 is invalid
/// protobuf, so it never begins a snapshot of the older, all-prost format.
const SNAPSHOT_FORMAT: u8 = 0;

/// The older format, still read: a prost message holding the database's bytes and fences.
#[derive(Clone, PartialEq, prost::Message)]
struct LegacySnapshot {
    #[prost(bytes = "vec", tag = "1")]
    user: Vec<u8>,
    #[prost(uint32, repeated, tag = "2")]
    fenced: Vec<u32>,
}

/// The header of a snapshot: the group's fences. The database's own bytes follow it, so a
/// reader can hand the rest of the stream straight to the state machine.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotHeader {
    #[prost(uint32, repeated, tag = "1")]
    fenced: Vec<u32>,
    #[prost(message, optional, tag = "2")]
    sessions: Option<SessionsMsg>,
}

/// The first bytes of a vShard export that carries session entries ahead of the database's
/// bytes (an export without them is the database's bytes alone).
const EXPORT_FORMAT: &[u8] = b"\0PSX";

#[derive(Clone, PartialEq, prost::Message)]
struct ExportHeader {
    #[prost(message, optional, tag = "1")]
    sessions: Option<SessionsMsg>,
}

/// A committed command for one replica, framed as proposed.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) position: Position,
    pub(crate) framed: Vec<u8>,
}

pub(crate) struct Replica {
    group: GroupId,
    inner: Box<dyn GroupStateMachine>,
    fences: Fences,
    vshard_count: u32,
    /// Commands at or before this were applied before the node restarted: only their fence
    /// and session changes (kept in memory) are applied again.
    skip_through: Option<Position>,
    sessions: Sessions,
    /// Answer a session's retried command from the table (off only in a simulation that
    /// checks the checks: see `SimConfig::without_session_dedup`).
    dedup: bool,
}

impl Replica {
    pub(crate) fn open(
        group: GroupId,
        inner: Box<dyn GroupStateMachine>,
        fences: Fences,
        vshard_count: u32,
    ) -> Self {
        let skip_through = inner.durable_position();
        if let Some(position) = skip_through {
            tracing::info!(%group, index = position.index, offset = position.offset,
                "state machine resumes from its durable position");
        }
        Self {
            group,
            inner,
            fences,
            vshard_count,
            skip_through,
            sessions: Sessions::default(),
            dedup: true,
        }
    }

    /// Stops answering retried session commands from the table: every retry is applied again
    /// (the bug a simulation injects to prove its checks catch double applies).
    pub(crate) fn without_dedup(mut self) -> Self {
        self.dedup = false;
        self
    }

    pub(crate) fn durable_position(&self) -> Option<Position> {
        self.inner.durable_position()
    }

    fn scope(&self, vshard: VShardId) -> VShardScope {
        VShardScope {
            vshard,
            vshard_count: self.vshard_count,
        }
    }

    fn is_fenced(&self, vshard: VShardId) -> bool {
        !self.fences.serves(self.group, vshard)
    }

    fn skipped(&self, position: Position) -> bool {
        self.skip_through.is_some_and(|through| position <= through)
    }

    /// Applies `items` in order, batching consecutive database commands into one call, and
    /// returns one reply per item. A command of a client session that was applied before is
    /// answered from the session table instead.
    ///
    /// # Errors
    /// The database's state machine failed (the node stops).
    pub(crate) fn apply(&mut self, items: &[Item]) -> Result<Vec<Reply>, StateMachineError> {
        let frames: Vec<Option<Frame>> = items.iter().map(|i| Frame::decode(&i.framed)).collect();
        let mut replies: Vec<Option<Reply>> = vec![None; items.len()];
        // Indexes (into `items`) of the database commands gathered for the next batch.
        let mut batch: Vec<usize> = Vec::new();
        // A session's command twice in one batch (a retry racing the first): the second
        // takes the first's reply.
        let mut in_batch: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (i, (item, frame)) in items.iter().zip(&frames).enumerate() {
            let skipped = self.skipped(item.position);
            match frame {
                None => replies[i] = Some(Reply::Refused("not a framed command".into())),
                Some(Frame::User {
                    vshard, session, ..
                }) => {
                    if let Some(tag) = session.as_ref().filter(|_| self.dedup) {
                        if let Some(&first) = in_batch.get(&(tag.client, tag.seq)) {
                            copies.push((i, first));
                            continue;
                        }
                        match self.sessions.check(tag) {
                            Check::Apply => {}
                            Check::Answered(response) => {
                                replies[i] = Some(Reply::Applied(response));
                                continue;
                            }
                            Check::AppliedEarlier => {
                                replies[i] = Some(Reply::AppliedEarlier);
                                continue;
                            }
                            Check::Refused(reason) => {
                                replies[i] = Some(Reply::Refused(reason));
                                continue;
                            }
                        }
                    }
                    if let Some(v) = vshard
                        && self.is_fenced(*v)
                    {
                        replies[i] = Some(Reply::StaleRouting(*v));
                    } else if skipped {
                        // Applied before the restart: its response was not kept.
                        if let Some(tag) = session {
                            self.sessions.record(tag, *vshard, None);
                        }
                        replies[i] = Some(Reply::AppliedEarlier);
                    } else {
                        if let Some(tag) = session {
                            in_batch.insert((tag.client, tag.seq), i);
                        }
                        batch.push(i);
                    }
                }
                Some(system) => {
                    self.flush(items, &frames, &mut batch, &mut replies)?;
                    replies[i] = Some(self.apply_system(item.position, system, skipped)?);
                }
            }
        }
        self.flush(items, &frames, &mut batch, &mut replies)?;
        for (copy, first) in copies {
            let reply = replies.get(first).cloned().flatten();
            if let Some(slot) = replies.get_mut(copy) {
                *slot = reply;
            }
        }
        Ok(replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Reply::Refused("not applied".into())))
            .collect())
    }

    fn flush(
        &mut self,
        items: &[Item],
        frames: &[Option<Frame>],
        batch: &mut Vec<usize>,
        replies: &mut [Option<Reply>],
    ) -> Result<(), StateMachineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let committed: Vec<Committed<'_>> = batch
            .iter()
            .filter_map(|&i| match (items.get(i), frames.get(i)) {
                (Some(item), Some(Some(Frame::User { vshard, data, .. }))) => Some(Committed {
                    group: self.group,
                    position: item.position,
                    vshard: *vshard,
                    command: data,
                }),
                _ => None,
            })
            .collect();
        let responses = self.inner.apply(&committed)?;
        if responses.len() != committed.len() {
            return Err(format!(
                "the state machine of {} returned {} responses for {} commands",
                self.group,
                responses.len(),
                committed.len()
            )
            .into());
        }
        for (&i, response) in batch.iter().zip(responses) {
            if let Some(Some(Frame::User {
                vshard,
                session: Some(tag),
                ..
            })) = frames.get(i)
            {
                self.sessions.record(tag, *vshard, Some(response.clone()));
            }
            if let Some(slot) = replies.get_mut(i) {
                *slot = Some(Reply::Applied(response));
            }
        }
        batch.clear();
        Ok(())
    }

    fn apply_system(
        &mut self,
        at: Position,
        frame: &Frame,
        skipped: bool,
    ) -> Result<Reply, StateMachineError> {
        let group = self.group;
        Ok(match frame {
            Frame::Release { vshard } => {
                self.fences
                    .update(|f| f.entry(group).or_default().insert(*vshard));
                Reply::Applied(Vec::new())
            }
            Frame::Acquire { vshard, data } => {
                if let Some(data) = data {
                    let (sessions, user) = split_export(data)?;
                    if let Some(sessions) = sessions {
                        self.sessions.merge(sessions);
                    }
                    if !skipped {
                        let scope = self.scope(*vshard);
                        self.inner.import_vshard(scope, at, &mut &user[..])?;
                    }
                }
                self.fences.update(|f| {
                    if let Some(set) = f.get_mut(&group) {
                        set.remove(vshard);
                    }
                });
                Reply::Applied(Vec::new())
            }
            Frame::Purge { vshard } => {
                // Only data that is still fenced here goes: a vShard taken back since the
                // purge was planned keeps its data.
                if self.is_fenced(*vshard) && !skipped {
                    let scope = self.scope(*vshard);
                    self.inner.drop_vshard(scope, at)?;
                }
                Reply::Applied(Vec::new())
            }
            Frame::Routing(_) => Reply::Refused("routing changes go to the meta group".into()),
            Frame::User { .. } => Reply::Refused("not a system command".into()),
        })
    }

    /// The replica's snapshot: a header with its fences, then the database's bytes.
    ///
    /// # Errors
    /// The database's state machine failed.
    pub(crate) fn snapshot(&mut self) -> Result<Vec<u8>, StateMachineError> {
        let fenced = self.fences.update(|f| {
            f.get(&self.group)
                .map(|set| set.iter().map(|v| v.get()).collect())
                .unwrap_or_default()
        });
        let mut out = vec![SNAPSHOT_FORMAT];
        SnapshotHeader {
            fenced,
            sessions: Some(self.sessions.to_msg()),
        }
        .encode_length_delimited(&mut out)?;
        self.inner.snapshot(&mut out)?;
        Ok(out)
    }

    /// Replaces the replica's state with `snapshot`, taken at `index` (from a peer: malformed
    /// bytes are an error). A state machine that already holds a newer durable state keeps it
    /// and only the fences are restored.
    ///
    /// # Errors
    /// A malformed snapshot, or the database's state machine failed.
    pub(crate) fn restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let covers = Position::end_of(index);
        let (header, mut user): (SnapshotHeader, Box<dyn Read + '_>) = match snapshot.first() {
            None => (SnapshotHeader::default(), Box::new(&[][..])),
            Some(&SNAPSHOT_FORMAT) => {
                let mut rest = snapshot.get(1..).unwrap_or_default();
                let header = SnapshotHeader::decode_length_delimited(&mut rest)?;
                (header, Box::new(rest))
            }
            Some(_) => {
                let legacy = LegacySnapshot::decode(snapshot)?;
                let header = SnapshotHeader {
                    fenced: legacy.fenced,
                    sessions: None,
                };
                (header, Box::new(std::io::Cursor::new(legacy.user)))
            }
        };
        let fenced = header.fenced;
        self.sessions = header.sessions.map(Sessions::from_msg).unwrap_or_default();
        let fenced: BTreeSet<VShardId> = fenced.into_iter().map(VShardId).collect();
        let group = self.group;
        self.fences.update(|f| {
            if fenced.is_empty() {
                f.remove(&group)
            } else {
                f.insert(group, fenced)
            }
        });
        if self
            .skip_through
            .is_some_and(|through| through.index >= index)
        {
            tracing::debug!(%group, index, "state machine is past the snapshot; keeping its state");
            return Ok(());
        }
        self.inner.restore(covers, &mut user)?;
        self.skip_through = None;
        Ok(())
    }

    /// `vshard`'s data, exported by the database's state machine.
    ///
    /// # Errors
    /// The state machine cannot export it.
    pub(crate) fn export_vshard(&mut self, vshard: VShardId) -> Result<Vec<u8>, StateMachineError> {
        let mut out = EXPORT_FORMAT.to_vec();
        ExportHeader {
            sessions: Some(self.sessions.export(vshard)),
        }
        .encode_length_delimited(&mut out)?;
        let scope = self.scope(vshard);
        self.inner.export_vshard(scope, &mut out)?;
        Ok(out)
    }
}

/// The session entries and the database's bytes of a vShard export.
///
/// # Errors
/// A malformed header.
fn split_export(data: &[u8]) -> Result<(Option<SessionsMsg>, &[u8]), StateMachineError> {
    match data.strip_prefix(EXPORT_FORMAT) {
        Some(mut rest) => {
            let header = ExportHeader::decode_length_delimited(&mut rest)?;
            Ok((header.sessions, rest))
        }
        None => Ok((None, data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
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
        fn drop_vshard(
            &mut self,
            scope: VShardScope,
            _: Position,
        ) -> Result<(), StateMachineError> {
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
        assert!(r.restore(3, b"\x00\xff\xff\xff").is_err());
        assert!(r.restore(3, b"\xff\xff").is_err());
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
}
