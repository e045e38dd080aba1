//! `[[rules]]`.

use std::sync::Arc;

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// `[[rules]]`.
pub(super) fn compile_rules(
    raw: &[RawRule],
    c: &mut Collector<'_>,
) -> Option<palisade_engine::policy::rules::RulesPolicy> {
    use palisade_engine::policy::rules::{RuleAction, RuleSpec, RulesPolicy, compile, environment};
    if raw.is_empty() {
        return None;
    }
    let env = environment();
    let mut rules = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for r in raw {
        let path = format!("rules[{}]", r.index);
        let name = r.name.get_ref();
        if !valid_name(name) {
            c.at(
                sp(&r.name),
                format!("{path}.name"),
                format!("rule name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        } else if names.contains(name) {
            c.at(
                sp(&r.name),
                format!("{path}.name"),
                format!("rule name `{name}` is used twice"),
            );
        }
        names.push(name.clone());
        let program = match compile(&env, r.when.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                c.at(sp(&r.when), format!("{path}.when"), e);
                None
            }
        };
        let action = match r.action.get_ref().as_str() {
            "allow" => Some(RuleAction::Allow),
            "tag" => Some(RuleAction::Tag),
            "delay" => Some(RuleAction::Delay),
            "challenge" => Some(RuleAction::Challenge),
            "block" => Some(RuleAction::Block),
            "score" => Some(RuleAction::Score(weight(
                &r.weight,
                20,
                &format!("{path}.weight"),
                c,
            ))),
            other => {
                c.at(
                    sp(&r.action),
                    format!("{path}.action"),
                    format!("`{other}` is not one of: allow, tag, delay, challenge, block, score"),
                );
                None
            }
        };
        if r.weight.is_some() && !matches!(action, Some(RuleAction::Score(_)) | None) {
            c.at(
                r.weight.as_ref().and_then(sp),
                format!("{path}.weight"),
                "`weight` is for action = \"score\"",
            );
        }
        if let (Some(program), Some(action)) = (program, action) {
            rules.push(RuleSpec {
                name: Arc::from(name.as_str()),
                source: r.when.get_ref().clone(),
                program: Arc::new(program),
                action,
                shadow: r.shadow.unwrap_or(false),
            });
        }
    }
    Some(RulesPolicy { env, rules })
}
