//! Typed ids: a node, a raft group and a vShard are never confused with each other or with a
//! raw integer. Conversions to and from raw numbers happen at the edges (wire, storage keys).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident($raw:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $raw);

        impl $name {
            /// The raw number, for wire formats and storage keys.
            #[must_use]
            pub const fn get(self) -> $raw {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<$raw> for $name {
            fn from(raw: $raw) -> Self {
                Self(raw)
            }
        }

        impl From<$name> for $raw {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

typed_id!(
    /// A node of the cluster. It is also the raft peer id of that node in every group, and it
    /// is carried in the node's certificate. `0` is reserved by raft-rs ("no node").
    NodeId(u64),
    "n"
);
typed_id!(
    /// A raft group. Its log is one contiguous key range in storage and its messages travel on
    /// their own QUIC stream.
    GroupId(u64),
    "g"
);
typed_id!(
    /// A virtual shard: keys hash to vShards, the routing table maps vShards to groups.
    VShardId(u32),
    "v"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind_of_id() {
        assert_eq!(NodeId(3).to_string(), "n3");
        assert_eq!(GroupId(17).to_string(), "g17");
        assert_eq!(VShardId(1023).to_string(), "v1023");
    }

    #[test]
    fn ids_order_by_their_number_and_round_trip_through_serde() {
        assert!(NodeId(1) < NodeId(2));
        let json = serde_json::to_string(&GroupId(42)).unwrap_or_default();
        assert_eq!(json, "42");
        let back: GroupId = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, GroupId(42));
    }
}
