//! The shared store of cluster mode: Redis (or Valkey), one server or a cluster.
//!
//! Limits are counted atomically in Lua scripts that read the time from Redis itself (`TIME`),
//! so instances with skewed clocks still share one window. Every key of one identity under one
//! limit carries the same hash tag (`{<prefix>:<limit>:<hash>}`), so a script only ever touches
//! one slot of a cluster. The checks of one request run concurrently on multiplexed
//! connections (each to its slot's node) and are bounded by `[store] timeout`: a request never
//! waits longer. A failed or late store is counted, marks the store degraded (`/healthz`), and
//! the request gets the `on_store_error` fallback; a background ping marks it healthy again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use palisade_engine::clock::Clock as _;

use arc_swap::ArcSwapOption;
use palisade_config::{StoreBackend, StoreSettings};
use palisade_engine::clock::Nanos;
use palisade_engine::engine::{SharedAdjust, SharedCheck};
use palisade_engine::limits::{Algorithm, Verdict};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};

/// Limit checks, in microseconds of Redis time: GCRA (one theoretical arrival time per key) or
/// a sliding window (one hash per key, a field per window index). Any number of keys, five
/// arguments each: kind (`g`/`w`), interval or window, burst or limit, cost, reserve. One
/// server takes all of a request's checks in one call; a cluster one call per key.
const MULTI: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local b = (i - 1) * 5
  local kind = ARGV[b + 1]
  local p1 = tonumber(ARGV[b + 2])
  local p2 = tonumber(ARGV[b + 3])
  local cost = tonumber(ARGV[b + 4])
  local reserve = tonumber(ARGV[b + 5])
  local key = KEYS[i]
  if kind == 'g' then
    local interval, burst = p1, p2
    local tat = tonumber(redis.call('GET', key)) or now
    local base = math.max(tat, now)
    local new_tat = base + interval * cost
    local horizon = now + interval * burst
    if new_tat <= horizon then
      redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
      out[#out + 1] = 1; out[#out + 1] = math.floor((horizon - new_tat) / interval)
      out[#out + 1] = new_tat - now; out[#out + 1] = 0
    else
      local wait = new_tat - horizon
      if wait <= reserve then
        redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
      end
      out[#out + 1] = 0; out[#out + 1] = math.floor(math.max(horizon - base, 0) / interval)
      out[#out + 1] = base - now; out[#out + 1] = wait
    end
  else
    local window, limit = p1, p2
    local idx = math.floor(now / window)
    local elapsed = now - idx * window
    local cur = tonumber(redis.call('HGET', key, idx)) or 0
    local prev = tonumber(redis.call('HGET', key, idx - 1)) or 0
    local est = math.ceil(prev * (window - elapsed) / window) + cur
    if est + cost <= limit then
      redis.call('HINCRBY', key, idx, cost)
      redis.call('HDEL', key, idx - 2)
      redis.call('PEXPIRE', key, math.ceil(2 * window / 1000) + 1000)
      out[#out + 1] = 1; out[#out + 1] = limit - est - cost
      out[#out + 1] = window - elapsed; out[#out + 1] = 0
    else
      local wait
      if cost > limit then
        wait = 2 * window
      elseif cur + cost <= limit and prev > 0 then
        wait = math.max(window - math.floor((limit - cur - cost) * window / prev) - elapsed, 0) + 1
      elseif cur == 0 then
        wait = window - elapsed
      else
        wait = (window - elapsed) + math.max(window - math.floor((limit - cost) * window / cur), 0) + 1
      end
      out[#out + 1] = 0; out[#out + 1] = math.max(limit - est, 0)
      out[#out + 1] = window - elapsed; out[#out + 1] = wait
    end
  end
end
return out
";

/// Gives back (or adds) units: GCRA moves the arrival time, a window its current count.
const ADJUST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local kind = ARGV[1]
local delta = tonumber(ARGV[2])
local unit = tonumber(ARGV[3])
if kind == 'g' then
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if not tat then return 0 end
  local new_tat = math.max(tat + delta * unit, now)
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
else
  local idx = math.floor(now / unit)
  local cur = tonumber(redis.call('HGET', KEYS[1], idx)) or 0
  redis.call('HSET', KEYS[1], idx, math.max(cur + delta, 0))
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * unit / 1000) + 1000)
end
return 1
";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not connected (yet, or any more).
    #[error("the shared store is not connected")]
    NotConnected,
    /// No answer within `[store] timeout`.
    #[error("the shared store did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("the shared store failed: {0}")]
    Redis(#[from] RedisError),
    /// An answer of the wrong shape.
    #[error("the shared store answered something unexpected")]
    Shape,
}

/// The Redis store.
pub struct SharedStore {
    settings: StoreSettings,
    conn: ArcSwapOption<Conn>,
    multi: Script,
    adjust: Script,
    healthy: AtomicBool,
    /// Commands sent (one per limit check or adjustment).
    pub commands: AtomicU64,
    /// Requests that got the fallback.
    pub fallbacks: AtomicU64,
    /// Operations that failed or timed out.
    pub errors: AtomicU64,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

fn micros(n: Nanos) -> u64 {
    n.div_ceil(1000).max(1)
}

impl SharedStore {
    /// A store for the settings; connects in the background (see [`SharedStore::maintain`]).
    pub fn new(settings: StoreSettings) -> Option<Arc<Self>> {
        matches!(settings.backend, StoreBackend::Redis { .. }).then(|| {
            Arc::new(Self {
                settings,
                conn: ArcSwapOption::empty(),
                multi: Script::new(MULTI),
                adjust: Script::new(ADJUST),
                healthy: AtomicBool::new(false),
                commands: AtomicU64::new(0),
                fallbacks: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            })
        })
    }

    /// The settings.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// Whether the last operation (or health ping) succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        let StoreBackend::Redis { urls, cluster } = &self.settings.backend else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "not a redis backend",
            )));
        };
        let timeout = self.settings.timeout.max(Duration::from_millis(200));
        if *cluster {
            let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(timeout)
                .retries(0)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let url = urls.first().cloned().unwrap_or_default();
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Ok(Conn::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }

    /// Keeps the store connected and its health current: connects (and reconnects) in the
    /// background and pings every second. Runs until the process ends.
    pub async fn maintain(self: Arc<Self>) {
        loop {
            if self.conn.load().is_none() {
                match self.connect().await {
                    Ok(c) => {
                        self.conn.store(Some(Arc::new(c)));
                        tracing::info!("shared store connected");
                    }
                    Err(e) => {
                        if self.healthy.swap(false, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "shared store unreachable");
                        }
                    }
                }
            }
            if let Some(c) = self.conn.load_full() {
                let mut c = (*c).clone();
                let ping = tokio::time::timeout(Duration::from_millis(500), async {
                    match &mut c {
                        Conn::Single(m) => redis::cmd("PING").query_async::<String>(m).await,
                        Conn::Cluster(m) => redis::cmd("PING").query_async::<String>(m).await,
                    }
                })
                .await;
                let ok = matches!(ping, Ok(Ok(_)));
                let was = self.healthy.swap(ok, Ordering::Relaxed);
                if ok && !was {
                    tracing::info!("shared store healthy");
                } else if !ok && was {
                    tracing::warn!("shared store degraded: ping failed");
                }
                if !ok && matches!(self.conn.load().as_deref(), Some(Conn::Cluster(_))) {
                    // A cluster connection does not heal from a full outage by itself: build
                    // a fresh one.
                    self.conn.store(None);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn key(&self, limit: &str, key: u64, kind: &str) -> String {
        format!("{}:{{{limit}:{key:016x}}}:{kind}", self.settings.prefix)
    }

    /// Runs a request's limit checks in the store, all at once, within the timeout. Marks the
    /// store degraded on failure.
    pub async fn check(
        &self,
        checks: &[SharedCheck],
    ) -> Result<Vec<(usize, Verdict, u64)>, StoreError> {
        let result = tokio::time::timeout(self.settings.timeout, self.check_inner(checks)).await;
        let out = match result {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.settings.timeout)),
        };
        if out.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.healthy.store(false, Ordering::Relaxed);
        }
        out
    }

    async fn check_inner(
        &self,
        checks: &[SharedCheck],
    ) -> Result<Vec<(usize, Verdict, u64)>, StoreError> {
        let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
        let answers: Vec<Vec<i64>> = match &*conn {
            // One server: every check in one script call.
            Conn::Single(m) => {
                let mut m = m.clone();
                self.commands.fetch_add(1, Ordering::Relaxed);
                let flat: Vec<i64> = self.invocation(checks).invoke_async(&mut m).await?;
                if flat.len() != checks.len() * 4 {
                    return Err(StoreError::Shape);
                }
                flat.chunks(4).map(<[i64]>::to_vec).collect()
            }
            // A cluster: one call per check, each to its slot's node, all at once.
            Conn::Cluster(m) => {
                self.commands
                    .fetch_add(checks.len() as u64, Ordering::Relaxed);
                let calls = checks.iter().map(|c| {
                    let mut m = m.clone();
                    let inv = self.invocation(std::slice::from_ref(c));
                    async move { inv.invoke_async::<Vec<i64>>(&mut m).await }
                });
                futures_util::future::try_join_all(calls).await?
            }
        };
        self.verdicts(checks, answers)
    }

    /// The limit script for these checks.
    fn invocation(&self, checks: &[SharedCheck]) -> redis::ScriptInvocation<'_> {
        let mut inv = self.multi.prepare_invoke();
        for c in checks {
            match c.algorithm {
                Algorithm::Gcra { interval, burst } => {
                    inv.key(self.key(&c.limit, c.key, "g"))
                        .arg("g")
                        .arg(micros(interval))
                        .arg(burst)
                        .arg(c.cost)
                        .arg(c.reserve / 1000);
                }
                Algorithm::SlidingWindow { window, limit } => {
                    inv.key(self.key(&c.limit, c.key, "w"))
                        .arg("w")
                        .arg(micros(window))
                        .arg(limit)
                        .arg(c.cost)
                        .arg(0);
                }
            }
        }
        inv
    }

    fn verdicts(
        &self,
        checks: &[SharedCheck],
        answers: Vec<Vec<i64>>,
    ) -> Result<Vec<(usize, Verdict, u64)>, StoreError> {
        let mut out = Vec::with_capacity(checks.len());
        for (c, a) in checks.iter().zip(answers) {
            let [allowed, remaining, reset, retry] = a.as_slice() else {
                return Err(StoreError::Shape);
            };
            let nanos = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(1000);
            out.push((
                c.index,
                Verdict {
                    allowed: *allowed == 1,
                    remaining: u64::try_from(*remaining).unwrap_or(0),
                    reset: nanos(*reset),
                    retry_after: if *allowed == 1 {
                        0
                    } else {
                        nanos(*retry).max(1000)
                    },
                },
                c.key,
            ));
        }
        self.healthy.store(true, Ordering::Relaxed);
        Ok(out)
    }

    /// Sends corrections (refunds, reported costs) in the background; a failure only counts.
    pub fn adjust(self: &Arc<Self>, adjustments: Vec<SharedAdjust>) {
        if adjustments.is_empty() {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let Some(conn) = store.conn.load_full() else {
                return;
            };
            for a in adjustments {
                let mut conn = (*conn).clone();
                let (kind, unit, key) = match a.algorithm {
                    Algorithm::Gcra { interval, .. } => ("g", micros(interval), "g"),
                    Algorithm::SlidingWindow { window, .. } => ("w", micros(window), "w"),
                };
                let mut inv = store.adjust.key(store.key(&a.limit, a.key, key));
                inv.arg(kind).arg(a.delta).arg(unit);
                store.commands.fetch_add(1, Ordering::Relaxed);
                let r = tokio::time::timeout(Duration::from_secs(1), async {
                    match &mut conn {
                        Conn::Single(m) => inv.invoke_async::<i64>(m).await,
                        Conn::Cluster(m) => inv.invoke_async::<i64>(m).await,
                    }
                })
                .await;
                if !matches!(r, Ok(Ok(_))) {
                    store.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// What gateways tell each other on the store's channel.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Event {
    /// The sending instance (its own messages come back to it).
    from: u64,
    /// Block changes.
    #[serde(default)]
    blocks: Vec<palisade_engine::blocks::BlockChange>,
}

impl SharedStore {
    fn channel(&self) -> String {
        format!("{}:events", self.settings.prefix)
    }

    fn blocks_hash(&self) -> String {
        format!("{}:blocks", self.settings.prefix)
    }

    /// A plain client for pub/sub (in a cluster, classic pub/sub reaches every node).
    fn pubsub_client(&self) -> Option<redis::Client> {
        let StoreBackend::Redis { urls, .. } = &self.settings.backend else {
            return None;
        };
        urls.iter()
            .find_map(|u| redis::Client::open(u.as_str()).ok())
    }
}

/// Shares blocks across the cluster: publishes this gateway's block changes (and keeps them in
/// a hash, for gateways that start later) every 100 ms, and applies the other gateways'.
pub async fn share_blocks(shared: Arc<crate::Shared>) {
    let Some(store) = shared.store.clone() else {
        return;
    };
    let me: u64 = rand::random();
    tokio::spawn(subscribe(shared.clone(), store.clone(), me));
    let mut loaded = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Vec<palisade_engine::blocks::BlockChange> = Vec::new();
    loop {
        tick.tick().await;
        let blocks = shared.runtime.load().engine.blocks().clone();
        blocks.share_changes();
        pending.extend(blocks.take_changes());
        let Some(conn) = store.conn.load_full() else {
            continue;
        };
        let mut conn = (*conn).clone();
        if !loaded {
            // Blocks other gateways added before this one started.
            let all: Result<Vec<String>, RedisError> = match &mut conn {
                Conn::Single(m) => {
                    redis::cmd("HVALS")
                        .arg(store.blocks_hash())
                        .query_async(m)
                        .await
                }
                Conn::Cluster(m) => {
                    redis::cmd("HVALS")
                        .arg(store.blocks_hash())
                        .query_async(m)
                        .await
                }
            };
            if let Ok(all) = all {
                let now = shared.clock.unix_ms();
                for json in all {
                    if let Ok(entry) = serde_json::from_str(&json) {
                        blocks.apply_remote(
                            palisade_engine::blocks::BlockChange::Add { entry, at_ms: 0 },
                            now,
                        );
                    }
                }
                loaded = true;
            }
        }
        if pending.len() > 10_000 {
            // The store has been away for long: keep the newest changes.
            let excess = pending.len() - 10_000;
            pending.drain(..excess);
        }
        if pending.is_empty() {
            continue;
        }
        let changes = std::mem::take(&mut pending);
        let mut pipe = redis::pipe();
        for c in &changes {
            match c {
                palisade_engine::blocks::BlockChange::Add { entry, .. } => {
                    if let Ok(json) = serde_json::to_string(entry) {
                        pipe.hset(store.blocks_hash(), &entry.key, json).ignore();
                    }
                }
                palisade_engine::blocks::BlockChange::Remove { key, .. } => {
                    pipe.hdel(store.blocks_hash(), key).ignore();
                }
            }
        }
        let event = Event {
            from: me,
            blocks: changes.clone(),
        };
        if let Ok(json) = serde_json::to_string(&event) {
            pipe.publish(store.channel(), json).ignore();
        }
        store.commands.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::time::timeout(Duration::from_secs(1), async {
            match &mut conn {
                Conn::Single(m) => pipe.query_async::<()>(m).await,
                Conn::Cluster(m) => pipe.query_async::<()>(m).await,
            }
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            store.errors.fetch_add(1, Ordering::Relaxed);
            pending = changes;
        }
    }
}

/// Listens on the channel and applies other gateways' changes; reconnects when the store
/// comes back.
async fn subscribe(shared: Arc<crate::Shared>, store: Arc<SharedStore>, me: u64) {
    use futures_util::StreamExt as _;
    loop {
        let Some(client) = store.pubsub_client() else {
            return;
        };
        match client.get_async_pubsub().await {
            Ok(mut ps) => {
                if ps.subscribe(store.channel()).await.is_ok() {
                    let mut messages = ps.on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        let Ok(event) = serde_json::from_str::<Event>(&payload) else {
                            continue;
                        };
                        if event.from == me {
                            continue;
                        }
                        let blocks = shared.runtime.load().engine.blocks().clone();
                        let now = shared.clock.unix_ms();
                        for change in event.blocks {
                            if let palisade_engine::blocks::BlockChange::Remove { key, .. } =
                                &change
                            {
                                let k = key.clone();
                                let now_s = now / 1000;
                                let _ = shared
                                    .keys
                                    .run(move |s| s.delete_block(&k, "cluster", now_s))
                                    .await;
                            }
                            blocks.apply_remote(change, now);
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "store subscription failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Batched sync: adds each key's local charges to its shared counter for the current period
/// and answers the period index and the counter's total. Two arguments per key: the
/// period (microseconds) and the units to add.
const SYNC: &str = r"
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
struct Tracked {
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
fn period_of(a: &Algorithm) -> u64 {
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
const MAX_TRACKED: usize = 200_000;

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
    async fn sync(&self, work: &[Work]) -> Result<Vec<(i64, u64)>, StoreError> {
        let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
        let script = Script::new(SYNC);
        let mut out = Vec::with_capacity(work.len());
        let result = tokio::time::timeout(Duration::from_secs(1), async {
            match &*conn {
                Conn::Single(m) => {
                    for chunk in work.chunks(500) {
                        let mut m = m.clone();
                        let mut inv = script.prepare_invoke();
                        for ((_, key), limit, alg, d) in chunk {
                            inv.key(self.key(limit, *key, "b"))
                                .arg(period_of(alg))
                                .arg(*d);
                        }
                        self.commands.fetch_add(1, Ordering::Relaxed);
                        let flat: Vec<i64> = inv.invoke_async(&mut m).await?;
                        for pair in flat.chunks(2) {
                            if let [p, t] = pair {
                                out.push((*p, u64::try_from(*t).unwrap_or(0)));
                            }
                        }
                    }
                }
                Conn::Cluster(m) => {
                    let calls = work.iter().map(|((_, key), limit, alg, d)| {
                        let mut m = m.clone();
                        let mut inv = script.prepare_invoke();
                        inv.key(self.key(limit, *key, "b"))
                            .arg(period_of(alg))
                            .arg(*d);
                        async move { inv.invoke_async::<Vec<i64>>(&mut m).await }
                    });
                    self.commands
                        .fetch_add(work.len() as u64, Ordering::Relaxed);
                    for flat in futures_util::future::try_join_all(calls).await? {
                        if let [p, t] = flat.as_slice() {
                            out.push((*p, u64::try_from(*t).unwrap_or(0)));
                        }
                    }
                }
            }
            Ok::<_, StoreError>(())
        })
        .await;
        match result {
            Ok(Ok(())) if out.len() == work.len() => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(out)
            }
            Ok(Ok(())) => Err(StoreError::Shape),
            Ok(Err(e)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
                Err(e)
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
                Err(StoreError::Timeout(Duration::from_secs(1)))
            }
        }
    }
}
