//! Fetches the JWKS URL of `[jwt]` in the background and hands its keys to the verifier:
//! at start, every `jwks_refresh`, and again (from the last good copy) after a reload built a
//! new verifier. A failed fetch keeps the keys already in use and is retried after 10 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_keys::jwt::{StaticKey, parse_jwks};

use crate::Shared;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

async fn fetch(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &Uri,
) -> Result<Vec<StaticKey>, String> {
    let req = Request::get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| "timed out reading the body".to_owned())?
    .map_err(|e| e.to_string())?
    .to_bytes();
    parse_jwks(&body)
}

/// Runs for the gateway's life.
pub async fn refresh_loop(shared: Arc<Shared>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut cached: Option<Vec<StaticKey>> = None;
    let mut next_fetch = Instant::now();
    loop {
        let rt = shared.runtime.load_full();
        if let Some(jwt) = &rt.compiled.jwt
            && let Some(url) = &jwt.settings().jwks_url
        {
            if Instant::now() >= next_fetch {
                match fetch(&client, url).await {
                    Ok(keys) => {
                        tracing::info!(url = %url, keys = keys.len(), "fetched JWKS");
                        jwt.set_url_keys(keys.clone());
                        cached = Some(keys);
                        next_fetch =
                            Instant::now() + Duration::from_nanos(jwt.settings().jwks_refresh);
                    }
                    Err(e) => {
                        tracing::warn!(url = %url, error = %e, "fetching JWKS failed; keeping the keys in use");
                        next_fetch = Instant::now() + Duration::from_secs(10);
                    }
                }
            }
            if jwt.url_key_count() == 0
                && let Some(keys) = &cached
            {
                jwt.set_url_keys(keys.clone());
            }
        }
        drop(rt);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
