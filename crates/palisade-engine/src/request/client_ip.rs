//! The client address: the peer, or — only when the peer is a trusted proxy — the rightmost
//! address in `X-Forwarded-For` / RFC 7239 `Forwarded` that is not itself a trusted proxy.
//!
//! Everything here parses attacker-controlled input: it never panics, never allocates per hop,
//! and walks at most [`MAX_HOPS`] hops.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;

use crate::request::ipset::IpSet;

/// How many hops are examined at most; a chain of trusted proxies deeper than this is not
/// believed any further.
pub const MAX_HOPS: usize = 32;

/// Derives the client IP. `Forwarded` is preferred over `X-Forwarded-For` when both are present.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &IpSet) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    if headers.contains_key(FORWARDED) {
        let hops = headers
            .get_all(FORWARDED)
            .iter()
            .rev()
            .flat_map(|v| split_outside_quotes(v.as_bytes(), b',').rev())
            .map(forwarded_for);
        walk(peer, hops, trusted)
    } else {
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
            .map(parse_node);
        walk(peer, hops, trusted)
    }
}

/// Walks hops from the nearest to the farthest. The first hop that is not trusted is the client;
/// a hop that cannot be parsed ends the walk at the last address we could vouch for.
fn walk(peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>, trusted: &IpSet) -> IpAddr {
    let mut last = peer;
    for hop in hops.take(MAX_HOPS) {
        match hop {
            Some(ip) => {
                let ip = ip.to_canonical();
                if !trusted.contains(ip) {
                    return ip;
                }
                last = ip;
            }
            None => return last,
        }
    }
    last
}

/// Splits on `sep` where it is not inside a quoted-string (with backslash escapes).
fn split_outside_quotes(s: &[u8], sep: u8) -> impl DoubleEndedIterator<Item = &[u8]> {
    // Collect boundaries without allocating per call beyond a small fixed array.
    let mut cuts = [0usize; MAX_HOPS * 2];
    let mut n = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            _ if b == sep && !in_quotes => {
                if let Some(slot) = cuts.get_mut(n) {
                    *slot = i;
                    n += 1;
                }
            }
            _ => {}
        }
    }
    let mut pieces: [&[u8]; MAX_HOPS * 2 + 1] = [&[]; MAX_HOPS * 2 + 1];
    let mut start = 0;
    let mut count = 0;
    for &cut in cuts.iter().take(n) {
        if let (Some(piece), Some(slot)) = (s.get(start..cut), pieces.get_mut(count)) {
            *slot = piece;
            count += 1;
        }
        start = cut + 1;
    }
    if let (Some(piece), Some(slot)) = (s.get(start..), pieces.get_mut(count)) {
        *slot = piece;
        count += 1;
    }
    pieces.into_iter().take(count)
}

/// The `for=` parameter of one `Forwarded` element, parsed as a node.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    for pair in split_outside_quotes(element, b';') {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair.get(..eq)?, pair.get(eq + 1..)?);
        if name.eq_ignore_ascii_case(b"for") {
            let value = trim(value);
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            return parse_node(value);
        }
    }
    None
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80` or a bare IPv6 address.
pub fn parse_node(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(trim(raw)).ok()?;
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?;
    let end = inner.find(']')?;
    inner.get(..end)?.parse::<IpAddr>().ok()
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> IpSet {
        IpSet::new(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &trusted()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn rightmost_untrusted_hop_of_xff() {
        // The client forged "6.6.6.6"; the first trusted proxy appended the real client 7.7.7.7.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("7.7.7.7"));
    }

    #[test]
    fn multiple_xff_lines_are_one_list() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7, 10.9.9.9"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("7.7.7.7"));
    }

    #[test]
    fn all_trusted_chain_yields_the_farthest() {
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.1.1.1"));
    }

    #[test]
    fn garbage_hop_stops_at_last_vouched_address() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1, nonsense, 10.3.3.3")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.3.3.3"));
    }

    #[test]
    fn rfc7239_forms() {
        for (value, want) in [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            (r#"for="[2001:db8:cafe::17]:4711""#, "2001:db8:cafe::17"),
            (r#"For="192.0.2.43:47011", for=10.5.5.5"#, "192.0.2.43"),
            (
                "for=198.51.100.17;by=10.0.0.1, for=10.7.7.7;proto=https",
                "198.51.100.17",
            ),
        ] {
            let h = headers(&[("forwarded", value)]);
            assert_eq!(
                client_ip(ip("10.0.0.1"), &h, &trusted()),
                ip(want),
                "{value}"
            );
        }
    }

    #[test]
    fn forwarded_wins_over_xff_and_obfuscated_stops() {
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=_hidden, for=10.4.4.4"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.4.4.4"));
    }

    #[test]
    fn quoted_commas_do_not_split() {
        let h = headers(&[("forwarded", r#"for="1.1.1.1,2.2.2.2";x="a,b", for=5.5.5.5"#)]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("5.5.5.5"));
    }

    #[test]
    fn mapped_v4_peer_is_canonical() {
        let h = HeaderMap::new();
        assert_eq!(
            client_ip(ip("::ffff:1.2.3.4"), &h, &trusted()),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn hop_walk_is_bounded() {
        let chain = vec!["10.0.0.9"; 500].join(",");
        let h = headers(&[("x-forwarded-for", &format!("1.2.3.4,{chain}"))]);
        // Deeper than MAX_HOPS trusted hops: we stop believing and return the last vouched hop.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.9"));
    }
}
