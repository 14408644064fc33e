//! Table behaviour and property tests (hash vectors live beside the hash in `hash.rs`).

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;

use crate::wire::{GroupMsg, TableMsg};
use crate::*;

fn nodes(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

/// Checks every invariant `uniform` promises; returns a description of the first violation.
fn check_uniform_fairness(
    table: &RoutingTable,
    vshards: u32,
    groups: u64,
    node_list: &[NodeId],
    replication: usize,
) -> Result<(), String> {
    if table.vshard_count() != vshards {
        return Err(format!("vshard_count {}", table.vshard_count()));
    }
    if table.groups().count() as u64 != groups {
        return Err("wrong group count".into());
    }
    let mut per_group: BTreeMap<GroupId, usize> = table.groups().map(|(g, _)| (g, 0)).collect();
    for v in 0..vshards {
        let g = table
            .group_of_vshard(VShardId(v))
            .map_err(|e| e.to_string())?;
        *per_group.get_mut(&g).ok_or(format!("{g} unknown"))? += 1;
    }
    let min = per_group.values().min().copied().unwrap_or(0);
    let max = per_group.values().max().copied().unwrap_or(0);
    if max - min > 1 {
        return Err(format!("vShards per group range {min}..={max}"));
    }
    let cap = (groups as usize * replication).div_ceil(node_list.len());
    let leader_cap = (groups as usize).div_ceil(node_list.len());
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (g, p) in table.groups() {
        if p.replicas.len() != replication {
            return Err(format!("{g} has {} replicas", p.replicas.len()));
        }
        let distinct: std::collections::BTreeSet<_> = p.replicas.iter().collect();
        if distinct.len() != p.replicas.len() {
            return Err(format!("{g} has a duplicate replica: {:?}", p.replicas));
        }
        if p.leader_hint != p.replicas.first().copied() {
            return Err(format!("{g} leader hint is not the first replica"));
        }
        for n in &p.replicas {
            *per_node.entry(*n).or_default() += 1;
        }
        *leaders.entry(p.replicas[0]).or_default() += 1;
    }
    if let Some((n, c)) = per_node.iter().find(|(_, c)| **c > cap) {
        return Err(format!("{n} holds {c} replicas, cap {cap}"));
    }
    if let Some((n, c)) = leaders.iter().find(|(_, c)| **c > leader_cap) {
        return Err(format!("{n} leads {c} groups, cap {leader_cap}"));
    }
    Ok(())
}

#[test]
fn uniform_spreads_vshards_replicas_and_leaders_evenly() {
    let ns = nodes(5);
    let table = RoutingTable::uniform(1024, 10, &ns, 3).unwrap();
    check_uniform_fairness(&table, 1024, 10, &ns, 3).unwrap();
    assert_eq!(table.version(), 1);
    assert_eq!(table.nodes(), ns.iter().copied().collect());
    // vShards form contiguous runs.
    let of_first = table.vshards_of_group(GroupId(1));
    assert_eq!(of_first.first(), Some(&VShardId(0)));
    assert_eq!(
        of_first.last().map(|v| v.get() + 1),
        Some(of_first.len() as u32)
    );
    // 10 groups * 3 replicas over 5 nodes: exactly 6 each.
    for n in &ns {
        assert_eq!(table.groups_on_node(*n).len(), 6);
    }
}

#[test]
fn uniform_rejects_invalid_parameters() {
    let ns = nodes(3);
    assert_eq!(
        RoutingTable::uniform(0, 1, &ns, 1),
        Err(RoutingError::ZeroVShards)
    );
    assert!(matches!(
        RoutingTable::uniform(MAX_VSHARDS + 1, 1, &ns, 1),
        Err(RoutingError::TooManyVShards { .. })
    ));
    assert_eq!(
        RoutingTable::uniform(8, 0, &ns, 1),
        Err(RoutingError::ZeroGroups)
    );
    assert_eq!(
        RoutingTable::uniform(8, 1, &ns, 0),
        Err(RoutingError::InvalidReplication {
            replication: 0,
            nodes: 3
        })
    );
    assert_eq!(
        RoutingTable::uniform(8, 1, &ns, 4),
        Err(RoutingError::InvalidReplication {
            replication: 4,
            nodes: 3
        })
    );
    assert_eq!(
        RoutingTable::uniform(8, 1, &[], 1),
        Err(RoutingError::InvalidReplication {
            replication: 1,
            nodes: 0
        })
    );
    assert_eq!(
        RoutingTable::uniform(8, 1, &[NodeId(1), NodeId(0)], 1),
        Err(RoutingError::ReservedNodeId)
    );
    assert_eq!(
        RoutingTable::uniform(8, 1, &[NodeId(2), NodeId(2)], 1),
        Err(RoutingError::DuplicateNode { node: NodeId(2) })
    );
}

#[test]
fn key_routing_goes_through_the_pinned_hash() {
    let table = RoutingTable::uniform(DEFAULT_VSHARDS, 4, &nodes(3), 3).unwrap();
    for key in [&b""[..], b"a", b"user:42", &[0xff; 100]] {
        let v = table.vshard_of_key(key);
        assert_eq!(v, vshard_for_key(key, DEFAULT_VSHARDS));
        assert_eq!(table.group_for_key(key), table.group_of_vshard(v).unwrap());
    }
    assert_eq!(
        table.group_of_vshard(VShardId(DEFAULT_VSHARDS)),
        Err(RoutingError::VShardOutOfRange {
            vshard: VShardId(DEFAULT_VSHARDS),
            count: DEFAULT_VSHARDS
        })
    );
}

#[test]
fn leader_hints_change_without_bumping_the_version() {
    let mut table = RoutingTable::uniform(16, 2, &nodes(3), 2).unwrap();
    let g = GroupId(1);
    let replicas = table.replicas(g).unwrap().to_vec();
    table.set_leader_hint(g, Some(replicas[1])).unwrap();
    assert_eq!(table.leader_hint(g), Some(replicas[1]));
    table.set_leader_hint(g, None).unwrap();
    assert_eq!(table.leader_hint(g), None);
    assert_eq!(table.version(), 1);

    let outsider = nodes(3)
        .into_iter()
        .find(|n| !replicas.contains(n))
        .unwrap();
    assert_eq!(
        table.set_leader_hint(g, Some(outsider)),
        Err(RoutingError::LeaderNotReplica {
            group: g,
            node: outsider
        })
    );
    assert_eq!(
        table.set_leader_hint(GroupId(9), None),
        Err(RoutingError::UnknownGroup { group: GroupId(9) })
    );
}

#[test]
fn every_mapping_change_bumps_the_version_once() {
    let mut table = RoutingTable::uniform(8, 1, &nodes(3), 3).unwrap();
    table
        .add_group(GroupId(2), vec![NodeId(3), NodeId(1)])
        .unwrap();
    assert_eq!(table.version(), 2);
    assert_eq!(table.leader_hint(GroupId(2)), Some(NodeId(3)));
    assert_eq!(table.vshards_of_group(GroupId(2)), vec![]);

    table.assign_vshard(VShardId(3), GroupId(2)).unwrap();
    assert_eq!(table.version(), 3);
    table.assign_vshard(VShardId(3), GroupId(2)).unwrap();
    assert_eq!(
        table.version(),
        3,
        "assigning to the current owner changes nothing"
    );
    assert_eq!(table.vshards_of_group(GroupId(2)), vec![VShardId(3)]);

    table
        .set_replicas(GroupId(2), vec![NodeId(1), NodeId(2)])
        .unwrap();
    assert_eq!(table.version(), 4);
    assert_eq!(
        table.leader_hint(GroupId(2)),
        None,
        "the old leader left the group"
    );
    table.set_leader_hint(GroupId(2), Some(NodeId(2))).unwrap();
    table
        .set_replicas(GroupId(2), vec![NodeId(2), NodeId(3)])
        .unwrap();
    assert_eq!(
        table.leader_hint(GroupId(2)),
        Some(NodeId(2)),
        "a leader that stays is kept"
    );
    assert_eq!(table.version(), 5);
    assert_eq!(table.groups_on_node(NodeId(1)), vec![GroupId(1)]);

    assert_eq!(
        table.remove_group(GroupId(2)),
        Err(RoutingError::GroupStillOwnsVShards {
            group: GroupId(2),
            vshards: 1
        })
    );
    table.assign_vshard(VShardId(3), GroupId(1)).unwrap();
    assert_eq!(table.version(), 6);
    let removed = table.remove_group(GroupId(2)).unwrap();
    assert_eq!(removed.replicas, vec![NodeId(2), NodeId(3)]);
    assert_eq!(table.version(), 7);
    assert!(table.placement(GroupId(2)).is_none());
}

#[test]
fn mutations_reject_invalid_input_without_changing_the_table() {
    let mut table = RoutingTable::uniform(8, 1, &nodes(3), 3).unwrap();
    let before = table.clone();
    assert_eq!(
        table.add_group(GroupId(0), nodes(1)),
        Err(RoutingError::ReservedGroupId)
    );
    assert_eq!(
        table.add_group(GroupId(1), nodes(1)),
        Err(RoutingError::GroupExists { group: GroupId(1) })
    );
    assert_eq!(
        table.add_group(GroupId(2), vec![]),
        Err(RoutingError::EmptyReplicas { group: GroupId(2) })
    );
    assert_eq!(
        table.add_group(GroupId(2), vec![NodeId(0)]),
        Err(RoutingError::ReservedNodeId)
    );
    assert_eq!(
        table.set_replicas(GroupId(1), vec![NodeId(1), NodeId(1)]),
        Err(RoutingError::DuplicateNode { node: NodeId(1) })
    );
    assert_eq!(
        table.set_replicas(GroupId(5), nodes(1)),
        Err(RoutingError::UnknownGroup { group: GroupId(5) })
    );
    assert_eq!(
        table.assign_vshard(VShardId(8), GroupId(1)),
        Err(RoutingError::VShardOutOfRange {
            vshard: VShardId(8),
            count: 8
        })
    );
    assert_eq!(
        table.assign_vshard(VShardId(0), GroupId(5)),
        Err(RoutingError::UnknownGroup { group: GroupId(5) })
    );
    assert_eq!(
        table.remove_group(GroupId(5)),
        Err(RoutingError::UnknownGroup { group: GroupId(5) })
    );
    assert_eq!(table, before);
}

fn valid_msg() -> TableMsg {
    TableMsg {
        version: 3,
        vshard_count: 2,
        vshard_groups: vec![1, 2],
        groups: vec![
            GroupMsg {
                id: 1,
                replicas: vec![1, 2],
                leader_hint: Some(2),
            },
            GroupMsg {
                id: 2,
                replicas: vec![3],
                leader_hint: None,
            },
        ],
        members: Vec::new(),
        revoked_nodes: Vec::new(),
        revoked_serials: Vec::new(),
    }
}

fn decode_msg(msg: &TableMsg) -> Result<RoutingTable, RoutingError> {
    RoutingTable::decode(&msg.encode_to_vec())
}

#[test]
fn decode_accepts_a_valid_message() {
    let table = decode_msg(&valid_msg()).unwrap();
    assert_eq!(table.version(), 3);
    assert_eq!(table.group_of_vshard(VShardId(1)), Ok(GroupId(2)));
    assert_eq!(table.leader_hint(GroupId(1)), Some(NodeId(2)));
    assert_eq!(table.leader_hint(GroupId(2)), None);
}

#[test]
fn decode_rejects_each_broken_invariant_with_its_error() {
    type Case = (fn(&mut TableMsg), RoutingError);
    let cases: Vec<Case> = vec![
        (|m| m.version = 0, RoutingError::ZeroVersion),
        (
            |m| {
                m.vshard_count = 0;
                m.vshard_groups.clear()
            },
            RoutingError::ZeroVShards,
        ),
        (
            |m| m.vshard_count = MAX_VSHARDS + 1,
            RoutingError::TooManyVShards {
                count: u64::from(MAX_VSHARDS) + 1,
                max: MAX_VSHARDS,
            },
        ),
        // A huge claimed count with few entries: rejected without allocating for the claim.
        (
            |m| m.vshard_count = MAX_VSHARDS,
            RoutingError::VShardCountMismatch {
                claimed: MAX_VSHARDS,
                entries: 2,
            },
        ),
        (
            |m| m.vshard_count = 3,
            RoutingError::VShardCountMismatch {
                claimed: 3,
                entries: 2,
            },
        ),
        (
            |m| m.vshard_groups[1] = 7,
            RoutingError::UnknownGroup { group: GroupId(7) },
        ),
        (|m| m.groups[1].id = 0, RoutingError::ReservedGroupId),
        (
            |m| m.groups[1].id = 1,
            RoutingError::GroupExists { group: GroupId(1) },
        ),
        (
            |m| m.groups[1].replicas.clear(),
            RoutingError::EmptyReplicas { group: GroupId(2) },
        ),
        (
            |m| m.groups[0].replicas[0] = 0,
            RoutingError::ReservedNodeId,
        ),
        (
            |m| m.groups[0].replicas[0] = 2,
            RoutingError::DuplicateNode { node: NodeId(2) },
        ),
        (
            |m| m.groups[1].leader_hint = Some(1),
            RoutingError::LeaderNotReplica {
                group: GroupId(2),
                node: NodeId(1),
            },
        ),
    ];
    for (i, (break_it, expected)) in cases.into_iter().enumerate() {
        let mut msg = valid_msg();
        break_it(&mut msg);
        assert_eq!(decode_msg(&msg), Err(expected), "case {i}");
    }
}

#[test]
fn decode_rejects_bytes_that_are_not_protobuf() {
    // Field 3, length-delimited, claiming a 2^35-byte payload that is not there.
    let bytes = [0x1a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
    assert!(matches!(
        RoutingTable::decode(&bytes),
        Err(RoutingError::Malformed(_))
    ));
}

fn arb_params() -> impl Strategy<Value = (u32, u64, u64, usize)> {
    (1u32..=2048, 1u64..=64, 1u64..=12)
        .prop_flat_map(|(v, g, n)| (Just(v), Just(g), Just(n), 1usize..=n as usize))
}

proptest! {
    #[test]
    fn uniform_is_fair_for_any_parameters((v, g, n, r) in arb_params()) {
        let ns = nodes(n);
        let table = RoutingTable::uniform(v, g, &ns, r).unwrap();
        if let Err(e) = check_uniform_fairness(&table, v, g, &ns, r) {
            return Err(TestCaseError::fail(e));
        }
    }

    #[test]
    fn encode_decode_round_trips(
        (v, g, n, r) in arb_params(),
        moves in proptest::collection::vec((any::<u32>(), 1u64..=64), 0..8),
        hints in proptest::collection::vec((1u64..=64, any::<usize>(), any::<bool>()), 0..8),
    ) {
        let mut table = RoutingTable::uniform(v, g, &nodes(n), r).unwrap();
        for (vs, grp) in moves {
            let _ = table.assign_vshard(VShardId(vs % v), GroupId(grp));
        }
        for (grp, pick, some) in hints {
            if let Some(replicas) = table.replicas(GroupId(grp)).map(<[NodeId]>::to_vec) {
                let hint = some.then(|| replicas[pick % replicas.len()]);
                table.set_leader_hint(GroupId(grp), hint).unwrap();
            }
        }
        let decoded = RoutingTable::decode(&table.encode());
        prop_assert_eq!(decoded, Ok(table));
    }

    #[test]
    fn decode_of_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(table) = RoutingTable::decode(&bytes) {
            // Anything accepted must be self-consistent.
            prop_assert_eq!(RoutingTable::decode(&table.encode()), Ok(table));
        }
    }

    #[test]
    fn decode_of_mutated_valid_encodings_never_panics(
        (v, g, n, r) in (1u32..=64, 1u64..=8, 1u64..=5).prop_flat_map(|(v, g, n)| {
            (Just(v), Just(g), Just(n), 1usize..=n as usize)
        }),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = RoutingTable::uniform(v, g, &nodes(n), r).unwrap().encode();
        for (at, xor) in flips {
            let len = bytes.len();
            bytes[at % len] ^= xor;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        if let Ok(table) = RoutingTable::decode(&bytes) {
            prop_assert_eq!(RoutingTable::decode(&table.encode()), Ok(table));
        }
    }
}
