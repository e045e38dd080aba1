//! The upstream HTTP/1.1 client's reading of responses on arbitrary bytes: heads, framing and
//! chunked bodies never panic, decoded bodies are never longer than the input, and a chunked
//! body decodes to the same bytes whatever the read boundaries.
//! Run: cargo +nightly fuzz run upstream_response
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use palisade_gateway::{wire::chunked::ChunkedDecoder, client::h1::parse_for_fuzz};

fn decode(input: &[u8], piece: usize) -> (Vec<u8>, Option<bool>) {
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    for part in input.chunks(piece.max(1)) {
        buf.extend_from_slice(part);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(d)) => out.extend_from_slice(&d),
                Ok(None) => break,
                Err(_) => return (out, None),
            }
        }
    }
    (out, Some(dec.is_done()))
}

fuzz_target!(|data: &[u8]| {
    assert!(parse_for_fuzz(data) <= data.len());
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (whole, whole_ok) = decode(rest, rest.len());
    let (pieces, pieces_ok) = decode(rest, usize::from(first % 7) + 1);
    assert_eq!(whole_ok, pieces_ok);
    if whole_ok.is_some() {
        assert_eq!(whole, pieces);
    }
    assert!(whole.len() <= rest.len());
});
