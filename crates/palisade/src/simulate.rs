//! `palisade simulate`: scripted people, API integrations and bots, side by side, against a
//! real gateway process.
//!
//! The simulator starts its own upstream (the sample API, marking every answer it gives with
//! `x-sim-upstream`), starts `palisade serve` as a child process in front of it (the embedded
//! default policy, or `--config`), creates the API keys its actors need through the admin API,
//! and runs every actor from its own loopback source addresses (127.0.0.0/8) until the time is
//! up. A request *reached the upstream* when its answer carries the marker; it was *stopped*
//! when it did not, or when the gateway held it for `--delay-bound` or longer.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Arguments of `palisade simulate`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Config to run the gateway with (its upstream is replaced by the simulator's sample API);
    /// without it, the embedded default policy.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// How long to run.
    #[arg(long, default_value = "90s")]
    pub duration: String,
    /// People browsing, signing in and reading.
    #[arg(long, default_value_t = 30)]
    pub humans: u32,
    /// People behind one corporate NAT address.
    #[arg(long, default_value_t = 8)]
    pub office: u32,
    /// Customers' keyed integrations (each its own key, account and network; half of them
    /// syncing the catalog in order; several on one client library).
    #[arg(long, default_value_t = 10)]
    pub integrations: u32,
    /// A request held this long by the gateway counts as stopped (delayed past the bound).
    #[arg(long, default_value = "1s")]
    pub delay_bound: String,
    /// Requests of each bot actor not judged (detection needs some traffic to see).
    #[arg(long, default_value_t = 50)]
    pub grace: u32,
    /// Random seed (the same seed replays the same scripts).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the gateway's decision log here (default: discarded).
    #[arg(long)]
    pub decision_log: Option<PathBuf>,
    /// `palisade demo`: print where the dashboard is and how to sign in once the gateway is
    /// up, and stop early (with the report so far) on Ctrl-C.
    #[arg(skip)]
    pub demo: bool,
}

/// Actor classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    Human,
    Office,
    Integration,
    Sync,
    Flood,
    Stuffing,
    Enumeration,
    LowAndSlow,
    CacheBusting,
    IgnoresRetryAfter,
    Scanner,
    Injection,
}

impl Class {
    const ALL: [Class; 12] = [
        Class::Human,
        Class::Office,
        Class::Integration,
        Class::Sync,
        Class::Flood,
        Class::Stuffing,
        Class::Enumeration,
        Class::LowAndSlow,
        Class::CacheBusting,
        Class::IgnoresRetryAfter,
        Class::Scanner,
        Class::Injection,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::Human => "human",
            Class::Office => "people_behind_nat",
            Class::Integration => "integration",
            Class::Sync => "integration_sync",
            Class::Flood => "flood",
            Class::Stuffing => "credential_stuffing",
            Class::Enumeration => "enumeration_scraper",
            Class::LowAndSlow => "low_and_slow_keys",
            Class::CacheBusting => "cache_busting",
            Class::IgnoresRetryAfter => "ignores_retry_after",
            Class::Scanner => "probing_scanner",
            Class::Injection => "injection_prober",
        }
    }

    fn is_bot(self) -> bool {
        self.group() == Group::Bots
    }

    fn group(self) -> Group {
        match self {
            Class::Human | Class::Office => Group::People,
            Class::Integration | Class::Sync => Group::Integrations,
            _ => Group::Bots,
        }
    }
}

/// Who a class stands for: false positives on people and on customers' integrations are
/// reported apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    People,
    Integrations,
    Bots,
}

/// One request's fate.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    class: Class,
    actor: u32,
    seq: u64,
    reached: bool,
    delayed: bool,
    challenged: bool,
    refused: bool,
}

/// One answer, as the actor sees it.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    session: Option<String>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Sim {
    base: String,
    deadline: Instant,
    delay_bound: Duration,
    clients: Mutex<HashMap<IpAddr, HttpClient>>,
    outcomes: Mutex<Vec<Outcome>>,
    seq: AtomicU64,
}

/// A header set a client sends.
type Headers = Vec<(&'static str, String)>;

fn chrome() -> Headers {
    vec![
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36".into()),
        ("sec-ch-ua", "\"Chromium\";v=\"130\", \"Google Chrome\";v=\"130\", \"Not?A_Brand\";v=\"99\"".into()),
        ("sec-ch-ua-mobile", "?0".into()),
        ("sec-ch-ua-platform", "\"Windows\"".into()),
        ("accept", "application/json, text/plain, */*".into()),
        ("sec-fetch-site", "same-origin".into()),
        ("sec-fetch-mode", "cors".into()),
        ("sec-fetch-dest", "empty".into()),
        ("accept-encoding", "gzip, deflate, br, zstd".into()),
        ("accept-language", "en-US,en;q=0.9".into()),
    ]
}

fn firefox() -> Headers {
    vec![
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0".into(),
        ),
        ("accept", "application/json, text/plain, */*".into()),
        (
            "accept-language",
            "de-DE,de;q=0.8,en-US;q=0.5,en;q=0.3".into(),
        ),
        ("accept-encoding", "gzip, deflate, br, zstd".into()),
        ("sec-fetch-dest", "empty".into()),
        ("sec-fetch-mode", "cors".into()),
        ("sec-fetch-site", "same-origin".into()),
    ]
}

/// The client library of customer `i`'s integration, as the library sends its headers. The
/// common ones come first and twice (python-requests, axios), so that even a short run has
/// unrelated customers on one library — which is also the swarm's.
fn library(i: u32) -> Headers {
    match i % 11 {
        0 | 2 => python_requests(),
        1 | 4 => vec![
            ("accept", "application/json, text/plain, */*".into()),
            ("user-agent", "axios/1.7.7".into()),
            ("accept-encoding", "gzip, compress, deflate, br".into()),
        ],
        3 => vec![
            ("user-agent", "Go-http-client/1.1".into()),
            ("accept-encoding", "gzip".into()),
        ],
        5 => vec![
            ("accept", "application/json".into()),
            ("user-agent", "okhttp/4.12.0".into()),
            ("accept-encoding", "gzip".into()),
        ],
        6 => vec![("user-agent", "Java-http-client/21.0.5".into())],
        7 => vec![
            ("user-agent", "curl/8.11.0".into()),
            ("accept", "*/*".into()),
        ],
        8 => vec![
            (
                "accept-encoding",
                "gzip;q=1.0,deflate;q=0.6,identity;q=0.3".into(),
            ),
            ("accept", "*/*".into()),
            ("user-agent", "Faraday v2.12.0".into()),
        ],
        9 => vec![
            ("user-agent", "PostmanRuntime/7.42.0".into()),
            ("accept", "*/*".into()),
            ("cache-control", "no-cache".into()),
            ("accept-encoding", "gzip, deflate, br".into()),
        ],
        _ => vec![
            (
                "user-agent",
                "acme-erp-sync/3.2 (+https://acme.example/erp)".into(),
            ),
            ("accept", "application/json".into()),
            ("accept-language", "fr-FR".into()),
        ],
    }
}

fn python_requests() -> Headers {
    vec![
        ("user-agent", "python-requests/2.32.3".into()),
        ("accept-encoding", "gzip, deflate".into()),
        ("accept", "*/*".into()),
    ]
}

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

impl Sim {
    fn client(&self, ip: IpAddr) -> HttpClient {
        let mut map = match self.clients.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(ip)
            .or_insert_with(|| {
                let mut c = HttpConnector::new();
                c.set_local_address(Some(ip));
                c.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(4)
                    .build(c)
            })
            .clone()
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Sends one request and records what became of it. `None` when the request failed at
    /// the transport (counted as stopped) or the run is over.
    #[allow(clippy::too_many_arguments, reason = "one request, all of it")]
    async fn send(
        &self,
        class: Class,
        actor: u32,
        ip: IpAddr,
        method: &str,
        path: &str,
        headers: &Headers,
        body: Option<String>,
    ) -> Option<Answer> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .ok()?;
        // One sequence for the whole run: per actor, it orders requests as they were sent,
        // whichever of its connections sent them.
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result =
            tokio::time::timeout(Duration::from_secs(60), self.client(ip).request(req)).await;
        let elapsed = started.elapsed();
        let record = |reached: bool, status: u16| Outcome {
            class,
            actor,
            seq: n,
            reached,
            delayed: reached && elapsed >= self.delay_bound,
            challenged: !reached && status == 403,
            refused: !reached,
        };
        let resp = match result {
            Ok(Ok(r)) => r,
            _ => {
                self.record(record(false, 0));
                return None;
            }
        };
        let status = resp.status().as_u16();
        let reached = resp.headers().contains_key("x-sim-upstream");
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let session = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|kv| kv.strip_prefix("session="))
            .map(str::to_owned);
        let body = resp.into_body().collect().await.ok().map(|c| c.to_bytes());
        let mut o = record(reached, status);
        o.challenged = !reached
            && body
                .as_ref()
                .is_some_and(|b| b.windows(9).any(|w| w == b"challenge"));
        self.record(o);
        Some(Answer {
            status,
            retry_after,
            session,
        })
    }

    fn record(&self, o: Outcome) {
        if let Ok(mut v) = self.outcomes.lock() {
            v.push(o);
        }
    }
}

async fn sleep_secs(rng: &mut StdRng, lo: f64, hi: f64) {
    let s = rng.random_range(lo..hi);
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

/// A person: browse, sign in (sometimes mistyping), pick items and read them, with bursty
/// think times; keeps the session cookie. `Class::Human` is on a network of its own;
/// `Class::Office` shares one corporate NAT address with colleagues on the same managed browser.
async fn human(sim: Arc<Sim>, c: Class, id: u32, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (ip, mut headers) = if c == Class::Office {
        (v4(15, 0, 1), chrome())
    } else if id.is_multiple_of(3) {
        (v4(10, (id % 250) as u8, 1 + (id / 250) as u8), firefox())
    } else {
        (v4(10, (id % 250) as u8, 1 + (id / 250) as u8), chrome())
    };
    // Colleagues sign in as themselves.
    let user = if c == Class::Office { 500 + id } else { id };
    // People arrive over the first seconds, not all at once.
    sleep_secs(&mut rng, 0.0, 5.0).await;
    // What people type: ids and words, and the honest look-alikes of injection probes
    // (apostrophes, ampersands, SQL words, markup-ish text, percentages), percent-encoded.
    let words = [
        "1",
        "2",
        "lamp",
        "7",
        "chair",
        "42",
        "desk",
        "9",
        "O%27Reilly%20desk",
        "rock%20%26%20roll%20lamp",
        "select%20a%20chair%20or%20a%20desk",
        "drop%20leaf%20table",
        "%3C3%20this%20lamp",
        "100%25%20oak",
        "Tom%27s%20chair%20--%20walnut",
        "6%272%22%20tall%20shelf",
    ];
    while sim.running() {
        sim.send(c, id, ip, "GET", "/", &headers, None).await;
        sleep_secs(&mut rng, 1.0, 6.0).await;
        let q = words
            .get(rng.random_range(0..words.len()))
            .copied()
            .unwrap_or("1");
        sim.send(
            c,
            id,
            ip,
            "GET",
            &format!("/api/search?q={q}"),
            &headers,
            None,
        )
        .await;
        sleep_secs(&mut rng, 2.0, 8.0).await;
        if rng.random_bool(0.1) {
            let body = format!(
                "{{\"username\":\"user-{}\",\"password\":\"oops\"}}",
                user + 1
            );
            sim.send(c, id, ip, "POST", "/api/login", &headers, Some(body))
                .await;
            sleep_secs(&mut rng, 2.0, 6.0).await;
        }
        let body = format!(
            "{{\"username\":\"user-{}\",\"password\":\"palisade-demo\"}}",
            user + 1
        );
        if let Some(a) = sim
            .send(c, id, ip, "POST", "/api/login", &headers, Some(body))
            .await
            && let Some(s) = a.session
        {
            headers.retain(|(k, _)| *k != "cookie");
            headers.push(("cookie", format!("session={s}")));
        }
        for _ in 0..rng.random_range(2..7) {
            if !sim.running() {
                return;
            }
            // Quick clicks now and then, mostly reading.
            if rng.random_bool(0.3) {
                sleep_secs(&mut rng, 1.0, 2.0).await;
            } else {
                sleep_secs(&mut rng, 3.0, 15.0).await;
            }
            let item = rng.random_range(1..1000);
            sim.send(
                c,
                id,
                ip,
                "GET",
                &format!("/api/items/{item}"),
                &headers,
                None,
            )
            .await;
        }
        sleep_secs(&mut rng, 5.0, 20.0).await;
    }
}

/// Customer `id`'s integration: its own key and account, its own network, a common client
/// library, honouring `Retry-After`. Even customers sync the catalog by walking item ids in order
/// (`integration_sync`), starting over after the 404 past the last one; every fourth of them runs
/// two workers from three networks (a fleet behind cloud NATs). Odd customers read and search at
/// random on a schedule (`integration`).
async fn integration(sim: Arc<Sim>, id: u32, key: String, seed: u64) {
    let mut headers = library(id);
    headers.push(("x-api-key", key));
    if !id.is_multiple_of(2) {
        reads(sim, id, headers, seed).await;
        return;
    }
    let workers: u32 = if id.is_multiple_of(4) { 2 } else { 1 };
    let mut tasks = Vec::new();
    for w in 0..workers {
        let sim = sim.clone();
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ u64::from(w));
            let period = Duration::from_millis(400 + 150 * u64::from(id % 5));
            let mut item = 1 + 500 * w;
            sleep_secs(&mut rng, 0.0, 2.0).await;
            while sim.running() {
                let ip = if workers > 1 {
                    v4(21 + rng.random_range(0..3), id as u8, 1 + w as u8)
                } else {
                    v4(20, id as u8, 1)
                };
                let a = sim
                    .send(
                        Class::Sync,
                        id,
                        ip,
                        "GET",
                        &format!("/api/items/{item}"),
                        &headers,
                        None,
                    )
                    .await;
                match a {
                    Some(a) if a.status == 429 => {
                        let wait = a.retry_after.unwrap_or(1).max(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    Some(a) if a.status == 404 => {
                        item = 1;
                        tokio::time::sleep(period).await;
                    }
                    Some(_) => {
                        item += 1;
                        tokio::time::sleep(period).await;
                    }
                    None => tokio::time::sleep(period).await,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A customer's integration reading items and searching at random, steady, on a schedule.
async fn reads(sim: Arc<Sim>, id: u32, headers: Headers, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ip = v4(20, id as u8, 1);
    let period = Duration::from_millis(500 + 250 * u64::from(id % 4));
    sleep_secs(&mut rng, 0.0, 2.0).await;
    while sim.running() {
        let path = if rng.random_bool(0.5) {
            format!("/api/items/{}", rng.random_range(1..1000))
        } else {
            format!("/api/search?q={}", rng.random_range(1..100))
        };
        let a = sim
            .send(Class::Integration, id, ip, "GET", &path, &headers, None)
            .await;
        match a {
            Some(a) if a.status == 429 => {
                tokio::time::sleep(Duration::from_secs(a.retry_after.unwrap_or(1).max(1))).await;
            }
            _ => tokio::time::sleep(period).await,
        }
    }
}

/// One address, as fast as a few connections go (paced to keep the machine usable).
async fn flood(sim: Arc<Sim>) {
    readers(sim, Class::Flood, v4(30, 0, 1), python_requests(), 5, 0).await;
}

/// Two connections from one address reading random items as fast as the answers come,
/// pausing `pause_ms` between requests and never waiting for a Retry-After.
async fn readers(
    sim: Arc<Sim>,
    class: Class,
    ip: IpAddr,
    headers: Headers,
    pause_ms: u64,
    seed: u64,
) {
    let mut tasks = Vec::new();
    for w in 0..2u64 {
        let sim = sim.clone();
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ w);
            while sim.running() {
                let path = format!("/api/items/{}", rng.random_range(1..1000));
                sim.send(class, 0, ip, "GET", &path, &headers, None).await;
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Logins with leaked username/password pairs from many addresses (one per /24), a few
/// attempts each.
async fn stuffing(sim: Arc<Sim>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let headers = python_requests();
    let mut n = 0u32;
    while sim.running() {
        let ip = v4(40, (n / 3 % 250) as u8, 1 + (n / 750 % 250) as u8);
        let body = format!(
            "{{\"username\":\"victim{}@mail.example\",\"password\":\"{:08x}\"}}",
            rng.random_range(0..100_000),
            rng.random::<u32>()
        );
        sim.send(
            Class::Stuffing,
            0,
            ip,
            "POST",
            "/api/login",
            &headers,
            Some(body),
        )
        .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Walks item ids one by one from a handful of addresses in one network.
async fn enumeration(sim: Arc<Sim>) {
    let headers = vec![
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36".into()),
        ("accept", "application/json".into()),
    ];
    let mut id = 1u32;
    while sim.running() {
        let ip = v4(50, 0, 1 + (id % 4) as u8);
        sim.send(
            Class::Enumeration,
            0,
            ip,
            "GET",
            &format!("/api/items/{id}"),
            &headers,
            None,
        )
        .await;
        id = id % 1000 + 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Many keys, each well under its limits, from one network: together heavy.
async fn low_and_slow(sim: Arc<Sim>, keys: Vec<String>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while sim.running() && !keys.is_empty() {
        let k = keys
            .get(rng.random_range(0..keys.len()))
            .cloned()
            .unwrap_or_default();
        let ip = v4(60, 0, rng.random_range(1..21));
        let mut headers = python_requests();
        headers.push(("x-api-key", k));
        let path = format!("/api/items/{}", rng.random_range(1..1000));
        sim.send(Class::LowAndSlow, 0, ip, "GET", &path, &headers, None)
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The expensive endpoint with a fresh throwaway parameter every time, from four connections at
/// once, never waiting for a `Retry-After`.
async fn cache_busting(sim: Arc<Sim>, key: String, seed: u64) {
    let ip = v4(70, 0, 1);
    let mut headers = python_requests();
    headers.push(("x-api-key", key));
    let mut tasks = Vec::new();
    for w in 0..4u32 {
        let sim = sim.clone();
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ u64::from(w));
            while sim.running() {
                let path = format!("/api/expensive?model=m1&cb={:x}", rng.random::<u64>());
                sim.send(Class::CacheBusting, 0, ip, "GET", &path, &headers, None)
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Reads at a rate over its limit and keeps going after 429s, never waiting for
/// Retry-After.
async fn ignores_retry_after(sim: Arc<Sim>, seed: u64) {
    let headers = vec![
        ("user-agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15".into()),
        ("accept", "*/*".into()),
        ("accept-language", "en-GB".into()),
    ];
    readers(
        sim,
        Class::IgnoresRetryAfter,
        v4(80, 0, 1),
        headers,
        60,
        seed,
    )
    .await;
}

/// Probes for well-known files and admin pages, and tries injections.
async fn scanner(sim: Arc<Sim>) {
    let ip = v4(90, 0, 1);
    let headers = vec![
        (
            "user-agent",
            "Mozilla/5.0 (compatible; Nimbostratus-Bot/v1.3.2)".into(),
        ),
        ("accept", "*/*".into()),
    ];
    let probes = [
        "/admin",
        "/api/admin",
        "/api/v1/users",
        "/api/items/1%27%20OR%201=1--",
        "/login",
        "/api/items/0",
        "/server-status",
        "/backup.zip",
        "/config.json",
        "/api/debug",
        "/.env",
        "/wp-login.php",
        "/.git/config",
        "/phpmyadmin/index.php",
        "/actuator/health",
    ];
    let mut i = 0usize;
    while sim.running() {
        let p = probes.get(i % probes.len()).copied().unwrap_or("/");
        let path = if i >= probes.len() {
            format!("{p}?v={i}")
        } else {
            p.to_owned()
        };
        sim.send(Class::Scanner, 0, ip, "GET", &path, &headers, None)
            .await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An injection prober (four workers) behind a browser's user agent, rotating addresses in a /16: SQL,
/// script, traversal, template and command payloads in the search query and a JSON login body,
/// percent-encoded as tools send them. Only the probe scan tells it from a person.
async fn injection(sim: Arc<Sim>, worker: u8) {
    let headers = chrome();
    let payloads = [
        "1%27%20OR%20%271%27%3D%271",
        "%27%20UNION%20SELECT%20username%2Cpassword%20FROM%20users--",
        "1%20AND%20SLEEP(5)",
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "%22%3E%3Csvg%2Fonload%3Dalert(1)%3E",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%7B%7B7*7%7D%7D",
        "%3Bcat%20%2Fetc%2Fpasswd",
        "http%3A%2F%2F169.254.169.254%2Flatest%2Fmeta-data%2F",
        "1%27%20AND%20extractvalue(1%2Cconcat(0x7e%2Cversion()))--",
    ];
    let mut i = 0usize;
    while sim.running() {
        let ip = v4(
            91,
            worker.wrapping_mul(50).wrapping_add((i / 200 % 50) as u8),
            (i % 200) as u8 + 1,
        );
        let p = payloads.get(i % payloads.len()).copied().unwrap_or("1");
        if i % 5 == 4 {
            let body = format!("{{\"username\":\"admin' --\",\"password\":\"x{i}\"}}");
            sim.send(
                Class::Injection,
                0,
                ip,
                "POST",
                "/api/login",
                &headers,
                Some(body),
            )
            .await;
        } else {
            sim.send(
                Class::Injection,
                0,
                ip,
                "GET",
                &format!("/api/search?q={p}"),
                &headers,
                None,
            )
            .await;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per-class figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassReport {
    /// Class name.
    pub class: String,
    /// Whether the class is a bot.
    pub bot: bool,
    /// `people`, `integrations` or `bots`.
    pub group: Group,
    /// Requests sent.
    pub requests: u64,
    /// Requests that reached the upstream.
    pub reached_upstream: u64,
    /// Share of requests that reached the upstream.
    pub reached_share: f64,
    /// Requests judged (bots: after each actor's grace requests; others: all).
    pub judged: u64,
    /// Judged requests stopped: refused (limited, challenged, blocked) or delayed past the
    /// bound.
    pub stopped: u64,
    /// `stopped / judged`.
    pub stopped_share: f64,
    /// Judged requests that were delayed past the bound but served.
    pub delayed: u64,
    /// Judged requests that were challenged.
    pub challenged: u64,
    /// Judged requests that were refused otherwise (limit, block, transport failure).
    pub refused: u64,
    /// Whether the class met its target (bots: >= 99% stopped, i.e. at most 1% reaching the
    /// upstream after the grace; others: <= 0.1%).
    pub target_met: bool,
}

fn report(outcomes: &[Outcome], grace: u32) -> Vec<ClassReport> {
    Class::ALL
        .iter()
        .map(|&class| {
            let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.class == class).collect();
            let mut r = ClassReport {
                class: class.name().to_owned(),
                bot: class.is_bot(),
                group: class.group(),
                requests: mine.len() as u64,
                reached_upstream: mine.iter().filter(|o| o.reached).count() as u64,
                reached_share: 0.0,
                judged: 0,
                stopped: 0,
                stopped_share: 0.0,
                delayed: 0,
                challenged: 0,
                refused: 0,
                target_met: false,
            };
            // Per actor, the first `grace` requests in the order they were sent.
            let mut per_actor: HashMap<u32, Vec<&Outcome>> = HashMap::new();
            for o in &mine {
                per_actor.entry(o.actor).or_default().push(o);
            }
            for (_, mut v) in per_actor {
                v.sort_by_key(|o| o.seq);
                let skip = if class.is_bot() { grace as usize } else { 0 };
                for o in v.into_iter().skip(skip) {
                    r.judged += 1;
                    if o.delayed {
                        r.delayed += 1;
                    }
                    if o.challenged {
                        r.challenged += 1;
                    } else if o.refused {
                        r.refused += 1;
                    }
                    if o.delayed || o.refused {
                        r.stopped += 1;
                    }
                }
            }
            let share = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            r.reached_share = share(r.reached_upstream, r.requests);
            r.stopped_share = share(r.stopped, r.judged);
            r.target_met = if class.is_bot() {
                r.judged > 0 && r.stopped_share >= 0.99
            } else {
                r.judged > 0 && r.stopped_share <= 0.001
            };
            r
        })
        .collect()
}

/// The whole run's report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimReport {
    /// Seconds the actors ran.
    pub duration_secs: f64,
    /// Bot requests not judged per actor.
    pub grace: u32,
    /// Delay that counts as stopped, in seconds.
    pub delay_bound_secs: f64,
    /// Per class.
    pub classes: Vec<ClassReport>,
    /// People (on their own networks and behind one NAT address) together.
    pub people: GroupReport,
    /// Customers' integrations together.
    pub integrations: GroupReport,
    /// Whether every class met its target.
    pub all_targets_met: bool,
}

/// False positives of one group of legitimate classes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupReport {
    /// Requests judged.
    pub judged: u64,
    /// Judged requests refused or delayed past the bound.
    pub stopped: u64,
    /// `stopped / judged`.
    pub stopped_share: f64,
}

fn group_report(classes: &[ClassReport], g: Group) -> GroupReport {
    let (judged, stopped) = classes
        .iter()
        .filter(|c| c.group == g)
        .fold((0, 0), |(j, s), c| (j + c.judged, s + c.stopped));
    GroupReport {
        judged,
        stopped,
        stopped_share: if judged == 0 {
            0.0
        } else {
            stopped as f64 / judged as f64
        },
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The simulator's upstream: the sample API, marking its answers.
async fn start_upstream() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = palisade_gateway::sample_api::router().layer(axum::middleware::map_response(
        |mut r: axum::response::Response| async move {
            r.headers_mut()
                .insert("x-sim-upstream", http::HeaderValue::from_static("1"));
            r
        },
    ));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn admin_post(
    client: &HttpClient,
    admin: &str,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{admin}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "admin {path} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Runs the simulation and returns its report.
pub async fn run(args: &SimArgs) -> anyhow::Result<SimReport> {
    let duration = palisade_engine::units::parse_duration(&args.duration)
        .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let delay_bound = palisade_engine::units::parse_duration(&args.delay_bound)
        .map_err(|e| anyhow::anyhow!("--delay-bound: {e}"))?;
    let upstream = start_upstream().await?;
    let (proxy_port, admin_port) = (free_port()?, free_port()?);
    let data_dir =
        std::env::temp_dir().join(format!("palisade-sim-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&data_dir)?;
    let token = format!("{:032x}", rand::random::<u128>());
    let exe = std::env::current_exe().context("finding the palisade binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve")
        .arg("--upstream")
        .arg(format!("http://{upstream}"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{proxy_port}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .env("PALISADE_ADMIN_TOKEN", &token)
        .env_remove("PALISADE_CONFIG")
        .stderr(Stdio::null());
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    match &args.decision_log {
        Some(p) => {
            cmd.stdout(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
        }
        None => {
            cmd.stdout(Stdio::null());
        }
    }
    let _child = Child(cmd.spawn().context("starting the gateway")?);
    let admin = format!("http://127.0.0.1:{admin_port}");
    let plain: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let started = Instant::now();
    loop {
        let ok = match http::Request::get(format!("{admin}/healthz")).body(Full::new(Bytes::new()))
        {
            Ok(req) => plain
                .request(req)
                .await
                .is_ok_and(|r| r.status().is_success()),
            Err(_) => false,
        };
        if ok {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the gateway did not become healthy within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // All keys are made now, within a second: onboarding day for the customers as for the swarm.
    let create = |name: String, account: String| {
        let plain = plain.clone();
        let admin = admin.clone();
        let token = token.clone();
        async move {
            let j = admin_post(
                &plain,
                &admin,
                &token,
                "/v1/keys",
                serde_json::json!({ "name": name, "account": account }),
            )
            .await?;
            j.get("key")
                .and_then(|k| k.as_str())
                .map(str::to_owned)
                .context("the admin API returned no key")
        }
    };
    let mut integration_keys = Vec::new();
    for i in 0..args.integrations {
        integration_keys.push(create(format!("integration-{i}"), format!("customer-{i}")).await?);
    }
    let mut swarm = Vec::new();
    for i in 0..100 {
        swarm.push(create(format!("swarm-{i}"), format!("burner-{i}")).await?);
    }
    let busting_key = create("busting".to_owned(), "busting".to_owned()).await?;

    let sim = Arc::new(Sim {
        base: format!("http://127.0.0.1:{proxy_port}"),
        deadline: Instant::now() + Duration::from_nanos(duration),
        delay_bound: Duration::from_nanos(delay_bound),
        clients: Mutex::new(HashMap::new()),
        outcomes: Mutex::new(Vec::new()),
        seq: AtomicU64::new(0),
    });
    let seed = args.seed;
    let mut tasks = Vec::new();
    for h in 0..args.humans {
        tasks.push(tokio::spawn(human(
            sim.clone(),
            Class::Human,
            h,
            seed ^ (1000 + u64::from(h)),
        )));
    }
    for h in 0..args.office {
        tasks.push(tokio::spawn(human(
            sim.clone(),
            Class::Office,
            h,
            seed ^ (5000 + u64::from(h)),
        )));
    }
    for (i, k) in integration_keys.into_iter().enumerate() {
        tasks.push(tokio::spawn(integration(
            sim.clone(),
            i as u32,
            k,
            seed ^ (2000 + i as u64),
        )));
    }
    tasks.push(tokio::spawn(flood(sim.clone())));
    tasks.push(tokio::spawn(stuffing(sim.clone(), seed ^ 3)));
    tasks.push(tokio::spawn(enumeration(sim.clone())));
    tasks.push(tokio::spawn(low_and_slow(sim.clone(), swarm, seed ^ 4)));
    tasks.push(tokio::spawn(cache_busting(
        sim.clone(),
        busting_key,
        seed ^ 5,
    )));
    tasks.push(tokio::spawn(ignores_retry_after(sim.clone(), seed ^ 6)));
    tasks.push(tokio::spawn(scanner(sim.clone())));
    // Tools run probes concurrently.
    for worker in 0..4 {
        tasks.push(tokio::spawn(injection(sim.clone(), worker)));
    }
    let t0 = Instant::now();
    if args.demo {
        println!(
            "Palisade demo: the embedded default policy in front of the sample API, with {} people, \
             {} office colleagues, {} customers' integrations and seven kinds of bots.\n\n  \
             dashboard   http://127.0.0.1:{admin_port}/dashboard\n  \
             sign in     with the one-time admin token {token}\n  \
             the API     http://127.0.0.1:{proxy_port}/api/items/1  (try curl)\n\n\
             Ctrl-C stops the demo and prints who got through and who was stopped.",
            args.humans, args.office, args.integrations
        );
    }
    // Requests still held when the time is up get a few seconds to finish; then the run ends.
    let cutoff = sim.deadline + Duration::from_secs(5);
    let interrupted = async {
        if args.demo {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    for t in tasks {
        let abort = t.abort_handle();
        tokio::select! {
            r = tokio::time::timeout_at(cutoff.into(), t) => {
                if r.is_err() {
                    abort.abort();
                }
            }
            _ = &mut interrupted => {
                abort.abort();
                break;
            }
        }
    }
    let outcomes = sim.outcomes.lock().map(|v| v.clone()).unwrap_or_default();
    let classes = report(&outcomes, args.grace);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(SimReport {
        duration_secs: t0.elapsed().as_secs_f64(),
        grace: args.grace,
        delay_bound_secs: delay_bound as f64 / 1e9,
        all_targets_met: classes.iter().all(|c| c.target_met),
        people: group_report(&classes, Group::People),
        integrations: group_report(&classes, Group::Integrations),
        classes,
    })
}

/// The report as a table.
pub fn render(r: &SimReport) -> String {
    let mut out = format!(
        "palisade simulate: {:.0} s; bots judged after their first {} requests; a delay of {:.1} s or more counts as stopped\n\n",
        r.duration_secs, r.grace, r.delay_bound_secs
    );
    out.push_str(&format!(
        "{:<22} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}  target\n",
        "class",
        "requests",
        "upstream",
        "judged",
        "stopped",
        "delayed",
        "chall.",
        "refused",
        "stopped%"
    ));
    for c in &r.classes {
        out.push_str(&format!(
            "{:<22} {:>8} {:>8.1}% {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.2}%  {} {}\n",
            c.class,
            c.requests,
            c.reached_share * 100.0,
            c.judged,
            c.stopped,
            c.delayed,
            c.challenged,
            c.refused,
            c.stopped_share * 100.0,
            if c.bot { ">=99%" } else { "<=0.1%" },
            if c.target_met {
                "met"
            } else if c.bot && c.judged == 0 {
                // Too short a run: the class never sent more than its grace requests.
                "not judged yet"
            } else {
                "MISSED"
            }
        ));
    }
    for (name, g) in [("people", &r.people), ("integrations", &r.integrations)] {
        out.push_str(&format!(
            "\nfalse positives, {name}: {} of {} requests refused or delayed ({:.3}%)",
            g.stopped,
            g.judged,
            g.stopped_share * 100.0
        ));
    }
    out.push('\n');
    out
}
