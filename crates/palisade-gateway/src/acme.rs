//! Certificates over ACME (RFC 8555): one certificate for `[tls.acme] domains`, ordered from
//! the CA, proven by HTTP-01 (answered on the plain listener) or TLS-ALPN-01 (RFC 8737,
//! answered on the TLS listener), kept in the data dir, renewed before it expires.
//!
//! In a cluster (`[store] backend = "redis"`) gateways share the work through the store: one
//! takes a lock and orders; its challenges are published so that whichever gateway the CA
//! reaches can answer them; the certificate is published and every gateway takes it from
//! there. A gateway that cannot reach the store orders on its own rather than serve nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use palisade_config::{AcmeChallenge, AcmeSettings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::cluster::SharedStore;
use crate::telemetry::metrics::AcmeLabels;

/// The path prefix of HTTP-01 challenges.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Challenges kept at once (each order has one per name).
const MAX_CHALLENGES: usize = 256;
/// How long a published challenge lives in the shared store.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// How long one gateway may hold the cluster's ordering lock.
const LOCK_TTL: Duration = Duration::from_secs(300);
/// Bound on each store operation here (none is on a request's path).
const STORE_LIMIT: Duration = Duration::from_secs(2);
/// Bound on one whole order, from account to certificate.
const ORDER_LIMIT: Duration = Duration::from_secs(240);

/// A certificate ordered over ACME.
pub struct Issued {
    /// The names it was ordered for.
    pub domains: Vec<String>,
    /// The directory it came from.
    pub directory: String,
    /// Chain and key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// The PEM texts, as stored.
    stored: Stored,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("domains", &self.domains)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Issued {
    /// Whether the certificate was ordered for `name`.
    pub fn covers(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(name))
    }

    /// Whether it is for these settings (same names, same CA).
    fn is_for(&self, s: &AcmeSettings) -> bool {
        self.domains == s.domains && self.directory == s.directory
    }

    /// Whether it is time to renew at `now` (Unix seconds).
    fn due(&self, s: &AcmeSettings, now: i64) -> bool {
        self.not_after.saturating_sub(now) <= s.renew_before_secs as i64
    }
}

/// A certificate and key as kept in the data dir and the shared store.
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    directory: String,
    domains: Vec<String>,
    cert: String,
    key: String,
}

impl Stored {
    /// Loads the PEM texts into a certificate rustls can serve.
    fn load(self) -> Result<Issued, String> {
        let chain = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate chain does not parse: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the chain")?;
        let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("the certificate does not parse: {e}"))?
            .1
            .validity()
            .not_after
            .timestamp();
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes())
            .map_err(|e| format!("the private key does not parse: {e}"))?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| format!("unsupported private key: {e}"))?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match()
            .map_err(|e| format!("the key is not the certificate's: {e}"))?;
        Ok(Issued {
            domains: self.domains.clone(),
            directory: self.directory.clone(),
            key: Arc::new(key),
            not_after,
            stored: self,
        })
    }
}

/// The ACME certificate and the challenges in flight, shared by the TLS listener (which serves
/// them) and the ordering task. Kept across reloads.
#[derive(Default)]
pub struct AcmeCerts {
    current: ArcSwapOption<Issued>,
    /// HTTP-01: token -> key authorization.
    http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: name -> SHA-256 of the key authorization.
    alpn01: Mutex<HashMap<String, Vec<u8>>>,
    /// The shared store, in a cluster.
    store: OnceLock<Arc<SharedStore>>,
}

impl std::fmt::Debug for AcmeCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeCerts")
            .field("current", &self.current.load().as_ref().map(|i| &i.domains))
            .finish()
    }
}

impl AcmeCerts {
    /// The certificate held, if any.
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.current.load_full()
    }

    /// Shares challenges and certificates through `store` from now on.
    pub fn set_store(&self, store: Arc<SharedStore>) {
        let _ = self.store.set(store);
    }

    fn install(&self, issued: Issued) {
        self.current.store(Some(Arc::new(issued)));
    }

    /// The answer to an HTTP-01 check for `token`: the key authorization, from this gateway or
    /// (in a cluster) the one that ordered.
    pub async fn http01(&self, token: &str) -> Option<String> {
        if token.is_empty() || token.len() > 256 {
            return None;
        }
        let local = lock(&self.http01).get(token).cloned();
        if local.is_some() {
            return local;
        }
        let store = self.store.get()?;
        store
            .get_value(
                &store.key_for("acme", &format!("http01:{token}")),
                STORE_LIMIT,
            )
            .await
            .ok()
            .flatten()
    }

    /// The self-signed certificate a TLS-ALPN-01 check for `name` expects (RFC 8737 §3).
    pub async fn alpn01(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = name?.trim_end_matches('.').to_ascii_lowercase();
        let local = lock(&self.alpn01).get(&name).cloned();
        let digest = match local {
            Some(d) => d,
            None => {
                let store = self.store.get()?;
                let hex = store
                    .get_value(
                        &store.key_for("acme", &format!("alpn01:{name}")),
                        STORE_LIMIT,
                    )
                    .await
                    .ok()
                    .flatten()?;
                from_hex(&hex)?
            }
        };
        match alpn_certificate(&name, &digest) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(name = %name, error = %e, "making the TLS-ALPN-01 certificate failed");
                None
            }
        }
    }

    /// Publishes a challenge answer here and, in a cluster, in the store.
    async fn publish(&self, challenge: &Published) {
        match challenge {
            Published::Http01 { token, answer } => {
                let mut m = lock(&self.http01);
                if m.len() < MAX_CHALLENGES {
                    m.insert(token.clone(), answer.clone());
                }
            }
            Published::Alpn01 { name, digest } => {
                let mut m = lock(&self.alpn01);
                if m.len() < MAX_CHALLENGES {
                    m.insert(name.clone(), digest.clone());
                }
            }
        }
        if let Some(store) = self.store.get() {
            let (key, value) = challenge.shared();
            if let Err(e) = store
                .set_value(
                    &store.key_for("acme", &key),
                    &value,
                    Some(CHALLENGE_TTL),
                    STORE_LIMIT,
                )
                .await
            {
                tracing::warn!(error = %e, "publishing an ACME challenge to the shared store failed; only this gateway can answer it");
            }
        }
    }

    fn withdraw(&self, challenges: &[Published]) {
        for c in challenges {
            match c {
                Published::Http01 { token, .. } => {
                    lock(&self.http01).remove(token);
                }
                Published::Alpn01 { name, .. } => {
                    lock(&self.alpn01).remove(name);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere while holding it; the map is whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A challenge answer made available for the CA's check.
enum Published {
    Http01 { token: String, answer: String },
    Alpn01 { name: String, digest: Vec<u8> },
}

impl Published {
    /// Its key (under the store's `acme` area) and value in the shared store.
    fn shared(&self) -> (String, String) {
        match self {
            Published::Http01 { token, answer } => (format!("http01:{token}"), answer.clone()),
            Published::Alpn01 { name, digest } => (format!("alpn01:{name}"), to_hex(digest)),
        }
    }
}

fn to_hex(b: &[u8]) -> String {
    palisade_keys::key::hex(b)
}

/// At most 64 bytes (a digest), from hex.
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() > 128 {
        return None;
    }
    palisade_keys::key::unhex(s)
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, for that name only, carrying the
/// key authorization's digest in the critical `acmeIdentifier` extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    let signing =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// FNV-1a 64 of the parts, as hex: a stable name for files and store keys.
fn stable_id(parts: &[&str]) -> String {
    use palisade_intel::hfp::{FNV_OFFSET, fnv1a};
    let h = parts.iter().fold(FNV_OFFSET, |h, p| {
        fnv1a(h, p.bytes().chain(std::iter::once(0)))
    });
    format!("{h:016x}")
}

/// The certificate's name in the data dir and the store.
fn cert_id(s: &AcmeSettings) -> String {
    let mut parts: Vec<&str> = vec![&s.directory];
    parts.extend(s.domains.iter().map(String::as_str));
    stable_id(&parts)
}

/// Writes `bytes` to `path` through a temporary file and a rename (never half a file), owner
/// read/write only.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Where ACME state lives in the data dir.
fn acme_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme")
}

async fn read_json<T: serde::de::DeserializeOwned + Send + 'static>(path: PathBuf) -> Option<T> {
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable ACME file");
                None
            }
        }
    })
    .await
    .ok()
    .flatten()
}

async fn write_json<T: Serialize>(path: PathBuf, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        write_atomic(&path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Keeps the ACME certificate current for as long as the gateway runs: loads it from the data
/// dir (or the cluster), orders one when there is none or it is due, and looks again at least
/// every minute (so a reload that changes `[tls.acme]` takes effect).
pub async fn manage(shared: Arc<crate::Shared>) {
    let owner = format!("{:016x}", rand::random::<u64>());
    // In a cluster, give the store a moment to connect: ordering alone is the fallback for a
    // store that is away, not for one still connecting.
    if let Some(store) = &shared.store {
        let start = tokio::time::Instant::now();
        while !store.is_healthy() && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut failures: u32 = 0;
    let mut last_order: Option<tokio::time::Instant> = None;
    loop {
        let wait = match step(&shared, &owner, &mut last_order).await {
            Ok(d) => {
                failures = 0;
                d
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                shared
                    .metrics
                    .acme_orders
                    .get_or_create(&AcmeLabels { result: "failed" })
                    .inc();
                // 30 s, 1 min, 2 min ... up to an hour: a CA's rate limits are not for hammering.
                let wait = Duration::from_secs(30u64 << failures.min(7).saturating_sub(1))
                    .min(Duration::from_secs(3600));
                tracing::error!(error = %e, retry_in_s = wait.as_secs(), "ordering the ACME certificate failed");
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn step(
    shared: &Arc<crate::Shared>,
    owner: &str,
    last_order: &mut Option<tokio::time::Instant>,
) -> Result<Duration, String> {
    let rt = shared.runtime.load();
    let Some(settings) = rt.compiled.tls.as_ref().and_then(|t| t.acme.clone()) else {
        return Ok(Duration::from_secs(60));
    };
    let certs = rt.acme.clone();
    let data_dir = rt.compiled.server.data_dir.clone();
    drop(rt);
    let now = shared.clock.unix_secs() as i64;
    let id = cert_id(&settings);
    let file = acme_dir(&data_dir).join(format!("cert-{id}.json"));
    let store = shared.store.clone();
    let shared_key = store
        .as_ref()
        .map(|s| s.key_for("acme", &format!("cert:{id}")));

    let held = certs.current().filter(|i| i.is_for(&settings));
    if held.is_none()
        && let Some(stored) = read_json::<Stored>(file.clone()).await
    {
        match stored.load() {
            Ok(i) if i.is_for(&settings) => {
                tracing::info!(domains = ?i.domains, days_left = (i.not_after - now) / 86_400, "ACME certificate loaded from the data dir");
                certs.install(i);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring the stored ACME certificate")
            }
        }
    }
    // In a cluster, another gateway may have a newer one.
    if let (Some(store), Some(key)) = (&store, &shared_key)
        && let Ok(Some(json)) = store.get_value(key, STORE_LIMIT).await
        && let Ok(stored) = serde_json::from_str::<Stored>(&json)
        && let Ok(theirs) = stored.load()
        && theirs.is_for(&settings)
        && certs
            .current()
            .is_none_or(|mine| !mine.is_for(&settings) || mine.not_after < theirs.not_after)
    {
        tracing::info!(domains = ?theirs.domains, "ACME certificate taken from the shared store");
        let _ = write_json(file.clone(), &theirs.stored).await;
        certs.install(theirs);
    }
    let held = certs.current().filter(|i| i.is_for(&settings));
    if let Some(i) = &held {
        shared
            .metrics
            .acme_expiry
            .set(i.not_after.saturating_sub(now).max(0));
        let recently = last_order.is_some_and(|t| t.elapsed() < Duration::from_secs(3600));
        if !i.due(&settings, now) || recently {
            let until_due = (i.not_after - now - settings.renew_before_secs as i64).max(1) as u64;
            // Look again within a minute: the config may change, or a replica may renew.
            return Ok(Duration::from_secs(until_due.min(60)));
        }
    }
    // Order. In a cluster, only the gateway holding the lock does.
    let lock_key = store
        .as_ref()
        .map(|s| s.key_for("acme", &format!("lock:{id}")));
    if let (Some(store), Some(lock_key)) = (&store, &lock_key) {
        match store.try_lock(lock_key, owner, LOCK_TTL, STORE_LIMIT).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("another gateway is ordering the ACME certificate");
                return Ok(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the shared store is away: ordering the ACME certificate alone");
            }
        }
    }
    tracing::info!(domains = ?settings.domains, directory = %settings.directory, "ordering a certificate over ACME");
    let ordered = match tokio::time::timeout(
        ORDER_LIMIT,
        order(&settings, &certs, &data_dir, store.as_deref()),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the order took longer than {} s",
            ORDER_LIMIT.as_secs()
        )),
    };
    if let (Some(store), Some(lock_key)) = (&store, &lock_key) {
        let _ = store.unlock(lock_key, owner, STORE_LIMIT).await;
    }
    let stored = ordered?;
    *last_order = Some(tokio::time::Instant::now());
    let issued = stored.clone().load()?;
    shared
        .metrics
        .acme_orders
        .get_or_create(&AcmeLabels { result: "issued" })
        .inc();
    shared
        .metrics
        .acme_expiry
        .set(issued.not_after.saturating_sub(now).max(0));
    tracing::info!(domains = ?issued.domains, days_left = (issued.not_after - now) / 86_400, "ACME certificate issued");
    write_json(file, &stored).await?;
    if let (Some(store), Some(key)) = (&store, &shared_key)
        && let Ok(json) = serde_json::to_string(&stored)
        && let Err(e) = store.set_value(key, &json, None, STORE_LIMIT).await
    {
        tracing::warn!(error = %e, "publishing the ACME certificate to the shared store failed");
    }
    certs.install(issued);
    Ok(Duration::from_secs(60))
}

/// The ACME account for the directory: from the data dir, the cluster, or made now.
async fn account(
    s: &AcmeSettings,
    data_dir: &Path,
    store: Option<&SharedStore>,
) -> Result<Account, String> {
    let builder = || match &s.ca_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let id = stable_id(&[&s.directory]);
    let file = acme_dir(data_dir).join(format!("account-{id}.json"));
    let shared_key = store.map(|st| st.key_for("acme", &format!("account:{id}")));
    let mut known: Option<AccountCredentials> = read_json(file.clone()).await;
    if known.is_none()
        && let (Some(store), Some(key)) = (store, &shared_key)
        && let Ok(Some(json)) = store.get_value(key, STORE_LIMIT).await
    {
        known = serde_json::from_str(&json).ok();
    }
    if let Some(creds) = known {
        let b = builder().map_err(|e| format!("ACME HTTP client: {e}"))?;
        match b.from_credentials(creds).await {
            Ok(a) => return Ok(a),
            Err(e) => {
                tracing::warn!(error = %e, "the stored ACME account does not load: making a new one")
            }
        }
    }
    let contact: Vec<&str> = s.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()
        .map_err(|e| format!("ACME HTTP client: {e}"))?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            s.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("creating the ACME account at {}: {e}", s.directory))?;
    write_json(file, &creds).await?;
    if let (Some(store), Some(key)) = (store, &shared_key)
        && let Ok(json) = serde_json::to_string(&creds)
    {
        let _ = store.set_value(key, &json, None, STORE_LIMIT).await;
    }
    Ok(account)
}

/// One order: authorizations, challenges published and answered, finalized with a fresh key.
async fn order(
    s: &AcmeSettings,
    certs: &AcmeCerts,
    data_dir: &Path,
    store: Option<&SharedStore>,
) -> Result<Stored, String> {
    let account = account(s, data_dir, store).await?;
    let identifiers: Vec<Identifier> = s.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let kind = match s.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut published = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(|e| format!("authorization: {e}"))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = a
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            let ka = challenge.key_authorization();
            let p = match s.challenge {
                AcmeChallenge::Http01 => Published::Http01 {
                    token: challenge.token.clone(),
                    answer: ka.as_str().to_owned(),
                },
                AcmeChallenge::TlsAlpn01 => Published::Alpn01 {
                    name: challenge.identifier().to_string().to_ascii_lowercase(),
                    digest: ka.digest().as_ref().to_vec(),
                },
            };
            certs.publish(&p).await;
            published.push(p);
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(500))
            .timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("waiting for the CA's checks: {e}"))?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .and_then(|p| p.detail.clone())
                .unwrap_or_else(|| format!("the order is {status:?}"));
            return Err(format!("the CA refused the names: {why}"));
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok(Stored {
            directory: s.directory.clone(),
            domains: s.domains.clone(),
            cert: chain,
            key,
        })
    }
    .await;
    certs.withdraw(&published);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let d = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&d)), Some(d));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"00".repeat(65)), None);
    }

    #[test]
    fn alpn_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let c = alpn_certificate("api.example.com", &digest).expect("certificate");
        let der = c.cert.first().expect("leaf");
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parses");
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(ext.value.get(..2), Some(&[0x04, 0x20][..]));
        assert_eq!(ext.value.get(2..), Some(&digest[..]));
        let names: Vec<String> = x
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .map(|n| format!("{n}"))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names, vec!["DNSName(api.example.com)"]);
    }

    fn settings(renew_days: u64) -> AcmeSettings {
        AcmeSettings {
            domains: vec!["a.example.com".into()],
            directory: "https://ca.example/dir".into(),
            contact: vec![],
            challenge: AcmeChallenge::Http01,
            renew_before_secs: renew_days * 86_400,
            ca_root: None,
        }
    }

    #[test]
    fn renewal_is_due_inside_the_window_only() {
        let s = settings(30);
        let c = alpn_certificate("a.example.com", &[0; 32]).expect("certificate");
        let issued = |not_after| Issued {
            domains: s.domains.clone(),
            directory: s.directory.clone(),
            key: c.clone(),
            not_after,
            stored: Stored {
                directory: String::new(),
                domains: vec![],
                cert: String::new(),
                key: String::new(),
            },
        };
        let now = 1_000_000_000;
        assert!(!issued(now + 31 * 86_400).due(&s, now));
        assert!(issued(now + 30 * 86_400).due(&s, now));
        assert!(issued(now - 1).due(&s, now));
        assert!(issued(now).is_for(&s));
        assert!(!issued(now).is_for(&settings(30).tap_domains(&["b.example.com"])));
        assert!(issued(now).covers("A.example.com."));
        assert!(!issued(now).covers("b.example.com"));
    }

    trait Tap {
        fn tap_domains(self, d: &[&str]) -> Self;
    }
    impl Tap for AcmeSettings {
        fn tap_domains(mut self, d: &[&str]) -> Self {
            self.domains = d.iter().map(|s| (*s).to_owned()).collect();
            self
        }
    }

    #[test]
    fn stored_files_are_named_by_ca_and_names() {
        let a = cert_id(&settings(30));
        assert_eq!(a, cert_id(&settings(1)));
        assert_ne!(a, cert_id(&settings(30).tap_domains(&["b.example.com"])));
        let mut other_ca = settings(30);
        other_ca.directory = "https://other.example/dir".into();
        assert_ne!(a, cert_id(&other_ca));
    }

    #[test]
    fn writes_are_whole_and_private() {
        let dir = std::env::temp_dir().join(format!("palisade-acme-{}", rand::random::<u64>()));
        let f = dir.join("acme").join("x.json");
        write_atomic(&f, b"{}").expect("written");
        assert_eq!(std::fs::read(&f).ok().as_deref(), Some(&b"{}"[..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&f)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!f.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
