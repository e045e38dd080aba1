//! Web Bot Auth on the request path: a request carrying a signature tagged `web-bot-auth` is
//! checked against the agent whose key its `keyid` names (RFC 9421 and the protocol-02 rules,
//! `palisade_keys::httpsig`), and the agent it covers in `Signature-Agent` must be that agent.
//! Keys come from an agent's keys file, or from its key directory (fetched in the background,
//! see [`super::agent_directory`]); with `discover`, any agent's directory named by its
//! `Signature-Agent`. A signature from a key not (yet) known is not judged (it is an unsigned
//! request, as far as the policy goes).

use std::sync::Arc;

use palisade_config::WebBotAuthSettings;
use palisade_keys::httpsig::{
    AgentHeader, Message, agent_uris, labels, signature_base, web_bot_auth_of,
};

use super::agent_directory::Target;

/// What the signature check found: the agent's name, its category, and the outcome.
pub type Checked = (Arc<str>, palisade_intel::Category, Result<(), &'static str>);

/// The agent a key belongs to, as far as this request goes.
struct Signer {
    name: Arc<str>,
    origin: String,
    category: palisade_intel::Category,
    jwk: serde_json::Value,
}

/// The agent and key for `keyid`: a listed agent's keys file, else a listed agent's fetched
/// directory, else (with `discover`) the directory a `Signature-Agent` URI names.
fn signer(
    shared: &crate::Shared,
    w: &WebBotAuthSettings,
    headers: &http::HeaderMap,
    keyid: &str,
) -> Option<Signer> {
    let listed = |a: &palisade_config::SignedAgentSpec, jwk: serde_json::Value| Signer {
        name: a.name.clone(),
        origin: a.origin.clone(),
        category: a.category,
        jwk,
    };
    for a in &w.agents {
        if let Some((_, jwk)) = a.keys.iter().find(|(t, _)| t == keyid) {
            return Some(listed(a, jwk.clone()));
        }
    }
    if !w.fetches() {
        return None;
    }
    let dirs = &shared.agent_directories;
    for uri in agent_uris(headers) {
        let origin = palisade_config::agent_origin(&uri);
        let agent = w.agents.iter().find(|a| a.fetch && a.origin == origin);
        if agent.is_none() && !w.discover {
            continue;
        }
        let Some(target) = Target::of(&uri) else {
            continue;
        };
        if let Some(jwk) = dirs.key(shared, w, &target, keyid) {
            return Some(match agent {
                Some(a) => listed(a, jwk),
                None => Signer {
                    name: Arc::from(target.host.as_str()),
                    origin,
                    category: w.discovered_category,
                    jwk,
                },
            });
        }
    }
    // No (usable) Signature-Agent: a listed agent's directory may still hold the key.
    w.agents.iter().filter(|a| a.fetch).find_map(|a| {
        let target = Target::of(&a.origin)?;
        dirs.key(shared, w, &target, keyid)
            .map(|jwk| listed(a, jwk))
    })
}

/// Checks the request's Web Bot Auth signature, if it has one, at `now` (Unix seconds).
pub fn check(
    shared: &crate::Shared,
    w: &WebBotAuthSettings,
    parts: &http::request::Parts,
    now: i64,
) -> Option<Checked> {
    if (w.agents.is_empty() && !w.discover) || !parts.headers.contains_key("signature-input") {
        return None;
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let msg = Message {
        method: parts.method.as_str(),
        // Web Bot Auth signs https requests (Palisade may sit behind the TLS terminator).
        scheme: "https",
        authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let mut found: Option<Checked> = None;
    for label in labels(&parts.headers).into_iter().take(8) {
        let Ok(signed) = signature_base(&msg, None, &label) else {
            continue;
        };
        if signed.tag.as_deref() != Some("web-bot-auth") {
            continue;
        }
        let Some(agent) = signed
            .keyid
            .as_deref()
            .and_then(|keyid| signer(shared, w, &parts.headers, keyid))
        else {
            continue;
        };
        // The base built above is the one verified (not rebuilt).
        let outcome = match web_bot_auth_of(&msg, signed, &agent.jwk, now) {
            Ok(v) if !v.signature_valid => Err("signature_mismatch"),
            Ok(v) => match (v.checks.failure(), &v.agent) {
                (Some(f), _) => Err(f),
                // The covered Signature-Agent (dictionary member, or the legacy string) must
                // name the agent whose key signed.
                (None, AgentHeader::Member { uri, .. } | AgentHeader::Legacy(uri)) => {
                    if palisade_config::agent_origin(uri) != agent.origin {
                        Err("signature_agent_mismatch")
                    } else if w.require_signature_agent && matches!(v.agent, AgentHeader::Legacy(_))
                    {
                        Err("signature_agent_legacy_form")
                    } else {
                        Ok(())
                    }
                }
                (None, AgentHeader::Absent) if w.require_signature_agent => {
                    Err("signature_agent_missing")
                }
                (None, AgentHeader::Absent) => Ok(()),
                (None, AgentHeader::NotCovered) => Err("signature_agent_not_covered"),
                (None, AgentHeader::MemberMissing) => Err("covered_member_missing"),
            },
            Err(_) => Err("malformed"),
        };
        let ok = outcome.is_ok();
        found = Some((agent.name.clone(), agent.category, outcome));
        if ok {
            break;
        }
    }
    found
}
