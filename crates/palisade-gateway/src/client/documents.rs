//! Documents the gateway fetches for itself — a JWKS, a bot operator's published ranges — over
//! `http://` or `https://`. `https://` is verified against the public web PKI roots (Mozilla's,
//! built in) or against the CA certificates of a given file, for a private issuer. Every fetch
//! is bounded: a time limit for the answer and for the body, and a size limit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Time limit for the answer's head, and again for its body.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A client for `http://` and `https://` documents.
#[derive(Clone)]
pub struct DocumentClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for DocumentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DocumentClient")
    }
}

impl DocumentClient {
    /// A client trusting `ca_file`'s certificates if given, else the web PKI roots.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, String> {
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
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// GETs `url` and returns its body: a 2xx answer of at most `max_bytes`, else an error
    /// saying what went wrong.
    pub async fn get(&self, url: &Uri, max_bytes: usize) -> Result<Bytes, String> {
        let req = Request::get(url.clone())
            .header(http::header::ACCEPT, "application/json, text/plain;q=0.9")
            .header(
                http::header::USER_AGENT,
                concat!("palisade/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body =
            tokio::time::timeout(TIMEOUT, Limited::new(resp.into_body(), max_bytes).collect())
                .await
                .map_err(|_| "timed out reading the body".to_owned())?
                .map_err(|e| e.to_string())?;
        Ok(body.to_bytes())
    }
}
