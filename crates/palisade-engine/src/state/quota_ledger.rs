//! Daily quotas: request and spend budgets per API key or account, reset at midnight UTC.
//!
//! A request *reserves* its units before it is forwarded (one request, and the route's spend
//! reservation) and *settles* when the upstream answers (charging the spend it reported, or the
//! route's fixed spend). Reservations count against the budget while in flight, so concurrent
//! requests cannot overspend; a request that is never served gives its reservation back.
//!
//! The ledger holds one row per (quota, identity) — bounded by the keys and accounts that exist,
//! not by client input — and marks rows it changed, so the gateway can persist them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

pub use crate::model::header_item::QuotaItems;
use crate::request::route::RouteId;

/// Seconds in a day.
pub const DAY_SECS: u64 = 86_400;

/// Micro-dollars per dollar.
pub const MICROS_PER_USD: f64 = 1_000_000.0;

/// The UTC day number of a wall-clock time.
pub fn day_of(unix_ms: u64) -> u32 {
    (unix_ms / 1000 / DAY_SECS) as u32
}

/// Seconds from `unix_ms` to the next midnight UTC (at least 1).
pub fn secs_to_midnight(unix_ms: u64) -> u64 {
    let secs = unix_ms / 1000;
    (DAY_SECS - secs % DAY_SECS).max(1)
}

/// What a quota is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKey {
    /// Each API key.
    ApiKey,
    /// Each account (all its keys together).
    Account,
}

impl QuotaKey {
    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            QuotaKey::ApiKey => "api_key",
            QuotaKey::Account => "account",
        }
    }
}

/// A compiled `[[quotas]]` entry.
#[derive(Debug, Clone)]
pub struct QuotaSpec {
    /// The quota's name (a metric label and the ledger's row name).
    pub name: Arc<str>,
    /// What it counts per.
    pub key: QuotaKey,
    /// Routes it applies to; `None` means all.
    pub routes: Option<Vec<RouteId>>,
    /// Requests per UTC day.
    pub requests_per_day: Option<u64>,
    /// Spend per UTC day, in micro-dollars.
    pub spend_per_day_micros: Option<u64>,
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The request count.
    Requests,
    /// The spend.
    Spend,
}

impl Budget {
    /// The stable client-facing error code.
    pub fn code(&self) -> crate::model::code::ClientCode {
        match self {
            Budget::Requests => crate::model::code::ClientCode::DailyRequestsExceeded,
            Budget::Spend => crate::model::code::ClientCode::DailySpendExceeded,
        }
    }
}

/// One budget check for a request.
#[derive(Debug, Clone)]
pub struct QuotaCheck {
    /// Quota name.
    pub quota: Arc<str>,
    /// Key id or account.
    pub identity: Arc<str>,
    /// Requests allowed per day.
    pub requests_per_day: Option<u64>,
    /// Spend allowed per day (micro-dollars).
    pub spend_per_day_micros: Option<u64>,
    /// Spend held while the request is in flight.
    pub spend_hold: u64,
    /// Header items advertising the budgets.
    pub items: Arc<QuotaItems>,
}

/// A reservation held by a request, and the state it left, for headers and settlement.
#[derive(Debug, Clone)]
pub struct QuotaHold {
    /// Quota name.
    pub quota: Arc<str>,
    /// Key id or account.
    pub identity: Arc<str>,
    /// Day the reservation was made on.
    pub day: u32,
    /// Spend held.
    pub spend_hold: u64,
    /// Requests left today after this one (if a request budget applies).
    pub requests_remaining: Option<u64>,
    /// Requests per day (if a request budget applies).
    pub requests_per_day: Option<u64>,
    /// Spend left (micro-dollars) after the hold (if a spend budget applies).
    pub spend_remaining: Option<u64>,
    /// Spend per day (if a spend budget applies).
    pub spend_per_day: Option<u64>,
    /// Header items advertising the budgets.
    pub items: Arc<QuotaItems>,
    /// Seconds until the budgets reset (midnight UTC).
    pub reset_secs: u64,
}

/// A refusal: which check and which budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// Index into the checks.
    pub index: usize,
    /// The budget that ran out.
    pub budget: Budget,
}

/// Usage of one (quota, identity) row on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// UTC day number.
    pub day: u32,
    /// Requests settled.
    pub requests: u64,
    /// Spend settled (micro-dollars).
    pub spend_micros: u64,
    /// Requests in flight.
    #[serde(skip)]
    pub held_requests: u64,
    /// Spend held by requests in flight.
    #[serde(skip)]
    pub held_spend: u64,
    /// Changed since last persisted.
    #[serde(skip)]
    pub dirty: bool,
}

impl Usage {
    fn roll(&mut self, day: u32) {
        if self.day != day {
            *self = Usage {
                day,
                dirty: true,
                // Requests still in flight from before midnight settle into the new day's
                // counts only if they reserved on it; their holds are dropped with the old day.
                ..Usage::default()
            };
        }
    }
}

/// A persisted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// Quota name.
    pub quota: String,
    /// Key id or account.
    pub identity: String,
    /// The usage.
    pub usage: Usage,
}

type Row = (Arc<str>, Arc<str>);

/// The quota ledger.
#[derive(Debug, Default)]
pub struct QuotaLedger {
    rows: Mutex<HashMap<Row, Usage>>,
}

impl QuotaLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Row, Usage>> {
        // A poisoned lock only means another thread panicked mid-update of plain counters;
        // the counts are still usable.
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves one request and each check's spend hold, all or nothing.
    pub fn reserve(
        &self,
        checks: &[QuotaCheck],
        unix_ms: u64,
    ) -> Result<Vec<QuotaHold>, QuotaExceeded> {
        let day = day_of(unix_ms);
        let reset_secs = secs_to_midnight(unix_ms);
        let mut rows = self.lock();
        for (index, c) in checks.iter().enumerate() {
            let u = rows
                .get(&(c.quota.clone(), c.identity.clone()))
                .copied()
                .map(|mut u| {
                    u.roll(day);
                    u
                })
                .unwrap_or(Usage {
                    day,
                    ..Usage::default()
                });
            if let Some(max) = c.requests_per_day
                && u.requests + u.held_requests + 1 > max
            {
                return Err(QuotaExceeded {
                    index,
                    budget: Budget::Requests,
                });
            }
            if let Some(max) = c.spend_per_day_micros {
                let committed = u.spend_micros + u.held_spend;
                // Once the budget is spent nothing more gets through, even a request that
                // holds nothing up front (its cost is only known afterwards).
                if committed >= max || committed + c.spend_hold > max {
                    return Err(QuotaExceeded {
                        index,
                        budget: Budget::Spend,
                    });
                }
            }
        }
        let mut holds = Vec::with_capacity(checks.len());
        for c in checks {
            let u = rows
                .entry((c.quota.clone(), c.identity.clone()))
                .or_insert(Usage {
                    day,
                    ..Usage::default()
                });
            u.roll(day);
            u.held_requests += 1;
            u.held_spend += c.spend_hold;
            holds.push(QuotaHold {
                quota: c.quota.clone(),
                identity: c.identity.clone(),
                day,
                spend_hold: c.spend_hold,
                requests_remaining: c
                    .requests_per_day
                    .map(|m| m.saturating_sub(u.requests + u.held_requests)),
                requests_per_day: c.requests_per_day,
                spend_remaining: c
                    .spend_per_day_micros
                    .map(|m| m.saturating_sub(u.spend_micros + u.held_spend)),
                spend_per_day: c.spend_per_day_micros,
                items: c.items.clone(),
                reset_secs,
            });
        }
        Ok(holds)
    }

    /// Turns reservations into charges: one request each, and `spend` (or, if `None`, what
    /// was held).
    pub fn settle(&self, holds: &[QuotaHold], spend: Option<u64>) {
        let mut rows = self.lock();
        for h in holds {
            if let Some(u) = rows.get_mut(&(h.quota.clone(), h.identity.clone()))
                && u.day == h.day
            {
                u.held_requests = u.held_requests.saturating_sub(1);
                u.held_spend = u.held_spend.saturating_sub(h.spend_hold);
                u.requests += 1;
                u.spend_micros = u.spend_micros.saturating_add(spend.unwrap_or(h.spend_hold));
                u.dirty = true;
            }
        }
    }

    /// Gives reservations back without charging.
    pub fn release(&self, holds: &[QuotaHold]) {
        let mut rows = self.lock();
        for h in holds {
            if let Some(u) = rows.get_mut(&(h.quota.clone(), h.identity.clone()))
                && u.day == h.day
            {
                u.held_requests = u.held_requests.saturating_sub(1);
                u.held_spend = u.held_spend.saturating_sub(h.spend_hold);
            }
        }
    }

    /// Raises a row to what the whole fleet has used (cluster mode): `requests` and `spend`
    /// are the shared store's totals, in-flight reservations included, so the local view (the
    /// usage endpoint, the early local refusal, the fallback when the store is away) is never
    /// below the fleet's. Never lowers a row.
    pub fn observe_fleet(&self, quota: &str, identity: &str, day: u32, requests: u64, spend: u64) {
        let mut rows = self.lock();
        let u = rows
            .entry((Arc::from(quota), Arc::from(identity)))
            .or_insert(Usage {
                day,
                ..Usage::default()
            });
        if u.day != day {
            return;
        }
        let requests = requests.saturating_sub(u.held_requests);
        let spend = spend.saturating_sub(u.held_spend);
        if requests > u.requests || spend > u.spend_micros {
            u.requests = u.requests.max(requests);
            u.spend_micros = u.spend_micros.max(spend);
            u.dirty = true;
        }
    }

    /// Settled usage of one row today (zero if none).
    pub fn usage(&self, quota: &str, identity: &str, day: u32) -> Usage {
        let rows = self.lock();
        rows.get(&(Arc::from(quota), Arc::from(identity)))
            .copied()
            .filter(|u| u.day == day)
            .unwrap_or(Usage {
                day,
                ..Usage::default()
            })
    }

    /// Rows changed since the last call (their flags are cleared), for persisting; rows of past
    /// days with nothing in flight are dropped from memory.
    pub fn take_dirty(&self, today: u32) -> Vec<UsageRow> {
        let mut rows = self.lock();
        let mut out = Vec::new();
        for ((q, i), u) in rows.iter_mut() {
            if u.dirty {
                u.dirty = false;
                out.push(UsageRow {
                    quota: q.to_string(),
                    identity: i.to_string(),
                    usage: *u,
                });
            }
        }
        rows.retain(|_, u| u.day >= today || u.held_requests > 0);
        out
    }

    /// Loads persisted rows (those of days other than `today` are ignored).
    pub fn restore(&self, rows_in: impl IntoIterator<Item = UsageRow>, today: u32) {
        let mut rows = self.lock();
        for r in rows_in {
            if r.usage.day != today {
                continue;
            }
            let u = rows
                .entry((Arc::from(r.quota), Arc::from(r.identity)))
                .or_insert(Usage {
                    day: today,
                    ..Usage::default()
                });
            u.requests = u.requests.max(r.usage.requests);
            u.spend_micros = u.spend_micros.max(r.usage.spend_micros);
        }
    }

    /// Number of rows held in memory.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the ledger is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A reservation that is given back unless settled: the gateway holds one per forwarded
/// request, so a request dropped midway (client gone, upstream failed) never keeps budget.
#[derive(Debug)]
pub struct QuotaSettlement {
    ledger: Arc<QuotaLedger>,
    holds: Vec<QuotaHold>,
}

impl QuotaSettlement {
    /// A settlement for `holds`.
    pub fn new(ledger: Arc<QuotaLedger>, holds: Vec<QuotaHold>) -> Self {
        Self { ledger, holds }
    }

    /// Whether there is anything to settle.
    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// Charges the reservations: `spend` micro-dollars if the upstream reported it, else what
    /// was held.
    pub fn settle(mut self, spend: Option<u64>) {
        let holds = std::mem::take(&mut self.holds);
        self.ledger.settle(&holds, spend);
    }
}

impl Drop for QuotaSettlement {
    fn drop(&mut self) {
        if !self.holds.is_empty() {
            self.ledger.release(&self.holds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(day: u64) -> u64 {
        day * DAY_SECS * 1000
    }

    fn check(req: Option<u64>, spend: Option<u64>, hold: u64) -> QuotaCheck {
        QuotaCheck {
            quota: Arc::from("daily"),
            identity: Arc::from("k1"),
            requests_per_day: req,
            spend_per_day_micros: spend,
            spend_hold: hold,
            items: Arc::new(QuotaItems::new("daily", req, spend)),
        }
    }

    #[test]
    fn reservations_count_against_the_budget_until_settled_or_released() {
        let l = QuotaLedger::new();
        let c = [check(Some(3), None, 0)];
        let a = l.reserve(&c, ms(10)).unwrap();
        let b = l.reserve(&c, ms(10)).unwrap();
        let _c = l.reserve(&c, ms(10)).unwrap();
        assert_eq!(l.reserve(&c, ms(10)).unwrap_err().budget, Budget::Requests);
        l.release(&a);
        let a = l.reserve(&c, ms(10)).unwrap();
        assert_eq!(a[0].requests_remaining, Some(0));
        l.settle(&b, None);
        assert_eq!(l.usage("daily", "k1", 10).requests, 1);
        assert!(l.reserve(&c, ms(10)).is_err());
        // Midnight: a new day, a new budget.
        assert!(l.reserve(&c, ms(11)).is_ok());
        assert_eq!(l.usage("daily", "k1", 11).requests, 0);
    }

    #[test]
    fn spend_holds_stop_overspend_and_settle_to_reported_cost() {
        let l = QuotaLedger::new();
        let c = [check(None, Some(1_000), 300)];
        let h: Vec<_> = (0..3).map(|_| l.reserve(&c, ms(1)).unwrap()).collect();
        assert_eq!(l.reserve(&c, ms(1)).unwrap_err().budget, Budget::Spend);
        for x in &h {
            l.settle(x, Some(100));
        }
        assert_eq!(l.usage("daily", "k1", 1).spend_micros, 300);
        for _ in 0..2 {
            let x = l.reserve(&c, ms(1)).unwrap();
            l.settle(&x, Some(350));
        }
        // 1000 spent: nothing more, not even a request that holds nothing.
        assert_eq!(l.usage("daily", "k1", 1).spend_micros, 1_000);
        assert!(l.reserve(&[check(None, Some(1_000), 0)], ms(1)).is_err());
    }

    #[test]
    fn all_or_nothing_across_checks() {
        let l = QuotaLedger::new();
        let mut acct = check(Some(1), None, 0);
        acct.quota = Arc::from("acct");
        let key = check(Some(5), None, 0);
        assert!(l.reserve(&[key.clone(), acct.clone()], ms(1)).is_ok());
        let err = l.reserve(&[key.clone(), acct], ms(1)).unwrap_err();
        assert_eq!(err.index, 1);
        // The refused request held nothing on the first check.
        let h = l.reserve(&[key], ms(1)).unwrap();
        assert_eq!(h[0].requests_remaining, Some(3));
    }

    #[test]
    fn settlement_releases_on_drop_and_rows_persist() {
        let l = Arc::new(QuotaLedger::new());
        let c = [check(Some(1), None, 0)];
        drop(QuotaSettlement::new(
            l.clone(),
            l.reserve(&c, ms(5)).unwrap(),
        ));
        let s = QuotaSettlement::new(l.clone(), l.reserve(&c, ms(5)).unwrap());
        s.settle(None);
        let rows = l.take_dirty(5);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].usage.requests, 1);
        assert!(l.take_dirty(5).is_empty());
        let l2 = QuotaLedger::new();
        l2.restore(rows.clone(), 5);
        assert!(l2.reserve(&c, ms(5)).is_err());
        let l3 = QuotaLedger::new();
        l3.restore(rows, 6);
        assert!(l3.reserve(&c, ms(6)).is_ok());
    }

    #[test]
    fn midnight_arithmetic() {
        assert_eq!(secs_to_midnight(86_400_000 - 1_000), 1);
        assert_eq!(secs_to_midnight(86_400_000), 86_400);
        assert_eq!(day_of(86_400_000 * 3 + 5), 3);
    }
}
