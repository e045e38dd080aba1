//! Undoing the encodings attackers wrap a payload in before the classes look at it: percent
//! (and double percent, `%uXXXX`), `+` for a space, HTML character references (named, decimal,
//! hexadecimal, with or without the `;`), backslash escapes (`\uXXXX`, `\u{…}`, `\xHH`), NUL
//! bytes, overlong UTF-8 for `.`, `/` and `\`, and fullwidth ASCII. Layers are peeled until
//! nothing changes, at most [`MAX_ROUNDS`] times, and the output never grows past the input's
//! length (every form shrinks), so the cost is linear in the value.

use super::{at, head, span, tail};

/// How many layers are peeled at most (`%2525253C` needs four).
pub const MAX_ROUNDS: usize = 4;

/// Bytes that start an encoded form; a value without any is returned as it is.
fn starts_encoding(b: u8) -> bool {
    matches!(
        b,
        b'%' | b'+' | b'&' | b'\\' | 0 | 0xC0 | 0xC1 | 0xE0 | 0xEF
    )
}

/// Whether `value` holds anything [`decode`] would change.
pub fn needs_decoding(value: &[u8]) -> bool {
    value.iter().any(|&b| starts_encoding(b))
}

/// Decodes `value` into `out` (cleared first). `plus_is_space`: a query or form value, where
/// `+` is a space in the first layer.
pub fn decode(value: &[u8], plus_is_space: bool, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(value);
    if !needs_decoding(value) {
        return;
    }
    let mut next = Vec::with_capacity(value.len());
    for round in 0..MAX_ROUNDS {
        next.clear();
        let changed = peel(out, plus_is_space && round == 0, &mut next);
        std::mem::swap(out, &mut next);
        if !changed || !needs_decoding(out) {
            break;
        }
    }
}

/// What one encoded form decodes to.
enum Emit {
    /// Nothing (a NUL byte, or no encoded form here).
    Nothing,
    /// A raw byte (`%XX`).
    Byte(u8),
    /// A character, UTF-8 encoded.
    Char(char),
}

/// One layer: returns whether anything changed.
fn peel(input: &[u8], plus_is_space: bool, out: &mut Vec<u8>) -> bool {
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        let b = at(input, i);
        let (emit, used): (Emit, usize) = match b {
            b'%' => percent(tail(input, i)),
            b'+' if plus_is_space => (Emit::Char(' '), 1),
            b'&' => entity(tail(input, i)),
            b'\\' => escape(tail(input, i)),
            0 => (Emit::Nothing, 1),
            0xC0 | 0xC1 | 0xE0 => overlong(tail(input, i)),
            0xEF => fullwidth(tail(input, i)),
            _ => {
                out.push(b);
                i += 1;
                continue;
            }
        };
        if used == 0 {
            out.push(b);
            i += 1;
            continue;
        }
        changed = true;
        match emit {
            Emit::Byte(b) => out.push(b),
            Emit::Char(c) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Emit::Nothing => {}
        }
        i += used;
    }
    changed
}

fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

fn hex_run(s: &[u8], n: usize) -> Option<u32> {
    if s.len() < n {
        return None;
    }
    head(s, n)
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + hex(b)?))
}

/// A code point as a char; a byte value below 0x80 as itself; anything else dropped to a
/// replacement that keeps the length bound.
fn char_of(cp: u32) -> char {
    char::from_u32(cp).unwrap_or('\u{FFFD}')
}

/// `%XX` (the byte) and `%uXXXX` (the code point).
fn percent(s: &[u8]) -> (Emit, usize) {
    if let Some(&u) = s.get(1)
        && (u == b'u' || u == b'U')
        && let Some(cp) = s.get(2..).and_then(|r| hex_run(r, 4))
    {
        return (Emit::Char(char_of(cp)), 6);
    }
    match s.get(1..).and_then(|r| hex_run(r, 2)) {
        // The byte itself: a non-ASCII one stays raw, so overlong UTF-8 is seen next layer.
        Some(v) => (Emit::Byte(v as u8), 3),
        None => (Emit::Nothing, 0),
    }
}

/// Named references an attacker uses to hide markup and script, plus numeric ones.
const NAMED: &[(&[u8], char)] = &[
    (b"lt", '<'),
    (b"gt", '>'),
    (b"quot", '"'),
    (b"apos", '\''),
    (b"amp", '&'),
    (b"colon", ':'),
    (b"lpar", '('),
    (b"rpar", ')'),
    (b"sol", '/'),
    (b"bsol", '\\'),
    (b"tab", '\t'),
    (b"newline", '\n'),
    (b"nbsp", ' '),
    (b"semi", ';'),
    (b"equals", '='),
    (b"grave", '`'),
    (b"lbrace", '{'),
    (b"rbrace", '}'),
    (b"period", '.'),
    (b"comma", ','),
    (b"excl", '!'),
];

fn entity(s: &[u8]) -> (Emit, usize) {
    if s.get(1) == Some(&b'#') {
        let (radix, start) = match s.get(2) {
            Some(b'x' | b'X') => (16, 3),
            _ => (10, 2),
        };
        let mut cp: u32 = 0;
        let mut j = start;
        // Leading zeros are allowed by browsers and used to pad past filters.
        while j < s.len() && j < start + 12 {
            match (at(s, j) as char).to_digit(radix) {
                Some(d) => cp = cp.saturating_mul(radix).saturating_add(d),
                None => break,
            }
            j += 1;
        }
        if j == start {
            return (Emit::Nothing, 0);
        }
        if s.get(j) == Some(&b';') {
            j += 1;
        }
        return (Emit::Char(char_of(cp.min(0x10FFFF))), j);
    }
    for (name, c) in NAMED {
        let end = 1 + name.len();
        if s.len() > end
            && span(s, 1, end).eq_ignore_ascii_case(name)
            && (at(s, end) == b';' || (*c == '<' || *c == '>' || *c == '"' || *c == '&'))
        {
            let used = if at(s, end) == b';' { end + 1 } else { end };
            return (Emit::Char(*c), used);
        }
        if s.len() == end && span(s, 1, end).eq_ignore_ascii_case(name) {
            return (Emit::Char(*c), end);
        }
    }
    (Emit::Nothing, 0)
}

/// `\uXXXX`, `\u{X…}`, `\xHH`.
fn escape(s: &[u8]) -> (Emit, usize) {
    match s.get(1) {
        Some(b'u' | b'U') => {
            if s.get(2) == Some(&b'{') {
                let close = s.iter().take(12).position(|&b| b == b'}');
                if let Some(c) = close
                    && c > 3
                {
                    let cp = span(s, 3, c)
                        .iter()
                        .try_fold(0u32, |a, &b| Some(a.saturating_mul(16) + hex(b)?));
                    if let Some(cp) = cp {
                        return (Emit::Char(char_of(cp.min(0x10FFFF))), c + 1);
                    }
                }
                return (Emit::Nothing, 0);
            }
            match s.get(2..).and_then(|r| hex_run(r, 4)) {
                Some(cp) => (Emit::Char(char_of(cp)), 6),
                None => (Emit::Nothing, 0),
            }
        }
        Some(b'x' | b'X') => match s.get(2..).and_then(|r| hex_run(r, 2)) {
            Some(v) if v < 0x80 => (Emit::Char(v as u8 as char), 4),
            _ => (Emit::Nothing, 0),
        },
        _ => (Emit::Nothing, 0),
    }
}

/// Overlong UTF-8 for `.`, `/` and `\` (`%c0%ae%c0%ae%c0%af`), once percent-decoded.
fn overlong(s: &[u8]) -> (Emit, usize) {
    match s {
        [0xC0, 0xAE, ..] | [0xE0, 0x80, 0xAE, ..] => {
            (Emit::Char('.'), if at(s, 0) == 0xE0 { 3 } else { 2 })
        }
        [0xC0, 0xAF, ..] | [0xE0, 0x80, 0xAF, ..] => {
            (Emit::Char('/'), if at(s, 0) == 0xE0 { 3 } else { 2 })
        }
        [0xC1, 0x9C, ..] => (Emit::Char('\\'), 2),
        [0xC0, 0xBC, ..] => (Emit::Char('<'), 2),
        [0xC0, 0xBE, ..] => (Emit::Char('>'), 2),
        _ => (Emit::Nothing, 0),
    }
}

/// Fullwidth forms U+FF01..U+FF5E (`＜ｓｃｒｉｐｔ＞`), which some stacks fold to ASCII.
fn fullwidth(s: &[u8]) -> (Emit, usize) {
    match s {
        [0xEF, 0xBC, b @ 0x81..=0xBF, ..] => (Emit::Char((0x21 + (b - 0x81)) as char), 3),
        [0xEF, 0xBD, b @ 0x80..=0x9E, ..] => (Emit::Char((0x60 + (b - 0x80)) as char), 3),
        _ => (Emit::Nothing, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str, plus: bool) -> String {
        let mut out = Vec::new();
        decode(s.as_bytes(), plus, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn layers_are_peeled() {
        assert_eq!(d("%3Cscript%3E", false), "<script>");
        assert_eq!(d("%253Cscript%253E", false), "<script>");
        assert_eq!(d("%25253Cx", false), "<x");
        assert_eq!(d("1+OR+1%3D1", true), "1 OR 1=1");
        assert_eq!(d("1+1", false), "1+1");
        assert_eq!(d("&lt;img src=x&gt;", false), "<img src=x>");
        assert_eq!(d("&#x3C;&#60;&#0000060", false), "<<<");
        assert_eq!(d("java&Tab;script&colon;", false), "java\tscript:");
        assert_eq!(d("\\u003cb\\x3e\\u{3c}", false), "<b><");
        assert_eq!(d("%u003Cb", false), "<b");
        assert_eq!(d("..%c0%af..%c0%af", false), "../../");
        assert_eq!(d("a\0b", false), "ab");
        assert_eq!(d("ＳＥＬＥＣＴ", false), "SELECT");
        assert_eq!(d("100%", false), "100%");
        assert_eq!(d("Tom &amp; Jerry", false), "Tom & Jerry");
        assert_eq!(d("AT&T", false), "AT&T");
    }

    #[test]
    fn output_never_grows() {
        for s in [
            "%ff%fe",
            "&#x10FFFF;",
            "%uFFFF",
            "\\u{10FFFF}",
            "&#9999999999999;",
        ] {
            let mut out = Vec::new();
            decode(s.as_bytes(), true, &mut out);
            assert!(out.len() <= s.len(), "{s}: {out:?}");
        }
    }
}
