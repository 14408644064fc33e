//! The one error type of the storage boundary: every variant names what happened and, where
//! it can, the group and log index it happened at.

use routing::GroupId;

/// What went wrong in the log store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A [`StoreOptions`](crate::StoreOptions) value is out of range; fix the configuration.
    #[error("invalid storage option {option} = {value}: must be at least {min}")]
    InvalidOptions {
        /// The field of `StoreOptions`.
        option: &'static str,
        /// The value given.
        value: u64,
        /// The smallest value accepted.
        min: u64,
    },

    /// The group is not held by this store (never created, or deleted).
    #[error("unknown raft group {group}")]
    UnknownGroup {
        /// The group asked for.
        group: GroupId,
    },

    /// `create_group` for a group that already exists.
    #[error("raft group {group} already exists")]
    GroupExists {
        /// The group.
        group: GroupId,
    },

    /// A record on disk does not decode, or contradicts its key. The store is damaged; do not
    /// write to it until an operator has looked.
    #[error("corrupt {record} record of group {group}{}: {reason}", fmt_index(*.index))]
    CorruptRecord {
        /// The group the record belongs to.
        group: GroupId,
        /// The log index, for log entries.
        index: Option<u64>,
        /// Which kind of record (`entry`, `hard state`, ...).
        record: &'static str,
        /// What is wrong with it.
        #[source]
        reason: CorruptReason,
    },

    /// A group's log on disk has a hole between its first and last index.
    #[error("gap in the log of group {group}: expected index {expected}, found {found}")]
    LogGap {
        /// The group.
        group: GroupId,
        /// The index that should have come next.
        expected: u64,
        /// The index that came instead (`expected - 1` if the log ends before first index).
        found: u64,
    },

    /// An append that does not join the log: its first index is past `last_index + 1`, or its
    /// entries are not consecutive.
    #[error(
        "append to group {group} is not contiguous: last index {last_index}, append starts at {first_appended}"
    )]
    NonContiguousAppend {
        /// The group.
        group: GroupId,
        /// The group's last index when the append was staged.
        last_index: u64,
        /// The index the offending entry carries.
        first_appended: u64,
    },

    /// An append or read of an index below the group's first index (already compacted).
    #[error("group {group}: index {index} is compacted (first index {first_index})")]
    Compacted {
        /// The group.
        group: GroupId,
        /// The index asked for.
        index: u64,
        /// The group's first index.
        first_index: u64,
    },

    /// `compact` past the end of the log.
    #[error("group {group}: cannot compact to {index}, last index is {last_index}")]
    CompactBeyondLog {
        /// The group.
        group: GroupId,
        /// The requested compaction index.
        index: u64,
        /// The group's last index.
        last_index: u64,
    },

    /// A snapshot older than what the group already holds, or (for `save_snapshot`) past the
    /// end of its log.
    #[error(
        "group {group}: snapshot at index {index} does not fit (first index {first_index}, last index {last_index})"
    )]
    SnapshotOutOfRange {
        /// The group.
        group: GroupId,
        /// The snapshot's index.
        index: u64,
        /// The group's first index.
        first_index: u64,
        /// The group's last index.
        last_index: u64,
    },

    /// Staged batches must be committed in the order they were staged.
    #[error("batch {got} committed out of order: batch {expected} must be committed first")]
    OutOfOrderCommit {
        /// The sequence number that is due.
        expected: u64,
        /// The sequence number that was passed.
        got: u64,
    },

    /// The store refuses writes: an earlier persist failed or a staged batch was lost, so the
    /// in-memory view and the disk may disagree. Restart the process and reopen the store.
    #[error("storage is poisoned and refuses writes ({cause}); restart and reopen the store")]
    Poisoned {
        /// What poisoned it (the first cause; later ones are only logged).
        #[source]
        cause: PoisonCause,
    },

    /// Writing or syncing a batch failed. The batch is not durable and the store is now
    /// poisoned.
    #[error("persisting batch {seq} failed, store poisoned: {source}")]
    Persist {
        /// The batch that failed.
        seq: u64,
        /// The database error.
        source: fjall::Error,
    },

    /// The database failed to open, read or recover.
    #[error("database error: {0}")]
    Db(#[from] fjall::Error),
}

/// Why a record on disk was refused ([`StorageError::CorruptRecord`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptReason {
    /// A key of the wrong length for its keyspace.
    #[error("key of {len} bytes, expected {expected}")]
    KeyLength {
        /// The key's length.
        len: usize,
        /// The length keys of this keyspace have.
        expected: usize,
    },
    /// A `meta` key whose record tag this version does not know.
    #[error("unknown record tag {tag}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },
    /// A fixed-size value of the wrong length.
    #[error("value of {len} bytes, expected {expected}")]
    ValueLength {
        /// The value's length.
        len: usize,
        /// The length this record has.
        expected: usize,
    },
    /// A protobuf record that does not decode.
    #[error("does not decode: {source}")]
    Decode {
        /// The decoder's error.
        #[source]
        source: protobuf::ProtobufError,
    },
    /// A log entry whose own index differs from the index in its key.
    #[error("entry carries index {carried} under its key's index")]
    IndexMismatch {
        /// The index the entry carries.
        carried: u64,
    },
    /// A bounds record with a first index of 0, or a truncated index not below it.
    #[error("impossible bounds: first index {first_index}, truncated index {trunc_index}")]
    ImpossibleBounds {
        /// The first index recorded.
        first_index: u64,
        /// The truncated index recorded.
        trunc_index: u64,
    },
    /// A group has records but no bounds record, its existence marker.
    #[error("missing, though the group has other records")]
    MissingBounds,
    /// A log entry of a group that has no bounds record.
    #[error("log entry of a group that has no bounds record")]
    OrphanEntry,
    /// The hard state's commit index is past the end of the log: committed entries are lost.
    #[error(
        "commit index {commit} is past the last log index {last_index}: committed entries are missing"
    )]
    CommitPastLog {
        /// The hard state's commit index.
        commit: u64,
        /// The last index of the log on disk.
        last_index: u64,
    },
}

/// What poisoned the store ([`StorageError::Poisoned`]): in each case memory holds staged
/// effects that may never reach the disk, so the store refuses every later write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoisonCause {
    /// A [`StagedBatch`](crate::StagedBatch) was dropped without being committed.
    #[error("staged batch {seq} was dropped without being committed")]
    StagedBatchDropped {
        /// The batch's sequence number.
        seq: u64,
    },
    /// A staged batch was committed while an earlier one was still due.
    #[error("batch {got} was committed while batch {expected} was due")]
    OutOfOrderCommit {
        /// The sequence number that was due.
        expected: u64,
        /// The sequence number that was passed.
        got: u64,
    },
    /// Writing or syncing a batch failed; the fjall error went to that commit's caller
    /// ([`StorageError::Persist`]) and to the log.
    #[error("persisting batch {seq} failed")]
    PersistFailed {
        /// The batch that failed.
        seq: u64,
    },
    /// A thread panicked while staging a batch, so the groups' in-memory state may be
    /// partly published.
    #[error("a thread panicked while staging a batch")]
    StagePanicked,
}

fn fmt_index(index: Option<u64>) -> String {
    index.map(|i| format!(" at index {i}")).unwrap_or_default()
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Compacted { .. } => raft::Error::Store(raft::StorageError::Compacted),
            other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
        }
    }
}
