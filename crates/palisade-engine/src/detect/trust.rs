//! Trust follows the principal. A request with a verified API key or JWT is judged first as that
//! principal: its own limits, quotas, scopes, blocks and explicit rules, and evidence about the
//! principal itself — a key used from many networks or countries, decoy keys, keys that share a
//! network or a fingerprint with many other accounts, a key that keeps coming while its 429s run.
//!
//! What anonymous clients' habits tell about them — walking ids in order, machine-steady timing,
//! one route only, an HTTP library's user agent, a hosting network, headers no browser sends —
//! is what customers' integrations do all day: sequential catalog syncs, exports, backfills, cron
//! jobs on cloud servers. Those signals are still computed, logged and explained for a keyed
//! request, but *discounted*: they never count into its score, alone or summed. An operator who
//! wants to stop a customer from scraping sets that customer's limits, quotas or scopes, or
//! writes a rule (`auth.key`, `principal.account` ...), which applies as written.

use crate::behaviour::Sig;
use crate::model::facts::RequestFacts;

/// Whether the request comes from a verified principal (an API key or a JWT).
pub fn keyed(facts: &RequestFacts<'_>) -> bool {
    facts.auth.principal().is_some()
}

/// Whether a behaviour signal is an anonymous client's habit rather than evidence about a
/// principal.
pub fn is_habit(sig: Sig) -> bool {
    matches!(
        sig,
        Sig::Regular | Sig::OneRoute | Sig::Errors | Sig::Enumeration | Sig::CacheBusting
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_evidence_is_never_a_habit() {
        for s in [
            Sig::IgnoresRetryAfter,
            Sig::ManyIps,
            Sig::ManyCountries,
            Sig::ManyAsns,
            Sig::ManyUserAgents,
            Sig::KeysPerIp,
            Sig::KeysPerPrefix,
            Sig::KeysPerFingerprint,
            Sig::KeysPerAsn,
            Sig::AccountsPerSource,
            Sig::SimilarKeys,
            Sig::KeyCohort,
            Sig::StuffingSource,
            Sig::StuffingTarget,
        ] {
            assert!(!is_habit(s), "{s:?}");
        }
        for s in [Sig::Regular, Sig::OneRoute, Sig::Enumeration, Sig::Errors] {
            assert!(is_habit(s), "{s:?}");
        }
    }
}
