//! `[[honeypots]]`.

use std::sync::Arc;

use super::*;
use crate::error::Collector;
use crate::raw::*;
use crate::units::parse_duration;

/// `[[honeypots]]`: trap paths and decoy keys.
pub(super) fn honeypots(
    raw: &RawConfig,
    case_sensitive: bool,
    c: &mut Collector<'_>,
) -> Vec<HoneypotSpec> {
    let mut honeypots = Vec::new();
    for (i, h) in raw.honeypots.iter().enumerate() {
        let path = format!("honeypots[{}]", h.index);
        let name = h
            .name
            .as_ref()
            .map_or_else(|| format!("trap-{}", i + 1), |n| n.get_ref().clone());
        if !valid_name(&name) {
            c.at(
                h.name.as_ref().and_then(sp),
                &path,
                format!("honeypot name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        let mut paths = Vec::new();
        for p in &h.paths {
            match PathPattern::parse(p.get_ref()) {
                Ok(pat) => paths.push(fold_case(pat, case_sensitive)),
                Err(e) => c.at(sp(p), format!("{path}.paths"), e.to_string()),
            }
        }
        let decoy_keys: Vec<String> = h.decoy_keys.iter().map(|k| k.expose().to_owned()).collect();
        if let Some(k) = h.decoy_keys.iter().find(|k| k.expose().len() < 16) {
            c.at(sp(k.spanned()), format!("{path}.decoy_keys"), "a decoy key must be at least 16 characters (it must look real and never collide with a guess)");
        }
        if h.paths.is_empty() && h.decoy_keys.is_empty() {
            c.at(None, &path, "a honeypot needs paths, decoy_keys or both");
        }
        let block_for_ms = opt(
            &h.block_for,
            3_600_000,
            &format!("{path}.block_for"),
            c,
            |s| parse_duration(s).map(|n| n / 1_000_000),
        );
        let weight = weight(&h.weight, 50, &format!("{path}.weight"), c);
        let effect = choice(
            &h.action,
            &[
                ("block", BlockEffect::Block),
                ("score", BlockEffect::Score(weight)),
            ],
            BlockEffect::Block,
            &format!("{path}.action"),
            c,
        );
        let flag: Vec<&'static str> = match &h.flag {
            // Not `ja4h` by default: a fingerprint is shared by every client with the same header
            // set, so a scanner dressed as a browser would get that browser's users blocked.
            None => vec!["ip", "api_key"],
            Some(list) => list
                .iter()
                .filter_map(|f| {
                    let found = palisade_engine::state::blocks::DIMENSIONS
                        .iter()
                        .find(|d| **d == f.get_ref().as_str())
                        .copied();
                    if found.is_none() {
                        c.at(
                            sp(f),
                            format!("{path}.flag"),
                            format!(
                                "`{}` is not one of: {}",
                                f.get_ref(),
                                palisade_engine::state::blocks::DIMENSIONS.join(", ")
                            ),
                        );
                    }
                    found
                })
                .collect(),
        };
        honeypots.push(HoneypotSpec {
            name: Arc::from(name.as_str()),
            paths,
            decoy_keys,
            block_for_ms,
            effect,
            flag,
            robots_txt: h.robots_txt.unwrap_or(false),
        });
    }
    honeypots
}
