//! Identity: the dimensions a request can be keyed by, and how a limit's key is derived from them.
//!
//! A limit's key is a list of [`KeyPart`]s; their values are hashed together with a per-table
//! secret, so limiter tables hold fixed-size keys and never store a raw IP or header value. A key
//! part that has no value for a request (an absent header, say) means the limit does not apply
//! to that request, as with nginx's empty `limit_req` keys.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv6Addr};

use std::sync::Arc;

use http::HeaderName;

use crate::model::facts::RequestFacts;
use crate::request::route::RouteId;

/// Longest header value used as a key; longer values are cut (after hashing the length) so an
/// attacker cannot make key derivation arbitrarily expensive.
pub const MAX_KEY_VALUE_LEN: usize = 256;

/// One dimension of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The client IP.
    Ip,
    /// The client's network: IPv4 addresses masked to `v4` bits, IPv6 ones to `v6` bits.
    IpPrefix {
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// A request header's value (case-sensitive, as sent).
    Header(HeaderName),
    /// The matched route.
    Route,
    /// The request method.
    Method,
    /// The authenticated API key's id.
    ApiKey,
    /// The authenticated caller's account.
    Account,
    /// A configured claim of the caller's verified JWT, e.g. `jwt:sub`.
    Jwt(Arc<str>),
    /// The request's JA4H fingerprint.
    Ja4h,
    /// The request's header fingerprint (Palisade's own, `palisade_intel::hfp`).
    Hfp,
    /// The connection's JA4 (TLS ClientHello) fingerprint, when Palisade terminates TLS.
    Ja4,
    /// The connection's HTTP/2 client fingerprint (Akamai format), on HTTP/2.
    H2fp,
    /// The client's JA3, as a trusted front reported it.
    Ja3,
    /// The verified client certificate's identity (mutual TLS).
    Mtls,
    /// The client network's autonomous system number.
    Asn,
    /// The client address's country.
    Country,
}

/// The name of a dimension, as used in config keys and in `/v1/identities/{dimension}/...`.
pub type Dimension = KeyPart;

/// Why a key part was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyPartError {
    /// Not a dimension Palisade knows.
    #[error(
        "unknown key dimension `{0}`; known: ip, ip/N (ip/24, ip/48, ip/24/56), header:NAME, route, method, api_key, account, jwt:CLAIM, hfp, ja4, h2fp, ja3, mtls, ja4h, asn, country"
    )]
    Unknown(String),
    /// Known, but provided by a part of Palisade that is not built yet.
    #[error("key dimension `{0}` is not available in this version")]
    NotYetAvailable(String),
    /// A prefix length out of range.
    #[error("bad prefix in `{0}`: IPv4 prefixes are 1-32, IPv6 prefixes 1-128")]
    BadPrefix(String),
    /// A header name that is not a valid HTTP field name.
    #[error("bad header name in `{0}`")]
    BadHeader(String),
    /// A JWT claim name that is empty or has characters other than letters, digits, `_-.`.
    #[error("bad claim name in `{0}`: use letters, digits, `_`, `-` or `.`")]
    BadClaim(String),
}

impl KeyPart {
    /// Parses a dimension name. `ip/N` with N <= 32 masks IPv4 to N and IPv6 to 2N bits (ip/24
    /// pairs with /48, ip/32 with /64); `ip/N` with N > 32 is an IPv6 prefix and leaves IPv4
    /// whole; `ip/N/M` sets both explicitly.
    pub fn parse(s: &str) -> Result<Self, KeyPartError> {
        let s = s.trim();
        match s {
            "ip" => return Ok(KeyPart::Ip),
            "route" => return Ok(KeyPart::Route),
            "method" => return Ok(KeyPart::Method),
            "api_key" => return Ok(KeyPart::ApiKey),
            "account" => return Ok(KeyPart::Account),
            "ja4h" => return Ok(KeyPart::Ja4h),
            "hfp" => return Ok(KeyPart::Hfp),
            "ja4" => return Ok(KeyPart::Ja4),
            "h2fp" => return Ok(KeyPart::H2fp),
            "ja3" => return Ok(KeyPart::Ja3),
            "mtls" => return Ok(KeyPart::Mtls),
            "asn" => return Ok(KeyPart::Asn),
            "country" => return Ok(KeyPart::Country),
            "session" => {
                return Err(KeyPartError::NotYetAvailable(s.to_owned()));
            }
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("ip/") {
            let bad = || KeyPartError::BadPrefix(s.to_owned());
            let mut it = rest.split('/');
            let a: u8 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
            let b: Option<u8> = match it.next() {
                Some(x) => Some(x.parse().map_err(|_| bad())?),
                None => None,
            };
            if it.next().is_some() || a == 0 {
                return Err(bad());
            }
            let (v4, v6) = match b {
                Some(b) if a <= 32 && (1..=128).contains(&b) => (a, b),
                Some(_) => return Err(bad()),
                None if a <= 32 => (a, a * 2),
                None if a <= 128 => (32, a),
                None => return Err(bad()),
            };
            return Ok(KeyPart::IpPrefix { v4, v6 });
        }
        if let Some(name) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(name.trim().as_bytes())
                .map(KeyPart::Header)
                .map_err(|_| KeyPartError::BadHeader(s.to_owned()));
        }
        if let Some(claim) = s.strip_prefix("jwt:") {
            let claim = claim.trim();
            if claim.is_empty()
                || !claim
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                return Err(KeyPartError::BadClaim(s.to_owned()));
            }
            return Ok(KeyPart::Jwt(Arc::from(claim)));
        }
        Err(KeyPartError::Unknown(s.to_owned()))
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Ip => f.write_str("ip"),
            KeyPart::IpPrefix { v4, v6 } if *v6 == v4 * 2 && *v4 <= 32 => write!(f, "ip/{v4}"),
            KeyPart::IpPrefix { v4: 32, v6 } if *v6 > 32 => write!(f, "ip/{v6}"),
            KeyPart::IpPrefix { v4, v6 } => write!(f, "ip/{v4}/{v6}"),
            KeyPart::Header(h) => write!(f, "header:{h}"),
            KeyPart::Route => f.write_str("route"),
            KeyPart::Method => f.write_str("method"),
            KeyPart::ApiKey => f.write_str("api_key"),
            KeyPart::Account => f.write_str("account"),
            KeyPart::Jwt(c) => write!(f, "jwt:{c}"),
            KeyPart::Ja4h => f.write_str("ja4h"),
            KeyPart::Hfp => f.write_str("hfp"),
            KeyPart::Ja4 => f.write_str("ja4"),
            KeyPart::H2fp => f.write_str("h2fp"),
            KeyPart::Ja3 => f.write_str("ja3"),
            KeyPart::Mtls => f.write_str("mtls"),
            KeyPart::Asn => f.write_str("asn"),
            KeyPart::Country => f.write_str("country"),
        }
    }
}

/// Masks an address to a prefix length.
pub fn mask(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if v4 >= 32 {
                u32::MAX
            } else {
                !(u32::MAX >> v4)
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if v6 >= 128 {
                u128::MAX
            } else {
                !(u128::MAX >> v6)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// A key part's value for a request, as feeds the hash and as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue<'a> {
    /// An address or masked network.
    Ip(IpAddr, u8),
    /// Header bytes, method name or route name.
    Bytes(&'a [u8]),
    /// A route.
    Route(RouteId),
    /// A number (an ASN).
    Num(u64),
}

impl KeyValue<'_> {
    fn feed(&self, h: &mut impl Hasher) {
        match self {
            KeyValue::Ip(ip, len) => {
                match ip {
                    IpAddr::V4(a) => h.write(&a.octets()),
                    IpAddr::V6(a) => h.write(&a.octets()),
                }
                h.write_u8(*len);
            }
            KeyValue::Bytes(b) => {
                h.write_usize(b.len());
                h.write(b.get(..MAX_KEY_VALUE_LEN).unwrap_or(b));
            }
            KeyValue::Route(r) => h.write_usize(*r),
            KeyValue::Num(n) => h.write_u64(*n),
        }
    }
}

/// The value of one key part for a request; `None` when the request has none.
pub fn value_of<'a>(
    part: &KeyPart,
    facts: &RequestFacts<'a>,
    route: RouteId,
) -> Option<KeyValue<'a>> {
    match part {
        KeyPart::Ip => Some(KeyValue::Ip(facts.client_ip.to_canonical(), 255)),
        KeyPart::IpPrefix { v4, v6 } => {
            let ip = facts.client_ip.to_canonical();
            let len = if ip.is_ipv4() { *v4 } else { *v6 };
            Some(KeyValue::Ip(mask(ip, *v4, *v6), len))
        }
        KeyPart::Header(name) => crate::request::header(facts.headers, name)
            .map(|v| v.as_bytes())
            .filter(|b| !b.is_empty())
            .map(KeyValue::Bytes),
        KeyPart::Route => Some(KeyValue::Route(route)),
        KeyPart::Method => Some(KeyValue::Bytes(facts.method.as_str().as_bytes())),
        KeyPart::ApiKey => facts
            .auth
            .principal()
            .and_then(|p| p.key_id.as_deref())
            .map(|v| KeyValue::Bytes(v.as_bytes())),
        KeyPart::Account => facts
            .auth
            .principal()
            .and_then(|p| p.account.as_deref())
            .map(|v| KeyValue::Bytes(v.as_bytes())),
        KeyPart::Ja4h => facts.ja4h.map(|v| KeyValue::Bytes(v.as_bytes())),
        KeyPart::Hfp => facts.hfp.map(|v| KeyValue::Bytes(v.as_bytes())),
        KeyPart::Ja4 => facts.tls.map(|t| KeyValue::Bytes(t.ja4.as_bytes())),
        KeyPart::H2fp => facts.h2fp.map(|f| KeyValue::Bytes(f.as_bytes())),
        KeyPart::Ja3 => facts.ja3.map(|f| KeyValue::Bytes(f.as_bytes())),
        KeyPart::Mtls => facts
            .tls
            .and_then(|t| t.client)
            .map(|c| KeyValue::Bytes(c.as_bytes())),
        KeyPart::Asn => facts
            .ip_info
            .filter(|i| i.asn != 0)
            .map(|i| KeyValue::Num(u64::from(i.asn))),
        KeyPart::Country => facts
            .ip_info
            .map(|i| i.country.as_bytes())
            .filter(|c| !c.is_empty())
            .map(KeyValue::Bytes),
        KeyPart::Jwt(claim) => facts
            .auth
            .principal()
            .and_then(|p| p.claim(claim))
            .map(|v| KeyValue::Bytes(v.as_bytes())),
    }
}

/// Hashes a limit key from its parts' values. Returns `None` if any part has no value.
pub fn key_hash<'a, B: BuildHasher>(
    hasher: &B,
    parts: &[KeyPart],
    facts: &RequestFacts<'a>,
    route: RouteId,
) -> Option<u64> {
    let mut h = hasher.build_hasher();
    for part in parts {
        value_of(part, facts, route)?.feed(&mut h);
    }
    Some(h.finish())
}

/// Hashes a key given as already-resolved values (for look-ups from the admin API).
pub fn key_hash_of_values<B: BuildHasher>(hasher: &B, values: &[KeyValue<'_>]) -> u64 {
    let mut h = hasher.build_hasher();
    for v in values {
        v.feed(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dimensions() {
        assert_eq!(KeyPart::parse("ip"), Ok(KeyPart::Ip));
        assert_eq!(
            KeyPart::parse("ip/24"),
            Ok(KeyPart::IpPrefix { v4: 24, v6: 48 })
        );
        assert_eq!(
            KeyPart::parse("ip/48"),
            Ok(KeyPart::IpPrefix { v4: 32, v6: 48 })
        );
        assert_eq!(
            KeyPart::parse("ip/16/40"),
            Ok(KeyPart::IpPrefix { v4: 16, v6: 40 })
        );
        assert!(matches!(
            KeyPart::parse("ip/0"),
            Err(KeyPartError::BadPrefix(_))
        ));
        assert!(matches!(
            KeyPart::parse("ip/129"),
            Err(KeyPartError::BadPrefix(_))
        ));
        assert!(matches!(
            KeyPart::parse("ip/33/200"),
            Err(KeyPartError::BadPrefix(_))
        ));
        assert!(matches!(
            KeyPart::parse("header:bad name"),
            Err(KeyPartError::BadHeader(_))
        ));
        assert_eq!(KeyPart::parse("api_key"), Ok(KeyPart::ApiKey));
        assert_eq!(
            KeyPart::parse("jwt:sub"),
            Ok(KeyPart::Jwt(Arc::from("sub")))
        );
        assert!(matches!(
            KeyPart::parse("jwt:"),
            Err(KeyPartError::BadClaim(_))
        ));
        assert!(matches!(
            KeyPart::parse("session"),
            Err(KeyPartError::NotYetAvailable(_))
        ));
        assert!(matches!(
            KeyPart::parse("colour"),
            Err(KeyPartError::Unknown(_))
        ));
        for s in [
            "ip",
            "ip/24",
            "ip/48",
            "ip/16/40",
            "header:x-tenant",
            "route",
            "method",
            "api_key",
            "account",
            "jwt:org_id",
            "ja4h",
            "hfp",
            "ja4",
            "h2fp",
            "ja3",
            "mtls",
            "asn",
            "country",
        ] {
            assert_eq!(KeyPart::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn masks_both_families() {
        let m = |s: &str, a, b| mask(s.parse().unwrap(), a, b).to_string();
        assert_eq!(m("203.0.113.77", 24, 48), "203.0.113.0");
        assert_eq!(m("2001:db8:1:2:3::9", 24, 48), "2001:db8:1::");
        assert_eq!(m("::ffff:203.0.113.77", 16, 32), "203.0.0.0");
        assert_eq!(m("1.2.3.4", 32, 128), "1.2.3.4");
    }
}

/// A key hasher that every gateway of a cluster shares: SipHash-1-3 under fixed keys, so the
/// same identity hashes to the same shared-store key on every instance and across restarts.
/// (Finding another identity with a given identity's hash takes ~2^64 work.)
#[derive(Debug, Clone, Copy, Default)]
pub struct StableHasher;

impl std::hash::BuildHasher for StableHasher {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(0x7061_6c69_7361_6465, 0x7368_6172_6564_6b31)
    }
}
