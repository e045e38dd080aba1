//! HAProxy's Stream Processing Offload (SPOE, `[decision] spoe = "ADDR"`): Palisade is the
//! SPOP agent HAProxy sends each request to (`spoe-message palisade`, see
//! `deploy/haproxy/`). The request — method, path, query, version, every header
//! (`req.hdrs_bin`), the client's address, the body when buffered — is judged as a decision
//! call, and the agent answers by setting transaction variables:
//!
//! - `txn.palisade.status`: 200, or the status of the refusal;
//! - `txn.palisade.request_id`, and for an allowed request `score`, `signals`, `key_id`,
//!   `account` (for the upstream) and `ratelimit`, `ratelimit_policy` (for the client).
//!
//! A refusal's full answer (status, headers such as `Retry-After` and `WWW-Authenticate`, the
//! JSON or the challenge page) is kept, as for nginx, and HAProxy routes the refused request to
//! Palisade's `<decision path>/answer/<request id>` — so no answer is cut to fit a frame.
//!
//! Frames come from the network: the codec bounds their size (the negotiated `max-frame-size`),
//! every argument is optional, and a frame that is not SPOP ends the connection with an
//! AGENT-DISCONNECT saying why. NOTIFY frames are judged concurrently (HAProxy pipelines them),
//! at most [`IN_FLIGHT`] per connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use spop::frame::{FramePayload, FrameType, Message};
use spop::frames::{Ack, AgentDisconnect, AgentHello, FrameCapabilities, HaproxyHello};
use spop::{SpopCodec, SpopFrame, StatusCode, TypedData, VarScope};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::Shared;
use crate::embed::Judgement;

/// The message HAProxy sends (`spoe-message palisade`).
pub const MESSAGE: &str = "palisade";

/// NOTIFY frames judged at once on one connection.
const IN_FLIGHT: usize = 256;

/// Largest number of headers read from `req.hdrs_bin`.
const MAX_HEADERS: usize = 256;

/// Serves SPOP on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "SPOE accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One HAProxy connection: HELLO, then NOTIFY frames answered with ACKs, until DISCONNECT.
async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, SpopCodec::default());
    let mut sink = FramedWrite::new(write, SpopCodec::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Box<dyn SpopFrame>>(IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let end = *frame.frame_type() == FrameType::AgentDisconnect;
            if sink.send(frame).await.is_err() || end {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(frame) = frames.next().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    tracing::debug!(error = %e, "SPOE: not a frame");
                    let _ = tx.send(disconnect(StatusCode::Invalid)).await;
                }
                break;
            }
        };
        match frame.frame_type() {
            FrameType::HaproxyHello => {
                let Ok(hello) = HaproxyHello::try_from(frame.payload()) else {
                    let _ = tx.send(disconnect(StatusCode::Invalid)).await;
                    break;
                };
                let Some(version) = hello.negotiate_version() else {
                    let _ = tx.send(disconnect(StatusCode::BadVersion)).await;
                    break;
                };
                let max_frame_size =
                    match hello.negotiate_max_frame_size(spop::MAX_FRAME_SIZE_LIMIT) {
                        Ok(n) => n,
                        Err(status) => {
                            let _ = tx.send(disconnect(status)).await;
                            break;
                        }
                    };
                // Frames read from now on are held to the agreed size.
                frames.decoder_mut().set_max_frame_size(max_frame_size);
                let reply = AgentHello {
                    version,
                    max_frame_size,
                    capabilities: vec![FrameCapabilities::Pipelining],
                };
                if tx.send(Box::new(reply)).await.is_err() || hello.healthcheck == Some(true) {
                    break;
                }
            }
            FrameType::HaproxyDisconnect => {
                let _ = tx.send(disconnect(StatusCode::None)).await;
                break;
            }
            FrameType::Notify => {
                let FramePayload::ListOfMessages(messages) = frame.payload() else {
                    continue;
                };
                let messages = messages.to_vec();
                let meta = frame.metadata().into_owned();
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (shared, tx) = (shared.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut ack = Ack::new(meta.stream_id, meta.frame_id);
                    for m in messages.iter().filter(|m| m.name == MESSAGE) {
                        ack = answer(&shared, m, ack).await;
                    }
                    let _ = tx.send(Box::new(ack)).await;
                    drop(slot);
                });
            }
            _ => {
                let _ = tx.send(disconnect(StatusCode::Invalid)).await;
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn disconnect(status: StatusCode) -> Box<dyn SpopFrame> {
    Box::new(AgentDisconnect {
        status_code: status.to_u32(),
        message: status.message().to_string(),
    })
}

/// Judges the request a message describes and sets its variables on `ack`.
async fn answer(shared: &Arc<Shared>, m: &Message, ack: Ack) -> Ack {
    let Some((parts, body, peer)) = request_of(m) else {
        return ack.set_var(VarScope::Transaction, "status", 400i32);
    };
    let judgement = crate::embed::judge_kept(shared, parts, body, peer).await;
    match judgement {
        Judgement::Allow {
            request_id,
            upstream,
            client,
        } => {
            let mut ack = ack
                .set_var(VarScope::Transaction, "status", 200i32)
                .set_var(VarScope::Transaction, "request_id", request_id.as_str());
            for (var, from, name) in [
                ("score", &upstream, "x-palisade-score"),
                ("signals", &upstream, "x-palisade-signals"),
                ("key_id", &upstream, "x-palisade-key-id"),
                ("account", &upstream, "x-palisade-account"),
                ("ratelimit", &client, "ratelimit"),
                ("ratelimit_policy", &client, "ratelimit-policy"),
                ("clearance", &client, "palisade-clearance"),
            ] {
                if let Some(v) = from.get(name).and_then(|v| v.to_str().ok()) {
                    ack = ack.set_var(VarScope::Transaction, var, v);
                }
            }
            ack
        }
        Judgement::Refuse(r) => {
            let h = r.headers();
            let status = h
                .get("x-palisade-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(i32::from(r.status().as_u16()));
            let mut ack = ack.set_var(VarScope::Transaction, "status", status);
            if let Some(id) = h.get("x-request-id").and_then(|v| v.to_str().ok()) {
                ack = ack.set_var(VarScope::Transaction, "request_id", id);
            }
            ack
        }
    }
}

/// The request a `palisade` message describes: `method`, `path`, `query`, `ver`, `headers`
/// (`req.hdrs_bin`), `src`, `body`.
fn request_of(m: &Message) -> Option<(http::request::Parts, Option<Bytes>, SocketAddr)> {
    let text = |name: &str| match m.get(name) {
        Some(TypedData::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let method = http::Method::from_bytes(text("method")?.as_bytes()).ok()?;
    let path = text("path")?;
    let uri = match text("query").filter(|q| !q.is_empty()) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let uri = uri
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme().is_none() && u.path().starts_with('/'))?;
    let version = match text("ver") {
        Some("2.0" | "2") => http::Version::HTTP_2,
        Some("1.0") => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(version);
    if let (Some(TypedData::Binary(raw)), Some(h)) = (m.get("headers"), req.headers_mut()) {
        for (name, value) in headers_bin(raw) {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                h.append(n, v);
            }
        }
    }
    let ip = match m.get("src") {
        Some(TypedData::IPv4(a)) => IpAddr::V4(*a),
        Some(TypedData::IPv6(a)) => IpAddr::V6(*a),
        Some(TypedData::String(s)) => s.parse().ok()?,
        _ => return None,
    };
    let body = match m.get("body") {
        Some(TypedData::Binary(b)) if !b.is_empty() => Some(Bytes::copy_from_slice(b)),
        Some(TypedData::String(s)) if !s.is_empty() => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    };
    let (parts, ()) = req.body(()).ok()?.into_parts();
    Some((parts, body, SocketAddr::new(ip, 0)))
}

/// HAProxy's `req.hdrs_bin`: `<varint len><name><varint len><value>` pairs, ended by two empty
/// strings. Stops at the end, at anything malformed, or after [`MAX_HEADERS`].
pub fn headers_bin(mut raw: &[u8]) -> Vec<(&[u8], &[u8])> {
    fn string(input: &[u8]) -> Option<(&[u8], &[u8])> {
        let (rest, len) = spop::decode_varint(input).ok()?;
        let len = usize::try_from(len).ok()?;
        let s = rest.get(..len)?;
        Some((rest.get(len..)?, s))
    }
    let mut out = Vec::new();
    while out.len() < MAX_HEADERS {
        let Some((rest, name)) = string(raw) else {
            break;
        };
        let Some((rest, value)) = string(rest) else {
            break;
        };
        if name.is_empty() {
            break;
        }
        out.push((name, value));
        raw = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(out: &mut Vec<u8>, s: &[u8]) {
        spop::encode_varint_into(s.len() as u64, out);
        out.extend_from_slice(s);
    }

    #[test]
    fn reads_headers_bin() {
        let mut raw = Vec::new();
        for (n, v) in [
            ("host", "api.example"),
            ("user-agent", "curl/8"),
            ("x-long", &"v".repeat(300)),
        ] {
            put(&mut raw, n.as_bytes());
            put(&mut raw, v.as_bytes());
        }
        put(&mut raw, b"");
        put(&mut raw, b"");
        let h = headers_bin(&raw);
        assert_eq!(h.len(), 3);
        assert_eq!(h[1], (&b"user-agent"[..], &b"curl/8"[..]));
        assert_eq!(h[2].1.len(), 300, "a value longer than one varint byte");
        // Truncated or hostile input ends the list; it never panics.
        assert_eq!(headers_bin(&raw[..raw.len() / 2]).len(), 2);
        assert!(headers_bin(&[0xff, 0xff, 0xff]).is_empty());
    }

    #[test]
    fn describes_the_request() {
        let mut raw = Vec::new();
        put(&mut raw, b"host");
        put(&mut raw, b"api.example");
        let m = Message {
            name: MESSAGE.into(),
            args: vec![
                ("method".into(), TypedData::String("POST".into())),
                ("path".into(), TypedData::String("/login".into())),
                ("query".into(), TypedData::String("a=1".into())),
                ("ver".into(), TypedData::String("1.1".into())),
                ("headers".into(), TypedData::Binary(raw)),
                (
                    "src".into(),
                    TypedData::IPv4("198.51.100.4".parse().unwrap()),
                ),
                ("body".into(), TypedData::Binary(b"{}".to_vec())),
            ],
        };
        let (parts, body, peer) = request_of(&m).unwrap();
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri, "/login?a=1");
        assert_eq!(parts.headers["host"], "api.example");
        assert_eq!(body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(peer.ip().to_string(), "198.51.100.4");
        let bad = Message {
            name: MESSAGE.into(),
            args: vec![("method".into(), TypedData::String("GET".into()))],
        };
        assert!(request_of(&bad).is_none(), "no path, no src");
    }
}
