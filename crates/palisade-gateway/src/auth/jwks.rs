//! Fetches the JWKS URL of `[jwt]` in the background and hands its keys to the verifier:
//! at start, every `jwks_refresh`, and again (from the last good copy) after a reload built a
//! new verifier. A failed fetch keeps the keys already in use and is retried after 10 s.
//!
//! `https://` URLs are verified against the public web PKI roots (Mozilla's, built in), or
//! against the CA certificates in `jwks_ca_file` for a private issuer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_keys::jwt::{StaticKey, parse_jwks};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Shared;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

type JwksClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for http and https JWKS URLs, trusting `ca_file`'s certificates if given, else the
/// web PKI roots.
fn client(ca_file: Option<&Path>) -> Result<JwksClient, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = HttpsConnectorBuilder::new();
    let builder = match ca_file {
        None => builder
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| e.to_string())?,
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn fetch(client: &JwksClient, url: &Uri) -> Result<Vec<StaticKey>, String> {
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
    let mut current: Option<(Option<PathBuf>, JwksClient)> = None;
    let mut cached: Option<Vec<StaticKey>> = None;
    let mut next_fetch = Instant::now();
    loop {
        let rt = shared.runtime.load_full();
        if let Some(jwt) = &rt.compiled.jwt
            && let Some(url) = &jwt.settings().jwks_url
        {
            let ca = jwt.settings().jwks_ca_file.clone();
            if current.as_ref().is_none_or(|(c, _)| *c != ca) && Instant::now() >= next_fetch {
                match client(ca.as_deref()) {
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
