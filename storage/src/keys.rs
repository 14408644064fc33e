//! On-disk layout. Two keyspaces:
//!
//! - `log`: key = group id (u64 BE) ++ index (u64 BE), value = protobuf `Entry`. A group's log
//!   is one contiguous key range, ordered by index.
//! - `meta`: key = group id (u64 BE) ++ tag byte, one record per tag (see [`Tag`]).
//!
//! Records are encoded with raft-rs's own protobuf types: this is our own disk, not network
//! input, and the messages involved are not recursive.

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use routing::GroupId;

use crate::error::{CorruptReason, StorageError};

/// Name of the keyspace holding log entries.
pub(crate) const LOG_KEYSPACE: &str = "log";
/// Name of the keyspace holding per-group records.
pub(crate) const META_KEYSPACE: &str = "meta";

/// Length of a `log` key: group id and index.
pub(crate) const LOG_KEY_LEN: usize = 16;
/// Length of a `meta` key: group id and tag.
pub(crate) const META_KEY_LEN: usize = 9;

pub(crate) type LogKey = [u8; LOG_KEY_LEN];
pub(crate) type MetaKey = [u8; META_KEY_LEN];

pub(crate) fn log_key(group: GroupId, index: u64) -> LogKey {
    let mut k = [0u8; LOG_KEY_LEN];
    let (g, i) = k.split_at_mut(8);
    g.copy_from_slice(&group.get().to_be_bytes());
    i.copy_from_slice(&index.to_be_bytes());
    k
}

/// Reads a big-endian u64 off the front of `b`, and the bytes after it; `None` if `b` is
/// shorter than 8 bytes.
fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (word, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*word), rest))
}

/// Splits a `log` key; `None` if it has the wrong length.
pub(crate) fn parse_log_key(key: &[u8]) -> Option<(GroupId, u64)> {
    let (group, rest) = take_u64(key)?;
    let (index, rest) = take_u64(rest)?;
    rest.is_empty().then_some((GroupId(group), index))
}

/// The per-group records of the `meta` keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tag {
    /// first index (u64 BE) ++ truncated index (u64 BE) ++ truncated term (u64 BE). Every
    /// existing group has one: it is the group's existence marker. Reads never go below the
    /// first index.
    Bounds = 1,
    /// protobuf `HardState`.
    HardState = 2,
    /// protobuf `ConfState`.
    ConfState = 3,
    /// applied index, u64 BE.
    Applied = 4,
    /// protobuf `SnapshotMetadata` of the stored snapshot.
    SnapshotMeta = 5,
    /// raw data of the stored snapshot.
    SnapshotData = 6,
}

impl Tag {
    pub(crate) const ALL: [Tag; 6] = [
        Tag::Bounds,
        Tag::HardState,
        Tag::ConfState,
        Tag::Applied,
        Tag::SnapshotMeta,
        Tag::SnapshotData,
    ];

    fn from_byte(b: u8) -> Option<Tag> {
        Tag::ALL.into_iter().find(|t| *t as u8 == b)
    }
}

pub(crate) fn meta_key(group: GroupId, tag: Tag) -> MetaKey {
    let mut k = [tag as u8; META_KEY_LEN];
    let (g, _tag) = k.split_at_mut(8);
    g.copy_from_slice(&group.get().to_be_bytes());
    k
}

/// Splits a `meta` key into its group and tag (`Err(raw tag byte)` if the tag is unknown);
/// `None` if the length is wrong.
pub(crate) fn parse_meta_key(key: &[u8]) -> Option<(GroupId, Result<Tag, u8>)> {
    let (group, rest) = take_u64(key)?;
    let [tag] = rest else {
        return None;
    };
    Some((GroupId(group), Tag::from_byte(*tag).ok_or(*tag)))
}

/// Where a group's log starts, and the (index, term) of the last log reset (snapshot install).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) first_index: u64,
    pub(crate) trunc_index: u64,
    pub(crate) trunc_term: u64,
}

impl Bounds {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24);
        v.extend_from_slice(&self.first_index.to_be_bytes());
        v.extend_from_slice(&self.trunc_index.to_be_bytes());
        v.extend_from_slice(&self.trunc_term.to_be_bytes());
        v
    }

    pub(crate) fn decode(group: GroupId, v: &[u8]) -> Result<Bounds, StorageError> {
        let corrupt = |reason| StorageError::CorruptRecord {
            group,
            index: None,
            record: "bounds",
            reason,
        };
        let words = take_u64(v).and_then(|(first_index, rest)| {
            let (trunc_index, rest) = take_u64(rest)?;
            let (trunc_term, rest) = take_u64(rest)?;
            rest.is_empty().then_some(Bounds {
                first_index,
                trunc_index,
                trunc_term,
            })
        });
        let bounds = words.ok_or_else(|| {
            corrupt(CorruptReason::ValueLength {
                len: v.len(),
                expected: 24,
            })
        })?;
        if bounds.first_index == 0 || bounds.trunc_index >= bounds.first_index {
            return Err(corrupt(CorruptReason::ImpossibleBounds {
                first_index: bounds.first_index,
                trunc_index: bounds.trunc_index,
            }));
        }
        Ok(bounds)
    }
}

pub(crate) fn encode_u64(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub(crate) fn decode_u64(
    group: GroupId,
    record: &'static str,
    v: &[u8],
) -> Result<u64, StorageError> {
    let b: [u8; 8] = v.try_into().map_err(|_| StorageError::CorruptRecord {
        group,
        index: None,
        record,
        reason: CorruptReason::ValueLength {
            len: v.len(),
            expected: 8,
        },
    })?;
    Ok(u64::from_be_bytes(b))
}

/// Encodes a protobuf message. These messages have no required fields, so encoding cannot
/// fail. `write_to_bytes` sizes the message once and writes into an exact buffer;
/// `write_to_vec` after a `compute_size` sized it twice and went through the growable-`Vec`
/// writer, twice the instructions per entry.
pub(crate) fn encode_pb<M: protobuf::Message>(m: &M) -> Vec<u8> {
    // Only an uninitialized message fails to encode, which proto3 messages never are.
    m.write_to_bytes().unwrap_or_default()
}

fn decode_pb<M: protobuf::Message>(
    group: GroupId,
    index: Option<u64>,
    record: &'static str,
    v: &[u8],
) -> Result<M, StorageError> {
    M::parse_from_bytes(v).map_err(|source| StorageError::CorruptRecord {
        group,
        index,
        record,
        reason: CorruptReason::Decode { source },
    })
}

/// Decodes a log entry and checks that it carries the index its key says.
pub(crate) fn decode_entry(group: GroupId, index: u64, v: &[u8]) -> Result<Entry, StorageError> {
    let e: Entry = decode_pb(group, Some(index), "entry", v)?;
    if e.index != index {
        return Err(StorageError::CorruptRecord {
            group,
            index: Some(index),
            record: "entry",
            reason: CorruptReason::IndexMismatch { carried: e.index },
        });
    }
    Ok(e)
}

pub(crate) fn decode_hard_state(group: GroupId, v: &[u8]) -> Result<HardState, StorageError> {
    decode_pb(group, None, "hard state", v)
}

pub(crate) fn decode_conf_state(group: GroupId, v: &[u8]) -> Result<ConfState, StorageError> {
    decode_pb(group, None, "conf state", v)
}

pub(crate) fn decode_snapshot_meta(
    group: GroupId,
    v: &[u8],
) -> Result<SnapshotMetadata, StorageError> {
    decode_pb(group, None, "snapshot metadata", v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_order_by_group_then_index() {
        let a = log_key(GroupId(1), u64::MAX);
        let b = log_key(GroupId(2), 0);
        let c = log_key(GroupId(2), 256);
        assert!(a < b && b < c);
        assert_eq!(parse_log_key(&c), Some((GroupId(2), 256)));
        assert_eq!(parse_log_key(&c[..15]), None);
    }

    #[test]
    fn meta_keys_round_trip_and_reject_unknown_tags() {
        for tag in Tag::ALL {
            let k = meta_key(GroupId(7), tag);
            assert_eq!(parse_meta_key(&k), Some((GroupId(7), Ok(tag))));
        }
        let mut k = meta_key(GroupId(7), Tag::Bounds);
        k[8] = 99;
        assert_eq!(parse_meta_key(&k), Some((GroupId(7), Err(99))));
    }

    #[test]
    fn keys_of_the_wrong_length_do_not_parse() {
        let long = [log_key(GroupId(1), 2).as_slice(), &[0]].concat();
        assert_eq!(parse_log_key(&long), None);
        assert_eq!(parse_log_key(&[]), None);
        let k = meta_key(GroupId(1), Tag::Applied);
        assert_eq!(parse_meta_key(&k[..8]), None);
        assert_eq!(parse_meta_key(&[k.as_slice(), &[1]].concat()), None);
        let b = Bounds {
            first_index: 1,
            trunc_index: 0,
            trunc_term: 0,
        };
        assert!(Bounds::decode(GroupId(1), &[b.encode(), vec![0]].concat()).is_err());
    }

    #[test]
    fn bounds_round_trip_and_reject_nonsense() {
        let b = Bounds {
            first_index: 10,
            trunc_index: 9,
            trunc_term: 3,
        };
        assert_eq!(Bounds::decode(GroupId(1), &b.encode()).unwrap(), b);
        assert!(Bounds::decode(GroupId(1), &[0; 23]).is_err());
        let bad = Bounds {
            first_index: 5,
            trunc_index: 5,
            trunc_term: 1,
        };
        assert!(Bounds::decode(GroupId(1), &bad.encode()).is_err());
    }

    #[test]
    fn entry_under_the_wrong_key_is_corrupt() {
        let e = Entry {
            index: 4,
            term: 2,
            ..Default::default()
        };
        let v = encode_pb(&e);
        assert_eq!(decode_entry(GroupId(1), 4, &v).unwrap(), e);
        let err = decode_entry(GroupId(1), 5, &v).unwrap_err();
        assert!(
            matches!(err, StorageError::CorruptRecord { index: Some(5), .. }),
            "{err}"
        );
        let err = decode_entry(GroupId(1), 4, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::CorruptRecord {
                    record: "entry",
                    ..
                }
            ),
            "{err}"
        );
    }
}
