//! `[log]`.

use std::path::Path;

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// `[log]`: the decision log.
pub(super) fn log(raw: &RawConfig, base: &Path, c: &mut Collector<'_>) -> LogSettings {
    let decisions = match raw.log.decisions.as_deref() {
        None | Some("stdout") => DecisionLogTarget::Stdout,
        Some("off") => DecisionLogTarget::Off,
        Some(p) => DecisionLogTarget::File(base.join(p)),
    };
    let sample_allow = match &raw.log.sample_allow {
        Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
            c.at(sp(v), "log.sample_allow", "must be between 0.0 and 1.0");
            1.0
        }
        Some(v) => *v.get_ref(),
        None => 1.0,
    };
    let recent = raw
        .log
        .recent
        .as_ref()
        .map_or(1000, |r| *r.get_ref())
        .min(100_000) as usize;
    LogSettings {
        decisions,
        sample_allow,
        recent,
    }
}
