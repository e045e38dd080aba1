//! API keys in the running gateway: the durable store (blocking I/O, so always off the async
//! runtime), the in-memory directory requests are verified against, the nonce cache for signed
//! requests, and the periodic flush of quota usage and last-used times.

use std::path::Path;
use std::sync::Arc;

use palisade_engine::blocks::BlockTable;
use palisade_engine::quota::{QuotaLedger, day_of};
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
}

impl KeyService {
    /// Opens the store in `data_dir` and loads every key.
    pub fn open(data_dir: &Path, max_nonces: usize) -> Result<Self, StoreError> {
        let store = KeyStore::open(data_dir)?;
        let directory = KeyDirectory::new(store.secret().clone(), store.list()?);
        Ok(Self {
            store: Arc::new(store),
            directory: Arc::new(directory),
            nonces: NonceCache::new(max_nonces),
        })
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
