//! Time as the engine sees it: monotonic nanoseconds handed in by the caller.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic time in nanoseconds since an arbitrary origin fixed by the caller's clock.
pub type Nanos = u64;

/// One second in [`Nanos`].
pub const SECOND: Nanos = 1_000_000_000;

/// A source of monotonic time and wall-clock time. The gateway implements it over the system
/// clock; tests use [`ManualClock`] and move it forward instead of sleeping.
pub trait Clock: Send + Sync {
    /// Monotonic nanoseconds.
    fn now(&self) -> Nanos;
    /// Milliseconds since the Unix epoch, for logs and absolute reset times.
    fn unix_ms(&self) -> u64;
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
    unix_origin_ms: u64,
}

impl ManualClock {
    /// A clock at monotonic 0 and the given wall-clock origin.
    pub fn new(unix_origin_ms: u64) -> Self {
        Self {
            nanos: AtomicU64::new(0),
            unix_origin_ms,
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Nanos) {
        self.nanos.fetch_add(by, Ordering::Relaxed);
    }

    /// Sets the clock to an absolute monotonic time.
    pub fn set(&self, to: Nanos) {
        self.nanos.store(to, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.nanos.load(Ordering::Relaxed)
    }

    fn unix_ms(&self) -> u64 {
        self.unix_origin_ms + self.now() / 1_000_000
    }
}
