//! Client fingerprints: JA4H as a logged identity and a limit key, header consistency.

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn ja4h_is_logged_and_limits_can_key_on_it() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[[limits]]\nname = \"per-fingerprint\"\nkey = [\"ja4h\"]\nrate = \"2/1m\"\n",
    )));
    let a = [("accept", "*/*"), ("x-client", "a")];
    let b = [
        ("accept-language", "de-DE,de;q=0.9"),
        ("accept", "text/html"),
    ];
    for expect in [200, 200, 429] {
        assert_eq!(send("GET", &g.url("/x"), &a, "").await.status, expect);
    }
    // Other header habits: another fingerprint, its own budget.
    assert_eq!(send("GET", &g.url("/x"), &b, "").await.status, 200);
    let limited = g.wait_decision(|d| d["action"] == "limit");
    let fp = limited["identity"]["ja4h"].as_str().unwrap().to_owned();
    // GET, HTTP/1.1, no cookie or referer, the client's headers plus Host, no Accept-Language.
    assert!(fp.starts_with("ge11nn"), "{fp}");
    // JA4H section a: method, version, cookie, referer, two digits of header count, then the
    // first Accept-Language (none: "0000").
    let a = fp.split('_').next().unwrap();
    assert_eq!(a.len(), 12, "{fp}");
    assert!(a[6..8].bytes().all(|b| b.is_ascii_digit()), "{fp}");
    assert_eq!(&a[8..], "0000", "{fp}");
    let other = g.wait_decision(|d| {
        d["identity"]["ja4h"]
            .as_str()
            .is_some_and(|j| j.contains("dede"))
    });
    assert_ne!(other["identity"]["ja4h"], limited["identity"]["ja4h"]);
    // "Why was this fingerprint limited?"
    let who = admin_get(&g, &format!("/v1/identities/ja4h/{fp}"))
        .await
        .json();
    assert_eq!(who["identity"]["limits"][0]["remaining"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_library_dressed_as_chrome_is_flagged_by_its_headers() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[bots]\n\n[headers]\nweight = 15\n\n[scoring]\ntag_at = 30\ndelay_at = 0\nchallenge_at = 0\nblock_at = 0\n",
    )));
    // The same Chrome user agent: once with Chrome's headers, once as a script sends it.
    let real = [
        ("user-agent", CHROME),
        (
            "sec-ch-ua",
            "\"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\"",
        ),
        ("sec-ch-ua-mobile", "?0"),
        ("accept", "text/html,application/xhtml+xml"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("accept-language", "en-GB,en;q=0.9"),
    ];
    let r = send("GET", &g.url("/echo"), &real, "").await;
    assert!(
        r.json()["headers"].get("x-palisade-score").is_none(),
        "{}",
        r.json()
    );
    let r = send("GET", &g.url("/echo"), &[("user-agent", CHROME)], "").await;
    let seen = r.json();
    assert_eq!(seen["headers"]["x-palisade-score"][0], "60");
    let signals = seen["headers"]["x-palisade-signals"][0]
        .as_str()
        .unwrap()
        .to_owned();
    for s in [
        "headers/chromium_without_client_hints",
        "headers/browser_without_fetch_metadata",
        "headers/browser_without_accept_language",
        "headers/browser_with_library_headers",
    ] {
        assert!(signals.contains(s), "{signals}");
    }
    let d = g.wait_decision(|d| d["action"] == "tag");
    assert_eq!(d["score"], 60);
    assert_eq!(d["identity"]["bot"], "human");
}
