//! The request path as the policy judges it and as the upstream receives it: one canonical
//! form, so that no spelling of a path reaches a handler the policy did not judge.
//!
//! Upstream frameworks disagree on what a path means: Express and ASP.NET route without regard
//! to case, Tomcat and Spring strip `;matrix` parameters (and read `..;` as `..`), some servers
//! decode `%2F` into a separator or treat `\` as `/`, Spring used to match `/x.json` as `/x`,
//! others trim spaces. Palisade therefore:
//!
//! - **forwards the canonical path**: repeated slashes merged, `.` and `..` segments resolved
//!   (also when spelled `%2e`), percent-escapes of unreserved characters (RFC 3986 section
//!   2.3) decoded, every other escape kept with uppercase hex. The query is not touched;
//! - **refuses (400) what cannot be made unambiguous**: invalid percent-encoding, control
//!   characters and NUL (raw or encoded), bytes that do not decode to UTF-8 (overlong `%C0%AF`),
//!   double-encoded separators, dots and escapes (`%252F`, also spelled in pieces as
//!   `%25%32F`), spaces at either end of a segment,
//!   and `.`/`..` hidden behind an ambiguous separator (`..;/`, `..%2F`);
//! - **refuses (400) unless the matched route allows it** ([`Ambiguities`]): encoded slashes,
//!   backslashes and `;` in the path;
//! - matches routes without regard to ASCII case unless configured otherwise, and matches a
//!   route's literal last segment with any `.suffix` (see [`crate::request::route`]).
//!
//! Pure: a function of the bytes, no allocation when the path is already canonical.

use std::borrow::Cow;

/// Features of a path that some upstreams read one way and some another. A request whose path
/// has any of them is forwarded only when its route allows all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Ambiguities(u8);

impl Ambiguities {
    /// None.
    pub const NONE: Self = Self(0);
    /// `%2F` inside a segment (a separator to servers that decode before routing).
    pub const ENCODED_SLASH: Self = Self(1);
    /// `\` or `%5C` (a separator to Windows servers and some routers).
    pub const BACKSLASH: Self = Self(2);
    /// `;` (matrix parameters, stripped by Tomcat and Spring before routing).
    pub const SEMICOLON: Self = Self(4);

    /// The config names, in order.
    pub const NAMES: [(&'static str, Self); 3] = [
        ("encoded_slash", Self::ENCODED_SLASH),
        ("backslash", Self::BACKSLASH),
        ("semicolon", Self::SEMICOLON),
    ];

    /// The ambiguity a config name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// Both sets.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every ambiguity in `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether there are none.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The config names of those present.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(_, a)| self.contains(*a))
            .map(|(n, _)| n)
    }
}

/// Why a path is refused whatever the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path.
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    BadPercentEncoding,
    /// NUL, another control character, or DEL, raw or encoded.
    #[error("a control character in the path")]
    ControlCharacter,
    /// Decoded bytes that are not UTF-8 (overlong encodings included).
    #[error("the decoded path is not UTF-8")]
    NotUtf8,
    /// `%25` followed by the escape of a separator, a dot, `%` or a control character.
    #[error("a double-encoded separator, dot or escape")]
    DoubleEncoded,
    /// A segment that begins or ends with a space (trimmed by some routers).
    #[error("a path segment begins or ends with a space")]
    EdgeSpace,
    /// `.` or `..` behind an ambiguous separator (`..;x`, `..%2F`, `..\`).
    #[error("a dot segment behind an ambiguous separator")]
    HiddenDotSegment,
}

/// A request path in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    /// The path to judge and to forward.
    pub path: Cow<'a, str>,
    /// What is ambiguous about it (forwarded only where the route allows it).
    pub ambiguities: Ambiguities,
}

/// Whether a byte is unreserved (RFC 3986 section 2.3): its escape means the byte itself.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hi = hex(*bytes.get(i + 1)?)?;
    let lo = hex(*bytes.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// Whether a path holds a `%`, a `//` or a `/.`; when `strict`, also a `\`, a `;`, a control
/// byte, DEL or a non-ASCII byte. Eight bytes at a time: each byte of a word is flagged
/// exactly (no carry crosses a byte), and a `/` flagged in one byte is carried to the next,
/// across words too. Paths are short and most are plain: this costs a few instructions a byte
/// where a loop that branches on each byte costs a dozen.
pub(crate) fn has_special(path: &[u8], strict: bool) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = !LOW7;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // The high bit of each byte of `x` that equals `b`.
    let eq = |x: u64, b: u8| {
        let y = x ^ (ONES * u64::from(b));
        !(((y & LOW7) + LOW7) | y | LOW7)
    };
    let mut carry = 0u64;
    let mut word = |x: u64, pad: u64| {
        let slash = eq(x, b'/');
        let follows_slash = (slash << 8) | carry;
        carry = slash >> 56;
        let mut found = eq(x, b'%') | (follows_slash & (slash | eq(x, b'.')));
        if strict {
            // Below 0x20 (a byte under 0x80 plus 0x60 reaches 0x80 only from 0x20 up), DEL,
            // 0x80 and above, `\` and `;`. The padding's zero bytes are not controls.
            let control = !((x & LOW7) + ONES * 0x60) & HIGH & !pad;
            found |= control | (x & HIGH) | eq(x, 0x7f) | eq(x, b'\\') | eq(x, b';');
        }
        found != 0
    };
    let mut words = path.chunks_exact(8);
    for w in words.by_ref() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        if word(u64::from_le_bytes(b), 0) {
            return true;
        }
    }
    // The tail, padded with zero bytes: `pad` marks them, so that they are not controls.
    let tail = words.remainder();
    let mut b = [0u8; 8];
    for (o, i) in b.iter_mut().zip(tail) {
        *o = *i;
    }
    let pad = HIGH.checked_shl(8 * tail.len() as u32).unwrap_or(0);
    word(u64::from_le_bytes(b), pad)
}

/// Canonicalises a request path (without its query). See the module docs for the rules.
pub fn canonicalize(raw: &str) -> Result<CanonicalPath<'_>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // A path without escapes, backslashes, semicolons, controls, non-ASCII, `//` or `/.` is
    // canonical already.
    if !has_special(bytes, true) {
        return Ok(CanonicalPath {
            path: Cow::Borrowed(raw),
            ambiguities: Ambiguities::NONE,
        });
    }
    let mut ambiguities = Ambiguities::NONE;
    let mut segments: Vec<String> = Vec::new();
    let rest = bytes.get(1..).unwrap_or_default();
    let trailing_slash = rest.last() == Some(&b'/') || rest.is_empty();
    for seg in rest.split(|b| *b == b'/') {
        if seg.is_empty() {
            continue;
        }
        let (canonical, decoded, found) = canonical_segment(seg)?;
        if std::str::from_utf8(&decoded).is_err() {
            return Err(PathError::NotUtf8);
        }
        if decoded.first() == Some(&b' ') || decoded.last() == Some(&b' ') {
            return Err(PathError::EdgeSpace);
        }
        if !found.is_empty() && hides_dot_segment(&decoded) {
            return Err(PathError::HiddenDotSegment);
        }
        ambiguities = ambiguities.union(found);
        match canonical.as_str() {
            "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(canonical),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || (trailing_slash && !segments.is_empty()) {
        path.push('/');
    }
    Ok(CanonicalPath {
        path: Cow::Owned(path),
        ambiguities,
    })
}

/// One segment's canonical spelling, its fully decoded bytes, and its ambiguities.
fn canonical_segment(seg: &[u8]) -> Result<(String, Vec<u8>, Ambiguities), PathError> {
    let mut out = String::with_capacity(seg.len());
    let mut decoded = Vec::with_capacity(seg.len());
    let mut found = Ambiguities::NONE;
    let mut i = 0;
    while let Some(&b) = seg.get(i) {
        match b {
            b'%' => {
                let v = escape_at(seg, i).ok_or(PathError::BadPercentEncoding)?;
                if v < 0x20 || v == 0x7f {
                    return Err(PathError::ControlCharacter);
                }
                match v {
                    b'/' => found = found.union(Ambiguities::ENCODED_SLASH),
                    b'\\' => found = found.union(Ambiguities::BACKSLASH),
                    _ => {}
                }
                if unreserved(v) {
                    out.push(char::from(v));
                } else {
                    push_escape(&mut out, v);
                }
                decoded.push(v);
                i += 3;
            }
            b'\\' => {
                found = found.union(Ambiguities::BACKSLASH);
                out.push_str("%5C");
                decoded.push(b);
                i += 1;
            }
            b';' => {
                found = found.union(Ambiguities::SEMICOLON);
                out.push(';');
                decoded.push(b);
                i += 1;
            }
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            // Raw bytes beyond ASCII: kept escaped (a request target is ASCII).
            _ if b >= 0x80 => {
                push_escape(&mut out, b);
                decoded.push(b);
                i += 1;
            }
            _ => {
                out.push(char::from(b));
                decoded.push(b);
                i += 1;
            }
        }
    }
    // A double encoding is looked for in what is forwarded, not in the raw bytes: `%25%32%65`
    // has no `%25` followed by two hex digits, but forwarded as `%252e` it is a dot to an
    // upstream that decodes twice.
    let text = out.as_bytes();
    let mut at = 0;
    while let Some(j) = text
        .get(at..)
        .and_then(|t| t.windows(3).position(|w| w == b"%25"))
    {
        let pos = at + j;
        if let Some(inner) = escape_at(text, pos + 2)
            && (inner < 0x20 || inner == 0x7f || matches!(inner, b'/' | b'\\' | b'.' | b'%' | b';'))
        {
            return Err(PathError::DoubleEncoded);
        }
        at = pos + 3;
    }
    Ok((out, decoded, found))
}

/// `%XY` with uppercase hex.
fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    for nibble in [b >> 4, b & 15] {
        out.push(char::from(
            HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
        ));
    }
}

/// Whether a decoded segment holds `.` or `..` that an upstream splitting on `/`, `\` or
/// stripping `;` parameters would read as a dot segment.
fn hides_dot_segment(decoded: &[u8]) -> bool {
    decoded
        .split(|b| matches!(b, b'/' | b'\\'))
        .map(|piece| piece.split(|b| *b == b';').next().unwrap_or_default())
        .any(|p| p == b"." || p == b"..")
}

/// Every string of up to `len` bytes over `alphabet`, shortest first (for exhaustive tests).
#[cfg(test)]
pub(crate) fn every_string(alphabet: &[u8], len: usize) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = vec![Vec::new()];
    let mut frontier: Vec<Vec<u8>> = vec![Vec::new()];
    for _ in 0..len {
        let mut next = Vec::new();
        for p in &frontier {
            for &c in alphabet {
                let mut q = p.clone();
                q.push(c);
                next.push(q);
            }
        }
        all.extend(next.iter().cloned());
        frontier = next;
    }
    all
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<(String, Vec<&'static str>), PathError> {
        canonicalize(p).map(|c| (c.path.into_owned(), c.ambiguities.names().collect()))
    }

    #[test]
    fn the_strict_word_wise_check_flags_exactly_what_a_byte_loop_flags() {
        let reference = |p: &[u8]| {
            p.iter()
                .any(|&b| matches!(b, b'%' | b'\\' | b';') || !(0x20..0x7f).contains(&b))
                || p.windows(2)
                    .any(|w| w[0] == b'/' && matches!(w[1], b'/' | b'.'))
        };
        // The bytes that matter, their neighbours and plain ones.
        let alphabet = [
            b'/', b'.', b'%', b'\\', b';', b'a', 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xff, 0, 0xaf,
        ];
        agrees_everywhere(true, &alphabet, 5, reference);
    }

    #[test]
    fn the_word_wise_check_flags_exactly_what_a_byte_loop_flags() {
        let reference = |p: &[u8]| {
            p.contains(&b'%')
                || p.windows(2)
                    .any(|w| w[0] == b'/' && matches!(w[1], b'/' | b'.'))
        };
        // The bytes that matter and two that do not (one differs from `/` in its high bit).
        agrees_everywhere(
            false,
            &[b'/', b'.', b'%', b'a', 0x2f ^ 0x80, 0],
            6,
            reference,
        );
    }

    /// `has_special(_, strict)` against `reference` on every string of up to `len` bytes over
    /// `alphabet`, then on each of length 3 at every offset into a longer path (to cross the
    /// edges of words).
    fn agrees_everywhere(
        strict: bool,
        alphabet: &[u8],
        len: usize,
        reference: impl Fn(&[u8]) -> bool,
    ) {
        let all = every_string(alphabet, len);
        for p in &all {
            assert_eq!(has_special(p, strict), reference(p), "{p:?}");
        }
        for p in all.iter().filter(|p| p.len() == 3) {
            for at in 0..20 {
                let mut q = b"/abcdefghijklmnopqrstuvwxyz".to_vec();
                q.splice(at..at, p.iter().copied());
                assert_eq!(has_special(&q, strict), reference(&q), "{q:?}");
            }
        }
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for p in ["/", "/api/items/42", "/a.b/c-d_e~f/", "/API/Expensive"] {
            let c = canonicalize(p).unwrap();
            assert!(matches!(c.path, Cow::Borrowed(_)), "{p}");
            assert_eq!(c.path, p);
            assert!(c.ambiguities.is_empty());
        }
    }

    #[test]
    fn spellings_of_one_path_become_one_path() {
        for (raw, want) in [
            ("/api//expensive", "/api/expensive"),
            ("//api/expensive/", "/api/expensive/"),
            ("/api/./expensive", "/api/expensive"),
            ("/api/x/../expensive", "/api/expensive"),
            ("/api/%2e%2e/api/expensive", "/api/expensive"),
            ("/api/%2E/expensive", "/api/expensive"),
            ("/api/%65xpensive", "/api/expensive"),
            ("/%61%70%69/items/%34%32", "/api/items/42"),
            ("/../../etc", "/etc"),
            ("/..", "/"),
            ("/a/b%2a", "/a/b%2A"),
            ("/a/%7e%5f", "/a/~_"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a/100%25", "/a/100%25"),
        ] {
            assert_eq!(canon(raw), Ok((want.to_owned(), vec![])), "{raw}");
        }
    }

    #[test]
    fn what_cannot_be_made_unambiguous_is_refused() {
        for (raw, why) in [
            ("/api/%zzexpensive", PathError::BadPercentEncoding),
            ("/api/expensive%", PathError::BadPercentEncoding),
            ("/api/expensive%2", PathError::BadPercentEncoding),
            ("/api/expensive%00", PathError::ControlCharacter),
            ("/api/expensive%0a", PathError::ControlCharacter),
            ("/api/expensive%7F", PathError::ControlCharacter),
            ("/api/%c0%afexpensive", PathError::NotUtf8),
            ("/api/%ff", PathError::NotUtf8),
            ("/api%252fexpensive", PathError::DoubleEncoded),
            ("/api/%252e%252e/x", PathError::DoubleEncoded),
            ("/api/%2500", PathError::DoubleEncoded),
            // Double encodings spelled in pieces: forwarded, they would read `%2e`, `%2F`, `%1b`.
            ("/api/%25%32%65%25%32%65/x", PathError::DoubleEncoded),
            ("/api%25%32Fexpensive", PathError::DoubleEncoded),
            ("/api/%251%62", PathError::DoubleEncoded),
            ("/api/expensive%20", PathError::EdgeSpace),
            ("/api/%20expensive", PathError::EdgeSpace),
            ("/api/public/..;/expensive", PathError::HiddenDotSegment),
            ("/api/public/..%2Fexpensive", PathError::HiddenDotSegment),
            (
                "/api/public/x%2F..%2F..%2Fexpensive",
                PathError::HiddenDotSegment,
            ),
            ("/api/public/..\\expensive", PathError::HiddenDotSegment),
            ("/api/.;x/expensive", PathError::HiddenDotSegment),
            ("api/expensive", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
        ] {
            assert_eq!(canon(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn ambiguous_separators_are_named_and_kept() {
        assert_eq!(
            canon("/api%2fexpensive"),
            Ok(("/api%2Fexpensive".to_owned(), vec!["encoded_slash"]))
        );
        assert_eq!(
            canon("/api\\expensive"),
            Ok(("/api%5Cexpensive".to_owned(), vec!["backslash"]))
        );
        assert_eq!(
            canon("/api%5cexpensive"),
            Ok(("/api%5Cexpensive".to_owned(), vec!["backslash"]))
        );
        assert_eq!(
            canon("/api/expensive;x=1"),
            Ok(("/api/expensive;x=1".to_owned(), vec!["semicolon"]))
        );
        assert_eq!(
            canon("/a;b/c%2Fd\\e"),
            Ok((
                "/a;b/c%2Fd%5Ce".to_owned(),
                vec!["encoded_slash", "backslash", "semicolon"]
            ))
        );
        // An escaped semicolon is data to every router (Tomcat strips before decoding).
        assert_eq!(canon("/a%3Bb"), Ok(("/a%3Bb".to_owned(), vec![])));
    }

    #[test]
    fn ambiguity_sets() {
        let all = Ambiguities::ENCODED_SLASH
            .union(Ambiguities::BACKSLASH)
            .union(Ambiguities::SEMICOLON);
        assert!(all.contains(Ambiguities::SEMICOLON));
        assert!(!Ambiguities::SEMICOLON.contains(all));
        assert!(Ambiguities::NONE.is_empty());
        for (name, a) in Ambiguities::NAMES {
            assert_eq!(Ambiguities::from_name(name), Some(a));
        }
        assert_eq!(Ambiguities::from_name("nul"), None);
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for raw in [
            "/a//b/./c/../d%2f;x",
            "/%41%2e%2E/b",
            "/x/y/",
            "/a%5cb",
            "/caf%C3%A9/",
        ] {
            let once = canonicalize(raw).unwrap();
            let twice = canonicalize(&once.path).unwrap();
            assert_eq!(once.path, twice.path, "{raw}");
            assert_eq!(once.ambiguities, twice.ambiguities, "{raw}");
        }
    }
}
