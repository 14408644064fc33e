//! The revocation list of a [`RoutingTable`]: node ids and certificate serials that must no
//! longer be let in, replicated with the table so that every node enforces the same list (at
//! the TLS handshake and on live connections; that enforcement lives in the transport).
//!
//! # Serials
//!
//! A serial is stored in one canonical form: the big-endian magnitude of the certificate's
//! serial number with redundant leading `0x00` bytes stripped (at least one byte kept, so
//! serial 0 is `[0x00]`). The DER content bytes of an X.509 serial (`02 len <bytes>`) may carry
//! a leading `0x00` sign byte; [`canonical_serial`] removes it, so the DER bytes and the
//! minimal bytes of the same serial name one entry. Every accessor normalises its argument.
//!
//! # Revoking a member
//!
//! A node id can only be revoked once the node is neither a member nor a replica of any
//! group ([`RoutingError::RevokedNodeIsMember`]), and a revoked node cannot be added back as a
//! member or replica ([`RoutingError::NodeRevoked`]). The table thus never routes to a node it
//! also refuses to talk to. The emergency path does not need that order: revoking the node's
//! certificate serial is allowed at any time and cuts the node off at once; its replicas are
//! then moved away, it is removed, and its id is revoked for good.

// Decoders read untrusted bytes: a slice index here must never be able to panic.
#![warn(clippy::indexing_slicing)]

use std::collections::BTreeSet;

use crate::{NodeId, RoutingError, RoutingTable};

/// The most node ids, and separately the most serials, a table revokes (and a decoder
/// believes). Far above any real cluster; it bounds what a table from a peer can make a node
/// hold.
pub const MAX_REVOCATIONS: usize = 1 << 16;

/// The longest canonical serial accepted, in bytes. RFC 5280 caps conforming serials at 20
/// octets; some CAs exceed it slightly, so a little slack is left.
pub const MAX_SERIAL_LEN: usize = 32;

/// The canonical form of a certificate serial (see the [module docs](self)): leading `0x00`
/// bytes stripped, one kept for serial 0.
///
/// ```
/// use pontoon_routing::canonical_serial;
///
/// // DER content bytes of serial 0x8f01 carry a sign byte; the canonical form drops it.
/// assert_eq!(canonical_serial(&[0x00, 0x8f, 0x01])?, vec![0x8f, 0x01]);
/// assert_eq!(canonical_serial(&[0x00, 0x00])?, vec![0x00]);
/// # Ok::<(), pontoon_routing::RoutingError>(())
/// ```
///
/// # Errors
///
/// [`RoutingError::EmptySerial`] for no bytes, [`RoutingError::SerialTooLong`] for more than
/// [`MAX_SERIAL_LEN`] bytes once canonical.
pub fn canonical_serial(serial: &[u8]) -> Result<Vec<u8>, RoutingError> {
    if serial.is_empty() {
        return Err(RoutingError::EmptySerial);
    }
    let start = serial
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    let canonical = serial.get(start..).unwrap_or_default();
    if canonical.len() > MAX_SERIAL_LEN {
        return Err(RoutingError::SerialTooLong {
            len: canonical.len(),
            max: MAX_SERIAL_LEN,
        });
    }
    Ok(canonical.to_vec())
}

/// Lower-case hex of a serial, for error messages and logs.
pub(crate) fn serial_hex(serial: &[u8]) -> String {
    serial.iter().map(|b| format!("{b:02x}")).collect()
}

impl RoutingTable {
    /// Whether `node` is revoked: it must not be let in at a handshake, and a live connection
    /// from it must be closed.
    #[must_use]
    pub fn is_node_revoked(&self, node: NodeId) -> bool {
        self.revoked_nodes.contains(&node)
    }

    /// Whether the certificate serial `serial` is revoked. `serial` may be in canonical form
    /// or the DER content bytes of the serial (with a sign byte); bytes that cannot be a
    /// serial (empty, too long) are never revoked.
    #[must_use]
    pub fn is_serial_revoked(&self, serial: &[u8]) -> bool {
        canonical_serial(serial).is_ok_and(|s| self.revoked_serials.contains(&s))
    }

    /// The revoked node ids, in ascending order.
    #[must_use]
    pub fn revoked_nodes(&self) -> &BTreeSet<NodeId> {
        &self.revoked_nodes
    }

    /// The revoked certificate serials, canonical, in ascending byte order.
    #[must_use]
    pub fn revoked_serials(&self) -> &BTreeSet<Vec<u8>> {
        &self.revoked_serials
    }

    /// Revokes `node` and bumps the version (unless it was already revoked).
    ///
    /// # Errors
    ///
    /// [`RoutingError::ReservedNodeId`] for `NodeId(0)`, [`RoutingError::RevokedNodeIsMember`]
    /// while the node is a member or a replica (remove it first: see the module docs),
    /// [`RoutingError::TooManyRevocations`] when [`MAX_REVOCATIONS`] nodes are revoked.
    pub fn revoke_node(&mut self, node: NodeId) -> Result<(), RoutingError> {
        if node == NodeId(0) {
            return Err(RoutingError::ReservedNodeId);
        }
        if self.revoked_nodes.contains(&node) {
            return Ok(());
        }
        if self.nodes().contains(&node) {
            return Err(RoutingError::RevokedNodeIsMember { node });
        }
        if self.revoked_nodes.len() >= MAX_REVOCATIONS {
            return Err(RoutingError::TooManyRevocations {
                max: MAX_REVOCATIONS,
            });
        }
        self.revoked_nodes.insert(node);
        self.bump();
        Ok(())
    }

    /// Lifts the revocation of `node` (a mistake undone) and bumps the version.
    ///
    /// # Errors
    ///
    /// [`RoutingError::NodeNotRevoked`] if it is not revoked.
    pub fn unrevoke_node(&mut self, node: NodeId) -> Result<(), RoutingError> {
        if !self.revoked_nodes.remove(&node) {
            return Err(RoutingError::NodeNotRevoked { node });
        }
        self.bump();
        Ok(())
    }

    /// Revokes the certificate serial `serial` (normalised by [`canonical_serial`]) and bumps
    /// the version (unless it was already revoked). Allowed whether or not a member still
    /// presents that certificate: this is how a node is cut off in an emergency.
    ///
    /// # Errors
    ///
    /// Those of [`canonical_serial`], and [`RoutingError::TooManyRevocations`] when
    /// [`MAX_REVOCATIONS`] serials are revoked.
    pub fn revoke_serial(&mut self, serial: &[u8]) -> Result<(), RoutingError> {
        let serial = canonical_serial(serial)?;
        if self.revoked_serials.contains(&serial) {
            return Ok(());
        }
        if self.revoked_serials.len() >= MAX_REVOCATIONS {
            return Err(RoutingError::TooManyRevocations {
                max: MAX_REVOCATIONS,
            });
        }
        self.revoked_serials.insert(serial);
        self.bump();
        Ok(())
    }

    /// Lifts the revocation of a certificate serial and bumps the version.
    ///
    /// # Errors
    ///
    /// Those of [`canonical_serial`], and [`RoutingError::SerialNotRevoked`] if it is not
    /// revoked.
    pub fn unrevoke_serial(&mut self, serial: &[u8]) -> Result<(), RoutingError> {
        let serial = canonical_serial(serial)?;
        if !self.revoked_serials.remove(&serial) {
            return Err(RoutingError::SerialNotRevoked {
                serial: serial_hex(&serial),
            });
        }
        self.bump();
        Ok(())
    }

    /// Refuses a node that is revoked, before it becomes a member or a replica.
    pub(crate) fn check_not_revoked(&self, nodes: &[NodeId]) -> Result<(), RoutingError> {
        match nodes.iter().find(|n| self.revoked_nodes.contains(n)) {
            Some(&node) => Err(RoutingError::NodeRevoked { node }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::wire::TableMsg;
    use crate::{GroupId, RoutingChange};

    /// `uniform(4, 2, [1, 2], 2)` plus member 3 at `10.0.0.3:7000`, as encoded before the
    /// revocation list existed (fields 1-5 only).
    const OLD_TABLE: [u8; 57] = [
        8, 2, 16, 4, 26, 4, 1, 1, 2, 2, 34, 8, 8, 1, 18, 2, 1, 2, 24, 1, 34, 8, 8, 2, 18, 2, 2, 1,
        24, 2, 42, 2, 8, 1, 42, 2, 8, 2, 42, 17, 8, 3, 18, 13, 49, 48, 46, 48, 46, 48, 46, 51, 58,
        55, 48, 48, 48,
    ];

    fn table() -> RoutingTable {
        RoutingTable::uniform(16, 2, &[NodeId(1), NodeId(2), NodeId(3)], 2).unwrap()
    }

    #[test]
    fn a_table_encoded_before_revocations_still_decodes_and_revokes_nothing() {
        let table = RoutingTable::decode(&OLD_TABLE).unwrap();
        assert_eq!(table.version(), 2);
        assert!(table.is_member(NodeId(3)));
        assert!(table.revoked_nodes().is_empty());
        assert!(table.revoked_serials().is_empty());
        // Empty lists add no bytes: the old format is what a table without revocations is.
        assert_eq!(table.encode(), OLD_TABLE);
    }

    #[test]
    fn a_change_encoded_before_revocations_still_decodes() {
        // RemoveMember { node: 3 } expecting version 2.
        let (change, expected) = RoutingChange::decode(&[8, 2, 24, 3]).unwrap();
        assert_eq!(change, RoutingChange::RemoveMember { node: NodeId(3) });
        assert_eq!(expected, 2);
    }

    #[test]
    fn serials_are_stored_without_redundant_leading_zeros() {
        assert_eq!(canonical_serial(&[0, 0x8f, 1]).unwrap(), vec![0x8f, 1]);
        assert_eq!(canonical_serial(&[0x7f]).unwrap(), vec![0x7f]);
        assert_eq!(canonical_serial(&[0, 0, 0]).unwrap(), vec![0]);
        assert_eq!(canonical_serial(&[]), Err(RoutingError::EmptySerial));
        let mut long = vec![0u8; 5];
        long.extend([1u8; MAX_SERIAL_LEN]);
        assert_eq!(canonical_serial(&long).unwrap().len(), MAX_SERIAL_LEN);
        long.push(1);
        assert_eq!(
            canonical_serial(&long),
            Err(RoutingError::SerialTooLong {
                len: MAX_SERIAL_LEN + 1,
                max: MAX_SERIAL_LEN
            })
        );
    }

    #[test]
    fn revoke_changes_round_trip_and_raise_the_version_by_one() {
        let mut t = table();
        t.add_member(NodeId(9), String::new()).unwrap();
        let v = t.version();
        t.remove_member(NodeId(9)).unwrap();
        assert_eq!(t.version(), v + 1);
        let changes = [
            RoutingChange::RevokeNode { node: NodeId(9) },
            RoutingChange::RevokeSerial {
                serial: vec![0, 0x80, 0x01],
            },
            // Revoking again is accepted and still a new version, like every accepted change.
            RoutingChange::RevokeSerial {
                serial: vec![0x80, 0x01],
            },
            RoutingChange::UnrevokeSerial {
                serial: vec![0x80, 0x01],
            },
            RoutingChange::UnrevokeNode { node: NodeId(9) },
            RoutingChange::RevokeNode { node: NodeId(9) },
        ];
        for change in changes {
            let version = t.version();
            let (decoded, expected) = RoutingChange::decode(&change.encode(version)).unwrap();
            assert_eq!((&decoded, expected), (&change, version));
            t.apply_change(&decoded, expected).unwrap();
            assert_eq!(t.version(), version + 1);
            assert_eq!(RoutingTable::decode(&t.encode()).unwrap(), t);
        }
        assert!(t.is_node_revoked(NodeId(9)));
        assert!(!t.is_serial_revoked(&[0x80, 0x01]));
    }

    #[test]
    fn both_spellings_of_a_serial_name_the_same_revocation() {
        let mut t = table();
        t.revoke_serial(&[0, 0x8f, 0x01]).unwrap();
        assert!(t.is_serial_revoked(&[0x8f, 0x01]));
        assert!(t.is_serial_revoked(&[0, 0x8f, 0x01]));
        assert!(!t.is_serial_revoked(&[0x8f]));
        assert!(!t.is_serial_revoked(&[]));
        assert_eq!(t.revoked_serials().len(), 1);
        assert!(t.revoked_serials().contains(&vec![0x8f, 0x01]));
        t.unrevoke_serial(&[0x8f, 0x01]).unwrap();
        assert!(t.revoked_serials().is_empty());
    }

    #[test]
    fn a_member_or_replica_cannot_be_revoked_until_removed() {
        let mut t = table();
        let before = t.clone();
        let revoke = RoutingChange::RevokeNode { node: NodeId(2) };
        assert_eq!(
            t.apply_change(&revoke, 1),
            Err(RoutingError::RevokedNodeIsMember { node: NodeId(2) })
        );
        assert_eq!(
            t.apply_change(&RoutingChange::RevokeNode { node: NodeId(0) }, 1),
            Err(RoutingError::ReservedNodeId)
        );
        assert_eq!(t, before);
        // A serial can be revoked while its node is still a member: the emergency path.
        t.apply_change(&RoutingChange::RevokeSerial { serial: vec![7] }, 1)
            .unwrap();
        assert_eq!(t.version(), 2);
    }

    #[test]
    fn a_revoked_node_cannot_rejoin_until_its_revocation_is_lifted() {
        let mut t = table();
        t.revoke_node(NodeId(5)).unwrap();
        let v = t.version();
        let add = RoutingChange::AddMember {
            node: NodeId(5),
            address: String::new(),
        };
        assert_eq!(
            t.apply_change(&add, v),
            Err(RoutingError::NodeRevoked { node: NodeId(5) })
        );
        assert_eq!(
            t.add_group(GroupId(7), vec![NodeId(1), NodeId(5)]),
            Err(RoutingError::NodeRevoked { node: NodeId(5) })
        );
        assert_eq!(
            t.set_replicas(GroupId(1), vec![NodeId(5)]),
            Err(RoutingError::NodeRevoked { node: NodeId(5) })
        );
        assert_eq!(t.version(), v);
        t.apply_change(&RoutingChange::UnrevokeNode { node: NodeId(5) }, v)
            .unwrap();
        t.apply_change(&add, v + 1).unwrap();
        assert!(t.is_member(NodeId(5)));
    }

    #[test]
    fn lifting_a_revocation_that_does_not_exist_is_refused() {
        let mut t = table();
        assert_eq!(
            t.apply_change(&RoutingChange::UnrevokeNode { node: NodeId(4) }, 1),
            Err(RoutingError::NodeNotRevoked { node: NodeId(4) })
        );
        assert_eq!(
            t.apply_change(
                &RoutingChange::UnrevokeSerial {
                    serial: vec![0, 0xab]
                },
                1
            ),
            Err(RoutingError::SerialNotRevoked {
                serial: "ab".into()
            })
        );
        assert_eq!(
            t.apply_change(&RoutingChange::RevokeSerial { serial: vec![] }, 1),
            Err(RoutingError::EmptySerial)
        );
        assert_eq!(t, table());
    }

    fn msg_of(t: &RoutingTable) -> TableMsg {
        TableMsg::decode(t.encode().as_slice()).unwrap()
    }

    #[test]
    fn decode_rejects_broken_revocation_lists_with_their_error() {
        let t = table();
        type Case = (fn(&mut TableMsg), RoutingError);
        let cases: Vec<Case> = vec![
            (|m| m.revoked_nodes = vec![0], RoutingError::ReservedNodeId),
            (
                |m| m.revoked_nodes = vec![8, 8],
                RoutingError::DuplicateRevocation,
            ),
            (
                |m| m.revoked_nodes = vec![2],
                RoutingError::RevokedNodeIsMember { node: NodeId(2) },
            ),
            (
                |m| m.revoked_serials = vec![vec![1], vec![1]],
                RoutingError::DuplicateRevocation,
            ),
            (
                |m| m.revoked_serials = vec![vec![0, 1]],
                RoutingError::NonCanonicalSerial,
            ),
            (
                |m| m.revoked_serials = vec![vec![]],
                RoutingError::EmptySerial,
            ),
            (
                |m| m.revoked_nodes = (1..=MAX_REVOCATIONS as u64 + 1).map(|n| n + 100).collect(),
                RoutingError::TooManyRevocations {
                    max: MAX_REVOCATIONS,
                },
            ),
        ];
        for (break_it, error) in cases {
            let mut msg = msg_of(&t);
            break_it(&mut msg);
            assert_eq!(
                RoutingTable::decode(&msg.encode_to_vec()),
                Err(error.clone()),
                "{error}"
            );
        }
    }

    proptest! {
        #[test]
        fn tables_with_revocations_round_trip(
            nodes in proptest::collection::btree_set(4u64..1000, 0..20),
            serials in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..=21), 0..20),
        ) {
            let mut t = table();
            for n in nodes {
                t.revoke_node(NodeId(n)).unwrap();
            }
            for s in &serials {
                t.revoke_serial(s).unwrap();
                prop_assert!(t.is_serial_revoked(s));
            }
            prop_assert_eq!(RoutingTable::decode(&t.encode()), Ok(t));
        }

        #[test]
        fn mutated_tables_with_revocations_never_panic_on_decode(
            serials in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..=8), 1..6),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut t = table();
            t.revoke_node(NodeId(40)).unwrap();
            for s in &serials {
                t.revoke_serial(s).unwrap();
            }
            let mut bytes = t.encode();
            for (at, xor) in flips {
                let len = bytes.len();
                if let Some(byte) = bytes.get_mut(at % len) {
                    *byte ^= xor;
                }
            }
            if let Ok(table) = RoutingTable::decode(&bytes) {
                prop_assert_eq!(RoutingTable::decode(&table.encode()), Ok(table));
            }
        }
    }
}
