//! Signed agents' key directories (`/.well-known/http-message-signatures-directory`), fetched
//! and cached. The URL comes from a request header, so the fetch is built to be aimed by an
//! attacker: https only, no redirects, every resolved address public (unless allowed), the
//! connection made to the address checked (no second lookup to rebind), five seconds and
//! 64 KiB at most, four fetches at once, a bounded cache. A request never waits on a fetch: an
//! unknown directory is fetched in the background and the request is judged as unsigned.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use palisade_config::WebBotAuthSettings;
use palisade_keys::httpsig::{Message, directory_keys};
use tokio::time::Instant;

use crate::telemetry::metrics::DirectoryLabels;

/// The well-known path of a key directory.
pub const WELL_KNOWN: &str = "/.well-known/http-message-signatures-directory";
/// Most bytes read from a directory.
const MAX_BODY: usize = 64 * 1024;
/// Bound on one fetch, from lookup to the last byte.
const FETCH_LIMIT: Duration = Duration::from_secs(5);
/// Fetches in flight at once.
const MAX_INFLIGHT: usize = 4;
/// Directories cached.
const MAX_ENTRIES: usize = 1024;
/// Cache lifetime without (and bounds on) the directory's `Cache-Control: max-age`.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// After a failed fetch: wait this long before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);
/// How long keys stay usable past their lifetime while new fetches fail.
const STALE_GRACE: Duration = Duration::from_secs(86_400);

/// Where a directory is: an https URL, split.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host name (or IP literal, without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The path (and query) fetched.
    pub path: String,
}

impl Target {
    /// The directory a `Signature-Agent` URI names: the URI itself if it has a path, else the
    /// well-known path on its origin. Only https URIs.
    pub fn of(uri: &str) -> Option<Self> {
        let u: http::Uri = uri.trim().parse().ok()?;
        if u.scheme_str() != Some("https") {
            return None;
        }
        let auth = u.authority()?;
        if auth.as_str().contains('@') {
            return None;
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.len() > 253 {
            return None;
        }
        let path = match u.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => WELL_KNOWN.to_owned(),
            Some(p) => p.to_owned(),
        };
        Some(Target {
            host: host.to_ascii_lowercase(),
            port: auth.port_u16().unwrap_or(443),
            path,
        })
    }

    /// The authority as a request names it (`host` or `host:port`).
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

struct Entry {
    keys: Arc<Vec<(String, serde_json::Value)>>,
    /// Until when the keys are fresh.
    fresh_until: Instant,
    /// Until when they may still be used while refetches fail.
    usable_until: Instant,
    /// No new fetch before this (after a failure).
    retry_at: Instant,
    fetching: bool,
}

/// The cache of key directories, shared by every request (kept across reloads).
#[derive(Default)]
pub struct Directories {
    entries: Mutex<HashMap<Target, Entry>>,
    inflight: AtomicUsize,
}

impl std::fmt::Debug for Directories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directories")
            .field("entries", &lock(&self.entries).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere while holding it; the map is whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a fetch needs from the config.
#[derive(Clone)]
struct FetchSettings {
    require_signed: bool,
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    allow_private: bool,
}

impl Directories {
    /// The key `keyid` of the directory at `target`, if it is cached and usable. Starts a
    /// background fetch (within the bounds) when the directory is unknown or stale.
    pub fn key(
        self: &Arc<Self>,
        shared: &crate::Shared,
        w: &WebBotAuthSettings,
        target: &Target,
        keyid: &str,
    ) -> Option<serde_json::Value> {
        let now = Instant::now();
        let (found, refresh) = {
            let mut map = lock(&self.entries);
            match map.get_mut(target) {
                Some(e) => {
                    let found = (now < e.usable_until)
                        .then(|| {
                            e.keys
                                .iter()
                                .find(|(t, _)| t == keyid)
                                .map(|(_, j)| j.clone())
                        })
                        .flatten();
                    let refresh = now >= e.fresh_until && now >= e.retry_at && !e.fetching;
                    if refresh {
                        e.fetching = true;
                    }
                    (found, refresh)
                }
                None => {
                    if map.len() >= MAX_ENTRIES {
                        // Make room: drop what is no longer usable, else the stalest.
                        map.retain(|_, e| now < e.usable_until || e.fetching);
                        if map.len() >= MAX_ENTRIES
                            && let Some(k) = map
                                .iter()
                                .filter(|(_, e)| !e.fetching)
                                .min_by_key(|(_, e)| e.fresh_until)
                                .map(|(k, _)| k.clone())
                        {
                            map.remove(&k);
                        }
                    }
                    if map.len() >= MAX_ENTRIES {
                        (None, false)
                    } else {
                        map.insert(
                            target.clone(),
                            Entry {
                                keys: Arc::new(Vec::new()),
                                fresh_until: now,
                                usable_until: now,
                                retry_at: now,
                                fetching: true,
                            },
                        );
                        (None, true)
                    }
                }
            }
        };
        if refresh {
            self.spawn_fetch(shared, w, target.clone());
        }
        found
    }

    /// Fetches the directories of listed agents without a keys file before their requests
    /// come, and keeps them fresh.
    pub fn prefetch(self: &Arc<Self>, shared: &crate::Shared, w: &WebBotAuthSettings) {
        for a in w.agents.iter().filter(|a| a.fetch) {
            if let Some(t) = Target::of(&a.origin) {
                let _ = self.key(shared, w, &t, "");
            }
        }
    }

    fn spawn_fetch(
        self: &Arc<Self>,
        shared: &crate::Shared,
        w: &WebBotAuthSettings,
        target: Target,
    ) {
        let settings = FetchSettings {
            require_signed: w.require_signed_directory,
            roots: w.directory_roots.clone(),
            allow_private: w.allow_private_directories,
        };
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= MAX_INFLIGHT {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            if let Some(e) = lock(&self.entries).get_mut(&target) {
                e.fetching = false;
            }
            count(shared, "busy");
            return;
        }
        let this = self.clone();
        let fetches = shared.metrics.agent_directory_fetches.clone();
        let unix = shared.clock.unix_secs() as i64;
        tokio::spawn(async move {
            let outcome =
                match tokio::time::timeout(FETCH_LIMIT, fetch(&target, &settings, unix)).await {
                    Ok(r) => r,
                    Err(_) => Err("timeout"),
                };
            this.inflight.fetch_sub(1, Ordering::AcqRel);
            let now = Instant::now();
            let mut map = lock(&this.entries);
            let Some(e) = map.get_mut(&target) else {
                return;
            };
            e.fetching = false;
            match outcome {
                Ok((keys, ttl)) => {
                    fetches
                        .get_or_create(&DirectoryLabels { result: "ok" })
                        .inc();
                    tracing::info!(directory = %target.host, keys = keys.len(), ttl_s = ttl.as_secs(), "signed agent's key directory fetched");
                    e.keys = Arc::new(keys);
                    e.fresh_until = now + ttl;
                    e.usable_until = now + ttl + STALE_GRACE;
                }
                Err(why) => {
                    fetches
                        .get_or_create(&DirectoryLabels { result: why })
                        .inc();
                    tracing::warn!(directory = %target.host, path = %target.path, error = why, "fetching a signed agent's key directory failed");
                    e.retry_at = now + RETRY_AFTER_FAILURE;
                }
            }
        });
    }
}

/// Keeps listed agents' directories fresh (those without a keys file): a look at start and
/// every 30 seconds, so a reload that adds an agent fetches its keys before its requests.
pub async fn refresh_loop(shared: Arc<crate::Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = shared.runtime.load();
        if let Some(w) = &rt.compiled.web_bot_auth {
            shared.agent_directories.prefetch(&shared, w);
        }
    }
}

fn count(shared: &crate::Shared, result: &'static str) {
    shared
        .metrics
        .agent_directory_fetches
        .get_or_create(&DirectoryLabels { result })
        .inc();
}

/// Whether an address may be fetched from without `allow_private_directories`: not loopback,
/// private, link-local, shared (CGNAT), unique-local, multicast, unspecified, documentation or
/// benchmarking space, nor an IPv4 address hidden in IPv6.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b)
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0))
        }
    }
}

/// One fetch: lookup, address check, TLS to the checked address, GET, bounded body, the
/// directory's signatures. Answers the usable keys and how long to keep them.
async fn fetch(
    t: &Target,
    s: &FetchSettings,
    now: i64,
) -> Result<(Vec<(String, serde_json::Value)>, Duration), &'static str> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|_| "dns_error")?
        .take(16)
        .collect();
    if addrs.is_empty() {
        return Err("dns_error");
    }
    if !s.allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err("private_address");
    }
    let mut tcp = None;
    for a in &addrs {
        if let Ok(c) = tokio::net::TcpStream::connect(a).await {
            tcp = Some(c);
            break;
        }
    }
    let tcp = tcp.ok_or("connect_error")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for r in &s.roots {
        let _ = roots.add(r.clone());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| "tls_error")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|_| "tls_error")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|_| "tls_error")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|_| "http_error")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = t.authority();
    let req = http::Request::get(&t.path)
        .header(http::header::HOST, &authority)
        .header(
            http::header::ACCEPT,
            "application/http-message-signatures-directory+json",
        )
        .header(
            http::header::USER_AGENT,
            "Palisade (Web Bot Auth key directory)",
        )
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|_| "http_error")?;
    let resp = sender.send_request(req).await.map_err(|_| "http_error")?;
    if resp.status() != http::StatusCode::OK {
        return Err("http_status");
    }
    let ok_type = palisade_config::openapi::media_type(resp.headers()).is_some_and(|v| {
        matches!(
            v.as_str(),
            "application/http-message-signatures-directory+json"
                | "application/http-message-signatures-directory"
                | "application/json"
                | "application/jwk-set+json"
        )
    });
    if !ok_type {
        return Err("content_type");
    }
    if resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY)
    {
        return Err("too_large");
    }
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| "too_large")?
        .to_bytes();
    let empty = http::HeaderMap::new();
    let msg = Message {
        method: "GET",
        scheme: "https",
        authority: &authority,
        path: t.path.split('?').next().unwrap_or(&t.path),
        query: t.path.split_once('?').map(|(_, q)| q),
        headers: &empty,
    };
    let keys = directory_keys(&msg, 200, &parts.headers, &body, now, s.require_signed)?;
    if keys.keys.is_empty() {
        return Err("no_usable_key");
    }
    Ok((keys.keys, ttl(&parts.headers)))
}

/// The directory's lifetime: `Cache-Control: max-age` within one minute and a day; an hour
/// without it.
fn ttl(headers: &http::HeaderMap) -> Duration {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            d.trim()
                .strip_prefix("max-age=")?
                .trim_matches('"')
                .parse::<u64>()
                .ok()
        })
        .map_or(DEFAULT_TTL, |s| {
            Duration::from_secs(s).clamp(MIN_TTL, MAX_TTL)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_https_directories() {
        let t = Target::of("https://Agent.Example").expect("target");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("agent.example", 443, WELL_KNOWN)
        );
        assert_eq!(t.authority(), "agent.example");
        let t = Target::of("https://agent.example:8443/keys/dir.json").expect("target");
        assert_eq!((t.port, t.path.as_str()), (8443, "/keys/dir.json"));
        assert_eq!(t.authority(), "agent.example:8443");
        assert_eq!(
            Target::of("https://[::1]:9/").map(|t| t.authority()),
            Some("[::1]:9".into())
        );
        for bad in [
            "http://agent.example",
            "data:application/http-message-signatures-directory+json,{}",
            "https://user:pw@agent.example",
            "agent.example",
            "",
            "https://",
        ] {
            assert_eq!(Target::of(bad), None, "{bad}");
        }
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!is_public(ip), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(is_public(ip), "{ip}");
        }
    }

    #[test]
    fn lifetime_follows_max_age_within_bounds() {
        let h = |v: &'static str| {
            let mut m = http::HeaderMap::new();
            m.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static(v),
            );
            m
        };
        assert_eq!(ttl(&http::HeaderMap::new()), DEFAULT_TTL);
        assert_eq!(ttl(&h("public, max-age=600")), Duration::from_secs(600));
        assert_eq!(ttl(&h("max-age=1")), MIN_TTL);
        assert_eq!(ttl(&h("max-age=99999999")), MAX_TTL);
        assert_eq!(ttl(&h("no-store")), DEFAULT_TTL);
    }
}
