//! Bounded tables from a hashed identity to its record (S3-FIFO eviction, a hard cap), group
//! and username records, and the keys identities are hashed with.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};

use crate::clock::Nanos;

use super::*;

/// Counts evictions.
#[derive(Debug, Clone, Default)]
pub(super) struct Evictions(pub(super) Arc<AtomicU64>);

impl<V> Lifecycle<u64, V> for Evictions {
    type RequestState = ();
    fn on_evict(&self, _state: &mut (), _key: u64, _val: V) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bounded table from a hashed identity to a record.
pub(super) struct Table<V: Clone> {
    pub(super) cells: Cache<u64, V, UnitWeighter, DefaultHashBuilder, Evictions>,
    pub(super) evictions: Evictions,
}

impl<V: Clone> Table<V> {
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(16);
        let evictions = Evictions::default();
        Self {
            cells: Cache::with(
                max,
                max as u64,
                UnitWeighter,
                DefaultHashBuilder::default(),
                evictions.clone(),
            ),
            evictions,
        }
    }

    /// Runs `f` on the key's record, creating it with `fresh` first if needed.
    pub(super) fn with<R>(
        &self,
        key: u64,
        fresh: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> Option<R> {
        let mut f = Some(f);
        let result = self.cells.entry(&key, None, |_, v| {
            let r = f.take().map(|f| f(v));
            EntryAction::Retain(r)
        });
        match result {
            EntryResult::Retained(r) => r,
            EntryResult::Vacant(guard) => {
                let mut v = fresh();
                let r = f.take().map(|f| f(&mut v));
                let _ = guard.insert(v);
                r
            }
            _ => None,
        }
    }

    pub(super) fn peek(&self, key: u64) -> Option<V> {
        self.cells.peek(&key)
    }

    /// Runs `f` on the key's record if there is one.
    pub(super) fn update<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut f = Some(f);
        match self.cells.entry(&key, None, |_, v| {
            EntryAction::Retain(f.take().map(|f| f(v)))
        }) {
            EntryResult::Retained(r) => r,
            _ => None,
        }
    }
}

/// A group record: which keys it has seen, per epoch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Group {
    pub(super) epoch: u64,
    pub(super) cur: u64,
    pub(super) prev: u64,
}

impl Group {
    pub(super) fn add(&mut self, now: Nanos, window: Nanos, h: u64) -> u32 {
        let epoch = now / window.max(1);
        if epoch != self.epoch {
            self.prev = if epoch == self.epoch + 1 { self.cur } else { 0 };
            self.cur = 0;
            self.epoch = epoch;
        }
        sketch_add(&mut self.cur, h);
        sketch_estimate(self.cur | self.prev)
    }
}

/// A username's failures, for one-username-many-sources.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Target {
    pub(super) epoch: u64,
    pub(super) sources_cur: u64,
    pub(super) sources_prev: u64,
    pub(super) failures: u32,
    /// Queued for sharing (cluster mode).
    pub(super) queued: bool,
}

/// The keys values and identities are hashed with: random per process, or (cluster mode)
/// the same on every gateway, so their records and sketches can be merged.
#[derive(Debug, Clone, Copy)]
pub(super) struct SipKeys(u64, u64);

impl SipKeys {
    pub(super) const CLUSTER: SipKeys = SipKeys(0x6265_6861_7669_6f75, 0x7220_7368_6172_6564);

    pub(super) fn random() -> Self {
        let r = RandomState::new();
        SipKeys(r.hash_one(1u8), r.hash_one(2u8))
    }
}

impl BuildHasher for SipKeys {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(self.0, self.1)
    }
}
