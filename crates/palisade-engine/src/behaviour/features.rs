//! One identity's feature record: counts per epoch read as a sliding estimate, distinct-count
//! sketches, remembered signals with a half-life.

use crate::clock::Nanos;
use crate::request::route::RouteId;

/// Distinct-count sketch kinds kept per record.
#[derive(Debug, Clone, Copy)]
pub(super) enum Distinct {
    UserAgents,
    Ips,
    Asns,
    Countries,
    Keys,
    Accounts,
    Usernames,
    Ids,
    Busting,
}

/// Distinct-count sketches per record.
pub const DISTINCTS: usize = 9;

/// One epoch's counts.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub(super) requests: u32,
    pub(super) routes: [u16; ROUTE_BUCKETS],
    pub(super) s401: u16,
    pub(super) s403: u16,
    pub(super) s404: u16,
    pub(super) s429: u16,
    pub(super) after_429: u16,
    pub(super) logins: u16,
    pub(super) failed_logins: u16,
    pub(super) busting_requests: u16,
    pub(super) id_steps: u16,
    pub(super) id_min: u64,
    pub(super) id_max: u64,
    pub(super) distinct: [u64; DISTINCTS],
}

pub(super) const ROUTE_BUCKETS: usize = 8;
pub(super) const MEMORY: usize = 6;

/// The feature record of one identity.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Features {
    pub(super) epoch: u64,
    pub(super) cur: Counts,
    pub(super) prev: Counts,
    pub(super) last: Nanos,
    pub(super) short_rate: f32,
    pub(super) gaps: u32,
    pub(super) gap_mean: f32,
    pub(super) gap_sq: f32,
    pub(super) quiet_until: Nanos,
    /// The route the last 429 answered (a `Retry-After` covers that route).
    pub(super) quiet_route: RouteId,
    pub(super) last_id: u64,
    pub(super) id_run: u16,
    /// Remembered signals: (signal index + 1, amount); 0 = free slot.
    pub(super) memory: [(u8, f32); MEMORY],
    pub(super) memory_at: Nanos,
    /// Progressive throttling.
    pub(super) level: u8,
    pub(super) level_at: Nanos,
    pub(super) last_offense: Nanos,
    /// Last successful request on each flow's `after` route.
    pub(super) flow_seen: [Nanos; FLOW_SLOTS],
    /// Queued for sharing (cluster mode).
    pub(super) queued: bool,
}

pub(super) const FLOW_SLOTS: usize = 4;

/// Adds a hashed value to a 64-bit linear-counting sketch.
pub(super) fn sketch_add(bits: &mut u64, h: u64) {
    *bits |= 1u64 << (h.rotate_right(17) & 63);
}

/// Estimated distinct values in a linear-counting sketch.
pub fn sketch_estimate(bits: u64) -> u32 {
    // The estimate depends only on the number of zero bits: 65 values of linear counting,
    // `-m ln(zeros / m)` for m = 64 bits, 266 when saturated (the test below checks every one).
    const ESTIMATES: [u32; 65] = [
        266, 266, 222, 196, 177, 163, 151, 142, 133, 126, 119, 113, 107, 102, 97, 93, 89, 85, 81,
        78, 74, 71, 68, 65, 63, 60, 58, 55, 53, 51, 48, 46, 44, 42, 40, 39, 37, 35, 33, 32, 30, 28,
        27, 25, 24, 23, 21, 20, 18, 17, 16, 15, 13, 12, 11, 10, 9, 7, 6, 5, 4, 3, 2, 1, 0,
    ];
    ESTIMATES
        .get(bits.count_zeros() as usize)
        .copied()
        .unwrap_or(0)
}

impl Features {
    pub(super) fn fresh(now: Nanos, window: Nanos) -> Self {
        Self {
            epoch: now / window.max(1),
            last: 0,
            ..Self::default()
        }
    }

    /// Moves the epochs forward to `now`.
    pub(super) fn roll(&mut self, now: Nanos, window: Nanos) {
        let epoch = now / window.max(1);
        if epoch == self.epoch {
            return;
        }
        self.prev = if epoch == self.epoch + 1 {
            self.cur
        } else {
            Counts::default()
        };
        self.cur = Counts::default();
        self.epoch = epoch;
    }

    /// Weight of the previous epoch in sliding estimates at `now`.
    pub(super) fn prev_weight(&self, now: Nanos, window: Nanos) -> f32 {
        let w = window.max(1);
        let into = now.saturating_sub(self.epoch.saturating_mul(w));
        1.0 - (into as f32 / w as f32).clamp(0.0, 1.0)
    }

    pub(super) fn est(&self, now: Nanos, window: Nanos, f: impl Fn(&Counts) -> u32) -> f32 {
        f(&self.cur) as f32 + f(&self.prev) as f32 * self.prev_weight(now, window)
    }

    pub(super) fn distinct(&self, d: Distinct) -> u32 {
        let i = d as usize;
        let a = self.cur.distinct.get(i).copied().unwrap_or(0);
        let b = self.prev.distinct.get(i).copied().unwrap_or(0);
        sketch_estimate(a | b)
    }

    pub(super) fn add_distinct(&mut self, d: Distinct, h: u64) {
        if let Some(bits) = self.cur.distinct.get_mut(d as usize) {
            sketch_add(bits, h);
        }
    }

    /// Decays remembered signals to `now`.
    pub(super) fn decay(&mut self, now: Nanos, half_life: Nanos) {
        if now <= self.memory_at {
            return;
        }
        // Nothing remembered (most clients): nothing to decay, and no power to compute.
        if self.memory.iter().all(|s| s.0 == 0) {
            self.memory_at = now;
            return;
        }
        let halves = (now - self.memory_at) as f64 / half_life.max(1) as f64;
        let f = 0.5f64.powf(halves) as f32;
        for slot in &mut self.memory {
            slot.1 *= f;
            if slot.1 < 1.0 {
                *slot = (0, 0.0);
            }
        }
        self.memory_at = now;
    }

    pub(super) fn remember(&mut self, sig: usize, weight: u8) {
        let tag = (sig + 1) as u8;
        let w = f32::from(weight);
        if let Some(slot) = self.memory.iter_mut().find(|s| s.0 == tag) {
            slot.1 = slot.1.max(w);
            return;
        }
        // A free slot, else the weakest one.
        let mut weakest: Option<&mut (u8, f32)> = None;
        for slot in &mut self.memory {
            if weakest.as_ref().is_none_or(|x| slot.1 < x.1) {
                weakest = Some(slot);
            }
        }
        if let Some(slot) = weakest
            && slot.1 < w
        {
            *slot = (tag, w);
        }
    }

    /// The share of the busiest route (for the detectors, which need no entropy).
    pub(super) fn route_share(&self, now: Nanos, window: Nanos) -> f32 {
        let pw = self.prev_weight(now, window);
        let mut total = 0.0f32;
        let mut top = 0.0f32;
        for (a, b) in self.cur.routes.iter().zip(&self.prev.routes) {
            let c = f32::from(*a) + f32::from(*b) * pw;
            total += c;
            top = top.max(c);
        }
        if total <= 0.0 { 0.0 } else { top / total }
    }

    pub(super) fn route_share_and_entropy(&self, now: Nanos, window: Nanos) -> (f32, f32) {
        let pw = self.prev_weight(now, window);
        let mut total = 0.0f32;
        let mut top = 0.0f32;
        let mut counts = [0.0f32; ROUTE_BUCKETS];
        for (i, c) in counts.iter_mut().enumerate() {
            let a = f32::from(self.cur.routes.get(i).copied().unwrap_or(0));
            let b = f32::from(self.prev.routes.get(i).copied().unwrap_or(0));
            *c = a + b * pw;
            total += *c;
            top = top.max(*c);
        }
        if total <= 0.0 {
            return (0.0, 0.0);
        }
        let entropy = counts
            .iter()
            .filter(|c| **c > 0.0)
            .map(|c| {
                let p = c / total;
                -p * p.log2()
            })
            .sum();
        (top / total, entropy)
    }

    pub(super) fn regularity(&self) -> Option<f32> {
        if self.gaps == 0 || self.gap_mean <= 0.0 {
            return None;
        }
        let var = (self.gap_sq - self.gap_mean * self.gap_mean).max(0.0);
        Some(var.sqrt() / self.gap_mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linear counting: `-m ln(zeros / m)` for a sketch of `m` = 64 bits.
    fn linear_count(zeros: u32) -> u32 {
        if zeros == 0 {
            // Saturated: report the largest value 64 bits can stand for.
            return 266;
        }
        let m = 64.0f64;
        (-m * (f64::from(zeros) / m).ln()).round() as u32
    }

    /// The table gives what the formula gives, for every number of zero bits.
    #[test]
    fn sketch_estimates_follow_linear_counting() {
        for zeros in 0..=64u32 {
            let bits = if zeros == 64 { 0 } else { u64::MAX << zeros };
            assert_eq!(bits.count_zeros(), zeros);
            assert_eq!(sketch_estimate(bits), linear_count(zeros));
        }
        assert_eq!(sketch_estimate(0), 0);
        assert_eq!(sketch_estimate(1), 1);
        assert_eq!(sketch_estimate(u64::MAX), 266);
    }
}
