//! The TLS edge: the ClientHello is read off the socket first (rustls does not expose its
//! bytes), fingerprinted (JA4), then replayed into rustls, which picks the certificate by
//! server name. What a connection's handshake showed is kept for every request on it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use palisade_config::TlsSettings;
use palisade_config::TlsVersion;
use palisade_intel::ja4::{ClientHello, MAX_HELLO, Read};
use rustls::server::{ClientHello as RustlsHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::h1::Rewind;
use super::stream::ClientStream;
use crate::acme::{ACME_TLS_ALPN, AcmeCerts};

/// Bytes read before giving up on a ClientHello: the largest hello, split over records.
const MAX_HELLO_BYTES: usize = MAX_HELLO + 4 * 1024;

/// What a connection's TLS handshake showed, for every request on it.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// JA4 of the ClientHello.
    pub ja4: Arc<str>,
    /// JA4_r (sorted, raw), for explain and the decision log.
    pub ja4_raw: Arc<str>,
    /// The server name the client asked for.
    pub server_name: Option<Arc<str>>,
    /// The negotiated version: `"1.2"` or `"1.3"`.
    pub version: &'static str,
    /// The negotiated application protocol: `"h2"`, `"http/1.1"` or none.
    pub alpn: Option<&'static str>,
    /// The client certificate's identity (mutual TLS): its subject's common name, else its
    /// first DNS or URI subject alternative name.
    pub client: Option<Arc<str>>,
}

/// Picks a certificate by server name: a configured one naming it (exact, then wildcard), the
/// ACME one if it was ordered for the name, then the default (the first configured, else the
/// ACME one).
#[derive(Debug)]
struct ByName(TlsSettings, Arc<AcmeCerts>);

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: RustlsHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        if let Some(c) = name.and_then(|n| self.0.certificate_named(n)) {
            return Some(c.key.clone());
        }
        let acme = self.1.current();
        if let Some(i) = &acme
            && name.is_some_and(|n| i.covers(n))
        {
            return Some(i.key.clone());
        }
        self.0
            .certificates
            .first()
            .map(|c| c.key.clone())
            .or_else(|| acme.map(|i| i.key.clone()))
    }
}

/// Serves one certificate (a TLS-ALPN-01 check's).
#[derive(Debug)]
struct Only(Arc<CertifiedKey>);

impl ResolvesServerCert for Only {
    fn resolve(&self, _: RustlsHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The rustls server config for `[tls]`.
pub fn server_config(
    settings: &TlsSettings,
    acme: Arc<AcmeCerts>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some((cas, required)) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots.add(ca.clone())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if *required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(ByName(settings.clone(), acme)));
    config.alpn_protocols = settings.alpn.clone();
    // Session resumption by tickets (stateless) and a bounded session cache.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(10_000);
    Ok(Arc::new(config))
}

/// How a TLS handshake ended.
pub enum Handshake {
    /// Done: the connection and what its handshake showed.
    Done(ClientStream, Arc<TlsInfo>),
    /// The client sent plain HTTP to the TLS port (answered and closed).
    PlainHttp,
    /// An ACME CA's TLS-ALPN-01 check, answered (the connection carries no requests).
    AcmeChallenge,
    /// Not a TLS client, a malformed or oversized hello, a failed handshake, or too slow.
    Failed(&'static str),
}

/// Reads and fingerprints the ClientHello, then completes the handshake, within `timeout`.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    acme: Arc<AcmeCerts>,
    timeout: Duration,
) -> Handshake {
    match tokio::time::timeout(timeout, handshake(tcp, config, acme)).await {
        Ok(h) => h,
        Err(_) => Handshake::Failed("handshake_timeout"),
    }
}

async fn handshake(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
    acme: Arc<AcmeCerts>,
) -> Handshake {
    let mut buf = BytesMut::with_capacity(2048);
    let hello = loop {
        match ClientHello::read(&buf) {
            Read::Hello(h) => break h,
            Read::Incomplete(need) if need <= MAX_HELLO_BYTES => {
                buf.reserve(need.saturating_sub(buf.len()).max(512));
                match tcp.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return Handshake::Failed("closed_in_hello"),
                    Ok(_) => {}
                }
            }
            Read::Incomplete(_) => return Handshake::Failed("hello_too_large"),
            Read::Invalid(_) if looks_like_http(&buf) => {
                let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
                let _ = tcp.shutdown().await;
                return Handshake::PlainHttp;
            }
            Read::Invalid("ClientHello too large") => return Handshake::Failed("hello_too_large"),
            Read::Invalid("malformed ClientHello") => return Handshake::Failed("malformed_hello"),
            Read::Invalid(_) => return Handshake::Failed("not_a_client_hello"),
        }
    };
    if hello.alpn.len() == 1 && hello.alpn.first().is_some_and(|p| p == ACME_TLS_ALPN) {
        return acme_check(tcp, buf, hello.server_name.as_deref(), &acme).await;
    }
    let ja4 = hello.ja4();
    let server_name = hello.server_name.as_deref().map(Arc::from);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match acceptor.accept(Rewind::new(buf.freeze(), tcp)).await {
        Ok(t) => t,
        Err(e) => return Handshake::Failed(handshake_error(&e)),
    };
    let conn: &ServerConnection = tls.get_ref().1;
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        _ => "1.2",
    };
    let alpn = match conn.alpn_protocol() {
        Some(b"h2") => Some("h2"),
        Some(b"http/1.1") => Some("http/1.1"),
        _ => None,
    };
    let client = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| client_identity(leaf.as_ref()));
    let info = TlsInfo {
        ja4: Arc::from(ja4.fingerprint),
        ja4_raw: Arc::from(ja4.raw),
        server_name,
        version,
        alpn,
        client,
    };
    Handshake::Done(ClientStream::Tls(Box::new(tls)), Arc::new(info))
}

/// Answers an ACME CA's TLS-ALPN-01 check (RFC 8737): a handshake offering only `acme-tls/1`
/// gets the challenge's self-signed certificate for the name asked, then the connection
/// closes. A name with no challenge in flight fails the handshake.
async fn acme_check(
    tcp: TcpStream,
    buf: BytesMut,
    name: Option<&str>,
    acme: &AcmeCerts,
) -> Handshake {
    let Some(cert) = acme.alpn01(name).await else {
        return Handshake::Failed("no_acme_challenge");
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let Ok(builder) = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    else {
        return Handshake::Failed("tls_error");
    };
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Only(cert)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    match acceptor.accept(Rewind::new(buf.freeze(), tcp)).await {
        Ok(mut tls) => {
            let _ = tls.shutdown().await;
            Handshake::AcmeChallenge
        }
        Err(e) => Handshake::Failed(handshake_error(&e)),
    }
}

/// The identity of a verified client certificate: its subject CN, else its first DNS or URI
/// subject alternative name (bounded, printable).
fn client_identity(der: &[u8]) -> Option<Arc<str>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_owned));
    let san = || {
        cert.subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|s| {
                s.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
            })
    };
    cn.or_else(san)
        .filter(|v| !v.is_empty() && v.len() <= 256 && v.chars().all(|c| !c.is_control()))
        .map(Arc::from)
}

/// A short reason for a failed handshake (a metric label: fixed strings only).
fn handshake_error(e: &io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoApplicationProtocol) => "no_common_alpn",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(rustls::Error::InvalidMessage(_)) => "invalid_message",
        Some(rustls::Error::AlertReceived(_)) => "client_alert",
        Some(_) => "tls_error",
        None => "io_error",
    }
}

/// Whether the first bytes are an HTTP/1 request line's start (a client that forgot `https`).
fn looks_like_http(buf: &[u8]) -> bool {
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    (3..=7).contains(&method_len) && buf.get(method_len) == Some(&b' ')
}

const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 84\r\nconnection: close\r\n\r\n{\"error\":\"plain_http_to_tls_port\",\"message\":\"This port speaks HTTPS: use https://.\"}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_answer_is_well_formed() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(v["error"], "plain_http_to_tls_port");
    }

    #[test]
    fn tells_http_from_tls() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1"));
        assert!(!looks_like_http(&[22, 3, 1, 0, 5]));
        assert!(!looks_like_http(b"PRI"));
        assert!(!looks_like_http(b""));
    }
}
