//! Batched sync: limits decided locally and their charges reconciled with the store in the
//! background (`[store] sync = "batched"`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_engine::clock::Clock as _;

use palisade_engine::engine::SharedCheck;
use palisade_engine::state::limiter::Algorithm;

use super::*;

/// Batched sync: adds each key's local charges to its shared counter for the current period
/// and answers the period index and the counter's total. Two arguments per key: the
/// period (microseconds) and the units to add.
pub(super) const SYNC: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local period = tonumber(ARGV[2 * i - 1])
  local delta = tonumber(ARGV[2 * i])
  local idx = math.floor(now / period)
  local total = redis.call('HINCRBY', KEYS[i], idx, delta)
  redis.call('HDEL', KEYS[i], idx - 2)
  redis.call('PEXPIRE', KEYS[i], math.ceil(2 * period / 1000) + 1000)
  out[#out + 1] = idx
  out[#out + 1] = total
end
return out
";

/// One identity under one limit, as batched sync tracks it.
#[derive(Debug)]
pub(super) struct Tracked {
    limit: Arc<str>,
    local_key: u64,
    algorithm: Algorithm,
    /// Local charges not yet added to the shared counter.
    delta: u64,
    /// The shared period the counts below belong to.
    period: i64,
    /// This instance's charges in that period.
    mine: u64,
    /// Other instances' charges already applied to the local cell in that period.
    applied: u64,
    last: std::time::Instant,
}

/// The shared period of a limit: GCRA's full-burst horizon, or the window.
pub(super) fn period_of(a: &Algorithm) -> u64 {
    match *a {
        Algorithm::Gcra { interval, burst } => micros(interval.saturating_mul(burst.max(1))),
        Algorithm::SlidingWindow { window, .. } => micros(window),
    }
}

/// Batched sync's state: what was charged locally since the last reconciliation.
#[derive(Debug, Default)]
pub struct Batcher {
    tracked: std::sync::Mutex<std::collections::HashMap<(usize, u64), Tracked>>,
}

/// One identity's round of batched sync: (limit index, stable key), limit name, algorithm,
/// units to add.
type Work = ((usize, u64), Arc<str>, Algorithm, u64);

/// Most identities batched sync tracks at once.
pub(super) const MAX_TRACKED: usize = 200_000;

impl Batcher {
    /// Records a decision's local charges (limit index, local key, stable key, units).
    pub fn record(&self, decision: &palisade_engine::Decision, checks: &[SharedCheck]) {
        let Ok(mut map) = self.tracked.lock() else {
            return;
        };
        for o in decision.limits.iter().filter(|o| o.charged > 0) {
            let Some(c) = checks.iter().find(|c| c.index == o.index) else {
                continue;
            };
            if map.len() >= MAX_TRACKED && !map.contains_key(&(o.index, c.key)) {
                continue;
            }
            let t = map.entry((o.index, c.key)).or_insert_with(|| Tracked {
                limit: c.limit.clone(),
                local_key: o.key,
                algorithm: c.algorithm,
                delta: 0,
                period: -1,
                mine: 0,
                applied: 0,
                last: std::time::Instant::now(),
            });
            t.delta = t.delta.saturating_add(o.charged);
            t.last = std::time::Instant::now();
        }
    }
}

/// Batched sync: every `batch_interval`, adds each tracked identity's local charges to the
/// shared counters and charges the local cells with what the other gateways used meanwhile.
pub async fn reconcile(shared: Arc<crate::Shared>) {
    let (Some(store), Some(batcher)) = (shared.store.clone(), shared.batcher.clone()) else {
        return;
    };
    let mut tick = tokio::time::interval(store.settings.batch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // What to send: every identity active within two periods.
        let work: Vec<Work> = {
            let Ok(mut map) = batcher.tracked.lock() else {
                continue;
            };
            map.retain(|_, t| {
                t.delta > 0 || t.last.elapsed() < Duration::from_micros(2 * period_of(&t.algorithm))
            });
            map.iter_mut()
                .map(|(k, t)| {
                    let d = std::mem::take(&mut t.delta);
                    (*k, t.limit.clone(), t.algorithm, d)
                })
                .collect()
        };
        if work.is_empty() {
            continue;
        }
        let answers = match store.sync(&work).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "batched sync failed; charges kept for the next round");
                if let Ok(mut map) = batcher.tracked.lock() {
                    for (k, _, _, d) in &work {
                        if let Some(t) = map.get_mut(k) {
                            t.delta = t.delta.saturating_add(*d);
                        }
                    }
                }
                continue;
            }
        };
        let rt = shared.runtime.load();
        let now = shared.clock.now();
        let Ok(mut map) = batcher.tracked.lock() else {
            continue;
        };
        for ((k, limit, _, d), (period, total)) in work.iter().zip(answers) {
            let Some(t) = map.get_mut(k) else { continue };
            if t.period != period {
                t.period = period;
                t.mine = 0;
                t.applied = 0;
            }
            t.mine = t.mine.saturating_add(*d);
            let others = total.saturating_sub(t.mine);
            let new = others.saturating_sub(t.applied);
            if new == 0 {
                continue;
            }
            // The table of the limit at that index, if it is still the same limit.
            let (index, _) = *k;
            if let (Some(spec), Some(table)) = (
                rt.engine.policy().limits.get(index),
                rt.engine.tables().get(index),
            ) && spec.name == *limit
            {
                table.adjust(
                    &spec.algorithm,
                    t.local_key,
                    now,
                    i64::try_from(new).unwrap_or(i64::MAX),
                );
                t.applied = t.applied.saturating_add(new);
            }
        }
    }
}

impl SharedStore {
    /// Adds local charges to the shared counters; answers (period, total) per entry.
    pub(super) async fn sync(&self, work: &[Work]) -> Result<Vec<(i64, u64)>, StoreError> {
        let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
        let work_done = async {
            let mut out = Vec::with_capacity(work.len());
            // One server takes 500 identities per call; a cluster one call per identity.
            let per_call = if conn.is_cluster() { 1 } else { 500 };
            let calls = work.chunks(per_call).map(|chunk| {
                let mut m = (*conn).clone();
                let mut inv = self.sync_script.prepare_invoke();
                for ((_, key), limit, alg, d) in chunk {
                    inv.key(self.key(limit, *key, "b"))
                        .arg(period_of(alg))
                        .arg(*d);
                }
                async move { inv.invoke_async::<Vec<i64>>(&mut m).await }
            });
            self.commands
                .fetch_add(work.len().div_ceil(per_call) as u64, Ordering::Relaxed);
            for flat in futures_util::future::try_join_all(calls).await? {
                for pair in flat.chunks(2) {
                    if let [p, t] = pair {
                        out.push((*p, u64::try_from(*t).unwrap_or(0)));
                    }
                }
            }
            Ok(out)
        };
        let out = self.within(Duration::from_secs(1), work_done).await?;
        if out.len() != work.len() {
            return Err(StoreError::Shape);
        }
        self.healthy.store(true, Ordering::Relaxed);
        Ok(out)
    }
}
