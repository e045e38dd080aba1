//! The shared store of cluster mode: Redis (or Valkey), one server or a cluster.
//!
//! Limits are counted atomically in Lua scripts that read the time from Redis itself (`TIME`),
//! so instances with skewed clocks still share one window. Every key of one identity under one
//! limit carries the same hash tag (`{<prefix>:<limit>:<hash>}`), so a script only ever touches
//! one slot of a cluster. The checks of one request run concurrently on multiplexed
//! connections (each to its slot's node) and are bounded by `[store] timeout`: a request never
//! waits longer. A failed or late store is counted, marks the store degraded (`/healthz`), and
//! the request gets the `on_store_error` fallback; a background ping marks it healthy again.

mod batched;
mod quotas;
mod replication;
mod sketches;

pub use batched::{Batcher, reconcile};
pub use quotas::{QuotaAnswer, QuotaCharge};
pub use replication::share_state;
pub use sketches::share_aggregates;

use batched::SYNC;
use quotas::{QUOTA_RESERVE, QUOTA_SETTLE, Settle};
use replication::{KEYS_PUT, KeySharing};
use sketches::SKETCH_MERGE;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use palisade_config::{StoreBackend, StoreSettings};
use palisade_engine::clock::Nanos;
use palisade_engine::engine::{SharedAdjust, SharedCheck};
use palisade_engine::state::limiter::{Algorithm, Verdict};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script, Value};

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

impl Conn {
    fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

/// Either connection answers commands, scripts and pipelines the same way, so the code that
/// sends them is written once.
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(m) => m.req_packed_command(cmd),
            Conn::Cluster(m) => m.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(m) => m.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(m) => m.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(m) => m.get_db(),
            Conn::Cluster(m) => m.get_db(),
        }
    }
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
    /// This gateway's own store (the data dir) failed.
    #[error("the local store failed: {0}")]
    Local(String),
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
    quota_reserve: Script,
    quota_settle: Script,
    keys_put: Script,
    sketch_merge: Script,
    sync_script: Script,
    /// Whether API keys are shared (a [`KeySharing`]).
    key_sharing: std::sync::atomic::AtomicU8,
    /// The newest revision seen of each shared API key record.
    key_revs: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Set when the channel was (re)joined: the shared state must be loaded again.
    resync: AtomicBool,
    /// Quota settlements the store missed (it was away), retried every second.
    unsettled: std::sync::Mutex<Vec<Settle>>,
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
                quota_reserve: Script::new(QUOTA_RESERVE),
                quota_settle: Script::new(QUOTA_SETTLE),
                unsettled: std::sync::Mutex::new(Vec::new()),
                keys_put: Script::new(KEYS_PUT),
                sketch_merge: Script::new(SKETCH_MERGE),
                sync_script: Script::new(SYNC),
                key_sharing: std::sync::atomic::AtomicU8::new(0),
                key_revs: std::sync::Mutex::new(std::collections::HashMap::new()),
                resync: AtomicBool::new(false),
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

    fn key_sharing(&self) -> KeySharing {
        KeySharing::from_u8(self.key_sharing.load(Ordering::Relaxed))
    }

    /// Sets whether keys are shared; answers what it was.
    fn set_key_sharing(&self, to: KeySharing) -> KeySharing {
        KeySharing::from_u8(self.key_sharing.swap(to as u8, Ordering::Relaxed))
    }

    /// How API keys are shared: `joining`, `on`, or `secret_mismatch`.
    pub fn key_sharing_state(&self) -> &'static str {
        match self.key_sharing() {
            KeySharing::Joining => "joining",
            KeySharing::On => "on",
            KeySharing::SecretMismatch => "secret_mismatch",
        }
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
                let ping = tokio::time::timeout(
                    Duration::from_millis(500),
                    redis::cmd("PING").query_async::<String>(&mut c),
                )
                .await;
                let ok = matches!(ping, Ok(Ok(_)));
                let was = self.healthy.swap(ok, Ordering::Relaxed);
                if ok && !was {
                    tracing::info!("shared store healthy");
                } else if !ok && was {
                    tracing::warn!("shared store degraded: ping failed");
                }
                if !ok && self.conn.load().as_deref().is_some_and(Conn::is_cluster) {
                    // A cluster connection does not heal from a full outage by itself: build
                    // a fresh one.
                    self.conn.store(None);
                }
            }
            if self.is_healthy() {
                self.retry_settlements().await;
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
        self.bounded(self.check_inner(checks)).await
    }

    /// Runs a store operation a request waits on: within `[store] timeout`, counting a failure
    /// and marking the store degraded.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.within(self.settings.timeout, op).await
    }

    /// Runs a store operation within `limit`, counting a failure and marking the store
    /// degraded.
    async fn within<T>(
        &self,
        limit: Duration,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let out = match tokio::time::timeout(limit, op).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(limit)),
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
        let answers: Vec<Vec<i64>> = if conn.is_cluster() {
            // A cluster: one call per check, each to its slot's node, all at once.
            self.commands
                .fetch_add(checks.len() as u64, Ordering::Relaxed);
            let calls = checks.iter().map(|c| {
                let mut m = (*conn).clone();
                let inv = self.invocation(std::slice::from_ref(c));
                async move { inv.invoke_async::<Vec<i64>>(&mut m).await }
            });
            futures_util::future::try_join_all(calls).await?
        } else {
            // One server: every check in one script call.
            let mut m = (*conn).clone();
            self.commands.fetch_add(1, Ordering::Relaxed);
            let flat: Vec<i64> = self.invocation(checks).invoke_async(&mut m).await?;
            if flat.len() != checks.len() * 4 {
                return Err(StoreError::Shape);
            }
            flat.chunks(4).map(<[i64]>::to_vec).collect()
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
                let r = tokio::time::timeout(
                    Duration::from_secs(1),
                    inv.invoke_async::<i64>(&mut conn),
                )
                .await;
                if !matches!(r, Ok(Ok(_))) {
                    store.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Compare-and-delete: a lock is released only by its owner.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Plain values in the store, for what gateways share outside the request path (ACME
/// certificates, accounts and challenges). Each call is bounded by `limit`.
impl SharedStore {
    /// The store key for `rest` under the configured prefix.
    pub fn key_for(&self, area: &str, rest: &str) -> String {
        format!("{}:{area}:{rest}", self.settings.prefix)
    }

    /// `GET key`.
    pub async fn get_value(
        &self,
        key: &str,
        limit: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.within(limit, async {
            let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
            let mut c = (*conn).clone();
            Ok(redis::cmd("GET").arg(key).query_async(&mut c).await?)
        })
        .await
    }

    /// `SET key value [PX ttl]`.
    pub async fn set_value(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
        limit: Duration,
    ) -> Result<(), StoreError> {
        self.within(limit, async {
            let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
            let mut c = (*conn).clone();
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value);
            if let Some(t) = ttl {
                cmd.arg("PX").arg(t.as_millis().max(1) as u64);
            }
            let _: () = cmd.query_async(&mut c).await?;
            Ok(())
        })
        .await
    }

    /// Takes the lock `key` for `owner` for `ttl` if nobody holds it (`SET NX PX`).
    pub async fn try_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        limit: Duration,
    ) -> Result<bool, StoreError> {
        self.within(limit, async {
            let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
            let mut c = (*conn).clone();
            let got: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async(&mut c)
                .await?;
            Ok(got.is_some())
        })
        .await
    }

    /// Releases the lock `key` if `owner` still holds it.
    pub async fn unlock(&self, key: &str, owner: &str, limit: Duration) -> Result<(), StoreError> {
        self.within(limit, async {
            let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
            let mut c = (*conn).clone();
            let _: i64 = Script::new(UNLOCK)
                .key(key)
                .arg(owner)
                .invoke_async(&mut c)
                .await?;
            Ok(())
        })
        .await
    }
}
