//! `[[routes]]`.

use std::sync::Arc;

use http::HeaderName;
use toml::Spanned;

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// `[[routes]]`: the route table and each route's settings (the default route last).
pub(super) fn routes(
    raw: &RawConfig,
    upstreams: &[UpstreamSettings],
    case_sensitive: bool,
    c: &mut Collector<'_>,
) -> (Vec<RouteMatch>, Vec<RouteSpec>) {
    let mut matches = Vec::new();
    let mut route_specs = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let path = format!("routes[{}]", r.index);
        let name = r.name.get_ref();
        if !valid_name(name) || name == "default" {
            c.at(sp(&r.name), &path, format!("route name `{name}` must be 1-64 letters, digits, '-', '_' or '.', and not `default`"));
        }
        if raw.routes.iter().take(i).any(|o| o.name.get_ref() == name) {
            c.at(
                sp(&r.name),
                &path,
                format!("route `{name}` is defined twice"),
            );
        }
        let pattern = match PathPattern::parse(r.match_.path.get_ref()) {
            Ok(p) => fold_case(p, case_sensitive),
            Err(e) => {
                c.at(
                    sp(&r.match_.path),
                    format!("{path}.match.path"),
                    e.to_string(),
                );
                PathPattern::catch_all()
            }
        };
        let meths = methods(&r.match_.methods, &format!("{path}.match.methods"), c);
        let upstream = match &r.upstream {
            Some(u) => match upstreams.iter().position(|x| &x.name == u.get_ref()) {
                Some(idx) => idx,
                None if raw.broken_names.contains(u.get_ref()) => 0,
                None => {
                    let known: Vec<&str> = upstreams.iter().map(|x| x.name.as_str()).collect();
                    c.at(
                        sp(u),
                        format!("{path}.upstream"),
                        format!(
                            "no upstream named `{}` (known: {})",
                            u.get_ref(),
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    0
                }
            },
            None => 0,
        };
        let auth = choice(
            &r.auth,
            &[
                ("none", AuthRequirement::None),
                ("api_key", AuthRequirement::ApiKey),
                ("jwt", AuthRequirement::Jwt),
                ("any", AuthRequirement::Any),
            ],
            AuthRequirement::None,
            &format!("{path}.auth"),
            c,
        );
        if matches!(auth, AuthRequirement::Jwt) && raw.jwt.is_none() {
            c.at(
                r.auth.as_ref().and_then(sp),
                format!("{path}.auth"),
                "auth = \"jwt\" needs a [jwt] section with keys to verify tokens",
            );
        }
        let mut scopes: Vec<Arc<str>> = Vec::new();
        for sc in &r.scopes {
            if !valid_scope(sc.get_ref()) {
                c.at(
                    sp(sc),
                    format!("{path}.scopes"),
                    format!(
                        "scope `{}` must be 1-64 letters, digits, ':', '-', '_', '.' or '*'",
                        sc.get_ref()
                    ),
                );
            } else {
                scopes.push(Arc::from(sc.get_ref().as_str()));
            }
        }
        if !scopes.is_empty() && auth == AuthRequirement::None {
            c.at(
                r.scopes.first().and_then(sp),
                format!("{path}.scopes"),
                "scopes need an authenticated route: set auth = \"api_key\", \"jwt\" or \"any\"",
            );
        }
        let usd = |v: &Option<Spanned<f64>>, field: &str, c: &mut Collector<'_>| -> Option<u64> {
            let v = v.as_ref()?;
            match usd_micros(*v.get_ref()) {
                Some(m) => Some(m),
                None => {
                    c.at(
                        sp(v),
                        format!("{path}.{field}"),
                        "must be a dollar amount between 0 and 1000000",
                    );
                    None
                }
            }
        };
        let spend_micros = usd(&r.spend_usd, "spend_usd", c).unwrap_or(0);
        let spend_reserve_micros =
            usd(&r.spend_reserve_usd, "spend_reserve_usd", c).unwrap_or(spend_micros);
        let spend_header = r.spend_header.as_ref().and_then(|h| {
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    c.at(
                        sp(h),
                        format!("{path}.spend_header"),
                        format!("`{}` is not a header name", h.get_ref()),
                    );
                    None
                }
            }
        });
        let challenge = r.challenge.as_ref().and_then(|k| {
            crate::compile::challenge::kind(k.get_ref()).or_else(|| {
                c.at(
                    sp(k),
                    format!("{path}.challenge"),
                    format!("`{}` is not one of: pow, altcha, captcha", k.get_ref()),
                );
                None
            })
        });
        let captcha_min_score = r.captcha_min_score.as_ref().and_then(|v| {
            let s = *v.get_ref();
            if (0.0..=1.0).contains(&s) {
                Some(s)
            } else {
                c.at(
                    sp(v),
                    format!("{path}.captcha_min_score"),
                    "must be between 0.0 and 1.0",
                );
                None
            }
        });
        let cost = match &r.cost {
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1_000_000 => {
                c.at(
                    sp(v),
                    format!("{path}.cost"),
                    "cost must be between 1 and 1000000",
                );
                1
            }
            Some(v) => *v.get_ref(),
            None => 1,
        };
        let cost_header = r.cost_header.as_ref().and_then(|h| {
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    c.at(
                        sp(h),
                        format!("{path}.cost_header"),
                        format!("`{}` is not a header name", h.get_ref()),
                    );
                    None
                }
            }
        });
        let mut allow_in_path = Ambiguities::NONE;
        for a in &r.allow_in_path {
            match Ambiguities::from_name(a.get_ref()) {
                Some(x) => allow_in_path = allow_in_path.union(x),
                None => c.at(
                    sp(a),
                    format!("{path}.allow_in_path"),
                    format!(
                        "`{}` is not one of {}",
                        a.get_ref(),
                        Ambiguities::NAMES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        matches.push(RouteMatch {
            path: pattern,
            methods: meths,
        });
        route_specs.push(RouteSpec {
            name: Arc::from(name.as_str()),
            upstream,
            cost,
            cost_header,
            auth,
            scopes,
            spend_micros,
            spend_reserve_micros,
            spend_header,
            allow_in_path,
            client: match r.client.as_ref().map(|v| v.get_ref().as_str()) {
                None | Some("auto") => palisade_engine::policy::ClientKind::Auto,
                Some("api") => palisade_engine::policy::ClientKind::Api,
                Some("browser") => palisade_engine::policy::ClientKind::Browser,
                Some(other) => {
                    c.at(
                        r.client.as_ref().and_then(sp),
                        format!("{path}.client"),
                        format!("`{other}` is not one of: auto, api, browser"),
                    );
                    palisade_engine::policy::ClientKind::Auto
                }
            },
            challenge,
            captcha_min_score,
        });
    }
    route_specs.push(RouteSpec::new("default", 0));
    (matches, route_specs)
}
