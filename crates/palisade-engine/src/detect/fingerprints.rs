//! Fingerprints against claims: a client whose user agent claims a browser while its TLS
//! handshake (JA4) or HTTP/2 frames are a known other client's, or that claims a browser over
//! TLS without offering HTTP/2.

use palisade_intel::clients::{Kind, claimed_browser};

use crate::engine::Engine;
use crate::model::decision::{Decision, Signal};
use crate::model::facts::RequestFacts;

impl Engine {
    /// `webbotauth/invalid`: a Web Bot Auth signature that does not verify, or breaks one of
    /// the protocol's rules (never an error: the request is judged like an unsigned one, plus
    /// this signal).
    #[inline(always)]
    pub(crate) fn signed_agent_signal(&self, d: &mut Decision, facts: &RequestFacts<'_>) {
        if let (Some(weight), Some(agent)) = (self.policy.web_bot_auth, facts.signed_agent)
            && agent.outcome.is_err()
        {
            d.signals.push(Signal {
                name: "webbotauth/invalid".into(),
                weight,
                shadow: false,
                discounted: false,
                detail: None,
            });
        }
    }

    /// `fingerprint/ua_mismatch` and `fingerprint/browser_without_h2`.
    #[inline(always)]
    pub(crate) fn fingerprint_consistency(&self, d: &mut Decision, facts: &RequestFacts<'_>) {
        let Some(fp) = &self.policy.fingerprints else {
            return;
        };
        if facts.tls.is_none() && facts.h2fp.is_none() {
            return;
        }
        let observed = [
            facts.h2fp.and_then(|h| fp.known.by_h2(h)),
            facts.tls.and_then(|t| fp.known.by_ja4(t.ja4)),
        ];
        d.observed_client = observed.iter().flatten().next().map(|k| (*k).clone());
        let Some(claimed) = facts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(claimed_browser)
        else {
            return;
        };
        let contradiction = observed
            .into_iter()
            .flatten()
            .find(|k| k.kind == Kind::Library || &*k.family != claimed);
        let discounted = crate::detect::trust::keyed(facts);
        if let Some(k) = contradiction {
            d.signals.push(Signal {
                name: "fingerprint/ua_mismatch".into(),
                weight: fp.mismatch_weight,
                shadow: false,
                discounted,
                detail: None,
            });
            d.fingerprint_mismatch = Some((claimed, k.family.clone()));
        }
        // JA4's ninth and tenth characters: the first ALPN value the client offered.
        if let Some(t) = facts.tls
            && t.ja4.get(8..10) != Some("h2")
        {
            d.signals.push(Signal {
                name: "fingerprint/browser_without_h2".into(),
                weight: fp.no_h2_weight,
                shadow: false,
                discounted,
                detail: None,
            });
        }
    }
}
