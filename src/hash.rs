//! The stable key hash and the placement it drives: key → hash → ring partition → shard.
//!
//! The hash is part of the protocol (smart clients route with it), so it is spelled out here
//! and in protocol.md and must never change: FNV-1a 64 over the key bytes, then the MurmurHash3
//! 64-bit finalizer (`fmix64`) so that the top bits, which pick the partition, are well mixed.
//! (`std`'s `DefaultHasher` is not used anywhere in placement: its algorithm may change.)

use crate::limits::PARTITION_COUNT;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Bits of the hash that select the partition (the top ones).
pub const PARTITION_BITS: u32 = PARTITION_COUNT.trailing_zeros();

/// The stable 64-bit hash of a key.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = FNV_OFFSET_BASIS;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
#[inline]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The ring partition of a key hash: its top [`PARTITION_BITS`] bits.
#[inline]
pub fn partition_of_hash(hash: u64) -> usize {
    (hash >> (64 - PARTITION_BITS)) as usize
}

/// The ring partition of a key.
#[inline]
pub fn partition_of(key: &[u8]) -> usize {
    partition_of_hash(key_hash(key))
}

/// The shard of a node that owns a partition, for a node with `shards` shards.
#[inline]
pub fn shard_of_partition(partition: usize, shards: usize) -> usize {
    debug_assert!(shards > 0);
    partition % shards
}

/// The shard that owns a key on a node with `shards` shards.
#[inline]
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    shard_of_partition(partition_of(key), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: these are in protocol.md; changing them breaks every smart client.
    #[test]
    fn golden_hashes() {
        assert_eq!(key_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(key_hash(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(key_hash(b"hello"), 0xe9c5_62c0_fdb2_3244);
        assert_eq!(partition_of(b"hello"), 0xe9);
    }

    #[test]
    fn partitions_are_balanced() {
        let mut counts = vec![0u32; PARTITION_COUNT];
        let keys = 256_000;
        for i in 0..keys {
            counts[partition_of(format!("key:{i}").as_bytes())] += 1;
        }
        let expect = keys / PARTITION_COUNT as u32;
        for c in counts {
            assert!(
                c > expect * 8 / 10 && c < expect * 12 / 10,
                "partition count {c}"
            );
        }
    }
}
