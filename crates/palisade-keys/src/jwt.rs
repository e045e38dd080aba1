//! JWT bearer tokens: HS256, RS256, ES256 and EdDSA, with keys from the config, a JWKS file or
//! a JWKS URL (fetched by the gateway).
//!
//! Signatures are checked by `jsonwebtoken`; `exp`, `nbf`, `iss` and `aud` are checked here
//! against the time the caller passes (so tests move a clock instead of sleeping). A token's
//! `alg` must equal its key's algorithm: a token cannot pick a weaker algorithm for a key.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderName;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use palisade_engine::Nanos;
use palisade_engine::model::principal::{AuthFailure, KeyBudget, Principal, PrincipalKind};
use serde_json::{Map, Value};

/// Longest token accepted; larger ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest claim value kept as an identity.
const MAX_CLAIM_LEN: usize = 256;

/// Parses an algorithm name.
pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    match s {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(format!(
            "`{other}` is not a supported algorithm; use HS256, RS256, ES256 or EdDSA"
        )),
    }
}

/// Key bytes from the config.
#[derive(Debug)]
pub enum KeyMaterial {
    /// An HMAC secret.
    Secret(Vec<u8>),
    /// A PEM-encoded public key.
    Pem(Vec<u8>),
}

/// A verification key.
#[derive(Clone)]
pub struct StaticKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl StaticKey {
    /// Builds a key, checking the material fits the algorithm.
    pub fn new(
        kid: Option<String>,
        algorithm: Algorithm,
        material: &KeyMaterial,
    ) -> Result<Self, String> {
        let key = match (algorithm, material) {
            (Algorithm::HS256, KeyMaterial::Secret(s)) => {
                if s.len() < 32 {
                    return Err("an HS256 secret must be at least 32 bytes".to_owned());
                }
                DecodingKey::from_secret(s)
            }
            (Algorithm::RS256, KeyMaterial::Pem(p)) => DecodingKey::from_rsa_pem(p)
                .map_err(|e| format!("not an RSA public key in PEM: {e}"))?,
            (Algorithm::ES256, KeyMaterial::Pem(p)) => DecodingKey::from_ec_pem(p)
                .map_err(|e| format!("not an EC (P-256) public key in PEM: {e}"))?,
            (Algorithm::EdDSA, KeyMaterial::Pem(p)) => DecodingKey::from_ed_pem(p)
                .map_err(|e| format!("not an Ed25519 public key in PEM: {e}"))?,
            (Algorithm::HS256, KeyMaterial::Pem(_)) => {
                return Err("HS256 takes a `secret`, not a PEM file".to_owned());
            }
            (_, KeyMaterial::Secret(_)) => {
                return Err(format!("{algorithm:?} takes a `pem_file`, not a secret"));
            }
            _ => return Err(format!("{algorithm:?} is not supported")),
        };
        Ok(Self {
            kid,
            algorithm,
            key,
        })
    }
}

/// Parses a JWKS document. Keys with an unsupported type or algorithm are skipped; a document
/// with no usable key is an error.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<StaticKey>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Some(Algorithm::EdDSA)
            }
            AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
            _ => None,
        };
        let declared = match jwk.common.key_algorithm {
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
            Some(KeyAlgorithm::HS256) => Some(Algorithm::HS256),
            Some(_) => None,
            None => inferred,
        };
        let (Some(algorithm), Some(inferred)) = (declared, inferred) else {
            continue;
        };
        if algorithm != inferred {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        out.push(StaticKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if out.is_empty() {
        return Err("no usable key (RS256, ES256, EdDSA or HS256) in the set".to_owned());
    }
    Ok(out)
}

/// Compiled `[jwt]` settings.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Header the token is read from.
    pub header: HeaderName,
    /// Accepted algorithms; empty means those of the keys.
    pub algorithms: Vec<Algorithm>,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Accepted audiences (any one); empty means `aud` is not checked.
    pub audience: Vec<String>,
    /// Allowed clock skew, seconds.
    pub leeway_secs: u64,
    /// Claims that become `jwt:<claim>` identities.
    pub claims: Vec<Arc<str>>,
    /// Claim naming the account.
    pub account_claim: Option<String>,
    /// Claim holding scopes (space-separated string or array).
    pub scope_claim: String,
    /// JWKS URL the gateway fetches (http or https).
    pub jwks_url: Option<http::Uri>,
    /// CA certificates (PEM) that sign the JWKS server's certificate, instead of the public
    /// web PKI roots.
    pub jwks_ca_file: Option<std::path::PathBuf>,
    /// Refresh period for the URL.
    pub jwks_refresh: Nanos,
}

/// Verifies bearer tokens.
#[derive(Debug)]
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: Vec<StaticKey>,
    file_keys: Vec<StaticKey>,
    url_keys: ArcSwap<Vec<StaticKey>>,
}

impl JwtVerifier {
    /// A verifier over inline and JWKS-file keys; URL keys are added with
    /// [`JwtVerifier::set_url_keys`].
    pub fn new(settings: JwtSettings, keys: Vec<StaticKey>, file_keys: Vec<StaticKey>) -> Self {
        Self {
            settings,
            keys,
            file_keys,
            url_keys: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Replaces the keys fetched from the JWKS URL.
    pub fn set_url_keys(&self, keys: Vec<StaticKey>) {
        self.url_keys.store(Arc::new(keys));
    }

    /// Number of keys fetched from the URL.
    pub fn url_key_count(&self) -> usize {
        self.url_keys.load().len()
    }

    /// Verifies a token at `now_unix` (seconds) and returns its principal.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Principal, AuthFailure> {
        let bad = AuthFailure::InvalidToken;
        if token.len() > MAX_TOKEN_LEN || token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(bad);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad)?;
        if !self.settings.algorithms.is_empty() && !self.settings.algorithms.contains(&header.alg) {
            return Err(bad);
        }
        let url_keys = self.url_keys.load();
        let candidates = self
            .keys
            .iter()
            .chain(self.file_keys.iter())
            .chain(url_keys.iter())
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .take(8);
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut claims: Option<Map<String, Value>> = None;
        for k in candidates {
            if let Ok(data) = jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation)
            {
                claims = Some(data.claims);
                break;
            }
        }
        let claims = claims.ok_or(bad)?;
        self.check_claims(&claims, now_unix)?;
        Ok(self.principal(&claims))
    }

    fn check_claims(&self, c: &Map<String, Value>, now: u64) -> Result<(), AuthFailure> {
        let bad = AuthFailure::InvalidToken;
        let leeway = self.settings.leeway_secs;
        let num = |name: &str| c.get(name).and_then(Value::as_f64);
        // `exp` is required: a token that never expires is not accepted.
        match num("exp") {
            Some(exp) if (now as f64) < exp + leeway as f64 => {}
            _ => return Err(bad),
        }
        if c.contains_key("nbf") {
            match num("nbf") {
                Some(nbf) if nbf <= (now + leeway) as f64 => {}
                _ => return Err(bad),
            }
        }
        if let Some(iss) = &self.settings.issuer
            && c.get("iss").and_then(Value::as_str) != Some(iss.as_str())
        {
            return Err(bad);
        }
        if !self.settings.audience.is_empty() {
            let ok = match c.get("aud") {
                Some(Value::String(a)) => self.settings.audience.contains(a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.settings.audience.iter().any(|w| w == a)),
                _ => false,
            };
            if !ok {
                return Err(bad);
            }
        }
        Ok(())
    }

    fn principal(&self, c: &Map<String, Value>) -> Principal {
        let text = |v: &Value| -> Option<Arc<str>> {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            let cut = s
                .char_indices()
                .nth(MAX_CLAIM_LEN)
                .map_or(s.len(), |(i, _)| i);
            s.get(..cut).map(Arc::from)
        };
        let claims = self
            .settings
            .claims
            .iter()
            .filter_map(|name| Some((name.clone(), text(c.get(&**name)?)?)))
            .collect();
        let account = self
            .settings
            .account_claim
            .as_ref()
            .and_then(|n| text(c.get(n)?));
        let scopes = match c.get(&self.settings.scope_claim) {
            Some(Value::String(s)) => s.split_whitespace().take(64).map(Arc::from).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .take(64)
                .map(Arc::from)
                .collect(),
            _ => Vec::new(),
        };
        Principal {
            kind: PrincipalKind::Jwt,
            key_id: None,
            account,
            scopes,
            claims,
            rate: None,
            budget: KeyBudget::default(),
            budget_items: None,
            created_ms: None,
        }
    }
}
