//! Hostile clients: connection exhaustion from one address, silent connections, slow readers,
//! slow uploads and abandoned requests. Each measures what legitimate clients get while it runs.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One request on a new connection from `from`; whether it was answered 200.
async fn served_from(from: IpAddr, g: &Gateway) -> bool {
    let Ok(mut s) = connect_from(from, g.proxy).await else {
        return false;
    };
    if s.write_all(b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    got.starts_with(b"HTTP/1.1 200 ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_from_one_address_do_not_lock_others_out() {
    assert!(
        raise_fd_limit(30_000) >= 12_000,
        "this test needs 12000 open files (ulimit -n)"
    );
    let up = upstream().await;
    // The default caps: max_connections 10000, max_connections_per_ip 256.
    let g = Gateway::start(Some(&config_for(&up, "")));
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    // The attacker: 10,000 connections from 127.0.0.1 that never send a byte, re-opened as
    // they are closed, for as long as the test runs.
    let attacker = {
        let (stop, opened, proxy) = (stop.clone(), opened.clone(), g.proxy);
        tokio::spawn(async move {
            let mut held = Vec::with_capacity(10_000);
            while !stop.load(Ordering::Relaxed) {
                if held.len() >= 10_000 {
                    // Drop what the gateway closed, keep the rest, and open more.
                    held.retain(|s: &tokio::net::TcpStream| {
                        let mut b = [0u8; 1];
                        !matches!(s.try_read(&mut b), Ok(0))
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                if let Ok(s) = connect_from(ip("127.0.0.1"), proxy).await {
                    held.push(s);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
            held.len()
        })
    };
    while opened.load(Ordering::Relaxed) < 10_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 100 legitimate requests while the attack goes on: half from the attacker's own address
    // (people behind the same NAT), half from another.
    let started = Instant::now();
    let mut served = 0;
    for i in 0..100 {
        let from = if i % 2 == 0 { "127.0.0.1" } else { "127.0.0.2" };
        if served_from(ip(from), &g).await {
            served += 1;
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = attacker.await;
    eprintln!(
        "legitimate requests served during a 10k-idle-connection attack: {served}/100 in {took:?} ({} attacker connections opened)",
        opened.load(Ordering::Relaxed)
    );
    assert!(served >= 99, "{served}/100 served");
    let m = String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).to_string();
    assert!(
        m.contains("palisade_connections_shed_total{reason=\"per_ip\"}"),
        "idle connections were shed: {m}"
    );
}

#[tokio::test]
async fn a_connection_that_never_sends_is_closed_at_the_first_byte_timeout() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[server]\nfirst_byte_timeout = \"1s\"\nidle_timeout = \"60s\"\n",
    )));
    let mut s = tokio::net::TcpStream::connect(g.proxy).await.unwrap();
    let started = Instant::now();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("still open after 10s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(800) && lived < Duration::from_secs(4),
        "{lived:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_connections_are_never_shed_idle_ones_are() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "[server]\nmax_connections = 2\n")));
    // Two idle connections hold both slots: a third is served, one idle one let go.
    let mut idle: Vec<tokio::net::TcpStream> = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(g.proxy).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        served_from(ip("127.0.0.3"), &g).await,
        "an idle connection was shed for it"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two requests in flight hold both slots: a third connection is closed on arrival.
    let slow = |g: &Gateway| {
        let url = g.url("/slow?ms=1500");
        tokio::spawn(async move { get(&url).await.status })
    };
    let (a, b) = (slow(&g), slow(&g));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !served_from(ip("127.0.0.4"), &g).await,
        "served beyond the cap"
    );
    assert_eq!(a.await.unwrap(), 200, "busy requests finish");
    assert_eq!(b.await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        served_from(ip("127.0.0.4"), &g).await,
        "a freed slot serves again"
    );
    let m = String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).to_string();
    assert!(m.contains("palisade_connections_refused_total 1"), "{m}");
    assert!(
        m.contains("palisade_connections_shed_total{reason=\"total\"} 1"),
        "{m}"
    );
}
