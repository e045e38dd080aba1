//! Access log lines for `palisade replay`: nginx/Apache combined, nginx JSON (`escape=json`,
//! the usual variable names), Caddy's JSON access log, Traefik's JSON access log, and
//! Palisade's own decision log — each read into a [`Record`]: when, who, what, and the answer.
//!
//! Lines come from files an attacker's requests were written into: every field is bounded,
//! nothing panics, and a line that is not one of these is an error for the caller to count.

use std::net::IpAddr;

use serde::Deserialize;

/// A log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// nginx/Apache combined (or common) log format.
    Combined,
    /// nginx `log_format ... escape=json` with the usual variable names.
    NginxJson,
    /// Caddy's JSON access log.
    Caddy,
    /// Traefik's JSON access log.
    Traefik,
    /// Palisade's decision log.
    Palisade,
}

impl Format {
    /// The `--format` name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Combined => "combined",
            Format::NginxJson => "nginx-json",
            Format::Caddy => "caddy",
            Format::Traefik => "traefik",
            Format::Palisade => "palisade",
        }
    }

    /// A format by its `--format` name.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "combined" | "common" | "apache" | "nginx" => Format::Combined,
            "nginx-json" | "json" => Format::NginxJson,
            "caddy" => Format::Caddy,
            "traefik" => Format::Traefik,
            "palisade" => Format::Palisade,
            _ => return None,
        })
    }

    /// Guesses a line's format (for auto-detection on the first lines of a file).
    pub fn detect(line: &str) -> Option<Self> {
        let t = line.trim_start();
        if !t.starts_with('{') {
            return parse_combined(t).ok().map(|_| Format::Combined);
        }
        let v: serde_json::Value = serde_json::from_str(t).ok()?;
        let o = v.as_object()?;
        if o.contains_key("request_id") && o.contains_key("action") && o.contains_key("identity") {
            Some(Format::Palisade)
        } else if o.get("request").is_some_and(|r| r.is_object()) {
            Some(Format::Caddy)
        } else if o.contains_key("RequestMethod") || o.contains_key("ClientHost") {
            Some(Format::Traefik)
        } else if o.contains_key("remote_addr") || o.contains_key("request_uri") {
            Some(Format::NginxJson)
        } else {
            None
        }
    }
}

/// One request as a log line tells it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    /// When (Unix milliseconds).
    pub time_ms: u64,
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// Method.
    pub method: String,
    /// Path (without the query).
    pub path: String,
    /// Query, without `?`.
    pub query: Option<String>,
    /// The HTTP version (`1.0`, `1.1`, `2`, `3`).
    pub version: u8,
    /// The status the client got.
    pub status: u16,
    /// Request headers the log kept (lower-case names): user agent, referer, and for Caddy and
    /// Traefik whatever they logged.
    pub headers: Vec<(String, String)>,
    /// An API key id the line names (Palisade's log).
    pub key_id: Option<String>,
    /// An account the line names (Palisade's log).
    pub account: Option<String>,
    /// What the line says Palisade did (Palisade's log): its action and rule.
    pub logged: Option<(String, String)>,
    /// Answer headers the log kept (lower-case names): nginx's `upstream_http_*` /
    /// `sent_http_*` fields and a plain `cost`, Caddy's `resp_headers`, Traefik's
    /// `downstream_*`. A route's `cost_header` is read from them.
    pub answer_headers: Vec<(String, String)>,
}

impl Record {
    /// The cost the upstream reported in `header` (a route's `cost_header`), if the log kept
    /// it: under its own name, or as a plain `cost` field.
    pub fn reported_cost(&self, header: &str) -> Option<f64> {
        let find = |name: &str| {
            self.answer_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        find(header)
            .or_else(|| find("cost"))?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    }
}

/// Keeps one answer header the log carries (bounded like request headers).
fn push_answer_header(r: &mut Record, name: &str, value: &str) {
    if value.is_empty() || value == "-" || r.answer_headers.len() >= 16 || value.len() > 64 {
        return;
    }
    r.answer_headers
        .push((name.to_ascii_lowercase(), value.to_owned()));
}

/// Why a line is not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    /// Not JSON, or not a combined-format line.
    Syntax,
    /// No time, or one that cannot be read.
    Time,
    /// No request line, method or path.
    Request,
    /// A line longer than [`MAX_LINE`].
    TooLong,
}

impl std::fmt::Display for Unparsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unparsed::Syntax => "not a line of this format",
            Unparsed::Time => "no readable time",
            Unparsed::Request => "no method and path",
            Unparsed::TooLong => "longer than 64 KiB",
        })
    }
}

/// Longest line read.
pub const MAX_LINE: usize = 64 * 1024;
/// Longest header value kept.
const MAX_VALUE: usize = 4096;

/// Reads one line in `format`.
pub fn parse(format: Format, line: &str) -> Result<Record, Unparsed> {
    if line.len() > MAX_LINE {
        return Err(Unparsed::TooLong);
    }
    match format {
        Format::Combined => parse_combined(line.trim()),
        Format::NginxJson => parse_nginx_json(line),
        Format::Caddy => parse_caddy(line),
        Format::Traefik => parse_traefik(line),
        Format::Palisade => parse_palisade(line),
    }
}

/// `1.2.3.4 - user [10/Oct/2000:13:55:36 -0700] "GET /a?b HTTP/1.1" 200 2326 "referer" "ua"`
fn parse_combined(line: &str) -> Result<Record, Unparsed> {
    let (ip, rest) = line.split_once(' ').ok_or(Unparsed::Syntax)?;
    let ip = ip.parse::<IpAddr>().map_err(|_| Unparsed::Syntax)?;
    let open = rest.find('[').ok_or(Unparsed::Syntax)?;
    let rest = rest.get(open + 1..).ok_or(Unparsed::Syntax)?;
    let (time, rest) = rest.split_once(']').ok_or(Unparsed::Syntax)?;
    let time_ms = clf_time(time).ok_or(Unparsed::Time)?;
    let rest = rest
        .trim_start()
        .strip_prefix('"')
        .ok_or(Unparsed::Syntax)?;
    let (request, rest) = quoted(rest).ok_or(Unparsed::Syntax)?;
    let mut fields = rest.split_ascii_whitespace();
    let status = fields
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(Unparsed::Syntax)?;
    let mut r = Record {
        time_ms,
        ip: Some(ip),
        status,
        ..Default::default()
    };
    request_line(&request, &mut r)?;
    // Combined adds the referer and the user agent, quoted, after the size.
    let after_size = skip_field(skip_field(rest));
    if let Some(s) = after_size.trim_start().strip_prefix('"')
        && let Some((referer, rest)) = quoted(s)
    {
        push_header(&mut r, "referer", &referer);
        if let Some(s) = rest.trim_start().strip_prefix('"')
            && let Some((ua, _)) = quoted(s)
        {
            push_header(&mut r, "user-agent", &ua);
        }
    }
    Ok(r)
}

/// What follows the next space-separated field.
fn skip_field(s: &str) -> &str {
    s.trim_start().split_once(' ').map_or("", |(_, rest)| rest)
}

/// A quoted field's text (after the opening quote), with `\"` and `\\` unescaped, and what
/// follows the closing quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    match n {
                        'x' => {
                            // nginx writes unprintable bytes as \xHH.
                            let hex: String = chars.by_ref().take(2).map(|(_, c)| c).collect();
                            match u8::from_str_radix(&hex, 16) {
                                Ok(b) if b.is_ascii() => out.push(char::from(b)),
                                _ => out.push('\u{fffd}'),
                            }
                        }
                        other => out.push(other),
                    }
                }
            }
            '"' => return Some((out, s.get(i + 1..)?)),
            c => {
                if out.len() < MAX_LINE {
                    out.push(c);
                }
            }
        }
    }
    None
}

/// `GET /path?query HTTP/1.1` into the record.
fn request_line(request: &str, r: &mut Record) -> Result<(), Unparsed> {
    let mut parts = request.split(' ');
    let method = parts
        .next()
        .filter(|m| !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_alphabetic()));
    let target = parts.next().filter(|t| t.starts_with('/'));
    let (Some(method), Some(target)) = (method, target) else {
        return Err(Unparsed::Request);
    };
    r.method = method.to_owned();
    set_target(r, target);
    r.version = match parts.next() {
        Some("HTTP/1.0") => 10,
        Some("HTTP/2.0" | "HTTP/2") => 2,
        Some("HTTP/3.0" | "HTTP/3") => 3,
        _ => 11,
    };
    Ok(())
}

fn set_target(r: &mut Record, target: &str) {
    match target.split_once('?') {
        Some((p, q)) => {
            r.path = p.to_owned();
            r.query = Some(q.to_owned());
        }
        None => r.path = target.to_owned(),
    }
}

fn push_header(r: &mut Record, name: &str, value: &str) {
    if value.is_empty() || value == "-" || r.headers.len() >= 64 {
        return;
    }
    let mut v = value.to_owned();
    if v.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v.truncate(end);
    }
    r.headers.push((name.to_ascii_lowercase(), v));
}

/// `10/Oct/2000:13:55:36 -0700` as Unix milliseconds.
fn clf_time(s: &str) -> Option<u64> {
    let (dt, zone) = s.split_once(' ').unwrap_or((s, "+0000"));
    let mut it = dt.splitn(4, [':', '/']);
    let day: u32 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let hms = it.next()?;
    let secs = civil_secs(year, month, day, hms)?;
    Some(apply_zone(secs, zone)? * 1000)
}

/// Seconds since the epoch of a civil date and `HH:MM:SS` (UTC).
fn civil_secs(year: i64, month: u32, day: u32, hms: &str) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || !(1970..=9999).contains(&year) {
        return None;
    }
    let mut t = hms.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let s: i64 = t.next()?.get(..2)?.parse().ok()?;
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Local seconds at `zone` (`+0100`, `-07:00`, `Z`) as UTC.
fn apply_zone(secs: i64, zone: &str) -> Option<u64> {
    let z = zone.trim();
    let offset = if z.is_empty() || z == "Z" {
        0
    } else {
        let (sign, digits) = match z.as_bytes().first()? {
            b'+' => (1, z.get(1..)?),
            b'-' => (-1, z.get(1..)?),
            _ => return None,
        };
        let digits: String = digits.chars().filter(|c| *c != ':').collect();
        let hh: i64 = digits.get(..2)?.parse().ok()?;
        let mm: i64 = digits.get(2..4).unwrap_or("00").parse().ok()?;
        sign * (hh * 3600 + mm * 60)
    };
    u64::try_from(secs - offset).ok()
}

/// `2026-12-07T08:01:02.123+01:00` (or `Z`, or a space for `T`) as Unix milliseconds.
fn iso_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let date = s.get(..10)?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let rest = s.get(11..)?;
    let hms = rest.get(..8)?;
    let secs = civil_secs(year, month, day, hms)?;
    let mut after = rest.get(8..).unwrap_or("");
    let mut millis = 0u64;
    if let Some(frac) = after.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        let digits = frac.get(..n)?;
        let ms: String = digits.chars().chain("000".chars()).take(3).collect();
        millis = ms.parse().ok()?;
        after = frac.get(n..)?;
    }
    Some(apply_zone(secs, after)? * 1000 + millis)
}

/// A time as nginx, Caddy or Traefik log it: ISO 8601, the combined format's, or seconds
/// since the epoch (`$msec`, Caddy's `ts`) as a number or string.
fn any_time(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => {
            let secs = n.as_f64()?;
            (secs.is_finite() && secs > 0.0 && secs < 1e11).then_some((secs * 1000.0) as u64)
        }
        serde_json::Value::String(s) => {
            if let Ok(secs) = s.trim().parse::<f64>() {
                return (secs.is_finite() && secs > 0.0 && secs < 1e11)
                    .then_some((secs * 1000.0) as u64);
            }
            if s.contains('/') {
                clf_time(s)
            } else {
                iso_time(s)
            }
        }
        _ => None,
    }
}

fn text(v: Option<&serde_json::Value>) -> Option<&str> {
    v.and_then(|v| v.as_str())
        .filter(|s| !s.is_empty() && *s != "-")
}

fn status_of(v: Option<&serde_json::Value>) -> u16 {
    let n = match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(serde_json::Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    };
    u16::try_from(n)
        .ok()
        .filter(|s| (100..600).contains(s))
        .unwrap_or(0)
}

fn ip_of(v: Option<&str>) -> Option<IpAddr> {
    let s = v?.trim();
    // Traefik's ClientAddr and Caddy's remote address may carry a port.
    s.parse()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// nginx JSON with the usual variable names: `time_iso8601` / `time_local` / `msec`,
/// `remote_addr` (or `http_x_forwarded_for`'s first), `request` or `request_method` +
/// `request_uri`, `status`, `http_user_agent`, `http_referer`.
fn parse_nginx_json(line: &str) -> Result<Record, Unparsed> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| Unparsed::Syntax)?;
    let o = v.as_object().ok_or(Unparsed::Syntax)?;
    let time_ms = ["time_iso8601", "time_local", "msec", "time", "timestamp"]
        .iter()
        .find_map(|k| o.get(*k).and_then(any_time))
        .ok_or(Unparsed::Time)?;
    let mut r = Record {
        time_ms,
        ip: ip_of(text(o.get("remote_addr")).or_else(|| text(o.get("client_ip")))),
        status: status_of(o.get("status")),
        ..Default::default()
    };
    match (text(o.get("request_method")), text(o.get("request_uri"))) {
        (Some(m), Some(u)) if u.starts_with('/') => {
            r.method = m.chars().take(32).collect();
            set_target(&mut r, u);
            r.version = 11;
        }
        _ => request_line(text(o.get("request")).ok_or(Unparsed::Request)?, &mut r)?,
    }
    for (name, key) in [
        ("user-agent", "http_user_agent"),
        ("referer", "http_referer"),
        ("x-forwarded-for", "http_x_forwarded_for"),
        ("host", "host"),
    ] {
        if let Some(v) = text(o.get(key)) {
            push_header(&mut r, name, v);
        }
    }
    for (key, v) in o {
        let Some(name) = key
            .strip_prefix("upstream_http_")
            .or_else(|| key.strip_prefix("sent_http_"))
            .map(|n| n.replace('_', "-"))
            .or_else(|| (key == "cost").then(|| key.clone()))
        else {
            continue;
        };
        match v {
            serde_json::Value::Number(n) => push_answer_header(&mut r, &name, &n.to_string()),
            other => {
                if let Some(v) = text(Some(other)) {
                    push_answer_header(&mut r, &name, v);
                }
            }
        }
    }
    Ok(r)
}

/// Caddy's access log (`logger` `http.log.access...`).
fn parse_caddy(line: &str) -> Result<Record, Unparsed> {
    #[derive(Deserialize)]
    struct Line<'a> {
        ts: Option<serde_json::Value>,
        #[serde(borrow)]
        request: Option<Req<'a>>,
        status: Option<u16>,
        resp_headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    }
    #[derive(Deserialize)]
    struct Req<'a> {
        #[serde(borrow)]
        client_ip: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        remote_ip: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        uri: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        proto: Option<std::borrow::Cow<'a, str>>,
        headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    }
    let l: Line<'_> = serde_json::from_str(line).map_err(|_| Unparsed::Syntax)?;
    let req = l.request.ok_or(Unparsed::Request)?;
    let time_ms = l.ts.as_ref().and_then(any_time).ok_or(Unparsed::Time)?;
    let (Some(method), Some(uri)) = (req.method, req.uri) else {
        return Err(Unparsed::Request);
    };
    if !uri.starts_with('/') {
        return Err(Unparsed::Request);
    }
    let mut r = Record {
        time_ms,
        ip: ip_of(req.client_ip.as_deref().or(req.remote_ip.as_deref())),
        method: method.chars().take(32).collect(),
        status: l.status.filter(|s| (100..600).contains(s)).unwrap_or(0),
        version: match req.proto.as_deref() {
            Some("HTTP/2.0") => 2,
            Some("HTTP/3.0") => 3,
            Some("HTTP/1.0") => 10,
            _ => 11,
        },
        ..Default::default()
    };
    set_target(&mut r, &uri);
    for (name, values) in req.headers.unwrap_or_default() {
        if let Some(v) = values.first() {
            push_header(&mut r, &name, v);
        }
    }
    for (name, values) in l.resp_headers.unwrap_or_default() {
        if let Some(v) = values.first() {
            push_answer_header(&mut r, &name, v);
        }
    }
    Ok(r)
}

/// Traefik's JSON access log (`accessLog.format: json`; request headers as `request_<Name>`
/// when kept).
fn parse_traefik(line: &str) -> Result<Record, Unparsed> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| Unparsed::Syntax)?;
    let o = v.as_object().ok_or(Unparsed::Syntax)?;
    let time_ms = ["StartUTC", "StartLocal", "time"]
        .iter()
        .find_map(|k| o.get(*k).and_then(any_time))
        .ok_or(Unparsed::Time)?;
    let method = text(o.get("RequestMethod")).ok_or(Unparsed::Request)?;
    let path = text(o.get("RequestPath"))
        .filter(|p| p.starts_with('/'))
        .ok_or(Unparsed::Request)?;
    let mut r = Record {
        time_ms,
        ip: ip_of(text(o.get("ClientHost")).or_else(|| text(o.get("ClientAddr")))),
        method: method.chars().take(32).collect(),
        status: status_of(o.get("DownstreamStatus")),
        version: match text(o.get("RequestProtocol")) {
            Some("HTTP/2.0") => 2,
            Some("HTTP/1.0") => 10,
            _ => 11,
        },
        ..Default::default()
    };
    set_target(&mut r, path);
    for (k, v) in o.iter().take(256) {
        if let (Some(name), Some(v)) = (k.strip_prefix("request_"), v.as_str()) {
            push_header(&mut r, name, v);
        }
        if let (Some(name), Some(v)) = (k.strip_prefix("downstream_"), v.as_str()) {
            push_answer_header(&mut r, name, v);
        }
    }
    Ok(r)
}

/// Palisade's decision log.
fn parse_palisade(line: &str) -> Result<Record, Unparsed> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| Unparsed::Syntax)?;
    let o = v.as_object().ok_or(Unparsed::Syntax)?;
    let time_ms = o.get("time").and_then(any_time).ok_or(Unparsed::Time)?;
    let method = text(o.get("method")).ok_or(Unparsed::Request)?;
    let path = text(o.get("path"))
        .filter(|p| p.starts_with('/'))
        .ok_or(Unparsed::Request)?;
    let id = o.get("identity").and_then(|i| i.as_object());
    let ident = |k: &str| text(id.and_then(|i| i.get(k))).map(str::to_owned);
    let mut r = Record {
        time_ms,
        ip: ip_of(text(o.get("client_ip"))),
        method: method.chars().take(32).collect(),
        path: path.to_owned(),
        status: status_of(o.get("status")),
        version: 11,
        key_id: ident("api_key"),
        account: ident("account"),
        logged: text(o.get("action")).map(|a| {
            (
                a.to_owned(),
                text(o.get("rule")).unwrap_or_default().to_owned(),
            )
        }),
        ..Default::default()
    };
    if let Some(ua) = ident("user_agent") {
        push_header(&mut r, "user-agent", &ua);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_combined_lines() {
        // The example of the Apache documentation (mod_log_config, "Combined Log Format").
        let l = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;
        assert_eq!(Format::detect(l), Some(Format::Combined));
        let r = parse(Format::Combined, l).unwrap();
        assert_eq!(r.ip.unwrap().to_string(), "127.0.0.1");
        assert_eq!(r.time_ms, 971_211_336_000, "13:55:36 -0700 is 20:55:36 UTC");
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/apache_pb.gif")
        );
        assert_eq!((r.status, r.version), (200, 10));
        assert_eq!(
            r.headers[0],
            ("referer".into(), "http://www.example.com/start.html".into())
        );
        assert_eq!(r.headers[1].1, "Mozilla/4.08 [en] (Win98; I ;Nav)");
        // nginx escapes quotes and unprintable bytes; the common format has no agent.
        let r = parse(
            Format::Combined,
            r#"2001:db8::1 - - [07/Dec/2026:08:00:00 +0000] "POST /api/login?x=\"1\" HTTP/1.1" 401 12 "-" "curl/8 \x22q\x22""#,
        )
        .unwrap();
        assert_eq!(r.query.as_deref(), Some("x=\"1\""));
        assert_eq!(
            r.headers,
            vec![("user-agent".into(), "curl/8 \"q\"".into())]
        );
        let r = parse(
            Format::Combined,
            r#"10.0.0.1 - - [07/Dec/2026:08:00:00 +0000] "GET / HTTP/1.1" 200 5"#,
        )
        .unwrap();
        assert!(r.headers.is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_request() {
        assert_eq!(parse(Format::Combined, "garbage"), Err(Unparsed::Syntax));
        assert_eq!(
            parse(
                Format::Combined,
                r#"10.0.0.1 - - [99/Foo/2026:08:00:00 +0000] "GET / HTTP/1.1" 200 5"#
            ),
            Err(Unparsed::Time)
        );
        // What nginx writes for a request line that was not HTTP.
        assert_eq!(
            parse(
                Format::Combined,
                r#"10.0.0.1 - - [07/Dec/2026:08:00:00 +0000] "\x16\x03\x01" 400 157 "-" "-""#
            ),
            Err(Unparsed::Request)
        );
        assert_eq!(
            parse(Format::NginxJson, "{\"status\":200"),
            Err(Unparsed::Syntax)
        );
        assert_eq!(
            parse(Format::Combined, &"x".repeat(MAX_LINE + 1)),
            Err(Unparsed::TooLong)
        );
    }

    #[test]
    fn reads_nginx_json() {
        let l = r#"{"time_iso8601":"2026-12-07T08:00:01+01:00","remote_addr":"198.51.100.7","request":"GET /api/items/7?full=1 HTTP/2.0","status":"404","http_user_agent":"python-requests/2.32.3","http_referer":""}"#;
        assert_eq!(Format::detect(l), Some(Format::NginxJson));
        let r = parse(Format::NginxJson, l).unwrap();
        assert_eq!(r.time_ms, 1_796_626_801_000);
        assert_eq!((r.status, r.version), (404, 2));
        assert_eq!(r.query.as_deref(), Some("full=1"));
        assert_eq!(r.headers.len(), 1);
        let r = parse(
            Format::NginxJson,
            r#"{"msec":"1796630401.123","remote_addr":"198.51.100.7","request_method":"POST","request_uri":"/login","status":401}"#,
        )
        .unwrap();
        assert_eq!((r.time_ms, r.status), (1_796_630_401_123, 401));
    }

    #[test]
    fn reads_caddy_traefik_and_palisade() {
        let l = r#"{"level":"info","ts":1796630401.5,"logger":"http.log.access.log0","msg":"handled request","request":{"remote_ip":"127.0.0.1","remote_port":"5000","client_ip":"203.0.113.9","proto":"HTTP/1.1","method":"GET","host":"api","uri":"/a?b=1","headers":{"User-Agent":["curl/8"]}},"status":429}"#;
        assert_eq!(Format::detect(l), Some(Format::Caddy));
        let r = parse(Format::Caddy, l).unwrap();
        assert_eq!(r.ip.unwrap().to_string(), "203.0.113.9");
        assert_eq!(
            (r.time_ms, r.status, r.path.as_str()),
            (1_796_630_401_500, 429, "/a")
        );
        assert_eq!(r.headers, vec![("user-agent".into(), "curl/8".into())]);

        let l = r#"{"ClientAddr":"203.0.113.9:4000","ClientHost":"203.0.113.9","DownstreamStatus":200,"RequestMethod":"GET","RequestPath":"/x?y=2","RequestProtocol":"HTTP/1.1","StartUTC":"2026-12-07T08:00:01.25Z","request_User-Agent":"Go-http-client/1.1"}"#;
        assert_eq!(Format::detect(l), Some(Format::Traefik));
        let r = parse(Format::Traefik, l).unwrap();
        assert_eq!((r.time_ms, r.path.as_str()), (1_796_630_401_250, "/x"));
        assert_eq!(
            r.headers,
            vec![("user-agent".into(), "Go-http-client/1.1".into())]
        );

        let l = r#"{"time":"2026-12-07T08:00:01.000Z","request_id":"00000000000000ab","client_ip":"198.51.100.1","method":"GET","path":"/api/items/1","route":"items","status":429,"latency_ms":0.1,"identity":{"ip":"198.51.100.1","api_key":"k_1","user_agent":"curl/8"},"action":"limit","score":0,"rule":"limit/per-ip","reasons":[],"shadow":false,"limits":[]}"#;
        assert_eq!(Format::detect(l), Some(Format::Palisade));
        let r = parse(Format::Palisade, l).unwrap();
        assert_eq!(r.key_id.as_deref(), Some("k_1"));
        assert_eq!(r.logged, Some(("limit".into(), "limit/per-ip".into())));
    }

    #[test]
    fn answer_headers_give_the_reported_cost() {
        let l = r#"{"ts":1796630401.5,"request":{"remote_ip":"203.0.113.9","proto":"HTTP/1.1","method":"POST","uri":"/v1/complete"},"status":200,"resp_headers":{"X-Cost-Tokens":["742"],"Content-Type":["application/json"]}}"#;
        let r = parse(Format::Caddy, l).unwrap();
        assert_eq!(r.reported_cost("x-cost-tokens"), Some(742.0));
        let l = r#"{"DownstreamStatus":200,"RequestMethod":"POST","RequestPath":"/v1/complete","StartUTC":"2026-12-07T08:00:01Z","downstream_X-Cost-Tokens":"12.5"}"#;
        let r = parse(Format::Traefik, l).unwrap();
        assert_eq!(r.reported_cost("X-Cost-Tokens"), Some(12.5));
        // nginx: the variable's name, or a plain `cost` (a number or a string); nonsense and
        // negative values are no cost.
        let l = r#"{"msec":"1796630401.000","remote_addr":"198.51.100.7","request":"POST /v1/complete HTTP/1.1","status":"200","upstream_http_x_cost_tokens":"40"}"#;
        assert_eq!(
            parse(Format::NginxJson, l)
                .unwrap()
                .reported_cost("x-cost-tokens"),
            Some(40.0)
        );
        let l = r#"{"msec":"1796630401.000","remote_addr":"198.51.100.7","request":"POST /v1/complete HTTP/1.1","status":"200","cost":7}"#;
        assert_eq!(
            parse(Format::NginxJson, l)
                .unwrap()
                .reported_cost("x-cost-tokens"),
            Some(7.0)
        );
        for bad in [r#""-3""#, r#""lots""#, r#""NaN""#] {
            let l = format!(
                r#"{{"msec":"1796630401.000","request":"GET / HTTP/1.1","status":"200","cost":{bad}}}"#
            );
            assert_eq!(
                parse(Format::NginxJson, &l)
                    .unwrap()
                    .reported_cost("x-cost"),
                None,
                "{bad}"
            );
        }
    }
}
