//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4). Every node builds the same lookup table from the
//! same backend names, so a flow hashes to the same backend whichever node it arrives on, and
//! a change of one backend moves only about `1/N` of the table.

use std::cmp::Ordering;

/// The table size the agent uses: a prime well above 100 × the backends a set usually has,
/// which keeps every backend's share within about 1% of the mean (paper, figure 11).
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// The largest table size accepted (2^17 - 1, prime, as Cilium's largest): 512 KiB per set,
/// room for a thousand backends at the paper's 100 entries per backend.
pub const MAX_TABLE_SIZE: u32 = 131071;

/// Why a Maglev table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The size is not prime: the permutations `offset + j * skip` only cover the whole
    /// table when `skip` is coprime with the size, which a prime size guarantees.
    #[error("Maglev table size {size} is not prime")]
    SizeNotPrime {
        /// The size asked for.
        size: u32,
    },
    /// The size is above [`MAX_TABLE_SIZE`]: a misconfiguration that would cost gigabytes.
    #[error("Maglev table size {size} is above the maximum {MAX_TABLE_SIZE}")]
    SizeTooLarge {
        /// The size asked for.
        size: u32,
    },
    /// The table has fewer entries than there are backends, so some backends would get none.
    #[error("Maglev table size {size} is smaller than the number of backends ({backends})")]
    SizeTooSmall {
        /// The size asked for.
        size: u32,
        /// The number of backends.
        backends: usize,
    },
    /// Two backends have the same name: they would get identical permutations and the table
    /// could not say which of the two the caller meant.
    #[error("backend {name:?} appears more than once")]
    DuplicateBackend {
        /// The repeated name.
        name: String,
    },
}

/// Builds the Maglev lookup table: entry `i` is the index into `backends` of the backend that
/// owns slot `i`. The table depends only on the set of names and `size`, not on the order of
/// `backends`: the names are ranked by sorting, and only the returned indices refer back to
/// the caller's slice.
///
/// `size` must be prime, at most [`MAX_TABLE_SIZE`] and at least the number of backends. An empty `backends` yields an
/// empty table (the set has nobody to send to; the datapath rejects the connection).
///
/// Cost: the permutations are generated lazily, one step at a time, as in the paper's
/// pseudocode; building needs `O(size × ln size)` probes on average and `O(size + N)` memory.
pub fn maglev_table(backends: &[&str], size: u32) -> Result<Vec<u32>, MaglevError> {
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::SizeTooLarge { size });
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    if backends.len() > size as usize {
        return Err(MaglevError::SizeTooSmall { size, backends: backends.len() });
    }

    // The rank order: by name, so that every node fills the table in the same order.
    // Indices fit: there are at most `size` backends. u32::MAX marks free slots below, and
    // no index reaches it.
    let mut order: Vec<u32> = (0..backends.len()).map(|i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
    order.sort_by(|&a, &b| backends[a as usize].cmp(backends[b as usize]));
    for pair in order.windows(2) {
        if backends[pair[0] as usize].cmp(backends[pair[1] as usize]) == Ordering::Equal {
            return Err(MaglevError::DuplicateBackend { name: backends[pair[0] as usize].to_string() });
        }
    }

    let m = u64::from(size);
    // For each ranked backend, its skip and the next slot of its permutation.
    let mut skip = Vec::with_capacity(order.len());
    let mut next = Vec::with_capacity(order.len());
    for &i in &order {
        let name = backends[i as usize].as_bytes();
        next.push(hash(SEED_OFFSET, name) % m);
        // size 2 makes `size - 1` = 1 and every skip 1, which still covers both slots.
        skip.push(hash(SEED_SKIP, name) % (m - 1) + 1);
    }

    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (rank, &backend) in order.iter().enumerate() {
            // Walk this backend's permutation to its first free slot. A free slot exists
            // (filled < size) and the permutation visits every slot, so this ends.
            let mut slot = next[rank];
            while table[slot as usize] != EMPTY {
                slot = (slot + skip[rank]) % m;
            }
            table[slot as usize] = backend;
            next[rank] = (slot + skip[rank]) % m;
            filled += 1;
            if filled == table.len() {
                break 'fill;
            }
        }
    }
    Ok(table)
}

/// Whether `n` is prime, by trial division (at most ~2^16 / 3 divisions for a `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Seeds of the two hashes of the paper (`h1` for the offset, `h2` for the skip). Fixed
/// constants, part of the table's definition: changing them reshuffles every node's tables.
const SEED_OFFSET: u64 = 0x5eed_0ff5_e7a1_1ce5;
const SEED_SKIP: u64 = 0x5eed_5c1b_b0b5_1ed5;

/// A seeded 64-bit hash that is the same on every machine and in every process (unlike std's
/// `RandomState`): FNV-1a over the seed's little-endian bytes then the data, finished with the
/// murmur3 `fmix64` mixer, because FNV-1a alone leaves names that differ in their last
/// characters (`10.0.0.1`, `10.0.0.2`) close together in the low bits that `% size` keeps.
fn hash(seed: u64, data: &[u8]) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET_BASIS;
    for &byte in seed.to_le_bytes().iter().chain(data) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:8080/TCP", i / 250, i % 250 + 1)).collect()
    }

    fn refs(names: &[String]) -> Vec<&str> {
        names.iter().map(String::as_str).collect()
    }

    /// The table as backend names, to compare tables built from different slices.
    fn by_name<'a>(backends: &[&'a str], table: &[u32]) -> Vec<&'a str> {
        table.iter().map(|&i| backends[i as usize]).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &i in table {
            counts[i as usize] += 1;
        }
        counts
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..40).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37], "primes below 40");
        assert!(is_prime(DEFAULT_TABLE_SIZE), "the default size is prime");
        assert!(is_prime(65537), "65537 is prime");
        assert!(is_prime(4_294_967_291), "the largest u32 prime is prime");
        assert!(!is_prime(u32::MAX), "u32::MAX = 3 × 5 × 17 × 257 × 65537");
        assert!(!is_prime(65537 * 65521), "a product of two large primes is not prime");
        assert!(!is_prime(1 << 20), "even numbers are not prime");
        assert!(!is_prime(16383), "16383 = 3 × 43 × 127");
    }

    #[test]
    fn non_prime_size_is_rejected_with_the_size() {
        let err = maglev_table(&["a"], 16383).unwrap_err();
        assert_eq!(err, MaglevError::SizeNotPrime { size: 16383 });
        assert!(err.to_string().contains("16383"), "the message names the size: {err}");
        assert_eq!(maglev_table(&[], 0), Err(MaglevError::SizeNotPrime { size: 0 }), "0 is not prime");
        assert_eq!(maglev_table(&[], 1), Err(MaglevError::SizeNotPrime { size: 1 }), "1 is not prime");
    }

    #[test]
    fn size_above_the_maximum_is_rejected() {
        let err = maglev_table(&["a"], 4_294_967_291).unwrap_err();
        assert_eq!(err, MaglevError::SizeTooLarge { size: 4_294_967_291 });
        assert!(is_prime(MAX_TABLE_SIZE), "the maximum size is itself a valid size");
        assert_eq!(maglev_table(&["a"], MAX_TABLE_SIZE).map(|t| t.len()), Ok(MAX_TABLE_SIZE as usize));
    }

    #[test]
    fn size_smaller_than_backends_is_rejected() {
        let err = maglev_table(&["a", "b", "c", "d"], 3).unwrap_err();
        assert_eq!(err, MaglevError::SizeTooSmall { size: 3, backends: 4 });
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let err = maglev_table(&["b", "a", "b"], 7).unwrap_err();
        assert_eq!(err, MaglevError::DuplicateBackend { name: "b".into() });
    }

    #[test]
    fn no_backends_give_an_empty_table() {
        assert_eq!(maglev_table(&[], DEFAULT_TABLE_SIZE), Ok(vec![]));
    }

    #[test]
    fn one_backend_owns_every_entry() {
        let table = maglev_table(&["10.0.0.1:80/TCP"], 13).unwrap();
        assert_eq!(table, vec![0; 13]);
    }

    #[test]
    fn as_many_backends_as_entries_get_one_each() {
        let names = names(7);
        let table = maglev_table(&refs(&names), 7).unwrap();
        assert_eq!(counts(&table, 7), vec![1; 7], "each of 7 backends owns one of 7 entries");
    }

    #[test]
    fn every_entry_is_assigned_and_shares_are_even() {
        for n in [2, 3, 10, 100] {
            let names = names(n);
            let table = maglev_table(&refs(&names), DEFAULT_TABLE_SIZE).unwrap();
            assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize, "N={n}: one entry per slot");
            let counts = counts(&table, n);
            let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
            assert!(min > 0, "N={n}: every backend owns entries");
            // Maglev fills round-robin, so shares differ by at most the last partial round
            // plus what the permutation collisions leave; the paper reports < 1.2 at N/M=1%.
            let ratio = max as f64 / min as f64;
            assert!(ratio < 1.2, "N={n}: max/min share ratio {ratio:.3} should be below 1.2 ({min}..{max})");
        }
    }

    #[test]
    fn table_is_independent_of_input_order() {
        let names = names(10);
        let forward = refs(&names);
        let mut reversed = forward.clone();
        reversed.reverse();
        let mut rotated = forward.clone();
        rotated.rotate_left(3);
        let expected = by_name(&forward, &maglev_table(&forward, DEFAULT_TABLE_SIZE).unwrap());
        for other in [reversed, rotated] {
            let table = maglev_table(&other, DEFAULT_TABLE_SIZE).unwrap();
            assert_eq!(by_name(&other, &table), expected, "same owners for permuted input {other:?}");
        }
    }

    #[test]
    fn table_is_stable_across_processes() {
        // Pinned: every node must compute this. A change here is a change of the table's
        // definition, which breaks flows during a mixed-version rollout.
        let table = maglev_table(&["10.0.0.1:80/TCP", "10.0.0.2:80/TCP", "10.0.0.3:80/TCP"], 13).unwrap();
        assert_eq!(table, PINNED_13, "the table of three backends in 13 slots");
    }
    const PINNED_13: [u32; 13] = [1, 2, 2, 0, 1, 0, 1, 2, 1, 2, 0, 0, 0];

    /// Compares tables before and after a change of one backend: returns the fractions of the
    /// table that changed owner, and that changed owner between two backends other than `moved`.
    fn disruption(before: &[&str], after: &[&str], moved: &str, size: u32) -> (f64, f64) {
        let old = by_name(before, &maglev_table(before, size).unwrap());
        let new = by_name(after, &maglev_table(after, size).unwrap());
        let changed: Vec<(&str, &str)> = old.into_iter().zip(new).filter(|(o, n)| o != n).collect();
        let others = changed.iter().filter(|(o, n)| *o != moved && *n != moved).count();
        (changed.len() as f64 / f64::from(size), others as f64 / f64::from(size))
    }

    /// How much one backend change may disturb, as multiples of `1/N`: all of the moved
    /// backend's entries (1/N) plus the shifts Maglev makes among the others, which shrink
    /// as size/N grows (paper, figure 12). Measured: N=10 in 16381 moves 0.05/N others;
    /// N=100 in 16381 moves 1.4/N others, in 131071 0.4/N.
    const DISRUPTION: [(usize, u32, f64, f64); 3] = [
        // (N, size, changed < x/N, others < y/N)
        (10, DEFAULT_TABLE_SIZE, 1.5, 0.2),
        (100, 131071, 1.5, 0.6),
        (100, DEFAULT_TABLE_SIZE, 3.0, 2.0),
    ];

    #[test]
    fn removing_a_backend_moves_about_one_nth() {
        for (n, size, max_changed, max_others) in DISRUPTION {
            let names = names(n);
            let before = refs(&names);
            for removed in [before[0], before[n / 2], before[n - 1]] {
                let after: Vec<&str> = before.iter().copied().filter(|b| *b != removed).collect();
                let (changed, others) = disruption(&before, &after, removed, size);
                let (changed, others) = (changed * n as f64, others * n as f64);
                assert!(
                    changed < max_changed,
                    "N={n} size={size} without {removed}: {changed:.2}/N of the table changed, expected < {max_changed}/N"
                );
                assert!(
                    others < max_others,
                    "N={n} size={size} without {removed}: {others:.2}/N moved between remaining backends, expected < {max_others}/N"
                );
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_about_one_nth() {
        for (n, size, max_changed, max_others) in DISRUPTION {
            let names = names(n);
            let after = refs(&names);
            for added in [after[0], after[n / 2], after[n - 1]] {
                let before: Vec<&str> = after.iter().copied().filter(|b| *b != added).collect();
                let (changed, others) = disruption(&before, &after, added, size);
                let (changed, others) = (changed * n as f64, others * n as f64);
                assert!(
                    changed < max_changed,
                    "N={n} size={size} adding {added}: {changed:.2}/N of the table changed, expected < {max_changed}/N"
                );
                assert!(
                    others < max_others,
                    "N={n} size={size} adding {added}: {others:.2}/N moved between old backends, expected < {max_others}/N"
                );
            }
        }
    }
}
