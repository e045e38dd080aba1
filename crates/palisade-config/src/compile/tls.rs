//! `[tls]`: the certificates are read and checked here, with the rest of the config, so that a
//! certificate or key that does not load is reported by `palisade check` and keeps the running
//! policy (and the running certificates) on reload, like any other error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// Oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// One certificate, loaded.
#[derive(Clone)]
pub struct CertificateInfo {
    /// Names it is served for, lowercase (`*.example.com` matches one level).
    pub names: Vec<String>,
    /// The chain and signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// End of the leaf's validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// The certificate file.
    pub path: PathBuf,
}

impl std::fmt::Debug for CertificateInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateInfo")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("path", &self.path)
            .finish()
    }
}

/// Compiled `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The TLS listener.
    pub listen: SocketAddr,
    /// Certificates; the first is the default.
    pub certificates: Vec<CertificateInfo>,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<Vec<u8>>,
    /// Oldest version accepted.
    pub min_version: TlsVersion,
    /// Whether the plain listener redirects to HTTPS.
    pub redirect_plain: bool,
    /// CAs of client certificates, and whether a certificate is required.
    pub client_auth: Option<(Vec<CertificateDer<'static>>, bool)>,
    /// Certificates ordered over ACME (`[tls.acme]`).
    pub acme: Option<AcmeSettings>,
}

/// How the ACME CA checks that the names are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 (RFC 8737), answered on the TLS listener.
    TlsAlpn01,
    /// HTTP-01, answered on the plain listener.
    Http01,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Compiled `[tls.acme]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The names of the certificate, lowercase, in order.
    pub domains: Vec<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// Account contacts.
    pub contact: Vec<String>,
    /// The challenge answered.
    pub challenge: AcmeChallenge,
    /// Renew when fewer than this many seconds are left.
    pub renew_before_secs: u64,
    /// A root to trust for the CA's HTTPS (PEM file), instead of the system's.
    pub ca_root: Option<PathBuf>,
}

impl TlsSettings {
    /// The certificate for a server name: an exact name, then a wildcard one level up, then the
    /// default (the first).
    pub fn certificate_for(&self, server_name: Option<&str>) -> Option<&CertificateInfo> {
        server_name
            .and_then(|n| self.certificate_named(n))
            .or_else(|| self.certificates.first())
    }

    /// The certificate naming `server_name`: exactly, else by a wildcard one level up.
    pub fn certificate_named(&self, server_name: &str) -> Option<&CertificateInfo> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.certificates.iter().find(|c| c.names.contains(&name)) {
            return Some(c);
        }
        let (_, parent) = name.split_once('.')?;
        let wild = format!("*.{parent}");
        self.certificates.iter().find(|c| c.names.contains(&wild))
    }
}

/// The certificates of a PEM bundle file (at least one), or what is wrong with it.
fn pem_bundle(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(file).map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}` is not a PEM certificate bundle: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", file.display()));
    }
    Ok(certs)
}

/// `[tls]`.
pub(super) fn compile_tls(
    t: &RawTls,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> Option<TlsSettings> {
    let listen = opt(
        &t.listen,
        SocketAddr::from(([0, 0, 0, 0], 8443)),
        "tls.listen",
        c,
        parse_addr,
    );
    let min_version = choice(
        &t.min_version,
        &[("1.2", TlsVersion::Tls12), ("1.3", TlsVersion::Tls13)],
        TlsVersion::Tls12,
        "tls.min_version",
        c,
    );
    let alpn = match &t.alpn {
        None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Some(list) => list
            .iter()
            .filter_map(|p| match p.get_ref().as_str() {
                "h2" | "http/1.1" => Some(p.get_ref().as_bytes().to_vec()),
                other => {
                    c.at(
                        sp(p),
                        "tls.alpn",
                        format!(
                            "`{other}` is not a protocol Palisade serves: \"h2\" or \"http/1.1\""
                        ),
                    );
                    None
                }
            })
            .collect(),
    };
    let acme = t
        .acme
        .as_ref()
        .and_then(|a| compile_acme(a, base, c, files));
    if t.certificates.is_empty() && t.acme.is_none() {
        c.at(
            t.listen.as_ref().and_then(sp),
            "tls.certificates",
            "[tls] needs at least one [[tls.certificates]] (cert and key PEM files) or [tls.acme]",
        );
        return None;
    }
    let mut certificates = Vec::new();
    for (i, raw) in t.certificates.iter().enumerate() {
        let path = format!("tls.certificates[{i}]");
        if let Some(cert) = certificate(raw, base, &path, c, files) {
            certificates.push(cert);
        }
    }
    let required = choice(
        &t.client_auth,
        &[("optional", false), ("required", true)],
        false,
        "tls.client_auth",
        c,
    );
    let client_auth = t.client_ca.as_ref().and_then(|ca| {
        let file = base.join(ca.get_ref());
        files.push(file.clone());
        match pem_bundle(&file) {
            Ok(certs) => Some((certs, required)),
            Err(e) => {
                c.at(sp(ca), "tls.client_ca", e);
                None
            }
        }
    });
    if t.client_auth.is_some() && t.client_ca.is_none() {
        c.at(
            t.client_auth.as_ref().and_then(sp),
            "tls.client_auth",
            "client_auth needs client_ca (the CAs that issue the client certificates)",
        );
    }
    Some(TlsSettings {
        listen,
        certificates,
        alpn,
        min_version,
        redirect_plain: t.redirect_plain.unwrap_or(false),
        client_auth,
        acme,
    })
}

/// Whether `name` is a DNS host name (letters, digits, hyphens; labels of 1-63; at most 253),
/// with a dot: ACME CAs issue only for such names.
fn dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `[tls.acme]`.
fn compile_acme(
    a: &RawAcme,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> Option<AcmeSettings> {
    let before = c.errors.len();
    let mut domains: Vec<String> = Vec::new();
    for d in &a.domains {
        let name = d.get_ref().trim_end_matches('.').to_ascii_lowercase();
        if name.starts_with("*.") {
            c.at(
                sp(d),
                "tls.acme.domains",
                format!("`{name}`: wildcard names need the DNS-01 challenge, which Palisade does not answer; list the names, or use [[tls.certificates]]"),
            );
        } else if !dns_name(&name) {
            c.at(
                sp(d),
                "tls.acme.domains",
                format!("`{name}` is not a DNS name an ACME CA issues for (e.g. api.example.com)"),
            );
        } else if !domains.contains(&name) {
            domains.push(name);
        }
    }
    if a.domains.is_empty() {
        c.at(
            None,
            "tls.acme.domains",
            "[tls.acme] needs `domains`: the names the certificate is for",
        );
    }
    if a.domains.len() > 100 {
        c.at(
            None,
            "tls.acme.domains",
            "at most 100 names fit one certificate",
        );
    }
    let directory = opt(
        &a.directory,
        LETS_ENCRYPT.to_owned(),
        "tls.acme.directory",
        c,
        |s| {
            if s.starts_with("https://") && s.len() > "https://".len() {
                Ok(s.to_owned())
            } else {
                Err(format!("`{s}` is not an https:// URL of an ACME directory"))
            }
        },
    );
    let mut contact = Vec::new();
    for u in &a.contact {
        let v = u.get_ref();
        if v.starts_with("mailto:") && v.len() > 7 && !v.contains(char::is_whitespace) {
            contact.push(v.clone());
        } else {
            c.at(
                sp(u),
                "tls.acme.contact",
                format!("`{v}` is not a contact URL such as mailto:ops@example.com"),
            );
        }
    }
    match &a.accept_terms {
        Some(t) if *t.get_ref() => {}
        other => c.at(
            other.as_ref().and_then(sp),
            "tls.acme.accept_terms",
            "ordering certificates means agreeing to the CA's terms of service: read them and set accept_terms = true",
        ),
    }
    let challenge = choice(
        &a.challenge,
        &[
            ("tls-alpn-01", AcmeChallenge::TlsAlpn01),
            ("http-01", AcmeChallenge::Http01),
        ],
        AcmeChallenge::TlsAlpn01,
        "tls.acme.challenge",
        c,
    );
    let days = a.renew_before_days.as_ref().map_or(30, |d| *d.get_ref());
    if !(1..=365).contains(&days) {
        c.at(
            a.renew_before_days.as_ref().and_then(sp),
            "tls.acme.renew_before_days",
            "renew_before_days must be between 1 and 365",
        );
    }
    let ca_root = a.ca_root.as_ref().and_then(|r| {
        let file = base.join(r.get_ref());
        files.push(file.clone());
        let ok = std::fs::read(&file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))
            .and_then(|b| match CertificateDer::pem_slice_iter(&b).next() {
                Some(Ok(_)) => Ok(()),
                _ => Err(format!("`{}` holds no PEM certificate", file.display())),
            });
        match ok {
            Ok(()) => Some(file),
            Err(e) => {
                c.at(sp(r), "tls.acme.ca_root", e);
                None
            }
        }
    });
    (c.errors.len() == before).then_some(AcmeSettings {
        domains,
        directory,
        contact,
        challenge,
        renew_before_secs: days.clamp(1, 365) * 86_400,
        ca_root,
    })
}

fn certificate(
    raw: &RawCertificate,
    base: &Path,
    path: &str,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> Option<CertificateInfo> {
    let cert_file = base.join(raw.cert.get_ref());
    let key_file = base.join(raw.key.get_ref());
    files.push(cert_file.clone());
    files.push(key_file.clone());
    let chain: Vec<CertificateDer<'static>> = match std::fs::read(&cert_file) {
        Ok(bytes) => match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if !chain.is_empty() => chain,
            Ok(_) => {
                c.at(
                    sp(&raw.cert),
                    format!("{path}.cert"),
                    format!("`{}` holds no PEM certificate", cert_file.display()),
                );
                return None;
            }
            Err(e) => {
                c.at(
                    sp(&raw.cert),
                    format!("{path}.cert"),
                    format!(
                        "`{}` is not a PEM certificate chain: {e}",
                        cert_file.display()
                    ),
                );
                return None;
            }
        },
        Err(e) => {
            c.at(
                sp(&raw.cert),
                format!("{path}.cert"),
                format!("cannot read `{}`: {e}", cert_file.display()),
            );
            return None;
        }
    };
    let key = match std::fs::read(&key_file) {
        Ok(bytes) => match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(k) => k,
            Err(e) => {
                c.at(
                    sp(&raw.key),
                    format!("{path}.key"),
                    format!("`{}` is not a PEM private key: {e}", key_file.display()),
                );
                return None;
            }
        },
        Err(e) => {
            c.at(
                sp(&raw.key),
                format!("{path}.key"),
                format!("cannot read `{}`: {e}", key_file.display()),
            );
            return None;
        }
    };
    let leaf = chain.first()?.clone();
    let (san_names, not_after) = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, x509)) => {
            let mut names: Vec<String> = Vec::new();
            if let Ok(Some(san)) = x509.subject_alternative_name() {
                for n in &san.value.general_names {
                    if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                        names.push(d.to_ascii_lowercase());
                    }
                }
            }
            if names.is_empty() {
                names.extend(
                    x509.subject()
                        .iter_common_name()
                        .filter_map(|cn| cn.as_str().ok())
                        .map(str::to_ascii_lowercase),
                );
            }
            (names, x509.validity().not_after.timestamp())
        }
        Err(e) => {
            c.at(
                sp(&raw.cert),
                format!("{path}.cert"),
                format!(
                    "`{}`: the leaf certificate does not parse: {e}",
                    cert_file.display()
                ),
            );
            return None;
        }
    };
    let signing = match rustls::crypto::aws_lc_rs::sign::any_supported_type(&key) {
        Ok(s) => s,
        Err(e) => {
            c.at(
                sp(&raw.key),
                format!("{path}.key"),
                format!("`{}`: unsupported private key: {e}", key_file.display()),
            );
            return None;
        }
    };
    let certified = CertifiedKey::new(chain, signing);
    if let Err(e) = certified.keys_match() {
        c.at(
            sp(&raw.key),
            format!("{path}.key"),
            format!(
                "`{}` is not the key of `{}`: {e}",
                key_file.display(),
                cert_file.display()
            ),
        );
        return None;
    }
    let names = if raw.names.is_empty() {
        san_names
    } else {
        let mut names = Vec::new();
        for n in &raw.names {
            let name = n.get_ref().trim_end_matches('.').to_ascii_lowercase();
            let host = name.strip_prefix("*.").unwrap_or(&name);
            let valid = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if valid {
                names.push(name);
            } else {
                c.at(
                    sp(n),
                    format!("{path}.names"),
                    format!("`{}` is not a host name (or `*.` and one)", n.get_ref()),
                );
            }
        }
        names
    };
    Some(CertificateInfo {
        names,
        key: Arc::new(certified),
        not_after,
        path: cert_file,
    })
}

/// `[fingerprints]`.
pub(super) fn compile_fingerprints(
    f: &RawFingerprints,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> palisade_engine::policy::FingerprintsPolicy {
    let mut known = palisade_intel::clients::KnownClients::builtin();
    if let Some(file) = &f.clients {
        let path = base.join(file.get_ref());
        files.push(path.clone());
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if let Err(errors) = known.extend_from_text(&text) {
                    for e in errors {
                        c.at(
                            sp(file),
                            "fingerprints.clients",
                            format!("`{}` {e}", path.display()),
                        );
                    }
                }
            }
            Err(e) => c.at(
                sp(file),
                "fingerprints.clients",
                format!("cannot read `{}`: {e}", path.display()),
            ),
        }
    }
    palisade_engine::policy::FingerprintsPolicy {
        known: Arc::new(known),
        mismatch_weight: weight(&f.mismatch_weight, 40, "fingerprints.mismatch_weight", c),
        no_h2_weight: weight(&f.no_h2_weight, 30, "fingerprints.no_h2_weight", c),
    }
}

/// Compiled `[web_bot_auth]`.
#[derive(Debug, Clone)]
pub struct WebBotAuthSettings {
    /// Weight of `webbotauth/invalid`.
    pub invalid_weight: u8,
    /// Whether a covered `Signature-Agent` dictionary member is required.
    pub require_signature_agent: bool,
    /// The agents.
    pub agents: Vec<SignedAgentSpec>,
    /// Whether agents not listed are checked against the directory they name.
    pub discover: bool,
    /// A discovered agent's category once verified.
    pub discovered_category: palisade_intel::Category,
    /// Whether directory keys must be proven by the directory response's signature.
    pub require_signed_directory: bool,
    /// Extra roots for key directories' HTTPS.
    pub directory_roots: Vec<CertificateDer<'static>>,
    /// Whether key directories may be on loopback or private addresses.
    pub allow_private_directories: bool,
}

impl WebBotAuthSettings {
    /// Whether any key is fetched from a directory (a listed agent without a keys file, or
    /// discovery).
    pub fn fetches(&self) -> bool {
        self.discover || self.agents.iter().any(|a| a.fetch)
    }
}

/// One signing agent.
#[derive(Debug, Clone)]
pub struct SignedAgentSpec {
    /// Its name.
    pub name: Arc<str>,
    /// Its `Signature-Agent` origin, lowercased, without a trailing `/`.
    pub origin: String,
    /// Its category once verified.
    pub category: palisade_intel::Category,
    /// Its public keys by JWK thumbprint (the `keyid` it signs with), from its keys file.
    pub keys: Vec<(String, serde_json::Value)>,
    /// Whether its keys are fetched from its key directory (no keys file).
    pub fetch: bool,
}

/// A `Signature-Agent` origin as compared: lowercased, without a trailing `/`.
pub fn agent_origin(uri: &str) -> String {
    uri.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `[web_bot_auth]`.
pub(super) fn compile_web_bot_auth(
    w: &RawWebBotAuth,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> WebBotAuthSettings {
    let mut agents = Vec::new();
    for (i, a) in w.agents.iter().enumerate() {
        let path = format!("web_bot_auth.agents[{i}]");
        let origin = agent_origin(a.agent.get_ref());
        if !origin.starts_with("https://") || origin.len() <= "https://".len() {
            c.at(
                sp(&a.agent),
                format!("{path}.agent"),
                format!("`{}` is not an https:// origin", a.agent.get_ref()),
            );
            continue;
        }
        let category = match &a.category {
            None => palisade_intel::Category::AiAssistant,
            Some(name) => match palisade_intel::Category::parse(name.get_ref()) {
                Some(cat) => cat,
                None => {
                    let known: Vec<&str> = palisade_intel::Category::ALL
                        .iter()
                        .map(|c| c.name())
                        .collect();
                    c.at(
                        sp(name),
                        format!("{path}.category"),
                        format!(
                            "unknown category `{}`; known: {}",
                            name.get_ref(),
                            known.join(", ")
                        ),
                    );
                    continue;
                }
            },
        };
        let Some(keys_file) = &a.keys else {
            agents.push(SignedAgentSpec {
                name: Arc::from(a.name.get_ref().as_str()),
                origin,
                category,
                keys: Vec::new(),
                fetch: true,
            });
            continue;
        };
        let file = base.join(keys_file.get_ref());
        files.push(file.clone());
        let doc: serde_json::Value = match std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(d) => d,
            Err(e) => {
                c.at(
                    sp(keys_file),
                    format!("{path}.keys"),
                    format!("cannot read `{}` as JSON: {e}", file.display()),
                );
                continue;
            }
        };
        let mut keys = Vec::new();
        for jwk in doc
            .get("keys")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            match (
                palisade_keys::httpsig::PublicKey::from_jwk(jwk),
                palisade_keys::httpsig::jwk_thumbprint(jwk),
            ) {
                (Ok(palisade_keys::httpsig::PublicKey::Hmac(_)), _) => c.at(
                    sp(keys_file),
                    format!("{path}.keys"),
                    format!(
                        "`{}`: shared-secret keys are not allowed for Web Bot Auth",
                        file.display()
                    ),
                ),
                (Ok(_), Some(t)) => keys.push((t, jwk.clone())),
                (Err(e), _) => c.at(
                    sp(keys_file),
                    format!("{path}.keys"),
                    format!("`{}`: {e}", file.display()),
                ),
                (Ok(_), None) => c.at(
                    sp(keys_file),
                    format!("{path}.keys"),
                    format!("`{}`: a key without a thumbprint", file.display()),
                ),
            }
        }
        if keys.is_empty() {
            c.at(
                sp(keys_file),
                format!("{path}.keys"),
                format!(
                    "`{}` has no usable public key (`{{\"keys\": [...]}}`)",
                    file.display()
                ),
            );
            continue;
        }
        agents.push(SignedAgentSpec {
            name: Arc::from(a.name.get_ref().as_str()),
            origin,
            category,
            keys,
            fetch: false,
        });
    }
    let discovered_category = match &w.discovered_category {
        None => palisade_intel::Category::AiAssistant,
        Some(name) => palisade_intel::Category::parse(name.get_ref()).unwrap_or_else(|| {
            let known: Vec<&str> = palisade_intel::Category::ALL
                .iter()
                .map(|c| c.name())
                .collect();
            c.at(
                sp(name),
                "web_bot_auth.discovered_category",
                format!(
                    "unknown category `{}`; known: {}",
                    name.get_ref(),
                    known.join(", ")
                ),
            );
            palisade_intel::Category::AiAssistant
        }),
    };
    let directory_roots = w
        .directory_ca
        .as_ref()
        .map(|ca| {
            let file = base.join(ca.get_ref());
            files.push(file.clone());
            pem_bundle(&file).unwrap_or_else(|e| {
                c.at(sp(ca), "web_bot_auth.directory_ca", e);
                Vec::new()
            })
        })
        .unwrap_or_default();
    WebBotAuthSettings {
        invalid_weight: weight(&w.invalid_weight, 30, "web_bot_auth.invalid_weight", c),
        require_signature_agent: w.require_signature_agent.unwrap_or(false),
        agents,
        discover: w.discover.unwrap_or(false),
        discovered_category,
        require_signed_directory: w.require_signed_directory.unwrap_or(true),
        directory_roots,
        allow_private_directories: w.allow_private_directories.unwrap_or(false),
    }
}
