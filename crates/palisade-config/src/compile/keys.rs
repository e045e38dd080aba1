//! `[keys]`.

use http::HeaderName;
use toml::Spanned;

use super::*;
use crate::error::Collector;
use crate::raw::*;
use crate::units::{parse_duration, parse_rate};

pub(super) fn compile_keys(k: &RawKeys, c: &mut Collector<'_>) -> KeySettings {
    let d = KeySettings::default();
    let headers = match &k.headers {
        None => d.headers,
        Some(list) => {
            let mut out = Vec::new();
            for h in list {
                match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                    Ok(n) => out.push(n),
                    Err(_) => c.at(
                        sp(h),
                        "keys.headers",
                        format!("`{}` is not a header name", h.get_ref()),
                    ),
                }
            }
            if list.is_empty() {
                c.at(
                    None,
                    "keys.headers",
                    "name at least one header to read keys from",
                );
            }
            out
        }
    };
    let max_keys_per_account = match &k.max_keys_per_account {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 100_000 => {
            c.at(
                sp(v),
                "keys.max_keys_per_account",
                "must be between 1 and 100000",
            );
            d.max_keys_per_account
        }
        Some(v) => *v.get_ref(),
        None => d.max_keys_per_account,
    };
    let secs = |v: &Option<Spanned<String>>, dflt: u64, name: &str, c: &mut Collector<'_>| {
        opt(v, dflt, &format!("keys.{name}"), c, |s| {
            parse_duration(s).map(|n| n / palisade_engine::clock::SECOND)
        })
    };
    let rotation_grace_secs = secs(
        &k.rotation_grace,
        d.rotation_grace_secs,
        "rotation_grace",
        c,
    );
    let signature_window_secs = secs(
        &k.signature_window,
        d.signature_window_secs,
        "signature_window",
        c,
    );
    if signature_window_secs == 0 {
        c.at(
            k.signature_window.as_ref().and_then(sp),
            "keys.signature_window",
            "must be at least 1s",
        );
    }
    let max_nonces = match &k.max_nonces {
        Some(v) if *v.get_ref() < 100 || *v.get_ref() > 10_000_000 => {
            c.at(sp(v), "keys.max_nonces", "must be between 100 and 10000000");
            d.max_nonces
        }
        Some(v) => *v.get_ref() as usize,
        None => d.max_nonces,
    };
    let forward = choice(
        &k.forward,
        &[("strip", KeyForward::Strip), ("keep", KeyForward::Keep)],
        KeyForward::Strip,
        "keys.forward",
        c,
    );
    KeySettings {
        headers,
        max_keys_per_account,
        rotation_grace_secs,
        signature_window_secs,
        max_nonces,
        forward,
    }
}

/// How failed authentication attempts are counted (`[keys] max_failures`).
pub(super) fn auth_policy(raw: &RawConfig, max_tracked: u64, c: &mut Collector<'_>) -> AuthPolicy {
    AuthPolicy {
        failures: opt(
            &raw.keys.max_failures,
            AuthPolicy::default().failures,
            "keys.max_failures",
            c,
            |s| {
                let r = parse_rate(s)?;
                Ok(Algorithm::Gcra {
                    interval: r.period / r.count,
                    burst: r.count,
                })
            },
        ),
        max_entries: max_tracked.min(usize::MAX as u64) as usize,
    }
}
