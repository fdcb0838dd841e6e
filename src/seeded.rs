//! The hasher of every in-memory map keyed by a value a client can influence.
//!
//! Why: a record is named by its [`KeyHash`](crate::rules::key::KeyHash), an unkeyed BLAKE3 digest of
//! (scope, key). A client knows its own scope and chooses its keys, so it can compute that
//! digest and grind keys whose digests agree in the bits a map uses to pick a bucket. Fed to a
//! map that buckets on those bits, about a hundred such keys form one long probe chain: papaya
//! then resizes to the same capacity again and again, allocating a table each time, until the
//! process runs out of memory, and a `std` map or the log's overlay spends its CPU walking the
//! chain. Hashing the key again with a secret, per-process seed takes the choice of bucket out
//! of the client's hands: it cannot know which bits matter, so its keys spread over the buckets
//! as random ones do. That is a defence whatever the map's own policy on long chains (resize,
//! probe, grow): the policy is never driven by a chain the client built.
//!
//! Invariant: every map, set and shard choice keyed by a [`KeyHash`](crate::rules::key::KeyHash), a
//! scope or another client-chosen value uses [`Seeded`], directly or through a hash it made
//! ([`Prehashed`]); none buckets on raw digest bits.
//!
//! The seed is `std`'s `RandomState`: SipHash-1-3 under a 128-bit key drawn from the operating
//! system's random source, different in every process. A `KeyHash` feeds it its first 8 bytes,
//! so two keys share a bucket hash only if those 64 bits are equal, which takes about 2^32
//! digests to find for a single pair, and cannot be steered to a chosen bucket at all.

/// The seeded hasher builder of the crate's in-memory maps.
pub(crate) type Seeded = std::hash::RandomState;

/// The hasher of maps whose keys carry a hash [`Seeded`] made already (and write it with
/// `write_u64`): a caller that hashes a key once to pick a shard passes the same hash on, so
/// the shard's map does not hash the key a second time. Only keys with a seeded hash may use
/// it: it keeps what it is given.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Prehashed;

/// A map key with the hash [`Seeded`] made of it, for a map built with [`Prehashed`]: keys are
/// equal when their `key`s are, and hash as their `seeded` hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WithHash<K> {
    pub(crate) seeded: u64,
    pub(crate) key: K,
}

impl<K: PartialEq> PartialEq for WithHash<K> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<K: Eq> Eq for WithHash<K> {}

impl<K> std::hash::Hash for WithHash<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.seeded);
    }
}

/// The hasher behind [`Prehashed`].
#[derive(Debug, Default)]
pub(crate) struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Keys of these maps hash through `write_u64`; fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl std::hash::BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;

    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::Seeded;
    use crate::rules::key::KeyHash;

    /// Keys whose unkeyed digests share their low `bits` bits, as a client can grind them.
    pub(crate) fn ground_keys(scope: &[u8], bits: u32, count: usize) -> Vec<KeyHash> {
        let mask = (1u64 << bits) - 1;
        let mut out = Vec::with_capacity(count);
        let mut i = 0u64;
        while out.len() < count {
            let key = format!("k{i}");
            i += 1;
            let hash = KeyHash::of_raw(scope, key.as_bytes());
            if hash.low64() & mask == 0 {
                out.push(hash);
            }
        }
        out
    }

    #[test]
    fn ground_keys_spread_over_the_buckets_of_a_seeded_map() {
        let keys = ground_keys(b"tenant", 12, 64);
        let seeded = Seeded::new();
        let buckets: HashSet<u64> = keys
            .iter()
            .map(|k| seeded.hash_one(k) & ((1 << 12) - 1))
            .collect();
        // 64 random draws from 4,096 buckets: a handful of shared buckets at most.
        assert!(buckets.len() >= 56, "{} buckets", buckets.len());
        // Without the seed, every ground key lands in one bucket.
        let raw: HashSet<u64> = keys.iter().map(|k| k.low64() & ((1 << 12) - 1)).collect();
        assert_eq!(raw.len(), 1);
    }
}
