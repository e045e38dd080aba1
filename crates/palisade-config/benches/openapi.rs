//! What holding a request to an OpenAPI spec costs: the public Petstore spec (shared testdata)
//! and its routes — a path parameter, an enum query, a JSON body, an unknown path.
//! Run: `cargo bench -p palisade-config --bench openapi` (PALISADE_TESTDATA to point at the
//! shared testdata; skipped by name when it is missing).

#![allow(clippy::unwrap_used, reason = "a benchmark's setup fails loudly")]

use palisade_config::openapi::{OpenApi, OpenApiMode, Request, compile};

fn main() {
    divan::main();
}

fn petstore() -> Option<OpenApi> {
    let dir = std::env::var("PALISADE_TESTDATA").map_or_else(
        |_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"),
        std::path::PathBuf::from,
    );
    let text = std::fs::read_to_string(dir.join("openapi/petstore.yaml")).ok();
    if text.is_none() {
        eprintln!(
            "SKIPPED: openapi/petstore.yaml not found under {}",
            dir.display()
        );
    }
    compile(&text?, None, OpenApiMode::Enforce, 1 << 20).ok()
}

const BODY: &[u8] = br#"{"id":10,"name":"doggie","category":{"id":1,"name":"Dogs"},"photoUrls":["https://example.com/a.jpg"],"tags":[{"id":0,"name":"good"}],"status":"available"}"#;

#[divan::bench(args = ["GET /api/v3/pet/42", "GET /api/v3/pet/findByStatus?status=sold", "POST /api/v3/pet", "GET /api/v3/nowhere"])]
fn petstore_check(bencher: divan::Bencher, what: &str) {
    let Some(api) = petstore() else {
        return;
    };
    let (method, target) = what.split_once(' ').unwrap();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let method = http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert("api_key", http::HeaderValue::from_static("special-key"));
    let body = (method == http::Method::POST).then_some(BODY);
    bencher.bench_local(|| {
        api.check(&Request {
            method: &method,
            path,
            query,
            headers: &headers,
            body,
        })
        .is_ok()
    });
}
