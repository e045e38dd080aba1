//! Response feedback (`[decision.feedback]`): when a front asks Palisade and then proxies the
//! request itself, Palisade never sees the upstream's answer, yet behaviour needs it (error
//! shares, failed logins, 429s ignored, reported cost and spend). The front sends its access log
//! here instead — nginx `access_log syslog:`, HAProxy `log`, Caddy's `net` log output — one JSON
//! object per line or datagram, with or without a syslog header, naming Palisade's request id.
//! An allowed decision waits (bounded, `wait`) for its line; the line then feeds behaviour and
//! settles cost and spend as an answer seen by the proxy would.
//!
//! Lines come from the network: every field is bounded and optional, nothing is trusted beyond
//! matching a decision that is waiting, and a datagram that is not a line we know is counted,
//! never fatal.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_engine::{Awaited, Clock as _};

use crate::Shared;
use crate::cluster::QuotaCharge;

/// How long an in-process caller's decision waits for its answer (the middleware reports it
/// when the inner service answers), when `[decision.feedback]` says nothing.
pub static IN_PROCESS: palisade_config::FeedbackSettings = palisade_config::FeedbackSettings {
    udp: None,
    unix: None,
    wait: Duration::from_secs(600),
    max_pending: 100_000,
};

/// An allowed decision waiting for its answer's line.
struct Waiting {
    awaited: Awaited,
    charge: Option<QuotaCharge>,
    /// The route's fixed spend (micro-dollars), charged when the line reports none.
    fixed_spend: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // A request the front was told to pass counts whether or not its line arrives: what
        // was held is charged, never given back.
        if let Some(c) = self.charge.take() {
            c.settle(Some(self.fixed_spend));
        }
    }
}

/// Decisions waiting for their lines, by request id: bounded in number and in time (the
/// oldest goes first when full; a line later than `wait` finds nothing).
#[derive(Default)]
pub struct Pending {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<u64, Waiting>,
    order: VecDeque<(Instant, u64)>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("waiting", &self.len())
            .finish()
    }
}

impl Pending {
    /// Decisions waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |t| t.by_id.len())
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps an allowed decision until its line arrives, dropping (and settling) the expired
    /// and, past `max`, the oldest.
    pub fn wait(
        &self,
        request_id: &str,
        awaited: Awaited,
        charge: Option<QuotaCharge>,
        fixed_spend: u64,
        settings: &palisade_config::FeedbackSettings,
    ) {
        let Some(id) = parse_id(request_id) else {
            return;
        };
        let now = Instant::now();
        // Dropped outside the lock: settling may take the ledger's locks.
        let mut gone = Vec::new();
        if let Ok(mut t) = self.inner.lock() {
            while let Some(&(at, old)) = t.order.front() {
                // Taken entries leave their place in `order` behind: it is bounded too.
                let expired = now.duration_since(at) > settings.wait;
                let full = t.by_id.len() >= settings.max_pending
                    || t.order.len() >= settings.max_pending.saturating_mul(2);
                if !expired && !full {
                    break;
                }
                t.order.pop_front();
                if let Some(w) = t.by_id.remove(&old) {
                    gone.push(w);
                }
            }
            t.order.push_back((now, id));
            t.by_id.insert(
                id,
                Waiting {
                    awaited,
                    charge,
                    fixed_spend,
                },
            );
        }
        drop(gone);
    }

    /// Takes the decision a line names, if it is still waiting.
    fn take(&self, id: u64) -> Option<Waiting> {
        // Its place in `order` goes when it reaches the front.
        self.inner.lock().ok()?.by_id.remove(&id)
    }
}

/// A request id as Palisade makes them: sixteen hex digits.
fn parse_id(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// What one access log line says about a request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Line {
    /// Palisade's request id, as the front logged it.
    pub request_id: String,
    /// The status the client got.
    pub status: u16,
    /// Cost the upstream reported (`cost`, or the route's cost header among `resp_headers`).
    pub cost: Option<f64>,
    /// Spend in dollars the upstream reported (`spend_usd`, or the route's spend header).
    pub spend_usd: Option<f64>,
    /// Response headers, lower-cased (Caddy's `resp_headers`), for the route's cost and spend
    /// headers.
    pub resp_headers: Vec<(String, String)>,
    /// The request's body (`request_body`, nginx's `$request_body`), for a login's username.
    pub request_body: Option<String>,
}

/// Why a datagram is not a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    /// No JSON object in it.
    NotJson,
    /// A JSON object without a request id.
    NoRequestId,
    /// A JSON object without a status from 100 to 599.
    NoStatus,
}

impl Unparsed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Unparsed::NotJson => "not_json",
            Unparsed::NoRequestId => "no_request_id",
            Unparsed::NoStatus => "no_status",
        }
    }
}

/// Reads one log line: an optional syslog header (RFC 3164 or RFC 5424, as nginx and HAProxy
/// send them) before a JSON object. Understood: a top-level `request_id` (or
/// `palisade_request_id`), `status` (number or string), `cost` and `spend_usd`; and Caddy's
/// access log, where the id is in `request.headers["X-Request-Id"]` (put there by
/// `forward_auth`'s `copy_headers`) and response headers in `resp_headers`.
pub fn parse(datagram: &[u8]) -> Result<Line, Unparsed> {
    let text = String::from_utf8_lossy(datagram);
    let text = text.trim();
    // The JSON object is what follows the syslog header: from the first `{` on.
    let json = text
        .find('{')
        .and_then(|i| text.get(i..))
        .ok_or(Unparsed::NotJson)?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| Unparsed::NotJson)?;
    let obj = v.as_object().ok_or(Unparsed::NotJson)?;
    let request_id = ["request_id", "palisade_request_id"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(text_of))
        .or_else(|| {
            // Caddy: the id its forward_auth copied into the request, or (the shipped snippet)
            // set on the response.
            [
                obj.get("resp_headers"),
                obj.get("request").and_then(|r| r.get("headers")),
            ]
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_object())
            .flat_map(|h| h.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
            .and_then(|(_, v)| first_text(v))
        })
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or(Unparsed::NoRequestId)?;
    let status = obj
        .get("status")
        .and_then(number_of)
        .filter(|s| (100.0..600.0).contains(s))
        .ok_or(Unparsed::NoStatus)? as u16;
    let mut resp_headers = Vec::new();
    if let Some(h) = obj.get("resp_headers").and_then(|h| h.as_object()) {
        for (k, v) in h.iter().take(64) {
            if let Some(v) = first_text(v) {
                resp_headers.push((k.to_ascii_lowercase(), v));
            }
        }
    }
    Ok(Line {
        request_id,
        status,
        cost: obj.get("cost").and_then(number_of),
        spend_usd: obj.get("spend_usd").and_then(number_of),
        resp_headers,
        request_body: obj
            .get("request_body")
            .and_then(|v| v.as_str())
            .filter(|b| !b.is_empty() && b.len() <= MAX_BODY)
            .map(str::to_owned),
    })
}

/// Largest logged body read for a username.
const MAX_BODY: usize = 16 * 1024;

/// A JSON string (bounded) or number as text.
fn text_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if s.len() <= 256 => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A header's value as Caddy logs it (an array of strings) or as a plain string.
fn first_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Array(a) => a.first().and_then(text_of),
        other => text_of(other),
    }
}

/// A finite, non-negative number, or a string holding one (nginx logs `"$upstream_http_x"`,
/// `""` when absent).
fn number_of(v: &serde_json::Value) -> Option<f64> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some(n)
}

/// What became of a line, for the metric.
fn outcome(shared: &Shared, datagram: &[u8]) -> &'static str {
    let line = match parse(datagram) {
        Ok(l) => l,
        Err(e) => return e.label(),
    };
    if shared.runtime.load().compiled.feedback.is_none() {
        return "disabled";
    }
    settle(shared, &line)
}

/// Feeds an answer to the decision waiting for it: behaviour, cost, spend. `matched`, or
/// `unknown` when none waits (late, or not ours).
pub fn settle(shared: &Shared, line: &Line) -> &'static str {
    let rt = shared.runtime.load();
    let Some(id) = parse_id(&line.request_id) else {
        return "unknown";
    };
    let Some(mut waiting) = shared.feedback.take(id) else {
        return "unknown";
    };
    let route = rt.compiled.policy.route(waiting.awaited.route);
    let header = |name: Option<&http::HeaderName>| {
        let name = name?.as_str();
        line.resp_headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let cost = line
        .cost
        .or_else(|| header(route.and_then(|r| r.cost_header.as_ref())));
    let spend = line
        .spend_usd
        .or_else(|| header(route.and_then(|r| r.spend_header.as_ref())));
    if let Some(charge) = waiting.charge.take() {
        let micros = spend.map(|usd| {
            (usd.min(1e9) * palisade_engine::state::quota_ledger::MICROS_PER_USD).round() as u64
        });
        charge.settle(Some(micros.unwrap_or(waiting.fixed_spend)));
    }
    // A login's username, from the body the front logged (JSON or a form).
    let username = line.request_body.as_deref().and_then(|body| {
        let st = super::facts::stuffing_on(&rt, waiting.awaited.route)?;
        let mut h = http::HeaderMap::new();
        if !body.trim_start().starts_with('{') {
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        super::facts::username_in(body.as_bytes(), &st.username_field, &h)
    });
    let adjust = rt.engine.observe_awaited(
        &waiting.awaited,
        &palisade_engine::Reported {
            status: line.status,
            cost,
            username: username.as_deref(),
        },
        shared.clock.now(),
    );
    if let Some(store) = &shared.store {
        store.adjust(adjust);
    }
    "matched"
}

/// Takes one datagram: parses, matches, counts.
pub fn receive(shared: &Shared, datagram: &[u8]) {
    let result = outcome(shared, datagram);
    shared
        .metrics
        .feedback
        .get_or_create(&crate::telemetry::metrics::FeedbackLabels { result })
        .inc();
}

/// Largest datagram read (a syslog line is far smaller; UDP's own bound).
const MAX_DATAGRAM: usize = 65_536;

/// Listens for the front's lines on the configured UDP address and unix datagram socket until
/// the process ends. Binding happens at start (`bind`); a reload that changes the addresses
/// takes effect at the next restart (logged).
pub struct Listeners {
    udp: Option<tokio::net::UdpSocket>,
    #[cfg(unix)]
    unix: Option<(tokio::net::UnixDatagram, std::path::PathBuf)>,
}

impl Listeners {
    /// Binds what `[decision.feedback]` names. A stale unix socket file is replaced.
    pub async fn bind(settings: &palisade_config::FeedbackSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let udp = match settings.udp {
            Some(a) => Some(
                tokio::net::UdpSocket::bind(a)
                    .await
                    .with_context(|| format!("binding the feedback UDP socket {a}"))?,
            ),
            None => None,
        };
        #[cfg(unix)]
        let unix = match &settings.unix {
            Some(p) => {
                if p.exists() {
                    std::fs::remove_file(p).with_context(|| {
                        format!("removing the stale feedback socket {}", p.display())
                    })?;
                }
                let s = tokio::net::UnixDatagram::bind(p)
                    .with_context(|| format!("binding the feedback socket {}", p.display()))?;
                // Writable by the front's user (nginx runs as www-data): the socket only takes
                // log lines, matched to waiting decisions by unguessable ids.
                use std::os::unix::fs::PermissionsExt as _;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666));
                Some((s, p.clone()))
            }
            None => None,
        };
        Ok(Self {
            udp,
            #[cfg(unix)]
            unix,
        })
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> Option<std::net::SocketAddr> {
        self.udp.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Serves every bound socket until the process ends.
    pub fn spawn(self, shared: Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(s) = self.udp {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match s.recv_from(&mut buf).await {
                        Ok((n, _)) => receive(&shared, buf.get(..n).unwrap_or_default()),
                        Err(e) => {
                            tracing::warn!(error = %e, "feedback socket read failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        #[cfg(unix)]
        if let Some((s, path)) = self.unix {
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match s.recv(&mut buf).await {
                        Ok(n) => receive(&shared, buf.get(..n).unwrap_or_default()),
                        Err(e) => {
                            tracing::warn!(error = %e, path = %path.display(), "feedback socket read failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nginx_syslog_lines() {
        // nginx `access_log syslog:server=...,tag=palisade` with the shipped log_format.
        let l = parse(br#"<190>Dec  7 08:01:02 web palisade: {"request_id":"00000000000000ab","status":401,"cost":"","spend_usd":"0.25"}"#).unwrap();
        assert_eq!(l.request_id, "00000000000000ab");
        assert_eq!(l.status, 401);
        assert_eq!(l.cost, None);
        assert_eq!(l.spend_usd, Some(0.25));
    }

    #[test]
    fn reads_rfc5424_and_haproxy_lines() {
        let l = parse(br#"<134>1 2026-12-07T08:01:02Z web haproxy 42 - - {"request_id":"00000000000000cd","status":"503","cost":3}"#).unwrap();
        assert_eq!((l.status, l.cost), (503, Some(3.0)));
        let l = parse(
            br#"<134>Dec  7 08:01:02 haproxy[42]: {"request_id":"00000000000000cd","status":200}"#,
        )
        .unwrap();
        assert_eq!(l.status, 200);
    }

    #[test]
    fn reads_caddy_access_log() {
        // Caddy 2's JSON access log (`log { output net udp/... }`), the id copied into the
        // request by forward_auth.
        let l = parse(br#"{"level":"info","ts":1765094462.1,"logger":"http.log.access","msg":"handled request","request":{"remote_ip":"127.0.0.1","method":"POST","uri":"/login","headers":{"X-Request-Id":["00000000000000ef"],"User-Agent":["curl/8"]}},"status":401,"resp_headers":{"X-Cost":["7"]}}"#).unwrap();
        assert_eq!(l.request_id, "00000000000000ef");
        assert_eq!(l.status, 401);
        assert_eq!(l.resp_headers, vec![("x-cost".to_owned(), "7".to_owned())]);
    }

    #[test]
    fn reads_the_id_caddy_puts_on_the_response() {
        let l = parse(br#"{"logger":"http.log.access.log0","request":{"headers":{"User-Agent":["x"]}},"status":404,"resp_headers":{"X-Request-Id":["0000000000000abc"]}}"#).unwrap();
        assert_eq!((l.request_id.as_str(), l.status), ("0000000000000abc", 404));
    }

    #[test]
    fn refuses_what_is_not_a_line() {
        assert_eq!(parse(b"hello"), Err(Unparsed::NotJson));
        assert_eq!(parse(b"<13>Dec  7 x: {broken"), Err(Unparsed::NotJson));
        assert_eq!(parse(br#"{"status":200}"#), Err(Unparsed::NoRequestId));
        assert_eq!(
            parse(br#"{"request_id":"00000000000000ab","status":"-"}"#),
            Err(Unparsed::NoStatus)
        );
        assert_eq!(
            parse(br#"{"request_id":"00000000000000ab","status":900}"#),
            Err(Unparsed::NoStatus)
        );
        assert_eq!(parse(&[0xff, 0xfe, b'{']), Err(Unparsed::NotJson));
    }

    #[test]
    fn ids_are_palisades_own() {
        assert_eq!(parse_id("00000000000000ab"), Some(0xab));
        assert_eq!(parse_id("ab"), None);
        assert_eq!(parse_id("zzzzzzzzzzzzzzzz"), None);
    }
}
