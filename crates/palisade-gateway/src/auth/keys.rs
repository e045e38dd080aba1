//! API keys in the running gateway: the durable store (blocking I/O, so always off the async
//! runtime), the in-memory directory requests are verified against, the nonce cache for signed
//! requests, the periodic flush of quota usage and last-used times, and (cluster mode) the
//! changes waiting to be sent to the other gateways.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use palisade_engine::state::blocks::BlockTable;
use palisade_engine::state::quota_ledger::{QuotaLedger, day_of};
use palisade_keys::signature::NonceCache;
use palisade_keys::{ApiKeyRecord, KeyDirectory, KeyStore, StoreError};

/// Keys, as the gateway holds them.
#[derive(Debug)]
pub struct KeyService {
    store: Arc<KeyStore>,
    /// What requests are verified against.
    pub directory: Arc<KeyDirectory>,
    /// Nonces of signed requests.
    pub nonces: NonceCache,
    /// Whether changes go to the other gateways (cluster mode).
    sharing: AtomicBool,
    /// Changed records not yet sent to the other gateways.
    outbox: Mutex<Vec<ApiKeyRecord>>,
}

/// Most changed records kept for the other gateways while the store is away.
const MAX_OUTBOX: usize = 100_000;

impl KeyService {
    /// Opens the store in `data_dir` and loads every key.
    pub fn open(data_dir: &Path, max_nonces: usize) -> Result<Self, StoreError> {
        let store = KeyStore::open(data_dir)?;
        let directory = KeyDirectory::new(store.secret().clone(), store.list()?);
        Ok(Self {
            store: Arc::new(store),
            directory: Arc::new(directory),
            nonces: NonceCache::new(max_nonces),
            sharing: AtomicBool::new(false),
            outbox: Mutex::new(Vec::new()),
        })
    }

    /// From now on, changes are also queued for the other gateways (cluster mode).
    pub fn share(&self) {
        self.sharing.store(true, Ordering::Relaxed);
    }

    /// Changed records waiting to be sent to the other gateways.
    pub fn take_outbox(&self) -> Vec<ApiKeyRecord> {
        self.outbox
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }

    /// Queues records for the other gateways (again, after a failed send: newest kept).
    pub fn queue_for_cluster(&self, records: Vec<ApiKeyRecord>) {
        if let Ok(mut o) = self.outbox.lock() {
            o.extend(records);
            let excess = o.len().saturating_sub(MAX_OUTBOX);
            if excess > 0 {
                o.drain(..excess);
            }
        }
    }

    /// Applies records another gateway changed: in the directory, then durably.
    pub async fn apply_remote(&self, records: Vec<ApiKeyRecord>) -> Result<(), StoreError> {
        // Enforced first, then stored: once the admin API (which reads the store) shows a
        // change, requests are already held to it — a key shown revoked is refused, a key
        // shown created is accepted. A failed write still applies it, and a crash between the
        // two loses nothing: a gateway takes every key from the shared store when it starts.
        self.directory.upsert(&records);
        self.run(move |s| s.replicate(&records)).await
    }

    /// Runs a store operation on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
    }

    /// Puts changed records into the directory: they apply from the next request on.
    pub fn publish(&self, records: &[ApiKeyRecord]) {
        self.directory.upsert(records);
        if self.sharing.load(Ordering::Relaxed) {
            self.queue_for_cluster(records.to_vec());
        }
    }

    /// Loads persisted quota usage into the ledger.
    pub async fn restore_usage(
        &self,
        ledger: &QuotaLedger,
        unix_ms: u64,
    ) -> Result<(), StoreError> {
        let rows = self.run(|s| s.load_usage()).await?;
        ledger.restore(rows, day_of(unix_ms));
        Ok(())
    }

    /// Writes changed quota usage, last-used times and new blocks to the store.
    pub async fn flush(
        &self,
        ledger: &QuotaLedger,
        blocks: &BlockTable,
        unix_ms: u64,
    ) -> Result<(), StoreError> {
        let today = day_of(unix_ms);
        let rows = ledger.take_dirty(today);
        let used = self.directory.take_used();
        let added = blocks.take_added();
        if rows.is_empty() && used.is_empty() && added.is_empty() {
            return Ok(());
        }
        self.run(move |s| {
            s.save_usage(&rows, today)?;
            if !added.is_empty() {
                s.save_blocks(&added, unix_ms)?;
            }
            s.touch(&used)
        })
        .await
    }

    /// Loads persisted blocks into the table.
    pub async fn restore_blocks(
        &self,
        blocks: &BlockTable,
        unix_ms: u64,
    ) -> Result<(), StoreError> {
        let rows = self.run(|s| s.load_blocks()).await?;
        blocks.restore(rows, unix_ms);
        Ok(())
    }
}
