//! Credentials on arbitrary bytes: API keys through the directory, bearer tokens through the
//! JWT verifier, signed-request headers through signature verification. Never panics, and
//! nothing but the real key verifies.
//! Run: cargo +nightly fuzz run credentials
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use palisade_keys::jwt::{JwtSettings, JwtVerifier, KeyMaterial, StaticKey};
use palisade_keys::key::{ApiKeyRecord, ServerSecret, hex, id_of};
use palisade_keys::signature::{NonceCache, SignedParts, verify};
use palisade_keys::KeyDirectory;

struct World {
    dir: KeyDirectory,
    jwt: JwtVerifier,
    secret: ServerSecret,
    nonces: NonceCache,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let secret = ServerSecret::from_bytes([9; 32]);
        let raw = "pal_abcdefghijkl_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";
        let rec = ApiKeyRecord {
            id: "abcdefghijkl".into(),
            name: String::new(),
            account: Some("acme".into()),
            scopes: vec![],
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            rate: None,
            daily_requests: None,
            daily_spend_usd: None,
            signed: false,
            rotated_from: None,
            rotated_to: None,
            hash: hex(&secret.key_hash(raw)),
        };
        let key = StaticKey::new(
            Some("k".into()),
            jsonwebtoken::Algorithm::HS256,
            &KeyMaterial::Secret(b"0123456789abcdef0123456789abcdef".to_vec()),
        )
        .unwrap();
        World {
            dir: KeyDirectory::new(secret.clone(), vec![rec]),
            jwt: JwtVerifier::new(
                JwtSettings {
                    header: http::header::AUTHORIZATION,
                    algorithms: vec![],
                    issuer: None,
                    audience: vec![],
                    leeway_secs: 0,
                    claims: vec![Arc::from("sub")],
                    account_claim: None,
                    scope_claim: "scope".into(),
                    jwks_url: None,
                    jwks_ca_file: None,
                    jwks_refresh: 0,
                },
                vec![key],
                vec![],
            ),
            secret,
            nonces: NonceCache::new(1000),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let s = String::from_utf8_lossy(data);
    if let Some(id) = id_of(&s) {
        assert!(s.contains(id));
    }
    assert!(w.dir.verify(&s, 1).is_err(), "only the real key verifies");
    let _ = w.jwt.verify(&s, 1);
    let mut parts = s.splitn(4, '\n');
    let (ts, nonce, sig) = (parts.next(), parts.next(), parts.next());
    let signed = SignedParts {
        method: "POST",
        path: "/x",
        query: "",
        timestamp: ts,
        nonce,
        signature: sig,
        body: data,
    };
    let _ = verify(&w.secret, "abcdefghijkl", &signed, 1, 300, &w.nonces);
});
