//! `palisade replay LOG...`: what a policy would have done to the traffic in access logs.
//!
//! Every line is read (nginx/Apache combined, nginx JSON, Caddy, Traefik, Palisade's own log;
//! detected per file or `--format`; gzip allowed), put in timestamp order (a reorder window of
//! [`WINDOW_MS`]), and run through the full engine on the log's own clock, so that windows,
//! behaviour and throttling act as they would have; the status each line records is fed back
//! as the upstream's answer (for a request the policy would have refused, the refusal's status
//! instead). With `--against OLD` the old policy runs beside it on the same requests and the
//! report says which requests change action, and why.
//!
//! What a log cannot tell is stood in for, and said so in the report: requests on routes that
//! need a credential count as authenticated by a key per client address (by the key id the
//! line names, in Palisade's own log) unless the log shows a 401; header checks see only the
//! headers the log kept, and header fingerprints are not taken (a log does not keep the
//! client's header set); no reverse DNS is done for claimed bots; login bodies are not logged,
//! so stuffing is judged without usernames.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::{BufRead, IsTerminal as _, Read, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use palisade_config::Compiled;
use palisade_engine::model::principal::{Auth, AuthRequirement, Principal, PrincipalKind};
use palisade_engine::{Action, Decision, Engine, Origin, RequestFacts};
use palisade_gateway::replay::{Format, Record, Unparsed, parse};

/// How far out of order lines may be (log writers flush per worker).
const WINDOW_MS: u64 = 10_000;
/// Lines held for reordering at most.
const MAX_HELD: usize = 200_000;
/// Unread lines shown.
const SHOW_UNREAD: usize = 5;

/// `palisade replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Access logs (`-` for stdin); `.gz` or gzip content is read as such.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// The policy to replay (default: the embedded default).
    #[arg(long, env = "PALISADE_CONFIG")]
    pub config: Option<PathBuf>,
    /// A second policy to compare against (the one running today).
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// The log format: combined | nginx-json | caddy | traefik | palisade (default: detected
    /// per file).
    #[arg(long)]
    pub format: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Rows in each "top" table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Sample requests kept per rule.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Also write every replayed request's decision here, one JSON line each, in the order
    /// judged: time, client, method, path, logged status, action and rule (and, for Palisade's
    /// own log, what it logged then), for diffing against a live decision log.
    #[arg(long)]
    pub decisions: Option<PathBuf>,
}

/// A record and where it came from, ordered by time (then by reading order).
struct Held {
    time_ms: u64,
    seq: u64,
    record: Record,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.time_ms, self.seq) == (other.time_ms, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A min-heap on (time, seq).
        (other.time_ms, other.seq).cmp(&(self.time_ms, self.seq))
    }
}

/// What reading produced, sent from the reader thread in batches.
enum Read_ {
    Records(Vec<Record>),
    Done(ReadStats),
}

#[derive(Default, serde::Serialize, Clone)]
struct ReadStats {
    lines: u64,
    unread: u64,
    unread_samples: Vec<String>,
    formats: BTreeMap<String, String>,
}

/// One policy's replay.
struct Run {
    compiled: Compiled,
    engine: Engine,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    actions: BTreeMap<&'static str, u64>,
    rules: HashMap<String, u64>,
    signals: HashMap<String, u64>,
    routes: BTreeMap<String, BTreeMap<&'static str, u64>>,
    refused_ips: HashMap<IpAddr, u64>,
    refused_nets: HashMap<String, u64>,
    refused_keys: HashMap<String, u64>,
    samples: HashMap<String, Vec<String>>,
    per_minute: BTreeMap<u64, (u64, u64)>,
}

impl Run {
    fn new(compiled: Compiled) -> Self {
        let engine = Engine::new(compiled.policy.clone(), None);
        Self {
            compiled,
            engine,
            stats: Stats::default(),
        }
    }

    /// Judges one request on the log's clock and feeds back its answer; what it came to.
    fn judge(&mut self, r: &Record, clock: (u64, u64), samples: usize) -> (String, String) {
        let (now, unix_ms) = clock;
        let method = http::Method::from_bytes(r.method.as_bytes()).unwrap_or(http::Method::GET);
        let mut headers = http::HeaderMap::new();
        for (n, v) in &r.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                headers.append(n, v);
            }
        }
        let ip = r.ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let route = self.engine.route_of(&method, &r.path);
        let spec = self.compiled.policy.route(route);
        // A key the log names; else, on a route that needs one, a stand-in per address (the
        // request got through unless the log says 401).
        let principal = match (&r.key_id, spec) {
            (Some(k), _) => Some(stand_in(k, r.account.as_deref(), spec)),
            (None, Some(s)) if s.auth != AuthRequirement::None && r.status != 401 => {
                Some(stand_in(&format!("ip:{ip}"), None, Some(s)))
            }
            _ => None,
        };
        let ip_info = self
            .compiled
            .policy
            .intel
            .as_ref()
            .and_then(|i| i.db.lookup(ip));
        let probes = self
            .compiled
            .policy
            .probes
            .as_ref()
            .map(|p| p.scan_head(&r.path, r.query.as_deref(), &headers))
            .unwrap_or_default();
        let facts = RequestFacts {
            method: &method,
            path: &r.path,
            query: r.query.as_deref(),
            headers: &headers,
            client_ip: ip,
            peer_ip: ip,
            now,
            unix_ms,
            version: match r.version {
                10 => http::Version::HTTP_10,
                2 => http::Version::HTTP_2,
                3 => http::Version::HTTP_3,
                _ => http::Version::HTTP_11,
            },
            ja4h: None,
            tls: None,
            h2fp: None,
            ja3: None,
            clearance: None,
            signed_agent: None,
            // A log keeps a header or two, never the client's header set: every client would
            // share one fingerprint.
            hfp: None,
            ip_info: ip_info.as_ref(),
            bot_verification: None,
            username: None,
            probes: &probes.hits,
            contract: None,
            auth: match &principal {
                Some(p) => Auth::Principal(p),
                None => Auth::Anonymous,
            },
        };
        let d = match self.engine.evaluate(&facts) {
            Ok(d) => d,
            Err(e) => return ("error".into(), e.to_string()),
        };
        // The answer: the upstream's as logged, or the refusal this policy would have given.
        match palisade_gateway::refusal::Refusal::from_decision(&d) {
            None if r.status != 0 => {
                // The cost the upstream reported, where the log kept it, corrects cost limits
                // as a live answer's header does.
                if let Some(cost) = spec
                    .and_then(|s| s.cost_header.as_ref())
                    .and_then(|h| r.reported_cost(h.as_str()))
                {
                    self.engine.observe_response(
                        &d,
                        &palisade_engine::ResponseFacts {
                            status: r.status,
                            reported_cost: Some(cost),
                            now,
                        },
                    );
                }
                self.engine
                    .observe_status(&d, r.status, Origin::Upstream, now)
            }
            None => {}
            Some(refusal) => {
                let status = refusal.parts().0.as_u16();
                self.engine.observe_status(&d, status, Origin::Gateway, now);
            }
        }
        self.count(&d, r, ip, unix_ms, samples);
        (d.logged_action().to_owned(), d.logged_rule().to_string())
    }

    fn count(&mut self, d: &Decision, r: &Record, ip: IpAddr, unix_ms: u64, samples: usize) {
        let s = &mut self.stats;
        let action = d.logged_action();
        *s.actions.entry(action).or_default() += 1;
        let route = self
            .compiled
            .policy
            .route(d.route)
            .map_or("-".to_owned(), |r| r.name.to_string());
        *s.routes
            .entry(route)
            .or_default()
            .entry(action)
            .or_default() += 1;
        for sig in &d.signals {
            if let Some(n) = s.signals.get_mut(&*sig.name) {
                *n += 1;
            } else {
                s.signals.insert(sig.name.to_string(), 1);
            }
        }
        let refused = !matches!(d.action, Action::Allow | Action::Tag);
        let minute = s.per_minute.entry(unix_ms / 60_000).or_default();
        minute.0 += 1;
        if refused {
            minute.1 += 1;
        }
        if action == "allow" {
            return;
        }
        let rule = d.logged_rule().to_string();
        let list = s.samples.entry(rule.clone()).or_default();
        if list.len() < samples {
            list.push(describe(r));
        }
        *s.rules.entry(rule).or_default() += 1;
        if refused {
            *s.refused_ips.entry(ip).or_default() += 1;
            *s.refused_nets.entry(net_of(ip)).or_default() += 1;
            if let Some(k) = &r.key_id {
                *s.refused_keys.entry(k.clone()).or_default() += 1;
            }
        }
    }
}

/// A stand-in for the credential a log does not show.
fn stand_in(
    key: &str,
    account: Option<&str>,
    spec: Option<&palisade_engine::policy::RouteSpec>,
) -> Arc<Principal> {
    Arc::new(Principal {
        kind: PrincipalKind::ApiKey,
        key_id: Some(Arc::from(key)),
        account: account.map(Arc::from),
        scopes: spec.map(|s| s.scopes.clone()).unwrap_or_default(),
        claims: Vec::new(),
        rate: None,
        budget: Default::default(),
        budget_items: None,
        created_ms: None,
    })
}

fn rule_or_dash(r: &str) -> &str {
    if r.is_empty() { "-" } else { r }
}

fn net_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

fn describe(r: &Record) -> String {
    let ua = r
        .headers
        .iter()
        .find(|(n, _)| n == "user-agent")
        .map_or("-", |(_, v)| v.as_str());
    let ip = r.ip.map_or("-".to_owned(), |i| i.to_string());
    let q = r
        .query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut s = format!("{ip} {} {}{q} {} \"{ua}\"", r.method, r.path, r.status);
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Opens a log, gunzipping when it is gzip.
fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let mut buf = std::io::BufReader::with_capacity(1 << 20, raw);
    let gzip = buf.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b]))?;
    Ok(if gzip {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(buf),
        ))
    } else {
        Box::new(buf)
    })
}

/// Reads every log on its own thread, sending records in batches.
fn reader(
    logs: Vec<PathBuf>,
    format: Option<Format>,
    tx: std::sync::mpsc::SyncSender<Read_>,
) -> anyhow::Result<()> {
    let mut st = ReadStats::default();
    for path in logs {
        let mut input = open(&path)?;
        let mut fmt = format;
        let mut batch = Vec::with_capacity(4096);
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            // Bounded: a line longer than MAX_LINE is read in part and refused.
            let read = (&mut input)
                .take(palisade_gateway::replay::MAX_LINE as u64 + 2)
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", path.display()))?;
            if read == 0 {
                break;
            }
            let complete = line.ends_with(b"\n");
            if !complete && read as u64 > palisade_gateway::replay::MAX_LINE as u64 {
                // Skip the rest of an over-long line.
                let mut sink = Vec::new();
                input.read_until(b'\n', &mut sink)?;
            }
            n += 1;
            st.lines += 1;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let f = match fmt {
                Some(f) => f,
                None => match Format::detect(text) {
                    Some(f) => {
                        st.formats
                            .insert(path.display().to_string(), f.name().to_owned());
                        fmt = Some(f);
                        f
                    }
                    None => {
                        unread(&mut st, &path, n, Unparsed::Syntax, text);
                        continue;
                    }
                },
            };
            let parsed = if complete || text.len() <= palisade_gateway::replay::MAX_LINE {
                parse(f, text)
            } else {
                Err(Unparsed::TooLong)
            };
            match parsed {
                Ok(r) => {
                    batch.push(r);
                    if batch.len() == batch.capacity() {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(4096));
                        if tx.send(Read_::Records(full)).is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(e) => unread(&mut st, &path, n, e, text),
            }
        }
        if let Some(f) = format {
            st.formats
                .insert(path.display().to_string(), f.name().to_owned());
        }
        if !batch.is_empty() && tx.send(Read_::Records(batch)).is_err() {
            return Ok(());
        }
    }
    let _ = tx.send(Read_::Done(st));
    Ok(())
}

fn unread(st: &mut ReadStats, path: &Path, n: u64, e: Unparsed, text: &str) {
    st.unread += 1;
    if st.unread_samples.len() < SHOW_UNREAD {
        let shown: String = text.chars().take(120).collect();
        st.unread_samples
            .push(format!("{}:{n}: {e}: {shown:?}", path.display()));
    }
}

fn compile(path: Option<&Path>) -> anyhow::Result<Compiled> {
    let (text, name, base) = match path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
            p.parent().unwrap_or(Path::new(".")).to_owned(),
        ),
        None => (
            palisade_config::DEFAULT_CONFIG.to_owned(),
            "the embedded default".to_owned(),
            PathBuf::from("."),
        ),
    };
    palisade_config::compile_str(&text, &name, &base).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the replay and prints the report; the report as JSON.
pub fn run(args: &ReplayArgs) -> anyhow::Result<serde_json::Value> {
    let format = match &args.format {
        Some(f) => Some(Format::from_name(f).with_context(|| {
            format!("unknown --format {f:?} (combined, nginx-json, caddy, traefik, palisade)")
        })?),
        None => None,
    };
    let mut new = Run::new(compile(args.config.as_deref())?);
    let mut old = match &args.against {
        Some(p) => Some(Run::new(compile(Some(p))?)),
        None => None,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Read_>(8);
    let logs = args.logs.clone();
    let reading = std::thread::spawn(move || reader(logs, format, tx));

    let started = Instant::now();
    let progress = std::io::stderr().is_terminal() && !args.json;
    let mut last_progress = Instant::now();
    let mut heap: BinaryHeap<Held> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut first_ms: Option<u64> = None;
    let mut last_ms = 0u64;
    let mut newest = 0u64;
    let mut judged = 0u64;
    let mut changes: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut change_rules: HashMap<(String, String), u64> = HashMap::new();
    let mut change_samples: Vec<String> = Vec::new();
    let mut read_stats = ReadStats::default();
    let mut decisions = match &args.decisions {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut decisions_failed: Option<std::io::Error> = None;

    let mut judge = |h: Held,
                     new: &mut Run,
                     old: &mut Option<Run>,
                     first_ms: &mut Option<u64>,
                     last_ms: &mut u64| {
        let t = h.time_ms.max(*last_ms);
        *last_ms = t;
        let first = *first_ms.get_or_insert(t);
        // The engine's clock: an hour in, plus the log's elapsed time.
        let now = 3_600 * palisade_engine::clock::SECOND + (t - first).saturating_mul(1_000_000);
        let got = new.judge(&h.record, (now, t), args.samples);
        if let Some(w) = decisions.as_mut().filter(|_| decisions_failed.is_none()) {
            let r = &h.record;
            let mut line = serde_json::json!({
                "time_ms": r.time_ms,
                "client_ip": r.ip.map(|ip| ip.to_string()),
                "method": r.method,
                "path": r.path,
                "query": r.query,
                "status": r.status,
                "action": got.0,
                "rule": got.1,
            });
            if let (Some(o), Some((action, rule))) = (line.as_object_mut(), &r.logged) {
                o.insert("logged_action".into(), action.as_str().into());
                o.insert("logged_rule".into(), rule.as_str().into());
            }
            if let Err(e) = serde_json::to_writer(&mut *w, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| w.write_all(b"\n"))
            {
                decisions_failed = Some(e);
            }
        }
        if let Some(o) = old {
            let was = o.judge(&h.record, (now, t), args.samples);
            if was.0 != got.0 {
                *changes.entry((was.0.clone(), got.0.clone())).or_default() += 1;
                let why = format!("{} → {}", rule_or_dash(&was.1), rule_or_dash(&got.1));
                *change_rules
                    .entry((format!("{} → {}", was.0, got.0), why))
                    .or_default() += 1;
                if change_samples.len() < args.top * args.samples {
                    change_samples.push(format!(
                        "{} → {} ({} → {}): {}",
                        was.0,
                        got.0,
                        rule_or_dash(&was.1),
                        rule_or_dash(&got.1),
                        describe(&h.record)
                    ));
                }
            }
        }
    };

    for msg in rx {
        match msg {
            Read_::Records(batch) => {
                for record in batch {
                    seq += 1;
                    newest = newest.max(record.time_ms);
                    heap.push(Held {
                        time_ms: record.time_ms,
                        seq,
                        record,
                    });
                    // Release what is older than the window behind the newest seen.
                    while let Some(top) = heap.peek() {
                        if heap.len() > MAX_HELD || top.time_ms + WINDOW_MS < newest {
                            if let Some(h) = heap.pop() {
                                judge(h, &mut new, &mut old, &mut first_ms, &mut last_ms);
                                judged += 1;
                            }
                        } else {
                            break;
                        }
                    }
                }
                if progress && last_progress.elapsed().as_millis() >= 500 {
                    last_progress = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    eprint!(
                        "\r  {} requests judged, {:.0} lines/s   ",
                        group(judged),
                        judged as f64 / secs
                    );
                }
            }
            Read_::Done(st) => read_stats = st,
        }
    }
    while let Some(h) = heap.pop() {
        judge(h, &mut new, &mut old, &mut first_ms, &mut last_ms);
        judged += 1;
    }
    if let (Some(p), Some(e)) = (&args.decisions, decisions_failed) {
        return Err(anyhow::anyhow!("writing {}: {e}", p.display()));
    }
    if let (Some(p), Some(w)) = (&args.decisions, decisions.as_mut()) {
        w.flush()
            .with_context(|| format!("writing {}", p.display()))?;
    }
    reading
        .join()
        .map_err(|_| anyhow::anyhow!("the log reader failed"))??;
    if progress {
        eprint!("\r{}\r", " ".repeat(60));
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let report = report(
        args,
        &new,
        old.as_ref(),
        &read_stats,
        judged,
        (first_ms.unwrap_or(0), last_ms),
        elapsed,
        (&changes, &change_rules, &change_samples),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        if !args.json {
            println!("HTML report: {}", path.display());
        }
    }
    Ok(report)
}

fn top_of<K: ToString>(m: impl IntoIterator<Item = (K, u64)>, n: usize) -> Vec<serde_json::Value> {
    let mut v: Vec<(String, u64)> = m.into_iter().map(|(k, c)| (k.to_string(), c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter()
        .take(n)
        .map(|(k, c)| serde_json::json!({ "name": k, "count": c }))
        .collect()
}

/// What changed against the old policy: transitions, their rules, samples.
type Changes<'a> = (
    &'a BTreeMap<(String, String), u64>,
    &'a HashMap<(String, String), u64>,
    &'a Vec<String>,
);

#[allow(clippy::too_many_arguments)]
fn report(
    args: &ReplayArgs,
    new: &Run,
    old: Option<&Run>,
    read: &ReadStats,
    judged: u64,
    span: (u64, u64),
    elapsed: f64,
    changes: Changes<'_>,
) -> serde_json::Value {
    let s = &new.stats;
    let mut samples: Vec<(&String, &Vec<String>)> = s.samples.iter().collect();
    samples.sort_by(|a, b| s.rules.get(b.0).cmp(&s.rules.get(a.0)).then(a.0.cmp(b.0)));
    let per_minute: Vec<serde_json::Value> = s
        .per_minute
        .iter()
        .map(|(m, (all, refused))| serde_json::json!([m * 60, all, refused]))
        .collect();
    let mut out = serde_json::json!({
        "policy": args.config.as_ref().map_or("embedded default".to_owned(), |p| p.display().to_string()),
        "logs": args.logs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "formats": read.formats,
        "lines": read.lines,
        "unread": read.unread,
        "unread_samples": read.unread_samples,
        "requests": judged,
        "from_unix_ms": span.0,
        "to_unix_ms": span.1,
        "seconds": elapsed,
        "lines_per_second": (read.lines as f64 / elapsed).round() as u64,
        "actions": s.actions,
        "rules": top_of(s.rules.iter().map(|(k, v)| (k.clone(), *v)), args.top.max(20)),
        "signals": top_of(s.signals.iter().map(|(k, v)| (k.clone(), *v)), args.top.max(20)),
        "routes": s.routes,
        "top_refused": {
            "ip": top_of(s.refused_ips.iter().map(|(k, v)| (*k, *v)), args.top),
            "ip/24": top_of(s.refused_nets.iter().map(|(k, v)| (k.clone(), *v)), args.top),
            "api_key": top_of(s.refused_keys.iter().map(|(k, v)| (k.clone(), *v)), args.top),
        },
        "samples": samples.into_iter().take(args.top.max(20)).map(|(rule, v)| serde_json::json!({ "rule": rule, "requests": v })).collect::<Vec<_>>(),
        "per_minute": per_minute,
        "stand_ins": "routes that need a credential: a key per client address unless the line shows 401 (or names a key); headers: only those the log kept, no header fingerprints; no reverse DNS for claimed bots; no login bodies (stuffing without usernames)",
    });
    if let Some(o) = old {
        let (changed, why, samples) = changes;
        let mut why_sorted: Vec<(&(String, String), &u64)> = why.iter().collect();
        why_sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let why_rows: Vec<serde_json::Value> = why_sorted
            .into_iter()
            .take(args.top.max(20))
            .map(|((t, r), n)| serde_json::json!({ "change": t, "rules": r, "count": n }))
            .collect();
        let against = serde_json::json!({
            "policy": args.against.as_ref().map(|p| p.display().to_string()),
            "actions": o.stats.actions,
            "changed": changed.values().sum::<u64>(),
            "transitions": changed.iter().map(|((a, b), n)| serde_json::json!({ "from": a, "to": b, "count": n })).collect::<Vec<_>>(),
            "why": why_rows,
            "samples": samples,
        });
        if let Some(o) = out.as_object_mut() {
            o.insert("against".to_owned(), against);
        }
    }
    out
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_text(r: &serde_json::Value) {
    let n = |v: &serde_json::Value| group(v.as_u64().unwrap_or(0));
    let mut o = String::new();
    let requests = r["requests"].as_u64().unwrap_or(0).max(1) as f64;
    o.push_str(&format!(
        "palisade replay: {} lines, {} requests judged with {} ({} lines/s); {} lines not read\n",
        n(&r["lines"]),
        n(&r["requests"]),
        r["policy"].as_str().unwrap_or(""),
        n(&r["lines_per_second"]),
        n(&r["unread"]),
    ));
    for s in r["unread_samples"].as_array().into_iter().flatten() {
        o.push_str(&format!("  unread {}\n", s.as_str().unwrap_or("")));
    }
    o.push_str("\nwhat the policy would have done:\n");
    for (a, c) in r["actions"].as_object().into_iter().flatten() {
        let c = c.as_u64().unwrap_or(0);
        o.push_str(&format!(
            "  {a:<14} {:>12}  {:>6.2}%\n",
            group(c),
            c as f64 * 100.0 / requests
        ));
    }
    for (title, key) in [("by rule", "rules"), ("by signal", "signals")] {
        o.push_str(&format!("\n{title}:\n"));
        for e in r[key].as_array().into_iter().flatten() {
            o.push_str(&format!(
                "  {:<40} {:>12}\n",
                e["name"].as_str().unwrap_or(""),
                n(&e["count"])
            ));
        }
    }
    o.push_str("\nby route:\n");
    for (route, acts) in r["routes"].as_object().into_iter().flatten() {
        let parts: Vec<String> = acts
            .as_object()
            .into_iter()
            .flatten()
            .map(|(a, c)| format!("{a} {}", n(c)))
            .collect();
        o.push_str(&format!("  {route:<20} {}\n", parts.join(", ")));
    }
    o.push_str("\nmost refused:\n");
    for dim in ["ip", "ip/24", "api_key"] {
        for e in r["top_refused"]
            .get(dim)
            .unwrap_or(&serde_json::Value::Null)
            .as_array()
            .into_iter()
            .flatten()
        {
            o.push_str(&format!(
                "  {dim:<8} {:<40} {:>10}\n",
                e["name"].as_str().unwrap_or(""),
                n(&e["count"])
            ));
        }
    }
    o.push_str("\nsamples:\n");
    for e in r["samples"].as_array().into_iter().flatten() {
        o.push_str(&format!("  {}\n", e["rule"].as_str().unwrap_or("")));
        for s in e["requests"].as_array().into_iter().flatten() {
            o.push_str(&format!("    {}\n", s.as_str().unwrap_or("")));
        }
    }
    if let Some(a) = r.get("against") {
        o.push_str(&format!(
            "\nagainst {}: {} requests change action\n",
            a["policy"].as_str().unwrap_or(""),
            n(&a["changed"])
        ));
        for t in a["transitions"].as_array().into_iter().flatten() {
            o.push_str(&format!(
                "  {:<12} → {:<12} {:>12}\n",
                t["from"].as_str().unwrap_or(""),
                t["to"].as_str().unwrap_or(""),
                n(&t["count"])
            ));
        }
        o.push_str("  why:\n");
        for w in a["why"].as_array().into_iter().flatten() {
            o.push_str(&format!(
                "    {:<24} {:<36} {:>10}\n",
                w["change"].as_str().unwrap_or(""),
                w["rules"].as_str().unwrap_or(""),
                n(&w["count"])
            ));
        }
        for s in a["samples"].as_array().into_iter().flatten() {
            o.push_str(&format!("    {}\n", s.as_str().unwrap_or("")));
        }
    }
    o.push_str(&format!(
        "\n(stand-ins: {})\n",
        r["stand_ins"].as_str().unwrap_or("")
    ));
    let _ = std::io::stdout().write_all(o.as_bytes());
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart as inline SVG.
fn bars(rows: &[(String, u64)]) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1) as f64;
    let h = 22 * rows.len() + 4;
    let mut s = format!("<svg width=\"720\" height=\"{h}\" role=\"img\">");
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 22 * i + 2;
        let w = (*v as f64 / max * 400.0).max(1.0);
        s.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"260\" y=\"{y}\" width=\"{w:.0}\" height=\"16\" fill=\"#4a7bd0\"/><text x=\"{:.0}\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 13,
            esc(&label.chars().take(40).collect::<String>()),
            266.0 + w,
            y + 13,
            group(*v)
        ));
    }
    s.push_str("</svg>");
    s
}

/// The requests and refusals per minute as an inline SVG line chart.
fn timeline(points: &[serde_json::Value]) -> String {
    if points.len() < 2 {
        return String::new();
    }
    let max = points
        .iter()
        .filter_map(|p| p[1].as_u64())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (w, h) = (720.0, 160.0);
    let step = w / (points.len() - 1) as f64;
    let line = |i: usize| -> String {
        points
            .iter()
            .enumerate()
            .map(|(x, p)| {
                let v = p[i].as_u64().unwrap_or(0) as f64;
                format!("{:.1},{:.1}", x as f64 * step, h - v / max * (h - 10.0))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "<svg width=\"{w}\" height=\"{h}\" role=\"img\"><polyline fill=\"none\" stroke=\"#4a7bd0\" stroke-width=\"1.5\" points=\"{}\"/><polyline fill=\"none\" stroke=\"#d04a4a\" stroke-width=\"1.5\" points=\"{}\"/></svg><p class=\"legend\"><span style=\"color:#4a7bd0\">■</span> requests per minute <span style=\"color:#d04a4a\">■</span> refused, delayed or challenged</p>",
        line(1),
        line(2)
    )
}

fn html(r: &serde_json::Value) -> String {
    let rows = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_owned(),
                    e["count"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let actions: Vec<(String, u64)> = r["actions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    let mut body = format!(
        "<h1>Palisade replay</h1><p>{} lines ({} not read), {} requests judged with <code>{}</code>.</p>",
        group(r["lines"].as_u64().unwrap_or(0)),
        group(r["unread"].as_u64().unwrap_or(0)),
        group(r["requests"].as_u64().unwrap_or(0)),
        esc(r["policy"].as_str().unwrap_or(""))
    );
    body.push_str("<h2>Over time</h2>");
    body.push_str(&timeline(
        r["per_minute"].as_array().map_or(&[][..], |v| v.as_slice()),
    ));
    body.push_str("<h2>Actions</h2>");
    body.push_str(&bars(&actions));
    body.push_str("<h2>Rules</h2>");
    body.push_str(&bars(&rows(&r["rules"])));
    body.push_str("<h2>Signals</h2>");
    body.push_str(&bars(&rows(&r["signals"])));
    body.push_str("<h2>Most refused</h2>");
    for dim in ["ip", "ip/24", "api_key"] {
        let rs = rows(
            r["top_refused"]
                .get(dim)
                .unwrap_or(&serde_json::Value::Null),
        );
        if !rs.is_empty() {
            body.push_str(&format!("<h3>{dim}</h3>{}", bars(&rs)));
        }
    }
    body.push_str("<h2>Samples</h2>");
    for e in r["samples"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<h3>{}</h3><pre>",
            esc(e["rule"].as_str().unwrap_or(""))
        ));
        for s in e["requests"].as_array().into_iter().flatten() {
            body.push_str(&esc(s.as_str().unwrap_or("")));
            body.push('\n');
        }
        body.push_str("</pre>");
    }
    if let Some(a) = r.get("against") {
        body.push_str(&format!(
            "<h2>Against {}</h2><p>{} requests change action.</p><table><tr><th>from</th><th>to</th><th>requests</th></tr>",
            esc(a["policy"].as_str().unwrap_or("")),
            group(a["changed"].as_u64().unwrap_or(0))
        ));
        for t in a["transitions"].as_array().into_iter().flatten() {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(t["from"].as_str().unwrap_or("")),
                esc(t["to"].as_str().unwrap_or("")),
                group(t["count"].as_u64().unwrap_or(0))
            ));
        }
        body.push_str("</table><pre>");
        for s in a["samples"].as_array().into_iter().flatten() {
            body.push_str(&esc(s.as_str().unwrap_or("")));
            body.push('\n');
        }
        body.push_str("</pre>");
    }
    body.push_str(&format!(
        "<p class=\"legend\">Stand-ins: {}</p>",
        esc(r["stand_ins"].as_str().unwrap_or(""))
    ));
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Palisade replay</title>\
         <style>body{{font:14px system-ui,sans-serif;max-width:780px;margin:2em auto;color:#222}}\
         pre{{background:#f4f4f4;padding:.5em;overflow:auto;font-size:12px}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px}}.legend{{font-size:12px;color:#555}}</style></head>\
         <body>{body}</body></html>"
    )
}
