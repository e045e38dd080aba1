//! The bot stage: classifies the user agent with the catalog (through a bounded cache) and maps
//! the category to what the policy says: nothing, a weighted signal, tagging, a challenge or a
//! block.

use crate::engine::Engine;
use crate::model::decision::{Action, Decision, Signal};
use crate::model::facts::RequestFacts;
use std::sync::Arc;

use palisade_intel::Category;

use crate::detect::Verdicts;
use crate::policy::Mode;
use crate::policy::bots::BotAction;
use palisade_intel::verify::VerifyStatus;

impl Engine {
    /// The bot catalog: what it makes of the user agent (and of a claim to be a verifiable
    /// bot), and what the policy does with it. Refuses (enforce mode) before any limit counts.
    #[inline(always)]
    pub(crate) fn bots(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        v: &mut Verdicts,
    ) -> Option<Decision> {
        let p = &self.policy;
        if let Some(bots) = &p.bots {
            let ua = crate::request::header(facts.headers, &http::header::USER_AGENT)
                .map_or(&b""[..], |v| v.as_bytes());
            let mut class = self.ua_cache.classify(&bots.catalog, ua);
            let mut action = bots.action(class.category);
            let mut rule = self.bot_rule(class.category);
            let mut verified = false;
            if let Some((i, status)) = facts.bot_verification
                && let Some(vb) = bots.verified.get(i)
            {
                class.verification = Some((vb.name.clone(), status));
                match status {
                    VerifyStatus::Verified => verified = true,
                    VerifyStatus::Spoofed => {
                        action = bots.on_spoofed;
                        rule = self.rule_spoofed.clone();
                    }
                    VerifyStatus::Pending => {
                        if bots.on_pending != BotAction::Allow {
                            action = bots.on_pending;
                            rule = self.rule_unverified.clone();
                        }
                    }
                    // Nothing to check it against: the claim stands as the catalog's category
                    // (never verified, never held to be false).
                    VerifyStatus::Unverifiable => {}
                }
            }
            // A verified Web Bot Auth signature names the agent: its configured category and
            // a verified claim, whatever the user agent says.
            if let Some(agent) = facts.signed_agent.filter(|a| a.outcome.is_ok()) {
                class = crate::model::client::ClientClass {
                    category: agent.category,
                    name: Some(Arc::from(agent.name)),
                    verification: Some((Arc::from(agent.name), VerifyStatus::Verified)),
                };
                action = bots.action(agent.category);
                rule = self.bot_rule(agent.category);
                verified = true;
            }
            if action == BotAction::AllowVerified {
                action = if verified {
                    BotAction::Allow
                } else {
                    BotAction::Signal
                };
            }
            d.client = Some(class);
            // A verified key or token names an accountable caller: what software it uses (an
            // HTTP library, mostly) is no evidence against it — shown, not scored. Explicit
            // actions still apply.
            if action != BotAction::Allow {
                d.signals.push(Signal {
                    name: rule.clone(),
                    weight: bots.weight,
                    shadow: false,
                    discounted: action == BotAction::Signal && crate::detect::trust::keyed(facts),
                    detail: None,
                });
            }
            match action {
                BotAction::Allow | BotAction::Signal | BotAction::AllowVerified => {}
                BotAction::Tag => v.tag_floor = Some(rule),
                BotAction::Challenge | BotAction::Block => {
                    let a = if action == BotAction::Block {
                        Action::Block
                    } else {
                        Action::Challenge
                    };
                    if p.mode == Mode::Enforce {
                        // Refused before any limit counts it.
                        d.score = bots.weight;
                        return Some(self.finish(d.clone(), a, rule));
                    }
                    v.shadowed = Some((a, rule));
                }
            }
        }
        None
    }

    pub(crate) fn bot_rule(&self, c: Category) -> Arc<str> {
        Category::ALL
            .iter()
            .position(|x| *x == c)
            .and_then(|i| self.bot_rules.get(i).cloned())
            .unwrap_or_else(|| self.rule_default.clone())
    }
}
