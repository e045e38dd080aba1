//! `[jwt]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderName, Uri};

use super::*;
use crate::error::Collector;
use crate::raw::*;
use crate::units::parse_duration;
use palisade_keys::jwt;

pub(super) fn compile_jwt(
    j: &RawJwt,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> Option<Arc<JwtVerifier>> {
    let header = match &j.header {
        Some(h) => match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                c.at(
                    sp(h),
                    "jwt.header",
                    format!("`{}` is not a header name", h.get_ref()),
                );
                http::header::AUTHORIZATION
            }
        },
        None => http::header::AUTHORIZATION,
    };
    let mut algorithms = Vec::new();
    for a in j.algorithms.iter().flatten() {
        match jwt::parse_algorithm(a.get_ref()) {
            Ok(alg) => algorithms.push(alg),
            Err(e) => c.at(sp(a), "jwt.algorithms", e),
        }
    }
    let leeway_secs = opt(&j.leeway, 30, "jwt.leeway", c, |s| {
        parse_duration(s).map(|n| n / palisade_engine::clock::SECOND)
    });
    let mut claims = Vec::new();
    for cl in j.claims.iter().flatten() {
        match KeyPart::parse(&format!("jwt:{}", cl.get_ref())) {
            Ok(KeyPart::Jwt(name)) => claims.push(name),
            _ => c.at(
                sp(cl),
                "jwt.claims",
                format!(
                    "`{}` is not a claim name (letters, digits, '_', '-', '.')",
                    cl.get_ref()
                ),
            ),
        }
    }
    if j.claims.is_none() {
        claims.push(Arc::from("sub"));
    }
    let mut keys = Vec::new();
    for (i, k) in j.keys.iter().enumerate() {
        let path = format!("jwt.keys[{i}]");
        let alg = match jwt::parse_algorithm(k.algorithm.get_ref()) {
            Ok(a) => a,
            Err(e) => {
                c.at(sp(&k.algorithm), format!("{path}.algorithm"), e);
                continue;
            }
        };
        let material = match (&k.secret, &k.pem_file) {
            (Some(sec), None) => {
                let value = match sec.expose().strip_prefix("env:") {
                    Some(var) => match std::env::var(var) {
                        Ok(v) => v,
                        Err(_) => {
                            c.at(
                                sp(sec.spanned()),
                                format!("{path}.secret"),
                                format!("environment variable `{var}` is not set"),
                            );
                            continue;
                        }
                    },
                    None => sec.expose().to_owned(),
                };
                jwt::KeyMaterial::Secret(value.into_bytes())
            }
            (None, Some(pem)) => {
                let file = base.join(pem.get_ref());
                match std::fs::read(&file) {
                    Ok(bytes) => {
                        files.push(file);
                        jwt::KeyMaterial::Pem(bytes)
                    }
                    Err(e) => {
                        c.at(
                            sp(pem),
                            format!("{path}.pem_file"),
                            format!("cannot read `{}`: {e}", file.display()),
                        );
                        continue;
                    }
                }
            }
            _ => {
                c.at(
                    sp(&k.algorithm),
                    &path,
                    "give exactly one of `secret` (HS256) or `pem_file` (RS256, ES256, EdDSA)",
                );
                continue;
            }
        };
        match jwt::StaticKey::new(k.kid.clone(), alg, &material) {
            Ok(key) => keys.push(key),
            Err(e) => c.at(sp(&k.algorithm), &path, e),
        }
    }
    let jwks_file = j.jwks_file.as_ref().map(|f| (base.join(f.get_ref()), f));
    let mut file_keys = Vec::new();
    if let Some((file, spanned)) = &jwks_file {
        match std::fs::read(file) {
            Ok(bytes) => match jwt::parse_jwks(&bytes) {
                Ok(k) => {
                    files.push(file.clone());
                    file_keys = k;
                }
                Err(e) => c.at(
                    sp(spanned),
                    "jwt.jwks_file",
                    format!("`{}`: {e}", file.display()),
                ),
            },
            Err(e) => c.at(
                sp(spanned),
                "jwt.jwks_file",
                format!("cannot read `{}`: {e}", file.display()),
            ),
        }
    }
    let jwks_url = j
        .jwks_url
        .as_ref()
        .and_then(|u| match u.expose().parse::<Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some() =>
            {
                Some(uri)
            }
            _ => {
                c.at(
                    sp(u.spanned()),
                    "jwt.jwks_url",
                    format!("`{}` is not an https:// or http:// URL", u.redacted()),
                );
                None
            }
        });
    let jwks_ca_file = j.jwks_ca_file.as_ref().and_then(|f| {
        let file = base.join(f.get_ref());
        match std::fs::read_to_string(&file) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {
                files.push(file.clone());
                Some(file)
            }
            Ok(_) => {
                c.at(
                    sp(f),
                    "jwt.jwks_ca_file",
                    format!("`{}` holds no PEM certificate", file.display()),
                );
                None
            }
            Err(e) => {
                c.at(
                    sp(f),
                    "jwt.jwks_ca_file",
                    format!("cannot read `{}`: {e}", file.display()),
                );
                None
            }
        }
    });
    if jwks_ca_file.is_some() && jwks_url.is_none() {
        c.at(
            j.jwks_ca_file.as_ref().and_then(sp),
            "jwt.jwks_ca_file",
            "jwks_ca_file applies to a jwks_url",
        );
    }
    let jwks_refresh = opt(
        &j.jwks_refresh,
        600 * palisade_engine::clock::SECOND,
        "jwt.jwks_refresh",
        c,
        parse_duration,
    );
    if keys.is_empty() && jwks_file.is_none() && jwks_url.is_none() {
        c.at(
            None,
            "jwt",
            "[jwt] needs keys: inline `keys`, a `jwks_file` or a `jwks_url`",
        );
    }
    Some(Arc::new(JwtVerifier::new(
        jwt::JwtSettings {
            header,
            algorithms,
            issuer: j.issuer.clone(),
            audience: j.audience.clone().unwrap_or_default(),
            leeway_secs,
            claims,
            account_claim: j.account_claim.clone(),
            scope_claim: j.scope_claim.clone().unwrap_or_else(|| "scope".to_owned()),
            jwks_url,
            jwks_ca_file,
            jwks_refresh,
        },
        keys,
        file_keys,
    )))
}
