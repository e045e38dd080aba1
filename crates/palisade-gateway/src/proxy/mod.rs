//! The request path: bounds -> facts -> decision -> enforcement -> forward -> observe -> log.
//! Nothing here panics, blocks, or tells the client which rule fired.

pub mod hold;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HOST, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use palisade_config::{KeyForward, OnEngineError, OnStoreError};
use palisade_engine::client_ip::client_ip;
use palisade_engine::limits::ceil_secs;
use palisade_engine::path::{Ambiguities, canonicalize};
use palisade_engine::{Action, Clock, Decision, RequestFacts, ResponseFacts};

use bytes::Bytes;
use http_body_util::LengthLimitError;
use http_body_util::{Full, Limited};
use palisade_engine::RouteSpec;
use palisade_engine::principal::{AuthFailure, AuthRequirement, PrincipalKind};
use palisade_engine::quota::{MICROS_PER_USD, secs_to_midnight};
use palisade_keys::signature::{
    self, NONCE_HEADER, SIGNATURE_HEADER, SignedParts, TIMESTAMP_HEADER,
};

use palisade_intel::ja4h::HttpVersion;

use crate::auth::{Authenticated, authenticate, presented, strip_keys};
use crate::client::UpstreamError;
use crate::client::h1::OutBody;
use crate::cluster::{QuotaAnswer, QuotaCharge};
use crate::listen::ClientBody;
use crate::proxy::hold::ClientGone;
use crate::refusal::Refusal;
use crate::telemetry::decision_log::{DecisionRecord, LimitRecord, Reason, rfc3339};
use crate::telemetry::metrics::{DecisionLabels, Label, RouteLabels, UpstreamErrorLabels};
use crate::wire::body::{Bounded, ProxyBody, client_fault, is_body_too_large};
use crate::wire::fields::{Answer, HeadLines, UpstreamFields};
use crate::wire::headers::names::*;
use crate::wire::headers::{forwarding_lines, strip_hop_by_hop, strip_palisade_headers};
use crate::wire::request_id::{request_id, unit_random};
use crate::{Runtime, Shared};

/// Handles one request; never fails (errors become responses).
pub async fn handle(shared: Arc<Shared>, req: Request<ClientBody>, peer: SocketAddr) -> Answer {
    let mut extra = Extra {
        // The RateLimit headers and the request id without regrowing.
        lines: HeadLines::with_capacity(768),
        fields: None,
    };
    let response = match respond(shared, req, peer, &mut extra).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    Answer {
        response,
        lines: extra.lines,
        fields: extra.fields,
    }
}

/// What goes out beside the response's headers (see [`Answer`]).
struct Extra {
    lines: HeadLines,
    fields: Option<UpstreamFields>,
}

/// [`handle`], with Palisade's header lines and the upstream's fields left in `extra`.
async fn respond(
    shared: Arc<Shared>,
    req: Request<ClientBody>,
    peer: SocketAddr,
    extra: &mut Extra,
) -> Result<Response<ProxyBody>, Infallible> {
    // Arrival, on the engine's monotonic clock (also the decision's `now`).
    let now = shared.clock.now();
    let rt = shared.runtime.load_full();
    let request_id = request_id();
    let (mut parts, body) = req.into_parts();
    let server = &rt.compiled.server;

    // Bounds that hyper does not already enforce for every protocol.
    let head_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if parts.headers.len() > server.max_header_count || head_bytes > server.max_header_bytes {
        return Ok(bounded_refusal(
            &shared,
            Refusal::HeadersTooLarge,
            &request_id,
            "bounds/headers",
        ));
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > server.max_body_bytes) {
        return Ok(bounded_refusal(
            &shared,
            Refusal::BodyTooLarge,
            &request_id,
            "bounds/body",
        ));
    }

    // HTTP/2: a Host naming another authority than `:authority` is malformed (RFC 9113
    // section 8.3.1), rather than a choice between two hosts.
    if parts.version == http::Version::HTTP_2
        && let (Some(a), Some(h)) = (parts.uri.authority(), parts.headers.get(HOST))
        && !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes())
    {
        return Ok(bounded_refusal(
            &shared,
            Refusal::BadRequest,
            &request_id,
            "bounds/authority",
        ));
    }
    // The path the policy judges is the path the upstream receives: canonical, or refused.
    if parts.method == http::Method::CONNECT {
        return Ok(bounded_refusal(
            &shared,
            Refusal::MethodNotAllowed,
            &request_id,
            "bounds/method",
        ));
    }
    let ambiguities = if parts.method == http::Method::OPTIONS && parts.uri.path() == "*" {
        // `OPTIONS *` asks about the server, not a resource: forwarded as it is.
        Ambiguities::NONE
    } else {
        match canonicalize(parts.uri.path()) {
            Ok(c) => {
                let found = c.ambiguities;
                let rebuilt = match c.path {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(path) => Some(with_path(&parts.uri, &path)),
                };
                match rebuilt {
                    None => {}
                    Some(Some(uri)) => parts.uri = uri,
                    Some(None) => {
                        return Ok(bounded_refusal(
                            &shared,
                            Refusal::InvalidPath,
                            &request_id,
                            "bounds/path",
                        ));
                    }
                }
                found
            }
            Err(_) => {
                return Ok(bounded_refusal(
                    &shared,
                    Refusal::InvalidPath,
                    &request_id,
                    "bounds/path",
                ));
            }
        }
    };

    // Facts, identity and decision.
    let client = client_ip(peer.ip(), &parts.headers, &server.trusted_proxies);
    let unix_ms = shared.clock.unix_ms();
    if parts.uri.path() == "/robots.txt"
        && rt.compiled.policy.honeypots.iter().any(|h| h.robots_txt)
    {
        return Ok(robots_txt(&rt, &request_id));
    }
    if parts.uri.path() == USAGE_PATH {
        return Ok(usage(&shared, &rt, &parts, client, peer, &request_id));
    }
    let route = rt.engine.route_of(&parts.method, parts.uri.path());
    // An ambiguous path goes only where its route says the upstream reads it as data.
    if !ambiguities.is_empty()
        && !rt
            .compiled
            .policy
            .route(route)
            .is_some_and(|r| r.allow_in_path.contains(ambiguities))
    {
        return Ok(bounded_refusal(
            &shared,
            Refusal::InvalidPath,
            &request_id,
            "bounds/path",
        ));
    }
    // The credentials are read once: for authentication and for the decoy-key check.
    let credentials = presented(&rt, &parts.headers);
    let mut authn = match rt.compiled.policy.route(route) {
        Some(spec) => authenticate(&shared, &rt, &parts.headers, spec, credentials),
        None => Authenticated::Anonymous,
    };
    // A key that must sign its requests: the body is read (bounded) to check its digest.
    let mut buffered: Option<Bytes> = None;
    let mut body = Some(body);
    if let Some(entry) = authn.key_needing_signature().cloned() {
        let Some(incoming) = body.take() else {
            return Ok(bounded_refusal(
                &shared,
                Refusal::BadRequest,
                &request_id,
                "bounds/body_read",
            ));
        };
        let bytes = match read_bounded(&shared, incoming, server.max_body_bytes).await {
            Ok(b) => b,
            Err((refusal, rule)) => {
                return Ok(bounded_refusal(&shared, refusal, &request_id, rule));
            }
        };
        let signed = SignedParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            timestamp: header_str(&parts.headers, TIMESTAMP_HEADER),
            nonce: header_str(&parts.headers, NONCE_HEADER),
            signature: header_str(&parts.headers, SIGNATURE_HEADER),
            body: &bytes,
        };
        if signature::verify(
            shared.keys.directory.secret(),
            &entry.record.id,
            &signed,
            unix_ms / 1000,
            rt.compiled.keys.signature_window_secs,
            &shared.keys.nonces,
        )
        .is_err()
        {
            authn = Authenticated::Failed {
                kind: PrincipalKind::ApiKey,
                failure: AuthFailure::InvalidSignature,
            };
        }
        buffered = Some(bytes);
    }
    // A login on the stuffing route: the username is read from the (bounded) body, hashed by
    // the engine and never kept.
    let mut username: Option<Vec<u8>> = None;
    if let Some(st) = rt
        .compiled
        .policy
        .behaviour
        .as_ref()
        .and_then(|b| b.stuffing.as_ref())
        .filter(|s| s.route == route)
    {
        let bytes = match (buffered.take(), body.take()) {
            (Some(b), _) => Some(b),
            (None, Some(incoming)) => {
                let max = server.max_body_bytes.min(st.max_body as u64);
                match read_bounded(&shared, incoming, max).await {
                    Ok(b) => Some(b),
                    Err((refusal, rule)) => {
                        return Ok(bounded_refusal(&shared, refusal, &request_id, rule));
                    }
                }
            }
            (None, None) => None,
        };
        if let Some(b) = &bytes {
            username = username_in(b, &st.username_field, &parts.headers);
        }
        buffered = bytes;
    }
    // JA4H, when the policy reads it (otherwise it is computed only for a logged decision).
    let ja4h = rt.engine.wants_ja4h().then(|| ja4h_of(&parts));
    let ip_info = rt
        .compiled
        .policy
        .intel
        .as_ref()
        .and_then(|i| i.db.lookup(client));
    // A claim to be a verifiable bot (Googlebot, ...): its state, from ranges, cache or DNS.
    let bot_verification = rt.compiled.policy.bots.as_ref().and_then(|b| {
        if b.verified.is_empty() {
            return None;
        }
        let ua = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())?;
        let i = b.verified.iter().position(|v| v.claimed_by(ua))?;
        let bot = b.verified.get(i)?;
        Some((i, shared.verifier.status(bot, client, &b.dns_servers)))
    });
    let facts = RequestFacts {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        client_ip: client,
        peer_ip: peer.ip(),
        now,
        unix_ms,
        auth: authn.as_auth(),
        version: parts.version,
        ja4h: ja4h.as_deref(),
        ip_info: ip_info.as_ref(),
        bot_verification,
        username: username.as_deref(),
    };
    // A decoy key (published where only scrapers look) flags whoever presents it.
    if let (Some(key), _) = credentials
        && let Some(i) = rt.engine.decoy_key(key)
    {
        rt.engine.trap(i, &facts);
    }
    let t0 = Instant::now();
    // Cluster mode, strict: the shared limits are counted in the store first (bounded by its
    // timeout); when it fails, `on_store_error` decides.
    // Batched: decided locally; the charges are reconciled with the store in the background.
    let batched = shared
        .batcher
        .as_ref()
        .map(|b| (b, rt.engine.shared_checks(&facts, route)));
    let evaluated = match shared.store.as_ref().filter(|_| batched.is_none()) {
        Some(store) => {
            let checks = rt.engine.shared_checks(&facts, route);
            if checks.is_empty() {
                rt.engine.evaluate_on(&facts, route)
            } else {
                match store.check(&checks).await {
                    Ok(verdicts) => rt.engine.evaluate_shared(&facts, route, &verdicts),
                    Err(e) => {
                        store
                            .fallbacks
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(error = %e, "shared store failed; applying on_store_error");
                        match store.settings().on_error {
                            OnStoreError::Local => rt.engine.evaluate_on(&facts, route),
                            OnStoreError::Allow => {
                                let allowed: Vec<_> = checks
                                    .iter()
                                    .map(|c| {
                                        (
                                            c.index,
                                            palisade_engine::limits::Verdict {
                                                allowed: true,
                                                remaining: c.quota,
                                                reset: 0,
                                                retry_after: 0,
                                            },
                                            c.key,
                                        )
                                    })
                                    .collect();
                                rt.engine.evaluate_shared(&facts, route, &allowed)
                            }
                            OnStoreError::Deny => {
                                return Ok(bounded_refusal(
                                    &shared,
                                    Refusal::Unavailable,
                                    &request_id,
                                    "store/unavailable",
                                ));
                            }
                        }
                    }
                }
            }
        }
        None => rt.engine.evaluate_on(&facts, route),
    };
    shared
        .metrics
        .decision_seconds
        .observe(t0.elapsed().as_secs_f64());
    let mut decision = match evaluated {
        Ok(d) => d,
        Err(e) => {
            shared.metrics.engine_errors.inc();
            tracing::error!(error = %e, "engine failed; applying on_engine_error");
            let (action, rule) = match server.on_engine_error {
                OnEngineError::Allow => (Action::Allow, "engine/fail_open"),
                OnEngineError::Deny => (Action::Block, "engine/fail_closed"),
            };
            let mut d = Decision::new(route, Arc::from(rule));
            d.action = action;
            d
        }
    };
    if let Some((batcher, checks)) = &batched {
        batcher.record(&decision, checks);
    }
    // Cluster mode: daily quotas are money, so a request about to be forwarded reserves them
    // in the shared store too, whatever `sync` says (bounded by the store's timeout). Over a
    // budget there, it is refused as a local refusal would refuse it.
    let mut remote_holds = None;
    if let Some(store) = &shared.store
        && !decision.quotas.is_empty()
        && matches!(
            decision.action,
            Action::Allow | Action::Tag | Action::Delay { .. }
        )
    {
        let ledger = rt.engine.quota_ledger();
        match store.reserve_quotas(&decision.quotas).await {
            Ok(QuotaAnswer::Reserved(totals)) => {
                for (h, (r, s)) in decision.quotas.iter_mut().zip(totals) {
                    ledger.observe_fleet(&h.quota, &h.identity, h.day, r, s);
                    h.requests_remaining = h.requests_per_day.map(|m| m.saturating_sub(r));
                    h.spend_remaining = h.spend_per_day.map(|m| m.saturating_sub(s));
                }
                remote_holds = Some((store.clone(), decision.quotas.clone()));
            }
            Ok(QuotaAnswer::Exceeded {
                index,
                budget,
                requests,
                spend,
            }) => {
                let row = decision
                    .quotas
                    .get(index)
                    .map(|h| (h.quota.clone(), h.identity.clone(), h.day));
                rt.engine
                    .refuse_quota(&mut decision, index, budget, unix_ms, shared.clock.now());
                // Known exhausted: later requests are refused here without asking.
                if let Some((q, i, day)) = row {
                    ledger.observe_fleet(&q, &i, day, requests, spend);
                }
            }
            Err(e) => {
                store
                    .fallbacks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(error = %e, "shared store failed on quotas; applying on_store_error");
                if store.settings().on_error == OnStoreError::Deny {
                    drop(rt.engine.quota_settlement(&decision));
                    rt.engine.refund(&mut decision, shared.clock.now());
                    store.adjust(std::mem::take(&mut decision.shared_adjust));
                    return Ok(bounded_refusal(
                        &shared,
                        Refusal::Unavailable,
                        &request_id,
                        "store/unavailable",
                    ));
                }
            }
        }
    }
    // Quota reservations are settled when the upstream answers; dropped unsettled (refused,
    // client gone, upstream failed), they are given back.
    let settlement = (!decision.quotas.is_empty())
        .then(|| QuotaCharge::new(rt.engine.quota_settlement(&decision), remote_holds));
    let route_label = rt.route_label(decision.route);
    // Whether this decision is logged: every non-allow, and allows as sampled. Only logged
    // decisions pay for building a record (and only they enter the admin API's recent ring).
    let log_cfg = &rt.compiled.log;
    let logged = decision.logged_action() != "allow"
        || log_cfg.sample_allow >= 1.0
        || (log_cfg.sample_allow > 0.0 && unit_random() < log_cfg.sample_allow);
    let pending_record = logged.then(|| {
        (
            {
                let mut identity = match facts.ja4h {
                    Some(_) => rt.engine.identity_of(&facts, decision.route),
                    None => {
                        let ja4h = ja4h_of(&parts);
                        let facts = RequestFacts {
                            ja4h: Some(&ja4h),
                            ..facts
                        };
                        rt.engine.identity_of(&facts, decision.route)
                    }
                };
                if let Some(c) = &decision.client {
                    identity.push(("bot".to_owned(), c.category.name().to_owned()));
                    if let Some((name, status)) = &c.verification {
                        identity
                            .push(("bot_claim".to_owned(), format!("{name}:{}", status.name())));
                    }
                    if let Some(n) = &c.name {
                        identity.push(("bot_name".to_owned(), n.to_string()));
                    }
                }
                identity
            },
            parts.method.to_string(),
            bounded_path(parts.uri.path()),
        )
    });

    // Enforcement.
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut queue_full = false;
    let mut client_left = false;
    let gone = parts.extensions.get::<ClientGone>().cloned();
    // A limit's `delay` smooths a burst into the limit's rate (its queue bounds it); any other
    // delay is throttling.
    let delayed_by_limit = decision
        .limits
        .iter()
        .any(|o| !o.verdict.allowed && !o.shadow);
    let refusal = match decision.action {
        Action::Limit { retry_after } => Some(Refusal::RateLimited {
            retry_after: ceil_secs(retry_after).max(1),
            code: decision.code.unwrap_or("rate_limited"),
        }),
        Action::Block if decision.rule.starts_with("engine/") => Some(Refusal::Unavailable),
        Action::Block if decision.code == Some("not_found") => Some(Refusal::NotFound),
        Action::Block => Some(Refusal::Forbidden {
            code: decision.code.unwrap_or("forbidden"),
        }),
        Action::Unauthorized => Some(Refusal::Unauthorized {
            code: decision.code.unwrap_or("missing_credentials"),
        }),
        Action::Challenge => Some(Refusal::ChallengeRequired),
        Action::Delay { wait } if !delayed_by_limit => {
            // A delay from the risk score or a rule (progressive throttling): bounded by one
            // queue for the whole gateway and by `max_held` per client; a client that goes
            // away while held is not forwarded.
            let client_key = held_key(&decision, client);
            let max_held = rt.compiled.policy.scoring.max_held;
            match (
                rt.score_delays.clone().try_acquire_owned(),
                rt.held.enter(client_key, max_held),
            ) {
                (Ok(p), Some(held)) => {
                    let hold = tokio::time::sleep(Duration::from_nanos(wait));
                    let left = match &gone {
                        Some(g) => tokio::select! {
                            _ = hold => false,
                            _ = g.wait() => true,
                        },
                        None => {
                            hold.await;
                            false
                        }
                    };
                    drop((p, held));
                    if left {
                        client_left = true;
                        rt.engine.refund(&mut decision, shared.clock.now());
                        Some(Refusal::ClientClosedRequest)
                    } else {
                        None
                    }
                }
                _ => {
                    queue_full = true;
                    rt.engine.refund(&mut decision, shared.clock.now());
                    Some(Refusal::RateLimited {
                        retry_after: ceil_secs(wait).max(1),
                        code: "rate_limited",
                    })
                }
            }
        }
        Action::Delay { wait } => {
            for o in decision
                .limits
                .iter()
                .filter(|o| !o.verdict.allowed && !o.shadow)
            {
                if let Some(Some(sem)) = rt.delay_queues.get(o.index) {
                    match sem.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => queue_full = true,
                    }
                }
            }
            if queue_full {
                // Not held, so not served: give back what the engine reserved for it.
                permits.clear();
                rt.engine.refund(&mut decision, shared.clock.now());
                Some(Refusal::RateLimited {
                    retry_after: ceil_secs(wait).max(1),
                    code: "rate_limited",
                })
            } else {
                tokio::time::sleep(Duration::from_nanos(wait)).await;
                // The queue bounds requests *waiting*; once forwarded they no longer count.
                permits.clear();
                None
            }
        }
        Action::Allow | Action::Tag => None,
    };

    let response = match refusal {
        Some(r) => r.response(&request_id),
        None => {
            // The client's Host (a shared handle on the read buffer, not a copy); for HTTP/2
            // `:authority` comes first (RFC 9113 section 8.3.1).
            let authority = || {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            };
            let host_value = if parts.version == http::Version::HTTP_2 {
                authority().or_else(|| parts.headers.get(HOST).cloned())
            } else {
                parts
                    .headers
                    .get(HOST)
                    .filter(|v| v.to_str().is_ok())
                    .cloned()
                    .or_else(authority)
            };
            if parts.version == http::Version::HTTP_2
                && let Some(h) = &host_value
            {
                // Forwarded over HTTP/1.1, `:authority` becomes the Host.
                parts.headers.insert(HOST, h.clone());
            }
            let host = host_value.as_ref().and_then(|v| v.to_str().ok());
            strip_hop_by_hop(&mut parts.headers);
            strip_palisade_headers(&mut parts.headers);
            if rt.compiled.keys.forward == KeyForward::Strip {
                strip_keys(&rt, &mut parts.headers);
            }
            // Who the caller is, as verified: the key's visible id and the account.
            if let Some(p) = authn.as_auth().principal() {
                if let Some(id) = &p.key_id
                    && let Ok(v) = HeaderValue::from_str(&palisade_keys::key::prefix_of(id))
                {
                    parts.headers.insert(X_PALISADE_KEY_ID, v);
                }
                if let Some(a) = &p.account
                    && let Ok(v) = HeaderValue::from_str(a)
                {
                    parts.headers.insert(X_PALISADE_ACCOUNT, v);
                }
            }
            let added = forwarding_lines(
                &parts.headers,
                peer.ip(),
                server.trusted_proxies.contains(peer.ip()),
                host_value.as_ref(),
                &request_id,
            );
            // The upstream sees the score of what it is sent: tagged requests, and requests
            // the score delayed.
            let scored_delay = matches!(decision.action, Action::Delay { .. })
                && decision.rule.starts_with("score/");
            if decision.action == Action::Tag || scored_delay {
                parts.headers.insert(
                    X_PALISADE_SCORE,
                    HeaderValue::from(u16::from(decision.score)),
                );
                let names: Vec<&str> = decision
                    .signals
                    .iter()
                    .filter(|s| !s.shadow)
                    .map(|s| &*s.name)
                    .collect();
                if let Ok(v) = HeaderValue::from_str(&names.join(",")) {
                    parts.headers.insert(X_PALISADE_SIGNALS, v);
                }
            }
            let body = match (buffered, body) {
                (Some(bytes), _) => OutBody::Full(bytes),
                (None, Some(b)) => {
                    OutBody::Stream(Bounded::new(b, server.max_body_bytes).boxed_unsync())
                }
                (None, None) => OutBody::Empty,
            };
            match forward(
                &shared,
                &rt,
                parts,
                &added,
                body,
                settlement,
                &decision,
                &route_label,
                host,
            )
            .await
            {
                Ok(answer) => {
                    extra.fields = answer.fields;
                    answer.response
                }
                Err(r) => r.response(&request_id),
            }
        }
    };
    // The same advertised limits always render the same RateLimit-Policy: it is rendered once.
    let policy_set = rt.engine.policy_set(&decision);
    let kept_policy = rt.kept_policy(policy_set);
    if let Some(h) = rt
        .engine
        .rate_limit_headers(&decision, kept_policy.is_none())
    {
        let lines = &mut extra.lines;
        if let Some(v) = kept_policy.or_else(|| rt.keep_policy(policy_set, h.policy)) {
            lines.line(RATELIMIT_POLICY.as_str().as_bytes(), &[v.as_bytes()]);
        }
        // sf-strings (printable ASCII only, see `ratelimit_headers::sf_string`), digits and
        // separators: always a valid field value.
        lines.line(RATELIMIT.as_str().as_bytes(), &[h.ratelimit.as_bytes()]);
        for (name, n) in [
            (X_RATELIMIT_LIMIT, h.x_limit),
            (X_RATELIMIT_REMAINING, h.x_remaining),
            (X_RATELIMIT_RESET, h.x_reset),
        ] {
            lines.line(
                name.as_str().as_bytes(),
                &[itoa::Buffer::new().format(n).as_bytes()],
            );
        }
    }
    // Sixteen hex digits.
    extra
        .lines
        .line(X_REQUEST_ID.as_str().as_bytes(), &[request_id.as_bytes()]);

    // What the shared store counted for a request that was refused after all goes back.
    if let Some(store) = &shared.store {
        store.adjust(std::mem::take(&mut decision.shared_adjust));
    }

    // Log and metrics.
    let status = response.status().as_u16();
    rt.engine
        .observe_status(&decision, status, shared.clock.now());
    let (action, rule): (&'static str, Arc<str>) = if queue_full {
        ("limit", Arc::from(format!("{}/queue_full", decision.rule)))
    } else if client_left {
        ("delay", Arc::from(format!("{}/client_gone", decision.rule)))
    } else {
        (decision.logged_action(), decision.logged_rule().clone())
    };
    let labels = DecisionLabels {
        route: Label(route_label.clone()),
        action,
        rule: Label(rule.clone()),
    };
    match rt.route_series(decision.route, &shared.metrics) {
        Some(series) if action == "allow" && *rule == *palisade_engine::DEFAULT_ALLOW_RULE => {
            series.allowed.inc();
        }
        _ => {
            shared.metrics.requests.get_or_create(&labels).inc();
        }
    }
    if decision.is_shadowed() {
        shared.metrics.shadow.get_or_create(&labels).inc();
    }
    if let Some((identity, method, path)) = pending_record {
        let record = DecisionRecord {
            time: rfc3339(shared.clock.unix_ms()),
            request_id,
            client_ip: client.to_string(),
            method,
            path,
            route: route_label.to_string(),
            status,
            latency_ms: shared.clock.now().saturating_sub(now) as f64 / 1e6,
            identity: identity
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
            action: action.to_owned(),
            score: decision.score,
            rule: rule.to_string(),
            reasons: decision
                .signals
                .iter()
                .map(|s| Reason {
                    signal: s.name.to_string(),
                    weight: s.weight,
                    shadow: s.shadow,
                })
                .collect(),
            shadow: decision.is_shadowed(),
            limits: decision
                .limits
                .iter()
                .map(|o| LimitRecord {
                    limit: o.name.to_string(),
                    allowed: o.verdict.allowed,
                    remaining: o.verdict.remaining,
                    reset: ceil_secs(o.verdict.reset),
                })
                .collect(),
        };
        if !shared.log.record(record) {
            shared.metrics.log_dropped.inc();
        }
    }
    Ok(response)
}

/// Reads a body up to `max` bytes; past that, or on a read error, the refusal to answer.
async fn read_bounded(
    shared: &Shared,
    incoming: ClientBody,
    max: u64,
) -> Result<Bytes, (Refusal, &'static str)> {
    let limited = Limited::new(incoming, usize::try_from(max).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err((Refusal::BodyTooLarge, "bounds/body"))
        }
        Err(e) => {
            let fault = client_fault(&*e).unwrap_or(crate::wire::body::ClientFault::Aborted);
            shared.metrics.client_fault(fault, &e);
            Err((Refusal::for_client_fault(fault), "bounds/body_read"))
        }
    }
}

/// The username a login body names: a top-level string field of a JSON object, or a field
/// of a form. Bounded to 256 bytes.
pub fn username_in(body: &[u8], field: &str, headers: &http::HeaderMap) -> Option<Vec<u8>> {
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let found: Option<Vec<u8>> = if form {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.into_owned().into_bytes())
    } else {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => m
                .get(field)
                .and_then(|v| v.as_str())
                .map(|s| s.as_bytes().to_vec()),
            _ => None,
        }
    };
    found.filter(|u| !u.is_empty()).map(|mut u| {
        u.truncate(256);
        // Usernames are compared case-insensitively (emails mostly are).
        u.make_ascii_lowercase();
        u
    })
}

/// `robots.txt` disallowing the honeypots' trap paths, so only clients that ignore it walk
/// into them.
fn robots_txt(rt: &Runtime, request_id: &str) -> Response<ProxyBody> {
    let mut body = String::from("User-agent: *\n");
    for h in rt.compiled.policy.honeypots.iter().filter(|h| h.robots_txt) {
        for p in &h.paths {
            let s = p.as_str();
            let cut = s.find(['{', '*']).unwrap_or(s.len());
            body.push_str("Disallow: ");
            body.push_str(s.get(..cut).unwrap_or(s));
            body.push('\n');
        }
    }
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// Where a key holder reads its own quota usage, on the proxy listener.
pub const USAGE_PATH: &str = "/_palisade/usage";

fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `GET /_palisade/usage`: the caller's own daily budgets. Authentication failures count
/// towards guessing exactly as on an authenticated route.
fn usage(
    shared: &Shared,
    rt: &Runtime,
    parts: &http::request::Parts,
    client: std::net::IpAddr,
    peer: SocketAddr,
    request_id: &str,
) -> Response<ProxyBody> {
    let mut spec = RouteSpec::new("usage", 0);
    spec.auth = AuthRequirement::Any;
    let authn = authenticate(
        shared,
        rt,
        &parts.headers,
        &spec,
        presented(rt, &parts.headers),
    );
    let unix_ms = shared.clock.unix_ms();
    let facts = RequestFacts {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        client_ip: client,
        peer_ip: peer.ip(),
        now: shared.clock.now(),
        unix_ms,
        auth: authn.as_auth(),
        version: parts.version,
        ja4h: None,
        ip_info: None,
        bot_verification: None,
        username: None,
    };
    if let Some(refused) = rt.engine.authorize(&facts, &spec) {
        let r = match refused.action {
            Action::Unauthorized => Refusal::Unauthorized {
                code: refused.code.unwrap_or("missing_credentials"),
            },
            _ => Refusal::Forbidden {
                code: refused.code.unwrap_or("forbidden"),
            },
        };
        return bounded_refusal(shared, r, request_id, &refused.rule);
    }
    let Some(principal) = facts.auth.principal() else {
        return bounded_refusal(
            shared,
            Refusal::Unauthorized {
                code: "missing_credentials",
            },
            request_id,
            "auth/missing_credentials",
        );
    };
    let reset_at = palisade_keys::time::rfc3339(unix_ms / 1000 + secs_to_midnight(unix_ms));
    let all = rt.engine.usage_for(principal, unix_ms);
    let usd = |m: u64| m as f64 / MICROS_PER_USD;
    // The summary shows the tightest budget of each kind.
    let daily = all
        .iter()
        .filter_map(|q| Some((q, q.requests_per_day?)))
        .min_by_key(|(q, max)| max.saturating_sub(q.requests))
        .map(|(q, max)| {
            serde_json::json!({
                "quota": q.quota, "used": q.requests, "limit": max,
                "remaining": max.saturating_sub(q.requests), "resetAt": reset_at,
            })
        });
    let spend = all
        .iter()
        .filter_map(|q| Some((q, q.spend_per_day_micros?)))
        .min_by_key(|(q, max)| max.saturating_sub(q.spend_micros))
        .map(|(q, max)| {
            serde_json::json!({
                "quota": q.quota, "used": usd(q.spend_micros), "limit": usd(max),
                "remaining": usd(max.saturating_sub(q.spend_micros)), "resetAt": reset_at,
            })
        });
    let quotas: Vec<serde_json::Value> = all
        .iter()
        .map(|q| {
            serde_json::json!({
                "quota": q.quota, "per": q.per,
                "requests": { "used": q.requests, "limit": q.requests_per_day },
                "spend": { "used": usd(q.spend_micros), "limit": q.spend_per_day_micros.map(usd) },
            })
        })
        .collect();
    let body = serde_json::json!({
        "key": principal.key_id.as_deref().map(palisade_keys::key::prefix_of),
        "account": principal.account.as_deref(),
        "daily": daily,
        "spend": spend,
        "quotas": quotas,
        "resetAt": reset_at,
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// A request's JA4H fingerprint over its headers as hyper hands them over: in arrival order,
/// but with HTTP/1 names lowercased (hyper does not expose their original case).
fn ja4h_of(parts: &http::request::Parts) -> String {
    palisade_intel::ja4h::ja4h_fingerprint(
        parts.method.as_str(),
        match parts.version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => HttpVersion::Http10,
            http::Version::HTTP_2 => HttpVersion::Http2,
            http::Version::HTTP_3 => HttpVersion::Http3,
            _ => HttpVersion::Http11,
        },
        parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
    )
}

/// The path as logged: at most 512 bytes, so one hostile request cannot bloat the log.
fn bounded_path(p: &str) -> String {
    match p.char_indices().nth(512) {
        Some((i, _)) => format!("{}…", p.get(..i).unwrap_or("")),
        None => p.to_owned(),
    }
}

/// Answers a request refused before the engine saw it (bounds), counting it.
fn bounded_refusal(
    shared: &Shared,
    r: Refusal,
    request_id: &str,
    rule: &str,
) -> Response<ProxyBody> {
    shared
        .metrics
        .requests
        .get_or_create(&DecisionLabels {
            route: Label(Arc::from("-")),
            action: "reject",
            rule: Label(Arc::from(rule)),
        })
        .inc();
    r.response(request_id)
}

/// Sends the request upstream and returns its response with a streaming body.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the arguments are the request's parts, not options"
)]
async fn forward(
    shared: &Shared,
    rt: &Runtime,
    parts: http::request::Parts,
    added: &HeadLines,
    body: OutBody,
    settlement: Option<QuotaCharge>,
    decision: &Decision,
    route_label: &Arc<str>,
    host: Option<&str>,
) -> Result<Answer, Refusal> {
    let server = &rt.compiled.server;
    let route = rt.compiled.policy.route(decision.route);
    let upstream = route
        .and_then(|r| rt.upstreams.get(r.upstream))
        .or_else(|| rt.upstreams.first())
        .ok_or(Refusal::UpstreamUnavailable)?;
    let started = Instant::now();
    let result = upstream
        .send(
            parts,
            added,
            body,
            host,
            Duration::from_nanos(server.upstream_timeout),
        )
        .await;
    let err_kind = |kind: &'static str| {
        shared
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                route: Label(route_label.clone()),
                kind,
            })
            .inc();
    };
    let resp = match result {
        Err(UpstreamError::Timeout) => {
            err_kind("timeout");
            return Err(Refusal::UpstreamTimeout);
        }
        Err(e) => {
            if is_body_too_large(&e) {
                err_kind("body_too_large");
                return Err(Refusal::BodyTooLarge);
            }
            // The client's side broke (aborted, too slow, malformed body): its fault, not the
            // upstream's.
            if let Some(fault) = client_fault(&e) {
                shared.metrics.client_fault(fault, &e);
                return Err(Refusal::for_client_fault(fault));
            }
            let kind = if e.is_connect() { "connect" } else { "other" };
            err_kind(kind);
            tracing::warn!(upstream = %upstream.name, error = %e, "upstream request failed");
            return Err(Refusal::UpstreamUnavailable);
        }
        Ok(resp) => resp,
    };
    let upstream_seconds = started.elapsed().as_secs_f64();
    match rt.route_series(decision.route, &shared.metrics) {
        Some(series) => series.upstream_seconds.observe(upstream_seconds),
        None => shared
            .metrics
            .upstream_seconds
            .get_or_create(&RouteLabels {
                route: Label(route_label.clone()),
            })
            .observe(upstream_seconds),
    }

    let Answer {
        response, fields, ..
    } = resp;
    let (mut rparts, rbody) = response.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    // A header of the upstream's answer, wherever the client that read it keeps it.
    let upstream_header = |name: &str| -> Option<f64> {
        let raw = match rparts.headers.get(name) {
            Some(v) => v.as_bytes(),
            None => fields.as_ref()?.get(name)?,
        };
        std::str::from_utf8(raw).ok()?.trim().parse::<f64>().ok()
    };
    if let Some(settlement) = settlement {
        // The upstream answered: the request counts, at the spend it reported (dollars) or
        // the route's fixed spend.
        let reported = route
            .and_then(|r| r.spend_header.as_ref())
            .and_then(|name| upstream_header(name.as_str()))
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|usd| (usd.min(1e9) * MICROS_PER_USD).round() as u64);
        let fixed = route.map_or(0, |r| r.spend_micros);
        settlement.settle(Some(reported.unwrap_or(fixed)));
    }
    if let Some(name) = route.and_then(|r| r.cost_header.as_ref()) {
        let reported = upstream_header(name.as_str());
        let shared_adjust = rt.engine.observe_response(
            decision,
            &ResponseFacts {
                status: rparts.status.as_u16(),
                reported_cost: reported,
                now: shared.clock.now(),
            },
        );
        if let Some(store) = &shared.store {
            store.adjust(shared_adjust);
        }
    }
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrades are not proxied (yet); do not pretend they work.
        return Err(Refusal::UpstreamUnavailable);
    }
    rparts.version = http::Version::HTTP_11;
    Ok(Answer {
        response: Response::from_parts(rparts, rbody),
        lines: HeadLines::default(),
        fields,
    })
}

/// The client a throttling hold is counted for: its throttling record (key, else address),
/// or its address when behaviour is off.
fn held_key(decision: &Decision, client: std::net::IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    // A fixed hasher: the key only needs to tell clients apart within this process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match decision.trace.as_ref().and_then(|t| t.throttle_key()) {
        Some((dim, key)) => (dim as u8, key).hash(&mut h),
        None => client.to_canonical().hash(&mut h),
    }
    h.finish()
}

/// `uri` with its path replaced by `path` (the query kept), in origin form.
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq)).ok()?);
    http::Uri::from_parts(parts).ok()
}
