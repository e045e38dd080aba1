//! What behaviour counted a request under, carried by its decision to where its answer is
//! observed.

use crate::behaviour::spec::{DIMS, Dim};
use crate::request::route::RouteId;

/// What one request was counted under, for observing its answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace {
    pub(crate) keys: [Option<u64>; DIMS],
    pub(crate) route: RouteId,
    /// Hashed username, on the stuffing route.
    pub(crate) username: Option<u64>,
    /// Hashed client address, with a username (for the addresses a username fails from).
    pub(crate) ip_hash: Option<u64>,
    /// Which record throttling is kept on.
    pub(crate) throttle: Option<(Dim, u64)>,
}

impl Trace {
    /// The record progressive throttling is kept on: the key, else the address.
    pub fn throttle_identity(&self) -> Option<Dim> {
        self.throttle.map(|(d, _)| d)
    }

    /// The throttling record as a value (its dimension and hashed key): one client, for
    /// bounding how many of its requests are held at once.
    pub fn throttle_key(&self) -> Option<(Dim, u64)> {
        self.throttle
    }
}
