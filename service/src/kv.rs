//! A small replicated key-value state machine: what `pontoon demo`, `pontoon node` and the
//! fault tests run on Pontoon, and a model for a database's own [`StateMachine`].
//!
//! Commands and snapshots are prost messages: they arrive from peers and clients, so decoding
//! them must reject garbage with an error instead of panicking. A malformed command is not a
//! replica failure: every replica rejects it the same way and answers with an error response.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use coordinator::{StateMachine, StateMachineError, VShardScope};
use prost::Message as _;
use routing::GroupId;

/// One operation on the map.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Set `key` to `value` only if it currently holds `expected` (`None`: absent).
    CompareAndSet {
        /// The key.
        key: Vec<u8>,
        /// What it must hold now.
        expected: Option<Vec<u8>>,
        /// What to set.
        value: Vec<u8>,
    },
}

/// What applying a [`KvCommand`] answered.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KvResponse {
    /// The command took effect; the key's previous value.
    Done {
        /// The value before the command.
        previous: Option<Vec<u8>>,
    },
    /// A compare-and-set found another value; nothing changed.
    Mismatch {
        /// The value found.
        current: Option<Vec<u8>>,
    },
    /// The command bytes were malformed; nothing changed.
    Rejected,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireCommand {
    /// 1 put, 2 delete, 3 compare-and-set.
    #[prost(uint32, tag = "1")]
    op: u32,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    value: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "4")]
    expected: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireResponse {
    /// 1 done, 2 mismatch, 3 rejected.
    #[prost(uint32, tag = "1")]
    outcome: u32,
    #[prost(bytes = "vec", optional, tag = "2")]
    value: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WirePair {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireSnapshot {
    #[prost(message, repeated, tag = "1")]
    pairs: Vec<WirePair>,
}

/// Malformed command, response or snapshot bytes.
#[derive(Debug, thiserror::Error)]
#[error("malformed key-value {what}: {reason}")]
pub struct KvDecodeError {
    what: &'static str,
    reason: String,
}

impl KvCommand {
    /// The command's bytes, as proposed.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self {
            KvCommand::Put { key, value } => WireCommand {
                op: 1,
                key: key.clone(),
                value: value.clone(),
                expected: None,
            },
            KvCommand::Delete { key } => WireCommand {
                op: 2,
                key: key.clone(),
                value: Vec::new(),
                expected: None,
            },
            KvCommand::CompareAndSet {
                key,
                expected,
                value,
            } => WireCommand {
                op: 3,
                key: key.clone(),
                value: value.clone(),
                expected: expected.clone(),
            },
        };
        wire.encode_to_vec()
    }

    /// Reads a command.
    ///
    /// # Errors
    /// [`KvDecodeError`] for bytes that are not a command.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvDecodeError> {
        let wire = WireCommand::decode(bytes).map_err(|e| KvDecodeError {
            what: "command",
            reason: e.to_string(),
        })?;
        match wire.op {
            1 => Ok(KvCommand::Put {
                key: wire.key,
                value: wire.value,
            }),
            2 => Ok(KvCommand::Delete { key: wire.key }),
            3 => Ok(KvCommand::CompareAndSet {
                key: wire.key,
                expected: wire.expected,
                value: wire.value,
            }),
            op => Err(KvDecodeError {
                what: "command",
                reason: format!("unknown op {op}"),
            }),
        }
    }

    /// The key the command touches (it routes the command to its group).
    #[must_use]
    pub fn key(&self) -> &[u8] {
        match self {
            KvCommand::Put { key, .. }
            | KvCommand::Delete { key }
            | KvCommand::CompareAndSet { key, .. } => key,
        }
    }
}

impl KvResponse {
    /// The response's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self {
            KvResponse::Done { previous } => WireResponse {
                outcome: 1,
                value: previous.clone(),
            },
            KvResponse::Mismatch { current } => WireResponse {
                outcome: 2,
                value: current.clone(),
            },
            KvResponse::Rejected => WireResponse {
                outcome: 3,
                value: None,
            },
        };
        wire.encode_to_vec()
    }

    /// Reads a response.
    ///
    /// # Errors
    /// [`KvDecodeError`] for bytes that are not a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvDecodeError> {
        let wire = WireResponse::decode(bytes).map_err(|e| KvDecodeError {
            what: "response",
            reason: e.to_string(),
        })?;
        match wire.outcome {
            1 => Ok(KvResponse::Done {
                previous: wire.value,
            }),
            2 => Ok(KvResponse::Mismatch {
                current: wire.value,
            }),
            3 => Ok(KvResponse::Rejected),
            other => Err(KvDecodeError {
                what: "response",
                reason: format!("unknown outcome {other}"),
            }),
        }
    }
}

type Maps = HashMap<GroupId, BTreeMap<Vec<u8>, Vec<u8>>>;

/// The replicated map. Clone it before handing it to a `Node`: clones share the data, so the
/// clone you keep serves reads (after `Node::read_index` for linearizable ones).
#[derive(Clone, Default, Debug)]
pub struct KvStateMachine {
    maps: Arc<RwLock<Maps>>,
}

impl KvStateMachine {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value of `key` in `group`, as this replica has applied it.
    #[must_use]
    pub fn get(&self, group: GroupId, key: &[u8]) -> Option<Vec<u8>> {
        self.read().get(&group)?.get(key).cloned()
    }

    /// Number of keys in `group`.
    #[must_use]
    pub fn len(&self, group: GroupId) -> usize {
        self.read().get(&group).map_or(0, BTreeMap::len)
    }

    /// Whether `group` holds no key.
    #[must_use]
    pub fn is_empty(&self, group: GroupId) -> bool {
        self.len(group) == 0
    }
}

/// A snapshot as [`KvStateMachine::snapshot`] wrote it.
fn decode_snapshot(snapshot: &[u8]) -> Result<WireSnapshot, KvDecodeError> {
    WireSnapshot::decode(snapshot).map_err(|e| KvDecodeError {
        what: "snapshot",
        reason: e.to_string(),
    })
}

impl StateMachine for KvStateMachine {
    /// A snapshot a peer sends is decoded before raft installs it: bytes this map could not
    /// restore are refused instead of setting the replica aside.
    fn check_snapshot(_: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        decode_snapshot(snapshot)?;
        Ok(())
    }

    fn apply(
        &mut self,
        group: GroupId,
        _index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError> {
        let Ok(command) = KvCommand::decode(command) else {
            return Ok(KvResponse::Rejected.encode());
        };
        let mut maps = self.write();
        let map = maps.entry(group).or_default();
        let response = match command {
            KvCommand::Put { key, value } => KvResponse::Done {
                previous: map.insert(key, value),
            },
            KvCommand::Delete { key } => KvResponse::Done {
                previous: map.remove(&key),
            },
            KvCommand::CompareAndSet {
                key,
                expected,
                value,
            } => {
                let current = map.get(&key).cloned();
                if current == expected {
                    KvResponse::Done {
                        previous: map.insert(key, value),
                    }
                } else {
                    KvResponse::Mismatch { current }
                }
            }
        };
        Ok(response.encode())
    }

    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        let maps = self.read();
        let pairs = maps
            .get(&group)
            .into_iter()
            .flatten()
            .map(|(k, v)| WirePair {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        Ok(WireSnapshot { pairs }.encode_to_vec())
    }

    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let wire = decode_snapshot(snapshot)?;
        let map = wire.pairs.into_iter().map(|p| (p.key, p.value)).collect();
        self.write().insert(group, map);
        Ok(())
    }

    fn export_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
    ) -> Result<Vec<u8>, StateMachineError> {
        let maps = self.read();
        let pairs = maps
            .get(&group)
            .into_iter()
            .flatten()
            .filter(|(k, _)| scope.contains(k))
            .map(|(k, v)| WirePair {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        Ok(WireSnapshot { pairs }.encode_to_vec())
    }

    fn import_vshard(
        &mut self,
        group: GroupId,
        scope: VShardScope,
        data: &[u8],
    ) -> Result<(), StateMachineError> {
        let wire = WireSnapshot::decode(data).map_err(|e| KvDecodeError {
            what: "vShard export",
            reason: e.to_string(),
        })?;
        // Checked before anything changes: every replica rejects the same bytes the same way,
        // and a key of another vShard would be unreachable here (or shadow the real one).
        if let Some(stray) = wire.pairs.iter().find(|p| !scope.contains(&p.key)) {
            return Err(KvDecodeError {
                what: "vShard export",
                reason: format!(
                    "key {:?} does not belong to {}",
                    String::from_utf8_lossy(&stray.key),
                    scope.vshard
                ),
            }
            .into());
        }
        let mut maps = self.write();
        let map = maps.entry(group).or_default();
        // Replace, not merge: importing twice (a retried step) leaves exactly the export.
        map.retain(|k, _| !scope.contains(k));
        map.extend(wire.pairs.into_iter().map(|p| (p.key, p.value)));
        Ok(())
    }

    fn drop_vshard(&mut self, group: GroupId, scope: VShardScope) -> Result<(), StateMachineError> {
        if let Some(map) = self.write().get_mut(&group) {
            map.retain(|k, _| !scope.contains(k));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_responses_round_trip() {
        for c in [
            KvCommand::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            KvCommand::Delete { key: b"k".to_vec() },
            KvCommand::CompareAndSet {
                key: b"k".to_vec(),
                expected: None,
                value: b"v".to_vec(),
            },
            KvCommand::CompareAndSet {
                key: b"k".to_vec(),
                expected: Some(vec![]),
                value: b"v".to_vec(),
            },
        ] {
            assert_eq!(KvCommand::decode(&c.encode()).unwrap(), c);
        }
        for r in [
            KvResponse::Done {
                previous: Some(b"x".to_vec()),
            },
            KvResponse::Mismatch { current: None },
            KvResponse::Rejected,
        ] {
            assert_eq!(KvResponse::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn compare_and_set_applies_only_on_a_match_and_garbage_is_rejected_not_fatal() {
        let mut sm = KvStateMachine::new();
        let g = GroupId(1);
        let cas = |expected: Option<&[u8]>, value: &[u8]| {
            KvCommand::CompareAndSet {
                key: b"k".to_vec(),
                expected: expected.map(<[u8]>::to_vec),
                value: value.to_vec(),
            }
            .encode()
        };
        let r = KvResponse::decode(&sm.apply(g, 1, &cas(None, b"a")).unwrap()).unwrap();
        assert_eq!(r, KvResponse::Done { previous: None });
        let r = KvResponse::decode(&sm.apply(g, 2, &cas(Some(b"zz"), b"b")).unwrap()).unwrap();
        assert_eq!(
            r,
            KvResponse::Mismatch {
                current: Some(b"a".to_vec())
            }
        );
        assert_eq!(sm.get(g, b"k"), Some(b"a".to_vec()));
        let r = KvResponse::decode(&sm.apply(g, 3, &[0xff, 0xff]).unwrap()).unwrap();
        assert_eq!(r, KvResponse::Rejected);
    }

    #[test]
    fn snapshots_restore_the_same_map_and_malformed_ones_are_errors() {
        let mut a = KvStateMachine::new();
        let g = GroupId(3);
        for i in 0..10u8 {
            a.apply(
                g,
                u64::from(i),
                &KvCommand::Put {
                    key: vec![i],
                    value: vec![i; 3],
                }
                .encode(),
            )
            .unwrap();
        }
        let snap = a.snapshot(g).unwrap();
        let mut b = KvStateMachine::new();
        b.restore(g, &snap).unwrap();
        assert_eq!(b.len(g), 10);
        assert_eq!(b.get(g, &[4]), Some(vec![4; 3]));
        assert!(b.restore(g, &[0x0a, 0xff]).is_err());
        b.restore(g, &[]).unwrap();
        assert!(b.is_empty(g));
        // The check a node runs before raft installs a peer's snapshot agrees with restore.
        assert!(KvStateMachine::check_snapshot(g, &snap).is_ok());
        assert!(KvStateMachine::check_snapshot(g, &[]).is_ok());
        assert!(KvStateMachine::check_snapshot(g, &[0x0a, 0xff]).is_err());
    }

    fn put(sm: &mut KvStateMachine, g: GroupId, key: &str, value: &str) {
        sm.apply(
            g,
            0,
            &KvCommand::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            }
            .encode(),
        )
        .unwrap();
    }

    /// 200 keys over 8 vShards: the scope of the vShard of `key-0`, and the keys it covers.
    fn filled(g: GroupId) -> (KvStateMachine, VShardScope, Vec<String>) {
        let mut sm = KvStateMachine::new();
        let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
        for k in &keys {
            put(&mut sm, g, k, &format!("v-{k}"));
        }
        let scope = VShardScope {
            vshard: routing::vshard_for_key(b"key-0", 8),
            vshard_count: 8,
        };
        let inside = keys
            .iter()
            .filter(|k| scope.contains(k.as_bytes()))
            .cloned()
            .collect();
        (sm, scope, inside)
    }

    #[test]
    fn a_vshard_moves_between_groups_whole_and_is_dropped_from_the_old_one() {
        let (from, to) = (GroupId(1), GroupId(2));
        let (mut sm, scope, inside) = filled(from);
        assert!(!inside.is_empty() && inside.len() < 200);
        let data = sm.export_vshard(from, scope).unwrap();
        // The new group had a stale copy of one key and a key of another vShard.
        put(&mut sm, to, "key-0", "stale");
        let outsider = (0..)
            .map(|i| format!("other-{i}"))
            .find(|k| !scope.contains(k.as_bytes()))
            .unwrap();
        put(&mut sm, to, &outsider, "kept");
        sm.import_vshard(to, scope, &data).unwrap();
        for k in &inside {
            assert_eq!(
                sm.get(to, k.as_bytes()),
                Some(format!("v-{k}").into_bytes())
            );
        }
        assert_eq!(sm.get(to, outsider.as_bytes()), Some(b"kept".to_vec()));
        // Importing again (a retried step) changes nothing.
        sm.import_vshard(to, scope, &data).unwrap();
        assert_eq!(sm.len(to), inside.len() + 1);

        sm.drop_vshard(from, scope).unwrap();
        assert_eq!(sm.len(from), 200 - inside.len());
        assert!(inside.iter().all(|k| sm.get(from, k.as_bytes()).is_none()));
        // Dropping from a group that holds nothing is fine.
        sm.drop_vshard(GroupId(9), scope).unwrap();
    }

    #[test]
    fn an_empty_export_clears_the_vshard_in_the_importing_group() {
        let (mut sm, scope, inside) = filled(GroupId(1));
        let empty = KvStateMachine::new()
            .export_vshard(GroupId(1), scope)
            .unwrap();
        sm.import_vshard(GroupId(1), scope, &empty).unwrap();
        assert_eq!(sm.len(GroupId(1)), 200 - inside.len());
    }

    #[test]
    fn malformed_or_foreign_imports_are_errors_and_change_nothing() {
        let (mut sm, scope, inside) = filled(GroupId(1));
        let before = sm.len(GroupId(1));
        for garbage in [&[0x0a, 0xff][..], &[0xff; 7], &[0x0a, 0x02, 0x0a, 0x05]] {
            assert!(sm.import_vshard(GroupId(1), scope, garbage).is_err());
        }
        // Well-formed, but holding a key of another vShard.
        let foreign = WireSnapshot {
            pairs: vec![
                WirePair {
                    key: inside[0].clone().into_bytes(),
                    value: b"new".to_vec(),
                },
                WirePair {
                    key: (0..)
                        .map(|i| format!("other-{i}"))
                        .find(|k| !scope.contains(k.as_bytes()))
                        .unwrap()
                        .into_bytes(),
                    value: b"x".to_vec(),
                },
            ],
        }
        .encode_to_vec();
        assert!(sm.import_vshard(GroupId(1), scope, &foreign).is_err());
        assert_eq!(sm.len(GroupId(1)), before);
        assert_eq!(
            sm.get(GroupId(1), inside[0].as_bytes()),
            Some(format!("v-{}", inside[0]).into_bytes())
        );
    }
}
