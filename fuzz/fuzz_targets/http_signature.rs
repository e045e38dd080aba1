//! Signature-Input / Signature / Signature-Agent headers of arbitrary content (the first three
//! lines of the input) on a request: rebuilding the base and the Web Bot Auth checks never
//! panic. Run: cargo +nightly fuzz run http_signature
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade_keys::httpsig::{Message, labels, signature_base, web_bot_auth};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut headers = HeaderMap::new();
    for name in ["signature-input", "signature", "signature-agent"] {
        if let Some(v) = lines.next().and_then(|l| HeaderValue::from_str(l).ok()) {
            headers.insert(name, v);
        }
    }
    headers.insert("host", HeaderValue::from_static("example.com"));
    let m = Message {
        method: "GET",
        scheme: "https",
        authority: "example.com",
        path: "/x",
        query: Some("a=1&b=%20"),
        headers: &headers,
    };
    let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    for label in labels(&headers) {
        let _ = signature_base(&m, None, &label);
        let _ = web_bot_auth(&m, &label, &jwk, 1_735_689_600);
    }
});
