//! Per-route baselines of request rate and error ratio, and attack mode.

use std::sync::atomic::Ordering;

use crate::clock::Nanos;
use crate::request::route::RouteId;

use super::*;

/// A route's rolling baseline.
#[derive(Debug, Clone, Default)]
pub(super) struct Baseline {
    pub(super) bucket: u64,
    pub(super) requests: u32,
    pub(super) errors: u32,
    pub(super) learned: u32,
    pub(super) base_rate: f32,
    pub(super) base_errors: f32,
    pub(super) hot: u32,
    pub(super) calm: u32,
    pub(super) under_attack: bool,
}

/// A change of attack mode, for the log and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackEvent {
    /// The route.
    pub route: RouteId,
    /// Whether attack mode went on (true) or off.
    pub on: bool,
    /// Requests in the bucket that decided it.
    pub requests: u32,
    /// Baseline requests per bucket.
    pub baseline: f32,
    /// Error ratio in the bucket.
    pub error_ratio: f32,
}

impl Behaviour {
    /// Counts a request (or an error answer) into the route's baseline, closing buckets as
    /// time passes.
    pub(super) fn count_route(&self, route: RouteId, now: Nanos, error: bool) {
        let Some(spec) = &self.policy.attack else {
            return;
        };
        let Some(cell) = self.baselines.get(route) else {
            return;
        };
        let Ok(mut b) = cell.lock() else {
            return;
        };
        let bucket = now / spec.bucket.max(1);
        if b.bucket != bucket {
            if b.bucket != 0 {
                let elapsed = bucket.saturating_sub(b.bucket);
                self.close_bucket(&mut b, spec, route, elapsed);
            }
            b.bucket = bucket;
            b.requests = 0;
            b.errors = 0;
        }
        if error {
            b.errors = b.errors.saturating_add(1);
        } else {
            b.requests = b.requests.saturating_add(1);
        }
    }

    pub(super) fn close_bucket(
        &self,
        b: &mut Baseline,
        spec: &AttackSpec,
        route: RouteId,
        elapsed: u64,
    ) {
        let requests = b.requests as f32;
        let ratio = if b.requests > 0 {
            (b.errors as f32 / requests).min(1.0)
        } else {
            0.0
        };
        // Buckets with no traffic at all in between count as calm and lower the baseline.
        let idle = elapsed.saturating_sub(1).min(u64::from(spec.leave_after)) as u32;
        let deviating = b.learned >= spec.warmup
            && ((b.requests >= spec.min_requests
                && requests > spec.rate_factor * b.base_rate.max(1.0))
                || (b.requests >= spec.min_requests / 2
                    && ratio > b.base_errors + spec.error_increase));
        if deviating {
            b.hot += 1;
            b.calm = 0;
        } else {
            b.calm += 1 + idle;
            b.hot = 0;
            // Learn only from normal traffic.
            let a = if b.learned < spec.warmup { 0.5 } else { 0.1 };
            b.base_rate += a * (requests - b.base_rate);
            b.base_errors += a * (ratio - b.base_errors);
            for _ in 0..idle {
                b.base_rate *= 0.9;
            }
            b.learned = b.learned.saturating_add(1);
        }
        let flip = if !b.under_attack && b.hot >= spec.enter_after {
            Some(true)
        } else if b.under_attack && b.calm >= spec.leave_after {
            Some(false)
        } else {
            None
        };
        if let Some(on) = flip {
            b.under_attack = on;
            if on {
                self.any_attack.fetch_add(1, Ordering::Relaxed);
            } else {
                self.any_attack.fetch_sub(1, Ordering::Relaxed);
            }
            if let Ok(mut ev) = self.events.lock()
                && ev.len() < 1024
            {
                ev.push(AttackEvent {
                    route,
                    on,
                    requests: b.requests,
                    baseline: b.base_rate,
                    error_ratio: ratio,
                });
            }
        }
    }

    /// Whether a route is in attack mode (with gateway scope: whether any route is).
    pub fn under_attack(&self, route: RouteId) -> bool {
        if self.any_attack.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match self.policy.attack.as_ref().map(|a| a.scope) {
            Some(AttackScope::Gateway) => true,
            Some(AttackScope::Route) => self
                .baselines
                .get(route)
                .and_then(|b| b.lock().ok().map(|b| b.under_attack))
                .unwrap_or(false),
            None => false,
        }
    }

    /// Routes in attack mode now.
    pub fn attacked_routes(&self) -> Vec<RouteId> {
        self.baselines
            .iter()
            .enumerate()
            .filter(|(_, b)| b.lock().is_ok_and(|b| b.under_attack))
            .map(|(i, _)| i)
            .collect()
    }

    /// Attack-mode changes since the last call.
    pub fn take_events(&self) -> Vec<AttackEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}
