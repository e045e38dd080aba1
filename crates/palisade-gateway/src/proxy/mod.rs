//! The request path, one phase per file, in the order a request lives them:
//! [`facts`] (bounds, canonical path, what the engine reads) -> [`decide`] (the engine, the
//! store, the failure policies) -> [`enforce`] (refusal or hold) -> [`forward`] (the upstream)
//! -> [`observe`] (headers, behaviour, metrics, log). Palisade's own endpoints are in
//! [`endpoints`]. Nothing here panics, blocks, or tells the client which rule fired.

pub mod contract;
pub mod decide;
pub mod decision;
pub mod endpoints;
pub mod enforce;
pub mod ext_authz;
pub mod facts;
pub mod feedback;
pub mod forward;
pub mod hold;
pub mod observe;
pub mod spoa;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use palisade_engine::request::client_ip::client_ip;
use palisade_engine::{Clock, RequestFacts};

pub use facts::username_in;

use crate::listen::ClientBody;
use crate::proxy::hold::ClientGone;
use crate::refusal::Refusal;
use crate::telemetry::metrics::{DecisionLabels, Label};
use crate::wire::body::ProxyBody;
use crate::wire::fields::{Answer, HeadLines, UpstreamFields};
use crate::wire::request_id::request_id;
use crate::{Runtime, Shared};

/// The proxy as the listener's request handler.
#[derive(Clone)]
pub struct Proxy(pub Arc<Shared>);

impl crate::listen::Handler for Proxy {
    fn handle(
        &self,
        req: Request<ClientBody>,
        peer: SocketAddr,
        gone: Option<ClientGone>,
    ) -> impl std::future::Future<Output = Answer> + Send + use<> {
        // Boxed once: the listener moves the answering future a few times before its first poll
        // (into its closure's future, then pinned), and this state is kilobytes; a box moves as
        // a pointer.
        Box::pin(handle(self.0.clone(), req, peer, gone))
    }
}

/// Handles one request; never fails (errors become responses).
///
/// Not an `async fn`: an async fn's future keeps room for each argument twice (as taken, and
/// as moved into its body), and this one's request head is a few hundred bytes. The block below
/// holds the head once, in place, and `respond` borrows it.
pub fn handle(
    shared: Arc<Shared>,
    req: Request<ClientBody>,
    peer: SocketAddr,
    gone: Option<ClientGone>,
) -> impl std::future::Future<Output = Answer> + Send + use<> {
    let (mut parts, body) = req.into_parts();
    async move {
        let rt = shared.runtime.load_full();
        let mut extra = Extra {
            // The RateLimit headers and the request id without regrowing.
            lines: HeadLines::with_capacity(768),
            fields: None,
        };
        let response = respond(&shared, &rt, &mut parts, body, peer, gone, &mut extra).await;
        Answer {
            response,
            lines: extra.lines,
            fields: extra.fields,
        }
    }
}

/// What goes out beside the response's headers (see [`Answer`]).
struct Extra {
    lines: HeadLines,
    fields: Option<UpstreamFields>,
}

/// [`handle`], with Palisade's header lines and the upstream's fields left in `extra`.
async fn respond(
    shared: &Shared,
    rt: &Runtime,
    parts: &mut http::request::Parts,
    body: ClientBody,
    peer: SocketAddr,
    gone: Option<ClientGone>,
    extra: &mut Extra,
) -> Response<ProxyBody> {
    // Arrival, on the engine's monotonic clock (also the decision's `now`).
    let now = shared.clock.now();
    let id = request_id();
    // Its text, checked once (every use below borrows it).
    let request_id = id.as_str();
    let refuse = |(r, rule): facts::Bounded| bounded_refusal(shared, r, request_id, rule);
    // A front asking about a request (nginx auth_request, Caddy forward_auth, ...): the request
    // it names is judged as if it had come here.
    let call = match decision::rewrite(shared, rt, parts, peer.ip()) {
        Ok(c) => c,
        Err(answer) => return *answer,
    };

    // Request facts.
    let ambiguities = match facts::admit(rt, parts) {
        Ok(a) => a,
        Err(b) => return refuse(b),
    };
    let client = client_ip(
        peer.ip(),
        &parts.headers,
        &rt.compiled.server.trusted_proxies,
    );
    if let Some(own) = endpoints::serve(shared, rt, parts, client, peer, request_id) {
        return own;
    }
    // The rarely taken awaits below are boxed: every request's future holds room for each
    // await's state, and these (the challenge endpoints, body reads, the shared store, holds,
    // a front's refusals) would otherwise make it kilobytes larger for all.
    if let Some(which) = parts.uri.path().strip_prefix(crate::challenge::PREFIX)
        && let Some(own) =
            Box::pin(crate::challenge::endpoint(shared, rt, parts, client, which)).await
    {
        return own;
    }
    let mut presented = crate::challenge::presented(shared, rt, parts, client);
    let route = rt.engine.route_of(&parts.method, parts.uri.path());
    if !facts::path_allowed(rt, route, ambiguities) {
        return refuse((Refusal::InvalidPath, "bounds/path"));
    }
    let unix_ms = shared.clock.unix_ms_at(now);
    let mut gathered = facts::gather(shared, rt, parts, body, route, client);
    if facts::needs_body(rt, parts, route, &gathered)
        && let Err(b) = Box::pin(facts::read_body(
            shared,
            rt,
            parts,
            route,
            unix_ms,
            &mut gathered,
        ))
        .await
    {
        return refuse(b);
    }
    // What the detectors read and the request's facts live in this block only: it ends before
    // the upstream is awaited, so the request's future does not carry them while it waits.
    let minted = presented.minted.take();
    let mut settlement = None;
    // Set in the block (not returned from it as a tuple: that would copy the decision twice).
    let mut decision;
    let record;
    let answered;
    {
        // The API's contract ([openapi]): a breach is a signal to the engine, and in enforce mode
        // the answer unless the policy refuses more strongly.
        let breach = rt
            .compiled
            .openapi
            .as_ref()
            .and_then(|api| contract::check(shared, api, parts, gathered.buffered.as_deref()));
        let probes = facts::scan_probes(rt, parts, gathered.buffered.as_deref());
        let fronted = facts::fronted_fingerprints(rt, &parts.headers, peer.ip());
        let signed = rt.compiled.web_bot_auth.as_ref().and_then(|w| {
            crate::auth::signed_agent::check(shared, w, parts, (unix_ms / 1000) as i64)
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
            auth: gathered.authn.as_auth(),
            version: parts.version,
            ja4h: gathered.ja4h.as_deref(),
            hfp: gathered.hfp.as_deref(),
            tls: parts
                .extensions
                .get::<Arc<crate::listen::tls::TlsInfo>>()
                .map(|t| palisade_engine::model::facts::TlsFacts {
                    ja4: &t.ja4,
                    version: t.version,
                    server_name: t.server_name.as_deref(),
                    alpn: t.alpn,
                    client: t.client.as_deref(),
                })
                .or_else(|| {
                    fronted
                        .0
                        .map(|ja4| palisade_engine::model::facts::TlsFacts {
                            ja4,
                            version: match ja4.get(1..3) {
                                Some("13") => "1.3",
                                Some("12") => "1.2",
                                _ => "",
                            },
                            server_name: None,
                            alpn: None,
                            client: None,
                        })
                }),
            h2fp: parts
                .extensions
                .get::<crate::listen::H2Fingerprint>()
                .map(|f| &*f.0)
                .or(fronted.1),
            ja3: fronted.2,
            clearance: presented.clearance.map(|c| {
                // The reported time zone against the client network's country, per request.
                let tz_off = presented
                    .tz
                    .as_deref()
                    .zip(gathered.ip_info.as_ref().map(|i| &*i.country))
                    .and_then(|(tz, cc)| shared.challenges.tz_mismatch(tz, cc))
                    .unwrap_or(false);
                let flags = presented.flags
                    | if tz_off {
                        crate::challenge::flags::TZ_MISMATCH
                    } else {
                        0
                    };
                palisade_engine::model::facts::Clearance {
                    signals: crate::challenge::signal_weights(&rt.compiled.challenge, flags),
                    ..c
                }
            }),
            signed_agent: signed.as_ref().map(|(name, category, outcome)| {
                palisade_engine::model::facts::SignedAgent {
                    name,
                    category: *category,
                    outcome: *outcome,
                }
            }),
            ip_info: gathered.ip_info.as_ref(),
            bot_verification: gathered.bot_verification,
            username: gathered.username.as_deref(),
            probes: &probes.hits,
            contract: breach
                .as_ref()
                .filter(|b| b.mode != palisade_config::openapi::OpenApiMode::Shadow)
                .map(|b| b.rule),
        };
        // A decoy key (published where only scrapers look) flags whoever presents it.
        if let Some(i) = gathered
            .presented_key
            .as_deref()
            .and_then(|k| rt.engine.decoy_key(k))
        {
            rt.engine.trap(i, &facts);
        }

        // Decision.
        decision = if shared.store.is_none() {
            decide::local(shared, rt, &facts, route, &mut settlement)
        } else {
            match Box::pin(decide::shared(shared, rt, &facts, route, &mut settlement)).await {
                Ok(d) => d,
                Err(b) => return refuse(b),
            }
        };
        record = observe::pending_record(rt, &decision, &facts, parts);
        // Enforce mode: a breach is answered here unless the policy refuses the request itself.
        answered = breach.filter(|b| {
            b.mode == palisade_config::openapi::OpenApiMode::Enforce && decision.action.forwards()
        });
    }
    let route_label = rt.route_label(decision.route);

    // Enforcement, then forwarding.
    if let Some(b) = &answered {
        decision.action = palisade_engine::Action::Block;
        decision.rule = Arc::from(b.rule);
    }
    let (refusal, held) = match decision.action {
        _ if answered.is_some() => (None, enforce::Held::No),
        palisade_engine::Action::Delay { .. } => {
            Box::pin(enforce::hold(
                shared,
                rt,
                &mut decision,
                client,
                gone.as_ref(),
            ))
            .await
        }
        _ => (Refusal::from_decision(&decision), enforce::Held::No),
    };
    let mut origin = palisade_engine::Origin::Gateway;
    let mut response = match (refusal, &answered) {
        (_, Some(b)) => contract::answer(b, request_id),
        (refusal, None) => match refusal {
            Some(Refusal::ChallengeRequired) => {
                crate::challenge::respond(shared, rt, parts, client, &decision, request_id)
            }
            Some(r) => r.response(request_id),
            None if call.is_some() => {
                // The front forwards it: quotas count it now, or when its log line comes back
                // with the spend the upstream reported (`[decision.feedback]`).
                let fixed = rt
                    .compiled
                    .policy
                    .route(decision.route)
                    .map_or(0, |r| r.spend_micros);
                let waits = rt.compiled.feedback.as_ref().or(call
                    .filter(|c| c.reports_answer)
                    .map(|_| &feedback::IN_PROCESS));
                match waits {
                    Some(f) => shared.feedback.wait(
                        request_id,
                        rt.engine.awaited(&decision),
                        settlement.take(),
                        fixed,
                        f,
                    ),
                    None => {
                        if let Some(s) = settlement.take() {
                            s.settle(Some(fixed));
                        }
                    }
                }
                decision::allowed(&decision, facts_principal(&gathered), request_id)
            }
            None => {
                let out = forward::Outgoing {
                    authn: &gathered.authn,
                    buffered: gathered.buffered.take(),
                    body: gathered.body.take(),
                    peer: peer.ip(),
                    request_id,
                };
                match forward::forward(shared, rt, parts, out, settlement, &decision, &route_label)
                    .await
                {
                    Ok(upstream) => {
                        origin = palisade_engine::Origin::Upstream;
                        extra.fields = upstream.fields;
                        upstream.response
                    }
                    Err(r) => r.response(request_id),
                }
            }
        },
    };

    if let Some(v) = minted.and_then(|t| http::HeaderValue::try_from(t).ok()) {
        response
            .headers_mut()
            .insert(crate::challenge::CLEARANCE_HEADER, v);
    }

    if let Some(c) = call
        && !response.status().is_success()
    {
        response = Box::pin(decision::refused(shared, c, response, request_id)).await;
    }

    // Observation.
    observe::response_lines(rt, &decision, request_id, &mut extra.lines);
    let outcome = observe::Outcome {
        request_id: id,
        client,
        route_label: &route_label,
        status: response.status().as_u16(),
        origin,
        held,
        arrived: now,
    };
    observe::observe(shared, rt, &mut decision, outcome, record);
    response
}

/// The caller's key id and account, for a decision answer.
fn facts_principal(g: &facts::Gathered) -> Option<(&str, &str)> {
    let p = g.authn.as_auth();
    let p = p.principal()?;
    Some((p.key_id.as_deref()?, p.account.as_deref().unwrap_or("")))
}

/// Answers a request refused before the engine saw it (bounds), counting it.
pub(crate) fn bounded_refusal(
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

#[cfg(test)]
mod tests {
    /// The size of the future a function of four arguments returns.
    fn future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_answering_future_stays_small() {
        // Every request's future is boxed, so it is copied once whole, and each level of it
        // (respond, forward, the upstream client) is moved in when first awaited: its bytes
        // are copied on every request. It was 5.4 KiB when the request head was held by value
        // at each level and the rarely taken branches were inline; 3.2 KiB since.
        let size = future_size(super::handle);
        eprintln!("handle: {size} bytes");
        assert!(size <= 4096, "the answering future grew to {size} bytes");
    }
}
