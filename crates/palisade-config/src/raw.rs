//! The raw schema: exactly what the TOML file may say. Every struct denies unknown fields.
//! Values that need checking beyond their type are `Spanned`, so compile errors can point at
//! them. Field docs here are the reference; `palisade.example.toml` shows each one in use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::secret::{Secret, SecretUrl};

/// `[server]`: listeners, data, mode, trust, timeouts and request bounds.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Proxy listener. Default `127.0.0.1:8080`.
    pub listen: Option<Spanned<String>>,
    /// Admin API, `/metrics` and `/healthz` listener. Default `127.0.0.1:9901`.
    pub admin_listen: Option<Spanned<String>>,
    /// Directory for durable state (the generated admin token). Default `./palisade-data`.
    pub data_dir: Option<String>,
    /// `enforce` (default) or `shadow`: decide and log, never enforce.
    pub mode: Option<Spanned<String>>,
    /// Networks whose `X-Forwarded-For` / `Forwarded` headers are believed. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Headers a TLS-terminating front (CDN, load balancer) in `trusted_proxies` sets with the
    /// client's fingerprints, believed from those peers only: `{ ja4 = "NAME", h2 = "NAME" }`,
    /// e.g. CloudFront's `cloudfront-viewer-ja4-fingerprint`.
    pub trusted_fingerprint_headers: Option<RawFingerprintHeaders>,
    /// Admin API bearer token. `PALISADE_ADMIN_TOKEN` overrides it; if neither is set, one is
    /// generated into the data dir.
    pub admin_token: Option<Secret>,
    /// What to do when the engine itself fails: `allow` (fail open, default) or `deny`.
    pub on_engine_error: Option<Spanned<String>>,
    /// Upstream connect timeout. Default `5s`.
    pub connect_timeout: Option<Spanned<String>>,
    /// Time a client has to send a request's headers (slowloris bound). Default `10s`.
    pub header_read_timeout: Option<Spanned<String>>,
    /// Time an idle client connection is kept open. Default `60s`.
    pub idle_timeout: Option<Spanned<String>>,
    /// Time the upstream has to start answering. Default `30s`.
    pub upstream_timeout: Option<Spanned<String>>,
    /// Time in-flight requests get to finish after SIGTERM. Default `30s`.
    pub drain_timeout: Option<Spanned<String>>,
    /// Most request headers. Default 100.
    pub max_header_count: Option<Spanned<u64>>,
    /// Most bytes of request head (request line and headers). Default `16KiB`.
    pub max_header_bytes: Option<Spanned<String>>,
    /// Most bytes of request body. Default `10MiB`.
    pub max_body_bytes: Option<Spanned<String>>,
    /// Most keys each limit tracks, unless the limit says otherwise. Default 100000.
    pub max_tracked_keys: Option<Spanned<u64>>,
    /// Most client connections open at once. When reached, the oldest idle or slow connection
    /// is let go for a new one; with none to let go, new ones are closed. Default 10000.
    pub max_connections: Option<Spanned<u64>>,
    /// Most client connections from one address (IPv6: one /64), peers in `trusted_proxies`
    /// exempt. When reached, that address's oldest idle or slow connection is let go; with none,
    /// its new ones are closed. Default 256.
    pub max_connections_per_ip: Option<Spanned<u64>>,
    /// Time a new connection has to send its first byte (at most `idle_timeout`). Default
    /// `10s`.
    pub first_byte_timeout: Option<Spanned<String>>,
    /// Slowest a client may read a response once it holds a write up, after the grace time
    /// (slow-read attacks); `0` turns the rule off. Default `1KiB/s`.
    pub min_send_rate: Option<Spanned<String>>,
    /// Slowest a client may send a request body, averaged over the time it keeps the gateway
    /// waiting, after the grace time (slow-body attacks); `0` turns the rule off. Default
    /// `256B/s`.
    pub min_receive_rate: Option<Spanned<String>>,
    /// Time before the minimum rates apply. Default `10s`.
    pub min_rate_grace: Option<Spanned<String>>,
    /// Pending-connection queue of the proxy listener (the kernel caps it at
    /// `net.core.somaxconn`). Default 4096.
    pub listen_backlog: Option<Spanned<u64>>,
    /// Most blocks (from honeypots and operators) held at once. Default 100000.
    pub max_blocks: Option<Spanned<u64>>,
    /// Match route, honeypot and list paths with ASCII case significant. Default false: many
    /// upstream frameworks (Express, ASP.NET) route `/API/Login` to `/api/login`, so the
    /// policy matches the way they route.
    pub case_sensitive_paths: Option<bool>,
}

/// `[tls]`: Palisade terminates TLS itself, on its own listener, and sees each client's
/// ClientHello (JA4).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The TLS listener. Default `0.0.0.0:8443`.
    pub listen: Option<Spanned<String>>,
    /// Certificates: `[[tls.certificates]]`, each a PEM chain and key. The first is the default
    /// (for clients that send no server name, or one no certificate names).
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// Protocols offered over ALPN, in order of preference. Default `["h2", "http/1.1"]`.
    pub alpn: Option<Vec<Spanned<String>>>,
    /// Oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<Spanned<String>>,
    /// Whether the plain listener (`server.listen`) answers every request with a redirect to
    /// HTTPS (308, same host and path, the TLS port) instead of serving it. Default false.
    pub redirect_plain: Option<bool>,
    /// PEM file of the CAs that issue client certificates (mutual TLS). A client that presents
    /// a certificate they issued is identified by it (`mtls` dimension, `tls.client` in rules).
    pub client_ca: Option<Spanned<String>>,
    /// With `client_ca`: `"optional"` (default: clients without a certificate still connect;
    /// rules can require one on partner routes) or `"required"` (the handshake fails without).
    pub client_auth: Option<Spanned<String>>,
    /// `[tls.acme]`: certificates ordered and renewed automatically over ACME (RFC 8555).
    pub acme: Option<RawAcme>,
}

/// `[tls.acme]`: one certificate for `domains`, ordered from an ACME CA (Let's Encrypt by
/// default), kept in the data dir, renewed before it expires, shared through the `[store]` in a
/// cluster so that one gateway orders for all.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// The names the certificate is for (no wildcards: those need DNS-01).
    #[serde(default)]
    pub domains: Vec<Spanned<String>>,
    /// The CA's directory URL (https). Default Let's Encrypt's production directory.
    pub directory: Option<Spanned<String>>,
    /// Contact URLs for the account, e.g. `["mailto:ops@example.com"]`.
    #[serde(default)]
    pub contact: Vec<Spanned<String>>,
    /// Agreement to the CA's terms of service; must be `true`.
    pub accept_terms: Option<Spanned<bool>>,
    /// How the CA checks the names are ours: `"tls-alpn-01"` (default: on the TLS listener,
    /// which must be reachable on port 443) or `"http-01"` (on the plain listener, port 80).
    pub challenge: Option<Spanned<String>>,
    /// Renew when fewer than this many days are left. Default 30.
    pub renew_before_days: Option<Spanned<u64>>,
    /// A PEM file of the root that signed the CA's own HTTPS certificate, for a private or test
    /// CA. Default: the system's trusted roots.
    pub ca_root: Option<Spanned<String>>,
}

/// `[fingerprints]`: the client's TLS handshake (JA4) and HTTP/2 frames against the browser its
/// user agent claims (they exist on the TLS listener and on HTTP/2).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFingerprints {
    /// Weight of `fingerprint/ua_mismatch` (a browser claimed, another known client seen).
    /// Default 40.
    pub mismatch_weight: Option<Spanned<u64>>,
    /// Weight of `fingerprint/browser_without_h2` (a browser claimed over TLS without offering
    /// HTTP/2). Default 30.
    pub no_h2_weight: Option<Spanned<u64>>,
    /// A file of more known clients: lines `ja4|h2, fingerprint, family, browser|library`.
    pub clients: Option<Spanned<String>>,
    /// Send the connection's fingerprints to the upstream as `x-palisade-ja4` and
    /// `x-palisade-h2fp`. Default false.
    pub forward: Option<bool>,
}

/// `[web_bot_auth]`: agents that sign their requests (HTTP Message Signatures, Web Bot Auth).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawWebBotAuth {
    /// Weight of `webbotauth/invalid` (a signature that does not verify). Default 30.
    pub invalid_weight: Option<Spanned<u64>>,
    /// Require a covered `Signature-Agent` dictionary member (protocol-02, strict). Default
    /// false: the legacy string form and an absent header (the key identifies the agent) are
    /// accepted; a present header must be covered and name the agent either way.
    pub require_signature_agent: Option<bool>,
    /// The agents whose signatures are checked.
    #[serde(default)]
    pub agents: Vec<RawSignedAgent>,
    /// Also check agents not listed: the key directory their `Signature-Agent` names is fetched
    /// (https only, bounded, cached, never from a private address). A verified one is
    /// identified by its directory's host. Default false.
    pub discover: Option<bool>,
    /// The bot category a discovered agent counts as once verified. Default `ai_assistant`.
    pub discovered_category: Option<Spanned<String>>,
    /// Keep only directory keys proven by the directory response's own signature (tag
    /// `http-message-signatures-directory`). Default true.
    pub require_signed_directory: Option<bool>,
    /// A PEM file of roots trusted for key directories' HTTPS, beside the public ones (agents
    /// on a private PKI).
    pub directory_ca: Option<Spanned<String>>,
    /// Allow key directories on loopback and private addresses (agents inside your network).
    /// Default false: such a directory is refused, as a request forgery would aim there.
    pub allow_private_directories: Option<bool>,
}

/// `[[web_bot_auth.agents]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignedAgent {
    /// Name, in logs and rules (`bot.name`).
    pub name: Spanned<String>,
    /// The `Signature-Agent` it presents: its key directory's origin, `https://host`.
    pub agent: Spanned<String>,
    /// The bot category it counts as for `[bots.actions]` once verified. Default `ai_assistant`.
    pub category: Option<Spanned<String>>,
    /// A JWKS file with its public keys (`{"keys": [...]}`, as its
    /// `/.well-known/http-message-signatures-directory` serves them). Without it, the keys are
    /// fetched from that directory and kept fresh.
    pub keys: Option<Spanned<String>>,
}

/// `[[tls.certificates]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
    /// Server names it is served for (`*.example.com` for one level of subdomains). Default:
    /// the names the certificate itself lists (subject alternative names).
    #[serde(default)]
    pub names: Vec<Spanned<String>>,
}

/// `[server] trusted_fingerprint_headers`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFingerprintHeaders {
    /// Header with the client's JA4.
    pub ja4: Option<Spanned<String>>,
    /// Header with the client's HTTP/2 fingerprint (Akamai format).
    pub h2: Option<Spanned<String>>,
    /// Header with the client's JA3 (the full string or its MD5), e.g. Cloudflare's
    /// `cf-ja3-hash` or CloudFront's `cloudfront-viewer-ja3-fingerprint`.
    pub ja3: Option<Spanned<String>>,
}

/// `[[upstreams]]`: where requests go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Name routes refer to.
    pub name: Spanned<String>,
    /// Base URL, `http://host:port`.
    pub url: SecretUrl,
    /// `http1` (default) or `h2c` (HTTP/2 with prior knowledge).
    pub protocol: Option<Spanned<String>>,
    /// Idle pooled connections kept per upstream. Default 64.
    pub max_idle_connections: Option<usize>,
    /// Position in its array in the file (set by the loader, for error paths).
    #[serde(skip)]
    pub index: usize,
}

/// A route's match conditions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Path pattern: exact, `{param}` segments, trailing `/*`.
    pub path: Spanned<String>,
    /// Methods; empty or absent means all.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
}

/// `[[routes]]`: first match wins.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name (used by limits, logs and metrics).
    pub name: Spanned<String>,
    /// Who calls it: `"auto"` (default: by `Accept`), `"api"` (never an HTML challenge page)
    /// or `"browser"`.
    pub client: Option<Spanned<String>>,
    /// The challenge a browser gets here: `"pow"`, `"altcha"` or `"captcha"` (default
    /// `[challenge] kind`).
    pub challenge: Option<Spanned<String>>,
    /// The CAPTCHA score this route needs (reCAPTCHA v3, hCaptcha Enterprise), 0.0-1.0: e.g.
    /// 0.8 for payments, 0.3 for a newsletter. Default `[challenge.captcha] min_score`.
    pub captcha_min_score: Option<Spanned<f64>>,
    /// What the route matches.
    #[serde(rename = "match")]
    pub match_: RawMatch,
    /// Upstream name; default the first upstream.
    pub upstream: Option<Spanned<String>>,
    /// `none` (default), `api_key`, `jwt` or `any` (either).
    pub auth: Option<Spanned<String>>,
    /// Scopes an API key or token must hold (`items:*` grants `items:read`).
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    /// Dollars a request is charged against spend quotas when the upstream reports nothing.
    pub spend_usd: Option<Spanned<f64>>,
    /// Response header in which the upstream reports a request's spend in dollars.
    pub spend_header: Option<Spanned<String>>,
    /// Dollars held against spend quotas while a request is in flight. Default `spend_usd`.
    /// Set it to the most one request can cost when the upstream reports the spend.
    pub spend_reserve_usd: Option<Spanned<f64>>,
    /// Units a request costs up front for cost-counting limits. Default 1.
    pub cost: Option<Spanned<u64>>,
    /// Response header in which the upstream reports a request's real cost.
    pub cost_header: Option<Spanned<String>>,
    /// Ambiguous path features forwarded on this route instead of refused with 400:
    /// `encoded_slash` (`%2F`), `backslash` (`\` or `%5C`), `semicolon` (`;` matrix
    /// parameters). Allow one only when the upstream reads it as data, not as a separator.
    #[serde(default)]
    pub allow_in_path: Vec<Spanned<String>>,
    /// Position in its array in the file (set by the loader, for error paths).
    #[serde(skip)]
    pub index: usize,
}

/// `[[limits]]`: every matching limit applies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Unique name; shown in RateLimit headers, logs and metrics.
    pub name: Spanned<String>,
    /// Key dimensions; empty means one global counter.
    #[serde(default)]
    pub key: Vec<Spanned<String>>,
    /// Route names it applies to; absent means all routes.
    pub routes: Option<Vec<Spanned<String>>>,
    /// Methods it applies to; absent means all.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// `<count>/<period>`.
    pub rate: Spanned<String>,
    /// Units that may be spent at once (GCRA). Default: the rate's count.
    pub burst: Option<Spanned<u64>>,
    /// `gcra` (default) or `sliding_window`.
    pub algorithm: Option<Spanned<String>>,
    /// `limit` (429, default), `delay`, `challenge` (a challenge instead of 429: a client that
    /// solves it goes on while its clearance lasts) or `shadow`.
    pub action: Option<Spanned<String>>,
    /// With `action = "delay"`: longest hold. Default `1s`.
    pub max_delay: Option<Spanned<String>>,
    /// With `action = "delay"`: most requests held at once. Default 1000.
    pub max_queue: Option<Spanned<u64>>,
    /// `requests` (default) or `cost`.
    pub unit: Option<Spanned<String>>,
    /// Advertise in RateLimit headers. Default true, but false for a limit without a key
    /// (one counter for every client: the API's capacity, which is not disclosed).
    pub headers: Option<bool>,
    /// Risk-score weight when exceeded (0-100). Default 50.
    pub weight: Option<Spanned<u64>>,
    /// Most keys tracked; default `[server] max_tracked_keys`.
    pub max_entries: Option<Spanned<u64>>,
    /// Position in its array in the file (set by the loader, for error paths).
    #[serde(skip)]
    pub index: usize,
}

/// `[[quotas]]`: daily budgets per API key or account, reset at midnight UTC.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// Unique name; shown in RateLimit headers, logs and `/_palisade/usage`.
    pub name: Spanned<String>,
    /// `["api_key"]` or `["account"]`.
    pub key: Vec<Spanned<String>>,
    /// Route names it applies to; absent means all routes.
    pub routes: Option<Vec<Spanned<String>>>,
    /// Requests per UTC day.
    pub requests_per_day: Option<Spanned<u64>>,
    /// Dollars per UTC day (route `spend_usd` or the upstream's `spend_header`).
    pub spend_per_day_usd: Option<Spanned<f64>>,
    /// Position in its array in the file (set by the loader, for error paths).
    #[serde(skip)]
    pub index: usize,
}

/// `[keys]`: how API keys are read and guarded.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Headers a key is read from, in order. `authorization` means `Bearer <key>`.
    /// Default `["authorization", "x-api-key"]`.
    pub headers: Option<Vec<Spanned<String>>>,
    /// Most active keys per account. Default 10.
    pub max_keys_per_account: Option<Spanned<u64>>,
    /// Failed attempts (bad keys or tokens) one client IP may make; beyond it the client is
    /// blocked on authenticated routes until the rate replenishes. Default `10/1m`.
    pub max_failures: Option<Spanned<String>>,
    /// How long a rotated key stays valid. Default `24h`.
    pub rotation_grace: Option<Spanned<String>>,
    /// How far a signed request's timestamp may be from now. Default `5m`.
    pub signature_window: Option<Spanned<String>>,
    /// Most request nonces remembered (replay protection). Default 100000.
    pub max_nonces: Option<Spanned<u64>>,
    /// What the upstream gets of a presented API key: `strip` (default: the raw key never
    /// leaves the gateway; a verified key's id and account come as `X-Palisade-Key-Id` and
    /// `X-Palisade-Account`) or `keep` (forwarded as sent, and the headers too).
    pub forward: Option<Spanned<String>>,
}

/// A JWT verification key given in the config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKey {
    /// Key id matched against the token's `kid`; optional when only one key fits.
    pub kid: Option<String>,
    /// `HS256`, `RS256`, `ES256` or `EdDSA`.
    pub algorithm: Spanned<String>,
    /// HS256 shared secret, or `env:NAME` to read it from the environment.
    pub secret: Option<Secret>,
    /// PEM public key file (RS256, ES256, EdDSA).
    pub pem_file: Option<Spanned<String>>,
}

/// `[jwt]`: bearer-token verification for `auth = "jwt"` routes.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Header the token is read from (`Bearer <token>`). Default `authorization`.
    pub header: Option<Spanned<String>>,
    /// Accepted algorithms. Default: those of the configured keys.
    pub algorithms: Option<Vec<Spanned<String>>>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must match).
    pub audience: Option<Vec<String>>,
    /// Clock skew allowed for `exp` and `nbf`. Default `30s`.
    pub leeway: Option<Spanned<String>>,
    /// Claims that become identity dimensions `jwt:<claim>`. Default `["sub"]`.
    pub claims: Option<Vec<Spanned<String>>>,
    /// Claim holding the account (the `account` dimension). Optional.
    pub account_claim: Option<String>,
    /// Claim holding space-separated scopes. Default `scope`.
    pub scope_claim: Option<String>,
    /// Keys given inline.
    #[serde(default)]
    pub keys: Vec<RawJwtKey>,
    /// A JWKS document on disk (reloaded when it changes).
    pub jwks_file: Option<Spanned<String>>,
    /// A JWKS URL (https:// or http://), fetched at start and refreshed.
    pub jwks_url: Option<SecretUrl>,
    /// PEM file of CA certificates for the JWKS URL's server (default: the public web PKI).
    pub jwks_ca_file: Option<Spanned<String>>,
    /// How often the JWKS URL is fetched again. Default `10m`.
    pub jwks_refresh: Option<Spanned<String>>,
}

/// `[bots]`: the built-in bot catalog and what to do per category.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBots {
    /// Risk-score weight of a bot signal. Default 20.
    pub weight: Option<Spanned<u64>>,
    /// User agents whose classification is remembered. Default 10000.
    pub cache_entries: Option<Spanned<u64>>,
    /// Category -> `allow`, `allow_verified`, `signal` (default), `tag`, `challenge` or `block`.
    #[serde(default)]
    pub actions: BTreeMap<String, Spanned<String>>,
    /// Bots whose claims are verified, beside (or, by name, instead of) the built-in ones.
    #[serde(default)]
    pub verify: Vec<RawVerifiedBot>,
    /// Verify the major crawlers out of the box (Googlebot, Bingbot, Applebot, DuckDuckBot,
    /// Yandex, Baidu, Amazonbot, PetalBot, OpenAI's and Perplexity's agents) by their operators'
    /// published reverse-DNS domains and, where loaded, ranges. Default true.
    pub verify_builtin: Option<bool>,
    /// Published ranges for the built-in bots, by name: a file (`gptbot = "/etc/palisade/gptbot.json"`,
    /// the `{"prefixes": [...]}` JSON their operators publish, or a CIDR list; reloaded when it
    /// changes), or fetched by the gateway on a schedule (`gptbot = { refresh = "24h" }` from the
    /// operator's published URL, or `{ url = "...", refresh = "6h" }`), the last good copy kept in
    /// the data dir. A bot that publishes only ranges is unverifiable until they are given.
    #[serde(default)]
    pub ranges: BTreeMap<String, Spanned<RawRangesSource>>,
    /// What a claimant gets while its DNS check is pending: `allow` (default), `challenge`,
    /// `block`.
    pub pending: Option<Spanned<String>>,
    /// What a false claimant gets: `block` (default), `challenge`, `signal`.
    pub spoofed: Option<Spanned<String>>,
    /// DNS servers for the reverse lookups, `ip:port`; default: the system's resolv.conf.
    #[serde(default)]
    pub dns_servers: Vec<Spanned<String>>,
}

/// Where a built-in bot's published ranges come from: a file name, or a table.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RawRangesSource {
    /// A file, relative to the config.
    File(String),
    /// Fetched by the gateway.
    Fetched(RawRangesFetch),
}

// By hand rather than `untagged`: an untagged enum buffers the value and loses the spans its
// fields need (and `Spanned` then fails to deserialize at all).
impl<'de> Deserialize<'de> for RawRangesSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawRangesSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a file name or a table { url, refresh }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawRangesSource::File(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<Self::Value, A::Error> {
                RawRangesFetch::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RawRangesSource::Fetched)
            }
        }
        d.deserialize_any(V)
    }
}

/// `[bots.ranges] NAME = { url = ..., refresh = ... }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRangesFetch {
    /// `http(s)://` URL of the ranges document. Default: where the bot's operator publishes it.
    pub url: Option<Spanned<String>>,
    /// How often to fetch it again. Default `24h`; at least `1s`.
    pub refresh: Option<Spanned<String>>,
}

/// `[[bots.verify]]`: a bot whose claim is checked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerifiedBot {
    /// Name (`googlebot`), in logs.
    pub name: Spanned<String>,
    /// Regular expression (case-insensitive) matching user agents that claim to be it.
    pub claims: Spanned<String>,
    /// Published ranges: files in the `{"prefixes": [...]}` format or CIDR lists.
    #[serde(default)]
    pub ranges: Vec<Spanned<String>>,
    /// Domains its reverse DNS names end in (forward-confirmed).
    #[serde(default)]
    pub rdns: Vec<String>,
}

/// `[headers]`: header-consistency checks for clients that claim a browser.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    /// Risk-score weight of each inconsistency. Default 15.
    pub weight: Option<Spanned<u64>>,
    /// Requests reach the site over HTTPS (Palisade behind a TLS terminator), so browsers send
    /// client hints and fetch metadata. Default true.
    pub assume_https: Option<bool>,
}

/// `[[honeypots]]`: trap paths and decoy keys that only automated clients find.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHoneypot {
    /// Name, for logs (`honeypot/<name>`). Default `trap-<n>`.
    pub name: Option<Spanned<String>>,
    /// Trap paths: exact, or a prefix ending in `/*`.
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// Decoy API keys (published somewhere only scrapers read); presenting one is a hit.
    #[serde(default)]
    pub decoy_keys: Vec<Secret>,
    /// How long a hit flags the client; doubled for each repeat. Default `1h`.
    pub block_for: Option<Spanned<String>>,
    /// `block` (default) or `score`.
    pub action: Option<Spanned<String>>,
    /// With `action = "score"`: the signal's weight. Default 50.
    pub weight: Option<Spanned<u64>>,
    /// Which identities of the client are flagged. Default `["ip", "api_key"]`.
    pub flag: Option<Vec<Spanned<String>>>,
    /// Serve `/robots.txt` disallowing these paths. Default false.
    pub robots_txt: Option<bool>,
    /// Position in its array in the file (set by the loader, for error paths).
    #[serde(skip)]
    pub index: usize,
}

/// `[intel]`: IP intelligence from files the operator keeps fresh.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIntel {
    /// iptoasn TSV (`ip2asn-combined.tsv`, `ip2asn-v4.tsv`): network, owner and country.
    pub asn_db: Option<Spanned<String>>,
    /// ASN category lists: `builtin` (the shipped starter list) and/or files of
    /// `AS<number> <hosting|vpn|mobile|residential>` lines. Default `["builtin"]`.
    pub asn_categories: Option<Vec<Spanned<String>>>,
    /// Tor exit list: addresses one per line, or the Tor project's `exit-addresses` format.
    pub tor_exits: Option<Spanned<String>>,
    /// MaxMind-format databases (GeoLite2 / DB-IP lite, ASN and country); used for what
    /// `asn_db` does not cover.
    pub mmdb: Option<Vec<Spanned<String>>>,
    /// Signal weights: `hosting` (default 20), `vpn` (20), `mobile` (0), `residential` (0),
    /// `tor` (40).
    #[serde(default)]
    pub weights: BTreeMap<String, Spanned<u64>>,
}

/// A conditional allow entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConditionalAllow {
    /// The network (CIDR or address).
    pub net: Spanned<String>,
    /// Paths the entry covers (exact, `{param}`, trailing `/*`); absent means all.
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// A header the request must carry: `name` (present) or `name: value` (exact value).
    pub header: Option<Spanned<String>>,
}

/// `[lists]`: static allow and deny lists.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLists {
    /// CIDRs, addresses or `file:/path` (one per line, `#` comments).
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Same; allowlisted clients bypass every limit.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Allow entries with conditions: `{ net = "198.51.100.0/24", paths = ["/partner/*"],
    /// header = "x-partner: acme" }`; the client is allowlisted only when every one holds.
    #[serde(default)]
    pub allow_if: Vec<RawConditionalAllow>,
}

/// `[scoring]`: risk score thresholds.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawScoring {
    /// Default 30.
    pub tag_at: Option<Spanned<u64>>,
    /// Default 60.
    pub challenge_at: Option<Spanned<u64>>,
    /// Default 90.
    pub block_at: Option<Spanned<u64>>,
    /// Default 40.
    pub delay_at: Option<Spanned<u64>>,
    /// Delay steps of progressive throttling. Default `["1s", "5s", "30s"]`.
    pub throttle: Option<Vec<Spanned<String>>>,
    /// Good behaviour that takes one step off. Default `2m`.
    pub relax_after: Option<Spanned<String>>,
    /// How long a client past the last step is blocked; `0s`: refused, not blocked. Default
    /// `10m`.
    pub throttle_block_for: Option<Spanned<String>>,
    /// Most requests of one client (its key, else its address) held by throttling at once;
    /// more are refused with 429 while those wait, so that concurrency buys no extra requests.
    /// Default 2.
    pub max_held: Option<Spanned<u64>>,
    /// Thresholds while a route is in attack mode.
    pub under_attack: Option<RawThresholds>,
}

/// `[scoring.under_attack]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    /// Default 20.
    pub tag_at: Option<Spanned<u64>>,
    /// Default 30.
    pub delay_at: Option<Spanned<u64>>,
    /// Default 45.
    pub challenge_at: Option<Spanned<u64>>,
    /// Default 75.
    pub block_at: Option<Spanned<u64>>,
}

/// `[store]`: where shared state lives.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `embedded` (default) or `redis`.
    pub backend: Option<Spanned<String>>,
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS); `env:VAR` reads it from
    /// the environment.
    pub url: Option<SecretUrl>,
    /// Redis Cluster nodes (instead of `url`).
    pub nodes: Option<Vec<SecretUrl>>,
    /// Longest a request waits on the store. Default `5ms`.
    pub timeout: Option<Spanned<String>>,
    /// `local` (default), `allow` or `deny`.
    pub on_store_error: Option<Spanned<String>>,
    /// `strict` (default) or `batched`.
    pub sync: Option<Spanned<String>>,
    /// Batched mode: how often counts are reconciled. Default `100ms`.
    pub batch_interval: Option<Spanned<String>>,
    /// Key prefix. Default `palisade`.
    pub prefix: Option<String>,
}

/// `[[rules]]`: an explicit rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Name (`rule/<name>` in logs). Required.
    pub name: Spanned<String>,
    /// CEL expression; the rule matches when it is true. Required.
    pub when: Spanned<String>,
    /// `allow` | `tag` | `delay` | `challenge` | `block` | `score`. Required.
    pub action: Spanned<String>,
    /// For `score`: the signal's weight (default 20).
    pub weight: Option<Spanned<u64>>,
    /// Log as `would_<action>`, never enforce. Default false.
    pub shadow: Option<bool>,
    /// Position in the file.
    #[serde(skip)]
    pub index: usize,
}

/// `[behaviour]`: behaviour over time and across identities.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBehaviour {
    /// Default true.
    pub enabled: Option<bool>,
    /// Dimensions with feature tables. Default: ip, ip/24, api_key, account, session, hfp,
    /// asn (`ja4h`, under the FoxIO licence, only when listed).
    pub track: Option<Vec<Spanned<String>>>,
    /// Most identities per dimension. Default 50000.
    pub max_entries: Option<Spanned<u64>>,
    /// Long window. Default `5m`.
    pub window: Option<Spanned<String>>,
    /// Short window (request rate). Default `10s`.
    pub short_window: Option<Spanned<String>>,
    /// Half-life of a remembered signal. Default `2m`.
    pub half_life: Option<Spanned<String>>,
    /// Session sources, first present wins: `cookie:<name>`, `header:<name>`, `jwt:<claim>`,
    /// `api_key`. Default `["api_key"]`.
    pub session: Option<Vec<Spanned<String>>>,
    /// Query parameters that carry ids. Default `["id"]`.
    pub id_params: Option<Vec<String>>,
    /// Detector thresholds.
    #[serde(default)]
    pub thresholds: BTreeMap<String, Spanned<f64>>,
    /// Signal weights by name.
    #[serde(default)]
    pub weights: BTreeMap<String, Spanned<u64>>,
    /// Credential stuffing.
    pub stuffing: Option<RawStuffing>,
    /// Routes' resource-identifying parameters.
    #[serde(default)]
    pub cache_keys: Vec<RawCacheKey>,
    /// Flow rules.
    #[serde(default)]
    pub flows: Vec<RawFlow>,
    /// Baselines and attack mode.
    pub attack: Option<RawAttack>,
}

/// `[behaviour.stuffing]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStuffing {
    /// The login route.
    pub route: Spanned<String>,
    /// Answers that mean a failed login. Default `[401, 403]`.
    pub failure_status: Option<Vec<Spanned<u64>>>,
    /// Body field with the username (JSON or form). Default `username`.
    pub username_field: Option<String>,
    /// Default 10.
    pub min_failures: Option<u32>,
    /// Default 5.
    pub min_usernames: Option<u32>,
    /// Default 0.8.
    pub failure_share: Option<Spanned<f64>>,
    /// Default 5.
    pub sources_per_username: Option<u32>,
    /// Default 100000.
    pub max_usernames: Option<u64>,
    /// Most body bytes read to find the username. Default `16KiB`.
    pub max_body: Option<Spanned<String>>,
}

/// `[[behaviour.cache_keys]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheKey {
    /// The route.
    pub route: Spanned<String>,
    /// Parameters that select the resource.
    #[serde(default)]
    pub params: Vec<String>,
}

/// `[[behaviour.flows]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    /// Name (signal `flow/<name>`).
    pub name: Spanned<String>,
    /// The guarded route.
    pub route: Spanned<String>,
    /// The route that must come first.
    pub after: Spanned<String>,
    /// Default `1h`.
    pub within: Option<Spanned<String>>,
    /// Default `0s`.
    pub min_gap: Option<Spanned<String>>,
    /// Default false.
    pub anonymous_only: Option<bool>,
    /// Default 20.
    pub weight: Option<Spanned<u64>>,
}

/// `[behaviour.attack]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAttack {
    /// Default true.
    pub enabled: Option<bool>,
    /// Default `10s`.
    pub bucket: Option<Spanned<String>>,
    /// Default 6.
    pub warmup: Option<u32>,
    /// Default 4.0.
    pub rate_factor: Option<Spanned<f64>>,
    /// Default 50.
    pub min_requests: Option<u32>,
    /// Default 0.3.
    pub error_increase: Option<Spanned<f64>>,
    /// Default 3.
    pub enter_after: Option<u32>,
    /// Default 6.
    pub leave_after: Option<u32>,
    /// `route` (default) or `gateway`.
    pub scope: Option<Spanned<String>>,
}

/// `[log]`: the decision log.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `stdout` (default), `off`, or a file path.
    pub decisions: Option<String>,
    /// Share of allowed requests logged, 0.0-1.0. Default 1.0. Everything else is always logged.
    pub sample_allow: Option<Spanned<f64>>,
    /// Decisions kept in memory for the admin API. Default 1000.
    pub recent: Option<Spanned<u64>>,
}

/// A test request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestRequest {
    /// Default `GET`.
    pub method: Option<Spanned<String>>,
    /// Path and optional query.
    pub path: Spanned<String>,
    /// Client IP. Default `198.51.100.1`.
    pub ip: Option<Spanned<String>>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Pretend the request carries a valid API key with these properties.
    pub api_key: Option<RawTestKey>,
    /// Send the request this many times (at the same instant, or `every` apart); `expect`
    /// applies to the last. `{n}` in the path counts the sends from 1.
    pub repeat: Option<u64>,
    /// Space the sends this far apart, e.g. `1s`; later cases run after them.
    pub every: Option<Spanned<String>>,
}

/// A pretend API key for a test request.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTestKey {
    /// Key id. Default `test`.
    pub id: Option<String>,
    /// Account.
    pub account: Option<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// What a test expects.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestExpect {
    /// Logged action: `allow`, `tag`, `delay`, `challenge`, `limit`, `block`, or `would_...`.
    pub action: Spanned<String>,
    /// Rule, e.g. `limit/per-ip`.
    pub rule: Option<String>,
}

/// `[[tests]]`: request -> expected decision, run by `palisade check`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    /// Name shown in reports. Default: method and path.
    pub name: Option<String>,
    /// The request.
    pub request: RawTestRequest,
    /// The expectation.
    pub expect: RawTestExpect,
    /// Position in its array in the file (set by the loader, for error paths).
    #[serde(skip)]
    pub index: usize,
}

/// The whole file. Sections are deserialised one by one (see [`crate::compile`]).
#[derive(Debug, Clone, Serialize, Default)]
pub struct RawConfig {
    /// `[server]`.
    pub server: RawServer,
    /// `[[upstreams]]`.
    pub upstreams: Vec<RawUpstream>,
    /// `[[routes]]`.
    pub routes: Vec<RawRoute>,
    /// `[[limits]]`.
    pub limits: Vec<RawLimit>,
    /// `[[quotas]]`.
    pub quotas: Vec<RawQuota>,
    /// `[keys]`.
    pub keys: RawKeys,
    /// `[jwt]`.
    pub jwt: Option<RawJwt>,
    /// `[bots]`.
    pub bots: Option<RawBots>,
    /// `[headers]`.
    pub headers: Option<RawHeaders>,
    /// `[[honeypots]]`.
    pub honeypots: Vec<RawHoneypot>,
    /// `[intel]`.
    pub intel: Option<RawIntel>,
    /// `[behaviour]`.
    pub behaviour: Option<RawBehaviour>,
    /// `[[rules]]`.
    pub rules: Vec<RawRule>,
    /// `[store]`.
    pub store: RawStore,
    /// `[tls]`.
    pub tls: Option<RawTls>,
    /// `[fingerprints]`.
    pub fingerprints: Option<RawFingerprints>,
    /// `[web_bot_auth]`.
    pub web_bot_auth: Option<RawWebBotAuth>,
    /// `[challenge]`.
    pub challenge: Option<RawChallenge>,
    /// `[decision]`.
    pub decision: Option<RawDecision>,
    /// `[openapi]`.
    pub openapi: Option<RawOpenApi>,
    /// `[probes]`.
    pub probes: Option<RawProbes>,
    /// `[lists]`.
    pub lists: RawLists,
    /// `[scoring]`.
    pub scoring: RawScoring,
    /// `[log]`.
    pub log: RawLog,
    /// `[[tests]]`.
    pub tests: Vec<RawTest>,
    /// Names of upstreams and routes whose table failed to parse (already reported), so that
    /// references to them are not reported a second time.
    #[serde(skip)]
    pub broken_names: Vec<String>,
}

/// Elements of array sections, which remember their position in the file.
pub trait Indexed {
    /// Records the element's position.
    fn set_index(&mut self, index: usize);
}

macro_rules! indexed {
    ($($t:ty),*) => {$(
        impl Indexed for $t {
            fn set_index(&mut self, index: usize) {
                self.index = index;
            }
        }
    )*};
}

indexed!(
    RawUpstream,
    RawRoute,
    RawLimit,
    RawQuota,
    RawHoneypot,
    RawRule,
    RawTest
);

/// `[challenge]`: how the `challenge` action is put to clients — a proof-of-work a browser
/// solves on a page (or waits out without JavaScript), or an API client solves from a
/// `WWW-Authenticate: PoW` answer — and the clearance a solved challenge earns.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawChallenge {
    /// What a browser is given: `"pow"` (default: Palisade's own page), `"altcha"` (the ALTCHA
    /// widget, self-hosted) or `"captcha"` (the provider of `[challenge.captcha]`). Routes may
    /// choose their own (`[[routes]] challenge`).
    pub kind: Option<Spanned<String>>,
    /// The ALTCHA widget script to serve (from npm `altcha`: `dist/altcha.umd.cjs`).
    pub altcha_widget: Option<Spanned<String>>,
    /// A hosted CAPTCHA: Cloudflare Turnstile, hCaptcha or Google reCAPTCHA v3.
    pub captcha: Option<RawCaptcha>,
    /// Leading zero bits the proof-of-work needs at the challenge threshold. Default 16
    /// (about 65,000 hashes: well under a second in a browser).
    pub difficulty: Option<Spanned<u64>>,
    /// Bits at most, reached as the score climbs towards the block threshold. Default 20.
    pub max_difficulty: Option<Spanned<u64>>,
    /// How long a challenge may take to solve. Default `5m`.
    pub ttl: Option<Spanned<String>>,
    /// How long a clearance lasts. Default `1h`.
    pub clearance_ttl: Option<Spanned<String>>,
    /// Points a clearance takes off the score while it lasts. Default 30.
    pub discount: Option<Spanned<u64>>,
    /// What a clearance is bound to: any of `ip`, `ip/24`, `user_agent`, `ja4`, `api_key`.
    /// Default `["ip/24", "user_agent"]`.
    pub bind: Option<Vec<Spanned<String>>>,
    /// The no-JavaScript path: the page refreshes after this wait and earns a shorter
    /// clearance. Default `5s`; `"0s"` turns it off.
    pub nojs_wait: Option<Spanned<String>>,
    /// The no-JavaScript clearance's lifetime. Default `15m`.
    pub nojs_clearance_ttl: Option<Spanned<String>>,
    /// Weights of the browser signals the page reports (0 switches one off):
    /// `webdriver` (default 40), `headless` (40), `no_languages` (15), `no_interaction` (0),
    /// `tz_mismatch` (10: the browser's time zone is not one of the client network's country,
    /// by the system's `zone1970.tab`), `odd_screen` (15: no screen, or one no device has).
    #[serde(default)]
    pub browser_signals: std::collections::BTreeMap<String, Spanned<u64>>,
    /// Texts of the page, to override per language: `title`, `body`, `solving`, `done`,
    /// `nojs`, `post`.
    #[serde(default)]
    pub texts: std::collections::BTreeMap<String, String>,
    /// The texts in other languages, chosen by the browser's `Accept-Language`:
    /// `[challenge.locales.de]`, `[challenge.locales.pt-BR]`, with the same names as `texts`.
    #[serde(default)]
    pub locales: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// `[challenge.captcha]`: a hosted CAPTCHA checked through its provider's siteverify API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCaptcha {
    /// `"turnstile"`, `"hcaptcha"` or `"recaptcha"` (v3, scored).
    pub provider: Spanned<String>,
    /// The site key the widget shows.
    pub site_key: Spanned<String>,
    /// The secret key siteverify takes (`env:NAME` reads the environment).
    pub secret: crate::secret::Secret,
    /// The siteverify URL. Default the provider's.
    pub verify_url: Option<Spanned<String>>,
    /// Time siteverify has to answer. Default `3s`.
    pub timeout: Option<Spanned<String>>,
    /// When siteverify cannot be reached or answers nonsense: `"allow"` (fail open: a
    /// clearance is given) or `"deny"` (default: fail closed, challenged again).
    pub on_error: Option<Spanned<String>>,
    /// The score a solution needs (providers that score), 0.0-1.0. Default 0.5.
    pub min_score: Option<Spanned<f64>>,
    /// The action name the widget is run with and siteverify must report. Default `palisade`.
    pub action: Option<Spanned<String>>,
}

/// `[openapi]`: the API's contract, enforced at the edge.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenApi {
    /// The spec file (OpenAPI 3.0 or 3.1, YAML or JSON), relative to the config.
    pub spec: Spanned<String>,
    /// `enforce` (default: refuse what the spec does not describe) or `shadow` (count, forward).
    pub mode: Option<Spanned<String>>,
    /// The path prefix the spec's paths live under. Default: the path of its first server URL.
    pub base_path: Option<Spanned<String>>,
    /// Largest JSON request body read to validate it. Default `1MiB`.
    pub max_body: Option<Spanned<String>>,
    /// Weight of the `openapi/<kind>` signal a breach adds to the score (every mode but
    /// shadow): a client that keeps sending what the spec does not describe is throttled.
    /// Default 30.
    pub weight: Option<Spanned<u64>>,
}

/// `[probes]`: injection probes (SQL, script, traversal, command, template, Log4j lookups,
/// SSRF) in the path, query, chosen headers, cookies and JSON or form bodies.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawProbes {
    /// Default true (the section's presence turns it on).
    pub enabled: Option<bool>,
    /// Classes looked for. Default all: `sqli`, `xss`, `traversal`, `command`, `template`,
    /// `log4shell`, `ssrf`.
    pub classes: Option<Vec<Spanned<String>>>,
    /// What a hit does, per class: `signal` (default: its weight joins the score) or `block`.
    #[serde(default)]
    pub actions: BTreeMap<String, Spanned<String>>,
    /// Signal weight of a hit. Default 40 (the default `delay_at`: a prober is throttled,
    /// then blocked, one step per probe; one honest look-alike costs a second).
    pub weight: Option<Spanned<u64>>,
    /// Weights per class, over `weight`.
    #[serde(default)]
    pub weights: BTreeMap<String, Spanned<u64>>,
    /// Headers scanned for every class. Default `["user-agent", "referer",
    /// "x-forwarded-host", "x-original-url", "x-rewrite-url"]`; every header is scanned for
    /// Log4j lookups.
    pub headers: Option<Vec<Spanned<String>>>,
    /// Scan cookie values. Default true.
    pub cookies: Option<bool>,
    /// Scan JSON and form bodies (with a `Content-Length` up to `max_body`). Default true.
    pub body: Option<bool>,
    /// Largest body scanned; a larger one is forwarded unscanned. Default `64KiB`.
    pub max_body: Option<Spanned<String>>,
}

/// `[decision]`: the decision endpoint for fronts that already proxy (nginx `auth_request`,
/// Caddy `forward_auth`, Traefik `forwardAuth`).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDecision {
    /// Its path on the proxy listener. Default `/_palisade/authz`.
    pub path: Option<Spanned<String>>,
    /// Address of the Envoy external authorization gRPC service
    /// (`envoy.service.auth.v3.Authorization`), e.g. `127.0.0.1:9191`.
    pub ext_authz: Option<Spanned<String>>,
    /// Address of the HAProxy SPOE agent (SPOP), e.g. `127.0.0.1:12345`.
    pub spoe: Option<Spanned<String>>,
    /// `[decision.feedback]`: the front's access log, sent back so that behaviour sees the
    /// upstream's answers.
    pub feedback: Option<RawFeedback>,
}

/// `[decision.feedback]`: where the front sends its access log lines (syslog over UDP or a unix
/// datagram socket; JSON lines carrying Palisade's request id), and how long a decision waits
/// for its line.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFeedback {
    /// UDP address to listen on, e.g. `127.0.0.1:5514`.
    pub udp: Option<Spanned<String>>,
    /// Unix datagram socket path to listen on (nginx `syslog:server=unix:PATH`).
    pub unix: Option<Spanned<String>>,
    /// How long an allowed decision waits for its answer's line. Default `2m`.
    pub wait: Option<Spanned<String>>,
    /// Decisions waiting at once. Default 100000.
    pub max_pending: Option<Spanned<u64>>,
}
