//! Fetches the JWKS URL of `[jwt]` in the background and hands its keys to the verifier:
//! at start, every `jwks_refresh`, and again (from the last good copy) after a reload built a
//! new verifier. A failed fetch keeps the keys already in use and is retried after 10 s.
//!
//! `https://` URLs are verified against the public web PKI roots (Mozilla's, built in), or
//! against the CA certificates in `jwks_ca_file` for a private issuer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Uri;
use palisade_keys::jwt::{StaticKey, parse_jwks};

use crate::Shared;
use crate::client::documents::DocumentClient;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

async fn fetch(client: &DocumentClient, url: &Uri) -> Result<Vec<StaticKey>, String> {
    let body = client.get(url, MAX_JWKS_BYTES).await?;
    parse_jwks(&body)
}

/// Runs for the gateway's life.
pub async fn refresh_loop(shared: Arc<Shared>) {
    let mut current: Option<(Option<PathBuf>, DocumentClient)> = None;
    let mut cached: Option<Vec<StaticKey>> = None;
    let mut next_fetch = Instant::now();
    loop {
        let rt = shared.runtime.load_full();
        if let Some(jwt) = &rt.compiled.jwt
            && let Some(url) = &jwt.settings().jwks_url
        {
            let ca = jwt.settings().jwks_ca_file.clone();
            if current.as_ref().is_none_or(|(c, _)| *c != ca) && Instant::now() >= next_fetch {
                match DocumentClient::new(ca.as_deref()) {
                    Ok(c) => current = Some((ca, c)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the JWKS client; retrying in 10 s");
                        current = None;
                        next_fetch = Instant::now() + Duration::from_secs(10);
                    }
                }
            }
            if Instant::now() >= next_fetch
                && let Some((_, client)) = &current
            {
                match fetch(client, url).await {
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
