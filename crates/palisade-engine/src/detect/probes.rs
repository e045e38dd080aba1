//! Injection probes (`[probes]`): what the gateway's scan found in the request becomes one
//! signal per class (`probe/sqli`, …) with the location and fingerprint as its detail, or a
//! refusal for the classes configured to block.

use std::sync::Arc;

use crate::engine::Engine;
use crate::model::code::ClientCode;
use crate::model::decision::{Action, Decision, Signal};
use crate::model::facts::RequestFacts;

impl Engine {
    /// Signals for the probes found; `Some(refusal)` when a class that blocks was among them.
    #[inline(always)]
    pub(crate) fn probes(&self, d: &mut Decision, facts: &RequestFacts<'_>) -> Option<Decision> {
        // A request the API's contract does not describe: a signal, so a client that keeps
        // probing the contract is throttled like any other prober.
        if let Some(rule) = facts.contract
            && self.policy.contract_weight > 0
        {
            d.signals.push(Signal {
                name: Arc::from(rule),
                weight: self.policy.contract_weight,
                shadow: false,
                discounted: false,
                detail: None,
            });
        }
        if facts.probes.is_empty() {
            return None;
        }
        let policy = self.policy.probes.as_ref()?;
        let mut block: Option<Arc<str>> = None;
        for hit in facts.probes {
            let i = hit.class as usize;
            let (Some(action), Some(name)) = (policy.actions.get(i), self.probe_rules.get(i))
            else {
                continue;
            };
            d.signals.push(Signal {
                name: name.clone(),
                weight: action.weight,
                shadow: false,
                discounted: false,
                detail: Some(Arc::from(format!("{} {}", hit.location, hit.fingerprint))),
            });
            if action.block && block.is_none() {
                block = Some(name.clone());
            }
        }
        let rule = block?;
        d.score = d.signal_score(false).max(100);
        d.code = Some(ClientCode::Forbidden);
        Some(self.finish(d.clone(), Action::Block, rule))
    }
}
