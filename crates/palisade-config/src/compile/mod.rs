//! Raw -> compiled, reporting every error at once.

mod behaviour;
mod bots;
mod challenge;
mod honeypots;
mod intel;
mod jwt;
mod keys;
mod limits;
mod lists;
mod log;
mod probes;
mod quotas;
mod routes;
mod rules;
mod scoring;
mod server;
mod store;
mod tests;
mod tls;

pub use challenge::{
    CHALLENGE_TEXTS, CaptchaProvider, CaptchaSettings, ChallengeBind, ChallengeSettings,
};
pub use tls::{
    AcmeChallenge, AcmeSettings, CertificateInfo, LETS_ENCRYPT, SignedAgentSpec, TlsSettings,
    TlsVersion, WebBotAuthSettings, agent_origin,
};
mod upstreams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use palisade_engine::model::principal::{AuthRequirement, Principal};
use palisade_engine::policy::bots::{BotAction, BotsPolicy};
use palisade_engine::policy::{AuthPolicy, HeadersPolicy, HoneypotSpec, IntelPolicy};
use palisade_engine::request::path::Ambiguities;
use palisade_engine::request::route::RouteMatch;
use palisade_engine::state::blocks::BlockEffect;
use palisade_engine::state::limiter::ceil_secs;
use palisade_engine::state::quota_ledger::{QuotaKey, QuotaSpec};
use palisade_engine::{
    Algorithm, IpSet, KeyPart, LimitAction, LimitSpec, ListsPolicy, Mode, Nanos, PathPattern,
    Policy, RouteSpec, RouteTable, ScoringPolicy, Unit,
};
use palisade_intel::ipinfo::{BUILTIN_ASN_CATEGORIES, IpIntel};
use palisade_intel::{BotCatalog, Category};
use palisade_keys::jwt::JwtVerifier;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::{Collector, ConfigErrors};
use crate::raw::*;

/// HTTP protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// A compiled upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Name.
    pub name: String,
    /// Base URL (scheme and authority; a path prefix is prepended to request paths).
    pub url: Uri,
    /// Protocol.
    pub protocol: UpstreamProtocol,
    /// Idle pooled connections kept.
    pub max_idle_connections: usize,
}

/// Fail-open or fail-closed when the engine itself fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEngineError {
    /// Forward the request.
    Allow,
    /// Refuse with 503.
    Deny,
}

/// Compiled `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Trusted proxies.
    pub trusted_proxies: IpSet,
    /// Headers with the client's JA4, HTTP/2 fingerprint and JA3 set by a trusted front.
    pub fingerprint_headers: (Option<HeaderName>, Option<HeaderName>, Option<HeaderName>),
    /// Whether fingerprints are forwarded to the upstream (`[fingerprints] forward`).
    pub forward_fingerprints: bool,
    /// Admin token from the config.
    pub admin_token: Option<String>,
    /// Engine failure policy.
    pub on_engine_error: OnEngineError,
    /// Upstream connect timeout.
    pub connect_timeout: Nanos,
    /// Request head read timeout.
    pub header_read_timeout: Nanos,
    /// Idle connection timeout.
    pub idle_timeout: Nanos,
    /// Upstream response timeout.
    pub upstream_timeout: Nanos,
    /// Drain timeout on shutdown.
    pub drain_timeout: Nanos,
    /// Most request headers.
    pub max_header_count: usize,
    /// Most bytes of request head.
    pub max_header_bytes: usize,
    /// Most bytes of request body.
    pub max_body_bytes: u64,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Most client connections per address (IPv6 /64).
    pub max_connections_per_ip: usize,
    /// Time a new connection has to send its first byte.
    pub first_byte_timeout: Nanos,
    /// The proxy listener's backlog.
    pub listen_backlog: u32,
    /// Slowest response reading, bytes per second (0: off).
    pub min_send_rate: u64,
    /// Slowest request body sending, bytes per second (0: off).
    pub min_receive_rate: u64,
    /// Time before the minimum rates apply.
    pub min_rate_grace: Nanos,
    /// Whether paths match with ASCII case significant.
    pub case_sensitive_paths: bool,
}

/// Where decisions are logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionLogTarget {
    /// Standard output.
    Stdout,
    /// Nowhere.
    Off,
    /// Appended to a file.
    File(PathBuf),
}

/// Compiled `[log]`.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Target.
    pub decisions: DecisionLogTarget,
    /// Share of allows logged.
    pub sample_allow: f64,
    /// Decisions kept for the admin API.
    pub recent: usize,
}

/// A compiled `[[tests]]` case.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// Name.
    pub name: String,
    /// Method.
    pub method: Method,
    /// Path without query.
    pub path: String,
    /// Query.
    pub query: Option<String>,
    /// Client IP.
    pub ip: std::net::IpAddr,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Times sent.
    pub repeat: u64,
    /// Nanoseconds between sends (0: all at one instant).
    pub every: u64,
    /// Expected logged action.
    pub expect_action: String,
    /// Expected rule.
    pub expect_rule: Option<String>,
    /// A pretend authenticated key.
    pub principal: Option<Arc<Principal>>,
    /// Line in the file.
    pub line: Option<usize>,
}

/// Where shared state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// In-process tables and the embedded on-disk store.
    Embedded,
    /// Redis (or Valkey): one server, or a cluster.
    Redis {
        /// `redis://` / `rediss://` URLs: one for a server, the nodes of a cluster.
        urls: Vec<String>,
        /// Whether `urls` are Redis Cluster nodes.
        cluster: bool,
    },
}

/// What a request gets when the shared store fails or is too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Enforce with this instance's own tables.
    Local,
    /// Admit (the shared limits do not apply).
    Allow,
    /// Refuse with 503.
    Deny,
}

/// How limits consult the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreSync {
    /// Every decision consults the store.
    Strict,
    /// Decisions are local; counts are reconciled with the store every interval.
    Batched,
}

/// Compiled `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The backend.
    pub backend: StoreBackend,
    /// Longest a request waits on the store.
    pub timeout: std::time::Duration,
    /// Fallback.
    pub on_error: OnStoreError,
    /// Strict or batched.
    pub sync: StoreSync,
    /// Batched mode's reconciliation interval.
    pub batch_interval: std::time::Duration,
    /// Key prefix.
    pub prefix: String,
}

/// Compiled `[keys]`.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// Headers a key is read from, in order.
    pub headers: Vec<HeaderName>,
    /// Most active keys per account.
    pub max_keys_per_account: u64,
    /// Validity of a rotated key after rotation, in seconds.
    pub rotation_grace_secs: u64,
    /// Allowed distance of a signed request's timestamp from now, in seconds.
    pub signature_window_secs: u64,
    /// Most nonces remembered.
    pub max_nonces: usize,
    /// Whether a presented API key is forwarded to the upstream.
    pub forward: KeyForward,
}

/// What the upstream gets of a presented API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForward {
    /// Removed; the verified key's id and account come as headers.
    Strip,
    /// Forwarded as sent.
    Keep,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            headers: vec![
                http::header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
            ],
            max_keys_per_account: 10,
            rotation_grace_secs: 86_400,
            signature_window_secs: 300,
            max_nonces: 100_000,
            forward: KeyForward::Strip,
        }
    }
}

/// Everything a config compiles into.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Server settings.
    pub server: ServerSettings,
    /// Upstreams (possibly empty: the gateway then serves its sample API).
    pub upstreams: Vec<UpstreamSettings>,
    /// The policy for the engine.
    pub policy: Policy,
    /// Decision log settings.
    pub log: LogSettings,
    /// `[[tests]]`.
    pub tests: Vec<TestCase>,
    /// `[keys]`.
    pub keys: KeySettings,
    /// `[jwt]`, when configured.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Files the config depends on (for reload on change).
    pub files: Vec<PathBuf>,
    /// The config as a JSON value, secrets redacted, for the admin API.
    pub redacted: serde_json::Value,
    /// `[store]`.
    pub store: StoreSettings,
    /// Published bot ranges the gateway fetches itself (`[bots.ranges] NAME = { ... }`).
    pub bot_ranges: Vec<RangeFetch>,
    /// `[tls]`, when configured.
    pub tls: Option<TlsSettings>,
    /// `[web_bot_auth]`, when configured.
    pub web_bot_auth: Option<WebBotAuthSettings>,
    /// `[challenge]` (defaults when absent: the `challenge` action always has a form).
    pub challenge: ChallengeSettings,
    /// A digest of the config text: clearances name the policy that issued them.
    pub digest: u64,
    /// The decision endpoint's path (`[decision]`), when configured.
    pub decision_path: Option<String>,
    /// `[decision.feedback]`, when configured.
    pub feedback: Option<FeedbackSettings>,
    /// `[decision] ext_authz`: Envoy's external authorization over gRPC, when configured.
    pub ext_authz: Option<SocketAddr>,
    /// `[decision] spoe`: the HAProxy SPOE agent's address, when configured.
    pub spoe: Option<SocketAddr>,
    /// `[openapi]`: the API's contract, when configured.
    pub openapi: Option<Arc<crate::openapi::OpenApi>>,
}

/// `[decision.feedback]`: the front's access log lines coming back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackSettings {
    /// UDP address listened on.
    pub udp: Option<SocketAddr>,
    /// Unix datagram socket listened on.
    pub unix: Option<PathBuf>,
    /// How long an allowed decision waits for its line.
    pub wait: std::time::Duration,
    /// Decisions waiting at once.
    pub max_pending: usize,
}

/// A built-in bot's published ranges, fetched by the gateway on a schedule; the last good copy
/// is kept in `data_dir/bot-ranges/NAME.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeFetch {
    /// The built-in bot's name.
    pub bot: String,
    /// Where the ranges document is.
    pub url: http::Uri,
    /// Nanoseconds between fetches.
    pub refresh: u64,
}

/// Command-line overrides applied after every (re)load.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--upstream`: replaces the first upstream's URL (or adds one).
    pub upstream: Option<Uri>,
}

impl Overrides {
    /// Applies the overrides.
    pub fn apply(&self, c: &mut Compiled) {
        if let Some(a) = self.listen {
            c.server.listen = a;
        }
        if let Some(a) = self.admin_listen {
            c.server.admin_listen = a;
        }
        if let Some(d) = &self.data_dir {
            c.server.data_dir = d.clone();
        }
        if let Some(u) = &self.upstream {
            match c.upstreams.first_mut() {
                Some(first) => first.url = u.clone(),
                None => c.upstreams.push(UpstreamSettings {
                    name: "default".to_owned(),
                    url: u.clone(),
                    protocol: UpstreamProtocol::Http1,
                    max_idle_connections: 64,
                }),
            }
        }
    }
}

/// Reads and compiles a config file. Relative `file:` list entries resolve against its folder.
pub fn load_file(path: &Path) -> Result<Compiled, ConfigErrors> {
    let origin = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        origin: origin.clone(),
        errors: vec![crate::ConfigError {
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = compile_str(&src, &origin, &base)?;
    c.files.insert(0, path.to_path_buf());
    Ok(c)
}

const SECTIONS: [&str; 25] = [
    "decision",
    "probes",
    "openapi",
    "challenge",
    "web_bot_auth",
    "fingerprints",
    "tls",
    "store",
    "behaviour",
    "rules",
    "intel",
    "honeypots",
    "bots",
    "headers",
    "server",
    "upstreams",
    "routes",
    "limits",
    "quotas",
    "keys",
    "jwt",
    "lists",
    "scoring",
    "log",
    "tests",
];

/// Compiles config text. `origin` names it in errors; `base` resolves relative list files.
pub fn compile_str(src: &str, origin: &str, base: &Path) -> Result<Compiled, ConfigErrors> {
    let mut c = Collector::new(src);
    let (raw, syntax_ok) = parse_sections(src, &mut c);
    // Values are checked even when some tables failed to parse, so one run shows every error;
    // after a syntax error the structure is too uncertain to say more.
    let compiled = if syntax_ok {
        compile_raw(raw, base, &mut c)
    } else {
        None
    };
    match compiled {
        Some(mut compiled) if c.errors.is_empty() => {
            // FNV-1a over the text: the same config gives the same digest on every replica.
            compiled.digest =
                palisade_intel::hfp::fnv1a(palisade_intel::hfp::FNV_OFFSET, src.bytes());
            Ok(compiled)
        }
        _ => Err(ConfigErrors {
            origin: origin.to_owned(),
            errors: c.finish(),
        }),
    }
}

/// Stage one: TOML syntax, then each section (and each array element) through serde.
fn parse_sections(src: &str, c: &mut Collector<'_>) -> (RawConfig, bool) {
    let (root, syntax) = DeTable::parse_recoverable(src);
    let syntax_ok = syntax.is_empty();
    for e in syntax {
        c.at(e.span(), "", e.message().to_owned());
    }
    let mut raw = RawConfig::default();
    for (key, value) in root.into_inner() {
        let name: &str = key.get_ref();
        let span = Some(key.span());
        match name {
            "server" => one(value, name, c, &mut raw.server),
            "lists" => one(value, name, c, &mut raw.lists),
            "scoring" => one(value, name, c, &mut raw.scoring),
            "log" => one(value, name, c, &mut raw.log),
            "upstreams" => many(value, name, c, &mut raw.upstreams, &mut raw.broken_names),
            "routes" => many(value, name, c, &mut raw.routes, &mut raw.broken_names),
            "limits" => many(value, name, c, &mut raw.limits, &mut raw.broken_names),
            "tests" => many(value, name, c, &mut raw.tests, &mut raw.broken_names),
            "quotas" => many(value, name, c, &mut raw.quotas, &mut raw.broken_names),
            "keys" => one(value, name, c, &mut raw.keys),
            "jwt" => {
                let mut j = RawJwt::default();
                one(value, name, c, &mut j);
                raw.jwt = Some(j);
            }
            "bots" => {
                let mut b = RawBots::default();
                one(value, name, c, &mut b);
                raw.bots = Some(b);
            }
            "headers" => {
                let mut h = RawHeaders::default();
                one(value, name, c, &mut h);
                raw.headers = Some(h);
            }
            "intel" => {
                let mut i = RawIntel::default();
                one(value, name, c, &mut i);
                raw.intel = Some(i);
            }
            "honeypots" => many(value, name, c, &mut raw.honeypots, &mut raw.broken_names),
            "behaviour" => {
                let mut b = RawBehaviour::default();
                one(value, name, c, &mut b);
                raw.behaviour = Some(b);
            }
            "rules" => many(value, name, c, &mut raw.rules, &mut raw.broken_names),
            "store" => one(value, name, c, &mut raw.store),
            "decision" => {
                let mut w = RawDecision::default();
                one(value, name, c, &mut w);
                raw.decision = Some(w);
            }
            "probes" => {
                let mut p = RawProbes::default();
                one(value, name, c, &mut p);
                raw.probes = Some(p);
            }
            "openapi" => {
                let at = value.span();
                match de::<RawOpenApi>(value) {
                    Ok(o) => raw.openapi = Some(o),
                    Err(e) => c.at(e.span().or(Some(at)), "[openapi]", e.message().to_owned()),
                }
            }
            "challenge" => {
                let mut w = RawChallenge::default();
                one(value, name, c, &mut w);
                raw.challenge = Some(w);
            }
            "web_bot_auth" => {
                let mut w = RawWebBotAuth::default();
                one(value, name, c, &mut w);
                raw.web_bot_auth = Some(w);
            }
            "fingerprints" => {
                let mut f = RawFingerprints::default();
                one(value, name, c, &mut f);
                raw.fingerprints = Some(f);
            }
            "tls" => {
                let mut t = RawTls::default();
                one(value, name, c, &mut t);
                raw.tls = Some(t);
            }
            other => c.at(
                span,
                other,
                format!(
                    "unknown section `{other}`; expected one of: {}",
                    SECTIONS.join(", ")
                ),
            ),
        }
    }
    (raw, syntax_ok)
}

fn de<T: DeserializeOwned>(value: Spanned<DeValue<'_>>) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(value))
}

fn one<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    name: &str,
    c: &mut Collector<'_>,
    out: &mut T,
) {
    let span = value.span();
    match de::<T>(value) {
        Ok(v) => *out = v,
        Err(e) => c.at(
            e.span().or(Some(span)),
            format!("[{name}]"),
            e.message().to_owned(),
        ),
    }
}

fn many<T: DeserializeOwned + Indexed>(
    value: Spanned<DeValue<'_>>,
    name: &str,
    c: &mut Collector<'_>,
    out: &mut Vec<T>,
    broken: &mut Vec<String>,
) {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                let item_span = item.span();
                let item_name = item
                    .get_ref()
                    .as_table()
                    .and_then(|t| t.get("name"))
                    .and_then(|n| n.get_ref().as_str())
                    .map(str::to_owned);
                match de::<T>(item) {
                    Ok(mut v) => {
                        v.set_index(i);
                        out.push(v);
                    }
                    Err(e) => {
                        broken.extend(item_name);
                        c.at(
                            e.span().or(Some(item_span)),
                            format!("{name}[{i}]"),
                            e.message().to_owned(),
                        );
                    }
                }
            }
        }
        _ => c.at(
            Some(span),
            name,
            format!("`{name}` must be an array of tables: write [[{name}]]"),
        ),
    }
}

fn sp<T>(s: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    Some(s.span())
}

/// Parses an optional spanned string with `f`, or returns `default`.
fn opt<T>(
    v: &Option<Spanned<String>>,
    default: T,
    path: &str,
    c: &mut Collector<'_>,
    f: impl Fn(&str) -> Result<T, String>,
) -> T {
    match v {
        Some(s) => match f(s.get_ref()) {
            Ok(x) => x,
            Err(msg) => {
                c.at(sp(s), path, msg);
                default
            }
        },
        None => default,
    }
}

fn choice<T: Copy>(
    v: &Option<Spanned<String>>,
    options: &[(&str, T)],
    default: T,
    path: &str,
    c: &mut Collector<'_>,
) -> T {
    opt(v, default, path, c, |s| {
        options
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                format!("`{s}` is not one of: {}", names.join(", "))
            })
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a socket address such as 127.0.0.1:8080 or [::1]:8080"))
}

/// Parses list entries: inline CIDRs/addresses and `file:` lists.
fn parse_ip_entries(
    entries: &[Spanned<String>],
    path: &str,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> IpSet {
    let mut nets = Vec::new();
    for e in entries {
        let s = e.get_ref().trim();
        if let Some(file) = s.strip_prefix("file:") {
            let p = base.join(file);
            files.push(p.clone());
            match std::fs::read_to_string(&p) {
                Ok(text) => {
                    for (n, line) in text.lines().enumerate() {
                        let line = line.split(['#', ';']).next().unwrap_or("").trim();
                        if line.is_empty() {
                            continue;
                        }
                        match parse_net(line) {
                            Ok(net) => nets.push(net),
                            Err(msg) => {
                                c.at(sp(e), path, format!("{}:{}: {msg}", p.display(), n + 1))
                            }
                        }
                    }
                }
                Err(err) => c.at(
                    sp(e),
                    path,
                    format!("cannot read list file {}: {err}", p.display()),
                ),
            }
        } else {
            match parse_net(s) {
                Ok(net) => nets.push(net),
                Err(msg) => c.at(sp(e), path, msg),
            }
        }
    }
    IpSet::new(nets)
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))
}

fn methods(list: &[Spanned<String>], path: &str, c: &mut Collector<'_>) -> Vec<Method> {
    let mut out = Vec::new();
    for m in list {
        let s = m.get_ref().to_ascii_uppercase();
        match Method::from_bytes(s.as_bytes()) {
            Ok(meth) if s.bytes().all(|b| b.is_ascii_uppercase()) => out.push(meth),
            _ => c.at(
                sp(m),
                path,
                format!("`{}` is not an HTTP method", m.get_ref()),
            ),
        }
    }
    out
}

/// Stage two: values and cross-references.
/// Every section, in dependency order; every error is collected, none stops the others.
fn compile_raw(mut raw: RawConfig, base: &Path, c: &mut Collector<'_>) -> Option<Compiled> {
    let mut files = Vec::new();
    // The API's spec first: its operations are routes too.
    let openapi = raw
        .openapi
        .as_ref()
        .and_then(|o| openapi(o, base, &mut files, c));
    if let Some(api) = &openapi {
        spec_routes(&mut raw, api, c);
    }
    let mut bot_ranges = Vec::new();
    let server::ServerPart {
        settings: server,
        mode,
        max_tracked,
        max_blocks,
    } = server::server(&raw, base, c, &mut files);
    let case_sensitive = server.case_sensitive_paths;
    let upstreams = upstreams::upstreams(&raw, c);
    let (matches, route_specs) = routes::routes(&raw, &upstreams, case_sensitive, c);
    let limits = limits::limits(&raw, &route_specs, max_tracked, c);
    let quotas = quotas::quotas(&raw, &route_specs, c);
    let keys = keys::compile_keys(&raw.keys, c);
    let auth = keys::auth_policy(&raw, max_tracked, c);
    let bots = raw
        .bots
        .as_ref()
        .and_then(|b| bots::compile_bots(b, base, c, &mut files, &mut bot_ranges));
    let headers = raw.headers.as_ref().map(|h| HeadersPolicy {
        weight: weight(&h.weight, 15, "headers.weight", c),
        assume_https: h.assume_https.unwrap_or(true),
    });
    let honeypots = honeypots::honeypots(&raw, case_sensitive, c);
    let intel = raw
        .intel
        .as_ref()
        .map(|i| intel::compile_intel(i, base, c, &mut files));
    let jwt = raw
        .jwt
        .as_ref()
        .and_then(|j| jwt::compile_jwt(j, base, c, &mut files));
    let lists = lists::lists(&raw, base, case_sensitive, c, &mut files);
    let scoring = scoring::scoring(&raw, c);
    let rules = rules::compile_rules(&raw.rules, c);
    let behaviour = raw
        .behaviour
        .as_ref()
        .filter(|b| b.enabled != Some(false))
        .map(|b| {
            let mut p = behaviour::compile_behaviour(b, &route_specs, c);
            // Cluster mode: behaviour aggregates are merged across gateways.
            p.shared = raw
                .store
                .backend
                .as_ref()
                .is_some_and(|b| b.get_ref() == "redis");
            p
        });
    let log = log::log(&raw, base, c);
    let tests = tests::tests(&raw, c);
    let store = store::compile_store(&raw.store, c);
    let tls = raw
        .tls
        .as_ref()
        .and_then(|t| tls::compile_tls(t, base, c, &mut files));
    let fingerprints = raw
        .fingerprints
        .as_ref()
        .map(|f| tls::compile_fingerprints(f, base, c, &mut files));
    let web_bot_auth = raw
        .web_bot_auth
        .as_ref()
        .map(|w| tls::compile_web_bot_auth(w, base, c, &mut files));
    let challenge = raw
        .challenge
        .as_ref()
        .map(|r| challenge::compile_challenge(r, base, c, &mut files))
        .unwrap_or_default();
    let mut server = server;
    server.forward_fingerprints = raw
        .fingerprints
        .as_ref()
        .is_some_and(|f| f.forward == Some(true));
    // Secret-bearing fields serialise redacted by their type (`crate::secret`).
    let redacted = serde_json::to_value(&raw).unwrap_or(serde_json::Value::Null);
    let policy = Policy {
        mode,
        routes: RouteTable::new(matches),
        route_specs,
        limits,
        lists,
        scoring,
        quotas,
        auth,
        bots,
        headers,
        fingerprints,
        web_bot_auth: web_bot_auth.as_ref().map(|w| w.invalid_weight),
        honeypots,
        max_blocks,
        intel,
        behaviour,
        rules,
        probes: probes::compile_probes(&raw, c),
        contract_weight: raw
            .openapi
            .as_ref()
            .map_or(0, |o| weight(&o.weight, 30, "openapi.weight", c)),
    };
    Some(Compiled {
        server,
        upstreams,
        policy,
        log,
        tests,
        keys,
        jwt,
        files,
        redacted,
        store,
        bot_ranges,
        tls,
        web_bot_auth,
        challenge,
        digest: 0,
        decision_path: raw.decision.as_ref().map(|d| {
            let p = d
                .path
                .as_ref()
                .map_or("/_palisade/authz", |p| p.get_ref().as_str());
            if !p.starts_with('/') || p.len() > 256 || p.contains(['?', '#', ' ']) {
                c.at(
                    d.path.as_ref().and_then(sp),
                    "decision.path",
                    format!("`{p}` is not a path such as /_palisade/authz"),
                );
            }
            p.to_owned()
        }),
        ext_authz: raw
            .decision
            .as_ref()
            .and_then(|d| d.ext_authz.as_ref())
            .and_then(|a| address(a, "decision.ext_authz", "127.0.0.1:9191", c)),
        openapi,
        spoe: raw
            .decision
            .as_ref()
            .and_then(|d| d.spoe.as_ref())
            .and_then(|a| address(a, "decision.spoe", "127.0.0.1:12345", c)),
        feedback: raw
            .decision
            .as_ref()
            .and_then(|d| d.feedback.as_ref())
            .map(|f| feedback(f, c)),
    })
}

/// Routes from the spec's operations: each operation with an `operationId` that names no
/// `[[routes]]` entry becomes a route of that name (its method, the base path and its template;
/// after the config's own routes, which match first), with `x-palisade-cost`, `-scopes` and
/// `-auth` as its settings; `x-palisade-limits` adds it to those limits' `routes`. A
/// `[[routes]]` entry named like an operation refines it: the config's definition wins.
fn spec_routes(raw: &mut RawConfig, api: &crate::openapi::OpenApi, c: &mut Collector<'_>) {
    let span = raw
        .openapi
        .as_ref()
        .map(|o| o.spec.span())
        .unwrap_or_default();
    let sp = |v: String| toml::Spanned::new(span.clone(), v);
    for p in &api.policies {
        let configured = raw.routes.iter().any(|r| r.name.get_ref() == &p.id);
        if !configured && (!valid_name(&p.id) || p.id == "default") {
            // Not usable as a route name: the operation is still validated, only not a route.
            if p.cost.is_some() || p.auth.is_some() || !p.scopes.is_empty() || !p.limits.is_empty()
            {
                c.at(
                    Some(span.clone()),
                    "openapi.spec",
                    format!(
                        "operation `{}` has x-palisade-* settings but its operationId is not a route name (1-64 letters, digits, '-', '_' or '.')",
                        p.id
                    ),
                );
            }
            continue;
        }
        for l in &p.limits {
            match raw.limits.iter_mut().find(|x| x.name.get_ref() == l) {
                Some(limit) => {
                    if let Some(routes) = &mut limit.routes
                        && !routes.iter().any(|r| r.get_ref() == &p.id)
                    {
                        routes.push(sp(p.id.clone()));
                    }
                }
                None => c.at(
                    Some(span.clone()),
                    "openapi.spec",
                    format!(
                        "operation `{}`: x-palisade-limits names no [[limits]] entry `{l}`",
                        p.id
                    ),
                ),
            }
        }
        if configured {
            continue;
        }
        let index = raw.routes.len();
        raw.routes.push(RawRoute {
            name: sp(p.id.clone()),
            client: None,
            challenge: None,
            captcha_min_score: None,
            match_: RawMatch {
                path: sp(p.path.clone()),
                methods: vec![sp(p.method.to_string())],
            },
            upstream: None,
            auth: p.auth.clone().map(sp),
            scopes: p.scopes.iter().cloned().map(sp).collect(),
            spend_usd: None,
            spend_header: None,
            spend_reserve_usd: None,
            cost: p.cost.map(|n| toml::Spanned::new(span.clone(), n)),
            cost_header: None,
            allow_in_path: Vec::new(),
            index,
        });
    }
}

/// `[openapi]`: the spec compiled, every problem in it reported with its location.
fn openapi(
    o: &RawOpenApi,
    base: &Path,
    files: &mut Vec<PathBuf>,
    c: &mut Collector,
) -> Option<Arc<crate::openapi::OpenApi>> {
    let mode = match o.mode.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("enforce") => crate::openapi::OpenApiMode::Enforce,
        Some("shadow") => crate::openapi::OpenApiMode::Shadow,
        Some("signal") => crate::openapi::OpenApiMode::Signal,
        Some(other) => {
            c.at(
                o.mode.as_ref().and_then(sp),
                "openapi.mode",
                format!("`{other}` is not \"enforce\", \"shadow\" or \"signal\""),
            );
            crate::openapi::OpenApiMode::Enforce
        }
    };
    let max_body = match &o.max_body {
        None => 1 << 20,
        Some(m) => match crate::units::parse_size(m.get_ref()) {
            Ok(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => {
                c.at(
                    sp(m),
                    "openapi.max_body",
                    format!("`{}` is not a size such as 1MiB", m.get_ref()),
                );
                1 << 20
            }
        },
    };
    let path = base.join(o.spec.get_ref());
    files.push(path.clone());
    let base_path = o.base_path.as_ref().map(|b| b.get_ref().as_str());
    match crate::openapi::load(&path, base_path, mode, max_body) {
        Ok(api) => Some(Arc::new(api)),
        Err(errors) => {
            for e in errors {
                c.at(
                    sp(&o.spec),
                    "openapi.spec",
                    format!("{}: {e}", path.display()),
                );
            }
            None
        }
    }
}

/// A listening address, reported when it is not one.
fn address(
    a: &Spanned<String>,
    path: &str,
    example: &str,
    c: &mut Collector,
) -> Option<SocketAddr> {
    match a.get_ref().parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            c.at(
                sp(a),
                path,
                format!("`{}` is not an address such as {example}", a.get_ref()),
            );
            None
        }
    }
}

/// `[decision.feedback]`, reporting what is wrong with it.
fn feedback(f: &RawFeedback, c: &mut Collector) -> FeedbackSettings {
    let udp = f
        .udp
        .as_ref()
        .and_then(|a| address(a, "decision.feedback.udp", "127.0.0.1:5514", c));
    let unix = f.unix.as_ref().and_then(|p| {
        let path = PathBuf::from(p.get_ref());
        if path.as_os_str().is_empty() || path.as_os_str().len() > 100 {
            c.at(
                sp(p),
                "decision.feedback.unix",
                "a unix socket path is 1 to 100 bytes long",
            );
            return None;
        }
        Some(path)
    });
    if f.udp.is_none() && f.unix.is_none() {
        c.at(
            None,
            "decision.feedback",
            "names where the front's log lines arrive: `udp = \"127.0.0.1:5514\"` and/or `unix = \"/run/palisade/feedback.sock\"`",
        );
    }
    let wait = match &f.wait {
        None => std::time::Duration::from_secs(120),
        Some(w) => match palisade_engine::units::parse_duration(w.get_ref()) {
            Ok(n)
                if (palisade_engine::clock::SECOND..=3_600 * palisade_engine::clock::SECOND)
                    .contains(&n) =>
            {
                std::time::Duration::from_nanos(n)
            }
            _ => {
                c.at(
                    sp(w),
                    "decision.feedback.wait",
                    format!("`{}` is not a duration from 1s to 1h", w.get_ref()),
                );
                std::time::Duration::from_secs(120)
            }
        },
    };
    let max_pending = match &f.max_pending {
        None => 100_000,
        Some(n) if (1..=10_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            c.at(
                sp(n),
                "decision.feedback.max_pending",
                "is from 1 to 10000000",
            );
            100_000
        }
    };
    FeedbackSettings {
        udp,
        unix,
        wait,
        max_pending,
    }
}

/// A path pattern that matches without regard to ASCII case unless the config says otherwise.
fn fold_case(p: PathPattern, case_sensitive: bool) -> PathPattern {
    if case_sensitive { p } else { p.fold_case() }
}

/// A risk-score weight from 0 to 100, or `default` (reporting one out of range).
pub(super) fn weight(
    v: &Option<Spanned<u64>>,
    default: u8,
    path: &str,
    c: &mut Collector<'_>,
) -> u8 {
    match v {
        Some(w) if *w.get_ref() > 100 => {
            c.at(sp(w), path, "weight must be between 0 and 100");
            default
        }
        Some(w) => *w.get_ref() as u8,
        None => default,
    }
}

/// The ids of the named routes, reporting names no route has.
pub(super) fn route_ids(
    names: &[Spanned<String>],
    specs: &[RouteSpec],
    path: &str,
    c: &mut Collector<'_>,
) -> Vec<usize> {
    names
        .iter()
        .filter_map(|r| {
            let found = specs.iter().position(|s| &*s.name == r.get_ref().as_str());
            if found.is_none() {
                let known: Vec<&str> = specs.iter().map(|s| &*s.name).collect();
                c.at(
                    sp(r),
                    path,
                    format!(
                        "no route named `{}` (known: {})",
                        r.get_ref(),
                        known.join(", ")
                    ),
                );
            }
            found
        })
        .collect()
}

pub(super) fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'*'))
}

/// Dollars to micro-dollars, for amounts from 0 to a million.
pub(super) fn usd_micros(v: f64) -> Option<u64> {
    (v.is_finite() && (0.0..=1_000_000.0).contains(&v))
        .then(|| (v * palisade_engine::state::quota_ledger::MICROS_PER_USD).round() as u64)
}
