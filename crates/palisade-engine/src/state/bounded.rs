//! A bounded map from an already-hashed 64-bit key to a small `Copy` record: the per-identity
//! tables of limits and behaviour.
//!
//! Set-associative: a key can live only in one set of [`WAYS`] slots, chosen from its hash, and
//! each set has its own lock, so a lookup is one uncontended lock, a scan of eight keys in one
//! cache line, and an unlock. A full set evicts with CLOCK over two-bit use counters: a record
//! that is used again climbs to 3 and survives three sweeps of the hand, a record seen once is
//! the first to go. A spray of one-off keys therefore churns through the cold slots while the
//! clients that come back keep their records (see the tests).
//!
//! Why not `quick_cache` (S3-FIFO), which these tables used before: its `entry` costs ~300
//! instructions per call under callgrind against ~60 here, and a request makes a dozen of them
//! with every detector on (`benches/engine.rs` `tables`, and the note on issue 19). The hard cap
//! is exact (never more than `capacity()` records) and memory is allocated per set on first use.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Slots per set.
pub const WAYS: usize = 8;

/// The most a use counter climbs to.
const HOT: u8 = 3;

struct Set<V> {
    /// Keys of the occupied slots (`EMPTY` when free).
    keys: [u64; WAYS],
    /// Use counters.
    uses: [u8; WAYS],
    /// The CLOCK hand.
    hand: u8,
    /// Records, allocated when the set takes its first key.
    vals: Option<Box<[V; WAYS]>>,
}

/// Marks a free slot. A key equal to it is stored as [`EMPTY_ALIAS`] (keys are hashes: the two
/// then share a record, as any two keys with the same hash do).
const EMPTY: u64 = 0;
const EMPTY_ALIAS: u64 = 0x9e37_79b9_7f4a_7c15;

/// A bounded, concurrent map from a hashed key to a `Copy` record.
pub struct BoundedMap<V> {
    sets: Box<[Mutex<Set<V>>]>,
    len: AtomicUsize,
    evictions: AtomicU64,
    /// Sets whose records are allocated.
    allocated: AtomicUsize,
}

impl<V> std::fmt::Debug for BoundedMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedMap")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("capacity", &(self.sets.len() * WAYS))
            .finish()
    }
}

impl<V: Copy + Default> BoundedMap<V> {
    /// A map holding at most `max` records (rounded down to whole sets, at least one set).
    pub fn new(max: usize) -> Self {
        let sets = (max / WAYS).max(1);
        Self {
            sets: (0..sets)
                .map(|_| {
                    Mutex::new(Set {
                        keys: [EMPTY; WAYS],
                        uses: [0; WAYS],
                        hand: 0,
                        vals: None,
                    })
                })
                .collect(),
            len: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            allocated: AtomicUsize::new(0),
        }
    }

    /// The key's set (always `Some`: there is at least one set, and the index is below it).
    fn set(&self, key: u64) -> Option<&Mutex<Set<V>>> {
        // Mix, then reduce to the number of sets with a multiply (no modulo, no power of two):
        // the high bits of a 64x64 product are uniform over 0..sets.
        let mixed = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (key >> 29);
        let i = ((u128::from(mixed) * self.sets.len() as u128) >> 64) as usize;
        self.sets.get(i)
    }

    /// Runs `f` on the key's record, creating it with `fresh` first if needed (evicting the
    /// set's coldest record when the set is full).
    pub fn with<R>(&self, key: u64, fresh: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        let key = stored(key);
        let Some(set) = self.set(key) else {
            return f(&mut fresh());
        };
        let mut set = set.lock();
        let set = &mut *set;
        let slot = match find(&set.keys, key) {
            Some(i) => {
                if let Some(u) = set.uses.get_mut(i) {
                    *u = (*u + 1).min(HOT);
                }
                i
            }
            None => {
                let i = match find(&set.keys, EMPTY) {
                    Some(i) => {
                        self.len.fetch_add(1, Ordering::Relaxed);
                        i
                    }
                    None => {
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                        victim(&mut set.uses, &mut set.hand)
                    }
                };
                if let Some(k) = set.keys.get_mut(i) {
                    *k = key;
                }
                if let Some(u) = set.uses.get_mut(i) {
                    *u = 0;
                }
                let vals = set.vals.get_or_insert_with(|| {
                    self.allocated.fetch_add(1, Ordering::Relaxed);
                    Box::new([V::default(); WAYS])
                });
                if let Some(v) = vals.get_mut(i) {
                    *v = fresh();
                }
                i
            }
        };
        // The records exist: a slot was found or filled above. A scratch record keeps this
        // total without a panic.
        match set.vals.as_mut().and_then(|v| v.get_mut(slot)) {
            Some(v) => f(v),
            None => f(&mut V::default()),
        }
    }

    /// Runs `f` on the key's record if there is one (does not count as a use).
    pub fn update<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let key = stored(key);
        let mut set = self.set(key)?.lock();
        let i = find(&set.keys, key)?;
        set.vals.as_mut()?.get_mut(i).map(f)
    }

    /// A copy of the key's record, if there is one (does not count as a use).
    pub fn peek(&self, key: u64) -> Option<V> {
        let key = stored(key);
        let set = self.set(key)?.lock();
        let i = find(&set.keys, key)?;
        set.vals.as_ref()?.get(i).copied()
    }

    /// Removes the key's record; returns it if there was one.
    pub fn remove(&self, key: u64) -> Option<V> {
        let key = stored(key);
        let mut set = self.set(key)?.lock();
        let i = find(&set.keys, key)?;
        if let Some(k) = set.keys.get_mut(i) {
            *k = EMPTY;
        }
        self.len.fetch_sub(1, Ordering::Relaxed);
        set.vals.as_ref()?.get(i).copied()
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most records held at once.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Bytes held: every set's keys and lock, and the records of the sets in use.
    pub fn approx_bytes(&self) -> usize {
        self.sets.len() * std::mem::size_of::<Mutex<Set<V>>>()
            + self.allocated.load(Ordering::Relaxed) * std::mem::size_of::<[V; WAYS]>()
    }

    /// Records evicted to make room so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

fn stored(key: u64) -> u64 {
    if key == EMPTY { EMPTY_ALIAS } else { key }
}

fn find(keys: &[u64; WAYS], key: u64) -> Option<usize> {
    keys.iter().position(|k| *k == key)
}

/// CLOCK: the first slot from the hand whose counter is 0, lowering the others on the way. Ends
/// within `HOT + 1` sweeps.
fn victim(uses: &mut [u8; WAYS], hand: &mut u8) -> usize {
    let mut h = usize::from(*hand) % WAYS;
    for _ in 0..(WAYS * (usize::from(HOT) + 1)) {
        match uses.get_mut(h) {
            Some(0) | None => break,
            Some(u) => *u -= 1,
        }
        h = (h + 1) % WAYS;
    }
    *hand = ((h + 1) % WAYS) as u8;
    h
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn holds_what_fits_and_counts() {
        let m: BoundedMap<u64> = BoundedMap::new(1024);
        assert_eq!(m.capacity(), 1024);
        for k in 1..=100u64 {
            m.with(k, || 0, |v| *v += k);
        }
        for k in 1..=100u64 {
            m.with(k, || 0, |v| *v += k);
        }
        assert_eq!(m.len(), 100);
        for k in 1..=100u64 {
            assert_eq!(m.peek(k), Some(2 * k), "key {k}");
        }
        assert_eq!(m.peek(1000), None);
        assert_eq!(m.update(1000, |v| *v), None);
        assert_eq!(m.update(7, |v| *v), Some(14));
        assert_eq!(m.remove(7), Some(14));
        assert_eq!(m.peek(7), None);
        assert_eq!(m.len(), 99);
    }

    #[test]
    fn key_zero_is_a_key() {
        let m: BoundedMap<u32> = BoundedMap::new(16);
        m.with(0, || 5, |v| *v += 1);
        assert_eq!(m.peek(0), Some(6));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let m: BoundedMap<u64> = BoundedMap::new(1000);
        assert_eq!(m.capacity(), 1000);
        for k in 0..100_000u64 {
            m.with(k.wrapping_mul(0x2545_f491_4f6c_dd1d), || k, |_| ());
        }
        assert!(m.len() <= m.capacity(), "{} > {}", m.len(), m.capacity());
        // Sets fill unevenly, but with eight ways nearly all slots are used.
        assert!(m.len() >= 990, "{}", m.len());
        assert_eq!(m.evictions(), 100_000 - m.len() as u64);
    }

    /// The property the tables exist for: clients that come back keep their records while a
    /// spray of addresses seen once streams through.
    #[test]
    fn a_spray_of_one_off_keys_does_not_evict_returning_clients() {
        let m: BoundedMap<u64> = BoundedMap::new(10_000);
        let hot: Vec<u64> = (1..=2_000u64).map(|k| k * 0x9e37_79b9).collect();
        let mut spray = 1u64 << 40;
        for round in 0..50u64 {
            for k in &hot {
                m.with(*k, || 0, |v| *v += 1);
            }
            // Ten times as many one-off keys as the table holds, over the run.
            for _ in 0..2_000 {
                spray = spray
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                m.with(spray, || 0, |v| *v += 1);
            }
            if round == 49 {
                let kept = hot.iter().filter(|k| m.peek(**k) == Some(50)).count();
                assert!(
                    kept >= 1_990,
                    "only {kept} of 2000 returning clients kept every visit"
                );
            }
        }
    }

    proptest! {
        /// Against a reference map: whatever is present holds exactly what the reference says
        /// (eviction may only forget a key, never corrupt or mix records), and the cap holds.
        #[test]
        fn agrees_with_a_reference_map(ops in prop::collection::vec((0u64..300, 0u8..4), 1..2000)) {
            let m: BoundedMap<u64> = BoundedMap::new(64);
            let mut reference: HashMap<u64, u64> = HashMap::new();
            for (k, op) in ops {
                match op {
                    0 | 1 => {
                        let present = m.peek(k).is_some();
                        if !present {
                            reference.remove(&k);
                        }
                        let got = m.with(k, || 100, |v| { *v += 1; *v });
                        let want = reference.entry(k).or_insert(100);
                        *want += 1;
                        prop_assert_eq!(got, *want);
                    }
                    2 => {
                        let got = m.update(k, |v| { *v *= 2; *v });
                        match got {
                            Some(g) => {
                                let want = reference.get_mut(&k).map(|w| { *w *= 2; *w });
                                prop_assert_eq!(Some(g), want);
                            }
                            None => { reference.remove(&k); }
                        }
                    }
                    _ => {
                        let got = m.remove(k);
                        let want = reference.remove(&k);
                        if got.is_some() {
                            prop_assert_eq!(got, want);
                        }
                    }
                }
                prop_assert!(m.len() <= m.capacity());
            }
            for (k, v) in &reference {
                if let Some(got) = m.peek(*k) {
                    prop_assert_eq!(got, *v);
                }
            }
        }
    }
}
