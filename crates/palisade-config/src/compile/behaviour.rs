//! `[behaviour]`.

use std::sync::Arc;

use toml::Spanned;

use super::*;
use crate::error::Collector;
use crate::raw::*;
use crate::units::{parse_duration, parse_size};

/// `[behaviour]`.
pub(super) fn compile_behaviour(
    raw: &RawBehaviour,
    specs: &[RouteSpec],
    c: &mut Collector<'_>,
) -> palisade_engine::behaviour::BehaviourPolicy {
    use palisade_engine::behaviour::{
        AttackScope, AttackSpec, BehaviourPolicy, CacheKeySpec, Dim, FlowSpec, SessionSource, Sig,
        StuffingSpec,
    };
    let mut p = BehaviourPolicy::default();
    let route = |name: &Spanned<String>, path: &str, c: &mut Collector<'_>| {
        route_ids(std::slice::from_ref(name), specs, path, c)
            .first()
            .copied()
    };
    let dur = |v: &Option<Spanned<String>>, d: u64, path: &str, c: &mut Collector<'_>| {
        let n = opt(v, d, path, c, parse_duration);
        if n == 0 && v.is_some() {
            c.at(v.as_ref().and_then(sp), path, "must be longer than 0s");
            return d;
        }
        n
    };
    if let Some(track) = &raw.track {
        p.track = Vec::new();
        for t in track {
            match Dim::parse(t.get_ref()) {
                Some(d) if !p.track.contains(&d) => p.track.push(d),
                Some(_) => {}
                None => c.at(
                    sp(t),
                    "behaviour.track",
                    format!(
                        "unknown dimension `{}`; known: ip, ip/24, api_key, account, session, hfp, ja4h, asn",
                        t.get_ref()
                    ),
                ),
            }
        }
    }
    if let Some(m) = &raw.max_entries {
        match *m.get_ref() {
            n @ 16..=10_000_000 => p.max_entries = n as usize,
            _ => c.at(
                sp(m),
                "behaviour.max_entries",
                "must be between 16 and 10000000",
            ),
        }
    }
    p.window = dur(&raw.window, p.window, "behaviour.window", c);
    p.short_window = dur(
        &raw.short_window,
        p.short_window,
        "behaviour.short_window",
        c,
    );
    p.half_life = dur(&raw.half_life, p.half_life, "behaviour.half_life", c);
    if let Some(sources) = &raw.session {
        p.session = Vec::new();
        for s in sources {
            let v = s.get_ref();
            let parsed = if v == "api_key" {
                Some(SessionSource::ApiKey)
            } else if let Some(n) = v.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
                Some(SessionSource::Cookie(n.to_owned()))
            } else if let Some(n) = v.strip_prefix("jwt:").filter(|n| !n.is_empty()) {
                Some(SessionSource::Jwt(n.to_owned()))
            } else if let Some(n) = v.strip_prefix("header:") {
                http::HeaderName::from_bytes(n.as_bytes())
                    .ok()
                    .map(SessionSource::Header)
            } else {
                None
            };
            match parsed {
                Some(x) => p.session.push(x),
                None => c.at(
                    sp(s),
                    "behaviour.session",
                    format!(
                        "`{v}` is not a session source; use cookie:<name>, header:<name>, jwt:<claim> or api_key"
                    ),
                ),
            }
        }
    }
    if let Some(ids) = &raw.id_params {
        p.id_params = ids.clone();
    }
    for (name, v) in &raw.thresholds {
        let x = *v.get_ref();
        let t = &mut p.thresholds;
        let path = format!("behaviour.thresholds.{name}");
        let ratio = |slot: &mut f32, c: &mut Collector<'_>| {
            if (0.0..=1.0).contains(&x) {
                *slot = x as f32;
            } else {
                c.at(sp(v), &path, "must be between 0.0 and 1.0");
            }
        };
        let count = |slot: &mut u32, c: &mut Collector<'_>| {
            if (1.0..=1e6).contains(&x) && x.fract() == 0.0 {
                *slot = x as u32;
            } else {
                c.at(sp(v), &path, "must be a whole number from 1 to 1000000");
            }
        };
        match name.as_str() {
            "min_requests" => count(&mut t.min_requests, c),
            "regular_min_gaps" => count(&mut t.regular_min_gaps, c),
            "regular_cv" => ratio(&mut t.regular_cv, c),
            "one_route_share" => ratio(&mut t.one_route_share, c),
            "error_share" => ratio(&mut t.error_share, c),
            "ignored_429s" => count(&mut t.ignored_429s, c),
            "user_agents" => count(&mut t.user_agents, c),
            "ips" => count(&mut t.ips, c),
            "countries" => count(&mut t.countries, c),
            "asns" => count(&mut t.asns, c),
            "keys_per_source" => count(&mut t.keys_per_source, c),
            "enumeration_run" => count(&mut t.enumeration_run, c),
            "enumeration_distinct" => count(&mut t.enumeration_distinct, c),
            "cache_busting_distinct" => count(&mut t.cache_busting_distinct, c),
            "group_keys" => count(&mut t.group_keys, c),
            "shared_source_networks" => count(&mut t.shared_source_networks, c),
            other => c.at(
                sp(v),
                "behaviour.thresholds",
                format!(
                    "unknown threshold `{other}`; known: min_requests, regular_min_gaps, regular_cv, one_route_share, error_share, ignored_429s, user_agents, ips, countries, asns, keys_per_source, enumeration_run, enumeration_distinct, cache_busting_distinct, group_keys, shared_source_networks"
                ),
            ),
        }
    }
    for (name, v) in &raw.weights {
        match Sig::ALL.iter().find(|s| s.short_name() == name) {
            Some(s) => {
                let w = weight(
                    &Some(v.clone()),
                    s.default_weight(),
                    &format!("behaviour.weights.{name}"),
                    c,
                );
                if let Some(slot) = p.weights.get_mut(*s as usize) {
                    *slot = w;
                }
            }
            None => {
                let known: Vec<&str> = Sig::ALL.iter().map(|s| s.short_name()).collect();
                c.at(
                    sp(v),
                    "behaviour.weights",
                    format!("unknown signal `{name}`; known: {}", known.join(", ")),
                );
            }
        }
    }
    if let Some(s) = &raw.stuffing {
        let failure_status: Vec<u16> = match &s.failure_status {
            Some(list) => list
                .iter()
                .filter_map(|x| match *x.get_ref() {
                    n @ 400..=599 => Some(n as u16),
                    _ => {
                        c.at(
                            sp(x),
                            "behaviour.stuffing.failure_status",
                            "a failure status must be from 400 to 599",
                        );
                        None
                    }
                })
                .collect(),
            None => vec![401, 403],
        };
        let share = match &s.failure_share {
            Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
                c.at(
                    sp(v),
                    "behaviour.stuffing.failure_share",
                    "must be between 0.0 and 1.0",
                );
                0.8
            }
            Some(v) => *v.get_ref() as f32,
            None => 0.8,
        };
        let max_body = opt(
            &s.max_body,
            16 * 1024,
            "behaviour.stuffing.max_body",
            c,
            parse_size,
        );
        if let Some(r) = route(&s.route, "behaviour.stuffing.route", c) {
            p.stuffing = Some(StuffingSpec {
                route: r,
                failure_status,
                username_field: s
                    .username_field
                    .clone()
                    .unwrap_or_else(|| "username".to_owned()),
                min_failures: s.min_failures.unwrap_or(10).max(1),
                min_usernames: s.min_usernames.unwrap_or(5).max(1),
                failure_share: share,
                sources_per_username: s.sources_per_username.unwrap_or(5).max(1),
                max_usernames: s.max_usernames.unwrap_or(100_000).clamp(16, 10_000_000) as usize,
                max_body: usize::try_from(max_body).unwrap_or(usize::MAX).min(1 << 20),
            });
        }
    }
    for (i, k) in raw.cache_keys.iter().enumerate() {
        if let Some(r) = route(&k.route, &format!("behaviour.cache_keys[{i}].route"), c) {
            p.cache_keys.push(CacheKeySpec {
                route: r,
                params: k.params.clone(),
            });
        }
    }
    let mut afters = Vec::new();
    for (i, f) in raw.flows.iter().enumerate() {
        let path = format!("behaviour.flows[{i}]");
        let name = f.name.get_ref();
        if !valid_name(name) {
            c.at(
                sp(&f.name),
                format!("{path}.name"),
                format!("flow name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        let r = route(&f.route, &format!("{path}.route"), c);
        let a = route(&f.after, &format!("{path}.after"), c);
        let within = dur(
            &f.within,
            3600 * palisade_engine::clock::SECOND,
            &format!("{path}.within"),
            c,
        );
        let min_gap = opt(&f.min_gap, 0, &format!("{path}.min_gap"), c, parse_duration);
        if min_gap >= within {
            c.at(sp(&f.name), &path, "min_gap must be shorter than within");
        }
        if let (Some(route), Some(after)) = (r, a) {
            if route == after {
                c.at(
                    sp(&f.after),
                    format!("{path}.after"),
                    "a flow's two routes must differ",
                );
            }
            if !afters.contains(&after) {
                afters.push(after);
            }
            if afters.len() > 4 {
                c.at(
                    sp(&f.after),
                    format!("{path}.after"),
                    "flows may name at most 4 distinct `after` routes",
                );
            }
            p.flows.push(FlowSpec {
                name: Arc::from(name.as_str()),
                route,
                after,
                within,
                min_gap,
                anonymous_only: f.anonymous_only.unwrap_or(false),
                weight: weight(&f.weight, 20, &format!("{path}.weight"), c),
            });
        }
    }
    if let Some(a) = &raw.attack {
        if a.enabled == Some(false) {
            p.attack = None;
        } else {
            let d = AttackSpec::default();
            let factor = match &a.rate_factor {
                Some(v) if *v.get_ref() < 1.0 || *v.get_ref() > 1000.0 => {
                    c.at(
                        sp(v),
                        "behaviour.attack.rate_factor",
                        "must be between 1.0 and 1000.0",
                    );
                    d.rate_factor
                }
                Some(v) => *v.get_ref() as f32,
                None => d.rate_factor,
            };
            let inc = match &a.error_increase {
                Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
                    c.at(
                        sp(v),
                        "behaviour.attack.error_increase",
                        "must be between 0.0 and 1.0",
                    );
                    d.error_increase
                }
                Some(v) => *v.get_ref() as f32,
                None => d.error_increase,
            };
            p.attack = Some(AttackSpec {
                bucket: dur(&a.bucket, d.bucket, "behaviour.attack.bucket", c),
                warmup: a.warmup.unwrap_or(d.warmup),
                rate_factor: factor,
                min_requests: a.min_requests.unwrap_or(d.min_requests).max(1),
                error_increase: inc,
                enter_after: a.enter_after.unwrap_or(d.enter_after).max(1),
                leave_after: a.leave_after.unwrap_or(d.leave_after).max(1),
                scope: choice(
                    &a.scope,
                    &[
                        ("route", AttackScope::Route),
                        ("gateway", AttackScope::Gateway),
                    ],
                    AttackScope::Route,
                    "behaviour.attack.scope",
                    c,
                ),
            });
        }
    }
    p
}
