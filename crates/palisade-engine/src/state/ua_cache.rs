//! The user-agent classification cache: people's browsers repeat the same few strings, so a
//! bounded cache saves classifying them again.

use std::hash::{BuildHasher, RandomState};

use palisade_intel::BotCatalog;
use quick_cache::sync::Cache;

use crate::model::client::ClientClass;

/// The classification cache.
pub struct UaCache {
    cache: Cache<u64, ClientClass>,
    hasher: RandomState,
}

impl std::fmt::Debug for UaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UaCache")
            .field("len", &self.cache.len())
            .finish()
    }
}

impl UaCache {
    /// A cache of at most `entries` user agents.
    pub fn new(entries: usize) -> Self {
        Self {
            cache: Cache::new(entries.max(16)),
            hasher: RandomState::new(),
        }
    }

    /// Classifies `ua`, from the cache when it was seen before.
    pub fn classify(&self, catalog: &BotCatalog, ua: &[u8]) -> ClientClass {
        let key = self.hasher.hash_one(ua);
        if let Some(c) = self.cache.get(&key) {
            return c;
        }
        let text = String::from_utf8_lossy(ua);
        let c = catalog.classify(&text);
        let class = ClientClass {
            category: c.category,
            name: c.name,
            verification: None,
        };
        self.cache.insert(key, class.clone());
        class
    }

    /// Number of cached user agents.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}
