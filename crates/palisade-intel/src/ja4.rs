//! JA4, the TLS client fingerprint (FoxIO, BSD-3-Clause; the spec is in
//! `shared/testdata/ja4/JA4.md`), from the bytes a client sends first: a TLS ClientHello.
//!
//! [`ClientHello::read`] takes the raw bytes of the connection (TLS records, possibly several:
//! a ClientHello may be fragmented across records and arrive over many TCP segments) and says
//! whether a whole ClientHello is there, more bytes are needed, or this is not one. Everything
//! is bounded: a handshake message longer than [`MAX_HELLO`] is refused, and every length is
//! checked against what is left — the input is the attacker's.

use sha2::{Digest, Sha256};

/// The largest ClientHello accepted (handshake body). Real ones are under 2 KiB; post-quantum
/// key shares bring Chrome's to about 1.8 KiB, padding to 512 bytes, session tickets add some.
pub const MAX_HELLO: usize = 16 * 1024;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// A whole ClientHello, parsed.
    Hello(Box<ClientHello>),
    /// A ClientHello so far: at least this many bytes in all are needed to go on.
    Incomplete(usize),
    /// Not a TLS ClientHello, or a malformed one.
    Invalid(&'static str),
}

/// The parts of a ClientHello a fingerprint is made of (GREASE values included as sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The legacy `client_version` field.
    pub legacy_version: u16,
    /// Cipher suites, in order.
    pub ciphers: Vec<u16>,
    /// Extension types, in order.
    pub extensions: Vec<u16>,
    /// `supported_versions` (43), in order, if sent.
    pub supported_versions: Option<Vec<u16>>,
    /// `signature_algorithms` (13), in order.
    pub signature_algorithms: Vec<u16>,
    /// The first ALPN protocol, if the extension (16) names any.
    pub alpn_first: Option<Vec<u8>>,
    /// All ALPN protocols offered.
    pub alpn: Vec<Vec<u8>>,
    /// The server name (SNI host name), if sent and valid UTF-8.
    pub server_name: Option<String>,
}

/// What is wrong with a handshake message's first four bytes (type, 24-bit length), if they
/// are there.
fn bad_handshake_header(head: &[u8]) -> Option<&'static str> {
    let mut c = Cur(head);
    let (kind, len) = (c.u8()?, c.u24()?);
    if kind != CLIENT_HELLO {
        return Some("not a ClientHello");
    }
    (len > MAX_HELLO).then_some("ClientHello too large")
}

/// Whether a 16-bit value is a GREASE value (RFC 8701): `0x?a?a` with equal bytes.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// A cursor over attacker bytes: every read is checked.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(
            usize::from(*b.first()?) << 16 | usize::from(*b.get(1)?) << 8 | usize::from(*b.get(2)?),
        )
    }
    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
        let n = match len_bytes {
            1 => usize::from(self.u8()?),
            2 => usize::from(self.u16()?),
            _ => self.u24()?,
        };
        self.take(n)
    }
    fn u16s(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks_exact(2)
            .filter_map(|c| Some(u16::from_be_bytes([*c.first()?, *c.get(1)?])))
            .collect()
    }
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;

impl ClientHello {
    /// Reads a ClientHello from the first bytes of a connection: TLS records of the handshake
    /// type, concatenated until the handshake message is whole.
    pub fn read(bytes: &[u8]) -> Read {
        let mut rest = bytes;
        let mut message: Vec<u8> = Vec::new();
        let mut consumed = 0usize;
        loop {
            // A record header: type, version, length.
            let Some(header) = rest.get(..5) else {
                return Read::Incomplete(consumed + 5);
            };
            let (kind, major, len) = match header {
                [k, maj, _, hi, lo] => (*k, *maj, usize::from(*hi) << 8 | usize::from(*lo)),
                _ => return Read::Incomplete(consumed + 5),
            };
            if kind != HANDSHAKE || major != 3 {
                return Read::Invalid("not a TLS handshake record");
            }
            if len == 0 || len > (1 << 14) + 2048 {
                return Read::Invalid("bad TLS record length");
            }
            let Some(fragment) = rest.get(5..5 + len) else {
                // Part of the record: its handshake header, if there, is checked at once (a
                // client claiming a huge or foreign message is refused without waiting).
                let mut head = message.clone();
                head.extend(rest.get(5..).unwrap_or_default().iter().take(4));
                if let Some(bad) = bad_handshake_header(&head) {
                    return Read::Invalid(bad);
                }
                return Read::Incomplete(consumed + 5 + len);
            };
            message.extend_from_slice(fragment);
            consumed += 5 + len;
            rest = rest.get(5 + len..).unwrap_or_default();
            // The handshake header: type and a 24-bit length.
            if message.len() >= 4 {
                if let Some(bad) = bad_handshake_header(&message) {
                    return Read::Invalid(bad);
                }
                let body_len = Cur(message.get(1..4).unwrap_or_default())
                    .u24()
                    .unwrap_or(0);
                if message.len() >= 4 + body_len {
                    let body = message.get(4..4 + body_len).unwrap_or_default();
                    return match Self::parse_body(body) {
                        Some(h) => Read::Hello(Box::new(h)),
                        None => Read::Invalid("malformed ClientHello"),
                    };
                }
                // Another record carries the rest: at least its header more.
                if rest.is_empty() {
                    return Read::Incomplete(consumed + 5);
                }
            } else if rest.is_empty() {
                return Read::Incomplete(consumed + 5);
            }
        }
    }

    /// Parses a ClientHello body (after the handshake header).
    pub fn parse_body(body: &[u8]) -> Option<ClientHello> {
        let mut c = Cur(body);
        let mut h = ClientHello {
            legacy_version: c.u16()?,
            ..Default::default()
        };
        c.take(32)?; // random
        c.vec(1)?; // session id
        let ciphers = c.vec(2)?;
        if ciphers.len() % 2 != 0 {
            return None;
        }
        h.ciphers = Cur::u16s(ciphers);
        c.vec(1)?; // compression methods
        if c.0.is_empty() {
            // SSL 3.0-style hello without extensions.
            return Some(h);
        }
        let mut exts = Cur(c.vec(2)?);
        while !exts.0.is_empty() {
            let kind = exts.u16()?;
            let data = exts.vec(2)?;
            h.extensions.push(kind);
            let mut d = Cur(data);
            match kind {
                0 => {
                    // server_name: a list of (type, name); the host name is type 0.
                    if let Some(list) = d.vec(2) {
                        let mut l = Cur(list);
                        while let (Some(t), Some(name)) = (l.u8(), l.vec(2)) {
                            if t == 0 && h.server_name.is_none() {
                                h.server_name = std::str::from_utf8(name).ok().map(str::to_owned);
                            }
                        }
                    }
                }
                13 => {
                    if let Some(list) = d.vec(2) {
                        h.signature_algorithms = Cur::u16s(list);
                    }
                }
                16 => {
                    if let Some(list) = d.vec(2) {
                        let mut l = Cur(list);
                        while let Some(p) = l.vec(1) {
                            h.alpn.push(p.to_vec());
                        }
                        h.alpn_first = h.alpn.first().cloned();
                    }
                }
                43 => {
                    if let Some(list) = d.vec(1) {
                        h.supported_versions = Some(Cur::u16s(list));
                    }
                }
                _ => {}
            }
        }
        Some(h)
    }

    /// The TLS version JA4 reports: the highest non-GREASE `supported_versions` entry, else
    /// the hello's legacy version.
    pub fn version(&self) -> u16 {
        self.supported_versions
            .as_ref()
            .and_then(|v| v.iter().copied().filter(|v| !is_grease(*v)).max())
            .unwrap_or(self.legacy_version)
    }

    /// JA4 and its raw and original-order forms.
    pub fn ja4(&self) -> Ja4 {
        let ciphers: Vec<u16> = self
            .ciphers
            .iter()
            .copied()
            .filter(|v| !is_grease(*v))
            .collect();
        let exts: Vec<u16> = self
            .extensions
            .iter()
            .copied()
            .filter(|v| !is_grease(*v))
            .collect();
        let sigs: Vec<u16> = self
            .signature_algorithms
            .iter()
            .copied()
            .filter(|v| !is_grease(*v))
            .collect();
        let version = match self.version() {
            0x0304 => "13",
            0x0303 => "12",
            0x0302 => "11",
            0x0301 => "10",
            0x0300 => "s3",
            0x0002 => "s2",
            0xfeff => "d1",
            0xfefd => "d2",
            0xfefc => "d3",
            _ => "00",
        };
        let sni = if exts.contains(&0) { 'd' } else { 'i' };
        let a = format!(
            "t{version}{sni}{:02}{:02}{}",
            ciphers.len().min(99),
            exts.len().min(99),
            alpn_chars(self.alpn_first.as_deref())
        );
        let mut sorted_ciphers = ciphers.clone();
        sorted_ciphers.sort_unstable();
        let mut sorted_exts: Vec<u16> = exts
            .iter()
            .copied()
            .filter(|e| *e != 0 && *e != 16)
            .collect();
        sorted_exts.sort_unstable();

        let cipher_list = hex_list(&sorted_ciphers);
        let ext_list = ext_part(&sorted_exts, &sigs);
        let o_cipher_list = hex_list(&ciphers);
        let o_ext_list = ext_part(&exts, &sigs);
        Ja4 {
            fingerprint: format!("{a}_{}_{}", hash12(&cipher_list), hash12(&ext_list)),
            raw: format!("{a}_{cipher_list}_{ext_list}"),
            // FoxIO's reference zeroes the original-order hash too when only SNI and ALPN
            // were sent (its `JA4_o` of such hellos ends in twelve zeros).
            original: format!(
                "{a}_{}_{}",
                hash12(&o_cipher_list),
                if sorted_exts.is_empty() {
                    hash12("")
                } else {
                    hash12(&o_ext_list)
                }
            ),
            raw_original: format!("{a}_{o_cipher_list}_{o_ext_list}"),
        }
    }
}

/// JA4 in its four forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ja4 {
    /// `JA4`: sorted lists, hashed.
    pub fingerprint: String,
    /// `JA4_r`: sorted lists, raw.
    pub raw: String,
    /// `JA4_o`: original order, hashed.
    pub original: String,
    /// `JA4_ro`: original order, raw.
    pub raw_original: String,
}

/// The extension part of the raw string: extensions, then `_` and the signature algorithms if
/// there are any.
fn ext_part(exts: &[u16], sigs: &[u16]) -> String {
    let mut s = hex_list(exts);
    if !sigs.is_empty() {
        s.push('_');
        s.push_str(&hex_list(sigs));
    }
    s
}

fn hex_list(values: &[u16]) -> String {
    let mut s = String::with_capacity(values.len() * 5);
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{v:04x}"));
    }
    s
}

/// The first 12 hex digits of SHA-256, or twelve zeros for an empty list.
fn hash12(s: &str) -> String {
    if s.is_empty() {
        return "000000000000".to_owned();
    }
    let digest = Sha256::digest(s.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The two ALPN characters: first and last of the first protocol when both are ASCII
/// alphanumeric, else first and last hex digit of it; `00` without one. A protocol that
/// starts with a non-ASCII byte is `99`, as FoxIO's reference implementation (and its
/// expected values for `tls-non-ascii-alpn.pcapng`) has it, where JA4.md's text would give
/// hex digits.
fn alpn_chars(first: Option<&[u8]>) -> String {
    let Some(p) = first.filter(|p| !p.is_empty()) else {
        return "00".to_owned();
    };
    let (Some(f), Some(l)) = (p.first(), p.last()) else {
        return "00".to_owned();
    };
    if !f.is_ascii() {
        return "99".to_owned();
    }
    if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() {
        format!("{}{}", char::from(*f), char::from(*l))
    } else {
        let hex = format!("{f:02x}{l:02x}");
        let mut c = hex.chars();
        format!(
            "{}{}",
            c.next().unwrap_or('0'),
            c.next_back().unwrap_or('0')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of FoxIO's JA4.md (its cipher, extension and signature lists).
    #[test]
    fn the_spec_example() {
        let h = ClientHello {
            legacy_version: 0x0303,
            ciphers: vec![
                0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
                0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            extensions: vec![
                0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023,
                0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
            ],
            supported_versions: Some(vec![0x0a0a, 0x0304, 0x0303]),
            signature_algorithms: vec![
                0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
            ],
            alpn_first: Some(b"h2".to_vec()),
            alpn: vec![b"h2".to_vec()],
            server_name: Some("example.com".into()),
        };
        let j = h.ja4();
        assert_eq!(j.fingerprint, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(j.original, "t13d1516h2_acb858a92679_18f69afefd3d");
        assert_eq!(
            j.raw,
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
        );
    }

    /// The ALPN examples of JA4.md, except a non-ASCII first byte (`99`, FoxIO's reference).
    #[test]
    fn alpn_characters() {
        for (bytes, want) in [
            (&[0xab][..], "99"),
            (&[0x20], "20"),
            (&[0xab, 0xcd], "99"),
            (&[0xba, 0xad], "99"),
            (&[0x20, 0x61], "21"),
            (&[0x30, 0xab], "3b"),
            (&[0x61, 0x20], "60"),
            (&[0x30, 0x31, 0xab, 0xcd], "3d"),
            (&[0x30, 0xab, 0xcd, 0x31], "01"),
            (b"h2", "h2"),
            (b"http/1.1", "h1"),
            (b"x", "xx"),
        ] {
            assert_eq!(alpn_chars(Some(bytes)), want, "{bytes:02x?}");
        }
        assert_eq!(alpn_chars(None), "00");
        assert_eq!(alpn_chars(Some(b"")), "00");
    }

    #[test]
    fn grease() {
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && is_grease(0x3a3a));
        assert!(!is_grease(0x0a1a) && !is_grease(0x1301) && !is_grease(0x0000));
    }

    fn record(body: &[u8]) -> Vec<u8> {
        let mut hs = vec![1, 0, 0, 0];
        let n = body.len();
        hs[1] = (n >> 16) as u8;
        hs[2] = (n >> 8) as u8;
        hs[3] = n as u8;
        hs.extend_from_slice(body);
        let mut r = vec![22, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        r.extend_from_slice(&hs);
        r
    }

    fn minimal_body() -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[0; 32]);
        b.push(0); // session id
        b.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher
        b.extend_from_slice(&[1, 0]); // compression
        b.extend_from_slice(&[0, 4, 0x00, 0x17, 0, 0]); // one empty extension
        b
    }

    #[test]
    fn incomplete_then_whole() {
        let r = record(&minimal_body());
        for cut in 0..r.len() {
            match ClientHello::read(r.get(..cut).unwrap_or_default()) {
                Read::Incomplete(n) => assert!(n > cut && n <= r.len(), "{cut}: {n}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        let Read::Hello(h) = ClientHello::read(&r) else {
            panic!("whole hello not read");
        };
        assert_eq!(h.ciphers, vec![0x1301]);
        assert_eq!(h.extensions, vec![0x17]);
        assert_eq!(h.ja4().fingerprint.get(..10), Some("t12i010100"));
    }

    #[test]
    fn fragmented_across_records() {
        let whole = record(&minimal_body());
        let hs = whole.get(5..).unwrap_or_default();
        let mut split = Vec::new();
        for chunk in hs.chunks(7) {
            split.extend_from_slice(&[22, 3, 1, 0, chunk.len() as u8]);
            split.extend_from_slice(chunk);
        }
        assert_eq!(ClientHello::read(&split), ClientHello::read(&whole));
        assert!(matches!(ClientHello::read(&split), Read::Hello(_)));
    }

    #[test]
    fn refuses_what_is_not_a_hello() {
        assert!(matches!(
            ClientHello::read(b"GET / HTTP/1.1\r\n\r\n"),
            Read::Invalid(_)
        ));
        assert!(matches!(
            ClientHello::read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Read::Invalid(_)
        ));
        // A server hello.
        assert!(matches!(
            ClientHello::read(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            Read::Invalid(_)
        ));
        // A hello that claims more than the cap, in a whole record and in the start of one.
        assert!(matches!(
            ClientHello::read(&[22, 3, 1, 0, 4, 1, 1, 0, 0]),
            Read::Invalid("ClientHello too large")
        ));
        assert!(matches!(
            ClientHello::read(&[22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff]),
            Read::Invalid("ClientHello too large")
        ));
        // Lengths that run past the end of the body.
        let mut body = minimal_body();
        if let Some(b) = body.get_mut(35) {
            *b = 200;
        }
        assert!(matches!(
            ClientHello::read(&record(&body)),
            Read::Invalid("malformed ClientHello")
        ));
    }
}
