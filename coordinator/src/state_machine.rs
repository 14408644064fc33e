//! The one trait a database implements to be replicated by Pontoon.

use routing::GroupId;

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
}
