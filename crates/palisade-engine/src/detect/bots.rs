//! The bot stage: classifies the user agent with the catalog (through a bounded cache, since
//! people's browsers repeat the same few strings) and maps the category to what the policy
//! says: nothing, a weighted signal, tagging, a challenge or a block.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use palisade_intel::{BotCatalog, Category};
use quick_cache::sync::Cache;

/// What to do with a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BotAction {
    /// Nothing.
    Allow,
    /// A signal with the policy's weight (contributes to the score).
    #[default]
    Signal,
    /// Forward with score headers.
    Tag,
    /// Challenge.
    Challenge,
    /// Refuse (403).
    Block,
    /// Allow a claimed bot whose claim was verified; a signal otherwise.
    AllowVerified,
}

impl BotAction {
    /// Parses a config value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "allow" => BotAction::Allow,
            "signal" => BotAction::Signal,
            "tag" => BotAction::Tag,
            "challenge" => BotAction::Challenge,
            "block" => BotAction::Block,
            "allow_verified" => BotAction::AllowVerified,
            _ => return None,
        })
    }
}

/// Compiled `[bots]`.
#[derive(Debug, Clone)]
pub struct BotsPolicy {
    /// The catalog.
    pub catalog: Arc<BotCatalog>,
    /// Action per category, indexed like [`Category::ALL`].
    pub actions: [BotAction; Category::ALL.len()],
    /// Weight of a `signal`.
    pub weight: u8,
    /// User agents whose classification is remembered.
    pub cache_entries: usize,
    /// Bots whose claims are verified (published ranges, forward-confirmed reverse DNS).
    pub verified: Vec<Arc<palisade_intel::verify::VerifiedBot>>,
    /// What a claimant gets while its DNS check is pending.
    pub on_pending: BotAction,
    /// What a false claimant gets.
    pub on_spoofed: BotAction,
    /// DNS servers for reverse lookups (empty: the system's).
    pub dns_servers: Vec<std::net::SocketAddr>,
}

impl BotsPolicy {
    /// The action for a category.
    pub fn action(&self, c: Category) -> BotAction {
        Category::ALL
            .iter()
            .position(|x| *x == c)
            .and_then(|i| self.actions.get(i).copied())
            .unwrap_or_default()
    }
}

/// A user agent's classification, as the decision carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientClass {
    /// Category.
    pub category: Category,
    /// The catalog's name for the client.
    pub name: Option<Arc<str>>,
    /// The verified-bot claim and its state, if the user agent made one.
    pub verification: Option<(Arc<str>, palisade_intel::verify::VerifyStatus)>,
}

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
