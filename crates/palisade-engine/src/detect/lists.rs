//! Deny and allow lists, blocks with a time to live, and honeypots (trap paths and decoy keys).

use std::sync::Arc;

use crate::engine::*;
use crate::model::code::ClientCode;
use crate::model::decision::{Action, Decision, Signal};
use crate::model::facts::RequestFacts;
use crate::model::identity::mask;
use crate::state::blocks::BlockEffect;
use crate::state::blocks::block_key;

impl Engine {
    /// A denylisted client is refused before anything else.
    #[inline(always)]
    pub(crate) fn deny_listed(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
    ) -> Option<Decision> {
        let ip = facts.client_ip;
        if !self.policy.lists.deny.contains(ip) {
            return None;
        }
        d.signals.push(Signal {
            name: self.rule_deny.clone(),
            weight: 100,
            shadow: false,
            discounted: false,
            detail: None,
        });
        d.score = 100;
        Some(self.finish(d.clone(), Action::Block, self.rule_deny.clone()))
    }

    /// Honeypots: a trap path flags the client and answers as if nothing were there.
    #[inline(always)]
    pub(crate) fn honeypot(&self, d: &mut Decision, facts: &RequestFacts<'_>) -> Option<Decision> {
        if self.policy.honeypots.is_empty() {
            return None;
        }
        let path = crate::request::route::normalize_for_match(facts.path);
        let i = self
            .policy
            .honeypots
            .iter()
            .position(|h| h.paths.iter().any(|pat| pat.matches_normalized(&path)))?;
        self.trap(i, facts);
        let rule = self
            .honeypot_rules
            .get(i)
            .cloned()
            .unwrap_or_else(|| self.rule_default.clone());
        d.signals.push(Signal {
            name: rule.clone(),
            weight: 100,
            shadow: false,
            discounted: false,
            detail: None,
        });
        d.score = 100;
        d.code = Some(ClientCode::NotFound);
        Some(self.finish(d.clone(), Action::Block, rule))
    }

    /// Blocks with a time to live, on any of the client's identities: a refusal, or a signal.
    #[inline(always)]
    pub(crate) fn blocked(&self, d: &mut Decision, facts: &RequestFacts<'_>) -> Option<Decision> {
        if self.blocks.is_empty() {
            return None;
        }
        let keys = self.block_keys(facts);
        let b = self.blocks.find(&keys, facts.unix_ms)?;
        let rule: Arc<str> = Arc::from(format!("block/{}", b.reason));
        match b.effect {
            BlockEffect::Block => {
                d.signals.push(Signal {
                    name: rule.clone(),
                    weight: 100,
                    shadow: false,
                    discounted: false,
                    detail: None,
                });
                d.score = 100;
                Some(self.finish(d.clone(), Action::Block, rule))
            }
            BlockEffect::Score(w) => {
                d.signals.push(Signal {
                    name: rule,
                    weight: w,
                    shadow: false,
                    discounted: false,
                    detail: None,
                });
                None
            }
        }
    }

    /// Whether the client is allowlisted (it then skips limits, quotas and checks).
    #[inline(always)]
    pub(crate) fn allow_listed(&self, facts: &RequestFacts<'_>) -> bool {
        let lists = &self.policy.lists;
        lists.allow.contains(facts.client_ip)
            || lists
                .allow_if
                .iter()
                .any(|a| a.matches(facts.client_ip, facts.path, facts.headers))
    }

    /// The block-table keys of a request's identities.
    pub(crate) fn block_keys(&self, facts: &RequestFacts<'_>) -> Vec<String> {
        let ip = facts.client_ip.to_canonical();
        let mut keys = vec![format!("ip:{ip}"), format!("ip/24:{}", mask(ip, 24, 48))];
        if let Some(p) = facts.auth.principal() {
            if let Some(k) = &p.key_id {
                keys.push(format!("api_key:{k}"));
            }
            if let Some(a) = &p.account {
                keys.push(format!("account:{a}"));
            }
        }
        if let Some(j) = facts.ja4h {
            keys.push(format!("ja4h:{j}"));
        }
        if let Some(h) = facts.hfp {
            keys.push(format!("hfp:{h}"));
        }
        if let Some(t) = facts.tls {
            keys.push(format!("ja4:{}", t.ja4));
        }
        if let Some(h) = facts.h2fp {
            keys.push(format!("h2fp:{h}"));
        }
        if let Some(j) = facts.ja3 {
            keys.push(format!("ja3:{j}"));
        }
        if let Some(i) = facts.ip_info.filter(|i| i.asn != 0) {
            keys.push(format!("asn:{}", i.asn));
        }
        keys
    }

    /// Records a honeypot hit: flags the client's configured identities for the honeypot's
    /// time (doubling for a repeat offender).
    pub fn trap(&self, honeypot: usize, facts: &RequestFacts<'_>) {
        let Some(h) = self.policy.honeypots.get(honeypot) else {
            return;
        };
        let reason = format!("honeypot/{}", h.name);
        let ip = facts.client_ip.to_canonical().to_string();
        for dim in &h.flag {
            let value = match *dim {
                "ip" | "ip/24" => Some(ip.clone()),
                "api_key" => facts
                    .auth
                    .principal()
                    .and_then(|p| p.key_id.as_deref().map(str::to_owned)),
                "account" => facts
                    .auth
                    .principal()
                    .and_then(|p| p.account.as_deref().map(str::to_owned)),
                "ja4h" => facts.ja4h.map(str::to_owned),
                "hfp" => facts.hfp.map(str::to_owned),
                "ja4" => facts.tls.map(|t| t.ja4.to_owned()),
                "h2fp" => facts.h2fp.map(str::to_owned),
                "ja3" => facts.ja3.map(str::to_owned),
                "asn" => facts
                    .ip_info
                    .filter(|i| i.asn != 0)
                    .map(|i| i.asn.to_string()),
                _ => None,
            };
            if let Some(key) = value.and_then(|v| block_key(dim, &v)) {
                self.blocks
                    .add(key, h.block_for_ms, &reason, h.effect, true, facts.unix_ms);
            }
        }
    }
}
