//! Authentication as access control: a route's requirement against the credential the gateway
//! verified, failed attempts counted per address (guessing), scopes.

use std::sync::Arc;

use crate::model::code::ClientCode;

use crate::model::decision::{Action, Decision, Signal};
use crate::model::facts::RequestFacts;
use crate::model::identity::{KeyValue, key_hash_of_values};
use crate::model::principal::{Auth, AuthFailure, AuthRequirement, PrincipalKind};
use crate::policy::RouteSpec;

use crate::engine::*;

impl Engine {
    /// Checks the route's authentication requirement. Returns the refusal, if any.
    pub(crate) fn authenticate(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        route: &RouteSpec,
    ) -> Option<Decision> {
        let required = route.auth;
        if required == AuthRequirement::None {
            return None;
        }
        let failures = &self.policy.auth.failures;
        let ip_key = key_hash_of_values(
            &self.failure_table.hasher,
            &[KeyValue::Ip(facts.client_ip.to_canonical(), 255)],
        );
        let guessing = |d: &mut Decision| {
            d.signals.push(Signal {
                name: self.rule_guessing.clone(),
                weight: 100,
                shadow: false,
                discounted: false,
                detail: None,
            });
            d.score = 100;
            let mut out = d.clone();
            out.action = Action::Block;
            out.rule = self.rule_guessing.clone();
            out
        };
        // A source that kept presenting bad credentials is refused whatever it presents now,
        // until its failure budget replenishes.
        if self
            .failure_table
            .peek(failures, ip_key, facts.now)
            .is_some_and(|v| v.remaining == 0)
        {
            return Some(guessing(d));
        }
        let [missing_key, missing_token, missing_any, ..] = &self.auth_rules;
        let missing = |d: &mut Decision| {
            let (rule, code) = match required {
                AuthRequirement::ApiKey => (missing_key, ClientCode::MissingApiKey),
                AuthRequirement::Jwt => (missing_token, ClientCode::MissingToken),
                _ => (missing_any, ClientCode::MissingCredentials),
            };
            let mut out = d.clone();
            out.action = Action::Unauthorized;
            out.rule = rule.clone();
            out.code = Some(code);
            out
        };
        let accepts = |kind: PrincipalKind| match required {
            AuthRequirement::None | AuthRequirement::Any => true,
            AuthRequirement::ApiKey => kind == PrincipalKind::ApiKey,
            AuthRequirement::Jwt => kind == PrincipalKind::Jwt,
        };
        match facts.auth {
            Auth::Anonymous => Some(missing(d)),
            Auth::Failed { kind, .. } if !accepts(kind) => Some(missing(d)),
            Auth::Failed { failure, .. } => {
                let verdict = self.failure_table.check(failures, ip_key, facts.now, 1, 0);
                let rule = self.auth_rule(failure);
                d.signals.push(Signal {
                    name: rule.clone(),
                    weight: 10,
                    shadow: false,
                    discounted: false,
                    detail: None,
                });
                if !verdict.allowed || verdict.remaining == 0 {
                    return Some(guessing(d));
                }
                d.score = 10;
                let mut out = d.clone();
                out.action = Action::Unauthorized;
                out.rule = rule;
                out.code = Some(failure.code());
                Some(out)
            }
            Auth::Principal(p) if !accepts(p.kind) => Some(missing(d)),
            Auth::Principal(p) if !p.has_scopes(&route.scopes) => {
                let mut out = d.clone();
                out.action = Action::Block;
                out.rule = self.rule_scope.clone();
                out.code = Some(ClientCode::InsufficientScope);
                Some(out)
            }
            Auth::Principal(_) => None,
        }
    }

    pub(crate) fn auth_rule(&self, failure: AuthFailure) -> Arc<str> {
        let [
            ..,
            invalid_key,
            expired,
            revoked,
            invalid_token,
            invalid_sig,
        ] = &self.auth_rules;
        match failure {
            AuthFailure::InvalidApiKey => invalid_key,
            AuthFailure::ExpiredApiKey => expired,
            AuthFailure::RevokedApiKey => revoked,
            AuthFailure::InvalidToken => invalid_token,
            AuthFailure::InvalidSignature => invalid_sig,
        }
        .clone()
    }

    /// Checks a requirement outside any route (the gateway's own endpoints, such as the usage
    /// endpoint): counts failures and blocks guessing exactly as on a route. Returns the
    /// refusal, if any.
    pub fn authorize(&self, facts: &RequestFacts<'_>, route: &RouteSpec) -> Option<Decision> {
        let mut d = Decision::new(usize::MAX, self.rule_default.clone());
        self.authenticate(&mut d, facts, route)
    }
}
