//! Who is calling: the authenticated principal behind a request (an API key with its account, or
//! a JWT's claims), or why authentication failed.
//!
//! The gateway verifies credentials (key hashes, token signatures) with the `palisade-keys`
//! crate and hands the engine the outcome; the engine decides what a route requires, keys limits
//! and quotas on the principal's dimensions, and counts failed attempts per client as a signal.

use std::sync::Arc;

use crate::clock::Nanos;
use crate::model::header_item::HeaderItem;
use crate::model::header_item::QuotaItems;

/// What a route requires of its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthRequirement {
    /// Nothing; a valid credential, if present, still identifies the caller.
    #[default]
    None,
    /// A valid API key.
    ApiKey,
    /// A valid JWT bearer token.
    Jwt,
    /// Either.
    Any,
}

impl AuthRequirement {
    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            AuthRequirement::None => "none",
            AuthRequirement::ApiKey => "api_key",
            AuthRequirement::Jwt => "jwt",
            AuthRequirement::Any => "any",
        }
    }
}

/// How the principal was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// An API key.
    ApiKey,
    /// A JWT bearer token.
    Jwt,
}

/// A per-key rate limit, from the key's record.
#[derive(Debug, Clone)]
pub struct KeyRate {
    /// Time to replenish one request.
    pub interval: Nanos,
    /// Requests that may be made at once.
    pub burst: u64,
    /// Header item advertising it.
    pub item: Arc<HeaderItem>,
    /// `q` (requests per window).
    pub quota: u64,
    /// `w` (window seconds).
    pub window_secs: u64,
}

/// Daily budgets carried by a key's record (in addition to `[[quotas]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyBudget {
    /// Requests per UTC day.
    pub requests_per_day: Option<u64>,
    /// Spend per UTC day, in micro-dollars.
    pub spend_per_day_micros: Option<u64>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Key or token.
    pub kind: PrincipalKind,
    /// The key id (`api_key` dimension), for keys.
    pub key_id: Option<Arc<str>>,
    /// The account (`account` dimension).
    pub account: Option<Arc<str>>,
    /// Granted scopes.
    pub scopes: Vec<Arc<str>>,
    /// Configured JWT claims with their values (`jwt:<claim>` dimensions), for tokens.
    pub claims: Vec<(Arc<str>, Arc<str>)>,
    /// The key's own rate limit.
    pub rate: Option<KeyRate>,
    /// The key's own daily budgets.
    pub budget: KeyBudget,
    /// Header items for the key's own budgets (when it has any).
    pub budget_items: Option<Arc<QuotaItems>>,
    /// When the key was created (Unix ms), for grouping keys created together.
    pub created_ms: Option<u64>,
}

impl Principal {
    /// A claim's value, for `jwt:<claim>` keys.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// Whether every one of `required` is granted. A `*` scope grants everything.
    pub fn has_scopes(&self, required: &[Arc<str>]) -> bool {
        required.iter().all(|r| {
            self.scopes
                .iter()
                .any(|s| s == r || &**s == "*" || prefix_wildcard(s, r))
        })
    }
}

/// `items:*` grants `items:read`.
fn prefix_wildcard(granted: &str, required: &str) -> bool {
    granted
        .strip_suffix('*')
        .is_some_and(|p| p.ends_with(':') && required.starts_with(p))
}

/// Why a presented credential was not accepted. Each has a stable client-facing code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Not a key this gateway issued, or a wrong secret.
    InvalidApiKey,
    /// The key's expiry has passed (including a rotated key after its grace period).
    ExpiredApiKey,
    /// The key was revoked.
    RevokedApiKey,
    /// A bearer token that did not verify (signature, expiry, issuer, audience, format).
    InvalidToken,
    /// A signed request whose signature, timestamp or nonce did not verify.
    InvalidSignature,
}

impl AuthFailure {
    /// The stable error code clients see.
    pub fn code(&self) -> crate::model::code::ClientCode {
        use crate::model::code::ClientCode;
        match self {
            AuthFailure::InvalidApiKey => ClientCode::InvalidApiKey,
            AuthFailure::ExpiredApiKey => ClientCode::ExpiredApiKey,
            AuthFailure::RevokedApiKey => ClientCode::RevokedApiKey,
            AuthFailure::InvalidToken => ClientCode::InvalidToken,
            AuthFailure::InvalidSignature => ClientCode::InvalidSignature,
        }
    }
}

/// The authentication outcome for a request, as the gateway determined it.
#[derive(Debug, Clone, Copy, Default)]
pub enum Auth<'a> {
    /// No credential was presented.
    #[default]
    Anonymous,
    /// A credential was presented and verified.
    Principal(&'a Principal),
    /// A credential was presented and refused. `kind` says which sort it was.
    Failed {
        /// Key or token.
        kind: PrincipalKind,
        /// Why.
        failure: AuthFailure,
    },
}

impl<'a> Auth<'a> {
    /// The principal, if authenticated.
    pub fn principal(&self) -> Option<&'a Principal> {
        match self {
            Auth::Principal(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_match_exactly_or_by_wildcard() {
        let p = Principal {
            kind: PrincipalKind::ApiKey,
            key_id: None,
            account: None,
            scopes: vec![Arc::from("items:*"), Arc::from("search")],
            claims: vec![],
            rate: None,
            budget: KeyBudget::default(),
            budget_items: None,
            created_ms: None,
        };
        assert!(p.has_scopes(&[Arc::from("items:read"), Arc::from("search")]));
        assert!(p.has_scopes(&[]));
        assert!(!p.has_scopes(&[Arc::from("admin")]));
        assert!(!p.has_scopes(&[Arc::from("itemsx:read")]));
        assert!(!p.has_scopes(&[Arc::from("search:read")]));
    }
}
