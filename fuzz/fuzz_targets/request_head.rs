//! The proxy's HTTP/1.x server reading requests from arbitrary bytes: heads, framing and
//! chunked bodies never panic, decoded bodies are never longer than the input, and reading
//! stops at the first head it refuses.
//! Run: cargo +nightly fuzz run request_head
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use palisade_gateway::listen::h1::{parse_for_fuzz, parse_head};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max_headers = usize::from(first);
    assert!(parse_for_fuzz(rest, max_headers) <= rest.len());
    // A head either takes bytes off the front or, incomplete, leaves the buffer as it was.
    let mut buf = BytesMut::from(rest);
    match parse_head(&mut buf, max_headers) {
        Ok(Some(head)) => {
            assert!(buf.len() < rest.len());
            assert!(head.parts.headers.len() <= max_headers);
        }
        Ok(None) => assert_eq!(&buf[..], rest),
        Err(_) => {}
    }
});
