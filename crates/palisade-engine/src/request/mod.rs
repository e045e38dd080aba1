//! Reading a request: its canonical path, the route it belongs to, the client's address
//! through trusted proxies, and address sets.

pub mod client_ip;
pub mod ipset;
pub mod path;
pub mod route;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Maps with at most this many names are searched by comparing names in order.
const SCAN_NAMES: usize = 16;

/// The first value of `name` in `headers`, as [`HeaderMap::get`] gives it. A request carries a
/// handful of headers, and a dozen lookups are made on each: comparing the names in order costs
/// a few instructions per name, where `get` hashes the name byte by byte first (~250
/// instructions a lookup under callgrind). Big maps are hashed as before.
#[inline]
pub fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() <= SCAN_NAMES {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

/// Every value of `name` in `headers`, in order, as [`HeaderMap::get_all`] gives them.
#[inline]
pub fn header_all<'a>(headers: &'a HeaderMap, name: &'a HeaderName) -> HeaderValues<'a> {
    if headers.keys_len() <= SCAN_NAMES {
        HeaderValues::Scanned(headers.iter(), name)
    } else {
        HeaderValues::Hashed(headers.get_all(name).iter())
    }
}

/// The values [`header_all`] finds.
pub enum HeaderValues<'a> {
    /// A small map, its fields compared by name.
    Scanned(http::header::Iter<'a, HeaderValue>, &'a HeaderName),
    /// A big map's values of the name.
    Hashed(http::header::ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for HeaderValues<'a> {
    type Item = &'a HeaderValue;

    #[inline]
    fn next(&mut self) -> Option<&'a HeaderValue> {
        match self {
            HeaderValues::Scanned(fields, name) => {
                fields.find_map(|(n, v)| (n == *name).then_some(v))
            }
            HeaderValues::Hashed(values) => values.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan and the hash give the same values, for small and big maps alike.
    #[test]
    fn header_lookups_agree_with_the_map() {
        for extra in [0usize, 3, SCAN_NAMES, SCAN_NAMES + 5] {
            let mut h = HeaderMap::new();
            h.append("cookie", HeaderValue::from_static("a=1"));
            for i in 0..extra {
                h.append(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            h.append("user-agent", HeaderValue::from_static("curl/8"));
            h.append("cookie", HeaderValue::from_static("b=2"));
            h.append("x-api-key", HeaderValue::from_static("k"));
            for name in [
                http::header::COOKIE,
                http::header::USER_AGENT,
                http::header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-absent"),
            ] {
                assert_eq!(header(&h, &name), h.get(&name), "{name} with {extra}");
                let all: Vec<_> = header_all(&h, &name).collect();
                let want: Vec<_> = h.get_all(&name).iter().collect();
                assert_eq!(all, want, "{name} with {extra}");
            }
        }
    }
}
