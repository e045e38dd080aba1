//! Header consistency: a client claiming a browser whose headers no such browser sends.

use crate::engine::Engine;
use crate::model::decision::{Decision, Signal};
use crate::model::facts::RequestFacts;
use palisade_intel::Category;
use palisade_intel::headers::Inconsistency;

impl Engine {
    /// Signals for what the catalog took for (or did not check as) a browser.
    #[inline(always)]
    pub(crate) fn header_consistency(&self, d: &mut Decision, facts: &RequestFacts<'_>) {
        let p = &self.policy;
        if let Some(hp) = &p.headers
            && d.client
                .as_ref()
                .is_none_or(|c| c.category == Category::Human)
        {
            let ua = facts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let headers: Vec<(&str, &[u8])> = facts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            for inc in palisade_intel::headers::check(ua, headers.iter().copied(), hp.assume_https)
            {
                if let Some(name) = Inconsistency::ALL
                    .iter()
                    .position(|x| *x == inc)
                    .and_then(|i| self.header_rules.get(i))
                {
                    d.signals.push(Signal {
                        name: name.clone(),
                        weight: hp.weight,
                        shadow: false,
                        discounted: crate::detect::trust::keyed(facts),
                        detail: None,
                    });
                }
            }
        }
    }
}
