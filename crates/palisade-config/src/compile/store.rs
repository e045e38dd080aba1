//! `[store]`.

use super::*;
use crate::error::Collector;
use crate::raw::*;
use crate::secret::SecretUrl;
use crate::units::parse_duration;

/// `[store]`.
pub(super) fn compile_store(raw: &RawStore, c: &mut Collector<'_>) -> StoreSettings {
    let backend_name = choice(
        &raw.backend,
        &[("embedded", false), ("redis", true)],
        false,
        "store.backend",
        c,
    );
    let resolve = |v: &SecretUrl, c: &mut Collector<'_>| -> Option<String> {
        let text = v.expose();
        let url = match text.strip_prefix("env:") {
            Some(var) => match std::env::var(var) {
                Ok(u) => u,
                Err(_) => {
                    c.at(
                        sp(v.spanned()),
                        "store.url",
                        format!("environment variable `{var}` is not set"),
                    );
                    return None;
                }
            },
            None => text.to_owned(),
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            c.at(
                sp(v.spanned()),
                "store",
                format!(
                    "`{}` is not a redis:// or rediss:// URL",
                    crate::secret::redact_url(&url)
                ),
            );
            return None;
        }
        Some(url)
    };
    let backend = if backend_name {
        match (&raw.url, &raw.nodes) {
            (Some(_), Some(n)) => {
                c.at(
                    n.first().and_then(|n| sp(n.spanned())),
                    "store.nodes",
                    "give either `url` (one server) or `nodes` (a cluster), not both",
                );
                StoreBackend::Embedded
            }
            (Some(u), None) => match resolve(u, c) {
                Some(url) => StoreBackend::Redis {
                    urls: vec![url],
                    cluster: false,
                },
                None => StoreBackend::Embedded,
            },
            (None, Some(nodes)) if !nodes.is_empty() => StoreBackend::Redis {
                urls: nodes.iter().filter_map(|n| resolve(n, c)).collect(),
                cluster: true,
            },
            _ => {
                c.at(
                    raw.backend.as_ref().and_then(sp),
                    "store",
                    "backend = \"redis\" needs `url` (one server) or `nodes` (a cluster)",
                );
                StoreBackend::Embedded
            }
        }
    } else {
        if raw.url.is_some() || raw.nodes.is_some() {
            c.at(
                raw.url.as_ref().and_then(|u| sp(u.spanned())),
                "store",
                "`url` and `nodes` are for backend = \"redis\"",
            );
        }
        StoreBackend::Embedded
    };
    let timeout = opt(&raw.timeout, 5_000_000, "store.timeout", c, parse_duration);
    if raw.timeout.is_some() && !(100_000..=10 * palisade_engine::clock::SECOND).contains(&timeout)
    {
        c.at(
            raw.timeout.as_ref().and_then(sp),
            "store.timeout",
            "must be between 100us and 10s (requests wait this long at most)",
        );
    }
    let batch = opt(
        &raw.batch_interval,
        100_000_000,
        "store.batch_interval",
        c,
        parse_duration,
    );
    if raw.batch_interval.is_some()
        && !(1_000_000..=60 * palisade_engine::clock::SECOND).contains(&batch)
    {
        c.at(
            raw.batch_interval.as_ref().and_then(sp),
            "store.batch_interval",
            "must be between 1ms and 60s",
        );
    }
    StoreSettings {
        backend,
        timeout: std::time::Duration::from_nanos(timeout),
        on_error: choice(
            &raw.on_store_error,
            &[
                ("local", OnStoreError::Local),
                ("allow", OnStoreError::Allow),
                ("deny", OnStoreError::Deny),
            ],
            OnStoreError::Local,
            "store.on_store_error",
            c,
        ),
        sync: choice(
            &raw.sync,
            &[
                ("strict", StoreSync::Strict),
                ("batched", StoreSync::Batched),
            ],
            StoreSync::Strict,
            "store.sync",
            c,
        ),
        batch_interval: std::time::Duration::from_nanos(batch),
        prefix: raw
            .prefix
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "palisade".to_owned()),
    }
}
