//! Rate limits: GCRA (rate + burst) and sliding-window counters over bounded per-key tables.
//!
//! Each limit owns a [`LimitTable`]: a bounded map ([`BoundedMap`], CLOCK eviction) from a hashed
//! key to a 24-byte cell. Evicting an idle GCRA cell loses nothing (a cell whose theoretical
//! arrival time has passed is the same as a fresh one); the eviction policy keeps frequently seen
//! keys, so a client hammering a limit stays tracked while a spray of one-off addresses churns
//! through the cold slots.

use std::hash::RandomState;
use std::sync::Arc;

use http::Method;

use super::bounded::BoundedMap;

use crate::clock::{Nanos, SECOND};
use crate::model::identity::KeyPart;
use crate::request::route::RouteId;

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Generic cell rate algorithm: one unit replenishes every `interval`; `burst` units may be
    /// spent at once.
    Gcra {
        /// Time to replenish one unit.
        interval: Nanos,
        /// Units that may be spent at once.
        burst: u64,
    },
    /// Approximate sliding window: the previous window's count, weighted by how much of it still
    /// overlaps, plus the current window's.
    SlidingWindow {
        /// Window length.
        window: Nanos,
        /// Units allowed per window.
        limit: u64,
    },
}

/// What happens when a limit is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    /// Answer 429.
    Limit,
    /// Hold the request until it fits, if that is within `max_delay`; else 429.
    Delay {
        /// Longest wait before answering 429 instead.
        max_delay: Nanos,
        /// Most requests held at once for this limit; more get 429.
        max_queue: u32,
    },
    /// Compute and log `would_limit`, forward anyway.
    Shadow,
    /// Put a challenge instead of answering 429 (a client holding a clearance goes on).
    Challenge,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Each request is one unit (or the route's fixed cost, if any).
    Requests,
    /// Cost units: the route's cost up front, corrected by what the upstream reports.
    Cost,
}

/// A compiled limit.
#[derive(Debug, Clone)]
pub struct LimitSpec {
    /// The limit's name, unique in the policy.
    pub name: Arc<str>,
    /// Key dimensions; empty means one global counter.
    pub key: Vec<KeyPart>,
    /// Routes it applies to; `None` means all.
    pub routes: Option<Vec<RouteId>>,
    /// Methods it applies to; empty means all.
    pub methods: Vec<Method>,
    /// How it counts.
    pub algorithm: Algorithm,
    /// What happens when exceeded.
    pub action: LimitAction,
    /// What it counts.
    pub unit: Unit,
    /// Quota for the `RateLimit-Policy` `q` parameter.
    pub quota: u64,
    /// Window in whole seconds for the `w` parameter.
    pub window_secs: u64,
    /// Whether this limit is advertised in RateLimit headers.
    pub headers: bool,
    /// Weight of this limit's signal in the risk score when exceeded.
    pub weight: u8,
    /// Most keys tracked at once.
    pub max_entries: usize,
}

impl LimitSpec {
    /// Whether the limit applies to a request on `route` with `method`.
    pub fn applies(&self, route: RouteId, method: &Method) -> bool {
        self.routes.as_ref().is_none_or(|r| r.contains(&route))
            && (self.methods.is_empty() || self.methods.contains(method))
    }

    /// Whether a table built for `other` can keep serving this spec (same counting semantics).
    pub fn state_compatible(&self, other: &LimitSpec) -> bool {
        self.name == other.name
            && self.key == other.key
            && self.algorithm == other.algorithm
            && self.max_entries == other.max_entries
    }
}

/// One key's limiter state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// GCRA theoretical arrival time.
    Gcra {
        /// Theoretical arrival time.
        tat: Nanos,
    },
    /// Sliding window counts.
    Window {
        /// Start of the current window.
        start: Nanos,
        /// Units counted in the previous window.
        prev: u64,
        /// Units counted in the current window.
        cur: u64,
    },
}

impl Default for Cell {
    fn default() -> Self {
        Cell::Gcra { tat: 0 }
    }
}

/// The result of asking a limit for `cost` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the units were granted (and charged).
    pub allowed: bool,
    /// Units left after this request (or now, if denied).
    pub remaining: u64,
    /// Time until the limit is fully replenished (GCRA) or the window ends (sliding window).
    pub reset: Nanos,
    /// If denied: time until the request would be allowed.
    pub retry_after: Nanos,
}

impl Algorithm {
    fn fresh(&self, now: Nanos) -> Cell {
        match self {
            Algorithm::Gcra { .. } => Cell::Gcra { tat: now },
            Algorithm::SlidingWindow { .. } => Cell::Window {
                start: now,
                prev: 0,
                cur: 0,
            },
        }
    }

    /// Asks for `cost` units at `now`; charges them only if allowed. With `reserve`, a request
    /// that does not fit now but would fit within `reserve` is charged anyway (it will be held
    /// until then) — only GCRA can reserve future capacity.
    pub fn check(&self, cell: &mut Cell, now: Nanos, cost: u64, reserve: Nanos) -> Verdict {
        match (*self, cell) {
            (Algorithm::Gcra { interval, burst }, Cell::Gcra { tat }) => {
                let tau = interval.saturating_mul(burst);
                let base = (*tat).max(now);
                let new_tat = base.saturating_add(interval.saturating_mul(cost));
                let horizon = now.saturating_add(tau);
                if new_tat <= horizon {
                    *tat = new_tat;
                    Verdict {
                        allowed: true,
                        remaining: (horizon - new_tat) / interval.max(1),
                        reset: new_tat - now,
                        retry_after: 0,
                    }
                } else {
                    let wait = new_tat - horizon;
                    let remaining = horizon.saturating_sub(base) / interval.max(1);
                    if wait <= reserve {
                        *tat = new_tat;
                    }
                    Verdict {
                        allowed: false,
                        remaining,
                        reset: base - now,
                        retry_after: wait,
                    }
                }
            }
            (Algorithm::SlidingWindow { window, limit }, Cell::Window { start, prev, cur }) => {
                let window = window.max(1);
                roll(window, now, start, prev, cur);
                let elapsed = now - *start;
                let est = weighted(*prev, window - elapsed, window).saturating_add(*cur);
                let reset = window - elapsed;
                if est.saturating_add(cost) <= limit {
                    *cur = cur.saturating_add(cost);
                    Verdict {
                        allowed: true,
                        remaining: limit - est - cost,
                        reset,
                        retry_after: 0,
                    }
                } else {
                    Verdict {
                        allowed: false,
                        remaining: limit.saturating_sub(est),
                        reset,
                        retry_after: window_wait(window, limit, elapsed, *prev, *cur, cost),
                    }
                }
            }
            // A cell from another algorithm (cannot happen: tables are per spec); start afresh.
            (alg, cell) => {
                *cell = alg.fresh(now);
                alg.check(cell, now, cost, reserve)
            }
        }
    }

    /// Adds (positive) or refunds (negative) units without checking, e.g. when the upstream
    /// reports the real cost after the response or a later limit refused the request.
    pub fn adjust(&self, cell: &mut Cell, now: Nanos, delta: i64) {
        match (*self, cell) {
            (Algorithm::Gcra { interval, .. }, Cell::Gcra { tat }) => {
                let amount = interval.saturating_mul(delta.unsigned_abs());
                if delta >= 0 {
                    *tat = (*tat).max(now).saturating_add(amount);
                } else {
                    *tat = tat.saturating_sub(amount);
                }
            }
            (Algorithm::SlidingWindow { window, .. }, Cell::Window { start, prev, cur }) => {
                roll(window.max(1), now, start, prev, cur);
                if delta >= 0 {
                    *cur = cur.saturating_add(delta.unsigned_abs());
                } else {
                    *cur = cur.saturating_sub(delta.unsigned_abs());
                }
            }
            _ => {}
        }
    }

    /// The state a person should see, without charging anything.
    pub fn peek(&self, cell: &Cell, now: Nanos) -> Verdict {
        let mut copy = *cell;
        let mut v = self.check(&mut copy, now, 0, 0);
        v.allowed = true;
        v
    }

    /// Whether a cell is indistinguishable from a fresh one at `now` (and can be dropped freely).
    pub fn is_idle(&self, cell: &Cell, now: Nanos) -> bool {
        match (*self, cell) {
            (Algorithm::Gcra { .. }, Cell::Gcra { tat }) => *tat <= now,
            (Algorithm::SlidingWindow { window, .. }, Cell::Window { start, .. }) => {
                now >= start.saturating_add(window.saturating_mul(2))
            }
            _ => true,
        }
    }
}

fn roll(window: Nanos, now: Nanos, start: &mut Nanos, prev: &mut u64, cur: &mut u64) {
    if now < *start {
        // Time never runs backwards here, but be safe rather than underflow.
        *start = now;
        return;
    }
    let windows = (now - *start) / window;
    if windows >= 1 {
        *prev = if windows == 1 { *cur } else { 0 };
        *cur = 0;
        *start = start.saturating_add(windows.saturating_mul(window));
    }
}

/// `count * part / whole`, rounded up so the estimate never undercounts.
fn weighted(count: u64, part: Nanos, whole: Nanos) -> u64 {
    (count as u128 * part as u128).div_ceil(whole.max(1) as u128) as u64
}

/// Time until `cost` more units fit a sliding window.
fn window_wait(window: Nanos, limit: u64, elapsed: Nanos, prev: u64, cur: u64, cost: u64) -> Nanos {
    let w = window as u128;
    if cost > limit {
        return window.saturating_mul(2);
    }
    if cur + cost <= limit && prev > 0 {
        // Need prev * (W - e) / W <= limit - cur - cost within this window.
        let room = (limit - cur - cost) as u128;
        let e = w - (room * w) / prev as u128;
        return (e.saturating_sub(elapsed as u128) + 1) as Nanos;
    }
    // Wait for the next window, where this window's count becomes the weighted previous one.
    let to_next = w - elapsed as u128;
    if cur == 0 {
        return to_next as Nanos;
    }
    let room = (limit - cost) as u128;
    let e = w.saturating_sub((room * w) / cur as u128);
    (to_next + e + 1).min(u64::MAX as u128) as Nanos
}

/// The bounded per-key state of one limit.
pub struct LimitTable {
    cells: BoundedMap<Cell>,
    /// Secret hasher for keys, fixed for the table's life so admin look-ups find the same cell.
    pub hasher: RandomState,
}

impl std::fmt::Debug for LimitTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl LimitTable {
    /// A table that tracks at most `max_entries` keys.
    pub fn new(max_entries: usize) -> Self {
        Self {
            cells: BoundedMap::new(max_entries.max(16)),
            hasher: RandomState::new(),
        }
    }

    /// Runs `check` for a key, creating its cell if needed.
    pub fn check(
        &self,
        alg: &Algorithm,
        key: u64,
        now: Nanos,
        cost: u64,
        reserve: Nanos,
    ) -> Verdict {
        self.cells.with(
            key,
            || alg.fresh(now),
            |cell| alg.check(cell, now, cost, reserve),
        )
    }

    /// Adjusts a key's charge if it is tracked.
    pub fn adjust(&self, alg: &Algorithm, key: u64, now: Nanos, delta: i64) {
        self.cells.update(key, |cell| alg.adjust(cell, now, delta));
    }

    /// A key's current state, if tracked.
    pub fn peek(&self, alg: &Algorithm, key: u64, now: Nanos) -> Option<Verdict> {
        self.cells.peek(key).map(|c| alg.peek(&c, now))
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Most keys tracked at once.
    pub fn capacity(&self) -> u64 {
        self.cells.capacity() as u64
    }

    /// Keys evicted so far.
    pub fn evictions(&self) -> u64 {
        self.cells.evictions()
    }

    /// Bytes held by the table (keys, cells, locks).
    pub fn approx_bytes(&self) -> usize {
        self.cells.approx_bytes()
    }
}

/// Seconds, rounded up, for headers.
pub fn ceil_secs(n: Nanos) -> u64 {
    n.div_ceil(SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn gcra_allows_burst_then_one_per_interval() {
        let alg = Algorithm::Gcra {
            interval: 100 * MS,
            burst: 5,
        };
        let mut cell = alg.fresh(0);
        for i in 0..5 {
            let v = alg.check(&mut cell, 0, 1, 0);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 4 - i);
        }
        let v = alg.check(&mut cell, 0, 1, 0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, 100 * MS);
        assert_eq!(v.reset, 500 * MS);
        assert!(!alg.check(&mut cell, 99 * MS, 1, 0).allowed);
        assert!(alg.check(&mut cell, 100 * MS, 1, 0).allowed);
        assert!(alg.is_idle(&cell, 600 * MS));
    }

    #[test]
    fn gcra_cost_and_reservation() {
        let alg = Algorithm::Gcra {
            interval: 10 * MS,
            burst: 10,
        };
        let mut cell = alg.fresh(0);
        assert!(alg.check(&mut cell, 0, 8, 0).allowed);
        let denied = alg.check(&mut cell, 0, 5, 0);
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 2);
        assert_eq!(denied.retry_after, 30 * MS);
        // Reservation within 50ms charges the units for later.
        let held = alg.check(&mut cell, 0, 5, 50 * MS);
        assert!(!held.allowed);
        assert_eq!(held.retry_after, 30 * MS);
        assert_eq!(cell, Cell::Gcra { tat: 130 * MS });
        alg.adjust(&mut cell, 0, -5);
        assert_eq!(cell, Cell::Gcra { tat: 80 * MS });
    }

    #[test]
    fn sliding_window_weights_previous_window() {
        let alg = Algorithm::SlidingWindow {
            window: 1000 * MS,
            limit: 10,
        };
        let mut cell = alg.fresh(0);
        for _ in 0..10 {
            assert!(alg.check(&mut cell, 0, 1, 0).allowed);
        }
        let d = alg.check(&mut cell, 500 * MS, 1, 0);
        assert!(!d.allowed);
        // At 1.5 s the previous window (10) weighs 50%: 5 used, 5 left.
        let v = alg.check(&mut cell, 1500 * MS, 1, 0);
        assert!(v.allowed);
        assert_eq!(v.remaining, 4);
        // Two windows later everything has drained.
        let v = alg.check(&mut cell, 3100 * MS, 1, 0);
        assert_eq!(v.remaining, 9);
    }

    #[test]
    fn sliding_window_retry_after_is_exact_enough() {
        let alg = Algorithm::SlidingWindow {
            window: 1000 * MS,
            limit: 10,
        };
        let mut cell = alg.fresh(0);
        for _ in 0..10 {
            alg.check(&mut cell, 0, 1, 0);
        }
        let d = alg.check(&mut cell, 200 * MS, 1, 0);
        let at = 200 * MS + d.retry_after;
        let mut probe = cell;
        assert!(
            alg.check(&mut probe, at, 1, 0).allowed,
            "allowed at retry_after"
        );
        let mut early = cell;
        assert!(
            !alg.check(&mut early, at - 2 * MS, 1, 0).allowed,
            "not much earlier"
        );
    }

    #[test]
    fn table_is_bounded_and_counts_evictions() {
        let t = LimitTable::new(1000);
        let alg = Algorithm::Gcra {
            interval: SECOND,
            burst: 1,
        };
        for k in 0..20_000u64 {
            t.check(&alg, k, 0, 1, 0);
        }
        assert!(t.len() <= 1000 + 1000 / 10, "len {}", t.len());
        assert!(t.evictions() >= 18_000);
    }
}
