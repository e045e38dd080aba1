//! Header rewriting on the wire, for both directions: hop-by-hop fields (RFC 9110 section
//! 7.6.1) removed, the forwarding headers Palisade sets for the upstream, and Palisade's own
//! `X-Palisade-*` names (which a client may never set).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::wire::fields::HeadLines;
use crate::wire::ip_text::IpText;

/// Header names used on every request, parsed once.
pub mod names {
    use http::header::HeaderName;

    /// `x-forwarded-for`.
    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    /// `x-forwarded-proto`.
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    /// `x-forwarded-host`.
    pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    /// `x-request-id`.
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// `x-palisade-ja4`: the connection's JA4 (`[fingerprints] forward`).
    pub const X_PALISADE_JA4: HeaderName = HeaderName::from_static("x-palisade-ja4");
    /// `x-palisade-h2fp`: the connection's HTTP/2 fingerprint (`[fingerprints] forward`).
    pub const X_PALISADE_H2FP: HeaderName = HeaderName::from_static("x-palisade-h2fp");
    /// `x-palisade-score`.
    pub const X_PALISADE_SCORE: HeaderName = HeaderName::from_static("x-palisade-score");
    /// `x-palisade-signals`.
    pub const X_PALISADE_SIGNALS: HeaderName = HeaderName::from_static("x-palisade-signals");
    /// `x-palisade-key-id`: the verified API key's visible id (`pal_<id>`).
    pub const X_PALISADE_KEY_ID: HeaderName = HeaderName::from_static("x-palisade-key-id");
    /// `x-palisade-account`: the verified caller's account.
    pub const X_PALISADE_ACCOUNT: HeaderName = HeaderName::from_static("x-palisade-account");
    /// `ratelimit-policy`.
    pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    /// `ratelimit`.
    pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    /// `x-ratelimit-limit`.
    pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    /// `x-ratelimit-remaining`.
    pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    /// `x-ratelimit-reset`.
    pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    /// `keep-alive`.
    pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    /// `proxy-connection`.
    pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
}

use names::*;

static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Whether `name` is one of [`HOP_BY_HOP`].
fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_name(name.as_str().as_bytes())
}

/// Whether a field name (any case) is one of [`HOP_BY_HOP`]: a length switch, then one
/// comparison, cheaper than comparing against each `HeaderName` in turn.
pub(crate) fn is_hop_by_hop_name(name: &[u8]) -> bool {
    let candidate: &[u8] = match name.len() {
        2 => b"te",
        7 if name.first().is_some_and(|b| b.eq_ignore_ascii_case(&b't')) => b"trailer",
        7 => b"upgrade",
        10 if name.first().is_some_and(|b| b.eq_ignore_ascii_case(&b'c')) => b"connection",
        10 => b"keep-alive",
        16 => b"proxy-connection",
        17 => b"transfer-encoding",
        18 => b"proxy-authenticate",
        19 => b"proxy-authorization",
        _ => return false,
    };
    name.eq_ignore_ascii_case(candidate)
}

/// Removes hop-by-hop headers, including those named in `Connection`. `TE: trailers` survives
/// (it is end-to-end meaningful for gRPC over HTTP/2).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names present, instead of a hashed look-up per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(&name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The request headers Palisade adds for the upstream: `X-Forwarded-For`, `Forwarded`,
/// `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Request-Id`, replacing the client's. Headers
/// from a trusted peer are extended (its proto and host kept); from anyone else they are
/// replaced, so a client's forged chain never reaches the upstream.
pub fn forwarding_lines(
    headers: &HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    host_value: Option<&HeaderValue>,
    request_id: &str,
) -> HeadLines {
    let mut added = HeadLines::with_capacity(256);
    let host = host_value.and_then(|v| v.to_str().ok());
    let peer = peer.to_canonical();
    let peer_text = IpText::new(peer);
    // An untrusted peer's chain is replaced, so it is not even looked up.
    let prev = |name: &HeaderName| {
        peer_trusted
            .then(|| headers.get(name))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .filter(|p| !p.trim().is_empty())
    };
    // Every part is a header value that parsed as text, an address, or fixed text: the
    // lines need no further check.
    let peer_b = peer_text.as_bytes();
    match prev(&X_FORWARDED_FOR) {
        Some(p) => added.line(b"x-forwarded-for", &[p.as_bytes(), b", ", peer_b]),
        None => added.line(b"x-forwarded-for", &[peer_b]),
    }
    let (before, sep): (&[u8], &[u8]) = match prev(&header::FORWARDED) {
        Some(p) => (p.as_bytes(), b", "),
        None => (b"", b""),
    };
    let (open, close): (&[u8], &[u8]) = if peer.is_ipv6() {
        (b"\"[", b"]\"")
    } else {
        (b"", b"")
    };
    let host_param: [&[u8]; 3] = match host.filter(|h| {
        h.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        Some(h) => [b";host=\"", h.as_bytes(), b"\""],
        None => [b"", b"", b""],
    };
    added.line(
        b"forwarded",
        &[
            before,
            sep,
            b"for=",
            open,
            peer_b,
            close,
            b";proto=http",
            host_param[0],
            host_param[1],
            host_param[2],
        ],
    );
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        added.line(b"x-forwarded-proto", &[b"http"]);
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST))
        && let Some(v) = host_value
    {
        added.line(b"x-forwarded-host", &[v.as_bytes()]);
    }
    if !request_id.is_empty() {
        added.push(b"x-request-id", request_id.as_bytes());
    }
    added
}

/// Removes `X-Palisade-*` headers a client sent, so nobody can forge a score for the upstream.
pub fn strip_palisade_headers(headers: &mut HeaderMap) {
    if !headers
        .keys()
        .any(|k| k.as_str().starts_with("x-palisade-"))
    {
        return;
    }
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-palisade-"))
        .cloned()
        .collect();
    for k in ours {
        headers.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forwarding headers set in `headers`, as an HTTP/2 upstream gets them.
    fn set_forwarding_headers(
        headers: &mut HeaderMap,
        peer: IpAddr,
        peer_trusted: bool,
        host_value: Option<&HeaderValue>,
    ) {
        forwarding_lines(headers, peer, peer_trusted, host_value, "").apply(headers);
    }

    #[test]
    fn the_hop_by_hop_match_agrees_with_the_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
            let upper = HeaderName::from_bytes(name.as_str().to_uppercase().as_bytes()).unwrap();
            assert!(is_hop_by_hop(&upper), "{upper}");
            // Raw names, as an upstream sends them, in any case.
            let raw = name.as_str().to_uppercase();
            assert!(is_hop_by_hop_name(raw.as_bytes()), "{raw}");
        }
        // Names of the same lengths that are not listed.
        for other in [
            "tx",
            "trailex",
            "upgradx",
            "connectiox",
            "keep-alivx",
            "proxy-connectioX",
        ] {
            assert!(!is_hop_by_hop_name(other.as_bytes()), "{other}");
        }
        for other in [
            "host",
            "content-length",
            "x-connection",
            "tee",
            "upgrade-insecure-requests",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(other)), "{other}");
        }
        // Only a listed name makes the map worth a second look.
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("upgrade").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn added_lines_replace_the_clients_headers_and_match_their_header_form() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-request-id", HeaderValue::from_static("forged"));
        h.insert("host", HeaderValue::from_static("api.example"));
        let host = h.get("host").cloned();
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        for trusted in [false, true] {
            let a = forwarding_lines(&h, peer, trusted, host.as_ref(), "00ff");
            let text = String::from_utf8(a.lines().to_vec()).unwrap();
            let xff = if trusted {
                "6.6.6.6, 10.0.0.7"
            } else {
                "10.0.0.7"
            };
            assert!(
                text.contains(&format!("x-forwarded-for: {xff}\r\n")),
                "{text}"
            );
            assert!(text.contains("forwarded: for=10.0.0.7;proto=http;host=\"api.example\"\r\n"));
            assert!(text.contains("x-request-id: 00ff\r\n"));
            assert_eq!(
                text.contains("x-forwarded-proto: http\r\n"),
                !trusted,
                "{text}"
            );
            assert!(text.contains("x-forwarded-host: api.example\r\n"));
            assert!(text.ends_with("\r\n"));
            for name in [
                "x-forwarded-for",
                "forwarded",
                "x-request-id",
                "x-forwarded-host",
            ] {
                assert!(a.replaces(name.as_bytes()), "{name}");
            }
            assert_eq!(
                a.replaces(b"X-Forwarded-Proto"),
                !trusted,
                "a trusted proxy's proto is kept"
            );
            assert!(!a.replaces(b"host"));
            // The same values as headers (HTTP/2 upstreams).
            let mut applied = h.clone();
            a.apply(&mut applied);
            assert_eq!(applied["x-forwarded-for"], xff);
            assert_eq!(applied["x-request-id"], "00ff");
            assert_eq!(
                applied["x-forwarded-proto"],
                if trusted { "https" } else { "http" }
            );
        }
        assert!(!HeadLines::default().replaces(b"x-forwarded-for"));
    }

    #[test]
    fn forged_forwarding_chain_is_replaced_for_untrusted_peers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarding_headers(
            &mut h,
            "203.0.113.5".parse().unwrap(),
            false,
            Some(&HeaderValue::from_static("api.example")),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.5");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=203.0.113.5;proto=http;host=\"api.example\""
        );
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    }

    #[test]
    fn trusted_chains_are_extended_and_v6_is_quoted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("forwarded", HeaderValue::from_static("for=198.51.100.1"));
        set_forwarding_headers(&mut h, "fd00::1".parse().unwrap(), true, None);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "198.51.100.1, fd00::1");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=198.51.100.1, for=\"[fd00::1]\";proto=http"
        );
    }
}
