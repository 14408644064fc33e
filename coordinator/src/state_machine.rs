//! The one trait a database implements to be replicated by Pontoon.

use routing::{GroupId, VShardId, vshard_for_key};

/// An error a state machine reports. The node stops (fail-stop) on one: a replica that cannot
/// apply a committed command must not keep acknowledging writes.
pub type StateMachineError = Box<dyn std::error::Error + Send + Sync>;

/// The database's replicated state, one logical state per group.
///
/// Commands are applied in log order, exactly once per replica between restores. Applying must
/// be deterministic: every replica applies the same commands and must reach the same state.
pub trait StateMachine: Send + 'static {
    /// Applies committed `command` at `index` of `group`; the returned bytes are the response
    /// the proposer receives.
    ///
    /// # Errors
    /// Only for failures that make the replica unusable (disk full, corruption); a command the
    /// database rejects should return a response saying so instead.
    fn apply(
        &mut self,
        group: GroupId,
        index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError>;

    /// A snapshot of `group`'s whole state, as of the last applied command. Used to compact the
    /// log and to bring a lagging or new replica up to date.
    ///
    /// # Errors
    /// When the state cannot be read.
    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError>;

    /// Replaces `group`'s state with `snapshot` (empty bytes: the empty state). The bytes come
    /// from a peer: reject malformed input with an error, never panic.
    ///
    /// # Errors
    /// A malformed snapshot.
    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError>;

    /// Checks a snapshot of `group` a peer sent, before raft installs it: an error here
    /// refuses the snapshot (the sender retries later), where a failed
    /// [`StateMachine::restore`] could only set this replica aside. Runs on the node's
    /// coordinator task without the state machine's lock, so it must be a pure check of the
    /// bytes (decode them, check a checksum). The default accepts everything.
    ///
    /// # Errors
    /// Bytes `restore` would refuse.
    fn check_snapshot(group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError>
    where
        Self: Sized,
    {
        let _ = (group, snapshot);
        Ok(())
    }

    /// The data of one vShard held by `group`, for moving it to another group. Called on a
    /// replica that has applied everything committed, after the vShard was fenced (no command
    /// for it is applied in `group` any more). The default refuses: a state machine that
    /// cannot tell which of its data belongs to a vShard cannot move vShards.
    ///
    /// # Errors
    /// When the data cannot be read, or moves are not supported.
    fn export_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
    ) -> Result<Vec<u8>, StateMachineError> {
        let _ = group;
        Err(format!(
            "this state machine cannot export {}: implement StateMachine::export_vshard",
            scope.vshard
        )
        .into())
    }

    /// Adds (replacing) the data of one vShard to `group`, as [`StateMachine::export_vshard`]
    /// produced it on the old group. Applied from the log like a command, so it must be
    /// deterministic; `data` came from a peer: reject malformed input, never panic.
    ///
    /// # Errors
    /// A malformed export, or moves are not supported (the node then stops: an import that
    /// cannot be applied would make replicas diverge).
    fn import_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
        data: &[u8],
    ) -> Result<(), StateMachineError> {
        let _ = (group, data);
        Err(format!(
            "this state machine cannot import {}: implement StateMachine::import_vshard",
            scope.vshard
        )
        .into())
    }

    /// Drops the data of a vShard that moved away from `group`. The default keeps it (it is
    /// unreachable: the group refuses every command for the vShard).
    ///
    /// # Errors
    /// When the data cannot be removed.
    fn drop_vshard(&mut self, group: GroupId, scope: VShardScope) -> Result<(), StateMachineError> {
        let _ = (group, scope);
        Ok(())
    }
}

/// Which keys a vShard covers: the keys [`vshard_for_key`] maps to `vshard` among
/// `vshard_count` vShards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VShardScope {
    /// The vShard.
    pub vshard: VShardId,
    /// The table's vShard count.
    pub vshard_count: u32,
}

impl VShardScope {
    /// Whether `key` belongs to this vShard.
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        vshard_for_key(key, self.vshard_count) == self.vshard
    }
}

impl StateMachine for Box<dyn StateMachine> {
    fn apply(
        &mut self,
        group: GroupId,
        index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError> {
        (**self).apply(group, index, command)
    }
    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        (**self).snapshot(group)
    }
    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        (**self).restore(group, snapshot)
    }
    fn export_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
    ) -> Result<Vec<u8>, StateMachineError> {
        (**self).export_vshard(group, scope)
    }
    fn import_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
        data: &[u8],
    ) -> Result<(), StateMachineError> {
        (**self).import_vshard(group, scope, data)
    }
    fn drop_vshard(&mut self, group: GroupId, scope: VShardScope) -> Result<(), StateMachineError> {
        (**self).drop_vshard(group, scope)
    }
}
