//! `[scoring]`.

use toml::Spanned;

use super::*;
use crate::error::Collector;
use crate::raw::*;
use crate::units::parse_duration;

/// `[scoring]`: thresholds, throttling steps and holds.
pub(super) fn scoring(raw: &RawConfig, c: &mut Collector<'_>) -> ScoringPolicy {
    let threshold = |v: &Option<Spanned<u64>>, d: u8, name: &str, c: &mut Collector<'_>| match v {
        Some(x) if *x.get_ref() > 100 => {
            c.at(
                sp(x),
                format!("scoring.{name}"),
                "thresholds are scores from 0 (off) to 100",
            );
            d
        }
        Some(x) => *x.get_ref() as u8,
        None => d,
    };
    let defaults = ScoringPolicy::default();
    let rs = &raw.scoring;
    let ua = rs.under_attack.clone().unwrap_or_default();
    let du = defaults.under_attack;
    let mut scoring = ScoringPolicy {
        tag_at: threshold(&rs.tag_at, defaults.tag_at, "tag_at", c),
        delay_at: threshold(&rs.delay_at, defaults.delay_at, "delay_at", c),
        challenge_at: threshold(&rs.challenge_at, defaults.challenge_at, "challenge_at", c),
        block_at: threshold(&rs.block_at, defaults.block_at, "block_at", c),
        under_attack: palisade_engine::policy::Thresholds {
            tag_at: threshold(&ua.tag_at, du.tag_at, "under_attack.tag_at", c),
            delay_at: threshold(&ua.delay_at, du.delay_at, "under_attack.delay_at", c),
            challenge_at: threshold(
                &ua.challenge_at,
                du.challenge_at,
                "under_attack.challenge_at",
                c,
            ),
            block_at: threshold(&ua.block_at, du.block_at, "under_attack.block_at", c),
        },
        relax_after: opt(
            &rs.relax_after,
            defaults.relax_after,
            "scoring.relax_after",
            c,
            parse_duration,
        ),
        throttle_block_ms: opt(
            &rs.throttle_block_for,
            defaults.throttle_block_ms,
            "scoring.throttle_block_for",
            c,
            |s| parse_duration(s).map(|n| n / 1_000_000),
        ),
        throttle: defaults.throttle.clone(),
        max_held: match &rs.max_held {
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1000 => {
                c.at(sp(v), "scoring.max_held", "must be between 1 and 1000");
                defaults.max_held
            }
            Some(v) => *v.get_ref() as u32,
            None => defaults.max_held,
        },
    };
    if let Some(steps) = &rs.throttle {
        scoring.throttle = steps
            .iter()
            .filter_map(|st| match parse_duration(st.get_ref()) {
                Ok(0) => {
                    c.at(
                        sp(st),
                        "scoring.throttle",
                        "a delay step must be longer than 0s",
                    );
                    None
                }
                Ok(n) if n > 300 * palisade_engine::clock::SECOND => {
                    c.at(
                        sp(st),
                        "scoring.throttle",
                        "a delay step longer than 5m holds connections for too long; block instead",
                    );
                    None
                }
                Ok(n) => Some(n),
                Err(e) => {
                    c.at(sp(st), "scoring.throttle", e);
                    None
                }
            })
            .collect();
        if scoring.throttle.windows(2).any(|w| w.first() > w.get(1)) {
            c.at(
                steps.first().and_then(sp),
                "scoring.throttle",
                "delay steps must not get shorter",
            );
        }
    }
    for (name, t) in [
        ("scoring", scoring.thresholds(false)),
        ("scoring.under_attack", scoring.under_attack),
    ] {
        let order = [t.tag_at, t.delay_at, t.challenge_at, t.block_at];
        let on: Vec<u8> = order.iter().copied().filter(|x| *x > 0).collect();
        if on.windows(2).any(|w| w.first() > w.get(1)) {
            c.at(
                None,
                name,
                format!(
                    "thresholds must rise: tag_at <= delay_at <= challenge_at <= block_at (got {}, {}, {}, {})",
                    t.tag_at, t.delay_at, t.challenge_at, t.block_at
                ),
            );
        }
    }
    scoring
}
