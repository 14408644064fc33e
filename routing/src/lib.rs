//! Typed ids, key → vShard hashing and the routing table of Pontoon. No I/O.
//!
//! Keys hash to a fixed set of vShards by a pinned algorithm ([`vshard_for_key`]); a
//! versioned [`RoutingTable`] maps every vShard to a raft group and every group to the nodes
//! holding its replicas. The table is a plain value that encodes to bytes and decodes from
//! untrusted bytes with full validation.
//!
//! ```
//! use pontoon_routing::{DEFAULT_VSHARDS, GroupId, NodeId, RoutingTable};
//!
//! // Three nodes, 12 groups of 3 replicas each, the default 1024 vShards.
//! let nodes = [NodeId(1), NodeId(2), NodeId(3)];
//! let mut table = RoutingTable::uniform(DEFAULT_VSHARDS, 12, &nodes, 3)?;
//!
//! // Route a key: key -> vShard -> group -> replicas (and a leader hint).
//! let group = table.group_for_key(b"user:42");
//! let replicas = table.replicas(group).unwrap_or_default();
//! assert_eq!(replicas.len(), 3);
//!
//! // An election changes the hint but not the version; a reconfiguration bumps it.
//! table.set_leader_hint(group, Some(replicas[1]))?;
//! assert_eq!(table.version(), 1);
//! table.add_group(GroupId(13), vec![NodeId(1), NodeId(2), NodeId(3)])?;
//! assert_eq!(table.version(), 2);
//!
//! // Ship it to a peer.
//! let copy = RoutingTable::decode(&table.encode())?;
//! assert_eq!(copy, table);
//! # Ok::<(), pontoon_routing::RoutingError>(())
//! ```

#![warn(unreachable_pub)]

mod change;
mod error;
mod hash;
mod ids;
mod revoke;
mod table;
mod wire;

pub use change::RoutingChange;
pub use error::RoutingError;
pub use hash::{DEFAULT_VSHARDS, vshard_for_key};
pub use ids::{GroupId, NodeId, VShardId};
pub use revoke::{MAX_REVOCATIONS, MAX_SERIAL_LEN, canonical_serial};
pub use table::{GroupPlacement, MAX_VSHARDS, META_GROUP, RoutingTable};

#[cfg(test)]
mod tests;
