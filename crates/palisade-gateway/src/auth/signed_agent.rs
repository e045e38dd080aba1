//! Web Bot Auth on the request path: a request carrying a signature tagged `web-bot-auth` is
//! checked against the configured agent whose key its `keyid` names (RFC 9421 and the
//! protocol-02 rules, `palisade_keys::httpsig`), and the agent it covers in `Signature-Agent`
//! must be that agent. A signature from a key no configured agent has is not judged (it is an
//! unsigned request, as far as the policy goes).

use std::sync::Arc;

use palisade_config::WebBotAuthSettings;
use palisade_keys::httpsig::{AgentHeader, Message, labels, signature_base, web_bot_auth_of};

/// What the signature check found: the agent's name, its category, and the outcome.
pub type Checked = (Arc<str>, palisade_intel::Category, Result<(), &'static str>);

/// Checks the request's Web Bot Auth signature, if it has one, at `now` (Unix seconds).
pub fn check(w: &WebBotAuthSettings, parts: &http::request::Parts, now: i64) -> Option<Checked> {
    if w.agents.is_empty() || !parts.headers.contains_key("signature-input") {
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
        let Some((agent, jwk)) = signed.keyid.as_deref().and_then(|keyid| {
            w.agents.iter().find_map(|a| {
                a.keys
                    .iter()
                    .find(|(t, _)| t == keyid)
                    .map(|(_, jwk)| (a, jwk))
            })
        }) else {
            continue;
        };
        // The base built above is the one verified (not rebuilt).
        let outcome = match web_bot_auth_of(&msg, signed, jwk, now) {
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
