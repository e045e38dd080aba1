//! The durable embedded store in the data dir: API keys (hashed), daily quota usage and the
//! audit log of admin changes, in one redb database (`palisade.redb`), plus the server secret
//! in its own file (`key-secret`, mode 0600).
//!
//! Every change commits durably before it returns, together with its audit entry, so a key
//! created or revoked survives `kill -9`. redb locks the file: one process at a time. The CLI
//! therefore works offline on a stopped gateway's data dir, and through the admin API on a
//! running one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use palisade_engine::state::blocks::BlockEntry;
use palisade_engine::state::quota_ledger::{Usage, UsageRow};
use palisade_engine::units::{parse_duration, parse_rate};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::key::{
    ApiKeyRecord, KeyRateSpec, KeyStatus, KeyView, ServerSecret, hex, new_id, new_raw_key, unhex32,
};
use crate::signature::signing_secret;

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const USAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("usage");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");

/// The database file in the data dir.
pub const DB_FILE: &str = "palisade.redb";
/// The server secret file in the data dir.
pub const SECRET_FILE: &str = "key-secret";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (a running gateway) holds the database.
    #[error(
        "the data dir {0} is in use by a running gateway; use its admin API instead (--admin URL or PALISADE_ADMIN_URL)"
    )]
    InUse(PathBuf),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The database failed.
    #[error("store: {0}")]
    Db(String),
    /// No such key.
    #[error("no key with id `{0}`")]
    NotFound(String),
    /// The request was not valid.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The account has as many active keys as it may.
    #[error("account `{account}` already has {max} active keys (the most allowed)")]
    AccountFull {
        /// Account.
        account: String,
        /// The cap.
        max: u64,
    },
    /// The key is revoked and cannot be changed.
    #[error("key `{0}` is revoked")]
    Revoked(String),
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// A request to create a key (admin API body; CLI flags map onto it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// A person's name for the key.
    #[serde(default)]
    pub name: String,
    /// The account it belongs to.
    pub account: Option<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Lifetime, e.g. `90d`.
    pub expires_in: Option<String>,
    /// Own rate limit, e.g. `100/1m`.
    pub rate: Option<String>,
    /// Burst for `rate`. Default: the rate's count.
    pub burst: Option<u64>,
    /// Requests per UTC day.
    pub daily_requests: Option<u64>,
    /// Dollars per UTC day.
    pub daily_spend_usd: Option<f64>,
    /// Require signed requests.
    #[serde(default)]
    pub signed: bool,
}

/// A change to a key; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    /// New name.
    pub name: Option<String>,
    /// New scopes (replacing the old ones).
    pub scopes: Option<Vec<String>>,
    /// New lifetime from now, e.g. `30d`; `never` removes the expiry.
    pub expires_in: Option<String>,
    /// New rate (`none` removes it).
    pub rate: Option<String>,
    /// New burst.
    pub burst: Option<u64>,
    /// New daily request budget (0 removes it).
    pub daily_requests: Option<u64>,
    /// New daily spend budget (0 removes it).
    pub daily_spend_usd: Option<f64>,
}

/// A freshly created key: the only time the raw key exists outside the client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    /// Id.
    pub id: String,
    /// `pal_<id>`.
    pub prefix: String,
    /// The raw key. Shown once.
    pub key: String,
    /// For signed keys: the request-signing secret. Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// The key's record.
    pub record: KeyView,
}

/// An audit log entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Sequence number.
    #[serde(default)]
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    /// Who: `admin-api`, `cli`, or for reloads what triggered them (`SIGHUP`, `file change`).
    pub actor: String,
    /// What: `key.create`, `key.update`, `key.revoke`, `key.rotate`, `config.reload`.
    pub action: String,
    /// Which key (empty for actions on no key, such as `config.reload`).
    pub key_id: String,
    /// Details (never the raw key or its hash).
    pub details: serde_json::Value,
}

/// The store.
pub struct KeyStore {
    db: Database,
    secret: ServerSecret,
    dir: PathBuf,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("dir", &self.dir).finish()
    }
}

/// The environment variable that gives the server secret (64 hex digits), e.g. so every
/// gateway of a cluster verifies the same keys.
pub const SECRET_ENV: &str = "PALISADE_KEY_SECRET";

fn secret_from_env() -> Result<Option<ServerSecret>, StoreError> {
    let Ok(v) = std::env::var(SECRET_ENV) else {
        return Ok(None);
    };
    let v = v.trim();
    let bytes = (v.len() == 64)
        .then(|| unhex32(v))
        .flatten()
        .ok_or_else(|| {
            StoreError::Io(format!(
                "{SECRET_ENV} must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`"
            ))
        })?;
    Ok(Some(ServerSecret::from_bytes(bytes)))
}

/// Reads the server secret: from `PALISADE_KEY_SECRET` if set, else from the data dir,
/// creating it (mode 0600) if absent. A data dir whose secret differs from the variable's is
/// refused: the keys created under it would silently stop verifying.
pub fn load_or_create_secret(dir: &Path) -> Result<ServerSecret, StoreError> {
    let from_env = secret_from_env()?;
    let stored = load_or_create_file_secret(dir, from_env.as_ref())?;
    match from_env {
        Some(env) if env.bytes() != stored.bytes() => Err(StoreError::Io(format!(
            "{SECRET_ENV} differs from the secret in {}; keys created under that file would stop verifying. Set {SECRET_ENV} to the file's content, or move the file away if no key was ever created with it",
            dir.join(SECRET_FILE).display()
        ))),
        _ => Ok(stored),
    }
}

/// Reads the data dir's secret, creating it from `initial` (or at random) if absent.
fn load_or_create_file_secret(
    dir: &Path,
    initial: Option<&ServerSecret>,
) -> Result<ServerSecret, StoreError> {
    let path = dir.join(SECRET_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim();
            if s.len() != 64 {
                return Err(StoreError::Io(format!(
                    "{} is not a 64-hex-digit secret; restore it from backup (keys cannot be verified without it)",
                    path.display()
                )));
            }
            let bytes = unhex32(s)
                .ok_or_else(|| StoreError::Io(format!("{} is not a hex secret", path.display())))?;
            Ok(ServerSecret::from_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = initial.cloned().unwrap_or_else(ServerSecret::generate);
            let tmp = dir.join(format!("{SECRET_FILE}.tmp"));
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", path.display()));
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(hex(secret.bytes()).as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            Ok(secret)
        }
        Err(e) => Err(StoreError::Io(format!("{}: {e}", path.display()))),
    }
}

fn parse_secs(s: &str, what: &str) -> Result<u64, String> {
    parse_duration(s)
        .map(|n| n / palisade_engine::clock::SECOND)
        .map_err(|e| format!("{what}: {e}"))
        .and_then(|n| {
            if n == 0 {
                Err(format!("{what} must be at least 1s"))
            } else {
                Ok(n)
            }
        })
}

fn parse_key_rate(rate: &str, burst: Option<u64>) -> Result<KeyRateSpec, String> {
    let r = parse_rate(rate).map_err(|e| format!("rate: {e}"))?;
    let per_secs = r.period / palisade_engine::clock::SECOND;
    if per_secs == 0 {
        return Err("rate: the period must be at least 1s".to_owned());
    }
    let burst = burst.unwrap_or(r.count);
    if burst == 0 {
        return Err("burst must be at least 1".to_owned());
    }
    Ok(KeyRateSpec {
        requests: r.count,
        per_secs,
        burst,
    })
}

fn valid_text(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'*' | b'@')
        })
}

fn check_budget(requests: Option<u64>, spend: Option<f64>, errors: &mut Vec<String>) {
    if let Some(s) = spend
        && !(s.is_finite() && (0.0..=1_000_000.0).contains(&s))
    {
        errors.push("daily_spend_usd must be between 0 and 1000000".to_owned());
    }
    let _ = requests;
}

impl KeyStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let secret = load_or_create_secret(dir)?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(dir.to_path_buf()),
            other => StoreError::Db(format!("{}: {other}", path.display())),
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(KEYS).map_err(db_err)?;
            txn.open_table(USAGE).map_err(db_err)?;
            txn.open_table(AUDIT).map_err(db_err)?;
            txn.open_table(BLOCKS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db,
            secret,
            dir: dir.to_path_buf(),
        })
    }

    /// The server secret.
    pub fn secret(&self) -> &ServerSecret {
        &self.secret
    }

    /// Every key record.
    pub fn list(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(KEYS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            match serde_json::from_slice::<ApiKeyRecord>(v.value()) {
                Ok(r) => out.push(r),
                Err(e) => return Err(StoreError::Db(format!("corrupt key record: {e}"))),
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// One key record.
    pub fn get(&self, id: &str) -> Result<ApiKeyRecord, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(KEYS).map_err(db_err)?;
        let v = table
            .get(id)
            .map_err(db_err)?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        serde_json::from_slice(v.value()).map_err(db_err)
    }

    fn put(
        &self,
        records: &[&ApiKeyRecord],
        audit: Vec<AuditEntry>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut written = Vec::new();
        {
            let mut keys = txn.open_table(KEYS).map_err(db_err)?;
            for r in records {
                let bytes = serde_json::to_vec(r).map_err(db_err)?;
                keys.insert(r.id.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            let mut log = txn.open_table(AUDIT).map_err(db_err)?;
            let mut seq = log.last().map_err(db_err)?.map_or(0, |(k, _)| k.value());
            for mut a in audit {
                seq += 1;
                a.seq = seq;
                let bytes = serde_json::to_vec(&a).map_err(db_err)?;
                log.insert(seq, bytes.as_slice()).map_err(db_err)?;
                written.push(a);
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(written)
    }

    fn audit_entry(
        actor: &str,
        action: &str,
        key_id: &str,
        now: u64,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            time: crate::time::rfc3339(now),
            actor: actor.to_owned(),
            action: action.to_owned(),
            key_id: key_id.to_owned(),
            details,
        }
    }

    fn active_in_account(&self, account: &str, now: u64) -> Result<u64, StoreError> {
        Ok(self
            .list()?
            .iter()
            .filter(|r| r.account.as_deref() == Some(account) && r.status(now) == KeyStatus::Active)
            .count() as u64)
    }

    /// Stores records another gateway of the cluster changed (it audited the change).
    pub fn replicate(&self, records: &[ApiKeyRecord]) -> Result<(), StoreError> {
        let refs: Vec<&ApiKeyRecord> = records.iter().collect();
        self.put(&refs, Vec::new()).map(|_| ())
    }

    /// Creates a key. `max_per_account` caps active keys per account.
    pub fn create(
        &self,
        req: &NewKey,
        now: u64,
        max_per_account: u64,
        actor: &str,
    ) -> Result<CreatedKey, StoreError> {
        let mut errors = Vec::new();
        if !valid_text(&req.name, 200) {
            errors
                .push("name must be at most 200 characters without control characters".to_owned());
        }
        if let Some(a) = &req.account
            && !valid_token(a)
        {
            errors.push(format!(
                "account `{a}` must be 1-64 letters, digits or :-_.@"
            ));
        }
        for s in &req.scopes {
            if !valid_token(s) {
                errors.push(format!("scope `{s}` must be 1-64 letters, digits or :-_.*"));
            }
        }
        let expires = match &req.expires_in {
            Some(e) => match parse_secs(e, "expires_in") {
                Ok(s) => Some(now + s),
                Err(m) => {
                    errors.push(m);
                    None
                }
            },
            None => None,
        };
        let rate = match &req.rate {
            Some(r) => match parse_key_rate(r, req.burst) {
                Ok(r) => Some(r),
                Err(m) => {
                    errors.push(m);
                    None
                }
            },
            None if req.burst.is_some() => {
                errors.push("burst needs a rate".to_owned());
                None
            }
            None => None,
        };
        check_budget(req.daily_requests, req.daily_spend_usd, &mut errors);
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        if let Some(a) = &req.account
            && self.active_in_account(a, now)? >= max_per_account
        {
            return Err(StoreError::AccountFull {
                account: a.clone(),
                max: max_per_account,
            });
        }
        let id = self.unused_id()?;
        let raw = new_raw_key(&id);
        let record = ApiKeyRecord {
            id: id.clone(),
            name: req.name.clone(),
            account: req.account.clone(),
            scopes: req.scopes.clone(),
            created_at: now,
            expires_at: expires,
            revoked_at: None,
            last_used_at: None,
            rate,
            daily_requests: req.daily_requests.filter(|n| *n > 0),
            daily_spend_usd: req.daily_spend_usd.filter(|n| *n > 0.0),
            signed: req.signed,
            rotated_from: None,
            rotated_to: None,
            hash: hex(&self.secret.key_hash(&raw)),
        };
        let view = record.view(now);
        self.put(
            &[&record],
            vec![Self::audit_entry(
                actor,
                "key.create",
                &id,
                now,
                serde_json::to_value(&view).unwrap_or_default(),
            )],
        )?;
        Ok(CreatedKey {
            prefix: record.prefix(),
            id,
            signing_secret: record
                .signed
                .then(|| signing_secret(&self.secret, &record.id)),
            key: raw,
            record: view,
        })
    }

    fn unused_id(&self) -> Result<String, StoreError> {
        for _ in 0..8 {
            let id = new_id();
            match self.get(&id) {
                Err(StoreError::NotFound(_)) => return Ok(id),
                Err(e) => return Err(e),
                Ok(_) => continue,
            }
        }
        Err(StoreError::Db("could not find an unused key id".to_owned()))
    }

    /// Changes a key's name, scopes, expiry, rate or budgets.
    pub fn update(
        &self,
        id: &str,
        req: &KeyUpdate,
        now: u64,
        actor: &str,
    ) -> Result<ApiKeyRecord, StoreError> {
        let mut r = self.get(id)?;
        if r.revoked_at.is_some() {
            return Err(StoreError::Revoked(id.to_owned()));
        }
        let mut errors = Vec::new();
        if let Some(n) = &req.name {
            if valid_text(n, 200) {
                r.name = n.clone();
            } else {
                errors.push(
                    "name must be at most 200 characters without control characters".to_owned(),
                );
            }
        }
        if let Some(sc) = &req.scopes {
            for s in sc {
                if !valid_token(s) {
                    errors.push(format!("scope `{s}` must be 1-64 letters, digits or :-_.*"));
                }
            }
            r.scopes = sc.clone();
        }
        match req.expires_in.as_deref() {
            Some("never") => r.expires_at = None,
            Some(e) => match parse_secs(e, "expires_in") {
                Ok(s) => r.expires_at = Some(now + s),
                Err(m) => errors.push(m),
            },
            None => {}
        }
        match (req.rate.as_deref(), req.burst) {
            (Some("none"), _) => r.rate = None,
            (Some(rate), burst) => match parse_key_rate(rate, burst) {
                Ok(x) => r.rate = Some(x),
                Err(m) => errors.push(m),
            },
            (None, Some(b)) => match &mut r.rate {
                Some(x) if b > 0 => x.burst = b,
                _ => errors.push("burst needs a rate (and must be at least 1)".to_owned()),
            },
            (None, None) => {}
        }
        check_budget(req.daily_requests, req.daily_spend_usd, &mut errors);
        if let Some(n) = req.daily_requests {
            r.daily_requests = (n > 0).then_some(n);
        }
        if let Some(s) = req.daily_spend_usd {
            r.daily_spend_usd = (s > 0.0).then_some(s);
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        self.put(
            &[&r],
            vec![Self::audit_entry(
                actor,
                "key.update",
                id,
                now,
                serde_json::to_value(req).unwrap_or_default(),
            )],
        )?;
        Ok(r)
    }

    /// Revokes a key (idempotent).
    pub fn revoke(&self, id: &str, now: u64, actor: &str) -> Result<ApiKeyRecord, StoreError> {
        let mut r = self.get(id)?;
        if r.revoked_at.is_none() {
            r.revoked_at = Some(now);
            self.put(
                &[&r],
                vec![Self::audit_entry(
                    actor,
                    "key.revoke",
                    id,
                    now,
                    serde_json::json!({}),
                )],
            )?;
        }
        Ok(r)
    }

    /// Issues a successor with the same settings; the old key stays valid for `grace_secs`,
    /// then expires.
    pub fn rotate(
        &self,
        id: &str,
        now: u64,
        grace_secs: u64,
        actor: &str,
    ) -> Result<CreatedKey, StoreError> {
        let mut old = self.get(id)?;
        match old.status(now) {
            KeyStatus::Active => {}
            KeyStatus::Revoked => return Err(StoreError::Revoked(id.to_owned())),
            KeyStatus::Expired => {
                return Err(StoreError::Invalid(vec![format!(
                    "key `{id}` has expired; create a new one"
                )]));
            }
        }
        let new_id = self.unused_id()?;
        let raw = new_raw_key(&new_id);
        let new = ApiKeyRecord {
            id: new_id.clone(),
            created_at: now,
            last_used_at: None,
            rotated_from: Some(old.id.clone()),
            rotated_to: None,
            hash: hex(&self.secret.key_hash(&raw)),
            ..old.clone()
        };
        let grace_end = now + grace_secs;
        old.expires_at = Some(old.expires_at.map_or(grace_end, |e| e.min(grace_end)));
        old.rotated_to = Some(new_id.clone());
        self.put(
            &[&old, &new],
            vec![Self::audit_entry(
                actor,
                "key.rotate",
                id,
                now,
                serde_json::json!({ "new_key_id": new_id, "old_expires_at": old.expires_at.map(crate::time::rfc3339) }),
            )],
        )?;
        let view = new.view(now);
        Ok(CreatedKey {
            prefix: new.prefix(),
            id: new_id,
            signing_secret: new.signed.then(|| signing_secret(&self.secret, &new.id)),
            key: raw,
            record: view,
        })
    }

    /// Records last-used times (keeps the later of stored and given).
    pub fn touch(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut keys = txn.open_table(KEYS).map_err(db_err)?;
            for (id, at) in used {
                let current = keys
                    .get(id.as_str())
                    .map_err(db_err)?
                    .and_then(|v| serde_json::from_slice::<ApiKeyRecord>(v.value()).ok());
                if let Some(mut r) = current
                    && r.last_used_at.is_none_or(|t| t < *at)
                {
                    r.last_used_at = Some(*at);
                    let bytes = serde_json::to_vec(&r).map_err(db_err)?;
                    keys.insert(id.as_str(), bytes.as_slice()).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Records an admin action that is not a key change (a config reload, say).
    pub fn append_audit(
        &self,
        actor: &str,
        action: &str,
        now: u64,
        details: serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        let written = self.put(
            &[],
            vec![Self::audit_entry(actor, action, "", now, details)],
        )?;
        written
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Db("audit entry not written".to_owned()))
    }

    /// The most recent audit entries, newest last.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)?.rev().take(limit) {
            let (_, v) = row.map_err(db_err)?;
            if let Ok(a) = serde_json::from_slice(v.value()) {
                out.push(a);
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Persisted blocks (expired ones included; the caller skips them).
    pub fn load_blocks(&self) -> Result<Vec<BlockEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(BLOCKS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            if let Ok(b) = serde_json::from_slice::<BlockEntry>(v.value()) {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Writes blocks, and deletes the ones that expired before `now_ms`.
    pub fn save_blocks(&self, blocks: &[BlockEntry], now_ms: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(BLOCKS).map_err(db_err)?;
            for b in blocks {
                let bytes = serde_json::to_vec(b).map_err(db_err)?;
                table
                    .insert(b.key.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            let expired: Vec<String> = table
                .iter()
                .map_err(db_err)?
                .filter_map(Result::ok)
                .filter(|(_, v)| {
                    serde_json::from_slice::<BlockEntry>(v.value())
                        .is_ok_and(|b| b.until_ms <= now_ms)
                })
                .map(|(k, _)| k.value().to_owned())
                .collect();
            for k in expired {
                table.remove(k.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Deletes a block, with an audit entry.
    pub fn delete_block(&self, key: &str, actor: &str, now: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(BLOCKS).map_err(db_err)?;
            table.remove(key).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        self.append_audit(
            actor,
            "block.remove",
            now,
            serde_json::json!({ "block": key }),
        )?;
        Ok(())
    }

    /// Persisted quota usage.
    pub fn load_usage(&self) -> Result<Vec<UsageRow>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(USAGE).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let Some((quota, identity)) = k.value().split_once('\u{1f}') else {
                continue;
            };
            if let Ok(usage) = serde_json::from_slice::<Usage>(v.value()) {
                out.push(UsageRow {
                    quota: quota.to_owned(),
                    identity: identity.to_owned(),
                    usage,
                });
            }
        }
        Ok(out)
    }

    /// Writes quota usage rows; rows of days before `today` are deleted.
    pub fn save_usage(&self, rows: &[UsageRow], today: u32) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(USAGE).map_err(db_err)?;
            for r in rows {
                let key = format!("{}\u{1f}{}", r.quota, r.identity);
                let bytes = serde_json::to_vec(&r.usage).map_err(db_err)?;
                table
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            let stale: Vec<String> = table
                .iter()
                .map_err(db_err)?
                .filter_map(Result::ok)
                .filter(|(_, v)| {
                    serde_json::from_slice::<Usage>(v.value()).is_ok_and(|u| u.day < today)
                })
                .map(|(k, _)| k.value().to_owned())
                .collect();
            for k in stale {
                table.remove(k.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let created;
        {
            let s = KeyStore::open(dir.path()).unwrap();
            created = s
                .create(
                    &NewKey {
                        name: "ci".into(),
                        account: Some("acme".into()),
                        scopes: vec!["items:read".into()],
                        expires_in: Some("90d".into()),
                        rate: Some("100/1m".into()),
                        ..NewKey::default()
                    },
                    1_000,
                    2,
                    "cli",
                )
                .unwrap();
            assert!(created.key.starts_with(&created.prefix));
            // The store never holds the raw key.
            let raw_in_db = std::fs::read(dir.path().join(DB_FILE)).unwrap();
            assert!(
                !raw_in_db
                    .windows(created.key.len())
                    .any(|w| w == created.key.as_bytes())
            );
            // A second process cannot open it.
            assert!(matches!(
                KeyStore::open(dir.path()),
                Err(StoreError::InUse(_))
            ));
        }
        let s = KeyStore::open(dir.path()).unwrap();
        let r = s.get(&created.id).unwrap();
        assert_eq!(r.expires_at, Some(1_000 + 90 * 86_400));
        assert_eq!(
            r.rate,
            Some(KeyRateSpec {
                requests: 100,
                per_secs: 60,
                burst: 100
            })
        );
        assert!(crate::key::hashes_equal(
            &r.hash_bytes(),
            &s.secret().key_hash(&created.key)
        ));
        s.create(
            &NewKey {
                account: Some("acme".into()),
                ..NewKey::default()
            },
            1_001,
            2,
            "cli",
        )
        .unwrap();
        assert!(matches!(
            s.create(
                &NewKey {
                    account: Some("acme".into()),
                    ..NewKey::default()
                },
                1_002,
                2,
                "cli"
            ),
            Err(StoreError::AccountFull { .. })
        ));
        let rotated = s.rotate(&created.id, 2_000, 60, "admin-api").unwrap();
        let old = s.get(&created.id).unwrap();
        assert_eq!(old.expires_at, Some(2_060));
        assert_eq!(old.rotated_to.as_deref(), Some(rotated.id.as_str()));
        assert_eq!(
            s.revoke(&rotated.id, 2_001, "cli").unwrap().status(2_001),
            KeyStatus::Revoked
        );
        let audit = s.audit(10).unwrap();
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            ["key.create", "key.create", "key.rotate", "key.revoke"]
        );
        assert!(audit.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn bad_requests_report_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::open(dir.path()).unwrap();
        let err = s
            .create(
                &NewKey {
                    account: Some("bad account".into()),
                    scopes: vec!["".into()],
                    expires_in: Some("soon".into()),
                    rate: Some("fast".into()),
                    ..NewKey::default()
                },
                0,
                10,
                "cli",
            )
            .unwrap_err();
        let StoreError::Invalid(list) = err else {
            panic!("{err}")
        };
        assert_eq!(list.len(), 4, "{list:?}");
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn usage_rows_round_trip_and_old_days_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::open(dir.path()).unwrap();
        let row = |day, requests| UsageRow {
            quota: "daily".into(),
            identity: format!("k{day}"),
            usage: Usage {
                day,
                requests,
                spend_micros: 5,
                ..Usage::default()
            },
        };
        s.save_usage(&[row(9, 1), row(10, 7)], 10).unwrap();
        let back = s.load_usage().unwrap();
        assert_eq!(back.len(), 1, "yesterday's row is pruned: {back:?}");
        assert_eq!(back[0].usage.requests, 7);
        assert_eq!(back[0].identity, "k10");
        s.save_usage(&[], 11).unwrap();
        assert!(s.load_usage().unwrap().is_empty());
    }
}
