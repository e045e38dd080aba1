//! The reverse proxy: forwarding, headers, streaming, protocols, failures, bounds, shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn forwards_requests_and_sets_forwarding_headers() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "")));
    let r = send(
        "POST",
        &g.url("/echo?x=1&y=2"),
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-palisade-score", "0"),
            ("connection", "x-client-private"),
            ("x-client-private", "hop"),
            ("x-custom", "kept"),
        ],
        "hello body",
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["method"], "POST");
    assert_eq!(j["uri"], "/echo?x=1&y=2");
    assert_eq!(j["body_len"], 10);
    let h = &j["headers"];
    // The client is not a trusted proxy: its forged chain is replaced, never extended.
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(
        h["forwarded"][0],
        format!("for=127.0.0.1;proto=http;host=\"{}\"", g.proxy)
    );
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-custom"][0], "kept");
    assert!(
        h.get("x-client-private").is_none(),
        "Connection-listed headers are hop-by-hop"
    );
    assert!(
        h.get("x-palisade-score").is_none(),
        "clients cannot forge scores for the upstream"
    );
    assert_eq!(
        h["x-request-id"][0].as_str().unwrap(),
        r.header("x-request-id")
    );
    // Hop-by-hop headers from the upstream do not reach the client.
    assert!(r.headers.get("x-upstream-private").is_none());
    assert!(r.headers.get("keep-alive").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_decide_the_client_ip() {
    let up = upstream().await;
    let trusted = Gateway::start(Some(&config_for(
        &up,
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    )));
    let r = send(
        "GET",
        &trusted.url("/echo"),
        &[("x-forwarded-for", "6.6.6.6, 203.0.113.9")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    // Extended, not replaced, for a trusted peer.
    assert_eq!(
        r.json()["headers"]["x-forwarded-for"][0],
        "6.6.6.6, 203.0.113.9, 127.0.0.1"
    );
    let d = trusted.wait_decisions(1);
    assert_eq!(d[0]["client_ip"], "203.0.113.9", "rightmost untrusted hop");
    let r = send(
        "GET",
        &trusted.url("/echo"),
        &[("forwarded", "for=198.51.100.4;proto=https")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(trusted.wait_decisions(2)[1]["client_ip"], "198.51.100.4");

    let untrusted = Gateway::start(Some(&config_for(&up, "")));
    send(
        "GET",
        &untrusted.url("/echo"),
        &[("x-forwarded-for", "203.0.113.9")],
        "",
    )
    .await;
    assert_eq!(untrusted.wait_decisions(1)[0]["client_ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_stream_without_buffering() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "")));
    let req = Request::get(g.url("/stream"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The upstream sends its second chunk only after we have seen the first through the proxy;
    // a buffering proxy would deadlock here.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first chunk did not arrive before the body ended: the proxy buffers")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first\n"));
    up.state.release_stream.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_stream_without_buffering() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "")));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let body = StreamBody::new(crate_stream(rx));
    let req = Request::post(g.url("/upload")).body(body).unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let pending = tokio::spawn(async move { c.request(req).await });
    tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 1000]))))
        .await
        .unwrap();
    // The upstream must see the first chunk while the client still holds the rest back.
    tokio::time::timeout(
        Duration::from_secs(10),
        up.state.first_chunk_seen.notified(),
    )
    .await
    .expect("upstream did not get the first chunk: the proxy buffers request bodies");
    tx.send(Ok(Frame::data(Bytes::from(vec![b'b'; 500]))))
        .await
        .unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["bytes"],
        1500
    );
}

fn crate_stream(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    struct S(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);
    impl futures_core::Stream for S {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
    S(rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_in_and_h2c_to_upstreams_chosen_by_route() {
    let a = upstream().await;
    let b = upstream().await;
    let cfg = format!(
        r#"
[[upstreams]]
name = "a"
url = "http://{}"

[[upstreams]]
name = "b"
url = "http://{}"
protocol = "h2c"

[[routes]]
name = "to-b"
match = {{ path = "/b/*" }}
upstream = "b"
"#,
        a.addr, b.addr
    );
    let g = Gateway::start(Some(&cfg));
    let h2 = h2c_client();
    let r = send_with(&h2, "GET", &g.url("/echo"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["version"],
        "HTTP/1.1",
        "default upstream speaks HTTP/1.1"
    );
    let r = send_with(&h2, "GET", &g.url("/b/x"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(std::str::from_utf8(&r.body).unwrap(), "ok /b/x");
    let r = send("GET", &g.url("/b/../echo"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        a.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(
        b.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // The h2c upstream sees HTTP/2.
    let cfg2 = cfg.replace("path = \"/b/*\"", "path = \"/echo\"");
    let g2 = Gateway::start(Some(&cfg2));
    let r = send("GET", &g2.url("/echo"), &[], "").await;
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert!(
        r.json()["headers"]["x-forwarded-host"][0]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_502_and_slow_is_504_with_json() {
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let g = Gateway::start(Some(&format!(
        "[[upstreams]]\nname = \"dead\"\nurl = \"http://{dead}\"\n"
    )));
    let r = get(&g.url("/anything")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert_eq!(r.header("content-type"), "application/json");

    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[server]\nupstream_timeout = \"500ms\"\n",
    )));
    let started = Instant::now();
    let r = get(&g.url("/slow?ms=5000")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(4));
    let r = get(&g.url("/slow?ms=10")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_and_headers_are_bounded() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[server]\nmax_body_bytes = \"1KiB\"\nmax_header_count = 20\nmax_header_bytes = \"4KiB\"\n",
    )));
    let big = "x".repeat(4096);
    let r = send("POST", &g.url("/upload"), &[], &big).await;
    assert_eq!(r.status, 413, "declared length over the limit");
    assert_eq!(r.json()["error"], "body_too_large");
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "refused before the upstream"
    );

    // A chunked body (no length) is cut off mid-stream.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::post(g.url("/upload"))
        .body(StreamBody::new(crate_stream(rx)))
        .unwrap();
    let pending = tokio::spawn(async move { c.request(req).await });
    for _ in 0..4 {
        let _ = tx.send(Ok(Frame::data(Bytes::from(vec![b'z'; 512])))).await;
    }
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 413);

    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let r = send("GET", &g.url("/echo"), &refs, "").await;
    assert_eq!(r.status, 431);
    let long = "y".repeat(6000);
    let r = send("GET", &g.url("/echo"), &[("x-long", &long)], "").await;
    assert_eq!(r.status, 431);
    // Over HTTP/2 too.
    let r = send_with(&h2c_client(), "GET", &g.url("/echo"), &refs, "").await;
    assert_eq!(r.status, 431);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_are_cut_off() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
    )));
    // Slowloris: a request head that trickles in never completes.
    let mut s = TcpStream::connect(g.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(8) {
        let _ = s.write_all(b"X-a: b\r\n");
        std::thread::sleep(Duration::from_millis(200));
        // A closed connection reads EOF (or the 408 hyper sends, then EOF).
        s.set_nonblocking(true).unwrap();
        let r = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        if r.is_ok() || matches!(&r, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickling request head was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off after {:?}",
        started.elapsed()
    );

    // A connection that sends nothing at all is closed by the idle timeout.
    let mut s = TcpStream::connect(g.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected EOF");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "idle connection lived {:?}",
        started.elapsed()
    );

    // A slow upstream is not the client's idleness.
    let r = get(&g.url("/slow?ms=3000")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let up = upstream().await;
    let mut g = Gateway::start(Some(&config_for(&up, "")));
    let url = g.url("/slow?ms=1500");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    g.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new connections after the signal.
    assert!(
        TcpStream::connect_timeout(&g.proxy, Duration::from_secs(1)).is_err(),
        "still accepting after SIGTERM"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completed");
    assert_eq!(&r.body[..], b"slow done");
    let status = tokio::task::spawn_blocking(move || g.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
}

#[tokio::test]
async fn an_http10_request_without_host_reaches_the_upstream_with_one() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "")));
    let r = raw_exchange(g.proxy, b"GET /echo HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(j["headers"]["host"][0], up.addr.to_string(), "{j}");
}

#[tokio::test]
async fn http2_authority_is_the_host_and_a_differing_host_is_refused() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "")));
    let c = h2c_client();
    // hyper's client sends :authority from the URI; a Host header beside it that names
    // another authority is malformed (RFC 9113 section 8.3.1).
    let url = g.url("/echo");
    let r = send_with(&c, "GET", &url, &[("host", "other.example")], "").await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = send_with(&c, "GET", &url, &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["host"][0], g.proxy.to_string());
}

#[tokio::test]
async fn api_keys_are_stripped_and_the_verified_id_and_account_forwarded() {
    let up = upstream().await;
    for (forward, keeps) in [("strip", false), ("keep", true)] {
        let g = Gateway::start(Some(&config_for(
            &up,
            &format!(
                "[keys]\nforward = \"{forward}\"\n\n[[routes]]\nname = \"api\"\nmatch = {{ path = \"/echo\" }}\nauth = \"api_key\"\n"
            ),
        )));
        let (id, key) = create_key(&g, serde_json::json!({"name": "k", "account": "acme"})).await;
        for header in ["authorization", "x-api-key"] {
            let value = if header == "authorization" {
                format!("Bearer {key}")
            } else {
                key.clone()
            };
            let r = send(
                "GET",
                &g.url("/echo"),
                &[(header, value.as_str()), ("x-palisade-account", "forged")],
                "",
            )
            .await;
            assert_eq!(r.status, 200, "{forward} {header}: {:?}", r.body);
            let h = &r.json()["headers"];
            assert_eq!(h["x-palisade-key-id"][0], format!("pal_{id}"), "{h}");
            assert_eq!(h["x-palisade-account"], serde_json::json!(["acme"]), "{h}");
            assert_eq!(h.get(header).is_some(), keeps, "{forward} {header}: {h}");
            assert!(!h.to_string().contains(&key) || keeps, "{h}");
        }
        // A bearer token that is not a key is the upstream's business either way.
        let r = send(
            "GET",
            &g.url("/echo"),
            &[("authorization", "Bearer not-a-key"), ("x-api-key", &key)],
            "",
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["authorization"][0], "Bearer not-a-key");
    }
}

#[tokio::test]
async fn thousands_of_sequential_connects_are_accepted_without_syn_drops() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "")));
    let started = Instant::now();
    for _ in 0..5000 {
        let s = tokio::net::TcpStream::connect(g.proxy).await.unwrap();
        drop(s);
    }
    let took = started.elapsed();
    eprintln!("5000 sequential connects: {took:?}");
    // A SYN dropped by a full backlog costs a 1 s retransmission.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(get(&g.url("/echo")).await.status, 200);
}
