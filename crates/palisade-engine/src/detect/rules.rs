//! The rules stage: every matching `score` rule adds its signal; the first matching rule with
//! another action decides what the score would have.

use std::sync::Arc;

use crate::detect::stronger;
use crate::model::decision::Decision;
use crate::model::decision::{Action, Signal};
use crate::model::facts::RequestFacts;
use crate::policy::RouteSpec;

impl crate::engine::Engine {
    /// Runs the rules: `score` rules add their signals to `d`; the first other matching rule
    /// decides the score's action: `Some((None, rule))` for `allow`, `Some((Some(action),
    /// rule))` otherwise. Shadowed rules only record what they would have done.
    #[allow(clippy::type_complexity, reason = "private; documented above")]
    pub(crate) fn run_rules(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        route: &RouteSpec,
    ) -> Option<(Option<Action>, Arc<str>)> {
        use crate::policy::rules::{Facts, RuleAction, matches};
        let rp = self.policy.rules.as_ref()?;
        let check = |r: &crate::policy::rules::RuleSpec, view: &Facts<'_>| match matches(
            &rp.env, r, view,
        ) {
            Ok(b) => b,
            Err(_) => {
                self.rule_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
        };
        // Pass one: `score` rules add their signals.
        let mut added: Vec<Signal> = Vec::new();
        {
            let view = Facts::new(facts, &route.name, d, d.score);
            for ((r, name), routes) in rp.rules.iter().zip(&self.rule_names).zip(&self.rule_routes)
            {
                if let RuleAction::Score(w) = r.action
                    && in_scope(routes, d.route)
                    && check(r, &view)
                {
                    added.push(Signal {
                        name: name.clone(),
                        weight: w,
                        shadow: r.shadow,
                        discounted: false,
                        detail: None,
                    });
                }
            }
        }
        if !added.is_empty() {
            d.signals.extend(added);
            d.score = d.signal_score(false);
        }
        // Pass two: the first other matching rule decides, seeing the score with them.
        let mut decided: Option<(Option<Action>, Arc<str>)> = None;
        let mut would: Option<(Action, Arc<str>)> = None;
        {
            let view = Facts::new(facts, &route.name, d, d.score);
            for ((r, name), routes) in rp.rules.iter().zip(&self.rule_names).zip(&self.rule_routes)
            {
                if !in_scope(routes, d.route) {
                    continue;
                }
                let action = match r.action {
                    RuleAction::Score(_) => continue,
                    RuleAction::Allow => None,
                    RuleAction::Tag => Some(Action::Tag),
                    RuleAction::Delay => Some(Action::Delay {
                        wait: self.first_delay(),
                    }),
                    RuleAction::Challenge => Some(Action::Challenge),
                    RuleAction::Block => Some(Action::Block),
                };
                if (r.shadow && would.is_some()) || !check(r, &view) {
                    continue;
                }
                if r.shadow {
                    if let Some(a) = action {
                        would = Some((a, name.clone()));
                    }
                    continue;
                }
                decided = Some((action, name.clone()));
                break;
            }
        }
        if let Some((a, r)) = would
            && stronger(a, d.shadow.as_ref().map(|s| s.0))
        {
            d.shadow = Some((a, r));
        }
        decided
    }
}

/// Whether a rule scoped to `routes` (`None`: any) can match on `route`.
fn in_scope(
    routes: &Option<Vec<crate::request::route::RouteId>>,
    route: crate::request::route::RouteId,
) -> bool {
    routes.as_ref().is_none_or(|r| r.contains(&route))
}
