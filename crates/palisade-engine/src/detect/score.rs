//! The risk score's action, and progressive throttling for repeat offenders.

use std::sync::Arc;

use crate::clock::{Nanos, SECOND};
use crate::model::decision::{Action, Decision};
use crate::model::facts::RequestFacts;
use crate::policy::Mode;
use crate::state::blocks::{BlockEffect, block_key};

use crate::engine::*;

impl Engine {
    /// The delay a first offence gets: the first throttling step (1 s without steps).
    pub(crate) fn first_delay(&self) -> Nanos {
        self.policy
            .scoring
            .throttle
            .first()
            .copied()
            .unwrap_or(SECOND)
    }

    pub(crate) fn score_action(&self, score: u8, d: &Decision) -> Option<(Action, Arc<str>)> {
        let s = self.policy.scoring.thresholds(d.under_attack);
        let [tag, challenge, block] = &self.rule_score;
        if s.block_at > 0 && score >= s.block_at {
            Some((Action::Block, block.clone()))
        } else if s.challenge_at > 0 && score >= s.challenge_at {
            Some((Action::Challenge, challenge.clone()))
        } else if s.delay_at > 0 && score >= s.delay_at && !self.policy.scoring.throttle.is_empty()
        {
            Some((
                Action::Delay {
                    wait: self.first_delay(),
                },
                self.rule_delay.clone(),
            ))
        } else if s.tag_at > 0 && score >= s.tag_at {
            Some((Action::Tag, tag.clone()))
        } else {
            None
        }
    }

    /// Progressive throttling: the delay step for this offence, or a block past the last step
    /// (which also blocks the client's key or address for a while).
    pub(crate) fn throttle(&self, d: &Decision, facts: &RequestFacts<'_>) -> (Action, Arc<str>) {
        let scoring = &self.policy.scoring;
        let (Some(b), Some(trace)) = (&self.behaviour, &d.trace) else {
            let wait = scoring.throttle.first().copied().unwrap_or(SECOND);
            return (Action::Delay { wait }, self.rule_delay.clone());
        };
        let level = b.throttle(
            trace,
            facts.now,
            true,
            &scoring.throttle,
            scoring.relax_after,
        );
        match scoring.throttle.get(usize::from(level.max(1)) - 1) {
            Some(wait) => (Action::Delay { wait: *wait }, self.rule_delay.clone()),
            None => {
                if scoring.throttle_block_ms > 0 && self.policy.mode == Mode::Enforce {
                    let key = match (trace.throttle_identity(), facts.auth.principal()) {
                        (Some(crate::behaviour::Dim::ApiKey), Some(p)) => {
                            p.key_id.as_deref().and_then(|k| block_key("api_key", k))
                        }
                        _ => block_key("ip", &facts.client_ip.to_canonical().to_string()),
                    };
                    if let Some(key) = key {
                        self.blocks.add(
                            key,
                            scoring.throttle_block_ms,
                            "score/throttle",
                            BlockEffect::Block,
                            true,
                            facts.unix_ms,
                        );
                    }
                }
                (Action::Block, self.rule_throttle.clone())
            }
        }
    }
}
