//! Harness: start the gateway binary, a test upstream, and talk HTTP to them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when the config has `[tls]`.
    pub tls: Option<SocketAddr>,
    pub dir: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("palisade-it-{}-{}", std::process::id(), rand_u64()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

impl Gateway {
    /// Starts the gateway with this config (None: the embedded default).
    pub fn start(config: Option<&str>) -> Self {
        Self::start_with(config, &[], &[])
    }

    pub fn start_with(config: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(temp_dir(), config, args, env)
    }

    /// Starts the gateway in `dir` (its data dir is `dir/data`), e.g. again after a crash.
    pub fn start_in(
        dir: PathBuf,
        config: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.join("data"));
        if let Some(c) = config {
            let path = dir.join("palisade.toml");
            std::fs::write(&path, c).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.args(args)
            .env("PALISADE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("PALISADE_CONFIG")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn palisade");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        pump(child.stdout.take().unwrap(), stdout.clone());
        pump(child.stderr.take().unwrap(), stderr.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = stderr.lock().unwrap().clone();
            if lines.iter().any(|l| l.starts_with("  admin token")) {
                let find = |prefix: &str| -> SocketAddr {
                    let line = lines.iter().find(|l| l.starts_with(prefix)).unwrap();
                    let url = line
                        .split_whitespace()
                        .find(|w| w.starts_with("http://"))
                        .unwrap();
                    url.trim_start_matches("http://")
                        .split('/')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                let tls = lines
                    .iter()
                    .find(|l| l.starts_with("  TLS"))
                    .and_then(|l| l.split_whitespace().find(|w| w.starts_with("https://")))
                    .and_then(|u| u.trim_start_matches("https://").parse().ok());
                return Self {
                    tls,
                    proxy: find("  proxy"),
                    admin: find("  admin API"),
                    child,
                    dir,
                    stdout,
                    stderr,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("palisade exited early ({status}):\n{}", lines.join("\n"));
            }
            assert!(
                Instant::now() < deadline,
                "palisade did not start:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and keeps its directory.
    pub fn kill9(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, PathBuf::from("/nonexistent-palisade-dir"))
    }

    /// Raw stdout and stderr lines (everything the process printed).
    pub fn all_output(&self) -> String {
        let mut s = self.stdout.lock().unwrap().join("\n");
        s.push('\n');
        s.push_str(&self.stderr());
        s
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("palisade.toml")
    }

    /// Decision log lines so far, parsed.
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until at least `n` decisions were logged.
    pub fn wait_decisions(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.decisions();
            if d.len() >= n || Instant::now() > deadline {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first `n` decisions (waiting for them) as `action rule score reasons`, for an
    /// assertion's message.
    pub fn decision_summaries(&self, n: usize) -> Vec<String> {
        self.wait_decisions(n)
            .iter()
            .map(|d| {
                format!(
                    "{} {} {} {}",
                    d["action"], d["rule"], d["score"], d["reasons"]
                )
            })
            .collect()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pump(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(l) => into.lock().unwrap().push(l),
                Err(_) => return,
            }
        }
    });
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send_with(
    c: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    send_with(&client(), method, url, headers, body).await
}

pub async fn get(url: &str) -> Resp {
    send("GET", url, &[], "").await
}

pub async fn admin_get(g: &Gateway, path: &str) -> Resp {
    send(
        "GET",
        &g.admin_url(path),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await
}

pub async fn admin_post(g: &Gateway, path: &str) -> Resp {
    send(
        "POST",
        &g.admin_url(path),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await
}

/// What the test upstream saw and lets the test steer.
#[derive(Default)]
pub struct UpstreamState {
    pub requests: std::sync::atomic::AtomicUsize,
    /// `/stream` waits on this between its chunks.
    pub release_stream: Notify,
    /// `/upload` signals this when the first body chunk arrives.
    pub first_chunk_seen: Notify,
    /// What `/jwks.json` serves.
    pub jwks: Mutex<String>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(s: impl Into<Bytes>) -> UpBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// Starts the test upstream (HTTP/1.1 and h2c) on a free port.
pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(UpstreamState::default());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle_upstream(st.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, state }
}

async fn handle_upstream(
    st: Arc<UpstreamState>,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, std::io::Error> {
    st.requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let resp = match path.as_str() {
        "/echo" => {
            let mut headers = serde_json::Map::new();
            for (k, v) in req.headers() {
                let e = headers
                    .entry(k.as_str())
                    .or_insert_with(|| serde_json::Value::Array(vec![]));
                if let serde_json::Value::Array(a) = e {
                    a.push(v.to_str().unwrap_or("").into());
                }
            }
            let method = req.method().to_string();
            let version = format!("{:?}", req.version());
            let uri = req.uri().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            let j = serde_json::json!({ "method": method, "uri": uri, "version": version, "headers": headers, "body_len": body });
            Response::builder()
                .header("content-type", "application/json")
                .header("connection", "x-upstream-private")
                .header("x-upstream-private", "hop")
                .header("keep-alive", "timeout=5")
                .body(full(j.to_string()))
                .unwrap()
        }
        "/big" => {
            // `mb` megabytes in 64 KiB chunks, as fast as the gateway takes them.
            let mb: usize = query.get("mb").and_then(|v| v.parse().ok()).unwrap_or(10);
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..mb * 16 {
                    if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-length", (mb * 1024 * 1024).to_string())
                .body(StreamBody::new(tokio_stream_from(rx)).boxed())
                .unwrap()
        }
        "/slow" => {
            let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done"))
        }
        "/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            let st2 = st.clone();
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first\n"))))
                    .await;
                st2.release_stream.notified().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"second\n"))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            Response::new(StreamBody::new(stream).boxed())
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0usize;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len();
                            if first && !d.is_empty() {
                                first = false;
                                st.first_chunk_seen.notify_one();
                            }
                        }
                    }
                    Err(_) => break,
                }
            }
            Response::new(full(serde_json::json!({ "bytes": n }).to_string()))
        }
        "/spend" => {
            let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let usd = query
                .get("usd")
                .cloned()
                .unwrap_or_else(|| "0.10".to_owned());
            Response::builder()
                .header("x-cost-usd", usd)
                .body(full("spent"))
                .unwrap()
        }
        "/jwks.json" => Response::builder()
            .header("content-type", "application/json")
            .body(full(st.jwks.lock().unwrap().clone()))
            .unwrap(),
        "/cost" => {
            let t = query
                .get("tokens")
                .cloned()
                .unwrap_or_else(|| "1".to_owned());
            Response::builder()
                .header("x-cost-tokens", t)
                .body(full("costed"))
                .unwrap()
        }
        "/login" => {
            // Answers with the status asked for in `x-echo-status`, echoing the body.
            let status = req
                .headers()
                .get("x-echo-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok())
                .unwrap_or(200);
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(full(serde_json::json!({ "body": body }).to_string()))
                .unwrap()
        }
        _ => Response::new(full(format!("ok {path}"))),
    };
    Ok(resp)
}

/// An mpsc receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> ReceiverStream<T> {
    ReceiverStream(rx)
}

pub struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// A config with one upstream at `addr` and extra TOML appended.
pub fn config_for(up: &Upstream, extra: &str) -> String {
    format!(
        "[log]\ndecisions = \"stdout\"\n\n[[upstreams]]\nname = \"api\"\nurl = \"http://{}\"\n\n{extra}",
        up.addr
    )
}

/// An admin API call with a JSON body.
pub async fn admin_json(g: &Gateway, method: &str, path: &str, body: serde_json::Value) -> Resp {
    send(
        method,
        &g.admin_url(path),
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

/// Creates a key through the admin API; returns (id, raw key).
pub async fn create_key(g: &Gateway, body: serde_json::Value) -> (String, String) {
    let r = admin_json(g, "POST", "/v1/keys", body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let j = r.json();
    (
        j["id"].as_str().unwrap().to_owned(),
        j["key"].as_str().unwrap().to_owned(),
    )
}

/// Moves the gateway's wall clock forward (it must run with PALISADE_TEST_CLOCK=1); returns
/// the new unix time in ms.
pub async fn advance_clock(g: &Gateway, secs: u64) -> u64 {
    let r = admin_json(
        g,
        "POST",
        "/v1/debug/clock",
        serde_json::json!({ "advance_secs": secs }),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["unix_ms"].as_u64().unwrap()
}

pub const TEST_CLOCK: (&str, &str) = ("PALISADE_TEST_CLOCK", "1");

impl Gateway {
    /// Waits (up to 20 s: the suite loads the machine) for a logged decision matching `f`, and
    /// returns it.
    pub fn wait_decision(&self, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(d) = self.decisions().into_iter().find(|d| f(d)) {
                return d;
            }
            assert!(Instant::now() < deadline, "no matching decision was logged");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A real `redis-server` on a free port, stopped on drop. Tests never assume one is running.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    /// Starts (or restarts) a server on `port`.
    pub fn start_on(port: u16) -> Self {
        let dir = temp_dir();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let r = Redis {
            child: Some(child),
            port,
            dir,
        };
        r.wait_ready();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 16];
                    if let Ok(n) = s.read(&mut buf)
                        && buf[..n].starts_with(b"+PONG")
                    {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `redis-cli` against it.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-node Redis Cluster (no replicas) on free ports, made with `redis-cli --cluster
/// create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let dir = temp_dir();
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .arg("--cluster-config-file")
                    .arg(dir.join("nodes.conf"))
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server");
                let r = Redis {
                    child: Some(child),
                    port,
                    dir,
                };
                r.wait_ready();
                r
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Wait until every node agrees the cluster is up.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if nodes
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}

/// An answer read off a raw connection.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `wire` (a whole request, sent as it is: no client normalises its target) on a new
/// connection and reads one answer; the request should ask for `Connection: close`.
pub async fn raw_exchange(addr: SocketAddr, wire: &[u8]) -> RawResp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(wire).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawResp {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `METHOD target` with `Host` and `Connection: close`, and any extra header lines.
pub async fn raw_request(addr: SocketAddr, method: &str, target: &str, extra: &str) -> RawResp {
    let body_len = if method == "POST" {
        "content-length: 2\r\n"
    } else {
        ""
    };
    let body = if method == "POST" { "{}" } else { "" };
    let wire = format!(
        "{method} {target} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n{body_len}{extra}\r\n{body}"
    );
    raw_exchange(addr, wire.as_bytes()).await
}

/// The node test peers' folder (`scripts/test.sh` installs their packages).
pub fn node_peers() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    dir.join("node_modules").is_dir().then_some(dir)
}

/// A node program from the test peers' folder, started with its arguments; it prints its port
/// on its first line. Ends when dropped.
pub struct NodePeer {
    child: Child,
    pub addr: SocketAddr,
}

impl NodePeer {
    pub fn start(script: &str, args: &[&str]) -> Option<Self> {
        let dir = node_peers()?;
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let mut first = String::new();
        BufReader::new(child.stdout.take()?)
            .read_line(&mut first)
            .ok()?;
        let port: u16 = first.trim().parse().ok()?;
        Some(Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }
}

impl Drop for NodePeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to `addr` from the local address `from` (any loopback address works on
/// Linux: 127.0.0.2 is another client to the gateway).
pub async fn connect_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// Raises this test process's open-files limit (tests that hold thousands of sockets).
pub fn raise_fd_limit(want: u64) -> u64 {
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}

/// A desktop Chrome user agent.
pub const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

/// A free port on 127.0.0.1 (bound and released: for servers that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the `openssl` command line in `dir`; fails the test with its output if it fails.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sum of the admin `/metrics` series whose lines start with `prefix` (a name, or a name
/// with its labels), 0 when there is none.
pub async fn metric_sum(g: &Gateway, prefix: &str) -> f64 {
    let text = String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).into_owned();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
