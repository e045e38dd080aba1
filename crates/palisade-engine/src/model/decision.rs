//! A decision is a value that carries its reasons: the action, the score, the rule that chose
//! the action, every signal with its weight, and the state of every limit that applied. The same
//! value feeds the response, the decision log, the metrics and the admin API.

use std::sync::Arc;

use crate::clock::Nanos;
use crate::model::client::ClientClass;
use crate::model::header_item::HeaderItem;
use crate::request::route::RouteId;
use crate::state::limiter::{Algorithm, Unit, Verdict};
use crate::state::quota_ledger::QuotaHold;

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward.
    Allow,
    /// Forward with score headers for the upstream.
    Tag,
    /// Hold, then forward.
    Delay {
        /// How long to hold.
        wait: Nanos,
    },
    /// Ask the client to prove itself.
    Challenge,
    /// Answer 401: the route needs credentials that were missing or not accepted.
    Unauthorized,
    /// Answer 429.
    Limit {
        /// When to come back.
        retry_after: Nanos,
    },
    /// Answer 403.
    Block,
}

impl Action {
    /// The action's stable name, as in logs, metrics and config.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Tag => "tag",
            Action::Delay { .. } => "delay",
            Action::Challenge => "challenge",
            Action::Unauthorized => "unauthorized",
            Action::Limit { .. } => "limit",
            Action::Block => "block",
        }
    }

    /// The shadow-mode name: `would_<action>`.
    pub fn would_name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Tag => "would_tag",
            Action::Delay { .. } => "would_delay",
            Action::Challenge => "would_challenge",
            Action::Unauthorized => "unauthorized",
            Action::Limit { .. } => "would_limit",
            Action::Block => "would_block",
        }
    }

    /// Whether the request is forwarded to the upstream.
    pub fn forwards(&self) -> bool {
        matches!(self, Action::Allow | Action::Tag | Action::Delay { .. })
    }

    /// Severity, for choosing the strongest of several outcomes.
    pub fn severity(&self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::Tag => 1,
            Action::Delay { .. } => 2,
            Action::Challenge => 3,
            Action::Unauthorized => 4,
            Action::Limit { .. } => 5,
            Action::Block => 6,
        }
    }
}

/// A named, weighted piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// `<detector>/<name>`, e.g. `limit/per-ip` or `list/deny`.
    pub name: Arc<str>,
    /// Contribution to the risk score.
    pub weight: u8,
    /// Whether the signal comes from a shadowed rule (logged, never enforced).
    pub shadow: bool,
    /// Whether the signal is an anonymous client's habit observed on a verified principal
    /// (walking ids, steady timing, one route, an HTTP library, a hosting network): logged and
    /// explained, never counted into the score of a key or token (see [`crate::detect::trust`]).
    pub discounted: bool,
    /// Where and what, for signals about one thing in the request (`probe/sqli`: the
    /// location and a short fingerprint, `query:id s&sos`); logged and explained, never in
    /// metrics.
    pub detail: Option<Arc<str>>,
}

/// How one limit judged the request.
#[derive(Debug, Clone)]
pub struct LimitOutcome {
    /// Index of the limit in the policy.
    pub index: usize,
    /// The limit's name.
    pub name: Arc<str>,
    /// The hashed key the request was counted under.
    pub key: u64,
    /// Units charged up front (0 if the request was refused by this or another limit).
    pub charged: u64,
    /// The verdict.
    pub verdict: Verdict,
    /// Whether the limit is in shadow.
    pub shadow: bool,
    /// `q` for RateLimit-Policy.
    pub quota: u64,
    /// `w` for RateLimit-Policy.
    pub window_secs: u64,
    /// What it counts.
    pub unit: Unit,
    /// Whether it is advertised in headers.
    pub headers: bool,
    /// When the shared store counted it: its key there (a [`crate::model::identity::StableHasher`]
    /// hash); adjustments then go to the store, not the local table.
    pub shared: Option<u64>,
}

/// The rule of a request that no list, limit, signal or rule acted on.
pub const DEFAULT_ALLOW_RULE: &str = "default/allow";

/// The engine's decision for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The action to enforce.
    pub action: Action,
    /// The rule that chose `action`, e.g. `limit/per-ip`, `list/deny`, `default/allow`.
    pub rule: Arc<str>,
    /// If something stronger was decided but shadowed: that action and its rule.
    pub shadow: Option<(Action, Arc<str>)>,
    /// Risk score 0-100.
    pub score: u8,
    /// Every signal that fired.
    pub signals: Vec<Signal>,
    /// Every limit that applied.
    pub limits: Vec<LimitOutcome>,
    /// The matched route.
    pub route: RouteId,
    /// The stable error code for the client when the action refuses with a specific one
    /// (`invalid_api_key`, `daily_rpd_limit_exceeded`, ...); `None` for the action's default.
    pub code: Option<crate::model::code::ClientCode>,
    /// Daily quota reservations the request holds (settled by the gateway on the response).
    pub quotas: Vec<QuotaHold>,
    /// The per-key rate limit that applied, if any: its header item and algorithm.
    pub key_limit: Option<(Arc<HeaderItem>, Algorithm)>,
    /// The daily budget that refused the request, for its RateLimit headers: the rendered
    /// item, the budget's size and the seconds until it resets.
    pub exhausted: Option<(Arc<HeaderItem>, u64, u64)>,
    /// What the bot catalog made of the user agent (when `[bots]` is configured).
    pub client: Option<ClientClass>,
    /// What behaviour counted the request under, for observing its answer.
    pub trace: Option<crate::model::trace::Trace>,
    /// Whether the route was in attack mode (the stricter scoring profile applied).
    pub under_attack: bool,
    /// Corrections for the shared store (refunds of what it counted), for the gateway to send.
    pub shared_adjust: Vec<crate::model::shared::SharedAdjust>,
    /// The browser family the user agent claimed and the family its fingerprints showed, when
    /// they disagree (`fingerprint/ua_mismatch`).
    pub fingerprint_mismatch: Option<(&'static str, Arc<str>)>,
    /// The client the connection's fingerprints show (HTTP/2 first, then JA4), when
    /// `[fingerprints]` knows it: its family and whether it is a browser.
    pub observed_client: Option<palisade_intel::clients::Known>,
    /// Whether the client holds a clearance (a solved challenge): a challenge becomes an allow.
    pub cleared: bool,
}

impl Decision {
    /// An allow decision on `route` with nothing recorded yet.
    pub fn new(route: RouteId, rule: Arc<str>) -> Self {
        Self {
            action: Action::Allow,
            rule,
            shadow: None,
            score: 0,
            signals: Vec::new(),
            limits: Vec::new(),
            route,
            code: None,
            quotas: Vec::new(),
            key_limit: None,
            exhausted: None,
            client: None,
            trace: None,
            under_attack: false,
            shared_adjust: Vec::new(),
            fingerprint_mismatch: None,
            observed_client: None,
            cleared: false,
        }
    }
}

impl Decision {
    /// The risk score the signals add up to (0-100): the enforced ones, or with
    /// `with_shadowed` the shadowed ones too.
    pub fn signal_score(&self, with_shadowed: bool) -> u8 {
        self.signals
            .iter()
            .filter(|s| !s.discounted && (with_shadowed || !s.shadow))
            .fold(0u32, |acc, s| acc + u32::from(s.weight))
            .min(100) as u8
    }

    /// The shadowed action and its rule, when it is stronger than the enforced one.
    fn stronger_shadow(&self) -> Option<&(Action, Arc<str>)> {
        self.shadow
            .as_ref()
            .filter(|(a, _)| a.severity() > self.action.severity())
    }

    /// The action name for logs and metrics: the enforced action, or `would_<action>` when a
    /// stronger action was shadowed.
    pub fn logged_action(&self) -> &'static str {
        match self.stronger_shadow() {
            Some((a, _)) => a.would_name(),
            None => self.action.name(),
        }
    }

    /// The rule for logs and metrics, matching [`Decision::logged_action`].
    pub fn logged_rule(&self) -> &Arc<str> {
        match self.stronger_shadow() {
            Some((_, r)) => r,
            None => &self.rule,
        }
    }

    /// Whether a limit (not the score or a rule) chose a delay: the request is held to smooth a
    /// burst into the limit's rate, not throttled.
    pub fn delayed_by_limit(&self) -> bool {
        matches!(self.action, Action::Delay { .. })
            && self.limits.iter().any(|o| !o.verdict.allowed && !o.shadow)
    }

    /// Whether the logged action is a shadowed one.
    pub fn is_shadowed(&self) -> bool {
        self.stronger_shadow().is_some()
    }
}
