//! An axum API with Palisade in-process, judging every request before the handlers:
//!
//! ```text
//! cargo run -p palisade-tower --example axum [-- CONFIG [ADDR]]
//! curl -i http://127.0.0.1:3000/api/items/42
//! ```
//!
//! The config defaults to `examples/palisade.toml` beside this file: a per-address limit, a
//! honeypot, credential-stuffing detection on the login handler's 401s, and the risk score.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use palisade_tower::Palisade;

/// The API: an item lookup that shows what Palisade told it, and a login that fails unless the
/// password is right.
fn app() -> Router {
    Router::new()
        .route("/api/items/{id}", get(item))
        .route("/api/login", post(login))
}

async fn item(
    axum::extract::Path(id): axum::extract::Path<u64>,
    headers: HeaderMap,
) -> axum::Json<serde_json::Value> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    axum::Json(serde_json::json!({
        "id": id,
        "request_id": h("x-request-id"),
        "score": h("x-palisade-score"),
    }))
}

async fn login(body: String) -> (StatusCode, &'static str) {
    if body.contains("\"password\":\"right\"") {
        (StatusCode::OK, "{\"ok\":true}")
    } else {
        (StatusCode::UNAUTHORIZED, "{\"ok\":false}")
    }
}

/// Serves the API behind Palisade on `listener` until `stop` resolves.
async fn serve(
    palisade: &Palisade,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app().layer(palisade.layer());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let config = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/palisade.toml").to_owned()
    });
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let palisade = Palisade::from_config(&config).await?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "API on http://{} behind Palisade ({config}); admin API and metrics on http://{}",
        listener.local_addr()?,
        palisade.admin_addr()
    );
    serve(&palisade, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    palisade.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt as _;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: String,
    }

    async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let req = axum::http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .header("user-agent", "python-requests/2.32.3")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .unwrap();
        let r = client.request(req).await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        Answer {
            status,
            headers,
            body,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_example_api_is_judged_in_process() {
        let data = std::env::temp_dir().join(format!("palisade-tower-{}", std::process::id()));
        let mut opts = palisade_tower::Options::file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/palisade.toml"
        ));
        opts.overrides.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        opts.overrides.data_dir = Some(data.clone());
        opts.admin_token = Some("example-admin-token".into());
        let palisade = Palisade::start(opts).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = palisade.admin_addr();
        let server = tokio::spawn(async move {
            serve(&palisade, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
            palisade
        });

        // Allowed: the handler sees Palisade's request id and score; the client gets the
        // RateLimit headers and the same id.
        let r = send(addr, "GET", "/api/items/42", "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(j["id"], 42);
        assert_eq!(j["score"], "0");
        let id = j["request_id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 16);
        assert_eq!(r.headers["x-request-id"], id.as_str());
        assert!(r.headers.contains_key("ratelimit"), "{:?}", r.headers);

        // Credential stuffing: the login handler's 401s are fed back to behaviour, with the
        // usernames read from the bodies; the source is challenged and the handler no longer
        // reached.
        let mut challenged = None;
        for i in 0..12 {
            let body = format!("{{\"username\":\"user{i}@example.com\",\"password\":\"guess\"}}");
            let r = send(addr, "POST", "/api/login", &body).await;
            if r.status == 401 && r.headers.contains_key("www-authenticate") {
                assert!(r.body.contains("challenge"), "{}", r.body);
                challenged = Some(i);
                break;
            }
            assert_eq!(r.status, 401, "the handler's own answer: {}", r.body);
            assert_eq!(r.body, "{\"ok\":false}");
        }
        let at = challenged.expect("stuffing was never caught in-process");
        assert!(at <= 8, "challenged after {at} failed logins");

        // The admin API sees the same gateway: the stuffing decision is in its recent log.
        let client = Client::builder(TokioExecutor::new()).build_http();
        let req = axum::http::Request::builder()
            .uri(format!("http://{admin}/v1/decisions?limit=100"))
            .header("authorization", "Bearer example-admin-token")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let r = client.request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        let text = String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        assert!(text.contains("stuffing/source"), "{text}");

        // The limit (20 per 10 s, burst 10): the 429 with Retry-After is Palisade's own.
        let mut limited = None;
        for _ in 0..40 {
            let r = send(addr, "GET", "/api/items/7", "").await;
            if r.status == 429 {
                limited = Some(r);
                break;
            }
        }
        let r = limited.expect("never limited");
        assert!(
            r.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );

        // A honeypot: 404, never the handler's.
        let r = send(addr, "GET", "/.env", "").await;
        assert_eq!(r.status, 404);

        let _ = stop.send(());
        let palisade = server.await.unwrap();
        palisade.shutdown().await;
        let _ = std::fs::remove_dir_all(data);
    }
}
