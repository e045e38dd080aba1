//! The HTTP/2 client fingerprint in Akamai's format, `SETTINGS|WINDOW_UPDATE|PRIORITY|PSEUDO`
//! (e.g. Chrome's `1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p`), from the first bytes a
//! client sends on an HTTP/2 connection: the preface, then frames up to the end of the first
//! HEADERS block (CONTINUATION included), whose header names are HPACK-decoded.
//!
//! - SETTINGS: the first non-ACK SETTINGS frame's `id:value` pairs in wire order, `;`-joined.
//! - WINDOW_UPDATE: the first stream-0 increment before the first HEADERS, else `0`.
//! - PRIORITY: PRIORITY frames before the first HEADERS as `stream:exclusive:depends_on:weight`
//!   (weight = wire byte + 1), `,`-joined, else `0`.
//! - PSEUDO: `m`, `a`, `s`, `p` for `:method`, `:authority`, `:scheme`, `:path` in the first
//!   HEADERS block's order.
//!
//! The input is the attacker's: frames are bounded ([`MAX_FRAME`], [`MAX_FRAMES`],
//! [`MAX_BYTES`]) and every length is checked.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest frame payload read (the default SETTINGS_MAX_FRAME_SIZE a server advertises).
pub const MAX_FRAME: usize = 16_384;

/// Most frames read before the first HEADERS block ends.
pub const MAX_FRAMES: usize = 64;

/// Most bytes read before the first HEADERS block ends.
pub const MAX_BYTES: usize = 64 * 1024;

/// What the first bytes of an HTTP/2 connection came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preface {
    /// The fingerprint: the first HEADERS block is complete.
    Done(Box<H2Fingerprint>),
    /// More bytes are needed.
    Incomplete,
    /// Not an HTTP/2 client preface, or frames beyond the bounds or malformed.
    Invalid(&'static str),
}

/// What an HTTP/2 client's first frames showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2Fingerprint {
    /// The first SETTINGS frame's pairs, in order.
    pub settings: Vec<(u16, u32)>,
    /// The first connection-level WINDOW_UPDATE increment (0: none).
    pub window_update: u32,
    /// PRIORITY frames: (stream, exclusive, depends on, weight 1-256).
    pub priorities: Vec<(u32, bool, u32, u16)>,
    /// Pseudo-header letters in order (`m`, `a`, `s`, `p`).
    pub pseudo: Vec<char>,
    /// The first HEADERS frame's stream.
    pub headers_stream: u32,
    /// The priority carried in the first HEADERS frame: (exclusive, depends on, weight).
    pub headers_priority: Option<(bool, u32, u16)>,
    /// Regular header names of the first request, in order.
    pub header_order: Vec<String>,
}

impl H2Fingerprint {
    /// The Akamai string.
    pub fn akamai(&self) -> String {
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        let priorities = if self.priorities.is_empty() {
            "0".to_owned()
        } else {
            self.priorities
                .iter()
                .map(|(s, e, d, w)| format!("{s}:{}:{d}:{w}", u8::from(*e)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let pseudo: Vec<String> = self.pseudo.iter().map(char::to_string).collect();
        format!(
            "{}|{}|{}|{}",
            settings.join(";"),
            self.window_update,
            priorities,
            pseudo.join(",")
        )
    }
}

fn u32_be(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Reads the fingerprint from the first bytes of a connection (the preface included).
pub fn read(bytes: &[u8]) -> Preface {
    let n = bytes.len().min(PREFACE.len());
    if bytes.get(..n) != PREFACE.get(..n) {
        return Preface::Invalid("not an HTTP/2 preface");
    }
    let mut rest = match bytes.get(PREFACE.len()..) {
        Some(r) => r,
        None => return Preface::Incomplete,
    };
    let mut fp = H2Fingerprint::default();
    let mut seen_settings = false;
    let mut block: Vec<u8> = Vec::new();
    let mut in_headers: Option<u32> = None;
    for _ in 0..MAX_FRAMES {
        let Some(header) = rest.get(..9) else {
            return if bytes.len() > MAX_BYTES {
                Preface::Invalid("too many bytes before the first request")
            } else {
                Preface::Incomplete
            };
        };
        let Ok([l0, l1, l2, kind, flags, s0, s1, s2, s3]) = <[u8; 9]>::try_from(header) else {
            return Preface::Incomplete;
        };
        let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
        if len > MAX_FRAME {
            return Preface::Invalid("frame larger than the maximum frame size");
        }
        let Some(payload) = rest.get(9..9 + len) else {
            return Preface::Incomplete;
        };
        rest = rest.get(9 + len..).unwrap_or_default();
        if let Some(s) = in_headers {
            // Only CONTINUATION of the same stream may follow an unfinished header block.
            if kind != 9 || stream != s {
                return Preface::Invalid("header block interrupted");
            }
            block.extend_from_slice(payload);
            if flags & 0x4 != 0 {
                return finish(fp, &block);
            }
            if block.len() > MAX_BYTES {
                return Preface::Invalid("header block too large");
            }
            continue;
        }
        match kind {
            // SETTINGS: the first one that is not an ACK.
            4 if flags & 0x1 == 0 && !seen_settings => {
                if len % 6 != 0 || stream != 0 {
                    return Preface::Invalid("malformed SETTINGS");
                }
                seen_settings = true;
                fp.settings = payload
                    .chunks_exact(6)
                    .filter_map(|c| match *c {
                        [a, b, v0, v1, v2, v3] => Some((
                            u16::from_be_bytes([a, b]),
                            u32::from_be_bytes([v0, v1, v2, v3]),
                        )),
                        _ => None,
                    })
                    .collect();
            }
            // WINDOW_UPDATE on the connection: the first one.
            8 if stream == 0 && fp.window_update == 0 => {
                fp.window_update = u32_be(payload).map_or(0, |v| v & 0x7fff_ffff);
            }
            // PRIORITY.
            2 => {
                if len != 5 {
                    return Preface::Invalid("malformed PRIORITY");
                }
                let (Some(dep), Some(&w)) = (u32_be(payload), payload.get(4)) else {
                    return Preface::Invalid("malformed PRIORITY");
                };
                fp.priorities.push((
                    stream,
                    dep & 0x8000_0000 != 0,
                    dep & 0x7fff_ffff,
                    u16::from(w) + 1,
                ));
            }
            // HEADERS: padding and priority fields, then the block (maybe continued).
            1 => {
                let mut p = payload;
                let mut pad = 0usize;
                if flags & 0x8 != 0 {
                    let Some((&n, r)) = p.split_first() else {
                        return Preface::Invalid("malformed HEADERS padding");
                    };
                    pad = usize::from(n);
                    p = r;
                }
                if flags & 0x20 != 0 {
                    let (Some(dep), Some(&w)) = (u32_be(p), p.get(4)) else {
                        return Preface::Invalid("malformed HEADERS priority");
                    };
                    fp.headers_priority =
                        Some((dep & 0x8000_0000 != 0, dep & 0x7fff_ffff, u16::from(w) + 1));
                    p = p.get(5..).unwrap_or_default();
                }
                if pad > p.len() {
                    return Preface::Invalid("HEADERS padding longer than the frame");
                }
                block.extend_from_slice(p.get(..p.len() - pad).unwrap_or_default());
                fp.headers_stream = stream;
                if flags & 0x4 != 0 {
                    return finish(fp, &block);
                }
                in_headers = Some(stream);
            }
            _ => {}
        }
    }
    Preface::Invalid("too many frames before the first request")
}

/// Walks an HPACK block's structure (RFC 7541 §6: representations, integers, string lengths)
/// without decoding it: whether every integer ends and every string fits within the block.
/// The decoder is handed only blocks that pass (it indexes past the end of truncated ones).
fn well_formed_hpack(block: &[u8]) -> bool {
    fn integer(b: &[u8], i: &mut usize, prefix: u8) -> Option<usize> {
        let mask = (1u16 << prefix) as usize - 1;
        let mut v = usize::from(*b.get(*i)?) & mask;
        *i += 1;
        if v < mask {
            return Some(v);
        }
        for shift in [0, 7, 14, 21] {
            let byte = *b.get(*i)?;
            *i += 1;
            v += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn string(b: &[u8], i: &mut usize) -> Option<()> {
        let len = integer(b, i, 7)?;
        *i = i.checked_add(len).filter(|end| *end <= b.len())?;
        Some(())
    }
    let mut i = 0;
    while let Some(&first) = block.get(i) {
        let ok = if first & 0x80 != 0 {
            integer(block, &mut i, 7).map(|_| ())
        } else if first & 0x40 != 0 {
            integer(block, &mut i, 6).and_then(|index| {
                if index == 0 {
                    string(block, &mut i)?;
                }
                string(block, &mut i)
            })
        } else if first & 0x20 != 0 {
            integer(block, &mut i, 5).map(|_| ())
        } else {
            integer(block, &mut i, 4).and_then(|index| {
                if index == 0 {
                    string(block, &mut i)?;
                }
                string(block, &mut i)
            })
        };
        if ok.is_none() {
            return false;
        }
    }
    true
}

fn finish(mut fp: H2Fingerprint, block: &[u8]) -> Preface {
    if !well_formed_hpack(block) {
        return Preface::Invalid("header block does not decode");
    }
    // The header block is the client's, checked above; should the decoder still panic on it,
    // the connection's task is not taken down (the fuzz target exercises this path).
    let decoded = std::panic::catch_unwind(|| {
        let mut decoder = httlib_hpack::Decoder::default();
        let mut buf = block.to_vec();
        let mut fields: Vec<(Vec<u8>, Vec<u8>, u8)> = Vec::new();
        decoder.decode(&mut buf, &mut fields).map(|_| fields)
    });
    let names: Vec<Vec<u8>> = match decoded {
        Ok(Ok(fields)) => fields.into_iter().take(256).map(|(n, _, _)| n).collect(),
        _ => return Preface::Invalid("header block does not decode"),
    };
    for n in names {
        match n.as_slice() {
            b":method" => fp.pseudo.push('m'),
            b":authority" => fp.pseudo.push('a'),
            b":scheme" => fp.pseudo.push('s'),
            b":path" => fp.pseudo.push('p'),
            other if other.first() == Some(&b':') => {}
            other => fp
                .header_order
                .push(String::from_utf8_lossy(other).into_owned()),
        }
    }
    Preface::Done(Box::new(fp))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn hello() -> Vec<u8> {
        let mut b = PREFACE.to_vec();
        b.extend(frame(
            4,
            0,
            0,
            &[0, 3, 0, 0, 0, 100, 0, 4, 0, 0xff, 0xff, 0xff],
        ));
        b.extend(frame(8, 0, 0, &[0, 0xef, 0, 1]));
        // :method GET (2), :path / (4), :scheme https (7), :authority "a" (literal, name 1).
        b.extend(frame(1, 0x5, 1, &[0x82, 0x84, 0x87, 0x41, 0x01, b'a']));
        b
    }

    #[test]
    fn reads_a_small_client() {
        let Preface::Done(fp) = read(&hello()) else {
            panic!("not read");
        };
        assert_eq!(fp.akamai(), "3:100;4:16777215|15663105|0|m,p,s,a");
        assert_eq!(fp.headers_stream, 1);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let b = hello();
        for cut in 0..b.len() {
            assert_eq!(read(&b[..cut]), Preface::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn continuation_and_padding() {
        let mut b = PREFACE.to_vec();
        b.extend(frame(4, 0, 0, &[]));
        // Padded (2 bytes) with priority, block split in two.
        b.extend(frame(
            1,
            0x8 | 0x20,
            3,
            &[2, 0x80, 0, 0, 0, 255, 0x82, 0x87, 0, 0],
        ));
        b.extend(frame(9, 0x4, 3, &[0x84]));
        let Preface::Done(fp) = read(&b) else {
            panic!("not read");
        };
        assert_eq!(fp.akamai(), "|0|0|m,s,p");
        assert_eq!(fp.headers_priority, Some((true, 0, 256)));
    }

    /// Random header blocks (fixed seed): the structural check stops every block the decoder
    /// would index past the end of, so the decoder never panics (a panic hook counts).
    #[test]
    fn random_header_blocks_never_panic_the_decoder() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static PANICS: AtomicUsize = AtomicUsize::new(0);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {
            PANICS.fetch_add(1, Ordering::Relaxed);
        }));
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut decoded = 0;
        for n in 0..200_000u64 {
            let len = (n % 24) as usize;
            let block: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if matches!(finish(H2Fingerprint::default(), &block), Preface::Done(_)) {
                decoded += 1;
            }
        }
        std::panic::set_hook(previous);
        assert_eq!(PANICS.load(Ordering::Relaxed), 0);
        assert!(decoded > 1000, "{decoded}");
    }

    #[test]
    fn refuses_hostile_prefaces() {
        assert!(matches!(read(b"GET / HTTP/1.1\r\n"), Preface::Invalid(_)));
        let mut b = PREFACE.to_vec();
        b.extend(frame(4, 0, 0, &[0, 3, 0]));
        assert_eq!(read(&b), Preface::Invalid("malformed SETTINGS"));
        let mut b = PREFACE.to_vec();
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(read(&b), Preface::Invalid(_)));
        // Endless PINGs before any request.
        let mut b = PREFACE.to_vec();
        for _ in 0..=MAX_FRAMES {
            b.extend(frame(6, 0, 0, &[0; 8]));
        }
        assert!(matches!(read(&b), Preface::Invalid(_)));
        // A HEADERS block interrupted by another frame.
        let mut b = PREFACE.to_vec();
        b.extend(frame(1, 0, 1, &[0x82]));
        b.extend(frame(6, 0, 0, &[0; 8]));
        assert_eq!(read(&b), Preface::Invalid("header block interrupted"));
    }
}
