//! The request-facts phase: what the request is, before anything is decided. Bounds that no
//! server enforces for every protocol, the canonical path (or a refusal), and everything the
//! engine reads about the request — credentials as verified, a signed request's body, a login's
//! username, fingerprints, what is known of the address, a bot's claim.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use palisade_engine::RouteId;
use palisade_engine::model::principal::{AuthFailure, PrincipalKind};
use palisade_engine::request::path::{Ambiguities, canonicalize};
use palisade_intel::ja4h::HttpVersion;
use palisade_keys::signature::{
    self, NONCE_HEADER, SIGNATURE_HEADER, SignedParts, TIMESTAMP_HEADER,
};

use crate::auth::{Authenticated, authenticate, presented};
use crate::listen::ClientBody;
use crate::refusal::Refusal;
use crate::wire::body::{ClientFault, client_fault};
use crate::{Runtime, Shared};

/// A request refused before the engine saw it: the answer and the rule it is counted under.
pub type Bounded = (Refusal, &'static str);

/// Checks the request's bounds and protocol, and puts its path in canonical form (the path the
/// upstream will receive). Returns what is ambiguous about the path, for the route to allow.
#[inline]
pub fn admit(rt: &Runtime, parts: &mut http::request::Parts) -> Result<Ambiguities, Bounded> {
    let server = &rt.compiled.server;
    let head_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if parts.headers.len() > server.max_header_count || head_bytes > server.max_header_bytes {
        return Err((Refusal::HeadersTooLarge, "bounds/headers"));
    }
    let declared = palisade_engine::request::header(&parts.headers, &CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > server.max_body_bytes) {
        return Err((Refusal::BodyTooLarge, "bounds/body"));
    }
    // HTTP/2: a Host naming another authority than `:authority` is malformed (RFC 9113
    // section 8.3.1), rather than a choice between two hosts.
    if parts.version == http::Version::HTTP_2
        && let (Some(a), Some(h)) = (parts.uri.authority(), parts.headers.get(HOST))
        && !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes())
    {
        return Err((Refusal::BadRequest, "bounds/authority"));
    }
    if parts.method == http::Method::CONNECT {
        return Err((Refusal::MethodNotAllowed, "bounds/method"));
    }
    // `OPTIONS *` asks about the server, not a resource: forwarded as it is.
    if parts.method == http::Method::OPTIONS && parts.uri.path() == "*" {
        return Ok(Ambiguities::NONE);
    }
    let c = canonicalize(parts.uri.path()).map_err(|_| (Refusal::InvalidPath, "bounds/path"))?;
    let found = c.ambiguities;
    if let Cow::Owned(path) = c.path {
        parts.uri = with_path(&parts.uri, &path).ok_or((Refusal::InvalidPath, "bounds/path"))?;
    }
    Ok(found)
}

/// Whether the route takes the path's ambiguities (an ambiguous path goes only where its route
/// says the upstream reads them as data).
#[inline]
pub fn path_allowed(rt: &Runtime, route: RouteId, ambiguities: Ambiguities) -> bool {
    ambiguities.is_empty()
        || rt
            .compiled
            .policy
            .route(route)
            .is_some_and(|r| r.allow_in_path.contains(ambiguities))
}

/// `uri` with its path replaced by `path` (the query kept).
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok()?);
    http::Uri::from_parts(parts).ok()
}

/// What the engine reads about a request beyond its head, owned here for the facts to borrow.
pub struct Gathered {
    /// The presented API key, unverified (for the decoy-key check).
    pub presented_key: Option<String>,
    /// The credential, as verified.
    pub authn: Authenticated,
    /// The body, when it had to be read (a signed request, a login): forwarded from here.
    pub buffered: Option<Bytes>,
    /// The body still to be streamed, otherwise.
    pub body: Option<ClientBody>,
    /// A login's username (the engine hashes it; it is never kept).
    pub username: Option<Vec<u8>>,
    /// JA4H, when the policy reads it.
    pub ja4h: Option<String>,
    /// The header fingerprint, when the policy reads it.
    pub hfp: Option<palisade_intel::hfp::Fingerprint>,
    /// What is known of the client's address.
    pub ip_info: Option<palisade_intel::ipinfo::IpInfo>,
    /// A claim to be a verifiable bot: which one, and its state.
    pub bot_verification: Option<(usize, palisade_intel::verify::VerifyStatus)>,
}

/// Gathers what the engine reads without waiting: credentials (verified once), JA4H, address
/// intelligence and a bot's claim. A body the policy must read comes after ([`read_body`]).
#[inline(always)]
pub fn gather(
    shared: &Shared,
    rt: &Runtime,
    parts: &http::request::Parts,
    body: ClientBody,
    route: RouteId,
    client: std::net::IpAddr,
) -> Gathered {
    // The credentials are read once: for authentication and for the decoy-key check.
    let credentials = presented(rt, &parts.headers);
    let presented_key = credentials.0.map(str::to_owned);
    let authn = match rt.compiled.policy.route(route) {
        Some(spec) => authenticate(shared, rt, &parts.headers, spec, credentials),
        None => Authenticated::Anonymous,
    };
    // JA4H, when the policy reads it (otherwise it is computed only for a logged decision).
    let ja4h = rt.engine.wants_ja4h().then(|| ja4h_of(parts));
    let hfp = rt.engine.wants_hfp().then(|| hfp_of(parts));
    let ip_info = rt
        .compiled
        .policy
        .intel
        .as_ref()
        .and_then(|i| i.db.lookup(client));
    // A claim to be a verifiable bot (Googlebot, ...): its state, from ranges, cache or DNS.
    let bot_verification = rt.compiled.policy.bots.as_ref().and_then(|b| {
        if b.verified.is_empty() {
            return None;
        }
        let ua = palisade_engine::request::header(&parts.headers, &http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())?;
        let i = rt.engine.claimed_bot(ua)?;
        let bot = b.verified.get(i)?;
        Some((i, shared.verifier.status(bot, client, &b.dns_servers)))
    });
    Gathered {
        presented_key,
        authn,
        buffered: None,
        body: Some(body),
        username: None,
        ja4h,
        hfp,
        ip_info,
        bot_verification,
    }
}

/// The stuffing route's settings, when `route` is it.
pub(crate) fn stuffing_on(
    rt: &Runtime,
    route: RouteId,
) -> Option<&palisade_engine::behaviour::StuffingSpec> {
    rt.compiled
        .policy
        .behaviour
        .as_ref()
        .and_then(|b| b.stuffing.as_ref())
        .filter(|s| s.route == route)
}

/// Whether the policy must read the body before deciding: a key that signs its requests, or a
/// login on the stuffing route.
pub fn needs_body(
    rt: &Runtime,
    parts: &http::request::Parts,
    route: RouteId,
    g: &Gathered,
) -> bool {
    g.authn.key_needing_signature().is_some()
        || stuffing_on(rt, route).is_some()
        || probes_read_body(rt, parts).is_some()
        || rt
            .compiled
            .openapi
            .as_ref()
            .is_some_and(|api| api.needs_body(&parts.method, parts.uri.path()))
}

/// Reads the body the policy needs (bounded): checks a signed request's signature and digest,
/// and takes a login's username (hashed by the engine, never kept).
pub async fn read_body(
    shared: &Shared,
    rt: &Runtime,
    parts: &http::request::Parts,
    route: RouteId,
    unix_ms: u64,
    g: &mut Gathered,
) -> Result<(), Bounded> {
    let server = &rt.compiled.server;
    if let Some(entry) = g.authn.key_needing_signature().cloned() {
        let incoming = g
            .body
            .take()
            .ok_or((Refusal::BadRequest, "bounds/body_read"))?;
        let bytes = read_bounded(shared, incoming, server.max_body_bytes).await?;
        let signed = SignedParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            timestamp: header_str(&parts.headers, TIMESTAMP_HEADER),
            nonce: header_str(&parts.headers, NONCE_HEADER),
            signature: header_str(&parts.headers, SIGNATURE_HEADER),
            body: &bytes,
        };
        if signature::verify(
            shared.keys.directory.secret(),
            &entry.record.id,
            &signed,
            unix_ms / 1000,
            rt.compiled.keys.signature_window_secs,
            &shared.keys.nonces,
        )
        .is_err()
        {
            g.authn = Authenticated::Failed {
                kind: PrincipalKind::ApiKey,
                failure: AuthFailure::InvalidSignature,
            };
        }
        g.buffered = Some(bytes);
    }
    if let Some(st) = stuffing_on(rt, route) {
        let bytes = match (g.buffered.take(), g.body.take()) {
            (Some(b), _) => Some(b),
            (None, Some(incoming)) => {
                let max = server.max_body_bytes.min(st.max_body as u64);
                Some(read_bounded(shared, incoming, max).await?)
            }
            (None, None) => None,
        };
        if let Some(b) = &bytes {
            g.username = username_in(b, &st.username_field, &parts.headers);
        }
        g.buffered = bytes;
    }
    // A JSON body the API's contract describes: read (bounded by the spec's max_body) to be
    // validated, then forwarded as read.
    if let Some(api) = &rt.compiled.openapi
        && g.buffered.is_none()
        && api.needs_body(&parts.method, parts.uri.path())
        && let Some(incoming) = g.body.take()
    {
        let max = server.max_body_bytes.min(api.max_body as u64);
        g.buffered = Some(read_bounded(shared, incoming, max).await?);
    }
    // A JSON or form body small enough to scan for injection probes.
    if g.buffered.is_none()
        && let Some(max) = probes_read_body(rt, parts)
        && let Some(incoming) = g.body.take()
    {
        g.buffered = Some(read_bounded(shared, incoming, max.min(server.max_body_bytes)).await?);
    }
    Ok(())
}

/// The body's kind when it is one the probe scan reads: JSON or a form.
fn scanned_body_kind(headers: &http::HeaderMap) -> Option<BodyKind> {
    match palisade_config::openapi::media_type(headers)?.as_str() {
        "application/x-www-form-urlencoded" => Some(BodyKind::Form),
        "application/json" => Some(BodyKind::Json),
        m if m.len() > 5 && m.ends_with("+json") => Some(BodyKind::Json),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum BodyKind {
    Json,
    Form,
}

/// `Some(bound)` when `[probes]` scans this request's body: JSON or a form, with a declared
/// length within `max_body` (a longer or unannounced one is forwarded unscanned, never
/// refused for its size).
fn probes_read_body(rt: &Runtime, parts: &http::request::Parts) -> Option<u64> {
    let p = rt.compiled.policy.probes.as_ref().filter(|p| p.body)?;
    // The length first: most requests have no body, and the media type is dearer to read.
    let len: u64 = palisade_engine::request::header(&parts.headers, &CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    scanned_body_kind(&parts.headers)?;
    (len > 0 && len <= p.max_body as u64).then_some(p.max_body as u64)
}

/// Scans the request for injection probes (`[probes]`): path, query, headers, cookies and a
/// body that was read.
pub fn scan_probes(
    rt: &Runtime,
    parts: &http::request::Parts,
    body: Option<&[u8]>,
) -> palisade_intel::probes::Hits {
    let Some(p) = &rt.compiled.policy.probes else {
        return palisade_intel::probes::Hits::default();
    };
    let mut hits = p.scan_head(parts.uri.path(), parts.uri.query(), &parts.headers);
    if p.body
        && let Some(b) = body
        && b.len() <= p.max_body
    {
        match scanned_body_kind(&parts.headers) {
            Some(BodyKind::Json) => p.scanner.scan_json(b, &mut hits),
            Some(BodyKind::Form) => p.scanner.scan_form(b, &mut hits),
            None => {}
        }
    }
    hits
}

/// Reads a body up to `max` bytes; past that, or on a read error, the refusal to answer.
pub async fn read_bounded(
    shared: &Shared,
    incoming: ClientBody,
    max: u64,
) -> Result<Bytes, Bounded> {
    let limited = Limited::new(incoming, usize::try_from(max).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err((Refusal::BodyTooLarge, "bounds/body"))
        }
        Err(e) => {
            let fault = client_fault(&*e).unwrap_or(ClientFault::Aborted);
            shared.metrics.client_fault(fault, &e);
            Err((Refusal::for_client_fault(fault), "bounds/body_read"))
        }
    }
}

/// The username a login body names: a top-level string field of a JSON object, or a field
/// of a form. Bounded to 256 bytes.
pub fn username_in(body: &[u8], field: &str, headers: &http::HeaderMap) -> Option<Vec<u8>> {
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let found: Option<Vec<u8>> = if form {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.into_owned().into_bytes())
    } else {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => m
                .get(field)
                .and_then(|v| v.as_str())
                .map(|s| s.as_bytes().to_vec()),
            _ => None,
        }
    };
    found.filter(|u| !u.is_empty()).map(|mut u| {
        u.truncate(256);
        // Usernames are compared case-insensitively (emails mostly are).
        u.make_ascii_lowercase();
        u
    })
}

fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A request's header fingerprint (`palisade_intel::hfp`) over its headers as they arrived.
pub fn hfp_of(parts: &http::request::Parts) -> palisade_intel::hfp::Fingerprint {
    let version = match parts.version {
        http::Version::HTTP_2 => 2,
        http::Version::HTTP_3 => 3,
        _ => 1,
    };
    palisade_intel::hfp::header_fingerprint(version, parts.headers.keys().map(|k| k.as_str()))
}

/// A request's JA4H fingerprint over its headers as they arrived: in arrival order, with
/// HTTP/1 names lowercased (the server does not keep their original case).
///
/// Remembered per worker thread: the same
/// client sends the same header names (and cookies) request after request, and the two SHA-256
/// digests are the dear part. The cache is keyed by everything the fingerprint reads — method,
/// version, header names in order, the cookie and accept-language values — compared in full,
/// so a hit is exact; 64 slots per thread, keys over 2 KiB not cached.
pub fn ja4h_of(parts: &http::request::Parts) -> String {
    /// A remembered fingerprint and the key it is for.
    type Slot = Option<(Vec<u8>, String)>;
    const SLOTS: usize = 64;
    const MAX_KEY: usize = 2048;
    thread_local! {
        static CACHE: std::cell::RefCell<(Vec<u8>, Vec<Slot>)> =
            std::cell::RefCell::new((Vec::with_capacity(256), vec![None; SLOTS]));
    }
    let version = match parts.version {
        http::Version::HTTP_10 | http::Version::HTTP_09 => HttpVersion::Http10,
        http::Version::HTTP_2 => HttpVersion::Http2,
        http::Version::HTTP_3 => HttpVersion::Http3,
        _ => HttpVersion::Http11,
    };
    let compute = || {
        palisade_intel::ja4h::ja4h_fingerprint(
            parts.method.as_str(),
            version,
            parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
        )
    };
    CACHE
        .try_with(|cell| {
            let Ok(mut cache) = cell.try_borrow_mut() else {
                return compute();
            };
            let (key, slots) = &mut *cache;
            key.clear();
            key.extend_from_slice(parts.method.as_str().as_bytes());
            key.push(0);
            key.push(version as u8);
            for (name, value) in &parts.headers {
                key.push(0);
                key.extend_from_slice(name.as_str().as_bytes());
                if name == http::header::COOKIE || name == http::header::ACCEPT_LANGUAGE {
                    key.push(b'=');
                    key.extend_from_slice(value.as_bytes());
                }
                if key.len() > MAX_KEY {
                    return compute();
                }
            }
            let h = std::hash::BuildHasher::hash_one(
                &std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(),
                &key[..],
            );
            let slot = (h as usize) % SLOTS;
            if let Some(Some((k, fp))) = slots.get(slot)
                && k[..] == key[..]
            {
                return fp.clone();
            }
            let fp = compute();
            if let Some(s) = slots.get_mut(slot) {
                *s = Some((key.clone(), fp.clone()));
            }
            fp
        })
        .unwrap_or_else(|_| compute())
}

/// The fingerprints a trusted TLS-terminating front reported in its headers
/// (`[server] trusted_fingerprint_headers`), for a request from one of `trusted_proxies`:
/// (JA4, HTTP/2 fingerprint), each only when well formed.
pub fn fronted_fingerprints<'a>(
    rt: &Runtime,
    headers: &'a http::HeaderMap,
    peer: std::net::IpAddr,
) -> (Option<&'a str>, Option<&'a str>, Option<&'a str>) {
    let server = &rt.compiled.server;
    let (ja4_name, h2_name, ja3_name) = &server.fingerprint_headers;
    if (ja4_name.is_none() && h2_name.is_none() && ja3_name.is_none())
        || !server.trusted_proxies.contains(peer)
    {
        return (None, None, None);
    }
    let value = |n: &Option<http::HeaderName>| {
        n.as_ref()
            .and_then(|n| headers.get(n))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let ja4 = value(ja4_name)
        .filter(|v| v.len() == 36 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let h2 = value(h2_name).filter(|v| {
        v.len() <= 512 && v.bytes().all(|b| b.is_ascii_graphic()) && v.split('|').count() == 4
    });
    // JA3: the full string (numbers, commas, dashes) or its MD5 (32 hex digits).
    let ja3 = value(ja3_name).filter(|v| {
        (v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            || (v.len() <= 2048
                && v.split(',').count() == 5
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || b == b',' || b == b'-'))
    });
    (ja4, h2, ja3)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// The per-thread cache gives exactly what computing afresh gives, for requests that differ
    /// in any input of the fingerprint, asked again and again in mixed order.
    #[test]
    fn remembered_ja4h_is_the_computed_one() {
        let cases = [
            request("GET", &[("host", "a"), ("user-agent", "x")]),
            request("GET", &[("user-agent", "x"), ("host", "a")]),
            request("POST", &[("host", "a"), ("user-agent", "x")]),
            request("GET", &[("host", "a"), ("cookie", "a=1; b=2")]),
            request("GET", &[("host", "a"), ("cookie", "a=1; b=3")]),
            request("GET", &[("host", "a"), ("accept-language", "fr-CH,fr")]),
            request("GET", &[("host", "a"), ("accept-language", "de")]),
            request("GET", &[("host", "a"), ("referer", "https://e.example/")]),
        ];
        let direct = |p: &http::request::Parts| {
            palisade_intel::ja4h::ja4h_fingerprint(
                p.method.as_str(),
                HttpVersion::Http11,
                p.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
            )
        };
        let mut seen = std::collections::HashSet::new();
        for round in 0..3 {
            for i in 0..cases.len() {
                let p = &cases[(i * 5 + round) % cases.len()];
                let got = ja4h_of(p);
                assert_eq!(got, direct(p));
                seen.insert(got);
            }
        }
        assert_eq!(
            seen.len(),
            cases.len(),
            "every case has its own fingerprint"
        );
        let huge = "v".repeat(3000);
        let p = request("GET", &[("host", "a"), ("cookie", &huge)]);
        assert_eq!(ja4h_of(&p), direct(&p));
    }
}
