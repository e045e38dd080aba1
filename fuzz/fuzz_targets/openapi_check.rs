//! Requests of arbitrary content held to an OpenAPI spec (every part of a request is the
//! client's): the check never panics, whatever the path, query, headers or body, and what it
//! reports is bounded. Run: cargo +nightly fuzz run openapi_check
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_config::openapi::{OpenApi, OpenApiMode, Request, Violation, compile};

const SPEC: &str = r##"
openapi: 3.0.3
info: { title: t, version: "1" }
paths:
  /items/{id}:
    get:
      parameters:
        - { name: id, in: path, required: true, schema: { type: integer, format: int64 } }
        - { name: tags, in: query, schema: { type: array, items: { type: number } } }
        - { name: x-flag, in: header, schema: { type: boolean } }
  /orders:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [when]
              properties:
                when: { type: string, format: date-time }
                n: { type: integer, format: int32, nullable: true }
          application/x-www-form-urlencoded:
            schema: { type: object, properties: { n: { type: integer } } }
"##;

fn api() -> &'static OpenApi {
    static API: OnceLock<OpenApi> = OnceLock::new();
    API.get_or_init(|| compile(SPEC, None, OpenApiMode::Enforce, 1 << 16).unwrap_or_else(|e| panic!("{e:?}")))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (path, query, header, body) = (
        parts.next().unwrap_or(""),
        parts.next(),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(header) {
        headers.insert("x-flag", v.clone());
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    for method in [http::Method::GET, http::Method::POST] {
        let r = api().check(&Request {
            method: &method,
            path,
            query,
            headers: &headers,
            body: Some(body.as_bytes()),
        });
        if let Err(Violation::Invalid { detail, .. }) = r {
            assert!(detail.len() <= 210);
        }
    }
});
