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

use crate::engine::Engine;
use crate::model::decision::{Action, Decision, Signal};
use crate::model::facts::RequestFacts;
use crate::pipeline::Verdicts;
use crate::policy::Mode;
use palisade_intel::verify::VerifyStatus;

impl Engine {
    /// The bot catalog: what it makes of the user agent (and of a claim to be a verifiable
    /// bot), and what the policy does with it. Refuses (enforce mode) before any limit counts.
    pub(crate) fn bots(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        v: &mut Verdicts,
    ) -> Option<Decision> {
        let p = &self.policy;
        if let Some(bots) = &p.bots {
            let ua = facts
                .headers
                .get(http::header::USER_AGENT)
                .map_or(&b""[..], |v| v.as_bytes());
            let mut class = self.ua_cache.classify(&bots.catalog, ua);
            let mut action = bots.action(class.category);
            let mut rule = self.bot_rule(class.category);
            let mut verified = false;
            if let Some((i, status)) = facts.bot_verification
                && let Some(vb) = bots.verified.get(i)
            {
                class.verification = Some((vb.name.clone(), status));
                match status {
                    VerifyStatus::Verified => verified = true,
                    VerifyStatus::Spoofed => {
                        action = bots.on_spoofed;
                        rule = self.rule_spoofed.clone();
                    }
                    VerifyStatus::Pending => {
                        if bots.on_pending != BotAction::Allow {
                            action = bots.on_pending;
                            rule = self.rule_unverified.clone();
                        }
                    }
                }
            }
            if action == BotAction::AllowVerified {
                action = if verified {
                    BotAction::Allow
                } else {
                    BotAction::Signal
                };
            }
            d.client = Some(class);
            // A verified key or token names an accountable caller: what software it uses (an
            // HTTP library, mostly) is no evidence against it. Explicit actions still apply.
            let keyed_signal = action == BotAction::Signal && facts.auth.principal().is_some();
            if action != BotAction::Allow && !keyed_signal {
                d.signals.push(Signal {
                    name: rule.clone(),
                    weight: bots.weight,
                    shadow: false,
                });
            }
            match action {
                BotAction::Allow | BotAction::Signal | BotAction::AllowVerified => {}
                BotAction::Tag => v.tag_floor = Some(rule),
                BotAction::Challenge | BotAction::Block => {
                    let a = if action == BotAction::Block {
                        Action::Block
                    } else {
                        Action::Challenge
                    };
                    if p.mode == Mode::Enforce {
                        // Refused before any limit counts it.
                        d.score = bots.weight;
                        return Some(self.finish(d.clone(), a, rule));
                    }
                    v.shadowed = Some((a, rule));
                }
            }
        }
        None
    }

    pub(crate) fn bot_rule(&self, c: Category) -> Arc<str> {
        Category::ALL
            .iter()
            .position(|x| *x == c)
            .and_then(|i| self.bot_rules.get(i).cloned())
            .unwrap_or_else(|| self.rule_default.clone())
    }
}
