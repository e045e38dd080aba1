//! Header fields as wire lines: the upstream's fields kept as they came (no `HeaderMap` per
//! response), the lines Palisade adds, and an answer carrying both beside its response.

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use crate::wire::body::ProxyBody;

/// A response's header fields as the upstream sent them, less the hop-by-hop ones (and those
/// `Connection` names) and the framing ones: kept as `name: value` lines to be written to an
/// HTTP/1.x client as they are, without building a `HeaderMap` per response. Travels beside
/// the response ([`Answer`]); [`UpstreamFields::merge_into`] makes headers of them for HTTP/2.
#[derive(Debug, Clone, Default)]
pub struct UpstreamFields {
    lines: Bytes,
    /// The upstream's `Content-Length` (absent with `Transfer-Encoding`): the length a
    /// response to HEAD describes.
    pub content_length: Option<u64>,
    /// [`name_bit`] of every field's name.
    names: u64,
    has_date: bool,
}

/// One bit standing for a header name (from its length and first letter, any case): fields
/// whose bits do not meet those of the headers Palisade set cannot clash with them.
pub fn name_bit(name: &[u8]) -> u64 {
    let first = name.first().map_or(0, u8::to_ascii_lowercase);
    1u64 << ((name.len().wrapping_mul(7).wrapping_add(usize::from(first))) % 64)
}

impl UpstreamFields {
    /// Fields from the wire lines a parser kept (`name: value\r\n` each), with the
    /// [`name_bit`]s of their names and whether a `Date` is among them.
    pub(crate) fn new(
        lines: Bytes,
        content_length: Option<u64>,
        names: u64,
        has_date: bool,
    ) -> Self {
        Self {
            lines,
            content_length,
            names,
            has_date,
        }
    }

    /// The fields as `(name, value)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        split_fields(&self.lines)
    }

    /// Fields from wire lines (tests of the side that writes them).
    #[cfg(test)]
    pub(crate) fn from_wire(lines: &'static str, content_length: Option<u64>) -> Self {
        let mut f = Self {
            lines: Bytes::from_static(lines.as_bytes()),
            content_length,
            names: 0,
            has_date: false,
        };
        let (names, has_date) = f.iter().fold((0, false), |(m, d), (n, _)| {
            (m | name_bit(n), d || n.eq_ignore_ascii_case(b"date"))
        });
        f.names = names;
        f.has_date = has_date;
        f
    }

    /// All the fields' wire lines, and whether one is `Date`, when none can clash with
    /// headers whose [`name_bit`]s are `taken`; `None` otherwise (then see
    /// [`Self::named_lines`]).
    pub fn wire_unless(&self, taken: u64) -> Option<(&[u8], bool)> {
        (self.names & taken == 0).then_some((&self.lines[..], self.has_date))
    }

    /// Each field as its wire line, `name: value\r\n`.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.split_inclusive(|b| *b == b'\n')
    }

    /// Each field's wire line with its name.
    pub fn named_lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        split_lines(&self.lines)
    }

    /// The first value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Appends the fields to `headers`, except those whose name `headers` already has (set by
    /// Palisade, they replace the upstream's), with the upstream's `Content-Length`.
    pub fn merge_into(&self, headers: &mut HeaderMap) {
        let kept: Vec<(HeaderName, HeaderValue)> = self
            .iter()
            .filter_map(|(n, v)| {
                let name = HeaderName::from_bytes(n).ok()?;
                if headers.contains_key(&name) {
                    return None;
                }
                Some((name, HeaderValue::from_bytes(v).ok()?))
            })
            .collect();
        for (name, value) in kept {
            headers.append(name, value);
        }
        if let Some(n) = self.content_length
            && !headers.contains_key(CONTENT_LENGTH)
        {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// Header fields Palisade adds to a message, as wire lines (`name: value\r\n`). They replace
/// the message's own fields of the same names. Written straight into an HTTP/1.x head (no
/// `HeaderMap` insertions per message), or set as headers ([`HeadLines::apply`]) for HTTP/2.
#[derive(Debug, Default, Clone)]
pub struct HeadLines {
    lines: Vec<u8>,
    /// [`name_bit`] of every name.
    names: u64,
}

impl HeadLines {
    /// Empty, with room for `bytes` of lines.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            lines: Vec::with_capacity(bytes),
            names: 0,
        }
    }

    /// Adds `name: value`. `name` is a lowercase token; a value with control bytes (other than
    /// HTAB) is not added.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        if value
            .iter()
            .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
        {
            self.line(name, &[value]);
        }
    }

    /// Adds `name: ` and the `parts` of a value, unchecked: each part must come from a valid
    /// field value (a `HeaderValue`, digits, an address), which their concatenation then is.
    #[inline(always)]
    pub(crate) fn line(&mut self, name: &[u8], parts: &[&[u8]]) {
        // Inlined with the constant name: its bytes, `: ` and CRLF become stores, not calls.
        let len = name.len() + 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        self.lines.reserve(len);
        self.lines.extend_from_slice(name);
        self.lines.extend_from_slice(b": ");
        for p in parts {
            self.lines.extend_from_slice(p);
        }
        self.lines.extend_from_slice(b"\r\n");
        self.names |= name_bit(name);
    }

    /// The wire lines.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// [`name_bit`]s of the names.
    pub fn names(&self) -> u64 {
        self.names
    }

    /// Whether a field named `name` (any case) is one of these.
    pub fn replaces(&self, name: &[u8]) -> bool {
        self.names & name_bit(name) != 0
            && split_lines(&self.lines).any(|(_, n)| n.eq_ignore_ascii_case(name))
    }

    /// Sets these in `headers`, replacing fields of the same names.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in split_fields(&self.lines) {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.insert(n, v);
            }
        }
    }
}

/// Each `name: value\r\n` line of `lines` with its name.
fn split_lines(lines: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    lines.split_inclusive(|b| *b == b'\n').map(|line| {
        let colon = line.iter().position(|b| *b == b':').unwrap_or(0);
        (line, line.get(..colon).unwrap_or_default())
    })
}

/// Each `name: value\r\n` line of `lines` as its name and value.
fn split_fields(lines: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    split_lines(lines).map(|(line, name)| {
        let value = line.get(name.len() + 2..line.len().saturating_sub(2));
        (name, value.unwrap_or_default())
    })
}

/// A response, with the upstream's header fields beside it when an HTTP/1.1 upstream sent
/// them (they are not in its `HeaderMap`; see [`UpstreamFields`]).
#[derive(Debug)]
pub struct Answer {
    /// Status, headers and the body.
    pub response: Response<ProxyBody>,
    /// Fields Palisade adds (RateLimit headers, request id), which replace any of the same
    /// name in `response` or `fields`.
    pub lines: HeadLines,
    /// The upstream's header fields, to be written after the others.
    pub fields: Option<UpstreamFields>,
}

impl From<Response<ProxyBody>> for Answer {
    fn from(response: Response<ProxyBody>) -> Self {
        Self {
            response,
            lines: HeadLines::default(),
            fields: None,
        }
    }
}

impl Answer {
    /// The response with Palisade's lines and the upstream's fields in its headers.
    pub fn merged(self) -> Response<ProxyBody> {
        let mut response = self.response;
        self.lines.apply(response.headers_mut());
        if let Some(fields) = self.fields {
            fields.merge_into(response.headers_mut());
        }
        response
    }
}

/// A `Content-Length` value: digits only (no sign, no spaces), at most 19 of them.
pub(crate) fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}
