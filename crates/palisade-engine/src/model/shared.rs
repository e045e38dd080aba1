//! What the shared store (cluster mode) is asked and told about a request's limits.

use std::sync::Arc;

use crate::clock::Nanos;
use crate::state::limiter::Algorithm;

/// A limit check the shared store makes for a request (cluster mode): which limit, under which
/// stable key, for how many units.
#[derive(Debug, Clone)]
pub struct SharedCheck {
    /// Index of the limit in the policy.
    pub index: usize,
    /// The limit's name.
    pub limit: Arc<str>,
    /// The key, hashed with [`crate::model::identity::StableHasher`].
    pub key: u64,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Units asked for.
    pub cost: u64,
    /// How far into the future a delayed request may reserve.
    pub reserve: Nanos,
    /// The limit's quota per window (for headers when the store is bypassed).
    pub quota: u64,
}

/// A correction the shared store must apply (a refund, or the difference between a reported
/// and a charged cost).
#[derive(Debug, Clone)]
pub struct SharedAdjust {
    /// Index of the limit in the policy.
    pub index: usize,
    /// The limit's name.
    pub limit: Arc<str>,
    /// The stable key.
    pub key: u64,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Units to add (negative: give back).
    pub delta: i64,
}
