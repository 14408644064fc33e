//! Conf-change entries are decoded with prost, never with the `protobuf` 2.x crate: their bytes
//! arrive from peers inside log entries (RUSTSEC-2024-0437). The prost mirror below has the same
//! field numbers as raft-rs's `eraftpb.ConfChangeV2`, so either encoder's bytes decode here.

use prost::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};

#[derive(Clone, PartialEq, prost::Message)]
struct WireConfChangeSingle {
    #[prost(int32, tag = "1")]
    change_type: i32,
    #[prost(uint64, tag = "2")]
    node_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireConfChangeV2 {
    #[prost(int32, tag = "1")]
    transition: i32,
    #[prost(message, repeated, tag = "2")]
    changes: Vec<WireConfChangeSingle>,
    #[prost(bytes = "vec", tag = "3")]
    context: Vec<u8>,
}

/// The legacy single conf change (`eraftpb.ConfChange`), accepted when decoding.
#[derive(Clone, PartialEq, prost::Message)]
struct WireConfChangeV1 {
    #[prost(int32, tag = "2")]
    change_type: i32,
    #[prost(uint64, tag = "3")]
    node_id: u64,
    #[prost(bytes = "vec", tag = "4")]
    context: Vec<u8>,
    #[prost(uint64, tag = "1")]
    id: u64,
}

/// A conf-change entry that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ConfChangeDecodeError {
    /// The bytes are not a conf change.
    #[error("conf change entry is malformed: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A field holds a value raft does not define.
    #[error("conf change entry has unknown {field} value {value}")]
    UnknownValue {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: i32,
    },
}

fn change_type(value: i32) -> Result<ConfChangeType, ConfChangeDecodeError> {
    match value {
        0 => Ok(ConfChangeType::AddNode),
        1 => Ok(ConfChangeType::RemoveNode),
        2 => Ok(ConfChangeType::AddLearnerNode),
        _ => Err(ConfChangeDecodeError::UnknownValue {
            field: "change_type",
            value,
        }),
    }
}

/// Decodes a committed `EntryConfChangeV2` entry's data.
pub(crate) fn decode_v2(bytes: &[u8]) -> Result<ConfChangeV2, ConfChangeDecodeError> {
    let wire = WireConfChangeV2::decode(bytes)?;
    let transition = match wire.transition {
        0 => ConfChangeTransition::Auto,
        1 => ConfChangeTransition::Implicit,
        2 => ConfChangeTransition::Explicit,
        value => {
            return Err(ConfChangeDecodeError::UnknownValue {
                field: "transition",
                value,
            });
        }
    };
    let mut cc = ConfChangeV2::default();
    cc.set_transition(transition);
    for change in wire.changes {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type(change.change_type)?);
        single.node_id = change.node_id;
        cc.mut_changes().push(single);
    }
    cc.set_context(wire.context.into());
    Ok(cc)
}

/// Decodes a committed legacy `EntryConfChange` entry's data, as a V2 change.
pub(crate) fn decode_v1(bytes: &[u8]) -> Result<ConfChangeV2, ConfChangeDecodeError> {
    let wire = WireConfChangeV1::decode(bytes)?;
    let mut single = ConfChangeSingle::default();
    single.set_change_type(change_type(wire.change_type)?);
    single.node_id = wire.node_id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc.set_context(wire.context.into());
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;

    fn sample() -> ConfChangeV2 {
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Explicit);
        for (t, id) in [
            (ConfChangeType::AddNode, 4),
            (ConfChangeType::AddLearnerNode, 5),
            (ConfChangeType::RemoveNode, 1),
        ] {
            let mut s = ConfChangeSingle::default();
            s.set_change_type(t);
            s.node_id = id;
            cc.mut_changes().push(s);
        }
        cc.set_context(b"ctx".to_vec().into());
        cc
    }

    #[test]
    fn prost_mirror_reads_what_raft_rs_writes() {
        let cc = sample();
        let protobuf_bytes = cc.write_to_bytes().unwrap();
        assert_eq!(decode_v2(&protobuf_bytes).unwrap(), cc);
    }

    #[test]
    fn garbage_is_a_typed_error_not_a_panic() {
        assert!(decode_v2(&[0xff, 0xff, 0xff]).is_err());
        assert!(matches!(
            decode_v2(
                &WireConfChangeV2 {
                    transition: 9,
                    changes: vec![],
                    context: vec![]
                }
                .encode_to_vec()
            ),
            Err(ConfChangeDecodeError::UnknownValue {
                field: "transition",
                ..
            })
        ));
    }
}
