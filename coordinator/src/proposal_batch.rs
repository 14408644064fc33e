//! Proposals that reach one group within one cycle are batched into a single raft entry (as
//! TiKV batches commands per region): one log append, one storage key and one replicated entry
//! carry many commands, each still applied and answered on its own. A batched entry is marked
//! by its context so single commands stay plain entries.

use prost::Message as _;

/// The entry context that marks a batched entry.
pub(crate) const BATCH_CONTEXT: &[u8] = b"pontoon.batch/1";

#[derive(Clone, PartialEq, prost::Message)]
struct WireBatch {
    #[prost(bytes = "vec", repeated, tag = "1")]
    commands: Vec<Vec<u8>>,
}

pub(crate) fn encode(commands: Vec<Vec<u8>>) -> Vec<u8> {
    WireBatch { commands }.encode_to_vec()
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Vec<u8>>, prost::DecodeError> {
    WireBatch::decode(bytes).map(|b| b.commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_every_command_in_order_including_empty_ones() {
        let commands = vec![b"a".to_vec(), Vec::new(), vec![0u8; 300]];
        assert_eq!(decode(&encode(commands.clone())).unwrap(), commands);
        assert!(decode(&[0x0a, 0xff]).is_err());
    }
}
