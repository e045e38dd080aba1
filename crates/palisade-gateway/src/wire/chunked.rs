//! The chunked transfer coding (RFC 9112 section 7.1), decoded strictly and incrementally, for
//! request bodies read by the server and response bodies read by the client.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (with extensions) and longest trailer section.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk-size line that is not hex digits (and extensions) ended by CRLF.
    #[error("invalid chunk size line")]
    InvalidSize,
    /// A chunk size over 2^64 - 1.
    #[error("chunk size too large")]
    SizeOverflow,
    /// A chunk not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    /// A chunk-size line or the trailer section over its bound.
    #[error("chunk line or trailers too long")]
    TooLong,
    /// A trailer line with a bare LF or control byte.
    #[error("invalid trailer section")]
    InvalidTrailer,
}

/// Decodes a chunked body (RFC 9112 section 7.1) incrementally: fed whatever bytes arrived,
/// it hands out data as it becomes available, without copying it. Strict: CRLF line ends
/// only, so that no two readers can disagree on where the body ends.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex digits of a chunk size.
    #[default]
    Size,
    /// After the digits: optional whitespace and extensions, then CR.
    SizeRest {
        value: u64,
        ext: bool,
    },
    /// Whitespace after the digits: only more of it, `;` or CR may follow.
    SizeWs(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// Inside the trailer section; `empty` while the current line has no bytes yet.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

impl ChunkedDecoder {
    /// Whether the last chunk and the trailer section were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes from the front of `buf`; returns data when some is available, `None`
    /// when `buf` is exhausted or the body is done.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ChunkError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(None),
                ChunkState::Data(rem) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = buf.len().min(usize::try_from(rem).unwrap_or(usize::MAX));
                    let left = rem - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(None);
            };
            buf.advance(1);
            self.step(b)?;
        }
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_CHUNK_LINE {
            return Err(ChunkError::TooLong);
        }
        self.state = match self.state {
            ChunkState::Size => match hex_value(b) {
                Some(d) => ChunkState::SizeRest {
                    value: u64::from(d),
                    ext: false,
                },
                None => return Err(ChunkError::InvalidSize),
            },
            ChunkState::SizeRest { value, ext: false } => match (b, hex_value(b)) {
                (_, Some(d)) => {
                    if value > (u64::MAX >> 4) {
                        return Err(ChunkError::SizeOverflow);
                    }
                    ChunkState::SizeRest {
                        value: (value << 4) | u64::from(d),
                        ext: false,
                    }
                }
                (b';', _) => ChunkState::SizeRest { value, ext: true },
                (b' ' | b'\t', _) => ChunkState::SizeWs(value),
                (b'\r', _) => ChunkState::SizeLf(value),
                _ => return Err(ChunkError::InvalidSize),
            },
            ChunkState::SizeWs(value) => match b {
                b' ' | b'\t' => ChunkState::SizeWs(value),
                b';' => ChunkState::SizeRest { value, ext: true },
                b'\r' => ChunkState::SizeLf(value),
                _ => return Err(ChunkError::InvalidSize),
            },
            ChunkState::SizeRest { value, ext: true } => match b {
                b'\r' => ChunkState::SizeLf(value),
                b'\t' => ChunkState::SizeRest { value, ext: true },
                b if b < 0x20 || b == 0x7f => return Err(ChunkError::InvalidSize),
                _ => ChunkState::SizeRest { value, ext: true },
            },
            ChunkState::SizeLf(value) => {
                if b != b'\n' {
                    return Err(ChunkError::InvalidSize);
                }
                if value == 0 {
                    // The trailer section is bounded as a whole, from here.
                    self.line = 0;
                    ChunkState::Trailer { empty: true }
                } else {
                    ChunkState::Data(value)
                }
            }
            ChunkState::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::MissingCrlf);
                }
                ChunkState::DataLf
            }
            ChunkState::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::MissingCrlf);
                }
                self.line = 0;
                ChunkState::Size
            }
            ChunkState::Trailer { empty } => match b {
                b'\r' => ChunkState::TrailerLf { empty },
                b'\t' => ChunkState::Trailer { empty: false },
                b if b < 0x20 || b == 0x7f => return Err(ChunkError::InvalidTrailer),
                _ => ChunkState::Trailer { empty: false },
            },
            ChunkState::TrailerLf { empty } => {
                if b != b'\n' {
                    return Err(ChunkError::InvalidTrailer);
                }
                if empty {
                    ChunkState::Done
                } else {
                    ChunkState::Trailer { empty: true }
                }
            }
            // Not reached: `decode` hands data out and stops at Done without stepping.
            s @ (ChunkState::Data(_) | ChunkState::Done) => s,
        };
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a whole chunked body from the front of `buf` (for the fuzz entry points): its
/// length, or `None` when it is malformed or incomplete.
pub(crate) fn decode_whole(buf: &mut BytesMut) -> Option<usize> {
    let mut dec = ChunkedDecoder::default();
    let mut total = 0;
    loop {
        match dec.decode(buf) {
            Ok(Some(d)) => total += d.len(),
            Ok(None) if dec.is_done() => return Some(total),
            _ => return None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(d) = dec.decode(&mut buf)? {
                out.extend_from_slice(&d);
            }
        }
        Ok((out, dec.is_done()))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        // RFC 9112 section 7.1 grammar: sizes in either case, extensions, a trailer section.
        let wire =
            b"5\r\nhello\r\n7;name=\"v\" ; x\r\n, world\r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 1..wire.len() {
            let (out, done) = decode_all(wire, split).unwrap();
            assert_eq!(out, b"hello, world0123456789", "split {split}");
            assert!(done, "split {split}");
        }
    }

    #[test]
    fn whitespace_before_an_extension_is_allowed_but_not_between_digits() {
        assert_eq!(
            decode_all(b"3 ;e\r\nabc\r\n0\r\n\r\n", 64).unwrap(),
            (b"abc".to_vec(), true)
        );
        assert_eq!(
            decode_all(b"1 2\r\nab\r\n0\r\n\r\n", 64),
            Err(ChunkError::InvalidSize)
        );
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"\r\n", ChunkError::InvalidSize),
            (b"g\r\n", ChunkError::InvalidSize),
            (b"-1\r\n", ChunkError::InvalidSize),
            (b"5\nhello\r\n", ChunkError::InvalidSize),
            (b"5\r\nhelloXX", ChunkError::MissingCrlf),
            (b"5\r\nhello\n0\r\n", ChunkError::MissingCrlf),
            (b"10000000000000000\r\n", ChunkError::SizeOverflow),
            (b"0\r\nx-t: 1\n\r\n", ChunkError::InvalidTrailer),
            (b"1;\x00\r\n", ChunkError::InvalidSize),
        ];
        for (wire, want) in cases {
            assert_eq!(
                decode_all(wire, 64).map(|_| ()),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE], b"\r\n"].concat();
        assert_eq!(decode_all(&long_ext, 100), Err(ChunkError::TooLong));
        let mut long_trailers = b"0\r\n".to_vec();
        for _ in 0..=(MAX_CHUNK_LINE / 8) {
            long_trailers.extend_from_slice(b"x: 123\r\n");
        }
        assert_eq!(decode_all(&long_trailers, 100), Err(ChunkError::TooLong));
    }

    #[test]
    fn the_largest_chunk_size_parses_and_one_more_digit_overflows() {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap(), "ab");
        assert_eq!(dec.state, ChunkState::Data(u64::MAX - 2));
    }
}
