//! Request facts: what the gateway observed about one request, borrowed, not copied.

use std::net::IpAddr;

use http::{HeaderMap, Method};

use crate::clock::Nanos;
use crate::model::principal::Auth;

/// Everything the engine may look at for one request. The gateway has already bounded header
/// count and size before building this.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// The path, not decoded, without the query.
    pub path: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// Request headers as received (hop-by-hop ones included).
    pub headers: &'a HeaderMap,
    /// The client address, derived from the peer and trusted proxies' headers.
    pub client_ip: IpAddr,
    /// The address of the TCP peer.
    pub peer_ip: IpAddr,
    /// Monotonic time of arrival.
    pub now: Nanos,
    /// Wall-clock time of arrival, in milliseconds since the Unix epoch (for daily quotas and
    /// key expiry).
    pub unix_ms: u64,
    /// Who is calling, as the gateway verified it.
    pub auth: Auth<'a>,
    /// The HTTP version the request arrived with.
    pub version: http::Version,
    /// The request's JA4H fingerprint, when the gateway computed it (opt-in: FoxIO licence).
    pub ja4h: Option<&'a str>,
    /// The request's header fingerprint (`palisade_intel::hfp`), when the gateway computed it.
    pub hfp: Option<&'a str>,
    /// What the connection's TLS handshake showed, when Palisade terminated TLS.
    pub tls: Option<TlsFacts<'a>>,
    /// The connection's HTTP/2 client fingerprint (Akamai format), on HTTP/2.
    pub h2fp: Option<&'a str>,
    /// The client's JA3 (TLS, Salesforce's format or its MD5), as a trusted front reported it.
    pub ja3: Option<&'a str>,
    /// A valid clearance the client presented (a challenge it solved), as the gateway checked
    /// it: its score discount. A challenge is not put to it again while it lasts.
    pub clearance: Option<Clearance>,
    /// A Web Bot Auth signature the gateway checked: the agent and whether it verified.
    pub signed_agent: Option<SignedAgent<'a>>,
    /// What IP intelligence knows about the client's address (network, country, kind).
    pub ip_info: Option<&'a palisade_intel::ipinfo::IpInfo>,
    /// A verified-bot claim the user agent makes: the index of the bot in `[bots]`'s verified
    /// list, and what the gateway found out so far.
    pub bot_verification: Option<(usize, palisade_intel::verify::VerifyStatus)>,
    /// The username a login request names (read from the body field `[behaviour.stuffing]`
    /// configures). The engine only ever keeps a keyed hash of it.
    pub username: Option<&'a [u8]>,
    /// Injection probes the gateway found in the request (`[probes]`), at most one per class.
    pub probes: &'a [palisade_intel::probes::Hit],
    /// How the request breaks the API's contract (`[openapi]`), as its rule
    /// (`openapi/invalid`, …), when it does.
    pub contract: Option<&'static str>,
}

/// What a connection's TLS handshake showed (Palisade at the TLS edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFacts<'a> {
    /// JA4 of the ClientHello.
    pub ja4: &'a str,
    /// The negotiated version, `"1.2"` or `"1.3"`.
    pub version: &'a str,
    /// The server name the client asked for (SNI).
    pub server_name: Option<&'a str>,
    /// The negotiated application protocol (`"h2"`, `"http/1.1"`).
    pub alpn: Option<&'a str>,
    /// The verified client certificate's identity (mutual TLS).
    pub client: Option<&'a str>,
}

/// A request signed under Web Bot Auth (HTTP Message Signatures, RFC 9421), as the gateway
/// checked it against the agent's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedAgent<'a> {
    /// The agent's name from the config (or its Signature-Agent host).
    pub name: &'a str,
    /// The bot category it is treated as when verified.
    pub category: palisade_intel::Category,
    /// `Ok` when the signature verified and every protocol rule held; else why not.
    pub outcome: Result<(), &'static str>,
}

/// A solved challenge's clearance, as the gateway verified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clearance {
    /// Points taken off the score.
    pub discount: u8,
    /// How it was earned: `"pow"` or `"wait"` (the no-JavaScript path).
    pub level: &'static str,
    /// Weights of the browser signals the challenge page reported, in the order of
    /// [`BROWSER_SIGNALS`] (0: not seen, or switched off).
    pub signals: [u8; BROWSER_SIGNALS.len()],
}

/// The browser signals a challenge page reports, by name.
pub const BROWSER_SIGNALS: [&str; 6] = [
    "browser/webdriver",
    "browser/headless",
    "browser/no_languages",
    "browser/no_interaction",
    "browser/tz_mismatch",
    "browser/odd_screen",
];
