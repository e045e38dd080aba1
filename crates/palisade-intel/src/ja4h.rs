//! JA4H: FoxIO's HTTP client fingerprint (JA4+, shared/testdata/ja4/JA4H.md), computed from a
//! request's method, version and headers in the order they were sent.
//!
//! `ge11cr07enus_8c2f9ef95269_2a79f5d9f8b3_7b4d78c057bc` is four parts:
//! - a: method (2 letters), version (`10`, `11`, `20`, `30`), cookie (`c`/`n`), referer
//!   (`r`/`n`), header count without Cookie and Referer (2 digits, at most 99), the first four
//!   characters of the first Accept-Language value without `-`, lowercased (`0000` if none);
//! - b: the first 12 hex digits of SHA-256 over the header names in order, comma-joined, without
//!   Cookie, Referer and HTTP/2 pseudo-headers;
//! - c: the same over the cookie names, sorted;
//! - d: the same over the cookies (`name=value`), sorted.
//!
//! Empty lists hash to `000000000000`.

use sha2::{Digest, Sha256};

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    Http2,
    /// HTTP/3.
    Http3,
}

impl HttpVersion {
    fn code(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "10",
            HttpVersion::Http11 => "11",
            HttpVersion::Http2 => "20",
            HttpVersion::Http3 => "30",
        }
    }
}

/// A JA4H fingerprint and its raw (unhashed) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ja4h {
    /// `a_b_c_d`.
    pub fingerprint: String,
    /// The unhashed form in original order (FoxIO's `JA4H_ro`): `a_names_` then, if there are
    /// cookies, `cookienames_cookies`.
    pub raw: String,
}

fn hash12(s: &str) -> String {
    if s.is_empty() {
        return "000000000000".to_owned();
    }
    let d = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(12);
    for b in d.iter().take(6) {
        for nibble in [b >> 4, b & 15] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// Most headers and cookies considered (attacker input is bounded).
const MAX_ITEMS: usize = 256;

/// Computes JA4H. `headers` are (name as sent, value), in the order sent.
pub fn ja4h<'a>(
    method: &str,
    version: HttpVersion,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Ja4h {
    let mut names: Vec<&str> = Vec::new();
    let mut cookies: Vec<String> = Vec::new();
    let mut has_cookie = false;
    let mut has_referer = false;
    let mut lang: Option<String> = None;
    for (name, value) in headers.into_iter().take(MAX_ITEMS) {
        if name.starts_with(':') {
            continue;
        }
        if name.eq_ignore_ascii_case("cookie") {
            has_cookie = true;
            let text = String::from_utf8_lossy(value);
            for c in text.split(';').map(str::trim).filter(|c| !c.is_empty()) {
                if cookies.len() < MAX_ITEMS {
                    cookies.push(c.to_owned());
                }
            }
            continue;
        }
        if name.eq_ignore_ascii_case("referer") {
            has_referer = true;
            continue;
        }
        if lang.is_none() && name.eq_ignore_ascii_case("accept-language") {
            let text = String::from_utf8_lossy(value).to_ascii_lowercase();
            let first = text
                .replace('-', "")
                .replace(';', ",")
                .split(',')
                .next()
                .unwrap_or("")
                .to_owned();
            let mut l: String = first.chars().take(4).collect();
            while l.len() < 4 {
                l.push('0');
            }
            lang = Some(l);
        }
        names.push(name);
    }
    let mut m: String = method.to_ascii_lowercase().chars().take(2).collect();
    while m.len() < 2 {
        m.push('0');
    }
    let a = format!(
        "{m}{}{}{}{:02}{}",
        version.code(),
        if has_cookie { 'c' } else { 'n' },
        if has_referer { 'r' } else { 'n' },
        names.len().min(99),
        lang.as_deref().unwrap_or("0000"),
    );
    let header_list = names.join(",");
    let mut raw = format!("{a}_{header_list}_");
    if !cookies.is_empty() {
        let names_in_order: Vec<&str> = cookies
            .iter()
            .map(|c| c.split('=').next().unwrap_or(""))
            .collect();
        raw.push_str(&names_in_order.join(","));
        raw.push('_');
        raw.push_str(&cookies.join(","));
    }
    // FoxIO orders cookies by name (stably), not by the whole `name=value` string.
    cookies.sort_by(|x, y| {
        let n = |c: &String| c.split('=').next().unwrap_or("").to_owned();
        n(x).cmp(&n(y))
    });
    let mut cookie_names: Vec<&str> = cookies
        .iter()
        .map(|c| c.split('=').next().unwrap_or(""))
        .collect();
    cookie_names.sort();
    let cookie_name_list = cookie_names.join(",");
    let cookie_list = cookies.join(",");
    Ja4h {
        fingerprint: format!(
            "{a}_{}_{}_{}",
            hash12(&header_list),
            hash12(&cookie_name_list),
            hash12(&cookie_list)
        ),
        raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From FoxIO's http1.pcapng reference output (shared/testdata/ja4/expected).
    #[test]
    fn matches_a_reference_stream() {
        let h = ja4h(
            "POST",
            HttpVersion::Http11,
            [
                ("Host", &b"192.168.1.1:8080"[..]),
                ("Accept", b"*/*"),
                ("User-Agent", b"x"),
                ("Content-Type", b"text/plain"),
                ("Content-Length", b"4"),
            ],
        );
        assert_eq!(
            h.fingerprint,
            "po11nn050000_530ceba2075f_000000000000_000000000000"
        );
        assert_eq!(
            h.raw,
            "po11nn050000_Host,Accept,User-Agent,Content-Type,Content-Length_"
        );
    }

    #[test]
    fn language_cookie_and_referer() {
        let h = ja4h(
            "GET",
            HttpVersion::Http2,
            [
                (":method", &b"GET"[..]),
                ("accept-language", b"en-US,en;q=0.9"),
                ("cookie", b"b=2; a=1"),
                ("referer", b"https://x/"),
                ("user-agent", b"x"),
            ],
        );
        assert!(
            h.fingerprint.starts_with("ge20cr02enus_"),
            "{}",
            h.fingerprint
        );
        assert!(
            h.raw.ends_with("_accept-language,user-agent_b,a_b=2,a=1"),
            "{}",
            h.raw
        );
        let short = ja4h(
            "DELETE",
            HttpVersion::Http10,
            [("Accept-Language", &b"da"[..])],
        );
        assert!(short.fingerprint.starts_with("de10nn01da00_"));
    }
}
