//! One group replica's system layer around the database's [`GroupStateMachine`]: vShard
//! fences, framed commands, the snapshot's header, and skipping what the state machine had
//! already made durable before a restart.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use routing::{GroupId, VShardId};

use super::sessions::{Check, Sessions, SessionsMsg};
use crate::group_state_machine::{Committed, GroupStateMachine, Position, StateMachineFactory};
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
    /// Why the replica was set aside (a snapshot its state machine could not restore): its
    /// state is not the group's, so it runs no more jobs.
    set_aside: Option<String>,
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
            set_aside: None,
        }
    }

    /// Why the replica was set aside, if it was: then it applies nothing more.
    pub(crate) fn set_aside(&self) -> Option<&str> {
        self.set_aside.as_deref()
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
    /// A malformed snapshot, or the database's state machine failed: the replica is then set
    /// aside ([`Replica::set_aside`]), its state no longer the group's.
    pub(crate) fn restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let restored = self.try_restore(index, snapshot);
        if let Err(error) = &restored {
            self.set_aside = Some(error.to_string());
        }
        restored
    }

    fn try_restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let covers = Position::end_of(index);
        let (header, user) = split_snapshot(snapshot)?;
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
        self.inner.restore(covers, &mut &*user)?;
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

/// Checks a snapshot of `group` a peer sent before raft installs it: its system header here,
/// the database's bytes by `factory` ([`StateMachineFactory::check_snapshot`]).
///
/// # Errors
/// A snapshot this node's replica could not restore.
pub(crate) fn check_snapshot(
    factory: &dyn StateMachineFactory,
    group: GroupId,
    snapshot: &[u8],
) -> Result<(), StateMachineError> {
    let (_, user) = split_snapshot(snapshot)?;
    factory.check_snapshot(group, &user)
}

/// The system header of a snapshot and the database's bytes in it (a legacy snapshot's are
/// copied out of its message).
///
/// # Errors
/// A malformed header or legacy message.
fn split_snapshot(snapshot: &[u8]) -> Result<(SnapshotHeader, Cow<'_, [u8]>), StateMachineError> {
    Ok(match snapshot.first() {
        None => (SnapshotHeader::default(), Cow::Borrowed(&[][..])),
        Some(&SNAPSHOT_FORMAT) => {
            let mut rest = snapshot.get(1..).unwrap_or_default();
            let header = SnapshotHeader::decode_length_delimited(&mut rest)?;
            (header, Cow::Borrowed(rest))
        }
        Some(_) => {
            let legacy = LegacySnapshot::decode(snapshot)?;
            let header = SnapshotHeader {
                fenced: legacy.fenced,
                sessions: None,
            };
            (header, Cow::Owned(legacy.user))
        }
    })
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
#[path = "replica_tests.rs"]
mod tests;
