//! Who is calling: reads an API key or a bearer token from the request and verifies it against
//! the key directory or the JWT verifier. The engine then decides what the route requires.
//!
//! Which headers carry a key is configured (`[keys] headers`); `Authorization: Bearer pal_…`
//! is an API key, any other bearer value is a JWT (when `[jwt]` is configured).

pub mod agent_directory;
pub mod jwks;
pub mod keys;
pub mod signed_agent;

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use palisade_engine::RouteSpec;
use palisade_engine::model::principal::{
    Auth, AuthFailure, AuthRequirement, Principal, PrincipalKind,
};
use palisade_keys::DirEntry;
use palisade_keys::key::KEY_PREFIX;

use crate::{Runtime, Shared};

/// The outcome of authentication, owning what the engine borrows.
#[derive(Debug)]
pub enum Authenticated {
    /// No credential.
    Anonymous,
    /// A verified API key.
    Key(Arc<DirEntry>),
    /// A verified JWT.
    Token(Box<Principal>),
    /// A credential that did not verify.
    Failed {
        /// Key or token.
        kind: PrincipalKind,
        /// Why.
        failure: AuthFailure,
    },
}

impl Authenticated {
    /// The engine's view.
    pub fn as_auth(&self) -> Auth<'_> {
        match self {
            Authenticated::Anonymous => Auth::Anonymous,
            Authenticated::Key(e) => Auth::Principal(&e.principal),
            Authenticated::Token(p) => Auth::Principal(p),
            Authenticated::Failed { kind, failure } => Auth::Failed {
                kind: *kind,
                failure: *failure,
            },
        }
    }

    /// The verified key, if the request must also be signed.
    pub fn key_needing_signature(&self) -> Option<&Arc<DirEntry>> {
        match self {
            Authenticated::Key(e) if e.record.signed => Some(e),
            _ => None,
        }
    }
}

fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The API key and the bearer token a request presents, unverified.
pub fn presented<'h>(rt: &Runtime, headers: &'h HeaderMap) -> (Option<&'h str>, Option<&'h str>) {
    let keys = &rt.compiled.keys;
    let mut key: Option<&str> = None;
    let mut token: Option<&str> = None;
    for name in &keys.headers {
        let Some(v) = palisade_engine::request::header(headers, name).and_then(|v| v.to_str().ok())
        else {
            continue;
        };
        if *name == AUTHORIZATION {
            match bearer(v) {
                Some(b) if b.starts_with(KEY_PREFIX) => key = key.or(Some(b)),
                Some(b) if !b.is_empty() => token = token.or(Some(b)),
                _ => {}
            }
        } else if !v.trim().is_empty() {
            key = key.or(Some(v.trim()));
        }
        if key.is_some() {
            break;
        }
    }
    (key, token)
}

/// Removes presented API keys (`[keys] forward = "strip"`): the headers keys are read from
/// other than `Authorization`, and `Authorization` when it carries a key (a bearer token that
/// is not a key is the upstream's business and stays).
pub fn strip_keys(rt: &Runtime, headers: &mut HeaderMap) {
    for name in &rt.compiled.keys.headers {
        // Looked for first: removing an absent name costs a hashed lookup.
        let Some(value) = palisade_engine::request::header(headers, name) else {
            continue;
        };
        if *name == AUTHORIZATION {
            let is_key = value
                .to_str()
                .ok()
                .and_then(bearer)
                .is_some_and(|b| b.starts_with(KEY_PREFIX));
            if is_key {
                headers.remove(name);
            }
        } else {
            headers.remove(name);
        }
    }
}

/// Verifies the request's credential, as [`presented`] found it.
pub fn authenticate(
    shared: &Shared,
    rt: &Runtime,
    headers: &HeaderMap,
    route: &RouteSpec,
    (key, token): (Option<&str>, Option<&str>),
) -> Authenticated {
    if let Some(raw) = key {
        return match shared.keys.directory.verify(raw, shared.clock.unix_secs()) {
            Ok(entry) => Authenticated::Key(entry),
            Err(failure) => Authenticated::Failed {
                kind: PrincipalKind::ApiKey,
                failure,
            },
        };
    }
    let Some(jwt) = &rt.compiled.jwt else {
        return Authenticated::Anonymous;
    };
    // Tokens are verified where a route takes them or a limit keys on their claims;
    // elsewhere they may well be the upstream's own business.
    let wanted =
        matches!(route.auth, AuthRequirement::Jwt | AuthRequirement::Any) || rt.jwt_identity;
    if !wanted {
        return Authenticated::Anonymous;
    }
    let header = &jwt.settings().header;
    let token = if *header == AUTHORIZATION {
        token
    } else {
        headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(|v| bearer(v).unwrap_or(v.trim()))
    };
    match token {
        None => Authenticated::Anonymous,
        Some(t) => match jwt.verify(t, shared.clock.unix_secs()) {
            Ok(p) => Authenticated::Token(Box::new(p)),
            Err(failure) => Authenticated::Failed {
                kind: PrincipalKind::Jwt,
                failure,
            },
        },
    }
}
