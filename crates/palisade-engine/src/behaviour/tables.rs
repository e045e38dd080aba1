//! Bounded tables from a hashed identity to its record (CLOCK eviction, a hard cap), group
//! and username records, and the keys identities are hashed with.

use std::hash::{BuildHasher, RandomState};

use crate::clock::Nanos;

use super::*;

/// A bounded table from a hashed identity to a record.
pub(super) type Table<V> = crate::state::bounded::BoundedMap<V>;

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
