//! Client intelligence on the request path. Run: `cargo bench -p palisade-intel --bench intel`.

#![allow(clippy::unwrap_used, reason = "a benchmark's setup fails loudly")]

use palisade_intel::BotCatalog;

fn main() {
    divan::main();
}

const UAS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "python-requests/2.31.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
];

#[divan::bench(args = [0, 1, 2, 3])]
fn classify(bencher: divan::Bencher, i: usize) {
    let c = BotCatalog::builtin().unwrap();
    let ua = UAS.get(i).copied().unwrap_or_default();
    bencher.bench_local(|| c.classify(ua));
}

/// JA4H of a browser-like request (10 headers, two cookies): computed by the gateway for every
/// request.
#[divan::bench]
fn ja4h_browser_request(bencher: divan::Bencher) {
    use palisade_intel::ja4h::{HttpVersion, ja4h_fingerprint};
    let headers: [(&str, &[u8]); 10] = [
        ("host", b"api.example.com"),
        ("sec-ch-ua", b"\"Chromium\";v=\"124\""),
        ("sec-ch-ua-mobile", b"?0"),
        ("user-agent", UAS[0].as_bytes()),
        ("accept", b"text/html,application/xhtml+xml"),
        ("sec-fetch-mode", b"navigate"),
        ("accept-encoding", b"gzip, deflate, br"),
        ("accept-language", b"en-GB,en;q=0.9"),
        ("cookie", b"session=abc; theme=dark"),
        ("referer", b"https://example.com/"),
    ];
    bencher.bench_local(|| ja4h_fingerprint("GET", HttpVersion::Http11, headers));
}

/// A real ClientHello and HTTP/2 preface from the shared corpus (the first vector / the first
/// curl_cffi Chrome capture), when it is there.
fn corpus(file: &str) -> Option<serde_json::Value> {
    let dir = option_env!("PALISADE_TESTDATA_DIR").filter(|d| !d.is_empty())?;
    serde_json::from_str(&std::fs::read_to_string(std::path::Path::new(dir).join(file)).ok()?).ok()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Per TLS connection: read a browser's ClientHello and compute JA4.
#[divan::bench]
fn ja4_per_connection(bencher: divan::Bencher) {
    let Some(v) = corpus("ja4/clienthello_vectors.json") else {
        println!("SKIPPED ja4_per_connection: shared testdata not found");
        return;
    };
    let bytes = hex(v
        .get(0)
        .and_then(|v| v["client_hello_record_hex"].as_str())
        .unwrap_or_default());
    bencher.bench_local(|| match palisade_intel::ja4::ClientHello::read(&bytes) {
        palisade_intel::ja4::Read::Hello(h) => h.ja4().fingerprint.len(),
        _ => 0,
    });
}

/// Per HTTP/2 connection: read Chrome's preface and first HEADERS, and fingerprint them.
#[divan::bench]
fn h2fp_per_connection(bencher: divan::Bencher) {
    let Some(v) = corpus("h2/expected.json") else {
        println!("SKIPPED h2fp_per_connection: shared testdata not found");
        return;
    };
    let chrome = v
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| k.contains("chrome")))
        .map(|(_, e)| hex(e["client_bytes_hex"].as_str().unwrap_or_default()))
        .unwrap_or_default();
    bencher.bench_local(|| match palisade_intel::h2fp::read(&chrome) {
        palisade_intel::h2fp::Preface::Done(fp) => fp.akamai().len(),
        _ => 0,
    });
}

/// The probe scan of a whole ordinary API request: path, query of three parameters, ten
/// browser headers with a cookie, a small JSON body — what every request with `[probes]` on
/// costs when nothing is found.
#[divan::bench]
fn probes_ordinary_request(bencher: divan::Bencher) {
    use palisade_intel::probes::{Hits, Scanner};
    let s = Scanner::default();
    let headers: [(&str, &[u8]); 10] = [
        ("host", b"api.example.com"),
        ("user-agent", UAS[0].as_bytes()),
        ("accept", b"application/json"),
        ("accept-encoding", b"gzip, deflate, br"),
        ("accept-language", b"en-GB,en;q=0.9"),
        ("cookie", b"session=2f1c9a0e7b; theme=dark"),
        ("referer", b"https://app.example.com/orders?page=2"),
        ("x-request-id", b"7e136915dc93ee62"),
        ("content-type", b"application/json"),
        (
            "authorization",
            b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc",
        ),
    ];
    let body = br#"{"customer":"O'Reilly & Sons","items":[{"sku":"A-1","qty":2}],"note":"deliver after 5pm"}"#;
    bencher.bench_local(|| {
        let mut hits = Hits::default();
        s.scan_path("/api/v1/orders/42/items", &mut hits);
        s.scan_query("status=open&since=2024-01-15&q=blue+shoes", &mut hits);
        for (n, v) in headers {
            s.scan_header(n, v, &mut hits);
        }
        s.scan_json(body, &mut hits);
        hits
    });
}

/// The probe scan of a request carrying a probe (the query's value), encoded twice.
#[divan::bench]
fn probes_attack_request(bencher: divan::Bencher) {
    use palisade_intel::probes::{Hits, Scanner};
    let s = Scanner::default();
    bencher.bench_local(|| {
        let mut hits = Hits::default();
        s.scan_path("/api/v1/orders", &mut hits);
        s.scan_query(
            "id=1%2527%2520UNION%2520SELECT%2520username%252Cpassword%2520FROM%2520users--&x=%3Csvg%2Fonload%3Dalert(1)%3E",
            &mut hits,
        );
        s.scan_header("user-agent", UAS[0].as_bytes(), &mut hits);
        hits
    });
}

const VALUES: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "https://app.example.com/orders?page=2",
    "O'Reilly & Sons",
    "deliver after 5pm",
    "2024-01-15",
    "blue shoes",
];

/// One value through every class.
#[divan::bench(args = [0, 1, 2, 3, 4, 5])]
fn probes_value(bencher: divan::Bencher, i: usize) {
    let v = VALUES.get(i).copied().unwrap_or_default();
    bencher.bench_local(|| palisade_intel::probes::scan_one(v.as_bytes(), false));
}
