//! API keys: their format, their record, and the keyed hash that is all the store keeps.
//!
//! A key looks like `pal_<id>_<secret>`: `pal_<id>` is the visible prefix (in logs, the admin
//! API and the CLI, so a leaked key is recognisable and greppable), the id finds the record, and
//! the whole key's HMAC-SHA256 under the server secret must equal the record's hash (compared in
//! constant time). Keys are high-entropy (190 bits of secret), so a keyed hash is the right
//! tool; a password hash would only slow every request down.

use hmac::{KeyInit, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// What every key starts with.
pub const KEY_PREFIX: &str = "pal_";
/// Length of a key id.
pub const ID_LEN: usize = 12;
/// Length of a key's secret part.
pub const SECRET_LEN: usize = 32;
/// Length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The server secret keys are hashed (and signing secrets derived) with. 32 random bytes.
#[derive(Clone)]
pub struct ServerSecret {
    mac: HmacSha256,
    bytes: [u8; 32],
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(<redacted>)")
    }
}

impl ServerSecret {
    /// A secret from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mac = match HmacSha256::new_from_slice(&bytes) {
            Ok(m) => m,
            // HMAC takes keys of any length; this arm cannot be reached.
            Err(_) => HmacSha256::new(&Default::default()),
        };
        Self { mac, bytes }
    }

    /// A fresh random secret.
    pub fn generate() -> Self {
        Self::from_bytes(rand::rng().random())
    }

    /// The raw bytes (for storing).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// HMAC-SHA256 of `parts` concatenated.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// A fingerprint that tells whether two gateways hold the same secret, without revealing
    /// it (an HMAC of a fixed label, 16 bytes in hex).
    pub fn fingerprint(&self) -> String {
        let mac = self.mac(&[b"palisade secret fingerprint"]);
        hex(mac.get(..16).unwrap_or(&mac))
    }

    /// The stored hash of a raw key.
    pub fn key_hash(&self, raw_key: &str) -> [u8; 32] {
        self.mac(&[raw_key.as_bytes()])
    }
}

/// Whether two hashes are equal, in constant time.
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| {
            let i = rng.random_range(0..alphabet.len());
            char::from(alphabet.get(i).copied().unwrap_or(b'a'))
        })
        .collect()
}

/// A fresh key id.
pub fn new_id() -> String {
    random_string(ID_ALPHABET, ID_LEN)
}

/// A fresh raw key for `id`.
pub fn new_raw_key(id: &str) -> String {
    format!(
        "{KEY_PREFIX}{id}_{}",
        random_string(SECRET_ALPHABET, SECRET_LEN)
    )
}

/// The id inside a raw key, if it has the right shape.
pub fn id_of(raw: &str) -> Option<&str> {
    if raw.len() != KEY_LEN || !raw.is_ascii() {
        return None;
    }
    let rest = raw.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    // Character classes, not alphabet scans: this runs on every request that presents a key.
    (id.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric()))
    .then_some(id)
}

/// The visible prefix of a key id.
pub fn prefix_of(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// A per-key rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRateSpec {
    /// Requests per period.
    pub requests: u64,
    /// Period in seconds.
    pub per_secs: u64,
    /// Requests that may be made at once.
    pub burst: u64,
}

impl KeyRateSpec {
    /// `100/1m` style.
    pub fn display(&self) -> String {
        format!("{}/{}s", self.requests, self.per_secs)
    }
}

/// A key's status at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl KeyStatus {
    /// The name.
    pub fn name(&self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
        }
    }
}

/// A key as stored. Never holds the raw key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Id (the part after `pal_`).
    pub id: String,
    /// A person's name for it.
    pub name: String,
    /// The account it belongs to.
    pub account: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// Unix seconds.
    pub revoked_at: Option<u64>,
    /// Unix seconds (flushed from the gateway periodically).
    pub last_used_at: Option<u64>,
    /// The key's own rate limit.
    pub rate: Option<KeyRateSpec>,
    /// Requests per UTC day.
    pub daily_requests: Option<u64>,
    /// Dollars per UTC day.
    pub daily_spend_usd: Option<f64>,
    /// Whether requests must be signed (see `signature`).
    pub signed: bool,
    /// The key this one replaced.
    pub rotated_from: Option<String>,
    /// The key that replaced this one.
    pub rotated_to: Option<String>,
    /// HMAC-SHA256 of the raw key under the server secret, hex.
    pub hash: String,
}

impl ApiKeyRecord {
    /// The key's status at `now` (unix seconds).
    pub fn status(&self, now: u64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// The visible prefix.
    pub fn prefix(&self) -> String {
        prefix_of(&self.id)
    }

    /// The stored hash as bytes (all zero if the record is corrupt, which matches nothing).
    pub fn hash_bytes(&self) -> [u8; 32] {
        unhex32(&self.hash).unwrap_or([0; 32])
    }

    /// What the admin API and the CLI show: everything but the hash.
    pub fn view(&self, now: u64) -> KeyView {
        KeyView {
            id: self.id.clone(),
            prefix: self.prefix(),
            name: self.name.clone(),
            account: self.account.clone(),
            scopes: self.scopes.clone(),
            status: self.status(now),
            created_at: crate::time::rfc3339(self.created_at),
            expires_at: self.expires_at.map(crate::time::rfc3339),
            revoked_at: self.revoked_at.map(crate::time::rfc3339),
            last_used_at: self.last_used_at.map(crate::time::rfc3339),
            rate: self.rate.map(|r| r.display()),
            burst: self.rate.map(|r| r.burst),
            daily_requests: self.daily_requests,
            daily_spend_usd: self.daily_spend_usd,
            signed: self.signed,
            rotated_from: self.rotated_from.clone(),
            rotated_to: self.rotated_to.clone(),
        }
    }
}

/// Bytes of a lowercase or uppercase hex string (`None` for an odd length or a non-hex digit).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(
            HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
        ));
        s.push(char::from(
            HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0'),
        ));
    }
    s
}

/// 32 bytes from 64 hex digits; `None` for anything else.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A key as shown to operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    /// Id.
    pub id: String,
    /// `pal_<id>`.
    pub prefix: String,
    /// Name.
    pub name: String,
    /// Account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Status now.
    pub status: KeyStatus,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// `N/Ss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Burst of the rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Requests per day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_requests: Option<u64>,
    /// Dollars per day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_spend_usd: Option<f64>,
    /// Signed requests required.
    pub signed: bool,
    /// Predecessor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
    /// Successor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<String>,
}

impl<'de> Deserialize<'de> for KeyStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "active" => Ok(KeyStatus::Active),
            "revoked" => Ok(KeyStatus::Revoked),
            "expired" => Ok(KeyStatus::Expired),
            other => Err(serde::de::Error::custom(format!(
                "unknown status `{other}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let id = new_id();
        let raw = new_raw_key(&id);
        assert_eq!(raw.len(), KEY_LEN);
        assert!(raw.starts_with(&prefix_of(&id)));
        assert_eq!(id_of(&raw), Some(id.as_str()));
        assert_eq!(id_of("pal_short"), None);
        assert_eq!(id_of(&raw.replace('_', "-")), None);
        let mut bad = raw.clone();
        bad.replace_range(KEY_LEN - 1.., "!");
        assert_eq!(id_of(&bad), None);
        // Two keys never share a secret.
        assert_ne!(new_raw_key(&id), raw);
    }

    #[test]
    fn hashes_are_keyed_and_round_trip_through_hex() {
        let a = ServerSecret::from_bytes([1; 32]);
        let b = ServerSecret::from_bytes([2; 32]);
        let raw = new_raw_key(&new_id());
        assert_ne!(a.key_hash(&raw), b.key_hash(&raw));
        let h = a.key_hash(&raw);
        let rec = ApiKeyRecord {
            id: "x".into(),
            name: String::new(),
            account: None,
            scopes: vec![],
            created_at: 0,
            expires_at: Some(100),
            revoked_at: None,
            last_used_at: None,
            rate: None,
            daily_requests: None,
            daily_spend_usd: None,
            signed: false,
            rotated_from: None,
            rotated_to: None,
            hash: hex(&h),
        };
        assert!(hashes_equal(&rec.hash_bytes(), &h));
        assert_eq!(rec.status(99), KeyStatus::Active);
        assert_eq!(rec.status(100), KeyStatus::Expired);
    }

    /// RFC 4231 test case 2, so the HMAC we call is the standard one.
    #[test]
    fn hmac_matches_rfc4231() {
        let mut m = HmacSha256::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
