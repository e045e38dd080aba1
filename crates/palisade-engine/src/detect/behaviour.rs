//! Behaviour over time and across identities (the detectors live in [`crate::behaviour`]):
//! what they emitted for this request, as signals.

use crate::behaviour::Emitted;
use crate::engine::Engine;
use crate::model::decision::{Decision, Signal};
use crate::model::facts::RequestFacts;
use crate::request::route::RouteId;

impl Engine {
    /// Counts the request in behaviour's tables and adds what its detectors emitted.
    #[inline(always)]
    pub(crate) fn behaviour_signals(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        route: RouteId,
    ) {
        if let Some(b) = &self.behaviour {
            // Allocated only when something is emitted (most requests emit nothing).
            let mut emitted: Vec<Emitted> = Vec::new();
            let created = facts.auth.principal().and_then(|p| p.created_ms);
            d.trace = Some(b.assess(facts, route, facts.username, created, &mut emitted));
            d.under_attack = b.under_attack(route);
            let keyed = crate::detect::trust::keyed(facts);
            for e in emitted {
                if let Some(name) = self.behaviour_names.get(e.index) {
                    // Flows (indexes past the signals) are policy, never a habit.
                    let habit = crate::behaviour::Sig::ALL
                        .get(e.index)
                        .is_some_and(|s| crate::detect::trust::is_habit(*s));
                    d.signals.push(Signal {
                        name: name.clone(),
                        weight: e.weight,
                        shadow: false,
                        discounted: keyed && habit,
                        detail: None,
                    });
                }
            }
        }
    }
}
