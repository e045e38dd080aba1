//! Why a client was treated as it was: its identities, the state of every limit, quota use,
//! blocks and behaviour, for the admin API's explain view and the decision log.

use std::net::IpAddr;

use crate::clock::Nanos;
use crate::model::facts::RequestFacts;
use crate::model::identity::{KeyPart, KeyValue, key_hash_of_values, mask};
use crate::model::principal::Principal;
use crate::state::limiter::ceil_secs;
use crate::state::quota_ledger::{QuotaKey, day_of};

use crate::engine::*;

impl Engine {
    /// Today's usage of every daily budget that applies to a principal, whatever the route.
    pub fn usage_for(&self, principal: &Principal, unix_ms: u64) -> Vec<QuotaUsage> {
        let day = day_of(unix_ms);
        let mut out = Vec::new();
        for q in &self.policy.quotas {
            let identity = match q.key {
                QuotaKey::ApiKey => principal.key_id.as_deref(),
                QuotaKey::Account => principal.account.as_deref(),
            };
            let Some(identity) = identity else { continue };
            let u = self.ledger.usage(&q.name, identity, day);
            out.push(QuotaUsage {
                quota: q.name.to_string(),
                per: q.key.name(),
                requests: u.requests,
                requests_per_day: q.requests_per_day,
                spend_micros: u.spend_micros,
                spend_per_day_micros: q.spend_per_day_micros,
            });
        }
        if let Some(id) = &principal.key_id
            && (principal.budget.requests_per_day.is_some()
                || principal.budget.spend_per_day_micros.is_some())
        {
            let u = self.ledger.usage(KEY_BUDGET_QUOTA, id, day);
            out.push(QuotaUsage {
                quota: KEY_BUDGET_QUOTA.to_owned(),
                per: QuotaKey::ApiKey.name(),
                requests: u.requests,
                requests_per_day: principal.budget.requests_per_day,
                spend_micros: u.spend_micros,
                spend_per_day_micros: principal.budget.spend_per_day_micros,
            });
        }
        out
    }

    /// Today's usage of every daily quota counted per `dimension` (api_key or account).
    pub fn quota_report(&self, dimension: &KeyPart, value: &str, unix_ms: u64) -> Vec<QuotaReport> {
        let key = match dimension {
            KeyPart::ApiKey => QuotaKey::ApiKey,
            KeyPart::Account => QuotaKey::Account,
            _ => return Vec::new(),
        };
        let day = day_of(unix_ms);
        let usd = |m: u64| m as f64 / crate::state::quota_ledger::MICROS_PER_USD;
        let mut out: Vec<QuotaReport> = self
            .policy
            .quotas
            .iter()
            .filter(|q| q.key == key)
            .map(|q| {
                let u = self.ledger.usage(&q.name, value, day);
                QuotaReport {
                    quota: q.name.to_string(),
                    requests: u.requests,
                    requests_per_day: q.requests_per_day,
                    spend_usd: usd(u.spend_micros),
                    spend_per_day_usd: q.spend_per_day_micros.map(usd),
                }
            })
            .collect();
        if key == QuotaKey::ApiKey {
            let u = self.ledger.usage(KEY_BUDGET_QUOTA, value, day);
            if u.requests > 0 || u.spend_micros > 0 {
                out.push(QuotaReport {
                    quota: KEY_BUDGET_QUOTA.to_owned(),
                    requests: u.requests,
                    requests_per_day: None,
                    spend_usd: usd(u.spend_micros),
                    spend_per_day_usd: None,
                });
            }
        }
        out
    }

    /// The identity dimensions the policy keys on, with this request's values (for the log).
    pub fn identity_of(&self, facts: &RequestFacts<'_>, route: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.identity_each(facts, route, |name, v| {
            out.push((name.to_owned(), v.to_string()))
        });
        out
    }

    /// [`Self::identity_of`] without building strings: `f` gets each dimension's name and value,
    /// in the same order (for writing the decision log straight into its line).
    pub fn identity_each(
        &self,
        facts: &RequestFacts<'_>,
        route: usize,
        mut f: impl FnMut(&str, IdentityValue<'_>),
    ) {
        f("ip", IdentityValue::Ip(facts.client_ip));
        if let Some(p) = facts.auth.principal() {
            if let Some(id) = &p.key_id {
                f("api_key", IdentityValue::Str(id));
            }
            if let Some(a) = &p.account {
                f("account", IdentityValue::Str(a));
            }
            for (claim, v) in &p.claims {
                f(&format!("jwt:{claim}"), IdentityValue::Str(v));
            }
        }
        if let Some(h) = facts.hfp {
            f("hfp", IdentityValue::Str(h));
        }
        if let Some(j) = facts.ja4h {
            f("ja4h", IdentityValue::Str(j));
        }
        if let Some(t) = facts.tls {
            f("ja4", IdentityValue::Str(t.ja4));
            f("tls", IdentityValue::Str(t.version));
            if let Some(sni) = t.server_name {
                f("sni", IdentityValue::Str(sni));
            }
            if let Some(client) = t.client {
                f("mtls", IdentityValue::Str(client));
            }
        }
        if let Some(h) = facts.h2fp {
            f("h2fp", IdentityValue::Str(h));
        }
        if let Some(j) = facts.ja3 {
            f("ja3", IdentityValue::Str(j));
        }
        if let Some(c) = facts.clearance {
            f("clearance", IdentityValue::Str(c.level));
        }
        if let Some(a) = facts.signed_agent {
            f("agent", IdentityValue::Str(a.name));
            if let Err(why) = a.outcome {
                f("agent_signature", IdentityValue::Str(why));
            }
        }
        if let Some(i) = facts.ip_info {
            if i.asn != 0 {
                f("asn", IdentityValue::Asn(u64::from(i.asn)));
                f("as_name", IdentityValue::Str(&i.as_name));
            }
            if !i.country.is_empty() {
                f("country", IdentityValue::Str(&i.country));
            }
            if let Some(c) = i.category {
                f("network", IdentityValue::Str(c.name()));
            }
            if i.tor_exit {
                f("tor_exit", IdentityValue::Str("true"));
            }
        }
        if self.log_parts.is_empty() {
            return;
        }
        let route_name = self
            .policy
            .route(route)
            .map(|r| &*r.name)
            .unwrap_or("default");
        for (name, part) in &self.log_parts {
            let v = match crate::model::identity::value_of(part, facts, 0) {
                Some(KeyValue::Ip(ip, 255)) => IdentityValue::Ip(ip),
                Some(KeyValue::Ip(ip, len)) => IdentityValue::Net(ip, len),
                Some(KeyValue::Bytes(b)) => IdentityValue::Bytes(
                    b.get(..crate::model::identity::MAX_KEY_VALUE_LEN)
                        .unwrap_or(b),
                ),
                Some(KeyValue::Route(_)) => IdentityValue::Str(route_name),
                Some(KeyValue::Num(n)) => IdentityValue::Asn(n),
                None => continue,
            };
            f(name, v);
        }
    }

    /// "Why was this client limited?": the state of every limit keyed by exactly this dimension.
    pub fn identity(
        &self,
        dimension: &KeyPart,
        value: &str,
        now: Nanos,
        now_unix_ms: u64,
    ) -> Result<IdentityReport, IdentityError> {
        let bad = || IdentityError::BadValue(value.to_owned(), dimension.to_string());
        let owned_bytes;
        let (kv, shown, ip) = match dimension {
            KeyPart::Ip => {
                let ip: IpAddr = value.parse().map_err(|_| bad())?;
                let ip = ip.to_canonical();
                (KeyValue::Ip(ip, 255), ip.to_string(), Some(ip))
            }
            KeyPart::IpPrefix { v4, v6 } => {
                let addr = value.split('/').next().unwrap_or(value);
                let ip: IpAddr = addr.parse().map_err(|_| bad())?;
                let ip = ip.to_canonical();
                let len = if ip.is_ipv4() { *v4 } else { *v6 };
                let net = mask(ip, *v4, *v6);
                (KeyValue::Ip(net, len), format!("{net}/{len}"), Some(ip))
            }
            KeyPart::Route => {
                let id = self.policy.route_id(value).ok_or_else(bad)?;
                (KeyValue::Route(id), value.to_owned(), None)
            }
            KeyPart::Asn => {
                let n: u64 = value
                    .trim_start_matches("AS")
                    .trim_start_matches("as")
                    .parse()
                    .map_err(|_| bad())?;
                (KeyValue::Num(n), format!("AS{n}"), None)
            }
            KeyPart::Country => {
                owned_bytes = value.to_ascii_uppercase().into_bytes();
                (
                    KeyValue::Bytes(&owned_bytes),
                    value.to_ascii_uppercase(),
                    None,
                )
            }
            KeyPart::Header(_)
            | KeyPart::Method
            | KeyPart::ApiKey
            | KeyPart::Account
            | KeyPart::Jwt(_)
            | KeyPart::Ja4h
            | KeyPart::Hfp
            | KeyPart::Ja4
            | KeyPart::H2fp
            | KeyPart::Ja3
            | KeyPart::Mtls => {
                owned_bytes = value.as_bytes().to_vec();
                (KeyValue::Bytes(&owned_bytes), value.to_owned(), None)
            }
        };
        let mut limits = Vec::new();
        for (spec, table) in self.policy.limits.iter().zip(&self.tables) {
            if !spec.key.contains(dimension) {
                continue;
            }
            let key_name = spec
                .key
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("+");
            let mut report = LimitStateReport {
                limit: spec.name.to_string(),
                key: key_name,
                tracked: false,
                remaining: spec.quota,
                quota: spec.quota,
                window_secs: spec.window_secs,
                reset_secs: 0,
                note: None,
            };
            if spec.key.len() != 1 {
                report.note = Some("composite key: look up the state with all of its dimensions in the decision log".to_owned());
            } else {
                let hash = key_hash_of_values(&table.hasher, std::slice::from_ref(&kv));
                if let Some(v) = table.peek(&spec.algorithm, hash, now) {
                    report.tracked = true;
                    report.remaining = v.remaining;
                    report.reset_secs = ceil_secs(v.reset);
                }
            }
            limits.push(report);
        }
        let quotas = self.quota_report(dimension, value, now_unix_ms);
        let (behaviour, behaviour_tracked) = match &self.behaviour {
            Some(b) => {
                use crate::behaviour::Dim;
                let key = match (dimension, &kv) {
                    (KeyPart::Ip, KeyValue::Ip(a, _)) => Some((Dim::Ip, b.ip_key(Dim::Ip, *a))),
                    (KeyPart::IpPrefix { .. }, KeyValue::Ip(a, _)) => {
                        Some((Dim::Prefix, b.ip_key(Dim::Prefix, *a)))
                    }
                    (KeyPart::ApiKey, _) => {
                        Some((Dim::ApiKey, b.key_of(Dim::ApiKey, value.as_bytes())))
                    }
                    (KeyPart::Account, _) => {
                        Some((Dim::Account, b.key_of(Dim::Account, value.as_bytes())))
                    }
                    (KeyPart::Ja4h, _) => Some((Dim::Ja4h, b.key_of(Dim::Ja4h, value.as_bytes()))),
                    (KeyPart::Hfp, _) => Some((Dim::Hfp, b.key_of(Dim::Hfp, value.as_bytes()))),
                    (KeyPart::Asn, KeyValue::Num(n)) => u32::try_from(*n)
                        .ok()
                        .map(|n| (Dim::Asn, b.key_of(Dim::Asn, &n.to_be_bytes()))),
                    _ => None,
                };
                match key {
                    Some((dim, key)) if b.policy().track.contains(&dim) => (
                        b.report(dim, key, now, &|i| self.behaviour_signal_name(i)),
                        true,
                    ),
                    _ => (None, false),
                }
            }
            None => (None, false),
        };
        Ok(IdentityReport {
            behaviour,
            behaviour_tracked,
            quotas,
            dimension: dimension.to_string(),
            value: shown,
            allowlisted: ip.is_some_and(|ip| self.policy.lists.allow.contains(ip)),
            denylisted: ip.is_some_and(|ip| self.policy.lists.deny.contains(ip)),
            limits,
        })
    }
}

/// A value of an identity dimension, as [`Engine::identity_each`] gives it.
#[derive(Debug, Clone, Copy)]
pub enum IdentityValue<'a> {
    /// Text.
    Str(&'a str),
    /// Bytes, shown as UTF-8 (invalid sequences replaced).
    Bytes(&'a [u8]),
    /// An address.
    Ip(std::net::IpAddr),
    /// A masked network and its prefix length.
    Net(std::net::IpAddr, u8),
    /// An autonomous system number (shown `AS<n>`).
    Asn(u64),
}

impl std::fmt::Display for IdentityValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityValue::Str(s) => f.write_str(s),
            IdentityValue::Bytes(b) => f.write_str(&String::from_utf8_lossy(b)),
            IdentityValue::Ip(ip) => write!(f, "{ip}"),
            IdentityValue::Net(ip, len) => write!(f, "{ip}/{len}"),
            IdentityValue::Asn(n) => write!(f, "AS{n}"),
        }
    }
}
