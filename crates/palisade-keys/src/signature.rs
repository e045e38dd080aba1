//! Signed requests: an option per key. The client signs method, path, query, a timestamp, a
//! nonce and the body's SHA-256 with a per-key signing secret (shown once, at creation), so a
//! captured request cannot be altered, replayed, or sent outside its time window.
//!
//! ```text
//! X-Palisade-Timestamp: 1763720227
//! X-Palisade-Nonce: 6f1c2a9e0b7d4c31
//! X-Palisade-Signature: v1=<hex HMAC-SHA256(signing_secret, string_to_sign)>
//!
//! string_to_sign = "v1\n" METHOD "\n" path "\n" query "\n" timestamp "\n" nonce "\n" hex(sha256(body))
//! ```
//!
//! The signing secret is derived from the server secret and the key id, so the store keeps no
//! extra secret. Nonces are remembered in a bounded cache for the time window; only a request
//! whose signature verifies can use up a nonce.

use std::hash::{BuildHasher, RandomState};

use hmac::{KeyInit, Mac};
use palisade_engine::model::principal::AuthFailure;
use quick_cache::sync::{Cache, GuardResult};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::key::{ServerSecret, hex};

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-palisade-signature";
/// Header carrying the unix timestamp.
pub const TIMESTAMP_HEADER: &str = "x-palisade-timestamp";
/// Header carrying the nonce.
pub const NONCE_HEADER: &str = "x-palisade-nonce";

/// The signing secret of a key.
pub fn signing_secret(secret: &ServerSecret, key_id: &str) -> String {
    hex(&secret.mac(&[b"palisade-signing-v1\0", key_id.as_bytes()]))
}

/// Hex SHA-256 of a body.
pub fn body_digest(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// The string a client signs.
pub fn string_to_sign(
    method: &str,
    path: &str,
    query: &str,
    timestamp: &str,
    nonce: &str,
    body_sha256_hex: &str,
) -> String {
    format!("v1\n{method}\n{path}\n{query}\n{timestamp}\n{nonce}\n{body_sha256_hex}")
}

/// The signature header value for a string to sign (what a client computes).
pub fn sign(signing_secret: &str, string_to_sign: &str) -> String {
    format!("v1={}", hex(&mac(signing_secret, string_to_sign)))
}

fn mac(signing_secret: &str, msg: &str) -> [u8; 32] {
    match hmac::Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes()) {
        Ok(mut m) => {
            m.update(msg.as_bytes());
            m.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

/// Remembers nonces seen recently, per key, in bounded memory.
pub struct NonceCache {
    cache: Cache<u64, ()>,
    hasher: RandomState,
}

impl std::fmt::Debug for NonceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceCache")
            .field("len", &self.cache.len())
            .finish()
    }
}

impl NonceCache {
    /// A cache of at most `capacity` nonces.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: Cache::new(capacity.max(16)),
            hasher: RandomState::new(),
        }
    }

    /// True the first time `(key, nonce)` is seen.
    pub fn first_use(&self, key_id: &str, nonce: &str) -> bool {
        let h = self.hasher.hash_one((key_id, nonce));
        match self.cache.get_value_or_guard(&h, None) {
            GuardResult::Guard(g) => {
                let _ = g.insert(());
                true
            }
            GuardResult::Value(()) | GuardResult::Timeout => false,
        }
    }
}

/// What a signed request presented.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    /// Method.
    pub method: &'a str,
    /// Path (as sent, not decoded).
    pub path: &'a str,
    /// Query (empty if none).
    pub query: &'a str,
    /// `X-Palisade-Timestamp`.
    pub timestamp: Option<&'a str>,
    /// `X-Palisade-Nonce`.
    pub nonce: Option<&'a str>,
    /// `X-Palisade-Signature`.
    pub signature: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// Verifies a signed request for `key_id` at `now_unix`.
pub fn verify(
    secret: &ServerSecret,
    key_id: &str,
    parts: &SignedParts<'_>,
    now_unix: u64,
    window_secs: u64,
    nonces: &NonceCache,
) -> Result<(), AuthFailure> {
    let bad = AuthFailure::InvalidSignature;
    let ts_text = parts.timestamp.ok_or(bad)?;
    let ts: u64 = ts_text.parse().map_err(|_| bad)?;
    if ts.abs_diff(now_unix) > window_secs {
        return Err(bad);
    }
    let nonce = parts.nonce.ok_or(bad)?;
    if !(8..=64).contains(&nonce.len())
        || !nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad);
    }
    let given = parts
        .signature
        .and_then(|s| s.trim().strip_prefix("v1="))
        .ok_or(bad)?;
    let expected = mac(
        &signing_secret(secret, key_id),
        &string_to_sign(
            parts.method,
            parts.path,
            parts.query,
            ts_text,
            nonce,
            &body_digest(parts.body),
        ),
    );
    let expected_hex = hex(&expected);
    let given = given.to_ascii_lowercase();
    if !bool::from(given.as_bytes().ct_eq(expected_hex.as_bytes())) {
        return Err(bad);
    }
    if !nonces.first_use(key_id, nonce) {
        return Err(bad);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(ts: &'a str, nonce: &'a str, sig: &'a str, body: &'a [u8]) -> SignedParts<'a> {
        SignedParts {
            method: "POST",
            path: "/api/orders",
            query: "dry=1",
            timestamp: Some(ts),
            nonce: Some(nonce),
            signature: Some(sig),
            body,
        }
    }

    #[test]
    fn sign_verify_tamper_replay_and_window() {
        let secret = ServerSecret::from_bytes([7; 32]);
        let ss = signing_secret(&secret, "abc");
        let nonces = NonceCache::new(100);
        let body = br#"{"qty":1}"#;
        let sts = string_to_sign(
            "POST",
            "/api/orders",
            "dry=1",
            "1000",
            "nonce-0001",
            &body_digest(body),
        );
        let sig = sign(&ss, &sts);
        assert_eq!(
            verify(
                &secret,
                "abc",
                &parts("1000", "nonce-0001", &sig, body),
                1010,
                300,
                &nonces
            ),
            Ok(())
        );
        // Replay.
        assert!(
            verify(
                &secret,
                "abc",
                &parts("1000", "nonce-0001", &sig, body),
                1010,
                300,
                &nonces
            )
            .is_err()
        );
        // Tampered body, other key, outside the window, bad nonce.
        let sts2 = string_to_sign(
            "POST",
            "/api/orders",
            "dry=1",
            "1000",
            "nonce-0002",
            &body_digest(body),
        );
        let sig2 = sign(&ss, &sts2);
        assert!(
            verify(
                &secret,
                "abc",
                &parts("1000", "nonce-0002", &sig2, b"{}"),
                1010,
                300,
                &nonces
            )
            .is_err()
        );
        assert!(
            verify(
                &secret,
                "abd",
                &parts("1000", "nonce-0002", &sig2, body),
                1010,
                300,
                &nonces
            )
            .is_err()
        );
        assert!(
            verify(
                &secret,
                "abc",
                &parts("1000", "nonce-0002", &sig2, body),
                1400,
                300,
                &nonces
            )
            .is_err()
        );
        // A failed attempt did not use up the nonce.
        assert_eq!(
            verify(
                &secret,
                "abc",
                &parts("1000", "nonce-0002", &sig2, body),
                1010,
                300,
                &nonces
            ),
            Ok(())
        );
        assert!(
            verify(
                &secret,
                "abc",
                &parts("1000", "short", &sig2, body),
                1010,
                300,
                &nonces
            )
            .is_err()
        );
    }

    /// FIPS 180-2 / NIST example: SHA-256("abc").
    #[test]
    fn body_digest_is_sha256() {
        assert_eq!(
            body_digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
