//! Key → vShard hashing. This is the one function that decides where every key of every
//! database lives: it is pinned, and the test vectors below fail if it ever changes.

use xxhash_rust::xxh3::xxh3_64;

use crate::VShardId;

/// The number of vShards a cluster gets unless it chooses otherwise.
///
/// It is fixed for the life of a cluster (changing it moves most keys), so it is chosen
/// large enough that vShards can be spread evenly over many more groups than a cluster starts
/// with.
pub const DEFAULT_VSHARDS: u32 = 1024;

/// The vShard a key belongs to, among `vshard_count` vShards.
///
/// # The pinned algorithm
///
/// `vshard = xxh3_64(key, seed = 0) mod vshard_count`, with XXH3 64-bit as specified by the
/// xxHash project (crate `xxhash-rust`, function `xxh3::xxh3_64`). The key bytes are hashed as
/// they are, with no prefix, length or normalisation.
///
/// **Never change this function.** Every stored key was placed by it: a different hash, seed
/// or reduction would silently route reads and writes of existing keys to the wrong group.
/// The unit tests freeze its output on fixed vectors so that a change cannot pass unnoticed.
///
/// A `vshard_count` of 0 (which no routing table accepts) maps every key to vShard 0 rather
/// than panicking.
///
/// ```
/// use pontoon_routing::{vshard_for_key, VShardId, DEFAULT_VSHARDS};
///
/// let v = vshard_for_key(b"user:42", DEFAULT_VSHARDS);
/// assert!(v.get() < DEFAULT_VSHARDS);
/// assert_eq!(v, vshard_for_key(b"user:42", DEFAULT_VSHARDS));
/// assert_eq!(vshard_for_key(b"anything", 1), VShardId(0));
/// ```
#[must_use]
pub fn vshard_for_key(key: &[u8], vshard_count: u32) -> VShardId {
    let hash = xxh3_64(key);
    let index = hash.checked_rem(u64::from(vshard_count)).unwrap_or(0);
    // The remainder is below `vshard_count`, a u32, so the conversion never fails.
    VShardId(u32::try_from(index).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frozen output of the pinned algorithm. If this test fails, the hashing changed and
    /// every existing key would move: revert the change, do not update the vectors.
    #[test]
    fn vshard_for_key_matches_frozen_vectors() {
        let long = [7u8; 300];
        let vectors: &[(&[u8], u64, u32, u32)] = &[
            // (key, xxh3_64(key), vShard of 1024, vShard of 7)
            (b"", 0x2d06_8005_38d3_94c2, 194, 4),
            (b"a", 0xe6c6_32b6_1e96_4e1f, 543, 1),
            (b"abc", 0x78af_5f94_892f_3950, 336, 2),
            (b"user:42", 0x9fc1_e605_fa71_74aa, 170, 4),
            (b"pontoon", 0xf946_f562_54e6_942c, 44, 6),
            (b"\x00", 0xc44b_dff4_074e_ecdb, 219, 2),
            (b"\xff\xfe\xfd\xfc", 0x186b_3906_18c4_2aca, 714, 0),
            (
                b"The quick brown fox jumps over the lazy dog",
                0xce7d_19a5_418f_b365,
                869,
                6,
            ),
            // Longer than 240 bytes: exercises XXH3's long-input path.
            (&long, 0x8aec_4a54_14da_d453, 83, 6),
        ];
        for &(key, hash, v1024, v7) in vectors {
            assert_eq!(xxh3_64(key), hash, "key {key:?}, raw hash");
            assert_eq!(
                vshard_for_key(key, 1024),
                VShardId(v1024),
                "key {key:?}, 1024"
            );
            assert_eq!(vshard_for_key(key, 7), VShardId(v7), "key {key:?}, 7");
        }
    }

    #[test]
    fn raw_xxh3_of_the_empty_key_is_the_reference_value() {
        // Published XXH3_64bits("") with seed 0, independent of our reduction.
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn zero_vshards_maps_to_vshard_zero_without_panicking() {
        assert_eq!(vshard_for_key(b"k", 0), VShardId(0));
    }
}
