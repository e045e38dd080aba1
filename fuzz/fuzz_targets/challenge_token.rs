//! Challenge and clearance tokens and answers of arbitrary content: opening a token (as a
//! puzzle and as a clearance), checking a `<challenge>:<counter>` answer, and reading the page's
//! signal report never panic, and nothing forged opens. Run: cargo +nightly fuzz run
//! challenge_token
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_gateway::challenge::signal_flags;
use palisade_gateway::challenge::token::{Pass, Puzzle, Sealer, solves};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let sealer = Sealer::new(&[7u8; 32]);
    // Nothing the fuzzer makes carries a valid MAC under a key it never saw.
    assert!(sealer.open::<Pass>(&text).is_none());
    assert!(sealer.open::<Puzzle>(&text).is_none());
    if let Some((token, counter)) = text.rsplit_once(':') {
        let bits = data.first().map_or(0, |b| b % 33);
        let _ = solves(token, counter, bits);
    }
    let _ = signal_flags(Some(&text));
});
