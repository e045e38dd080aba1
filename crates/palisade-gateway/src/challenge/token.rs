//! Challenge and clearance tokens: `base64url(JSON).base64url(HMAC-SHA256)`, stateless, under a
//! key kept in the data dir (and shared through the store in a cluster). Parsing is bounded:
//! a token over [`MAX_TOKEN`] bytes, with a bad MAC, or of the wrong kind is refused before its
//! JSON is read.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Longest token read.
pub const MAX_TOKEN: usize = 4096;

/// A proof-of-work puzzle put to one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Puzzle {
    /// Kind: always `"p"`.
    pub k: String,
    /// Random nonce (hex): makes the puzzle unique, and a solution usable once.
    pub n: String,
    /// Leading zero bits the solution's hash needs.
    pub b: u8,
    /// Issued at (Unix seconds).
    pub i: u64,
    /// Expires at (Unix seconds).
    pub e: u64,
    /// The client binding's hash.
    pub h: String,
    /// Where to return: the original path and query.
    pub u: String,
    /// The original method.
    pub m: String,
    /// The route challenged (a metric label).
    pub r: String,
    /// The policy digest that put it.
    pub p: u64,
}

/// A clearance: a solved challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pass {
    /// Kind: always `"c"`.
    pub k: String,
    /// Issued at.
    pub i: u64,
    /// Expires at.
    pub e: u64,
    /// How it was earned: `"pow"` or `"wait"`.
    pub l: String,
    /// The client binding's hash.
    pub h: String,
    /// The policy digest that issued it (a policy change challenges again).
    pub p: u64,
    /// Browser signals the page reported (bit flags, see `signals`).
    #[serde(default)]
    pub f: u16,
    /// The browser's time zone (IANA name), as the page reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z: Option<String>,
}

/// Signs and opens tokens under one key.
pub struct Sealer {
    key: hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// A sealer for a 32-byte secret.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// `value` as a signed token.
    pub fn seal<T: Serialize>(&self, value: &T) -> String {
        let json = serde_json::to_vec(value).unwrap_or_default();
        let body = URL_SAFE_NO_PAD.encode(json);
        let tag = hmac::sign(&self.key, body.as_bytes());
        let mut out = body;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        out
    }

    /// HMAC-SHA256 of `data` under the key, as hex (ALTCHA's challenge signature).
    pub fn mac_hex(&self, data: &[u8]) -> String {
        palisade_keys::key::hex(hmac::sign(&self.key, data).as_ref())
    }

    /// The value of a token this key signed, or `None` (too long, malformed, forged).
    pub fn open<T: for<'de> Deserialize<'de>>(&self, token: &str) -> Option<T> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let (body, tag) = token.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, body.as_bytes(), &tag).ok()?;
        let json = URL_SAFE_NO_PAD.decode(body).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// Leading zero bits of a hash.
pub fn leading_zero_bits(h: &[u8]) -> u32 {
    let mut n = 0;
    for b in h {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Whether `counter` solves the puzzle `token` at `bits`: SHA-256(`token:counter`) starts
/// with `bits` zero bits. The counter is a decimal number of at most 20 digits.
pub fn solves(token: &str, counter: &str, bits: u8) -> bool {
    if counter.is_empty() || counter.len() > 20 || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(token.as_bytes());
    ctx.update(b":");
    ctx.update(counter.as_bytes());
    leading_zero_bits(ctx.finish().as_ref()) >= u32::from(bits)
}

/// Finds a counter solving `token` at `bits` (the reference solver).
pub fn solve(token: &str, bits: u8) -> u64 {
    let mut base = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    base.update(token.as_bytes());
    base.update(b":");
    let mut buf = itoa::Buffer::new();
    for n in 0u64.. {
        let mut ctx = base.clone();
        ctx.update(buf.format(n).as_bytes());
        if leading_zero_bits(ctx.finish().as_ref()) >= u32::from(bits) {
            return n;
        }
    }
    u64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> Pass {
        Pass {
            k: "c".into(),
            i: 1,
            e: 2,
            l: "pow".into(),
            h: "ab".into(),
            p: 7,
            f: 0,
            z: None,
        }
    }

    #[test]
    fn sealed_tokens_open_only_under_their_key_and_untouched() {
        let s = Sealer::new(&[1; 32]);
        let t = s.seal(&pass());
        assert_eq!(s.open::<Pass>(&t), Some(pass()));
        assert_eq!(Sealer::new(&[2; 32]).open::<Pass>(&t), None);
        // Any change to the body or the tag is refused.
        let (body, tag) = t.split_once('.').unwrap_or_default();
        let mut b = body.as_bytes().to_vec();
        b[3] ^= 1;
        let forged = format!("{}.{tag}", String::from_utf8_lossy(&b));
        assert_eq!(s.open::<Pass>(&forged), None);
        assert_eq!(s.open::<Pass>(&format!("{body}.{}", &tag[1..])), None);
        assert_eq!(s.open::<Pass>(""), None);
        assert_eq!(s.open::<Pass>("."), None);
        assert_eq!(s.open::<Pass>(&"a".repeat(MAX_TOKEN + 1)), None);
        // A puzzle is not a pass.
        let p = Puzzle {
            k: "p".into(),
            n: "00".into(),
            b: 1,
            i: 0,
            e: 0,
            h: String::new(),
            u: "/".into(),
            m: "GET".into(),
            r: "default".into(),
            p: 0,
        };
        assert_eq!(s.open::<Pass>(&s.seal(&p)), None);
    }

    #[test]
    fn the_reference_solver_solves_and_the_check_is_exact() {
        for bits in [0u8, 4, 8, 12] {
            let n = solve("tok", bits).to_string();
            assert!(solves("tok", &n, bits), "{bits}");
        }
        let n = solve("tok", 12);
        // A counter that does not solve it (almost surely: 1 in 4096 would).
        let wrong = (0..).find(|m| *m != n && !solves("tok", &m.to_string(), 12));
        assert!(wrong.is_some());
        assert!(!solves("tok", "", 0));
        assert!(!solves("tok", "12a", 0));
        assert!(!solves("tok", "-1", 0));
        assert!(!solves("tok", &"9".repeat(21), 0));
        assert_eq!(leading_zero_bits(&[0, 0x10]), 11);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }
}
