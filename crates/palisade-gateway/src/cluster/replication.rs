//! Replicated state: keys and blocks made on one gateway reach the others (a hash in the
//! store, and events on its channel).

use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_engine::clock::Clock as _;

use palisade_config::StoreBackend;

use super::*;

/// What gateways tell each other on the store's channel.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Event {
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
pub(super) struct SharedKey {
    rev: u64,
    record: palisade_keys::ApiKeyRecord,
}

/// Stores changed key records and announces them, atomically, so the order of revisions is
/// the order of announcements. `KEYS[1]` the records' hash, `KEYS[2]` the revision counter;
/// `ARGV[1]` the channel, `ARGV[2]` the sender, then an id and a JSON record per change.
pub(super) const KEYS_PUT: &str = r#"
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
pub(super) enum KeySharing {
    /// Not joined yet (or rejoining after the channel was lost).
    Joining = 0,
    /// Joined: changes go out and come in.
    On = 1,
    /// The cluster holds keys under another server secret: not shared.
    SecretMismatch = 2,
}

impl KeySharing {
    pub(super) fn from_u8(n: u8) -> Self {
        match n {
            1 => KeySharing::On,
            2 => KeySharing::SecretMismatch,
            _ => KeySharing::Joining,
        }
    }
}

impl SharedStore {
    pub(super) fn channel(&self) -> String {
        format!("{}:events", self.settings.prefix)
    }

    pub(super) fn blocks_hash(&self) -> String {
        format!("{}:blocks", self.settings.prefix)
    }

    /// The keys' hash, revision counter and secret fingerprint share one hash tag (one slot).
    pub(super) fn keys_key(&self, suffix: &str) -> String {
        format!("{}:{{keys}}{suffix}", self.settings.prefix)
    }

    /// A plain client for pub/sub (in a cluster, classic pub/sub reaches every node).
    pub(super) fn pubsub_client(&self) -> Option<redis::Client> {
        let StoreBackend::Redis { urls, .. } = &self.settings.backend else {
            return None;
        };
        urls.iter()
            .find_map(|u| redis::Client::open(u.as_str()).ok())
    }

    /// The records among `entries` newer than what this gateway has seen (their revisions
    /// are remembered).
    pub(super) fn newer_keys(&self, entries: Vec<SharedKey>) -> Vec<palisade_keys::ApiKeyRecord> {
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
pub(super) async fn load_blocks(
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
pub(super) async fn join_keys(
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
pub(super) async fn send_keys(
    shared: &crate::Shared,
    store: &SharedStore,
    conn: &mut Conn,
    me: u64,
) {
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
pub(super) async fn subscribe(shared: Arc<crate::Shared>, store: Arc<SharedStore>, me: u64) {
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
pub(super) async fn apply_event(
    shared: &crate::Shared,
    store: &SharedStore,
    event: Event,
    me: u64,
) {
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
