//! The dashboard's recent history, kept in memory: per 10-second bucket over the last hour,
//! decisions by action and the latency of forwarded requests (log2 bins, for percentiles);
//! per route, requests and refusals over the last five minutes. Fixed size, lock-free: a few
//! relaxed atomic additions per request.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds per bucket.
pub const BUCKET_SECS: u64 = 10;
/// Buckets kept: one hour.
pub const BUCKETS: usize = 360;
/// Actions counted, in this order (anything else counts as the last).
pub const ACTIONS: [&str; 8] = [
    "allow",
    "tag",
    "delay",
    "challenge",
    "limit",
    "block",
    "unauthorized",
    "other",
];
/// Latency bins: bin 0 is under 1 ms, bin i is [2^(i-1), 2^i) ms; the last takes the rest.
const LATENCY_BINS: usize = 16;
/// Routes tracked one by one (later ones share the last slot).
pub const ROUTES: usize = 64;
/// Buckets per route: five minutes.
const ROUTE_BUCKETS: usize = 30;

#[derive(Default)]
struct Slot {
    epoch: AtomicU64,
    actions: [AtomicU64; ACTIONS.len()],
    latency: [AtomicU64; LATENCY_BINS],
}

#[derive(Default)]
struct RouteSlot {
    epoch: AtomicU64,
    total: AtomicU64,
    refused: AtomicU64,
}

/// The history (see the module docs).
pub struct Series {
    slots: Box<[Slot]>,
    routes: Box<[RouteSlot]>,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            slots: (0..BUCKETS).map(|_| Slot::default()).collect(),
            routes: (0..ROUTES * ROUTE_BUCKETS)
                .map(|_| RouteSlot::default())
                .collect(),
        }
    }
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Series")
    }
}

/// One bucket as the dashboard reads it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    /// Bucket start (Unix seconds).
    pub t: u64,
    /// Decisions by action, in [`ACTIONS`] order.
    pub actions: [u64; ACTIONS.len()],
    /// Latency of forwarded requests, median and 99th percentile (ms, bin upper bounds).
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
}

/// Makes `epoch` current in a slot, zeroing `counters` when it was an older one. Two threads
/// racing over a new bucket lose at most the few counts added in between.
fn roll(epoch_cell: &AtomicU64, epoch: u64, counters: &[&AtomicU64]) {
    let seen = epoch_cell.load(Ordering::Relaxed);
    if seen != epoch
        && epoch_cell
            .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        for c in counters {
            c.store(0, Ordering::Relaxed);
        }
    }
}

impl Series {
    /// Counts one decision at `unix_secs`: its action, its route, whether it was refused, and
    /// for a forwarded request its latency.
    pub fn record(
        &self,
        unix_secs: u64,
        action: &str,
        route: usize,
        refused: bool,
        latency_ms: Option<f64>,
    ) {
        let epoch = unix_secs / BUCKET_SECS;
        if let Some(slot) = self.slots.get(epoch as usize % BUCKETS) {
            if slot.epoch.load(Ordering::Relaxed) != epoch {
                let all: Vec<&AtomicU64> = slot.actions.iter().chain(slot.latency.iter()).collect();
                roll(&slot.epoch, epoch, &all);
            }
            let a = ACTIONS
                .iter()
                .position(|n| *n == action)
                .unwrap_or(ACTIONS.len() - 1);
            if let Some(c) = slot.actions.get(a) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(ms) = latency_ms.filter(|m| m.is_finite() && *m >= 0.0) {
                let bin = if ms < 1.0 {
                    0
                } else {
                    (ms.log2().floor() as usize + 1).min(LATENCY_BINS - 1)
                };
                if let Some(c) = slot.latency.get(bin) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let r = route.min(ROUTES - 1);
        let i = r * ROUTE_BUCKETS + epoch as usize % ROUTE_BUCKETS;
        if let Some(slot) = self.routes.get(i) {
            if slot.epoch.load(Ordering::Relaxed) != epoch {
                roll(&slot.epoch, epoch, &[&slot.total, &slot.refused]);
            }
            slot.total.fetch_add(1, Ordering::Relaxed);
            if refused {
                slot.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The last `n` buckets up to `now_secs`, oldest first (empty buckets as zeros).
    pub fn points(&self, now_secs: u64, n: usize) -> Vec<Point> {
        let now = now_secs / BUCKET_SECS;
        let n = n.min(BUCKETS) as u64;
        (0..n)
            .rev()
            .filter_map(|back| {
                let epoch = now.checked_sub(back)?;
                let slot = self.slots.get(epoch as usize % BUCKETS)?;
                let current = slot.epoch.load(Ordering::Relaxed) == epoch;
                let read = |c: &AtomicU64| {
                    if current {
                        c.load(Ordering::Relaxed)
                    } else {
                        0
                    }
                };
                let actions = std::array::from_fn(|i| slot.actions.get(i).map_or(0, read));
                let bins: Vec<u64> = slot.latency.iter().map(read).collect();
                Some(Point {
                    t: epoch * BUCKET_SECS,
                    actions,
                    p50_ms: percentile(&bins, 0.5),
                    p99_ms: percentile(&bins, 0.99),
                })
            })
            .collect()
    }

    /// Per route (by id): requests and refusals over the last five minutes.
    pub fn routes(&self, now_secs: u64, count: usize) -> Vec<(u64, u64)> {
        let now = now_secs / BUCKET_SECS;
        (0..count.min(ROUTES))
            .map(|r| {
                let mut total = 0;
                let mut refused = 0;
                for back in 0..ROUTE_BUCKETS as u64 {
                    let Some(epoch) = now.checked_sub(back) else {
                        continue;
                    };
                    let i = r * ROUTE_BUCKETS + epoch as usize % ROUTE_BUCKETS;
                    if let Some(s) = self.routes.get(i)
                        && s.epoch.load(Ordering::Relaxed) == epoch
                    {
                        total += s.total.load(Ordering::Relaxed);
                        refused += s.refused.load(Ordering::Relaxed);
                    }
                }
                (total, refused)
            })
            .collect()
    }
}

/// The upper bound (ms) of the bin holding quantile `q` of the counts.
fn percentile(bins: &[u64], q: f64) -> Option<f64> {
    let total: u64 = bins.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in bins.iter().enumerate() {
        seen += c;
        if seen >= want {
            return Some(f64::from(1u32 << i.min(31)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_bucket_and_forgets_old_ones() {
        let s = Series::default();
        let t = 1_796_630_400;
        for _ in 0..90 {
            s.record(t, "allow", 0, false, Some(3.0));
        }
        for _ in 0..10 {
            s.record(t + 1, "limit", 0, true, None);
        }
        s.record(t, "strange", 1, true, Some(900.0));
        let p = s.points(t + 5, 1);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].actions[0], 90);
        assert_eq!(p[0].actions[4], 10);
        assert_eq!(p[0].actions[7], 1);
        assert_eq!(p[0].p50_ms, Some(4.0), "3 ms is in the [2, 4) bin");
        assert_eq!(p[0].p99_ms, Some(1024.0));
        assert_eq!(s.routes(t, 2), vec![(100, 10), (1, 1)]);
        // An hour later the same slot is reused: the old counts are gone.
        s.record(t + 3600, "block", 0, true, None);
        let p = s.points(t + 3600, 1);
        assert_eq!(p[0].actions[0], 0);
        assert_eq!(p[0].actions[5], 1);
        // Buckets not written since are read as empty.
        assert!(
            s.points(t + 7200, 360)
                .iter()
                .all(|p| p.actions.iter().sum::<u64>() == 0)
        );
        assert_eq!(s.routes(t + 7200, 1), vec![(0, 0)]);
    }
}
