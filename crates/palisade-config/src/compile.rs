//! Raw -> compiled, reporting every error at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use palisade_engine::detect::bots::{BotAction, BotsPolicy};
use palisade_engine::model::principal::{AuthRequirement, Principal};
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
use palisade_keys::jwt::{self, JwtVerifier};
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::{Collector, ConfigErrors};
use crate::raw::*;
use crate::secret::SecretUrl;
use crate::units::{parse_duration, parse_rate, parse_size};

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

const SECTIONS: [&str; 18] = [
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
        Some(compiled) if c.errors.is_empty() => Ok(compiled),
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
fn compile_raw(raw: RawConfig, base: &Path, c: &mut Collector<'_>) -> Option<Compiled> {
    let mut files = Vec::new();
    let s = &raw.server;

    // [server]
    let dur = |v: &Option<Spanned<String>>, d: &str, name: &str, c: &mut Collector<'_>| {
        let d = parse_duration(d).unwrap_or(0);
        opt(v, d, &format!("server.{name}"), c, parse_duration)
    };
    let listen = opt(
        &s.listen,
        SocketAddr::from(([127, 0, 0, 1], 8080)),
        "server.listen",
        c,
        parse_addr,
    );
    let admin_listen = opt(
        &s.admin_listen,
        SocketAddr::from(([127, 0, 0, 1], 9901)),
        "server.admin_listen",
        c,
        parse_addr,
    );
    let mode = choice(
        &s.mode,
        &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        Mode::Enforce,
        "server.mode",
        c,
    );
    let on_engine_error = choice(
        &s.on_engine_error,
        &[
            ("allow", OnEngineError::Allow),
            ("deny", OnEngineError::Deny),
        ],
        OnEngineError::Allow,
        "server.on_engine_error",
        c,
    );
    let trusted_proxies = parse_ip_entries(
        &s.trusted_proxies,
        "server.trusted_proxies",
        base,
        c,
        &mut files,
    );
    let connect_timeout = dur(&s.connect_timeout, "5s", "connect_timeout", c);
    let header_read_timeout = dur(&s.header_read_timeout, "10s", "header_read_timeout", c);
    let idle_timeout = dur(&s.idle_timeout, "60s", "idle_timeout", c);
    let first_byte_timeout = dur(&s.first_byte_timeout, "10s", "first_byte_timeout", c);
    let min_send_rate = opt(
        &s.min_send_rate,
        1024,
        "server.min_send_rate",
        c,
        crate::units::parse_byte_rate,
    );
    let min_receive_rate = opt(
        &s.min_receive_rate,
        256,
        "server.min_receive_rate",
        c,
        crate::units::parse_byte_rate,
    );
    let min_rate_grace = dur(&s.min_rate_grace, "10s", "min_rate_grace", c);
    let upstream_timeout = dur(&s.upstream_timeout, "30s", "upstream_timeout", c);
    let drain_timeout = dur(&s.drain_timeout, "30s", "drain_timeout", c);
    for (v, name, span) in [
        (connect_timeout, "connect_timeout", &s.connect_timeout),
        (
            header_read_timeout,
            "header_read_timeout",
            &s.header_read_timeout,
        ),
        (idle_timeout, "idle_timeout", &s.idle_timeout),
        (
            first_byte_timeout,
            "first_byte_timeout",
            &s.first_byte_timeout,
        ),
        (upstream_timeout, "upstream_timeout", &s.upstream_timeout),
    ] {
        if v == 0 {
            c.at(
                span.as_ref().and_then(sp),
                format!("server.{name}"),
                "a timeout must be longer than zero",
            );
        }
    }
    let max_header_count = match &s.max_header_count {
        Some(v) if !(1..=10_000).contains(v.get_ref()) => {
            c.at(
                sp(v),
                "server.max_header_count",
                "must be between 1 and 10000",
            );
            100
        }
        Some(v) => *v.get_ref() as usize,
        None => 100,
    };
    let max_header_bytes = opt(
        &s.max_header_bytes,
        16 << 10,
        "server.max_header_bytes",
        c,
        parse_size,
    );
    if !(1024..=(1 << 20)).contains(&max_header_bytes) {
        c.at(
            s.max_header_bytes.as_ref().and_then(sp),
            "server.max_header_bytes",
            "must be between 1KiB and 1MiB",
        );
    }
    let max_body_bytes = opt(
        &s.max_body_bytes,
        10 << 20,
        "server.max_body_bytes",
        c,
        parse_size,
    );
    let max_connections = match &s.max_connections {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1_000_000 => {
            c.at(
                sp(v),
                "server.max_connections",
                "must be between 1 and 1000000",
            );
            10_000
        }
        Some(v) => *v.get_ref() as usize,
        None => 10_000,
    };
    let max_connections_per_ip = match &s.max_connections_per_ip {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1_000_000 => {
            c.at(
                sp(v),
                "server.max_connections_per_ip",
                "must be between 1 and 1000000",
            );
            256
        }
        Some(v) => *v.get_ref() as usize,
        None => 256,
    };
    let listen_backlog = match &s.listen_backlog {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 65_535 => {
            c.at(
                sp(v),
                "server.listen_backlog",
                "must be between 1 and 65535",
            );
            4096
        }
        Some(v) => *v.get_ref() as u32,
        None => 4096,
    };
    let max_tracked = match &s.max_tracked_keys {
        Some(v) if *v.get_ref() < 16 => {
            c.at(sp(v), "server.max_tracked_keys", "must be at least 16");
            100_000
        }
        Some(v) => *v.get_ref(),
        None => 100_000,
    };

    let case_sensitive_paths = s.case_sensitive_paths.unwrap_or(false);
    let fold = |p: PathPattern| {
        if case_sensitive_paths {
            p
        } else {
            p.fold_case()
        }
    };

    // [[upstreams]]
    let mut upstreams = Vec::new();
    for (i, u) in raw.upstreams.iter().enumerate() {
        let path = format!("upstreams[{}]", u.index);
        let name = u.name.get_ref();
        if !valid_name(name) {
            c.at(
                sp(&u.name),
                &path,
                format!("upstream name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        if raw
            .upstreams
            .iter()
            .take(i)
            .any(|o| o.name.get_ref() == name)
        {
            c.at(
                sp(&u.name),
                &path,
                format!("upstream `{name}` is defined twice"),
            );
        }
        let url = match u.url.expose().parse::<Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("http")
                    && uri.authority().is_some()
                    && uri.query().is_none() =>
            {
                uri
            }
            Ok(uri) if uri.scheme_str() == Some("https") => {
                c.at(
                    sp(u.url.spanned()),
                    format!("{path}.url"),
                    "https upstreams are not supported yet; use http:// on a private network",
                );
                uri
            }
            _ => {
                c.at(
                    sp(u.url.spanned()),
                    format!("{path}.url"),
                    format!("`{}` is not an http://host:port URL", u.url.redacted()),
                );
                Uri::default()
            }
        };
        let protocol = choice(
            &u.protocol,
            &[
                ("http1", UpstreamProtocol::Http1),
                ("h2c", UpstreamProtocol::H2c),
            ],
            UpstreamProtocol::Http1,
            &format!("{path}.protocol"),
            c,
        );
        upstreams.push(UpstreamSettings {
            name: name.clone(),
            url,
            protocol,
            max_idle_connections: u.max_idle_connections.unwrap_or(64),
        });
    }

    // [[routes]]
    let mut matches = Vec::new();
    let mut route_specs = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let path = format!("routes[{}]", r.index);
        let name = r.name.get_ref();
        if !valid_name(name) || name == "default" {
            c.at(sp(&r.name), &path, format!("route name `{name}` must be 1-64 letters, digits, '-', '_' or '.', and not `default`"));
        }
        if raw.routes.iter().take(i).any(|o| o.name.get_ref() == name) {
            c.at(
                sp(&r.name),
                &path,
                format!("route `{name}` is defined twice"),
            );
        }
        let pattern = match PathPattern::parse(r.match_.path.get_ref()) {
            Ok(p) => fold(p),
            Err(e) => {
                c.at(
                    sp(&r.match_.path),
                    format!("{path}.match.path"),
                    e.to_string(),
                );
                PathPattern::catch_all()
            }
        };
        let meths = methods(&r.match_.methods, &format!("{path}.match.methods"), c);
        let upstream = match &r.upstream {
            Some(u) => match upstreams.iter().position(|x| &x.name == u.get_ref()) {
                Some(idx) => idx,
                None if raw.broken_names.contains(u.get_ref()) => 0,
                None => {
                    let known: Vec<&str> = upstreams.iter().map(|x| x.name.as_str()).collect();
                    c.at(
                        sp(u),
                        format!("{path}.upstream"),
                        format!(
                            "no upstream named `{}` (known: {})",
                            u.get_ref(),
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    0
                }
            },
            None => 0,
        };
        let auth = choice(
            &r.auth,
            &[
                ("none", AuthRequirement::None),
                ("api_key", AuthRequirement::ApiKey),
                ("jwt", AuthRequirement::Jwt),
                ("any", AuthRequirement::Any),
            ],
            AuthRequirement::None,
            &format!("{path}.auth"),
            c,
        );
        if matches!(auth, AuthRequirement::Jwt) && raw.jwt.is_none() {
            c.at(
                r.auth.as_ref().and_then(sp),
                format!("{path}.auth"),
                "auth = \"jwt\" needs a [jwt] section with keys to verify tokens",
            );
        }
        let mut scopes: Vec<Arc<str>> = Vec::new();
        for sc in &r.scopes {
            if !valid_scope(sc.get_ref()) {
                c.at(
                    sp(sc),
                    format!("{path}.scopes"),
                    format!(
                        "scope `{}` must be 1-64 letters, digits, ':', '-', '_', '.' or '*'",
                        sc.get_ref()
                    ),
                );
            } else {
                scopes.push(Arc::from(sc.get_ref().as_str()));
            }
        }
        if !scopes.is_empty() && auth == AuthRequirement::None {
            c.at(
                r.scopes.first().and_then(sp),
                format!("{path}.scopes"),
                "scopes need an authenticated route: set auth = \"api_key\", \"jwt\" or \"any\"",
            );
        }
        let usd = |v: &Option<Spanned<f64>>, field: &str, c: &mut Collector<'_>| -> Option<u64> {
            let v = v.as_ref()?;
            match usd_micros(*v.get_ref()) {
                Some(m) => Some(m),
                None => {
                    c.at(
                        sp(v),
                        format!("{path}.{field}"),
                        "must be a dollar amount between 0 and 1000000",
                    );
                    None
                }
            }
        };
        let spend_micros = usd(&r.spend_usd, "spend_usd", c).unwrap_or(0);
        let spend_reserve_micros =
            usd(&r.spend_reserve_usd, "spend_reserve_usd", c).unwrap_or(spend_micros);
        let spend_header = r.spend_header.as_ref().and_then(|h| {
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    c.at(
                        sp(h),
                        format!("{path}.spend_header"),
                        format!("`{}` is not a header name", h.get_ref()),
                    );
                    None
                }
            }
        });
        let cost = match &r.cost {
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1_000_000 => {
                c.at(
                    sp(v),
                    format!("{path}.cost"),
                    "cost must be between 1 and 1000000",
                );
                1
            }
            Some(v) => *v.get_ref(),
            None => 1,
        };
        let cost_header = r.cost_header.as_ref().and_then(|h| {
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    c.at(
                        sp(h),
                        format!("{path}.cost_header"),
                        format!("`{}` is not a header name", h.get_ref()),
                    );
                    None
                }
            }
        });
        let mut allow_in_path = Ambiguities::NONE;
        for a in &r.allow_in_path {
            match Ambiguities::from_name(a.get_ref()) {
                Some(x) => allow_in_path = allow_in_path.union(x),
                None => c.at(
                    sp(a),
                    format!("{path}.allow_in_path"),
                    format!(
                        "`{}` is not one of {}",
                        a.get_ref(),
                        Ambiguities::NAMES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        matches.push(RouteMatch {
            path: pattern,
            methods: meths,
        });
        route_specs.push(RouteSpec {
            name: Arc::from(name.as_str()),
            upstream,
            cost,
            cost_header,
            auth,
            scopes,
            spend_micros,
            spend_reserve_micros,
            spend_header,
            allow_in_path,
        });
    }
    route_specs.push(RouteSpec::new("default", 0));

    // [[limits]]
    let mut limits = Vec::new();
    for (i, l) in raw.limits.iter().enumerate() {
        let path = format!("limits[{}]", l.index);
        let name = l.name.get_ref();
        if !valid_name(name) {
            c.at(
                sp(&l.name),
                &path,
                format!("limit name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        if raw.limits.iter().take(i).any(|o| o.name.get_ref() == name) {
            c.at(
                sp(&l.name),
                &path,
                format!("limit `{name}` is defined twice"),
            );
        }
        let mut key = Vec::new();
        for k in &l.key {
            match KeyPart::parse(k.get_ref()) {
                Ok(part) if key.contains(&part) => c.at(
                    sp(k),
                    format!("{path}.key"),
                    format!("`{}` appears twice in the key", k.get_ref()),
                ),
                Ok(part) => key.push(part),
                Err(e) => c.at(sp(k), format!("{path}.key"), e.to_string()),
            }
        }
        let routes = l
            .routes
            .as_ref()
            .map(|rs| route_ids(rs, &route_specs, &format!("{path}.routes"), c));
        let meths = methods(&l.methods, &format!("{path}.methods"), c);
        let rate = match parse_rate(l.rate.get_ref()) {
            Ok(r) => Some(r),
            Err(msg) => {
                c.at(sp(&l.rate), format!("{path}.rate"), msg);
                None
            }
        };
        let is_window = choice(
            &l.algorithm,
            &[("gcra", false), ("sliding_window", true)],
            false,
            &format!("{path}.algorithm"),
            c,
        );
        let action_name = l
            .action
            .as_ref()
            .map(|a| a.get_ref().as_str())
            .unwrap_or("limit");
        let max_delay = opt(
            &l.max_delay,
            1_000_000_000,
            &format!("{path}.max_delay"),
            c,
            parse_duration,
        );
        let max_queue = l
            .max_queue
            .as_ref()
            .map_or(1000, |q| *q.get_ref())
            .min(u64::from(u32::MAX)) as u32;
        let action = match action_name {
            "limit" => LimitAction::Limit,
            "shadow" => LimitAction::Shadow,
            "delay" => {
                if is_window {
                    c.at(l.action.as_ref().and_then(sp), format!("{path}.action"), "action = \"delay\" needs algorithm = \"gcra\" (a sliding window cannot reserve future capacity)");
                }
                LimitAction::Delay {
                    max_delay,
                    max_queue,
                }
            }
            other => {
                c.at(
                    l.action.as_ref().and_then(sp),
                    format!("{path}.action"),
                    format!("`{other}` is not one of: limit, delay, shadow"),
                );
                LimitAction::Limit
            }
        };
        if action_name != "delay" {
            for (present, field) in [
                (l.max_delay.is_some(), "max_delay"),
                (l.max_queue.is_some(), "max_queue"),
            ] {
                if present {
                    c.at(
                        sp(&l.name),
                        format!("{path}.{field}"),
                        format!("`{field}` only applies with action = \"delay\""),
                    );
                }
            }
        }
        let unit = choice(
            &l.unit,
            &[("requests", Unit::Requests), ("cost", Unit::Cost)],
            Unit::Requests,
            &format!("{path}.unit"),
            c,
        );
        let weight = weight(&l.weight, 50, &format!("{path}.weight"), c);
        let max_entries = match &l.max_entries {
            Some(m) if *m.get_ref() < 16 => {
                c.at(sp(m), format!("{path}.max_entries"), "must be at least 16");
                max_tracked
            }
            Some(m) => *m.get_ref(),
            None => max_tracked,
        };
        let Some(rate) = rate else { continue };
        let algorithm = if is_window {
            if let Some(b) = &l.burst {
                c.at(
                    sp(b),
                    format!("{path}.burst"),
                    "burst applies to algorithm = \"gcra\" only",
                );
            }
            Algorithm::SlidingWindow {
                window: rate.period,
                limit: rate.count,
            }
        } else {
            let burst = match &l.burst {
                Some(b) if *b.get_ref() == 0 => {
                    c.at(sp(b), format!("{path}.burst"), "burst must be at least 1");
                    1
                }
                Some(b) => *b.get_ref(),
                None => rate.count,
            };
            Algorithm::Gcra {
                interval: rate.period / rate.count,
                burst,
            }
        };
        // Advertise the policy in whole seconds: 10/500ms becomes q=20;w=1.
        let window_secs = ceil_secs(rate.period).max(1);
        let quota = ((rate.count as u128 * window_secs as u128 * 1_000_000_000)
            / rate.period.max(1) as u128)
            .min(u64::MAX as u128) as u64;
        limits.push(LimitSpec {
            name: Arc::from(name.as_str()),
            key,
            routes,
            methods: meths,
            algorithm,
            action,
            unit,
            quota,
            window_secs,
            headers: l.headers.unwrap_or(true),
            weight,
            max_entries: max_entries.min(usize::MAX as u64) as usize,
        });
    }

    // [[quotas]]
    let mut quotas = Vec::new();
    for (i, q) in raw.quotas.iter().enumerate() {
        let path = format!("quotas[{}]", q.index);
        let name = q.name.get_ref();
        if !valid_name(name) || name == palisade_engine::engine::KEY_BUDGET_QUOTA {
            c.at(
                sp(&q.name),
                &path,
                format!("quota name `{name}` must be 1-64 letters, digits, '-', '_' or '.', and not `{}`", palisade_engine::engine::KEY_BUDGET_QUOTA),
            );
        }
        if raw.quotas.iter().take(i).any(|o| o.name.get_ref() == name) {
            c.at(
                sp(&q.name),
                &path,
                format!("quota `{name}` is defined twice"),
            );
        }
        let key = match q.key.as_slice() {
            [k] if k.get_ref() == "api_key" => QuotaKey::ApiKey,
            [k] if k.get_ref() == "account" => QuotaKey::Account,
            _ => {
                c.at(
                    q.key.first().and_then(sp).or_else(|| sp(&q.name)),
                    format!("{path}.key"),
                    "a quota is counted per key = [\"api_key\"] or per key = [\"account\"]",
                );
                QuotaKey::ApiKey
            }
        };
        let routes = q
            .routes
            .as_ref()
            .map(|rs| route_ids(rs, &route_specs, &format!("{path}.routes"), c));
        let requests_per_day = match &q.requests_per_day {
            Some(v) if *v.get_ref() == 0 => {
                c.at(
                    sp(v),
                    format!("{path}.requests_per_day"),
                    "must be at least 1",
                );
                None
            }
            Some(v) => Some(*v.get_ref()),
            None => None,
        };
        let spend_per_day_micros = q.spend_per_day_usd.as_ref().and_then(|v| {
            match usd_micros(*v.get_ref()).filter(|m| *m > 0) {
                Some(m) => Some(m),
                None => {
                    c.at(
                        sp(v),
                        format!("{path}.spend_per_day_usd"),
                        "must be a dollar amount above 0 and at most 1000000",
                    );
                    None
                }
            }
        });
        if q.requests_per_day.is_none() && q.spend_per_day_usd.is_none() {
            c.at(
                sp(&q.name),
                &path,
                "a quota needs requests_per_day, spend_per_day_usd or both",
            );
        }
        quotas.push(QuotaSpec {
            name: Arc::from(name.as_str()),
            key,
            routes,
            requests_per_day,
            spend_per_day_micros,
        });
    }

    // [keys]
    let keys = compile_keys(&raw.keys, c);
    let auth_policy = AuthPolicy {
        failures: opt(
            &raw.keys.max_failures,
            AuthPolicy::default().failures,
            "keys.max_failures",
            c,
            |s| {
                let r = parse_rate(s)?;
                Ok(Algorithm::Gcra {
                    interval: r.period / r.count,
                    burst: r.count,
                })
            },
        ),
        max_entries: max_tracked.min(usize::MAX as u64) as usize,
    };

    // [bots]
    let bots = raw
        .bots
        .as_ref()
        .and_then(|b| compile_bots(b, base, c, &mut files));

    // [headers]
    let headers = raw.headers.as_ref().map(|h| HeadersPolicy {
        weight: weight(&h.weight, 15, "headers.weight", c),
        assume_https: h.assume_https.unwrap_or(true),
    });

    // [[honeypots]]
    let mut honeypots = Vec::new();
    for (i, h) in raw.honeypots.iter().enumerate() {
        let path = format!("honeypots[{}]", h.index);
        let name = h
            .name
            .as_ref()
            .map_or_else(|| format!("trap-{}", i + 1), |n| n.get_ref().clone());
        if !valid_name(&name) {
            c.at(
                h.name.as_ref().and_then(sp),
                &path,
                format!("honeypot name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        let mut paths = Vec::new();
        for p in &h.paths {
            match PathPattern::parse(p.get_ref()) {
                Ok(pat) => paths.push(fold(pat)),
                Err(e) => c.at(sp(p), format!("{path}.paths"), e.to_string()),
            }
        }
        let decoy_keys: Vec<String> = h.decoy_keys.iter().map(|k| k.expose().to_owned()).collect();
        if let Some(k) = h.decoy_keys.iter().find(|k| k.expose().len() < 16) {
            c.at(sp(k.spanned()), format!("{path}.decoy_keys"), "a decoy key must be at least 16 characters (it must look real and never collide with a guess)");
        }
        if h.paths.is_empty() && h.decoy_keys.is_empty() {
            c.at(None, &path, "a honeypot needs paths, decoy_keys or both");
        }
        let block_for_ms = opt(
            &h.block_for,
            3_600_000,
            &format!("{path}.block_for"),
            c,
            |s| parse_duration(s).map(|n| n / 1_000_000),
        );
        let weight = weight(&h.weight, 50, &format!("{path}.weight"), c);
        let effect = choice(
            &h.action,
            &[
                ("block", BlockEffect::Block),
                ("score", BlockEffect::Score(weight)),
            ],
            BlockEffect::Block,
            &format!("{path}.action"),
            c,
        );
        let flag: Vec<&'static str> = match &h.flag {
            // Not `ja4h` by default: a fingerprint is shared by every client with the same header
            // set, so a scanner dressed as a browser would get that browser's users blocked.
            None => vec!["ip", "api_key"],
            Some(list) => list
                .iter()
                .filter_map(|f| {
                    let found = palisade_engine::state::blocks::DIMENSIONS
                        .iter()
                        .find(|d| **d == f.get_ref().as_str())
                        .copied();
                    if found.is_none() {
                        c.at(
                            sp(f),
                            format!("{path}.flag"),
                            format!(
                                "`{}` is not one of: {}",
                                f.get_ref(),
                                palisade_engine::state::blocks::DIMENSIONS.join(", ")
                            ),
                        );
                    }
                    found
                })
                .collect(),
        };
        honeypots.push(HoneypotSpec {
            name: Arc::from(name.as_str()),
            paths,
            decoy_keys,
            block_for_ms,
            effect,
            flag,
            robots_txt: h.robots_txt.unwrap_or(false),
        });
    }
    let max_blocks = match &s.max_blocks {
        Some(v) if *v.get_ref() < 16 || *v.get_ref() > 10_000_000 => {
            c.at(
                sp(v),
                "server.max_blocks",
                "must be between 16 and 10000000",
            );
            100_000
        }
        Some(v) => *v.get_ref() as usize,
        None => 100_000,
    };

    // [intel]
    let intel = raw
        .intel
        .as_ref()
        .map(|i| compile_intel(i, base, c, &mut files));

    // [jwt]
    let jwt = raw
        .jwt
        .as_ref()
        .and_then(|j| compile_jwt(j, base, c, &mut files));

    // [lists]
    let deny = parse_ip_entries(&raw.lists.deny, "lists.deny", base, c, &mut files);
    let allow = parse_ip_entries(&raw.lists.allow, "lists.allow", base, c, &mut files);
    let mut allow_if = Vec::new();
    for cond in &raw.lists.allow_if {
        let net = match parse_net(cond.net.get_ref()) {
            Ok(n) => n,
            Err(msg) => {
                c.at(sp(&cond.net), "lists.allow_if", msg);
                continue;
            }
        };
        let mut paths = Vec::new();
        for p in &cond.paths {
            match PathPattern::parse(p.get_ref()) {
                Ok(pat) => paths.push(fold(pat)),
                Err(err) => c.at(sp(p), "lists.allow_if.paths", err.to_string()),
            }
        }
        let header = cond.header.as_ref().and_then(|h| {
            let (name, value) = match h.get_ref().split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (h.get_ref().trim(), None),
            };
            let name = HeaderName::from_bytes(name.as_bytes()).ok();
            let value = value.map(http::HeaderValue::from_str);
            match (name, value) {
                (Some(n), None) => Some((n, None)),
                (Some(n), Some(Ok(v))) => Some((n, Some(v))),
                _ => {
                    c.at(
                        sp(h),
                        "lists.allow_if.header",
                        format!("`{}` is not `name` or `name: value`", h.get_ref()),
                    );
                    None
                }
            }
        });
        if cond.paths.is_empty() && cond.header.is_none() {
            c.at(
                sp(&cond.net),
                "lists.allow_if",
                "an entry needs paths, a header or both; an unconditional network goes in `allow`",
            );
        }
        allow_if.push(palisade_engine::policy::ConditionalAllow {
            net: IpSet::new([net]),
            paths,
            header,
        });
    }

    // [scoring]
    let threshold = |v: &Option<Spanned<u64>>, d: u8, name: &str, c: &mut Collector<'_>| match v {
        Some(x) if *x.get_ref() > 100 => {
            c.at(
                sp(x),
                format!("scoring.{name}"),
                "thresholds are scores from 0 (off) to 100",
            );
            d
        }
        Some(x) => *x.get_ref() as u8,
        None => d,
    };
    let defaults = ScoringPolicy::default();
    let rs = &raw.scoring;
    let ua = rs.under_attack.clone().unwrap_or_default();
    let du = defaults.under_attack;
    let mut scoring = ScoringPolicy {
        tag_at: threshold(&rs.tag_at, defaults.tag_at, "tag_at", c),
        delay_at: threshold(&rs.delay_at, defaults.delay_at, "delay_at", c),
        challenge_at: threshold(&rs.challenge_at, defaults.challenge_at, "challenge_at", c),
        block_at: threshold(&rs.block_at, defaults.block_at, "block_at", c),
        under_attack: palisade_engine::policy::Thresholds {
            tag_at: threshold(&ua.tag_at, du.tag_at, "under_attack.tag_at", c),
            delay_at: threshold(&ua.delay_at, du.delay_at, "under_attack.delay_at", c),
            challenge_at: threshold(
                &ua.challenge_at,
                du.challenge_at,
                "under_attack.challenge_at",
                c,
            ),
            block_at: threshold(&ua.block_at, du.block_at, "under_attack.block_at", c),
        },
        relax_after: opt(
            &rs.relax_after,
            defaults.relax_after,
            "scoring.relax_after",
            c,
            parse_duration,
        ),
        throttle_block_ms: opt(
            &rs.throttle_block_for,
            defaults.throttle_block_ms,
            "scoring.throttle_block_for",
            c,
            |s| parse_duration(s).map(|n| n / 1_000_000),
        ),
        throttle: defaults.throttle.clone(),
        max_held: match &rs.max_held {
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1000 => {
                c.at(sp(v), "scoring.max_held", "must be between 1 and 1000");
                defaults.max_held
            }
            Some(v) => *v.get_ref() as u32,
            None => defaults.max_held,
        },
    };
    if let Some(steps) = &rs.throttle {
        scoring.throttle = steps
            .iter()
            .filter_map(|st| match parse_duration(st.get_ref()) {
                Ok(0) => {
                    c.at(
                        sp(st),
                        "scoring.throttle",
                        "a delay step must be longer than 0s",
                    );
                    None
                }
                Ok(n) if n > 300 * palisade_engine::clock::SECOND => {
                    c.at(
                        sp(st),
                        "scoring.throttle",
                        "a delay step longer than 5m holds connections for too long; block instead",
                    );
                    None
                }
                Ok(n) => Some(n),
                Err(e) => {
                    c.at(sp(st), "scoring.throttle", e);
                    None
                }
            })
            .collect();
        if scoring.throttle.windows(2).any(|w| w.first() > w.get(1)) {
            c.at(
                steps.first().and_then(sp),
                "scoring.throttle",
                "delay steps must not get shorter",
            );
        }
    }
    for (name, t) in [
        ("scoring", scoring.thresholds(false)),
        ("scoring.under_attack", scoring.under_attack),
    ] {
        let order = [t.tag_at, t.delay_at, t.challenge_at, t.block_at];
        let on: Vec<u8> = order.iter().copied().filter(|x| *x > 0).collect();
        if on.windows(2).any(|w| w.first() > w.get(1)) {
            c.at(
                None,
                name,
                format!(
                    "thresholds must rise: tag_at <= delay_at <= challenge_at <= block_at (got {}, {}, {}, {})",
                    t.tag_at, t.delay_at, t.challenge_at, t.block_at
                ),
            );
        }
    }

    // [[rules]]
    let rules = compile_rules(&raw.rules, c);

    let behaviour = raw
        .behaviour
        .as_ref()
        .filter(|b| b.enabled != Some(false))
        .map(|b| {
            let mut p = compile_behaviour(b, &route_specs, c);
            // Cluster mode: behaviour aggregates are merged across gateways.
            p.shared = raw
                .store
                .backend
                .as_ref()
                .is_some_and(|b| b.get_ref() == "redis");
            p
        });

    // [log]
    let decisions = match raw.log.decisions.as_deref() {
        None | Some("stdout") => DecisionLogTarget::Stdout,
        Some("off") => DecisionLogTarget::Off,
        Some(p) => DecisionLogTarget::File(base.join(p)),
    };
    let sample_allow = match &raw.log.sample_allow {
        Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
            c.at(sp(v), "log.sample_allow", "must be between 0.0 and 1.0");
            1.0
        }
        Some(v) => *v.get_ref(),
        None => 1.0,
    };
    let recent = raw
        .log
        .recent
        .as_ref()
        .map_or(1000, |r| *r.get_ref())
        .min(100_000) as usize;

    // [[tests]]
    let mut tests = Vec::new();
    for t in &raw.tests {
        let path = format!("tests[{}]", t.index);
        let method = t
            .request
            .method
            .as_ref()
            .map(|m| {
                methods(
                    std::slice::from_ref(m),
                    &format!("{path}.request.method"),
                    c,
                )
                .into_iter()
                .next()
                .unwrap_or(Method::GET)
            })
            .unwrap_or(Method::GET);
        let full = t.request.path.get_ref();
        if !full.starts_with('/') {
            c.at(
                sp(&t.request.path),
                format!("{path}.request.path"),
                "path must start with '/'",
            );
        }
        let (p, q) = match full.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (full.clone(), None),
        };
        let ip = opt(
            &t.request.ip,
            std::net::IpAddr::from([198, 51, 100, 1]),
            &format!("{path}.request.ip"),
            c,
            |s| s.parse().map_err(|_| format!("`{s}` is not an IP address")),
        );
        let mut headers = http::HeaderMap::new();
        for (k, v) in &t.request.headers {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => {
                    headers.append(k, v);
                }
                _ => c.at(
                    sp(&t.request.path),
                    format!("{path}.request.headers"),
                    format!("`{k}: {v}` is not a valid header"),
                ),
            }
        }
        let want = t.expect.action.get_ref();
        const ACTIONS: [&str; 12] = [
            "allow",
            "unauthorized",
            "tag",
            "delay",
            "challenge",
            "limit",
            "block",
            "would_tag",
            "would_delay",
            "would_challenge",
            "would_limit",
            "would_block",
        ];
        if !ACTIONS.contains(&want.as_str()) {
            c.at(
                sp(&t.expect.action),
                format!("{path}.expect.action"),
                format!("`{want}` is not one of: {}", ACTIONS.join(", ")),
            );
        }
        let line = Some(c.line_of(t.request.path.span().start));
        tests.push(TestCase {
            name: t.name.clone().unwrap_or_else(|| format!("{method} {full}")),
            method,
            path: p,
            query: q,
            ip,
            headers,
            repeat: t.request.repeat.unwrap_or(1).clamp(1, 100_000),
            expect_action: want.clone(),
            expect_rule: t.expect.rule.clone(),
            principal: t.request.api_key.as_ref().map(|k| {
                Arc::new(Principal {
                    kind: palisade_engine::model::principal::PrincipalKind::ApiKey,
                    key_id: Some(Arc::from(k.id.as_deref().unwrap_or("test"))),
                    account: k.account.as_deref().map(Arc::from),
                    scopes: k.scopes.iter().map(|s| Arc::from(s.as_str())).collect(),
                    claims: Vec::new(),
                    rate: None,
                    budget: Default::default(),
                    budget_items: None,
                    created_ms: None,
                })
            }),
            line,
        });
    }

    let store = compile_store(&raw.store, c);
    // Secret-bearing fields serialise redacted by their type (`crate::secret`).
    let redacted = serde_json::to_value(&raw).unwrap_or(serde_json::Value::Null);

    let policy = Policy {
        mode,
        routes: RouteTable::new(matches),
        route_specs,
        limits,
        lists: ListsPolicy {
            allow,
            deny,
            allow_if,
        },
        scoring,
        quotas,
        auth: auth_policy,
        bots,
        headers,
        honeypots,
        max_blocks,
        intel,
        behaviour,
        rules,
    };
    Some(Compiled {
        server: ServerSettings {
            listen,
            admin_listen,
            data_dir: s
                .data_dir
                .as_ref()
                .map_or_else(|| PathBuf::from("./palisade-data"), PathBuf::from),
            trusted_proxies,
            admin_token: s.admin_token.as_ref().map(|t| t.expose().to_owned()),
            on_engine_error,
            connect_timeout,
            header_read_timeout,
            idle_timeout,
            upstream_timeout,
            drain_timeout,
            max_header_count,
            max_header_bytes: max_header_bytes as usize,
            max_body_bytes,
            max_connections,
            max_connections_per_ip,
            first_byte_timeout,
            listen_backlog,
            min_send_rate,
            min_receive_rate,
            min_rate_grace,
            case_sensitive_paths,
        },
        upstreams,
        policy,
        log: LogSettings {
            decisions,
            sample_allow,
            recent,
        },
        tests,
        keys,
        jwt,
        files,
        redacted,
        store,
    })
}

/// The catalog is compiled once per process: it is the same for every config.
fn builtin_catalog() -> Option<Arc<BotCatalog>> {
    static CATALOG: std::sync::OnceLock<Option<Arc<BotCatalog>>> = std::sync::OnceLock::new();
    CATALOG
        .get_or_init(|| BotCatalog::builtin().ok().map(Arc::new))
        .clone()
}

fn compile_bots(
    b: &RawBots,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> Option<BotsPolicy> {
    let mut actions = [BotAction::Signal; Category::ALL.len()];
    if let Some(i) = Category::ALL.iter().position(|x| *x == Category::Human)
        && let Some(slot) = actions.get_mut(i)
    {
        *slot = BotAction::Allow;
    }
    for (name, value) in &b.actions {
        let Some(i) =
            Category::parse(name).and_then(|cat| Category::ALL.iter().position(|x| *x == cat))
        else {
            let known: Vec<&str> = Category::ALL.iter().map(|c| c.name()).collect();
            c.at(
                sp(value),
                format!("bots.actions.{name}"),
                format!("unknown bot category `{name}`; known: {}", known.join(", ")),
            );
            continue;
        };
        match (value.get_ref().as_str(), BotAction::parse(value.get_ref())) {
            (_, Some(a)) => {
                if let Some(slot) = actions.get_mut(i) {
                    *slot = a;
                }
            }
            (other, None) => c.at(
                sp(value),
                format!("bots.actions.{name}"),
                format!(
                    "`{other}` is not one of: allow, allow_verified, signal, tag, challenge, block"
                ),
            ),
        }
    }
    let weight = weight(&b.weight, 20, "bots.weight", c);
    let cache_entries = match &b.cache_entries {
        Some(v) if *v.get_ref() < 16 || *v.get_ref() > 10_000_000 => {
            c.at(
                sp(v),
                "bots.cache_entries",
                "must be between 16 and 10000000",
            );
            10_000
        }
        Some(v) => *v.get_ref() as usize,
        None => 10_000,
    };
    let mut verified = Vec::new();
    for (i, v) in b.verify.iter().enumerate() {
        let path = format!("bots.verify[{i}]");
        let mut ranges = Vec::new();
        for r in &v.ranges {
            let file = base.join(r.get_ref().strip_prefix("file:").unwrap_or(r.get_ref()));
            match std::fs::read_to_string(&file) {
                Ok(text) => match palisade_intel::verify::parse_ranges(&text) {
                    Ok(mut rs) => {
                        files.push(file);
                        ranges.append(&mut rs);
                    }
                    Err(e) => c.at(
                        sp(r),
                        format!("{path}.ranges"),
                        format!("`{}`: {e}", file.display()),
                    ),
                },
                Err(e) => c.at(
                    sp(r),
                    format!("{path}.ranges"),
                    format!("cannot read `{}`: {e}", file.display()),
                ),
            }
        }
        if v.ranges.is_empty() && v.rdns.is_empty() {
            c.at(
                sp(&v.name),
                &path,
                "a verified bot needs ranges, rdns domains or both",
            );
        }
        match palisade_intel::verify::VerifiedBot::new(
            v.name.get_ref(),
            v.claims.get_ref(),
            ranges,
            v.rdns.clone(),
        ) {
            Ok(vb) => verified.push(Arc::new(vb)),
            Err(e) => c.at(sp(&v.claims), format!("{path}.claims"), e),
        }
    }
    let outcome =
        |v: &Option<Spanned<String>>, dflt: BotAction, field: &str, c: &mut Collector<'_>| {
            choice(
                v,
                &[
                    ("allow", BotAction::Allow),
                    ("signal", BotAction::Signal),
                    ("challenge", BotAction::Challenge),
                    ("block", BotAction::Block),
                ],
                dflt,
                &format!("bots.{field}"),
                c,
            )
        };
    let on_pending = outcome(&b.pending, BotAction::Allow, "pending", c);
    let on_spoofed = outcome(&b.spoofed, BotAction::Block, "spoofed", c);
    let mut dns_servers = Vec::new();
    for d in &b.dns_servers {
        match d.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => dns_servers.push(a),
            Err(_) => c.at(
                sp(d),
                "bots.dns_servers",
                format!("`{}` is not ip:port", d.get_ref()),
            ),
        }
    }
    let Some(catalog) = builtin_catalog() else {
        c.at(
            None,
            "bots",
            "the built-in bot catalog failed to compile (a bug; please report it)",
        );
        return None;
    };
    Some(BotsPolicy {
        catalog,
        actions,
        weight,
        cache_entries,
        verified,
        on_pending,
        on_spoofed,
        dns_servers,
    })
}

fn compile_intel(
    raw: &RawIntel,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> IntelPolicy {
    let mut db = IpIntel::new();
    let mut read =
        |s: &Spanned<String>, path: &str, c: &mut Collector<'_>| -> Option<(String, String)> {
            let name = s.get_ref().strip_prefix("file:").unwrap_or(s.get_ref());
            let file = base.join(name);
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    files.push(file.clone());
                    Some((file.display().to_string(), text))
                }
                Err(e) => {
                    c.at(
                        sp(s),
                        path,
                        format!("cannot read `{}`: {e}", file.display()),
                    );
                    None
                }
            }
        };
    let report = |s: &Spanned<String>,
                  path: &str,
                  errs: Vec<palisade_intel::ipinfo::DataError>,
                  c: &mut Collector<'_>| {
        for e in errs {
            c.at(sp(s), path, e.to_string());
        }
    };
    if let Some(f) = &raw.asn_db
        && let Some((name, text)) = read(f, "intel.asn_db", c)
        && let Err(errs) = db.load_iptoasn(&name, &text)
    {
        report(f, "intel.asn_db", errs, c);
    }
    match &raw.asn_categories {
        None => {
            let _ = db.load_categories("builtin", BUILTIN_ASN_CATEGORIES);
        }
        Some(list) => {
            for f in list {
                if f.get_ref() == "builtin" {
                    let _ = db.load_categories("builtin", BUILTIN_ASN_CATEGORIES);
                } else if let Some((name, text)) = read(f, "intel.asn_categories", c)
                    && let Err(errs) = db.load_categories(&name, &text)
                {
                    report(f, "intel.asn_categories", errs, c);
                }
            }
        }
    }
    if let Some(f) = &raw.tor_exits
        && let Some((name, text)) = read(f, "intel.tor_exits", c)
        && let Err(errs) = db.load_tor_exits(&name, &text)
    {
        report(f, "intel.tor_exits", errs, c);
    }
    for f in raw.mmdb.iter().flatten() {
        let name = f.get_ref().strip_prefix("file:").unwrap_or(f.get_ref());
        let file = base.join(name);
        match std::fs::read(&file) {
            Ok(bytes) => {
                files.push(file.clone());
                if let Err(e) = db.load_mmdb(&file.display().to_string(), bytes) {
                    c.at(sp(f), "intel.mmdb", e);
                }
            }
            Err(e) => c.at(
                sp(f),
                "intel.mmdb",
                format!("cannot read `{}`: {e}", file.display()),
            ),
        }
    }
    let mut category_weights = [20u8, 20, 0, 0];
    let mut tor_weight = 40u8;
    for (k, v) in &raw.weights {
        let w = match u8::try_from(*v.get_ref()) {
            Ok(w) if w <= 100 => w,
            _ => {
                c.at(
                    sp(v),
                    format!("intel.weights.{k}"),
                    "weight must be between 0 and 100",
                );
                continue;
            }
        };
        match k.as_str() {
            "hosting" => category_weights[0] = w,
            "vpn" => category_weights[1] = w,
            "mobile" => category_weights[2] = w,
            "residential" => category_weights[3] = w,
            "tor" => tor_weight = w,
            other => c.at(
                sp(v),
                format!("intel.weights.{other}"),
                format!("`{other}` is not one of: hosting, vpn, mobile, residential, tor"),
            ),
        }
    }
    IntelPolicy {
        db: Arc::new(db),
        category_weights,
        tor_weight,
    }
}

/// A risk-score weight from 0 to 100, or `default` (reporting one out of range).
fn weight(v: &Option<Spanned<u64>>, default: u8, path: &str, c: &mut Collector<'_>) -> u8 {
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
fn route_ids(
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

fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'*'))
}

/// Dollars to micro-dollars, for amounts from 0 to a million.
fn usd_micros(v: f64) -> Option<u64> {
    (v.is_finite() && (0.0..=1_000_000.0).contains(&v))
        .then(|| (v * palisade_engine::state::quota_ledger::MICROS_PER_USD).round() as u64)
}

fn compile_keys(k: &RawKeys, c: &mut Collector<'_>) -> KeySettings {
    let d = KeySettings::default();
    let headers = match &k.headers {
        None => d.headers,
        Some(list) => {
            let mut out = Vec::new();
            for h in list {
                match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                    Ok(n) => out.push(n),
                    Err(_) => c.at(
                        sp(h),
                        "keys.headers",
                        format!("`{}` is not a header name", h.get_ref()),
                    ),
                }
            }
            if list.is_empty() {
                c.at(
                    None,
                    "keys.headers",
                    "name at least one header to read keys from",
                );
            }
            out
        }
    };
    let max_keys_per_account = match &k.max_keys_per_account {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 100_000 => {
            c.at(
                sp(v),
                "keys.max_keys_per_account",
                "must be between 1 and 100000",
            );
            d.max_keys_per_account
        }
        Some(v) => *v.get_ref(),
        None => d.max_keys_per_account,
    };
    let secs = |v: &Option<Spanned<String>>, dflt: u64, name: &str, c: &mut Collector<'_>| {
        opt(v, dflt, &format!("keys.{name}"), c, |s| {
            parse_duration(s).map(|n| n / palisade_engine::clock::SECOND)
        })
    };
    let rotation_grace_secs = secs(
        &k.rotation_grace,
        d.rotation_grace_secs,
        "rotation_grace",
        c,
    );
    let signature_window_secs = secs(
        &k.signature_window,
        d.signature_window_secs,
        "signature_window",
        c,
    );
    if signature_window_secs == 0 {
        c.at(
            k.signature_window.as_ref().and_then(sp),
            "keys.signature_window",
            "must be at least 1s",
        );
    }
    let max_nonces = match &k.max_nonces {
        Some(v) if *v.get_ref() < 100 || *v.get_ref() > 10_000_000 => {
            c.at(sp(v), "keys.max_nonces", "must be between 100 and 10000000");
            d.max_nonces
        }
        Some(v) => *v.get_ref() as usize,
        None => d.max_nonces,
    };
    let forward = choice(
        &k.forward,
        &[("strip", KeyForward::Strip), ("keep", KeyForward::Keep)],
        KeyForward::Strip,
        "keys.forward",
        c,
    );
    KeySettings {
        headers,
        max_keys_per_account,
        rotation_grace_secs,
        signature_window_secs,
        max_nonces,
        forward,
    }
}

fn compile_jwt(
    j: &RawJwt,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> Option<Arc<JwtVerifier>> {
    let header = match &j.header {
        Some(h) => match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                c.at(
                    sp(h),
                    "jwt.header",
                    format!("`{}` is not a header name", h.get_ref()),
                );
                http::header::AUTHORIZATION
            }
        },
        None => http::header::AUTHORIZATION,
    };
    let mut algorithms = Vec::new();
    for a in j.algorithms.iter().flatten() {
        match jwt::parse_algorithm(a.get_ref()) {
            Ok(alg) => algorithms.push(alg),
            Err(e) => c.at(sp(a), "jwt.algorithms", e),
        }
    }
    let leeway_secs = opt(&j.leeway, 30, "jwt.leeway", c, |s| {
        parse_duration(s).map(|n| n / palisade_engine::clock::SECOND)
    });
    let mut claims = Vec::new();
    for cl in j.claims.iter().flatten() {
        match KeyPart::parse(&format!("jwt:{}", cl.get_ref())) {
            Ok(KeyPart::Jwt(name)) => claims.push(name),
            _ => c.at(
                sp(cl),
                "jwt.claims",
                format!(
                    "`{}` is not a claim name (letters, digits, '_', '-', '.')",
                    cl.get_ref()
                ),
            ),
        }
    }
    if j.claims.is_none() {
        claims.push(Arc::from("sub"));
    }
    let mut keys = Vec::new();
    for (i, k) in j.keys.iter().enumerate() {
        let path = format!("jwt.keys[{i}]");
        let alg = match jwt::parse_algorithm(k.algorithm.get_ref()) {
            Ok(a) => a,
            Err(e) => {
                c.at(sp(&k.algorithm), format!("{path}.algorithm"), e);
                continue;
            }
        };
        let material = match (&k.secret, &k.pem_file) {
            (Some(sec), None) => {
                let value = match sec.expose().strip_prefix("env:") {
                    Some(var) => match std::env::var(var) {
                        Ok(v) => v,
                        Err(_) => {
                            c.at(
                                sp(sec.spanned()),
                                format!("{path}.secret"),
                                format!("environment variable `{var}` is not set"),
                            );
                            continue;
                        }
                    },
                    None => sec.expose().to_owned(),
                };
                jwt::KeyMaterial::Secret(value.into_bytes())
            }
            (None, Some(pem)) => {
                let file = base.join(pem.get_ref());
                match std::fs::read(&file) {
                    Ok(bytes) => {
                        files.push(file);
                        jwt::KeyMaterial::Pem(bytes)
                    }
                    Err(e) => {
                        c.at(
                            sp(pem),
                            format!("{path}.pem_file"),
                            format!("cannot read `{}`: {e}", file.display()),
                        );
                        continue;
                    }
                }
            }
            _ => {
                c.at(
                    sp(&k.algorithm),
                    &path,
                    "give exactly one of `secret` (HS256) or `pem_file` (RS256, ES256, EdDSA)",
                );
                continue;
            }
        };
        match jwt::StaticKey::new(k.kid.clone(), alg, &material) {
            Ok(key) => keys.push(key),
            Err(e) => c.at(sp(&k.algorithm), &path, e),
        }
    }
    let jwks_file = j.jwks_file.as_ref().map(|f| (base.join(f.get_ref()), f));
    let mut file_keys = Vec::new();
    if let Some((file, spanned)) = &jwks_file {
        match std::fs::read(file) {
            Ok(bytes) => match jwt::parse_jwks(&bytes) {
                Ok(k) => {
                    files.push(file.clone());
                    file_keys = k;
                }
                Err(e) => c.at(
                    sp(spanned),
                    "jwt.jwks_file",
                    format!("`{}`: {e}", file.display()),
                ),
            },
            Err(e) => c.at(
                sp(spanned),
                "jwt.jwks_file",
                format!("cannot read `{}`: {e}", file.display()),
            ),
        }
    }
    let jwks_url = j
        .jwks_url
        .as_ref()
        .and_then(|u| match u.expose().parse::<Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some() =>
            {
                Some(uri)
            }
            _ => {
                c.at(
                    sp(u.spanned()),
                    "jwt.jwks_url",
                    format!("`{}` is not an https:// or http:// URL", u.redacted()),
                );
                None
            }
        });
    let jwks_ca_file = j.jwks_ca_file.as_ref().and_then(|f| {
        let file = base.join(f.get_ref());
        match std::fs::read_to_string(&file) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {
                files.push(file.clone());
                Some(file)
            }
            Ok(_) => {
                c.at(
                    sp(f),
                    "jwt.jwks_ca_file",
                    format!("`{}` holds no PEM certificate", file.display()),
                );
                None
            }
            Err(e) => {
                c.at(
                    sp(f),
                    "jwt.jwks_ca_file",
                    format!("cannot read `{}`: {e}", file.display()),
                );
                None
            }
        }
    });
    if jwks_ca_file.is_some() && jwks_url.is_none() {
        c.at(
            j.jwks_ca_file.as_ref().and_then(sp),
            "jwt.jwks_ca_file",
            "jwks_ca_file applies to a jwks_url",
        );
    }
    let jwks_refresh = opt(
        &j.jwks_refresh,
        600 * palisade_engine::clock::SECOND,
        "jwt.jwks_refresh",
        c,
        parse_duration,
    );
    if keys.is_empty() && jwks_file.is_none() && jwks_url.is_none() {
        c.at(
            None,
            "jwt",
            "[jwt] needs keys: inline `keys`, a `jwks_file` or a `jwks_url`",
        );
    }
    Some(Arc::new(JwtVerifier::new(
        jwt::JwtSettings {
            header,
            algorithms,
            issuer: j.issuer.clone(),
            audience: j.audience.clone().unwrap_or_default(),
            leeway_secs,
            claims,
            account_claim: j.account_claim.clone(),
            scope_claim: j.scope_claim.clone().unwrap_or_else(|| "scope".to_owned()),
            jwks_url,
            jwks_ca_file,
            jwks_refresh,
        },
        keys,
        file_keys,
    )))
}

/// `[behaviour]`.
fn compile_behaviour(
    raw: &RawBehaviour,
    specs: &[RouteSpec],
    c: &mut Collector<'_>,
) -> palisade_engine::behaviour::BehaviourPolicy {
    use palisade_engine::behaviour::{
        AttackScope, AttackSpec, BehaviourPolicy, CacheKeySpec, Dim, FlowSpec, SessionSource, Sig,
        StuffingSpec,
    };
    let mut p = BehaviourPolicy::default();
    let route = |name: &Spanned<String>, path: &str, c: &mut Collector<'_>| {
        route_ids(std::slice::from_ref(name), specs, path, c)
            .first()
            .copied()
    };
    let dur = |v: &Option<Spanned<String>>, d: u64, path: &str, c: &mut Collector<'_>| {
        let n = opt(v, d, path, c, parse_duration);
        if n == 0 && v.is_some() {
            c.at(v.as_ref().and_then(sp), path, "must be longer than 0s");
            return d;
        }
        n
    };
    if let Some(track) = &raw.track {
        p.track = Vec::new();
        for t in track {
            match Dim::parse(t.get_ref()) {
                Some(d) if !p.track.contains(&d) => p.track.push(d),
                Some(_) => {}
                None => c.at(
                    sp(t),
                    "behaviour.track",
                    format!(
                        "unknown dimension `{}`; known: ip, ip/24, api_key, account, session, ja4h, asn",
                        t.get_ref()
                    ),
                ),
            }
        }
    }
    if let Some(m) = &raw.max_entries {
        match *m.get_ref() {
            n @ 16..=10_000_000 => p.max_entries = n as usize,
            _ => c.at(
                sp(m),
                "behaviour.max_entries",
                "must be between 16 and 10000000",
            ),
        }
    }
    p.window = dur(&raw.window, p.window, "behaviour.window", c);
    p.short_window = dur(
        &raw.short_window,
        p.short_window,
        "behaviour.short_window",
        c,
    );
    p.half_life = dur(&raw.half_life, p.half_life, "behaviour.half_life", c);
    if let Some(sources) = &raw.session {
        p.session = Vec::new();
        for s in sources {
            let v = s.get_ref();
            let parsed = if v == "api_key" {
                Some(SessionSource::ApiKey)
            } else if let Some(n) = v.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
                Some(SessionSource::Cookie(n.to_owned()))
            } else if let Some(n) = v.strip_prefix("jwt:").filter(|n| !n.is_empty()) {
                Some(SessionSource::Jwt(n.to_owned()))
            } else if let Some(n) = v.strip_prefix("header:") {
                http::HeaderName::from_bytes(n.as_bytes())
                    .ok()
                    .map(SessionSource::Header)
            } else {
                None
            };
            match parsed {
                Some(x) => p.session.push(x),
                None => c.at(
                    sp(s),
                    "behaviour.session",
                    format!(
                        "`{v}` is not a session source; use cookie:<name>, header:<name>, jwt:<claim> or api_key"
                    ),
                ),
            }
        }
    }
    if let Some(ids) = &raw.id_params {
        p.id_params = ids.clone();
    }
    for (name, v) in &raw.thresholds {
        let x = *v.get_ref();
        let t = &mut p.thresholds;
        let path = format!("behaviour.thresholds.{name}");
        let ratio = |slot: &mut f32, c: &mut Collector<'_>| {
            if (0.0..=1.0).contains(&x) {
                *slot = x as f32;
            } else {
                c.at(sp(v), &path, "must be between 0.0 and 1.0");
            }
        };
        let count = |slot: &mut u32, c: &mut Collector<'_>| {
            if (1.0..=1e6).contains(&x) && x.fract() == 0.0 {
                *slot = x as u32;
            } else {
                c.at(sp(v), &path, "must be a whole number from 1 to 1000000");
            }
        };
        match name.as_str() {
            "min_requests" => count(&mut t.min_requests, c),
            "regular_min_gaps" => count(&mut t.regular_min_gaps, c),
            "regular_cv" => ratio(&mut t.regular_cv, c),
            "one_route_share" => ratio(&mut t.one_route_share, c),
            "error_share" => ratio(&mut t.error_share, c),
            "ignored_429s" => count(&mut t.ignored_429s, c),
            "user_agents" => count(&mut t.user_agents, c),
            "ips" => count(&mut t.ips, c),
            "countries" => count(&mut t.countries, c),
            "asns" => count(&mut t.asns, c),
            "keys_per_source" => count(&mut t.keys_per_source, c),
            "enumeration_run" => count(&mut t.enumeration_run, c),
            "enumeration_distinct" => count(&mut t.enumeration_distinct, c),
            "cache_busting_distinct" => count(&mut t.cache_busting_distinct, c),
            "group_keys" => count(&mut t.group_keys, c),
            other => c.at(
                sp(v),
                "behaviour.thresholds",
                format!(
                    "unknown threshold `{other}`; known: min_requests, regular_min_gaps, regular_cv, one_route_share, error_share, ignored_429s, user_agents, ips, countries, asns, keys_per_source, enumeration_run, enumeration_distinct, cache_busting_distinct, group_keys"
                ),
            ),
        }
    }
    for (name, v) in &raw.weights {
        match Sig::ALL.iter().find(|s| s.short_name() == name) {
            Some(s) => {
                let w = weight(
                    &Some(v.clone()),
                    s.default_weight(),
                    &format!("behaviour.weights.{name}"),
                    c,
                );
                if let Some(slot) = p.weights.get_mut(*s as usize) {
                    *slot = w;
                }
            }
            None => {
                let known: Vec<&str> = Sig::ALL.iter().map(|s| s.short_name()).collect();
                c.at(
                    sp(v),
                    "behaviour.weights",
                    format!("unknown signal `{name}`; known: {}", known.join(", ")),
                );
            }
        }
    }
    if let Some(s) = &raw.stuffing {
        let failure_status: Vec<u16> = match &s.failure_status {
            Some(list) => list
                .iter()
                .filter_map(|x| match *x.get_ref() {
                    n @ 400..=599 => Some(n as u16),
                    _ => {
                        c.at(
                            sp(x),
                            "behaviour.stuffing.failure_status",
                            "a failure status must be from 400 to 599",
                        );
                        None
                    }
                })
                .collect(),
            None => vec![401, 403],
        };
        let share = match &s.failure_share {
            Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
                c.at(
                    sp(v),
                    "behaviour.stuffing.failure_share",
                    "must be between 0.0 and 1.0",
                );
                0.8
            }
            Some(v) => *v.get_ref() as f32,
            None => 0.8,
        };
        let max_body = opt(
            &s.max_body,
            16 * 1024,
            "behaviour.stuffing.max_body",
            c,
            parse_size,
        );
        if let Some(r) = route(&s.route, "behaviour.stuffing.route", c) {
            p.stuffing = Some(StuffingSpec {
                route: r,
                failure_status,
                username_field: s
                    .username_field
                    .clone()
                    .unwrap_or_else(|| "username".to_owned()),
                min_failures: s.min_failures.unwrap_or(10).max(1),
                min_usernames: s.min_usernames.unwrap_or(5).max(1),
                failure_share: share,
                sources_per_username: s.sources_per_username.unwrap_or(5).max(1),
                max_usernames: s.max_usernames.unwrap_or(100_000).clamp(16, 10_000_000) as usize,
                max_body: usize::try_from(max_body).unwrap_or(usize::MAX).min(1 << 20),
            });
        }
    }
    for (i, k) in raw.cache_keys.iter().enumerate() {
        if let Some(r) = route(&k.route, &format!("behaviour.cache_keys[{i}].route"), c) {
            p.cache_keys.push(CacheKeySpec {
                route: r,
                params: k.params.clone(),
            });
        }
    }
    let mut afters = Vec::new();
    for (i, f) in raw.flows.iter().enumerate() {
        let path = format!("behaviour.flows[{i}]");
        let name = f.name.get_ref();
        if !valid_name(name) {
            c.at(
                sp(&f.name),
                format!("{path}.name"),
                format!("flow name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        let r = route(&f.route, &format!("{path}.route"), c);
        let a = route(&f.after, &format!("{path}.after"), c);
        let within = dur(
            &f.within,
            3600 * palisade_engine::clock::SECOND,
            &format!("{path}.within"),
            c,
        );
        let min_gap = opt(&f.min_gap, 0, &format!("{path}.min_gap"), c, parse_duration);
        if min_gap >= within {
            c.at(sp(&f.name), &path, "min_gap must be shorter than within");
        }
        if let (Some(route), Some(after)) = (r, a) {
            if route == after {
                c.at(
                    sp(&f.after),
                    format!("{path}.after"),
                    "a flow's two routes must differ",
                );
            }
            if !afters.contains(&after) {
                afters.push(after);
            }
            if afters.len() > 4 {
                c.at(
                    sp(&f.after),
                    format!("{path}.after"),
                    "flows may name at most 4 distinct `after` routes",
                );
            }
            p.flows.push(FlowSpec {
                name: Arc::from(name.as_str()),
                route,
                after,
                within,
                min_gap,
                anonymous_only: f.anonymous_only.unwrap_or(false),
                weight: weight(&f.weight, 20, &format!("{path}.weight"), c),
            });
        }
    }
    if let Some(a) = &raw.attack {
        if a.enabled == Some(false) {
            p.attack = None;
        } else {
            let d = AttackSpec::default();
            let factor = match &a.rate_factor {
                Some(v) if *v.get_ref() < 1.0 || *v.get_ref() > 1000.0 => {
                    c.at(
                        sp(v),
                        "behaviour.attack.rate_factor",
                        "must be between 1.0 and 1000.0",
                    );
                    d.rate_factor
                }
                Some(v) => *v.get_ref() as f32,
                None => d.rate_factor,
            };
            let inc = match &a.error_increase {
                Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
                    c.at(
                        sp(v),
                        "behaviour.attack.error_increase",
                        "must be between 0.0 and 1.0",
                    );
                    d.error_increase
                }
                Some(v) => *v.get_ref() as f32,
                None => d.error_increase,
            };
            p.attack = Some(AttackSpec {
                bucket: dur(&a.bucket, d.bucket, "behaviour.attack.bucket", c),
                warmup: a.warmup.unwrap_or(d.warmup),
                rate_factor: factor,
                min_requests: a.min_requests.unwrap_or(d.min_requests).max(1),
                error_increase: inc,
                enter_after: a.enter_after.unwrap_or(d.enter_after).max(1),
                leave_after: a.leave_after.unwrap_or(d.leave_after).max(1),
                scope: choice(
                    &a.scope,
                    &[
                        ("route", AttackScope::Route),
                        ("gateway", AttackScope::Gateway),
                    ],
                    AttackScope::Route,
                    "behaviour.attack.scope",
                    c,
                ),
            });
        }
    }
    p
}

/// `[[rules]]`.
fn compile_rules(
    raw: &[RawRule],
    c: &mut Collector<'_>,
) -> Option<palisade_engine::detect::rules::RulesPolicy> {
    use palisade_engine::detect::rules::{RuleAction, RuleSpec, RulesPolicy, compile, environment};
    if raw.is_empty() {
        return None;
    }
    let env = environment();
    let mut rules = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for r in raw {
        let path = format!("rules[{}]", r.index);
        let name = r.name.get_ref();
        if !valid_name(name) {
            c.at(
                sp(&r.name),
                format!("{path}.name"),
                format!("rule name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        } else if names.contains(name) {
            c.at(
                sp(&r.name),
                format!("{path}.name"),
                format!("rule name `{name}` is used twice"),
            );
        }
        names.push(name.clone());
        let program = match compile(&env, r.when.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                c.at(sp(&r.when), format!("{path}.when"), e);
                None
            }
        };
        let action = match r.action.get_ref().as_str() {
            "allow" => Some(RuleAction::Allow),
            "tag" => Some(RuleAction::Tag),
            "delay" => Some(RuleAction::Delay),
            "challenge" => Some(RuleAction::Challenge),
            "block" => Some(RuleAction::Block),
            "score" => Some(RuleAction::Score(weight(
                &r.weight,
                20,
                &format!("{path}.weight"),
                c,
            ))),
            other => {
                c.at(
                    sp(&r.action),
                    format!("{path}.action"),
                    format!("`{other}` is not one of: allow, tag, delay, challenge, block, score"),
                );
                None
            }
        };
        if r.weight.is_some() && !matches!(action, Some(RuleAction::Score(_)) | None) {
            c.at(
                r.weight.as_ref().and_then(sp),
                format!("{path}.weight"),
                "`weight` is for action = \"score\"",
            );
        }
        if let (Some(program), Some(action)) = (program, action) {
            rules.push(RuleSpec {
                name: Arc::from(name.as_str()),
                source: r.when.get_ref().clone(),
                program: Arc::new(program),
                action,
                shadow: r.shadow.unwrap_or(false),
            });
        }
    }
    Some(RulesPolicy { env, rules })
}

/// `[store]`.
fn compile_store(raw: &RawStore, c: &mut Collector<'_>) -> StoreSettings {
    let backend_name = choice(
        &raw.backend,
        &[("embedded", false), ("redis", true)],
        false,
        "store.backend",
        c,
    );
    let resolve = |v: &SecretUrl, c: &mut Collector<'_>| -> Option<String> {
        let text = v.expose();
        let url = match text.strip_prefix("env:") {
            Some(var) => match std::env::var(var) {
                Ok(u) => u,
                Err(_) => {
                    c.at(
                        sp(v.spanned()),
                        "store.url",
                        format!("environment variable `{var}` is not set"),
                    );
                    return None;
                }
            },
            None => text.to_owned(),
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            c.at(
                sp(v.spanned()),
                "store",
                format!(
                    "`{}` is not a redis:// or rediss:// URL",
                    crate::secret::redact_url(&url)
                ),
            );
            return None;
        }
        Some(url)
    };
    let backend = if backend_name {
        match (&raw.url, &raw.nodes) {
            (Some(_), Some(n)) => {
                c.at(
                    n.first().and_then(|n| sp(n.spanned())),
                    "store.nodes",
                    "give either `url` (one server) or `nodes` (a cluster), not both",
                );
                StoreBackend::Embedded
            }
            (Some(u), None) => match resolve(u, c) {
                Some(url) => StoreBackend::Redis {
                    urls: vec![url],
                    cluster: false,
                },
                None => StoreBackend::Embedded,
            },
            (None, Some(nodes)) if !nodes.is_empty() => StoreBackend::Redis {
                urls: nodes.iter().filter_map(|n| resolve(n, c)).collect(),
                cluster: true,
            },
            _ => {
                c.at(
                    raw.backend.as_ref().and_then(sp),
                    "store",
                    "backend = \"redis\" needs `url` (one server) or `nodes` (a cluster)",
                );
                StoreBackend::Embedded
            }
        }
    } else {
        if raw.url.is_some() || raw.nodes.is_some() {
            c.at(
                raw.url.as_ref().and_then(|u| sp(u.spanned())),
                "store",
                "`url` and `nodes` are for backend = \"redis\"",
            );
        }
        StoreBackend::Embedded
    };
    let timeout = opt(&raw.timeout, 5_000_000, "store.timeout", c, parse_duration);
    if raw.timeout.is_some() && !(100_000..=10 * palisade_engine::clock::SECOND).contains(&timeout)
    {
        c.at(
            raw.timeout.as_ref().and_then(sp),
            "store.timeout",
            "must be between 100us and 10s (requests wait this long at most)",
        );
    }
    let batch = opt(
        &raw.batch_interval,
        100_000_000,
        "store.batch_interval",
        c,
        parse_duration,
    );
    if raw.batch_interval.is_some()
        && !(1_000_000..=60 * palisade_engine::clock::SECOND).contains(&batch)
    {
        c.at(
            raw.batch_interval.as_ref().and_then(sp),
            "store.batch_interval",
            "must be between 1ms and 60s",
        );
    }
    StoreSettings {
        backend,
        timeout: std::time::Duration::from_nanos(timeout),
        on_error: choice(
            &raw.on_store_error,
            &[
                ("local", OnStoreError::Local),
                ("allow", OnStoreError::Allow),
                ("deny", OnStoreError::Deny),
            ],
            OnStoreError::Local,
            "store.on_store_error",
            c,
        ),
        sync: choice(
            &raw.sync,
            &[
                ("strict", StoreSync::Strict),
                ("batched", StoreSync::Batched),
            ],
            StoreSync::Strict,
            "store.sync",
            c,
        ),
        batch_interval: std::time::Duration::from_nanos(batch),
        prefix: raw
            .prefix
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "palisade".to_owned()),
    }
}
