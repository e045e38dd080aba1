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
use palisade_engine::behaviour::SharedSketches;
use palisade_engine::clock::Nanos;
use palisade_engine::engine::{SharedAdjust, SharedCheck};
use palisade_engine::state::limiter::{Algorithm, Verdict};
use palisade_engine::state::quota_ledger::{Budget, QuotaHold, QuotaSettlement};
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

/// What gateways tell each other on the store's channel.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Event {
    /// The sending instance (its own messages come back to it).
    from: u64,
    /// Block changes.
    #[serde(default)]
    blocks: Vec<palisade_engine::state::blocks::BlockChange>,
    /// Changed API key records.
    #[serde(default)]
    keys: Vec<SharedKey>,
}

/// An API key record as the cluster shares it: with the revision the store gave the change,
/// so every gateway keeps the latest one whatever order changes reach it in.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SharedKey {
    rev: u64,
    record: palisade_keys::ApiKeyRecord,
}

/// Stores changed key records and announces them, atomically, so the order of revisions is
/// the order of announcements. `KEYS[1]` the records' hash, `KEYS[2]` the revision counter;
/// `ARGV[1]` the channel, `ARGV[2]` the sender, then an id and a JSON record per change.
const KEYS_PUT: &str = r#"
local parts = {}
for i = 3, #ARGV, 2 do
  local rev = redis.call('INCR', KEYS[2])
  local v = '{"rev":' .. rev .. ',"record":' .. ARGV[i + 1] .. '}'
  redis.call('HSET', KEYS[1], ARGV[i], v)
  parts[#parts + 1] = v
end
redis.call('PUBLISH', ARGV[1], '{"from":' .. ARGV[2] .. ',"keys":[' .. table.concat(parts, ',') .. ']}')
return #parts
"#;

/// Whether this gateway shares API keys with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum KeySharing {
    /// Not joined yet (or rejoining after the channel was lost).
    Joining = 0,
    /// Joined: changes go out and come in.
    On = 1,
    /// The cluster holds keys under another server secret: not shared.
    SecretMismatch = 2,
}

impl KeySharing {
    fn from_u8(n: u8) -> Self {
        match n {
            1 => KeySharing::On,
            2 => KeySharing::SecretMismatch,
            _ => KeySharing::Joining,
        }
    }
}

impl SharedStore {
    fn channel(&self) -> String {
        format!("{}:events", self.settings.prefix)
    }

    fn blocks_hash(&self) -> String {
        format!("{}:blocks", self.settings.prefix)
    }

    /// The keys' hash, revision counter and secret fingerprint share one hash tag (one slot).
    fn keys_key(&self, suffix: &str) -> String {
        format!("{}:{{keys}}{suffix}", self.settings.prefix)
    }

    /// A plain client for pub/sub (in a cluster, classic pub/sub reaches every node).
    fn pubsub_client(&self) -> Option<redis::Client> {
        let StoreBackend::Redis { urls, .. } = &self.settings.backend else {
            return None;
        };
        urls.iter()
            .find_map(|u| redis::Client::open(u.as_str()).ok())
    }

    /// The records among `entries` newer than what this gateway has seen (their revisions
    /// are remembered).
    fn newer_keys(&self, entries: Vec<SharedKey>) -> Vec<palisade_keys::ApiKeyRecord> {
        let Ok(mut revs) = self.key_revs.lock() else {
            return Vec::new();
        };
        entries
            .into_iter()
            .filter(|k| {
                let known = revs.entry(k.record.id.clone()).or_insert(0);
                let newer = k.rev > *known;
                *known = (*known).max(k.rev);
                newer
            })
            .map(|k| k.record)
            .collect()
    }
}

/// Shares state across the cluster every 100 ms: publishes this gateway's block changes and
/// API key changes (and keeps both in hashes, for gateways that start later), and, whenever
/// the channel was (re)joined, loads what the others changed meanwhile.
pub async fn share_state(shared: Arc<crate::Shared>) {
    let Some(store) = shared.store.clone() else {
        return;
    };
    let me: u64 = rand::random();
    shared.keys.share();
    tokio::spawn(subscribe(shared.clone(), store.clone(), me));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Vec<palisade_engine::state::blocks::BlockChange> = Vec::new();
    loop {
        tick.tick().await;
        let blocks = shared.runtime.load().engine.blocks().clone();
        blocks.share_changes();
        pending.extend(blocks.take_changes());
        let Some(conn) = store.conn.load_full() else {
            continue;
        };
        let mut conn = (*conn).clone();
        if store.resync.swap(false, Ordering::Relaxed) {
            let joined = async {
                load_blocks(&shared, &store, &mut conn).await?;
                join_keys(&shared, &store, &mut conn).await
            }
            .await;
            if let Err(e) = joined {
                tracing::debug!(error = %e, "loading the cluster's shared state failed; retrying");
                store.resync.store(true, Ordering::Relaxed);
            }
        }
        send_keys(&shared, &store, &mut conn, me).await;
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
                palisade_engine::state::blocks::BlockChange::Add { entry, .. } => {
                    if let Ok(json) = serde_json::to_string(entry) {
                        pipe.hset(store.blocks_hash(), &entry.key, json).ignore();
                    }
                }
                palisade_engine::state::blocks::BlockChange::Remove { key, .. } => {
                    pipe.hdel(store.blocks_hash(), key).ignore();
                }
            }
        }
        let event = Event {
            from: me,
            blocks: changes.clone(),
            keys: Vec::new(),
        };
        if let Ok(json) = serde_json::to_string(&event) {
            pipe.publish(store.channel(), json).ignore();
        }
        store.commands.fetch_add(1, Ordering::Relaxed);
        let sent =
            tokio::time::timeout(Duration::from_secs(1), pipe.query_async::<()>(&mut conn)).await;
        if !matches!(sent, Ok(Ok(()))) {
            store.errors.fetch_add(1, Ordering::Relaxed);
            pending = changes;
        }
    }
}

/// Blocks other gateways added (before this one started, or while the channel was lost).
async fn load_blocks(
    shared: &crate::Shared,
    store: &SharedStore,
    conn: &mut Conn,
) -> Result<(), StoreError> {
    let all: Vec<String> = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("HVALS")
            .arg(store.blocks_hash())
            .query_async(conn),
    )
    .await
    .map_err(|_| StoreError::Timeout(Duration::from_secs(2)))??;
    let blocks = shared.runtime.load().engine.blocks().clone();
    let now = shared.clock.unix_ms();
    for json in all {
        if let Ok(entry) = serde_json::from_str(&json) {
            blocks.apply_remote(
                palisade_engine::state::blocks::BlockChange::Add { entry, at_ms: 0 },
                now,
            );
        }
    }
    Ok(())
}

/// Joins the cluster's API keys: checks that the cluster uses this gateway's server secret,
/// takes every record changed elsewhere, and offers the records only this gateway has (or
/// revoked while the store was away: a revocation is never undone by an older copy).
async fn join_keys(
    shared: &crate::Shared,
    store: &SharedStore,
    conn: &mut Conn,
) -> Result<(), StoreError> {
    let mine = shared.keys.directory.secret().fingerprint();
    let secret_key = store.keys_key(":secret");
    let _: Option<String> = redis::cmd("SET")
        .arg(&secret_key)
        .arg(&mine)
        .arg("NX")
        .query_async(conn)
        .await?;
    let theirs: Option<String> = redis::cmd("GET").arg(&secret_key).query_async(conn).await?;
    if theirs.as_deref() != Some(mine.as_str()) {
        if store.set_key_sharing(KeySharing::SecretMismatch) != KeySharing::SecretMismatch {
            tracing::error!(
                "the cluster's API keys were made under another server secret: keys are NOT shared with this gateway. Give every gateway the same secret (PALISADE_KEY_SECRET, or the key-secret file of the data dir)"
            );
        }
        return Ok(());
    }
    store.set_key_sharing(KeySharing::On);
    let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(store.keys_key(""))
        .query_async(conn)
        .await?;
    let local = shared
        .keys
        .run(|s| s.list())
        .await
        .map_err(|e| StoreError::Local(e.to_string()))?;
    let local: std::collections::HashMap<String, palisade_keys::ApiKeyRecord> =
        local.into_iter().map(|r| (r.id.clone(), r)).collect();
    let mut offer = Vec::new();
    let mut remote = Vec::new();
    for json in all.values() {
        let Ok(k) = serde_json::from_str::<SharedKey>(json) else {
            continue;
        };
        match local.get(&k.record.id) {
            Some(l) if l.revoked_at.is_some() && k.record.revoked_at.is_none() => {
                offer.push(l.clone());
            }
            _ => remote.push(k),
        }
    }
    offer.extend(local.values().filter(|r| !all.contains_key(&r.id)).cloned());
    let fresh = store.newer_keys(remote);
    if !fresh.is_empty() {
        tracing::info!(keys = fresh.len(), "took API keys from the cluster");
        shared
            .keys
            .apply_remote(fresh)
            .await
            .map_err(|e| StoreError::Local(e.to_string()))?;
    }
    shared.keys.queue_for_cluster(offer);
    Ok(())
}

/// Sends this gateway's key changes, once joined; what fails is sent again.
async fn send_keys(shared: &crate::Shared, store: &SharedStore, conn: &mut Conn, me: u64) {
    match store.key_sharing() {
        KeySharing::On => {}
        // Not yet: keep them. Never: they cannot be verified elsewhere anyway.
        KeySharing::Joining => return,
        KeySharing::SecretMismatch => {
            shared.keys.take_outbox();
            return;
        }
    }
    let out = shared.keys.take_outbox();
    for (i, chunk) in out.chunks(100).enumerate() {
        let mut inv = store.keys_put.prepare_invoke();
        inv.key(store.keys_key(""))
            .key(store.keys_key(":rev"))
            .arg(store.channel())
            .arg(me);
        for r in chunk {
            match serde_json::to_string(r) {
                Ok(json) => {
                    inv.arg(&r.id).arg(json);
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a key record"),
            }
        }
        store.commands.fetch_add(1, Ordering::Relaxed);
        let sent =
            tokio::time::timeout(Duration::from_secs(1), inv.invoke_async::<i64>(conn)).await;
        if !matches!(sent, Ok(Ok(_))) {
            store.errors.fetch_add(1, Ordering::Relaxed);
            shared
                .keys
                .queue_for_cluster(out.get(i * 100..).unwrap_or_default().to_vec());
            return;
        }
    }
}

/// Listens on the channel and applies other gateways' changes; resubscribes when the store
/// comes back, and then has the share loop load what was missed meanwhile.
async fn subscribe(shared: Arc<crate::Shared>, store: Arc<SharedStore>, me: u64) {
    use futures_util::StreamExt as _;
    loop {
        let Some(client) = store.pubsub_client() else {
            return;
        };
        match client.get_async_pubsub().await {
            Ok(mut ps) => {
                if ps.subscribe(store.channel()).await.is_ok() {
                    store.resync.store(true, Ordering::Relaxed);
                    let mut messages = ps.on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        let Ok(event) = serde_json::from_str::<Event>(&payload) else {
                            continue;
                        };
                        apply_event(&shared, &store, event, me).await;
                    }
                    if store.key_sharing() == KeySharing::On {
                        store.set_key_sharing(KeySharing::Joining);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "store subscription failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Applies one event from the channel.
async fn apply_event(shared: &crate::Shared, store: &SharedStore, event: Event, me: u64) {
    if !event.keys.is_empty() && store.key_sharing() == KeySharing::On {
        // Our own changes come back too: only their revisions are news.
        let fresh = store.newer_keys(event.keys);
        if event.from != me
            && !fresh.is_empty()
            && let Err(e) = shared.keys.apply_remote(fresh).await
        {
            tracing::error!(error = %e, "cannot store API keys changed on another gateway");
        }
    }
    if event.from == me {
        return;
    }
    let blocks = shared.runtime.load().engine.blocks().clone();
    let now = shared.clock.unix_ms();
    for change in event.blocks {
        if let palisade_engine::state::blocks::BlockChange::Remove { key, .. } = &change {
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

/// Daily quota reservations: one hash per (quota, identity, day) with the requests counted
/// (`r`, in flight included), the spend settled (`s`) and the spend held by requests in flight
/// (`h`). Three arguments per key: requests per day, spend per day (micro-dollars; -1 for no
/// such budget) and the spend to hold. All or nothing: answers `{1, r1, s1+h1, ...}`, or
/// `{0, index, budget (1 requests, 2 spend), r, s+h}` for the first budget that would be
/// overspent.
const QUOTA_RESERVE: &str = r"
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
const QUOTA_SETTLE: &str = r"
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
struct Settle {
    key: String,
    requests: u64,
    hold: u64,
    spend: u64,
}

/// Most missed settlements kept for retrying.
const MAX_UNSETTLED: usize = 100_000;

impl SharedStore {
    fn quota_key(&self, h: &QuotaHold) -> String {
        use std::hash::BuildHasher as _;
        let hash =
            palisade_engine::model::identity::StableHasher.hash_one((&*h.quota, &*h.identity));
        format!("{}:q:{{{hash:016x}}}:{}", self.settings.prefix, h.day)
    }

    fn reserve_invocation<'a>(&'a self, holds: &[QuotaHold]) -> redis::ScriptInvocation<'a> {
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
    pub async fn reserve_quotas(&self, holds: &[QuotaHold]) -> Result<QuotaAnswer, StoreError> {
        self.bounded(self.reserve_inner(holds)).await
    }

    async fn reserve_inner(&self, holds: &[QuotaHold]) -> Result<QuotaAnswer, StoreError> {
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
                    // Give back what the other quotas reserved.
                    let reserved: Vec<QuotaHold> = holds
                        .iter()
                        .zip(&answers)
                        .filter(|(_, a)| a.first() == Some(&1))
                        .map(|(h, _)| h.clone())
                        .collect();
                    for s in self.settlements(&reserved, None) {
                        self.run_settle(&conn, &s).await.ok();
                    }
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
    fn settlements(&self, holds: &[QuotaHold], served: Option<Option<u64>>) -> Vec<Settle> {
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

    async fn run_settle(&self, conn: &Conn, s: &Settle) -> Result<(), StoreError> {
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
    fn settle_quotas(self: &Arc<Self>, holds: &[QuotaHold], served: Option<Option<u64>>) {
        let work = self.settlements(holds, served);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.keep_unsettled(work);
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            let conn = store.conn.load_full();
            let mut missed = Vec::new();
            for s in work {
                let ok = match &conn {
                    Some(c) => store.run_settle(c, &s).await.is_ok(),
                    None => false,
                };
                if !ok {
                    store.errors.fetch_add(1, Ordering::Relaxed);
                    missed.push(s);
                }
            }
            store.keep_unsettled(missed);
        });
    }

    fn keep_unsettled(&self, missed: Vec<Settle>) {
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

    async fn retry_settlements(&self) {
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

/// Merges records' distinct-count sketches with the other gateways': ORs each into the shared
/// row of the current window (`BITOP` on a scratch key in the row's slot) and answers the
/// union. Per record: `KEYS` the row and its scratch key, `ARGV` the sketches (little-endian
/// 64-bit words) and the row's lifetime in seconds.
const SKETCH_MERGE: &str = r"
local out = {}
for i = 1, #KEYS, 2 do
  redis.call('SET', KEYS[i + 1], ARGV[i])
  redis.call('BITOP', 'OR', KEYS[i], KEYS[i], KEYS[i + 1])
  redis.call('DEL', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[i + 1])
  out[#out + 1] = redis.call('GET', KEYS[i])
end
return out
";

/// How often behaviour aggregates are merged across the cluster.
const AGGREGATE_INTERVAL: Duration = Duration::from_secs(1);

/// Shares behaviour aggregates every second: the distinct-count sketches of each record that
/// changed here (keys per address, prefix, fingerprint and ASN; addresses, user agents, ASNs
/// and countries per key and account; sources per username; ids and cache-busting values) are
/// merged with the other gateways' in Redis, and the union comes back into the local record.
/// So a swarm that spreads its keys over the gateways is counted whole. A round that fails is
/// dropped: the records are queued again by their next request.
pub async fn share_aggregates(shared: Arc<crate::Shared>) {
    let Some(store) = shared.store.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(AGGREGATE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = shared.runtime.load_full();
        let Some(behaviour) = rt.engine.behaviour() else {
            continue;
        };
        if !behaviour.policy().shared {
            continue;
        }
        let rows = behaviour.take_shared();
        if rows.is_empty() {
            continue;
        }
        let window_ms = (behaviour.policy().window / 1_000_000).max(1);
        let epoch = shared.clock.unix_ms() / window_ms;
        let ttl = (2 * window_ms).div_ceil(1000) + 60;
        match store.merge_sketches(&rows, epoch, ttl).await {
            Ok(merged) => behaviour.merge_shared(&merged),
            Err(e) => tracing::debug!(error = %e, "sharing behaviour aggregates failed"),
        }
    }
}

impl SharedStore {
    fn sketch_keys(&self, row: &SharedSketches, epoch: u64) -> (String, String) {
        let tag = format!(
            "{}:agg:{{{}:{:016x}}}",
            self.settings.prefix, row.table, row.key
        );
        (format!("{tag}:{epoch}"), format!("{tag}:scratch"))
    }

    fn merge_invocation<'a>(
        &'a self,
        rows: &[SharedSketches],
        epoch: u64,
        ttl: u64,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = self.sketch_merge.prepare_invoke();
        for row in rows {
            let (key, scratch) = self.sketch_keys(row, epoch);
            let bytes: Vec<u8> = row.sketches.iter().flat_map(|w| w.to_le_bytes()).collect();
            inv.key(key).key(scratch).arg(bytes).arg(ttl);
        }
        inv
    }

    /// Merges `rows` with the cluster's; answers the unions.
    async fn merge_sketches(
        &self,
        rows: &[SharedSketches],
        epoch: u64,
        ttl: u64,
    ) -> Result<Vec<SharedSketches>, StoreError> {
        let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
        // One server: 200 records per call; a cluster: one per call, 64 in flight.
        let per_call = if conn.is_cluster() { 1 } else { 200 };
        let mut out = Vec::with_capacity(rows.len());
        let work = async {
            for batch in rows.chunks(per_call * 64) {
                let calls = batch.chunks(per_call).map(|chunk| {
                    let mut m = (*conn).clone();
                    let inv = self.merge_invocation(chunk, epoch, ttl);
                    async move { inv.invoke_async::<Vec<Vec<u8>>>(&mut m).await }
                });
                self.commands
                    .fetch_add(batch.len().div_ceil(per_call) as u64, Ordering::Relaxed);
                let answers = futures_util::future::try_join_all(calls).await?;
                for (row, bytes) in batch.iter().zip(answers.into_iter().flatten()) {
                    let mut sketches = row.sketches;
                    for (word, chunk) in sketches.iter_mut().zip(bytes.chunks_exact(8)) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(chunk);
                        *word |= u64::from_le_bytes(b);
                    }
                    out.push(SharedSketches { sketches, ..*row });
                }
            }
            Ok::<_, StoreError>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), work).await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Timeout(Duration::from_secs(5)))
            }
        }
    }
}
