//! Injection probes: SQL injection, markup/script injection, path traversal, command
//! injection, template injection, Log4Shell lookups and server-side request forgery, in the
//! path, query, chosen headers, cookies and JSON or form bodies of a request.
//!
//! Each value is decoded the ways attackers encode ([`decode`]), lower-cased once, and handed
//! to the classes whose characters it contains ([`classes`]); a value of letters and digits
//! costs one pass over its bytes. The result is at most one [`Hit`] per class: the class, where
//! it was found (`query:id`, `header:user-agent`, `body:/filter/name`) and a short fingerprint
//! from a fixed vocabulary. Nothing here replaces the application's own escaping: the point is
//! to see probing early and cheaply.

pub mod classes;
pub mod decode;

use std::fmt;
use std::hash::BuildHasher as _;

/// A probe class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// SQL injection.
    Sqli,
    /// Markup or script injection (cross-site scripting).
    Xss,
    /// Path traversal and sensitive-file reads.
    Traversal,
    /// OS command injection.
    Command,
    /// Server-side template injection.
    Template,
    /// Log4Shell-style `${jndi:…}` and other Log4j lookups.
    Log4shell,
    /// Server-side request forgery: URLs aimed inside the network.
    Ssrf,
}

impl Class {
    /// Every class, in a stable order.
    pub const ALL: [Class; 7] = [
        Class::Sqli,
        Class::Xss,
        Class::Traversal,
        Class::Command,
        Class::Template,
        Class::Log4shell,
        Class::Ssrf,
    ];

    /// The class's name in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            Class::Sqli => "sqli",
            Class::Xss => "xss",
            Class::Traversal => "traversal",
            Class::Command => "command",
            Class::Template => "template",
            Class::Log4shell => "log4shell",
            Class::Ssrf => "ssrf",
        }
    }

    /// The signal it raises: `probe/<name>`.
    pub fn signal(self) -> &'static str {
        match self {
            Class::Sqli => "probe/sqli",
            Class::Xss => "probe/xss",
            Class::Traversal => "probe/traversal",
            Class::Command => "probe/command",
            Class::Template => "probe/template",
            Class::Log4shell => "probe/log4shell",
            Class::Ssrf => "probe/ssrf",
        }
    }

    /// The class named `name`.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A short fingerprint: libinjection's token letters or a word from a fixed vocabulary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fp {
    bytes: [u8; 16],
    len: u8,
}

impl Fp {
    /// Keeps up to 16 printable ASCII bytes of `s` (anything else becomes `?`).
    pub fn new(s: &str) -> Fp {
        let mut bytes = [0u8; 16];
        let mut len = 0;
        for (o, b) in bytes.iter_mut().zip(s.bytes()) {
            *o = if b.is_ascii_graphic() { b } else { b'?' };
            len += 1;
        }
        Fp { bytes, len }
    }

    /// As text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(head(&self.bytes, self.len as usize)).unwrap_or("?")
    }
}

impl fmt::Debug for Fp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Fp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One class found in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// What it looks like.
    pub class: Class,
    /// Where: `path`, `query:<name>`, `header:<name>`, `cookie:<name>`, `body:<pointer>`,
    /// `form:<name>` (names cut to 40 characters, anything but `[A-Za-z0-9_.-]` as `?`).
    pub location: String,
    /// A short fingerprint of the shape.
    pub fingerprint: Fp,
}

/// What a request's scan found, at most one hit per class, with the scratch buffers reused
/// from value to value.
#[derive(Debug, Default)]
pub struct Hits {
    /// The hits, in the order found.
    pub hits: Vec<Hit>,
    found: u8,
    decoded: Vec<u8>,
    lower: Vec<u8>,
    /// Values looked at (for the cost bound and the bench).
    pub values: usize,
}

impl Hits {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }
}

/// Where values sit, for their location string.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// A path segment.
    Path,
    /// A query parameter's value (or its name).
    Query(&'a [u8]),
    /// A header's value.
    Header(&'a str),
    /// A cookie's value.
    Cookie(&'a [u8]),
    /// A JSON body's string at this pointer.
    Body(&'a str),
    /// A form body's field.
    Form(&'a [u8]),
    /// A value without a place (the `palisade probes` command).
    Value,
}

impl Place<'_> {
    fn location(&self) -> String {
        fn clean(prefix: &str, name: &[u8]) -> String {
            let mut s = String::with_capacity(prefix.len() + name.len().min(40));
            s.push_str(prefix);
            for &b in name.iter().take(40) {
                s.push(
                    if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/') {
                        b as char
                    } else {
                        '?'
                    },
                );
            }
            s
        }
        match self {
            Place::Path => "path".to_owned(),
            Place::Query(n) => clean("query:", n),
            Place::Header(n) => clean("header:", n.as_bytes()),
            Place::Cookie(n) => clean("cookie:", n),
            Place::Body(p) => clean("body:", p.as_bytes()),
            Place::Form(n) => clean("form:", n),
            Place::Value => "value".to_owned(),
        }
    }
}

/// What to scan for, and where.
#[derive(Debug, Clone)]
pub struct Scanner {
    classes: u8,
    /// Headers scanned for every class (lower-case names). All headers are scanned for
    /// Log4Shell lookups, the one probe that targets whatever a server logs.
    pub headers: Vec<String>,
    /// Whether cookie values are scanned.
    pub cookies: bool,
    /// Longest value looked at; a longer one is scanned in its first this-many bytes.
    pub max_value: usize,
    /// What long header values (user agents, referers) were found to hold: they repeat from
    /// request to request, and scanning one costs microseconds. Bounded; the result is a pure
    /// function of the value, so what an attacker puts in only evicts.
    seen: std::sync::Arc<HeaderCache>,
    hasher: std::hash::RandomState,
}

/// Header value (hashed with a per-process key) → the hit it gave, if any.
type HeaderCache = quick_cache::sync::Cache<u64, Option<(Class, Fp)>>;

/// Values up to this long with nothing to decode are scanned without allocating.
const SMALL: usize = 256;

/// Header values shorter than this are scanned every time (the prefilter is cheaper). A
/// library's user agent (`python-requests/2.32.3`, 22 bytes) is long enough to be remembered:
/// scanning it costs ~2,000 instructions, the cache's hash and lookup ~250.
const CACHED_FROM: usize = 8;

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new(&Class::ALL)
    }
}

impl Scanner {
    /// A scanner for `classes`, with the default headers (`user-agent`, `referer`,
    /// `x-forwarded-host`, `x-original-url`, `x-rewrite-url`), cookies on and 8 KiB values.
    pub fn new(classes: &[Class]) -> Scanner {
        Scanner {
            classes: classes.iter().fold(0, |m, c| m | c.bit()),
            headers: [
                "user-agent",
                "referer",
                "x-forwarded-host",
                "x-original-url",
                "x-rewrite-url",
            ]
            .map(str::to_owned)
            .to_vec(),
            cookies: true,
            max_value: 8192,
            seen: std::sync::Arc::new(HeaderCache::new(4096)),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Whether `class` is scanned for.
    pub fn scans(&self, class: Class) -> bool {
        self.classes & class.bit() != 0
    }

    /// Scans one value found at `place`. `plus_is_space`: it came from a query or form.
    pub fn scan_value(&self, value: &[u8], place: Place<'_>, plus_is_space: bool, out: &mut Hits) {
        self.scan_classes(value, place, plus_is_space, self.classes, out);
    }

    fn scan_classes(
        &self,
        value: &[u8],
        place: Place<'_>,
        plus_is_space: bool,
        classes: u8,
        out: &mut Hits,
    ) {
        let wanted = classes & !out.found;
        if wanted == 0 || value.is_empty() {
            return;
        }
        out.values += 1;
        let value = head(value, self.max_value);
        if value.iter().all(|&b| plain(b)) {
            return;
        }
        let mut decoded = std::mem::take(&mut out.decoded);
        let mut lower = std::mem::take(&mut out.lower);
        // A short value with nothing to decode (most of them: a user agent, an id, a date) is
        // looked at where it lies, lower-cased on the stack: no allocation.
        let mut small = [0u8; SMALL];
        let (d, l): (&[u8], &[u8]) = if value.len() <= SMALL && !decode::needs_decoding(value) {
            for (o, b) in small.iter_mut().zip(value) {
                *o = b.to_ascii_lowercase();
            }
            (value, head(&small, value.len()))
        } else {
            decode::decode(value, plus_is_space, &mut decoded);
            lower.clear();
            lower.extend(decoded.iter().map(u8::to_ascii_lowercase));
            (&decoded[..], &lower[..])
        };
        let mut seen = 0u8;
        for &b in d {
            seen |= class_of(b);
        }
        for class in Class::ALL {
            if wanted & class.bit() == 0 {
                continue;
            }
            let found = match class {
                Class::Sqli => (seen & (SQL | SPACE) != 0)
                    .then(|| classes::sqli(d, l))
                    .flatten(),
                Class::Xss => (seen & (MARKUP | QUOTE | PAREN) != 0)
                    .then(|| classes::xss(d, l))
                    .flatten()
                    .map(Fp::new),
                Class::Traversal => (seen & PATHY != 0)
                    .then(|| classes::traversal(d, l))
                    .flatten()
                    .map(Fp::new),
                Class::Command => (seen & SHELL != 0)
                    .then(|| classes::command(l))
                    .flatten()
                    .map(Fp::new),
                Class::Template => (seen & TEMPLATE != 0)
                    .then(|| classes::template(l))
                    .flatten()
                    .map(Fp::new),
                Class::Log4shell => (seen & DOLLAR != 0)
                    .then(|| classes::jndi(l))
                    .flatten()
                    .map(Fp::new),
                Class::Ssrf => (seen & PATHY != 0)
                    .then(|| classes::ssrf(l))
                    .flatten()
                    .map(Fp::new),
            };
            if let Some(fingerprint) = found {
                out.found |= class.bit();
                out.hits.push(Hit {
                    class,
                    location: place.location(),
                    fingerprint,
                });
            }
        }
        out.decoded = decoded;
        out.lower = lower;
    }

    /// Scans a raw (percent-encoded) path, segment by segment.
    pub fn scan_path(&self, path: &str, out: &mut Hits) {
        if self.classes & !out.found == 0 {
            return;
        }
        // A path of plain segments (most: `/api/items/42`) has nothing to find: its segments
        // are counted as scanned, as the loop below would, without entering it.
        if path.bytes().all(|b| b == b'/' || plain(b)) {
            out.values += segments(path.as_bytes());
            return;
        }
        for segment in path.split('/') {
            self.scan_value(segment.as_bytes(), Place::Path, false, out);
        }
    }

    /// Scans a raw query string: every value, and names that are not plain words.
    pub fn scan_query(&self, query: &str, out: &mut Hits) {
        self.scan_pairs(query.as_bytes(), b";", Place::Query, out);
    }

    /// Scans `name=value` pairs split on `&` (and `more` separators): values, then names.
    fn scan_pairs<'s>(
        &self,
        s: &'s [u8],
        more: &[u8],
        place: fn(&'s [u8]) -> Place<'s>,
        out: &mut Hits,
    ) {
        for pair in s.split(|b| *b == b'&' || more.contains(b)) {
            let (name, value) = split_eq(pair).unwrap_or((pair, b""));
            self.scan_value(value, place(name), true, out);
            self.scan_value(name, place(name), true, out);
        }
    }

    /// Scans a header: the configured ones for every class, the cookie header's values when
    /// cookies are on, and any header for Log4Shell lookups.
    pub fn scan_header(&self, name: &str, value: &[u8], out: &mut Hits) {
        if name == "cookie" {
            if self.cookies {
                for c in value.split(|b| *b == b';') {
                    let c = c.trim_ascii();
                    let (n, v) = split_eq(c).unwrap_or((b"", c));
                    self.scan_value(v, Place::Cookie(n), false, out);
                }
            }
            return;
        }
        if self.headers.iter().any(|h| h == name) {
            if value.len() < CACHED_FROM || out.found != 0 {
                self.scan_value(value, Place::Header(name), false, out);
                return;
            }
            let key = self.hasher.hash_one(value);
            if let Some(cached) = self.seen.get(&key) {
                if let Some((class, fingerprint)) = cached {
                    out.found |= class.bit();
                    out.hits.push(Hit {
                        class,
                        location: Place::Header(name).location(),
                        fingerprint,
                    });
                }
                out.values += 1;
                return;
            }
            let before = out.hits.len();
            self.scan_value(value, Place::Header(name), false, out);
            // Only a value with no hit or one hit is remembered (a value with several
            // is scanned again: rare, and not worth a bigger entry).
            match out.hits.get(before..) {
                Some([]) => self.seen.insert(key, None),
                Some([h]) => self.seen.insert(key, Some((h.class, h.fingerprint))),
                _ => {}
            }
        } else if self.scans(Class::Log4shell)
            && has_lookup_byte(value)
            && (classes::find(value, b"${").is_some()
                || value.windows(3).any(|w| w.eq_ignore_ascii_case(b"%24")))
        {
            self.scan_classes(
                value,
                Place::Header(name),
                false,
                Class::Log4shell.bit(),
                out,
            );
        }
    }

    /// Scans a form body's names and values.
    pub fn scan_form(&self, body: &[u8], out: &mut Hits) {
        self.scan_pairs(body, b"", Place::Form, out);
    }

    /// Scans a JSON body's strings (keys and values), depth-first, to a bounded depth and
    /// count. A body that is not JSON is scanned as one value.
    pub fn scan_json(&self, body: &[u8], out: &mut Hits) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => {
                let mut pointer = String::new();
                let mut budget = 10_000usize;
                self.walk(&v, &mut pointer, 0, &mut budget, out);
            }
            Err(_) => self.scan_value(body, Place::Body(""), false, out),
        }
    }

    fn walk(
        &self,
        v: &serde_json::Value,
        pointer: &mut String,
        depth: usize,
        budget: &mut usize,
        out: &mut Hits,
    ) {
        if depth > 64 || *budget == 0 || out.found == self.classes {
            return;
        }
        *budget -= 1;
        match v {
            serde_json::Value::String(s) => {
                self.scan_value(s.as_bytes(), Place::Body(pointer), false, out)
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = pointer.len();
                    if len < 120 {
                        pointer.push('/');
                        pointer.push_str(&i.to_string());
                    }
                    self.walk(item, pointer, depth + 1, budget, out);
                    pointer.truncate(len);
                }
            }
            serde_json::Value::Object(map) => {
                for (k, item) in map {
                    let len = pointer.len();
                    if len < 120 {
                        pointer.push('/');
                        pointer.push_str(k);
                    }
                    self.scan_value(k.as_bytes(), Place::Body(pointer), false, out);
                    self.walk(item, pointer, depth + 1, budget, out);
                    pointer.truncate(len);
                }
            }
            _ => {}
        }
    }
}

const SQL: u8 = 1;
const SPACE: u8 = 2;
const MARKUP: u8 = 4;
const QUOTE: u8 = 8;
const PAREN: u8 = 16;
const PATHY: u8 = 32;
const SHELL: u8 = 64;
const TEMPLATE: u8 = 128;
const DOLLAR: u8 = SHELL;

/// Letters, digits and the characters of ids, dates and names: a value made only of these has
/// nothing to find.
#[inline]
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~' | b',')
}

/// The non-empty segments of a path (`/a//b/` has two), counted by bytes.
fn segments(path: &[u8]) -> usize {
    let mut n = 0;
    let mut prev = b'/';
    for &b in path {
        n += usize::from(prev == b'/' && b != b'/');
        prev = b;
    }
    n
}

/// Whether a value holds a `$` or a `%` (a lookup, or an escaped one). Most header values are
/// short: a plain loop over them costs less than setting up a vector search.
fn has_lookup_byte(value: &[u8]) -> bool {
    if value.len() <= 64 {
        value.iter().any(|&b| b == b'$' || b == b'%')
    } else {
        memchr::memchr2(b'$', b'%', value).is_some()
    }
}

/// Which classes a byte can take part in.
const fn class_of(b: u8) -> u8 {
    let base = if b.is_ascii_alphanumeric() || b == b'_' {
        0
    } else {
        SQL
    };
    base | match b {
        b' ' | b'\t' | b'\r' => SPACE,
        b'\n' => SPACE | SHELL,
        b'<' => MARKUP | TEMPLATE,
        b'>' | b'=' => MARKUP,
        b':' => MARKUP | PATHY,
        b'`' => QUOTE | SHELL,
        b'\'' | b'"' => QUOTE,
        b'(' | b')' => PAREN,
        b'/' | b'\\' | b'.' => PATHY,
        b';' | b'|' | b'&' => SHELL,
        b'$' => SHELL | TEMPLATE,
        b'{' | b'%' | b'[' | b'@' | b'#' | b'*' => TEMPLATE,
        _ => 0,
    }
}

/// Scans one value for every class (the `palisade probes` command, tests, the bench).
pub fn scan_one(value: &[u8], plus_is_space: bool) -> Vec<Hit> {
    static SCANNER: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    let mut hits = Hits::default();
    SCANNER
        .get_or_init(Scanner::default)
        .scan_value(value, Place::Value, plus_is_space, &mut hits);
    hits.hits
}

/// `name=value` split at the first `=`.
fn split_eq(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let p = s.iter().position(|b| *b == b'=')?;
    Some((head(s, p), tail(s, p + 1)))
}

/// `s[i..]`, empty past the end (attacker input is never indexed unchecked).
#[inline]
pub(crate) fn tail(s: &[u8], i: usize) -> &[u8] {
    s.get(i..).unwrap_or_default()
}

/// `s[..i]`, all of `s` past the end.
#[inline]
pub(crate) fn head(s: &[u8], i: usize) -> &[u8] {
    s.get(..i).unwrap_or(s)
}

/// `s[a..b]`, empty when out of range.
#[inline]
pub(crate) fn span(s: &[u8], a: usize, b: usize) -> &[u8] {
    s.get(a..b).unwrap_or_default()
}

/// `s[i]`, 0 past the end.
#[inline]
pub(crate) fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_counted_as_splitting_on_slashes_counts_them() {
        let paths = [
            "",
            "/",
            "//",
            "/a",
            "a",
            "/a/",
            "/a//b/",
            "/api/items/42",
            "a/b",
            "///x///y",
            "/.env",
        ];
        for p in paths {
            let want = p.split('/').filter(|s| !s.is_empty()).count();
            assert_eq!(segments(p.as_bytes()), want, "{p:?}");
        }
    }

    #[test]
    fn a_lookup_byte_is_found_at_every_length_and_place() {
        for len in [0usize, 1, 2, 31, 63, 64, 65, 200] {
            let plain = vec![b'a'; len];
            assert!(!has_lookup_byte(&plain), "{len}");
            for at in 0..len {
                for b in [b'$', b'%'] {
                    let mut v = plain.clone();
                    if let Some(x) = v.get_mut(at) {
                        *x = b;
                    }
                    assert!(has_lookup_byte(&v), "{len} {at}");
                }
            }
        }
    }
}
