//! `[[quotas]]`.

use std::sync::Arc;

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// `[[quotas]]`: daily budgets per key or account.
pub(super) fn quotas(
    raw: &RawConfig,
    route_specs: &[RouteSpec],
    c: &mut Collector<'_>,
) -> Vec<QuotaSpec> {
    let mut quotas = Vec::new();
    for (i, q) in raw.quotas.iter().enumerate() {
        let path = format!("quotas[{}]", q.index);
        let name = q.name.get_ref();
        if !valid_name(name) || name == palisade_engine::engine::KEY_BUDGET_QUOTA {
            c.at(
                sp(&q.name),
                &path,
                format!("quota name `{name}` must be 1-64 letters, digits, '-', '_' or '.', and not `{}`", palisade_engine::engine::KEY_BUDGET_QUOTA),
            );
        }
        if raw.quotas.iter().take(i).any(|o| o.name.get_ref() == name) {
            c.at(
                sp(&q.name),
                &path,
                format!("quota `{name}` is defined twice"),
            );
        }
        let key = match q.key.as_slice() {
            [k] if k.get_ref() == "api_key" => QuotaKey::ApiKey,
            [k] if k.get_ref() == "account" => QuotaKey::Account,
            _ => {
                c.at(
                    q.key.first().and_then(sp).or_else(|| sp(&q.name)),
                    format!("{path}.key"),
                    "a quota is counted per key = [\"api_key\"] or per key = [\"account\"]",
                );
                QuotaKey::ApiKey
            }
        };
        let routes = q
            .routes
            .as_ref()
            .map(|rs| route_ids(rs, route_specs, &format!("{path}.routes"), c));
        let requests_per_day = match &q.requests_per_day {
            Some(v) if *v.get_ref() == 0 => {
                c.at(
                    sp(v),
                    format!("{path}.requests_per_day"),
                    "must be at least 1",
                );
                None
            }
            Some(v) => Some(*v.get_ref()),
            None => None,
        };
        let spend_per_day_micros = q.spend_per_day_usd.as_ref().and_then(|v| {
            match usd_micros(*v.get_ref()).filter(|m| *m > 0) {
                Some(m) => Some(m),
                None => {
                    c.at(
                        sp(v),
                        format!("{path}.spend_per_day_usd"),
                        "must be a dollar amount above 0 and at most 1000000",
                    );
                    None
                }
            }
        });
        if q.requests_per_day.is_none() && q.spend_per_day_usd.is_none() {
            c.at(
                sp(&q.name),
                &path,
                "a quota needs requests_per_day, spend_per_day_usd or both",
            );
        }
        quotas.push(QuotaSpec {
            name: Arc::from(name.as_str()),
            key,
            routes,
            requests_per_day,
            spend_per_day_micros,
        });
    }
    quotas
}
