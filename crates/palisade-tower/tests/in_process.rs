//! Palisade in-process beyond the example: two services sharing their limits through a real
//! `redis-server` (cluster mode), and a config file reloaded under a running service (a broken
//! one keeps the old policy), with the admin API's metrics counting what the layer decided.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_tower::{Options, Palisade};

fn scratch(name: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir =
        std::env::temp_dir().join(format!("palisade-tower-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `redis-server` on a free port, stopped when dropped.
struct Redis(Child, u16);

impl Redis {
    fn start(dir: &Path) -> Option<Redis> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis(child, port))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A service (one route answering "ok") behind an in-process Palisade, on a free port.
struct Service {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Palisade>,
}

impl Service {
    async fn start(config: &Path, data: &Path, watch: Duration) -> Service {
        let mut opts = Options::file(config);
        opts.overrides.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        opts.overrides.data_dir = Some(data.to_owned());
        opts.admin_token = Some("test-admin-token".into());
        opts.watch_interval = watch;
        let palisade = Palisade::start(opts).await.unwrap();
        let admin = palisade.admin_addr();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            let app = Router::new()
                .route("/{*rest}", get(|| async { "ok" }))
                .layer(palisade.layer());
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
            palisade
        });
        Service {
            addr,
            admin,
            stop: Some(stop),
            done,
        }
    }

    async fn status(&self, path: &str) -> u16 {
        get_from(&format!("http://{}{path}", self.addr), None)
            .await
            .0
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let palisade = (&mut self.done).await.unwrap();
        palisade.shutdown().await;
    }
}

async fn get_from(url: &str, token: Option<&str>) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut req = axum::http::Request::builder().uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = client.request(req).await.unwrap();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_services_share_their_limits_through_redis() {
    let dir = scratch("cluster");
    let Some(redis) = Redis::start(&dir) else {
        println!("SKIPPED: redis-server is not installed (scripts/test.sh installs it)");
        return;
    };
    let config = dir.join("palisade.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\ntimeout = \"2s\"\n\n\
             [[limits]]\nname = \"per-ip\"\nkey = [\"ip\"]\nrate = \"6/1h\"\nburst = 6\n",
            redis.1
        ),
    )
    .unwrap();
    let a = Service::start(&config, &dir.join("a"), Duration::from_secs(2)).await;
    let b = Service::start(&config, &dir.join("b"), Duration::from_secs(2)).await;
    // One client, four requests to each service: six in all are admitted, not six per service.
    let mut statuses = Vec::new();
    for s in [&a, &b] {
        for _ in 0..4 {
            statuses.push(s.status("/items/1").await);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    a.stop().await;
    b.stop().await;
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_reloads_under_a_running_service_and_a_broken_one_is_refused() {
    let dir = scratch("reload");
    let config = dir.join("palisade.toml");
    let rule =
        "[[rules]]\nname = \"closed\"\nwhen = 'path.startsWith(\"/closed\")'\naction = \"block\"\n";
    std::fs::write(&config, "[server]\nmode = \"enforce\"\n").unwrap();
    let s = Service::start(&config, &dir.join("data"), Duration::from_millis(100)).await;
    assert_eq!(s.status("/closed/x").await, 200);
    // A new rule, written while the service runs: in force within seconds.
    std::fs::write(&config, format!("[server]\nmode = \"enforce\"\n\n{rule}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.status("/closed/x").await != 403 {
        assert!(Instant::now() < deadline, "the rule was never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file: reported, and the policy in force stays.
    std::fs::write(
        &config,
        format!("[server]\nmode = \"enforce\"\nnot toml at all\n\n{rule}"),
    )
    .unwrap();
    let metrics = |s: &Service| {
        let url = format!("http://{}/metrics", s.admin);
        async move { get_from(&url, Some("test-admin-token")).await }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, text) = metrics(&s).await;
        assert_eq!(code, 200);
        let failed = text.lines().any(|l| {
            l.starts_with("palisade_config_reloads_total{")
                && l.contains("result=\"error\"")
                && !l.ends_with(" 0")
        });
        if failed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was never reported: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.status("/closed/y").await,
        403,
        "the old policy still holds"
    );
    assert_eq!(s.status("/open").await, 200);
    // The metrics count what the layer decided.
    let (_, text) = metrics(&s).await;
    let blocked: f64 = text
        .lines()
        .filter(|l| l.starts_with("palisade_requests_total{") && l.contains("action=\"block\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(blocked >= 2.0, "{text}");
    s.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
