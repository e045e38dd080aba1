//! Daily quotas in the store: reservations and settlements shared by every gateway, so that
//! concurrent requests through several gateways cannot overspend.

use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_engine::state::quota_ledger::{Budget, QuotaHold, QuotaSettlement};

use super::*;

/// Daily quota reservations: one hash per (quota, identity, day) with the requests counted
/// (`r`, in flight included), the spend settled (`s`) and the spend held by requests in flight
/// (`h`). Three arguments per key: requests per day, spend per day (micro-dollars; -1 for no
/// such budget) and the spend to hold. All or nothing: answers `{1, r1, s1+h1, ...}`, or
/// `{0, index, budget (1 requests, 2 spend), r, s+h}` for the first budget that would be
/// overspent.
pub(super) const QUOTA_RESERVE: &str = r"
for i = 1, #KEYS do
  local b = (i - 1) * 3
  local maxr = tonumber(ARGV[b + 1])
  local maxs = tonumber(ARGV[b + 2])
  local hold = tonumber(ARGV[b + 3])
  local v = redis.call('HMGET', KEYS[i], 'r', 's', 'h')
  local r = tonumber(v[1]) or 0
  local s = (tonumber(v[2]) or 0) + (tonumber(v[3]) or 0)
  if maxr >= 0 and r + 1 > maxr then return {0, i, 1, r, s} end
  if maxs >= 0 and (s >= maxs or s + hold > maxs) then return {0, i, 2, r, s} end
end
local out = {1}
for i = 1, #KEYS do
  local hold = tonumber(ARGV[(i - 1) * 3 + 3])
  local r = redis.call('HINCRBY', KEYS[i], 'r', 1)
  local h = redis.call('HINCRBY', KEYS[i], 'h', hold)
  local s = tonumber(redis.call('HGET', KEYS[i], 's')) or 0
  redis.call('EXPIRE', KEYS[i], 172800)
  out[#out + 1] = r
  out[#out + 1] = s + h
end
return out
";

/// Ends a reservation: takes back `ARGV[1]` requests (1 when the request was not served) and
/// the `ARGV[2]` spend held, and adds the `ARGV[3]` spend charged. (`0 - x`, not `-x`: Lua's
/// `-0` reaches Redis as "-0", which is not an integer to it.)
pub(super) const QUOTA_SETTLE: &str = r"
local r = redis.call('HINCRBY', KEYS[1], 'r', 0 - tonumber(ARGV[1]))
local h = redis.call('HINCRBY', KEYS[1], 'h', 0 - tonumber(ARGV[2]))
if r < 0 then redis.call('HSET', KEYS[1], 'r', 0) end
if h < 0 then redis.call('HSET', KEYS[1], 'h', 0) end
redis.call('HINCRBY', KEYS[1], 's', tonumber(ARGV[3]))
return 1
";

/// What the store said about a request's daily quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaAnswer {
    /// Reserved; per hold, the fleet's requests and spend (in flight included) after it.
    Reserved(Vec<(u64, u64)>),
    /// The budget of `decision.quotas[index]` would be overspent; the fleet's requests and
    /// spend on it.
    Exceeded {
        /// Which hold.
        index: usize,
        /// Which budget.
        budget: Budget,
        /// Requests counted.
        requests: u64,
        /// Spend counted.
        spend: u64,
    },
}

/// One reservation to end in the store.
#[derive(Debug, Clone)]
pub(super) struct Settle {
    key: String,
    requests: u64,
    hold: u64,
    spend: u64,
}

/// Most missed settlements kept for retrying.
pub(super) const MAX_UNSETTLED: usize = 100_000;

impl SharedStore {
    pub(super) fn quota_key(&self, h: &QuotaHold) -> String {
        use std::hash::BuildHasher as _;
        let hash =
            palisade_engine::model::identity::StableHasher.hash_one((&*h.quota, &*h.identity));
        format!("{}:q:{{{hash:016x}}}:{}", self.settings.prefix, h.day)
    }

    pub(super) fn reserve_invocation<'a>(
        &'a self,
        holds: &[QuotaHold],
    ) -> redis::ScriptInvocation<'a> {
        let budget = |b: Option<u64>| b.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut inv = self.quota_reserve.prepare_invoke();
        for h in holds {
            inv.key(self.quota_key(h))
                .arg(budget(h.requests_per_day))
                .arg(budget(h.spend_per_day))
                .arg(h.spend_hold);
        }
        inv
    }

    /// Reserves a forwarded request's daily quotas in the store, all or nothing, within the
    /// timeout. One server takes them in one call; a cluster one call per quota, and a refusal
    /// of one gives back the others.
    pub async fn reserve_quotas(
        self: &Arc<Self>,
        holds: &[QuotaHold],
    ) -> Result<QuotaAnswer, StoreError> {
        self.bounded(self.reserve_inner(holds)).await
    }

    pub(super) async fn reserve_inner(
        self: &Arc<Self>,
        holds: &[QuotaHold],
    ) -> Result<QuotaAnswer, StoreError> {
        let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
        let u = |n: i64| u64::try_from(n).unwrap_or(0);
        let parse = |a: &[i64], offset: usize| -> Result<QuotaAnswer, StoreError> {
            match a {
                [1, rest @ ..] => Ok(QuotaAnswer::Reserved(
                    rest.chunks(2)
                        .filter_map(|p| match p {
                            [r, s] => Some((u(*r), u(*s))),
                            _ => None,
                        })
                        .collect(),
                )),
                [0, i, b, r, s] => Ok(QuotaAnswer::Exceeded {
                    index: offset + usize::try_from(*i).unwrap_or(1).saturating_sub(1),
                    budget: if *b == 2 {
                        Budget::Spend
                    } else {
                        Budget::Requests
                    },
                    requests: u(*r),
                    spend: u(*s),
                }),
                _ => Err(StoreError::Shape),
            }
        };
        let answer = if conn.is_cluster() {
            self.commands
                .fetch_add(holds.len() as u64, Ordering::Relaxed);
            let calls = holds.iter().map(|h| {
                let mut m = (*conn).clone();
                let inv = self.reserve_invocation(std::slice::from_ref(h));
                async move { inv.invoke_async::<Vec<i64>>(&mut m).await }
            });
            let answers = futures_util::future::try_join_all(calls).await?;
            let mut totals = Vec::with_capacity(holds.len());
            let mut refused = None;
            for (i, a) in answers.iter().enumerate() {
                match parse(a, i)? {
                    QuotaAnswer::Reserved(t) => totals.extend(t),
                    e => {
                        totals.push((0, 0));
                        refused = refused.or(Some(e));
                    }
                }
            }
            match refused {
                Some(e) => {
                    // Give back what the other quotas reserved. Awaited, so that a refusal
                    // leaves the budgets as they were for the next request; run as a task of
                    // its own, so that this call's timeout cannot cut it short; and what the
                    // store misses is retried with the other settlements. (A give-back lost
                    // would hold a request of the day's budget until the day ends.)
                    let reserved: Vec<QuotaHold> = holds
                        .iter()
                        .zip(&answers)
                        .filter(|(_, a)| a.first() == Some(&1))
                        .map(|(h, _)| h.clone())
                        .collect();
                    let work = self.settlements(&reserved, None);
                    let store = Arc::clone(self);
                    let conn = Arc::clone(&conn);
                    let give_back = tokio::spawn(async move {
                        store.run_settlements(Some(&conn), work).await;
                    });
                    let _ = give_back.await;
                    e
                }
                None => QuotaAnswer::Reserved(totals),
            }
        } else {
            let mut m = (*conn).clone();
            self.commands.fetch_add(1, Ordering::Relaxed);
            let a: Vec<i64> = self.reserve_invocation(holds).invoke_async(&mut m).await?;
            parse(&a, 0)?
        };
        if let QuotaAnswer::Reserved(t) = &answer
            && t.len() != holds.len()
        {
            return Err(StoreError::Shape);
        }
        self.healthy.store(true, Ordering::Relaxed);
        Ok(answer)
    }

    /// The settlements of `holds`: charged at `spend` (each hold's own when `None`) if
    /// `served`, else given back.
    pub(super) fn settlements(
        &self,
        holds: &[QuotaHold],
        served: Option<Option<u64>>,
    ) -> Vec<Settle> {
        holds
            .iter()
            .map(|h| Settle {
                key: self.quota_key(h),
                requests: u64::from(served.is_none()),
                hold: h.spend_hold,
                spend: served.map_or(0, |s| s.unwrap_or(h.spend_hold)),
            })
            .collect()
    }

    pub(super) async fn run_settle(&self, conn: &Conn, s: &Settle) -> Result<(), StoreError> {
        let mut m = conn.clone();
        let mut inv = self.quota_settle.key(&s.key);
        inv.arg(s.requests).arg(s.hold).arg(s.spend);
        self.commands.fetch_add(1, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(1), inv.invoke_async::<i64>(&mut m))
            .await
            .map_err(|_| StoreError::Timeout(Duration::from_secs(1)))??;
        Ok(())
    }

    /// Ends reservations in the background: charged if `served` (at the spend given, or each
    /// hold's), else given back. What the store misses is retried when it is back.
    pub(super) fn settle_quotas(
        self: &Arc<Self>,
        holds: &[QuotaHold],
        served: Option<Option<u64>>,
    ) {
        let work = self.settlements(holds, served);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.keep_unsettled(work);
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            let conn = store.conn.load_full();
            store.run_settlements(conn.as_deref(), work).await;
        });
    }

    /// Runs settlements in order on `conn`; what the store misses (or all, without a
    /// connection) is counted as an error and kept to be retried.
    async fn run_settlements(&self, conn: Option<&Conn>, work: Vec<Settle>) {
        let mut missed = Vec::new();
        for s in work {
            let ok = match conn {
                Some(c) => self.run_settle(c, &s).await.is_ok(),
                None => false,
            };
            if !ok {
                self.errors.fetch_add(1, Ordering::Relaxed);
                missed.push(s);
            }
        }
        self.keep_unsettled(missed);
    }

    pub(super) fn keep_unsettled(&self, missed: Vec<Settle>) {
        if missed.is_empty() {
            return;
        }
        if let Ok(mut u) = self.unsettled.lock() {
            let room = MAX_UNSETTLED.saturating_sub(u.len());
            if room < missed.len() {
                tracing::warn!(
                    dropped = missed.len() - room,
                    "too many quota settlements waiting for the shared store; dropping the newest"
                );
            }
            u.extend(missed.into_iter().take(room));
        }
    }

    pub(super) async fn retry_settlements(&self) {
        let work = match self.unsettled.lock() {
            Ok(mut u) if !u.is_empty() => std::mem::take(&mut *u),
            _ => return,
        };
        let Some(conn) = self.conn.load_full() else {
            self.keep_unsettled(work);
            return;
        };
        let mut missed = Vec::new();
        for s in work {
            if self.run_settle(&conn, &s).await.is_err() {
                missed.push(s);
            }
        }
        self.keep_unsettled(missed);
    }
}

/// A forwarded request's daily quota reservations, in the local ledger and (cluster mode) in
/// the shared store: charged when the upstream answers, given back if dropped unsettled
/// (refused, client gone, upstream failed).
#[derive(Debug)]
pub struct QuotaCharge {
    local: Option<QuotaSettlement>,
    remote: Option<(Arc<SharedStore>, Vec<QuotaHold>)>,
}

impl QuotaCharge {
    /// A charge for the local reservations and, if the store holds them too, the store's.
    pub fn new(local: QuotaSettlement, remote: Option<(Arc<SharedStore>, Vec<QuotaHold>)>) -> Self {
        Self {
            local: Some(local),
            remote,
        }
    }

    /// Charges the reservations: `spend` micro-dollars if the upstream reported it, else what
    /// was held.
    pub fn settle(mut self, spend: Option<u64>) {
        if let Some(l) = self.local.take() {
            l.settle(spend);
        }
        if let Some((store, holds)) = self.remote.take() {
            store.settle_quotas(&holds, Some(spend));
        }
    }
}

impl Drop for QuotaCharge {
    fn drop(&mut self) {
        if let Some((store, holds)) = self.remote.take() {
            store.settle_quotas(&holds, None);
        }
    }
}
