//! `[[limits]]`.

use std::sync::Arc;

use super::*;
use crate::error::Collector;
use crate::raw::*;
use crate::units::{parse_duration, parse_rate};

/// `[[limits]]`: every matching limit applies.
pub(super) fn limits(
    raw: &RawConfig,
    route_specs: &[RouteSpec],
    max_tracked: u64,
    c: &mut Collector<'_>,
) -> Vec<LimitSpec> {
    let mut limits = Vec::new();
    for (i, l) in raw.limits.iter().enumerate() {
        let path = format!("limits[{}]", l.index);
        let name = l.name.get_ref();
        if !valid_name(name) {
            c.at(
                sp(&l.name),
                &path,
                format!("limit name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        if raw.limits.iter().take(i).any(|o| o.name.get_ref() == name) {
            c.at(
                sp(&l.name),
                &path,
                format!("limit `{name}` is defined twice"),
            );
        }
        let mut key = Vec::new();
        for k in &l.key {
            match KeyPart::parse(k.get_ref()) {
                Ok(part) if key.contains(&part) => c.at(
                    sp(k),
                    format!("{path}.key"),
                    format!("`{}` appears twice in the key", k.get_ref()),
                ),
                Ok(part) => key.push(part),
                Err(e) => c.at(sp(k), format!("{path}.key"), e.to_string()),
            }
        }
        let routes = l
            .routes
            .as_ref()
            .map(|rs| route_ids(rs, route_specs, &format!("{path}.routes"), c));
        let meths = methods(&l.methods, &format!("{path}.methods"), c);
        let rate = match parse_rate(l.rate.get_ref()) {
            Ok(r) => Some(r),
            Err(msg) => {
                c.at(sp(&l.rate), format!("{path}.rate"), msg);
                None
            }
        };
        let is_window = choice(
            &l.algorithm,
            &[("gcra", false), ("sliding_window", true)],
            false,
            &format!("{path}.algorithm"),
            c,
        );
        let action_name = l
            .action
            .as_ref()
            .map(|a| a.get_ref().as_str())
            .unwrap_or("limit");
        let max_delay = opt(
            &l.max_delay,
            1_000_000_000,
            &format!("{path}.max_delay"),
            c,
            parse_duration,
        );
        let max_queue = l
            .max_queue
            .as_ref()
            .map_or(1000, |q| *q.get_ref())
            .min(u64::from(u32::MAX)) as u32;
        let action = match action_name {
            "limit" => LimitAction::Limit,
            "shadow" => LimitAction::Shadow,
            "challenge" => LimitAction::Challenge,
            "delay" => {
                if is_window {
                    c.at(l.action.as_ref().and_then(sp), format!("{path}.action"), "action = \"delay\" needs algorithm = \"gcra\" (a sliding window cannot reserve future capacity)");
                }
                LimitAction::Delay {
                    max_delay,
                    max_queue,
                }
            }
            other => {
                c.at(
                    l.action.as_ref().and_then(sp),
                    format!("{path}.action"),
                    format!("`{other}` is not one of: limit, delay, challenge, shadow"),
                );
                LimitAction::Limit
            }
        };
        if action_name != "delay" {
            for (present, field) in [
                (l.max_delay.is_some(), "max_delay"),
                (l.max_queue.is_some(), "max_queue"),
            ] {
                if present {
                    c.at(
                        sp(&l.name),
                        format!("{path}.{field}"),
                        format!("`{field}` only applies with action = \"delay\""),
                    );
                }
            }
        }
        let unit = choice(
            &l.unit,
            &[("requests", Unit::Requests), ("cost", Unit::Cost)],
            Unit::Requests,
            &format!("{path}.unit"),
            c,
        );
        let weight = weight(&l.weight, 50, &format!("{path}.weight"), c);
        let max_entries = match &l.max_entries {
            Some(m) if *m.get_ref() < 16 => {
                c.at(sp(m), format!("{path}.max_entries"), "must be at least 16");
                max_tracked
            }
            Some(m) => *m.get_ref(),
            None => max_tracked,
        };
        let Some(rate) = rate else { continue };
        let algorithm = if is_window {
            if let Some(b) = &l.burst {
                c.at(
                    sp(b),
                    format!("{path}.burst"),
                    "burst applies to algorithm = \"gcra\" only",
                );
            }
            Algorithm::SlidingWindow {
                window: rate.period,
                limit: rate.count,
            }
        } else {
            let burst = match &l.burst {
                Some(b) if *b.get_ref() == 0 => {
                    c.at(sp(b), format!("{path}.burst"), "burst must be at least 1");
                    1
                }
                Some(b) => *b.get_ref(),
                None => rate.count,
            };
            Algorithm::Gcra {
                interval: rate.period / rate.count,
                burst,
            }
        };
        // Advertise the policy in whole seconds: 10/500ms becomes q=20;w=1.
        let window_secs = ceil_secs(rate.period).max(1);
        let quota = ((rate.count as u128 * window_secs as u128 * 1_000_000_000)
            / rate.period.max(1) as u128)
            .min(u64::MAX as u128) as u64;
        limits.push(LimitSpec {
            name: Arc::from(name.as_str()),
            key,
            routes,
            methods: meths,
            algorithm,
            action,
            unit,
            quota,
            window_secs,
            // A limit without a key is one counter for every client: its quota and what is
            // left of it are the API's capacity and load, which the RateLimit draft asks servers
            // not to disclose (section 7.2 of draft-ietf-httpapi-ratelimit-headers-10). It is
            // advertised only when asked for.
            headers: l.headers.unwrap_or(!l.key.is_empty()),
            weight,
            max_entries: max_entries.min(usize::MAX as u64) as usize,
        });
    }
    limits
}
