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

/// SHA-256 of `items` comma-joined, first 12 hex digits; `000000000000` for none.
fn hash12<'a>(items: impl IntoIterator<Item = &'a str>, out: &mut String) {
    let mut h = Sha256::new();
    let mut any = false;
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        h.update(item.as_bytes());
        any = true;
    }
    if !any {
        out.push_str("000000000000");
        return;
    }
    for b in h.finalize().iter().take(6) {
        for nibble in [b >> 4, b & 15] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
}

/// Most headers and cookies considered (attacker input is bounded).
const MAX_ITEMS: usize = 256;

fn cookie_name(c: &str) -> &str {
    c.split('=').next().unwrap_or("")
}

struct Parts<'a> {
    a: String,
    names: Vec<&'a str>,
    cookies: Vec<&'a str>,
}

fn parts<'a>(
    method: &str,
    version: HttpVersion,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Parts<'a> {
    let mut names: Vec<&str> = Vec::with_capacity(16);
    let mut cookies: Vec<&str> = Vec::new();
    let mut has_cookie = false;
    let mut has_referer = false;
    let mut lang = [b'0'; 4];
    let mut lang_seen = false;
    for (name, value) in headers.into_iter().take(MAX_ITEMS) {
        if name.starts_with(':') {
            continue;
        }
        if name.eq_ignore_ascii_case("cookie") {
            has_cookie = true;
            // Cookie values that are not UTF-8 are left out of c and d (they still count).
            if let Ok(text) = std::str::from_utf8(value) {
                for c in text.split(';').map(str::trim).filter(|c| !c.is_empty()) {
                    if cookies.len() < MAX_ITEMS {
                        cookies.push(c);
                    }
                }
            }
            continue;
        }
        if name.eq_ignore_ascii_case("referer") {
            has_referer = true;
            continue;
        }
        if !lang_seen && name.eq_ignore_ascii_case("accept-language") {
            lang_seen = true;
            // The first language, without '-', lowercased, cut or padded to four characters.
            let first = value
                .split(|b| *b == b',' || *b == b';')
                .next()
                .unwrap_or_default();
            for (slot, b) in lang.iter_mut().zip(first.iter().filter(|b| **b != b'-')) {
                // Anything but letters and digits (never sent by a browser) becomes '0', so the
                // fingerprint keeps its shape whatever a client sends.
                *slot = if b.is_ascii_alphanumeric() {
                    b.to_ascii_lowercase()
                } else {
                    b'0'
                };
            }
        }
        names.push(name);
    }
    let mut a = String::with_capacity(64);
    let mut m = method.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '0'
        }
    });
    a.push(m.next().unwrap_or('0'));
    a.push(m.next().unwrap_or('0'));
    a.push_str(version.code());
    a.push(if has_cookie { 'c' } else { 'n' });
    a.push(if has_referer { 'r' } else { 'n' });
    let count = names.len().min(99);
    a.push(char::from_digit((count / 10) as u32, 10).unwrap_or('9'));
    a.push(char::from_digit((count % 10) as u32, 10).unwrap_or('9'));
    a.push_str(&String::from_utf8_lossy(&lang));
    Parts { a, names, cookies }
}

fn fingerprint_of(p: &Parts<'_>) -> String {
    let mut out = p.a.clone();
    out.push('_');
    hash12(p.names.iter().copied(), &mut out);
    // FoxIO orders cookies by name (stably), not by the whole `name=value` string.
    let mut by_name = p.cookies.clone();
    by_name.sort_by(|x, y| cookie_name(x).cmp(cookie_name(y)));
    let mut names: Vec<&str> = by_name.iter().map(|c| cookie_name(c)).collect();
    names.sort_unstable();
    out.push('_');
    hash12(names, &mut out);
    out.push('_');
    hash12(by_name, &mut out);
    out
}

/// JA4H alone (what the gateway computes for every request). `headers` are (name as sent,
/// value), in the order sent.
pub fn ja4h_fingerprint<'a>(
    method: &str,
    version: HttpVersion,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> String {
    fingerprint_of(&parts(method, version, headers))
}

/// JA4H and its raw form.
pub fn ja4h<'a>(
    method: &str,
    version: HttpVersion,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Ja4h {
    let p = parts(method, version, headers);
    let mut raw = format!("{}_{}_", p.a, p.names.join(","));
    if !p.cookies.is_empty() {
        let names: Vec<&str> = p.cookies.iter().map(|c| cookie_name(c)).collect();
        raw.push_str(&names.join(","));
        raw.push('_');
        raw.push_str(&p.cookies.join(","));
    }
    Ja4h {
        fingerprint: fingerprint_of(&p),
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
    fn hostile_methods_and_languages_keep_the_shape() {
        let h = ja4h(
            "_\u{e9}",
            HttpVersion::Http11,
            [("accept-language", &b"e_\xff-x"[..])],
        );
        assert_eq!(h.fingerprint.split('_').count(), 4, "{}", h.fingerprint);
        assert!(
            h.fingerprint.starts_with("0011nn01e00x_"),
            "{}",
            h.fingerprint
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
