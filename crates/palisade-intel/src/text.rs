//! Short fixed-length ASCII text held on the stack: the ids and fingerprints made on every
//! request, without an allocation each.

/// `N` bytes of ASCII text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsciiText<const N: usize>([u8; N]);

impl<const N: usize> AsciiText<N> {
    /// `bytes` as text; a byte that is not ASCII becomes `?` (callers write ASCII only).
    pub fn new(mut bytes: [u8; N]) -> Self {
        for b in &mut bytes {
            if !b.is_ascii() {
                *b = b'?';
            }
        }
        Self(bytes)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // ASCII only (see `new`): always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> std::ops::Deref for AsciiText<N> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> std::fmt::Display for AsciiText<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> std::fmt::Debug for AsciiText<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> PartialEq<&str> for AsciiText<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> PartialEq<String> for AsciiText<N> {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_kept_and_anything_else_becomes_a_question_mark() {
        let t = AsciiText::new(*b"ab-09_Z");
        assert_eq!(t, "ab-09_Z");
        assert_eq!(t.len(), 7);
        assert_eq!(format!("{t} {t:?}"), "ab-09_Z \"ab-09_Z\"");
        let mixed = AsciiText::new([b'a', 0xc3, 0xa9, b'z']);
        assert_eq!(mixed, "a??z");
        assert_eq!(mixed, String::from("a??z"));
    }
}
