//! What `[bots]` compiles into: the catalog, an action per category, verified bots.

use std::sync::Arc;

use palisade_intel::{BotCatalog, Category};

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
