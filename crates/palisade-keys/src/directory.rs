//! The in-memory key directory the gateway verifies keys against: every key record, indexed by
//! id, with its prebuilt [`Principal`]. Verification is one HMAC and one map look-up; changes
//! (create, revoke, rotate) swap in a new map atomically, so they take effect on the next
//! request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use palisade_engine::clock::SECOND;
use palisade_engine::model::header_item::HeaderItem;
use palisade_engine::model::principal::{
    AuthFailure, KeyBudget, KeyRate, Principal, PrincipalKind,
};
use palisade_engine::state::quota_ledger::{MICROS_PER_USD, QuotaItems};

use crate::key::{ApiKeyRecord, KeyStatus, ServerSecret, hashes_equal, id_of};

/// One key, ready for verification.
#[derive(Debug)]
pub struct DirEntry {
    /// The record.
    pub record: ApiKeyRecord,
    /// Its principal.
    pub principal: Arc<Principal>,
    hash: [u8; 32],
    last_used: AtomicU64,
    flushed: AtomicU64,
}

fn principal_of(r: &ApiKeyRecord) -> Principal {
    let rate = r.rate.map(|x| KeyRate {
        interval: (x.per_secs.saturating_mul(SECOND) / x.requests.max(1)).max(1),
        burst: x.burst.max(1),
        item: Arc::new(HeaderItem::for_limit(
            "api-key", x.requests, x.per_secs, false,
        )),
        quota: x.requests,
        window_secs: x.per_secs,
    });
    let budget = KeyBudget {
        requests_per_day: r.daily_requests,
        spend_per_day_micros: r
            .daily_spend_usd
            .map(|d| (d * MICROS_PER_USD).round() as u64),
    };
    let budget_items = (budget.requests_per_day.is_some() || budget.spend_per_day_micros.is_some())
        .then(|| {
            Arc::new(QuotaItems::new(
                palisade_engine::engine::KEY_BUDGET_QUOTA,
                budget.requests_per_day,
                budget.spend_per_day_micros,
            ))
        });
    Principal {
        kind: PrincipalKind::ApiKey,
        key_id: Some(Arc::from(r.id.as_str())),
        account: r.account.as_deref().map(Arc::from),
        scopes: r.scopes.iter().map(|s| Arc::from(s.as_str())).collect(),
        claims: Vec::new(),
        rate,
        budget,
        budget_items,
        created_ms: Some(r.created_at.saturating_mul(1000)),
    }
}

/// The directory.
#[derive(Debug)]
pub struct KeyDirectory {
    secret: ServerSecret,
    entries: ArcSwap<HashMap<String, Arc<DirEntry>>>,
}

impl KeyDirectory {
    /// A directory over `records`.
    pub fn new(secret: ServerSecret, records: Vec<ApiKeyRecord>) -> Self {
        let d = Self {
            secret,
            entries: ArcSwap::from_pointee(HashMap::new()),
        };
        d.replace(records);
        d
    }

    /// The server secret.
    pub fn secret(&self) -> &ServerSecret {
        &self.secret
    }

    fn entry(r: ApiKeyRecord, old: Option<&Arc<DirEntry>>) -> Arc<DirEntry> {
        let stored = r.last_used_at.unwrap_or(0);
        let used = old.map_or(stored, |o| o.last_used.load(Ordering::Relaxed).max(stored));
        let flushed = old.map_or(stored, |o| o.flushed.load(Ordering::Relaxed).max(stored));
        Arc::new(DirEntry {
            principal: Arc::new(principal_of(&r)),
            hash: r.hash_bytes(),
            last_used: AtomicU64::new(used),
            flushed: AtomicU64::new(flushed),
            record: r,
        })
    }

    /// Replaces every record.
    pub fn replace(&self, records: Vec<ApiKeyRecord>) {
        let old = self.entries.load();
        let map = records
            .into_iter()
            .map(|r| {
                let prev = old.get(&r.id);
                (r.id.clone(), Self::entry(r, prev))
            })
            .collect();
        self.entries.store(Arc::new(map));
    }

    /// Adds or replaces records.
    pub fn upsert(&self, records: &[ApiKeyRecord]) {
        self.entries.rcu(|cur| {
            let mut map = HashMap::clone(cur);
            for r in records {
                let prev = cur.get(&r.id);
                map.insert(r.id.clone(), Self::entry(r.clone(), prev));
            }
            map
        });
    }

    /// A record by id.
    pub fn get(&self, id: &str) -> Option<Arc<DirEntry>> {
        self.entries.load().get(id).cloned()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.load().len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies a raw key at `now` (unix seconds). A key's status is only revealed to a
    /// caller who presents the right secret for it.
    pub fn verify(&self, raw: &str, now: u64) -> Result<Arc<DirEntry>, AuthFailure> {
        let invalid = AuthFailure::InvalidApiKey;
        let id = id_of(raw).ok_or(invalid)?;
        let entry = self.entries.load().get(id).cloned().ok_or(invalid)?;
        if !hashes_equal(&entry.hash, &self.secret.key_hash(raw)) {
            return Err(invalid);
        }
        match entry.record.status(now) {
            KeyStatus::Active => {}
            KeyStatus::Revoked => return Err(AuthFailure::RevokedApiKey),
            KeyStatus::Expired => return Err(AuthFailure::ExpiredApiKey),
        }
        if entry.last_used.load(Ordering::Relaxed) < now {
            entry.last_used.store(now, Ordering::Relaxed);
        }
        Ok(entry)
    }

    /// Last-used times that changed since the previous call, for the store.
    pub fn take_used(&self) -> Vec<(String, u64)> {
        let map = self.entries.load();
        let mut out = Vec::new();
        for (id, e) in map.iter() {
            let used = e.last_used.load(Ordering::Relaxed);
            if used > e.flushed.swap(used, Ordering::Relaxed) {
                out.push((id.clone(), used));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KeyStore, NewKey};

    #[test]
    fn verify_distinguishes_invalid_revoked_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::open(dir.path()).unwrap();
        let a = s
            .create(
                &NewKey {
                    expires_in: Some("1h".into()),
                    rate: Some("10/1s".into()),
                    daily_requests: Some(5),
                    ..NewKey::default()
                },
                1_000,
                10,
                "cli",
            )
            .unwrap();
        let d = KeyDirectory::new(s.secret().clone(), s.list().unwrap());
        let e = d.verify(&a.key, 1_001).unwrap();
        assert_eq!(e.principal.key_id.as_deref(), Some(a.id.as_str()));
        assert_eq!(e.principal.rate.as_ref().unwrap().interval, SECOND / 10);
        assert_eq!(e.principal.budget.requests_per_day, Some(5));
        // Right id, wrong secret: invalid, and the status is not revealed.
        let mut forged = a.key.clone();
        forged.replace_range(forged.len() - 4.., "AAAA");
        assert_eq!(
            d.verify(&forged, 1_001).unwrap_err(),
            AuthFailure::InvalidApiKey
        );
        assert_eq!(
            d.verify("garbage", 1_001).unwrap_err(),
            AuthFailure::InvalidApiKey
        );
        assert_eq!(
            d.verify(&a.key, 1_000 + 3_600).unwrap_err(),
            AuthFailure::ExpiredApiKey
        );
        d.upsert(&[s.revoke(&a.id, 1_002, "cli").unwrap()]);
        assert_eq!(
            d.verify(&a.key, 1_003).unwrap_err(),
            AuthFailure::RevokedApiKey
        );
        assert_eq!(d.take_used(), vec![(a.id.clone(), 1_001)]);
        assert!(d.take_used().is_empty());
    }
}
