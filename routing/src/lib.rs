//! Typed ids, key → vShard hashing and the routing table of Pontoon. No I/O.
//!
//! (The routing table and hashing are filled in by the foundation issue.)

mod ids;

pub use ids::{GroupId, NodeId, VShardId};
