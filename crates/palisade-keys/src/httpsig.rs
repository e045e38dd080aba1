//! HTTP Message Signatures (RFC 9421) verification, and the Web Bot Auth rules on top
//! (draft-meunier-webbotauth-httpsig-protocol-02): signed agents — crawlers and AI agents that
//! sign their requests with a key published in their key directory.
//!
//! [`signature_base`] rebuilds the signature base of one label (RFC 9421 §2.5) from the request
//! (and, for a signed response, the response); [`PublicKey::verify`] checks the signature with
//! the algorithm the key and `alg` agree on (ed25519, ecdsa-p256-sha256, ecdsa-p384-sha384,
//! rsa-pss-sha512, rsa-v1_5-sha256, hmac-sha256); [`web_bot_auth`] adds the protocol's rules.
//! Every header is the client's: parsing is bounded and failures are values, never panics.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderMap;
use sfv::{BareItem, Dictionary, FieldType, Item, List, ListEntry, Parser};
use sha2::{Digest, Sha256};

/// Longest `Signature-Input` / `Signature` / `Signature-Agent` value read.
pub const MAX_FIELD: usize = 8 * 1024;

/// Most components one signature may cover.
pub const MAX_COMPONENTS: usize = 32;

/// One side of a signed exchange, as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The request method.
    pub method: &'a str,
    /// `https` or `http`.
    pub scheme: &'a str,
    /// The request's authority (the `Host` header), as sent.
    pub authority: &'a str,
    /// The path, as sent (not decoded).
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The request's header fields.
    pub headers: &'a HeaderMap,
}

/// A signed response, beside the request it answers (components with `;req` come from it).
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    /// The status code.
    pub status: u16,
    /// The response's header fields.
    pub headers: &'a HeaderMap,
}

/// Why a signature could not be checked or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `Signature-Input` / `Signature` for the label.
    #[error("no signature labelled `{0}`")]
    NoSignature(String),
    /// A header that does not parse as the structured field it must be.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A covered component the message does not have.
    #[error("covered component {0} is missing")]
    MissingComponent(String),
    /// A component or parameter this verifier does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The key cannot be used (bad JWK, or not usable with `alg`).
    #[error("key: {0}")]
    Key(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    Mismatch,
}

/// A signature's parameters and what it covers, with its base.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signed {
    /// The label.
    pub label: String,
    /// The covered component identifiers, serialized (`"@authority"`,
    /// `"signature-agent";key="agent1"`).
    pub components: Vec<String>,
    /// `created`.
    pub created: Option<i64>,
    /// `expires`.
    pub expires: Option<i64>,
    /// `keyid`.
    pub keyid: Option<String>,
    /// `alg`.
    pub alg: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
    /// `nonce`.
    pub nonce: Option<String>,
    /// The signature base (RFC 9421 §2.5).
    pub base: String,
    /// The signature's bytes.
    pub signature: Vec<u8>,
}

fn field<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, SigError> {
    let mut it = headers.get_all(name).iter();
    let Some(first) = it.next() else {
        return Ok(None);
    };
    if it.next().is_some() {
        // Several lines: joined as one dictionary, as a recipient must.
        return Err(SigError::Malformed(name));
    }
    let v = first.to_str().map_err(|_| SigError::Malformed(name))?;
    if v.len() > MAX_FIELD {
        return Err(SigError::Malformed(name));
    }
    Ok(Some(v))
}

/// A dictionary header, with multiple field lines combined.
fn dictionary(headers: &HeaderMap, name: &'static str) -> Result<Option<Dictionary>, SigError> {
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().map_err(|_| SigError::Malformed(name)))
        .collect::<Result<_, _>>()?;
    if lines.is_empty() {
        return Ok(None);
    }
    let joined = lines.join(", ");
    if joined.len() > MAX_FIELD {
        return Err(SigError::Malformed(name));
    }
    Parser::new(&joined)
        .parse_dictionary()
        .map(Some)
        .map_err(|_| SigError::Malformed(name))
}

/// The labels of the signatures a message carries.
pub fn labels(headers: &HeaderMap) -> Vec<String> {
    dictionary(headers, "signature-input")
        .ok()
        .flatten()
        .map(|d| d.keys().map(|k| k.as_str().to_owned()).collect())
        .unwrap_or_default()
}

fn serialize_entry(e: &ListEntry) -> Option<String> {
    match e {
        ListEntry::Item(i) => Some(i.serialize()),
        ListEntry::InnerList(_) => {
            let l: List = vec![e.clone()];
            l.serialize()
        }
    }
}

/// The values of a header field's lines, each trimmed, joined by `, ` (RFC 9421 §2.1).
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let parts: Vec<String> = lines
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .collect();
    Some(parts.join(", "))
}

/// `@authority`: the host, lowercased, without the scheme's default port.
fn authority(m: &Message<'_>) -> String {
    let a = m.authority.trim().to_ascii_lowercase();
    let default = if m.scheme == "https" { ":443" } else { ":80" };
    match a.strip_suffix(default) {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => a,
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    fn decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'+' => out.push(b' '),
                b'%' => match b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(c),
                },
                _ => out.push(c),
            }
            i += 1;
        }
        out
    }
    fn encode(b: &[u8]) -> String {
        let mut s = String::with_capacity(b.len());
        for &c in b {
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                s.push(char::from(c));
            } else {
                let _ = write!(s, "%{c:02X}");
            }
        }
        s
    }
    let q = query?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name.as_bytes()).then(|| encode(&decode(v)))
    })
}

/// One covered component's value.
fn component_value(
    item: &Item,
    req: &Message<'_>,
    resp: Option<&Response<'_>>,
) -> Result<String, SigError> {
    let id = item.serialize();
    let name = match &item.bare_item {
        BareItem::String(s) => s.as_str().to_owned(),
        _ => return Err(SigError::Malformed("covered component")),
    };
    let has = |p: &str| item.params.contains_key(p);
    if has("tr") {
        return Err(SigError::Unsupported(format!("{id} (trailers)")));
    }
    let from_request = has("req") || resp.is_none();
    let missing = || SigError::MissingComponent(id.clone());
    if let Some(derived) = name.strip_prefix('@') {
        return match derived {
            "method" => Ok(req.method.to_owned()),
            "authority" => Ok(authority(req)),
            "scheme" => Ok(req.scheme.to_ascii_lowercase()),
            "path" => Ok(if req.path.is_empty() {
                "/".to_owned()
            } else {
                req.path.to_owned()
            }),
            "query" => Ok(format!("?{}", req.query.unwrap_or(""))),
            "request-target" => Ok(match req.query {
                Some(q) => format!("{}?{q}", req.path),
                None => req.path.to_owned(),
            }),
            "target-uri" => Ok(format!(
                "{}://{}{}{}",
                req.scheme.to_ascii_lowercase(),
                authority(req),
                if req.path.is_empty() { "/" } else { req.path },
                req.query.map(|q| format!("?{q}")).unwrap_or_default()
            )),
            "query-param" => {
                let Some(BareItem::String(n)) = item.params.get("name") else {
                    return Err(SigError::Malformed("@query-param without name"));
                };
                query_param(req.query, n.as_str()).ok_or_else(missing)
            }
            "status" if !from_request => Ok(resp.map(|r| r.status.to_string()).unwrap_or_default()),
            other => Err(SigError::Unsupported(format!("@{other}"))),
        };
    }
    let headers = match (from_request, resp) {
        (false, Some(r)) => r.headers,
        _ => req.headers,
    };
    if let Some(key) = item.params.get("key") {
        let BareItem::String(key) = key else {
            return Err(SigError::Malformed("key parameter"));
        };
        let raw = header_value(headers, &name).ok_or_else(missing)?;
        let dict = Parser::new(&raw)
            .parse_dictionary::<Dictionary>()
            .map_err(|_| SigError::Malformed("dictionary field"))?;
        let member = dict
            .iter()
            .find(|(k, _)| k.as_str() == key.as_str())
            .map(|(_, v)| v)
            .ok_or_else(missing)?;
        return serialize_entry(member).ok_or(SigError::Malformed("dictionary member"));
    }
    if has("sf") {
        let raw = header_value(headers, &name).ok_or_else(missing)?;
        if let Ok(d) = Parser::new(&raw).parse_dictionary::<Dictionary>() {
            return d.serialize().ok_or(SigError::Malformed("structured field"));
        }
        if let Ok(l) = Parser::new(&raw).parse_list::<List>() {
            return l.serialize().ok_or(SigError::Malformed("structured field"));
        }
        return Err(SigError::Malformed("structured field"));
    }
    if has("bs") {
        let mut lines = headers.get_all(name.as_str()).iter().peekable();
        lines.peek().ok_or_else(missing)?;
        let parts: Vec<String> = lines
            .map(|v| {
                let trimmed = String::from_utf8_lossy(v.as_bytes()).trim().to_owned();
                format!(":{}:", STANDARD.encode(trimmed.as_bytes()))
            })
            .collect();
        return Ok(parts.join(", "));
    }
    header_value(headers, &name).ok_or_else(missing)
}

/// Rebuilds the signature base of `label` (RFC 9421 §2.5) and reads its parameters and
/// signature. For a signed response, `resp` is the response and `req` the request it answers.
pub fn signature_base(
    req: &Message<'_>,
    resp: Option<&Response<'_>>,
    label: &str,
) -> Result<Signed, SigError> {
    let headers = resp.map_or(req.headers, |r| r.headers);
    let inputs = dictionary(headers, "signature-input")?
        .ok_or_else(|| SigError::NoSignature(label.to_owned()))?;
    let sigs =
        dictionary(headers, "signature")?.ok_or_else(|| SigError::NoSignature(label.to_owned()))?;
    let input = inputs
        .iter()
        .find(|(k, _)| k.as_str() == label)
        .map(|(_, v)| v)
        .ok_or_else(|| SigError::NoSignature(label.to_owned()))?;
    let ListEntry::InnerList(list) = input else {
        return Err(SigError::Malformed("signature-input"));
    };
    let signature = match sigs
        .iter()
        .find(|(k, _)| k.as_str() == label)
        .map(|(_, v)| v)
    {
        Some(ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(b),
            ..
        })) => b.clone(),
        Some(_) => return Err(SigError::Malformed("signature")),
        None => return Err(SigError::NoSignature(label.to_owned())),
    };
    if list.items.len() > MAX_COMPONENTS {
        return Err(SigError::Malformed("signature-input (too many components)"));
    }
    let mut s = Signed {
        label: label.to_owned(),
        signature,
        ..Default::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for item in &list.items {
        let id = item.serialize();
        if seen.contains(&id) {
            return Err(SigError::Malformed("signature-input (repeated component)"));
        }
        let value = component_value(item, req, resp)?;
        if value.contains('\n') {
            return Err(SigError::Malformed("component value with a newline"));
        }
        s.base.push_str(&id);
        s.base.push_str(": ");
        s.base.push_str(&value);
        s.base.push('\n');
        seen.push(id);
    }
    let params = serialize_entry(input).ok_or(SigError::Malformed("signature-input"))?;
    s.base.push_str("\"@signature-params\": ");
    s.base.push_str(&params);
    let text = |k: &str| match list.params.get(k) {
        Some(BareItem::String(v)) => Some(v.as_str().to_owned()),
        Some(BareItem::Token(v)) => Some(v.as_str().to_owned()),
        _ => None,
    };
    let int = |k: &str| match list.params.get(k) {
        Some(BareItem::Integer(v)) => Some(i64::from(*v)),
        _ => None,
    };
    s.created = int("created");
    s.expires = int("expires");
    s.keyid = text("keyid");
    s.alg = text("alg");
    s.tag = text("tag");
    s.nonce = text("nonce");
    s.components = seen;
    Ok(s)
}

/// A verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Ed25519 (32 bytes).
    Ed25519(Vec<u8>),
    /// ECDSA P-256, uncompressed point.
    P256(Vec<u8>),
    /// ECDSA P-384, uncompressed point.
    P384(Vec<u8>),
    /// RSA modulus and exponent.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Exponent.
        e: Vec<u8>,
    },
    /// HMAC shared secret.
    Hmac(Vec<u8>),
}

fn b64url(v: &serde_json::Value, k: &str) -> Result<Vec<u8>, SigError> {
    let s = v
        .get(k)
        .and_then(|x| x.as_str())
        .ok_or_else(|| SigError::Key(format!("JWK without `{k}`")))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| SigError::Key(format!("JWK `{k}` is not base64url")))
}

impl PublicKey {
    /// A key from a public JWK (OKP Ed25519, EC P-256/P-384, RSA; `oct` for HMAC).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, SigError> {
        let kty = jwk.get("kty").and_then(|v| v.as_str()).unwrap_or("");
        let crv = jwk.get("crv").and_then(|v| v.as_str()).unwrap_or("");
        match (kty, crv) {
            ("OKP", "Ed25519") => Ok(PublicKey::Ed25519(b64url(jwk, "x")?)),
            ("EC", "P-256" | "P-384") => {
                let mut point = vec![4u8];
                point.extend(b64url(jwk, "x")?);
                point.extend(b64url(jwk, "y")?);
                Ok(if crv == "P-256" {
                    PublicKey::P256(point)
                } else {
                    PublicKey::P384(point)
                })
            }
            ("RSA", _) => Ok(PublicKey::Rsa {
                n: b64url(jwk, "n")?,
                e: b64url(jwk, "e")?,
            }),
            ("oct", _) => Ok(PublicKey::Hmac(b64url(jwk, "k")?)),
            _ => Err(SigError::Key(format!(
                "unsupported JWK kty `{kty}` crv `{crv}`"
            ))),
        }
    }

    /// Verifies `signature` over `base` with `alg` (or the key's only algorithm).
    pub fn verify(&self, alg: Option<&str>, base: &[u8], signature: &[u8]) -> Result<(), SigError> {
        use aws_lc_rs::signature as sig;
        let mismatch = |a: &str| SigError::Key(format!("alg `{a}` does not fit this key"));
        let ok = match (self, alg) {
            (PublicKey::Ed25519(k), None | Some("ed25519")) => {
                sig::UnparsedPublicKey::new(&sig::ED25519, k)
                    .verify(base, signature)
                    .is_ok()
            }
            (PublicKey::P256(k), None | Some("ecdsa-p256-sha256")) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, k)
                    .verify(base, signature)
                    .is_ok()
            }
            (PublicKey::P384(k), None | Some("ecdsa-p384-sha384")) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, k)
                    .verify(base, signature)
                    .is_ok()
            }
            (PublicKey::Rsa { n, e }, Some("rsa-pss-sha512") | None) => {
                sig::RsaPublicKeyComponents { n, e }
                    .verify(&sig::RSA_PSS_2048_8192_SHA512, base, signature)
                    .is_ok()
            }
            (PublicKey::Rsa { n, e }, Some("rsa-v1_5-sha256")) => {
                sig::RsaPublicKeyComponents { n, e }
                    .verify(&sig::RSA_PKCS1_2048_8192_SHA256, base, signature)
                    .is_ok()
            }
            (PublicKey::Hmac(k), None | Some("hmac-sha256")) => {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k);
                aws_lc_rs::hmac::verify(&key, base, signature).is_ok()
            }
            (_, Some(a)) => return Err(mismatch(a)),
        };
        if ok { Ok(()) } else { Err(SigError::Mismatch) }
    }
}

/// The JWK thumbprint (RFC 7638; RFC 8037 §A.3 for OKP): base64url SHA-256 of the key's
/// required members in lexicographic order.
pub fn jwk_thumbprint(jwk: &serde_json::Value) -> Option<String> {
    let kty = jwk.get("kty")?.as_str()?;
    let members: &[&str] = match kty {
        "OKP" => &["crv", "kty", "x"],
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "oct" => &["k", "kty"],
        _ => return None,
    };
    let mut canonical = String::from("{");
    for (i, m) in members.iter().enumerate() {
        let v = jwk.get(*m)?.as_str()?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&serde_json::to_string(m).ok()?);
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(v).ok()?);
    }
    canonical.push('}');
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// How a request presents its `Signature-Agent` (protocol-02 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentHeader {
    /// No `Signature-Agent` header.
    Absent,
    /// Present but not covered by the signature.
    NotCovered,
    /// A covered dictionary member: its key and URI.
    Member {
        /// The member's key.
        key: String,
        /// The agent's URI (its key directory's origin).
        uri: String,
    },
    /// The legacy form: a covered string.
    Legacy(String),
    /// Covered, but the member named is missing.
    MemberMissing,
}

/// The Web Bot Auth rules a signature passed or failed (protocol-02).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    /// `tag="web-bot-auth"`.
    pub tag_is_web_bot_auth: bool,
    /// `created` present.
    pub created_present: bool,
    /// `expires` present.
    pub expires_present: bool,
    /// `created` is not after now.
    pub created_not_in_future: bool,
    /// now is before `expires`.
    pub not_expired: bool,
    /// `@authority` or `@target-uri` covered.
    pub authority_or_target_uri_covered: bool,
    /// `keyid` is the key's JWK thumbprint.
    pub keyid_is_jwk_thumbprint: bool,
    /// Not a shared-secret (HMAC) signature.
    pub not_hmac: bool,
}

impl Checks {
    /// The name of the first rule that failed, if any.
    pub fn failure(&self) -> Option<&'static str> {
        [
            (self.tag_is_web_bot_auth, "tag"),
            (self.created_present, "created_missing"),
            (self.expires_present, "expires_missing"),
            (self.created_not_in_future, "created_in_future"),
            (self.not_expired, "expired"),
            (
                self.authority_or_target_uri_covered,
                "authority_not_covered",
            ),
            (self.keyid_is_jwk_thumbprint, "keyid_not_thumbprint"),
            (self.not_hmac, "hmac_not_allowed"),
        ]
        .into_iter()
        .find(|(ok, _)| !ok)
        .map(|(_, name)| name)
    }
}

/// The Web Bot Auth view of one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebBotAuth {
    /// The signature's parameters and base.
    pub signed: Signed,
    /// Whether the signature verified with the key.
    pub signature_valid: bool,
    /// The protocol's rules.
    pub checks: Checks,
    /// The `Signature-Agent` header as the signature covers it.
    pub agent: AgentHeader,
}

impl WebBotAuth {
    /// Valid under protocol-02 as a verifier that requires the dictionary form.
    pub fn valid_strict(&self) -> bool {
        self.signature_valid
            && self.checks.failure().is_none()
            && matches!(self.agent, AgentHeader::Member { .. })
    }

    /// Why it is not valid (strict), as a short code.
    pub fn failure(&self) -> Option<&'static str> {
        if !self.signature_valid {
            return Some("signature_mismatch");
        }
        if let Some(f) = self.checks.failure() {
            return Some(f);
        }
        match self.agent {
            AgentHeader::Member { .. } => None,
            AgentHeader::Absent => Some("signature_agent_missing"),
            AgentHeader::NotCovered => Some("signature_agent_not_covered"),
            AgentHeader::Legacy(_) => Some("signature_agent_legacy_form"),
            AgentHeader::MemberMissing => Some("covered_member_missing"),
        }
    }
}

/// Checks one labelled signature of a request under Web Bot Auth, with the key `jwk` (found
/// by the signature's `keyid`), at `now` (Unix seconds).
pub fn web_bot_auth(
    req: &Message<'_>,
    label: &str,
    jwk: &serde_json::Value,
    now: i64,
) -> Result<WebBotAuth, SigError> {
    web_bot_auth_of(req, signature_base(req, None, label)?, jwk, now)
}

/// [`web_bot_auth`] for a signature whose base is already built (by [`signature_base`] on the
/// same request).
pub fn web_bot_auth_of(
    req: &Message<'_>,
    signed: Signed,
    jwk: &serde_json::Value,
    now: i64,
) -> Result<WebBotAuth, SigError> {
    let key = PublicKey::from_jwk(jwk)?;
    let signature_valid = match key.verify(
        signed.alg.as_deref(),
        signed.base.as_bytes(),
        &signed.signature,
    ) {
        Ok(()) => true,
        Err(SigError::Mismatch) => false,
        Err(e) => return Err(e),
    };
    let covered = |c: &str| signed.components.iter().any(|x| x == c);
    let checks = Checks {
        tag_is_web_bot_auth: signed.tag.as_deref() == Some("web-bot-auth"),
        created_present: signed.created.is_some(),
        expires_present: signed.expires.is_some(),
        created_not_in_future: signed.created.is_some_and(|c| c <= now),
        not_expired: signed.expires.is_some_and(|e| now < e),
        authority_or_target_uri_covered: covered("\"@authority\"") || covered("\"@target-uri\""),
        keyid_is_jwk_thumbprint: signed.keyid.is_some() && signed.keyid == jwk_thumbprint(jwk),
        not_hmac: !matches!(key, PublicKey::Hmac(_))
            && signed.alg.as_deref() != Some("hmac-sha256"),
    };
    let agent = if req.headers.get("signature-agent").is_none() {
        AgentHeader::Absent
    } else {
        let member = signed.components.iter().find_map(|c| {
            let item = Parser::new(c).parse_item::<Item>().ok()?;
            match &item.bare_item {
                BareItem::String(s) if s.as_str() == "signature-agent" => {
                    Some(item.params.get("key").cloned())
                }
                _ => None,
            }
        });
        match member {
            None => AgentHeader::NotCovered,
            Some(Some(BareItem::String(key))) => {
                match dictionary(req.headers, "signature-agent")
                    .ok()
                    .flatten()
                    .and_then(|d| {
                        d.iter()
                            .find(|(k, _)| k.as_str() == key.as_str())
                            .map(|(_, v)| v.clone())
                    }) {
                    Some(ListEntry::Item(Item {
                        bare_item: BareItem::String(uri),
                        ..
                    })) => AgentHeader::Member {
                        key: key.as_str().to_owned(),
                        uri: uri.as_str().to_owned(),
                    },
                    _ => AgentHeader::MemberMissing,
                }
            }
            Some(_) => match field(req.headers, "signature-agent")?
                .and_then(|v| Parser::new(v).parse_item::<Item>().ok())
            {
                Some(Item {
                    bare_item: BareItem::String(uri),
                    ..
                }) => AgentHeader::Legacy(uri.as_str().to_owned()),
                _ => AgentHeader::MemberMissing,
            },
        }
    };
    Ok(WebBotAuth {
        signed,
        signature_valid,
        checks,
        agent,
    })
}

/// The agent URIs a request's `Signature-Agent` names: every string member of the dictionary
/// form, or the legacy single string (at most four, each at most 2 KiB).
pub fn agent_uris(headers: &HeaderMap) -> Vec<String> {
    let strings = |v: &BareItem| match v {
        BareItem::String(s) if s.as_str().len() <= 2048 => Some(s.as_str().to_owned()),
        _ => None,
    };
    if let Ok(Some(d)) = dictionary(headers, "signature-agent") {
        let members: Vec<String> = d
            .values()
            .filter_map(|e| match e {
                ListEntry::Item(i) => strings(&i.bare_item),
                ListEntry::InnerList(_) => None,
            })
            .take(4)
            .collect();
        if !members.is_empty() {
            return members;
        }
    }
    field(headers, "signature-agent")
        .ok()
        .flatten()
        .and_then(|v| Parser::new(v).parse_item::<Item>().ok())
        .and_then(|i| strings(&i.bare_item))
        .into_iter()
        .collect()
}

/// Most keys read from one key directory.
pub const MAX_DIRECTORY_KEYS: usize = 32;

/// What a key directory response's signatures show (the `http-message-signatures-directory`
/// tag, draft-meunier-http-message-signatures-directory §5.2 and protocol-02).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryKeys {
    /// Usable public keys by JWK thumbprint: those with a valid directory signature, or every
    /// key if the response carries no directory signature and that is allowed.
    pub keys: Vec<(String, serde_json::Value)>,
    /// Whether the keys kept are each proven by a valid directory signature.
    pub signed: bool,
}

/// Whether a `Content-Digest` (RFC 9530; sha-256 or sha-512) matches `body`. `None` without a
/// digest Palisade can check.
pub fn content_digest_matches(headers: &HeaderMap, body: &[u8]) -> Option<bool> {
    let d = dictionary(headers, "content-digest").ok().flatten()?;
    let mut checked = None;
    for (alg, v) in &d {
        let ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(bytes),
            ..
        }) = v
        else {
            return Some(false);
        };
        let ours: Vec<u8> = match alg.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => sha2::Sha512::digest(body).to_vec(),
            _ => continue,
        };
        if &ours != bytes {
            return Some(false);
        }
        checked = Some(true);
    }
    checked
}

/// The usable keys of a key directory `body` served as `headers` in answer to `req` (a GET of
/// the directory), at `now`: JWKs that parse (never shared secrets), inside their `nbf`/`exp`,
/// at most [`MAX_DIRECTORY_KEYS`]. A key is proven when a signature tagged
/// `http-message-signatures-directory`, covering `"@authority";req` (and, when covered, a
/// `content-digest` that matches the body), created by now and not expired, verifies with it.
/// With proven keys only those are kept; a response whose directory signatures all fail gives
/// no key; one without any gives every key unless `require_signed`.
pub fn directory_keys(
    req: &Message<'_>,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    require_signed: bool,
) -> Result<DirectoryKeys, &'static str> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|_| "directory_not_json")?;
    let listed = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("directory_without_keys")?;
    let in_time = |jwk: &serde_json::Value, k: &str, ok: fn(i64, i64) -> bool| {
        jwk.get(k)
            .and_then(|v| v.as_i64())
            .is_none_or(|t| ok(t, now))
    };
    let candidates: Vec<(String, serde_json::Value, PublicKey)> = listed
        .iter()
        .take(MAX_DIRECTORY_KEYS)
        .filter(|jwk| {
            in_time(jwk, "nbf", |t, now| t <= now) && in_time(jwk, "exp", |t, now| now < t)
        })
        .filter_map(|jwk| {
            let key = PublicKey::from_jwk(jwk).ok()?;
            if matches!(key, PublicKey::Hmac(_)) {
                return None;
            }
            Some((jwk_thumbprint(jwk)?, jwk.clone(), key))
        })
        .collect();
    let resp = Response { status, headers };
    let digest = content_digest_matches(headers, body);
    let mut tried = false;
    let mut proven: Vec<&str> = Vec::new();
    for label in labels(headers).into_iter().take(MAX_DIRECTORY_KEYS) {
        let Ok(s) = signature_base(req, Some(&resp), &label) else {
            continue;
        };
        if s.tag.as_deref() != Some("http-message-signatures-directory") {
            continue;
        }
        tried = true;
        let covers = |c: &str| s.components.iter().any(|x| x == c);
        let timely = s.created.is_some_and(|c| c <= now + 60) && s.expires.is_none_or(|e| now < e);
        let digest_ok =
            digest != Some(false) && (!covers("\"content-digest\"") || digest == Some(true));
        if !covers("\"@authority\";req") || !timely || !digest_ok {
            continue;
        }
        let Some((thumb, _, key)) = candidates
            .iter()
            .find(|(t, _, _)| s.keyid.as_deref() == Some(t.as_str()))
        else {
            continue;
        };
        if key
            .verify(s.alg.as_deref(), s.base.as_bytes(), &s.signature)
            .is_ok()
        {
            proven.push(thumb);
        }
    }
    if !proven.is_empty() {
        let keys = candidates
            .iter()
            .filter(|(t, _, _)| proven.contains(&t.as_str()))
            .map(|(t, j, _)| (t.clone(), j.clone()))
            .collect();
        return Ok(DirectoryKeys { keys, signed: true });
    }
    if tried {
        return Err("directory_signature_invalid");
    }
    if require_signed {
        return Err("directory_unsigned");
    }
    if digest == Some(false) {
        return Err("content_digest_mismatch");
    }
    Ok(DirectoryKeys {
        keys: candidates.into_iter().map(|(t, j, _)| (t, j)).collect(),
        signed: false,
    })
}
