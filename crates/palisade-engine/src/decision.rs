//! A decision is a value that carries its reasons: the action, the score, the rule that chose
//! the action, every signal with its weight, and the state of every limit that applied. The same
//! value feeds the response, the decision log, the metrics and the admin API.

use std::sync::Arc;

use crate::clock::Nanos;
use crate::limits::{Unit, Verdict};
use crate::route::RouteId;

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
            Action::Limit { .. } => 4,
            Action::Block => 5,
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
}

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
}

impl Decision {
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

    /// Whether the logged action is a shadowed one.
    pub fn is_shadowed(&self) -> bool {
        self.stronger_shadow().is_some()
    }
}
