//! The detectors, one file each, in the order the pipeline runs them. Each reads the request's
//! facts and adds signals (or decides) on the decision being built; adding a detector is a file
//! here and one line in [`crate::pipeline`].

pub mod auth;
pub mod behaviour;
pub mod bots;
pub mod fingerprints;
pub mod headers;
pub mod intel;
pub mod limits;
pub mod lists;
pub mod probes;
pub mod quotas;
pub mod rules;
pub mod score;
pub mod trust;

use std::sync::Arc;

use crate::model::decision::Action;

/// What the limits, quotas and detectors decided so far: the strongest enforced action and its
/// rule, the strongest shadowed one, and the rule that makes the request at least tagged.
#[derive(Default)]
pub(crate) struct Verdicts {
    pub(crate) enforced: Option<(Action, Arc<str>)>,
    pub(crate) shadowed: Option<(Action, Arc<str>)>,
    pub(crate) tag_floor: Option<Arc<str>>,
}

pub(crate) fn stronger(a: Action, than: Option<Action>) -> bool {
    match (a, than) {
        (_, None) => true,
        (Action::Limit { retry_after: x }, Some(Action::Limit { retry_after: y })) => x > y,
        (Action::Delay { wait: x }, Some(Action::Delay { wait: y })) => x > y,
        (a, Some(b)) => a.severity() > b.severity(),
    }
}
