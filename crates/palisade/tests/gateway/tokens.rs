//! JWT bearer tokens through the real gateway: HS256, RS256, ES256 and EdDSA, keys inline, from
//! a PEM file, a JWKS file and a JWKS URL; expiry, audience, issuer and tampering; claims as
//! identities for limits. Key pairs are made by `openssl` for each run; tokens are signed by
//! the test.

use std::path::Path;
use std::process::Command;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use crate::common::*;

const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `<name>.key` (private, PKCS#8) and `<name>.pub` (public) in `dir`.
fn key_pair(dir: &Path, name: &str, alg: &str) {
    let key = format!("{name}.key");
    let public = format!("{name}.pub");
    match alg {
        "rsa" => openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key,
            ],
            dir,
        ),
        "ec" => openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ],
            dir,
        ),
        _ => openssl(&["genpkey", "-algorithm", "ED25519", "-out", &key], dir),
    }
    openssl(&["pkey", "-in", &key, "-pubout", "-out", &public], dir);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, &claims, key).unwrap()
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "iss": "https://auth.test", "aud": "palisade-api", "exp": now() + 600, "org_id": "org-7", "scope": "items:read" })
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_of_each_algorithm_verify_and_bad_ones_are_refused() {
    let up = upstream().await;
    let keys_dir = std::env::temp_dir().join(format!("palisade-jwt-{}", rand_u64()));
    std::fs::create_dir_all(&keys_dir).unwrap();
    key_pair(&keys_dir, "rsa", "rsa");
    key_pair(&keys_dir, "ec", "ec");
    key_pair(&keys_dir, "ed", "ed");
    key_pair(&keys_dir, "url", "ec");
    let read = |f: &str| std::fs::read(keys_dir.join(f)).unwrap();
    let rsa = EncodingKey::from_rsa_pem(&read("rsa.key")).unwrap();
    let ec = EncodingKey::from_ec_pem(&read("ec.key")).unwrap();
    let ed = EncodingKey::from_ed_pem(&read("ed.key")).unwrap();
    let url_key = EncodingKey::from_ec_pem(&read("url.key")).unwrap();
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());

    // EdDSA comes from a JWKS file, one EC key from a JWKS URL served by the upstream.
    let ed_jwk = jwk_from_public_pem(&keys_dir, "ed.pub", "ed-1", "EdDSA");
    std::fs::write(
        keys_dir.join("jwks.json"),
        json!({ "keys": [ed_jwk] }).to_string(),
    )
    .unwrap();
    let url_jwk = jwk_from_public_pem(&keys_dir, "url.pub", "url-1", "ES256");
    *up.state.jwks.lock().unwrap() = json!({ "keys": [url_jwk] }).to_string();

    let cfg = config_for(
        &up,
        &format!(
            r#"
[jwt]
issuer = "https://auth.test"
audience = ["palisade-api"]
leeway = "5s"
claims = ["sub", "org_id"]
jwks_file = "{dir}/jwks.json"
jwks_url = "http://{up}/jwks.json"
keys = [
  {{ kid = "hs-1", algorithm = "HS256", secret = "env:TEST_JWT_SECRET" }},
  {{ kid = "rsa-1", algorithm = "RS256", pem_file = "{dir}/rsa.pub" }},
  {{ kid = "ec-1", algorithm = "ES256", pem_file = "{dir}/ec.pub" }},
]

[[routes]]
name = "items"
match = {{ path = "/items/*" }}
auth = "jwt"
scopes = ["items:read"]

[[limits]]
name = "per-subject"
key = ["jwt:sub"]
routes = ["items"]
rate = "3/1m"
"#,
            dir = keys_dir.display(),
            up = up.addr,
        ),
    );
    let g = Gateway::start_with(Some(&cfg), &[], &[("TEST_JWT_SECRET", HS_SECRET)]);
    let call = |t: String| {
        let url = g.url("/items/1");
        async move {
            send(
                "GET",
                &url,
                &[("authorization", &format!("Bearer {t}"))],
                "",
            )
            .await
        }
    };

    let cases = [
        (Algorithm::HS256, "hs-1", &hs, "alice"),
        (Algorithm::RS256, "rsa-1", &rsa, "bob"),
        (Algorithm::ES256, "ec-1", &ec, "carol"),
        (Algorithm::EdDSA, "ed-1", &ed, "dave"),
        (Algorithm::ES256, "url-1", &url_key, "erin"),
    ];
    for (alg, kid, key, sub) in cases {
        // The JWKS URL is fetched in the background at start.
        let mut r = call(token(alg, Some(kid), key, claims(sub))).await;
        for _ in 0..50 {
            if r.status == 200 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            r = call(token(alg, Some(kid), key, claims(sub))).await;
        }
        assert_eq!(r.status, 200, "{alg:?}: {:?}", r.body);
    }

    let bad = |c: serde_json::Value| token(Algorithm::ES256, Some("ec-1"), &ec, c);
    let mut expired = claims("x");
    expired["exp"] = json!(now() - 60);
    let mut wrong_aud = claims("x");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims("x");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_exp = claims("x");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut future = claims("x");
    future["nbf"] = json!(now() + 600);
    let good = bad(claims("x"));
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let mut p = payload.to_owned().into_bytes();
    p[5] = if p[5] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{head}.{}.{sig}", String::from_utf8(p).unwrap());
    // A token signed with the HS256 secret but claiming RS256's key id.
    let confused = token(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(b"x"),
        claims("x"),
    );
    for (what, t) in [
        ("expired", bad(expired)),
        ("wrong audience", bad(wrong_aud)),
        ("wrong issuer", bad(wrong_iss)),
        ("no exp", bad(no_exp)),
        ("not yet valid", bad(future)),
        ("tampered", tampered),
        ("algorithm confusion", confused),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let r = call(t).await;
        assert_eq!(
            (r.status.as_u16(), r.json()["error"].clone()),
            (401, json!("invalid_token")),
            "{what}"
        );
    }
    assert_eq!(
        get(&g.url("/items/1")).await.json()["error"],
        "missing_token"
    );

    // Claims are identities: alice has made one request; two more fit, the third is limited.
    for expect in [200, 200, 429] {
        assert_eq!(
            call(token(Algorithm::HS256, Some("hs-1"), &hs, claims("alice")))
                .await
                .status,
            expect
        );
    }
    let limited = g.wait_decision(|d| d["action"] == "limit");
    assert_eq!(limited["identity"]["jwt:sub"], "alice");
    assert_eq!(limited["identity"]["jwt:org_id"], "org-7");
    let _ = std::fs::remove_dir_all(&keys_dir);
}

/// A JWK for a public key PEM, built from `openssl`'s text output of the key.
fn jwk_from_public_pem(dir: &Path, file: &str, kid: &str, alg: &str) -> serde_json::Value {
    // The DER SubjectPublicKeyInfo ends with the raw key: 32 bytes for Ed25519, a 65-byte
    // uncompressed point (0x04 || x || y) for P-256.
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-in", file, "-outform", "DER"])
        .current_dir(dir)
        .output()
        .unwrap()
        .stdout;
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    match alg {
        "EdDSA" => {
            let x = &der[der.len() - 32..];
            json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(x), "kid": kid, "alg": "EdDSA", "use": "sig" })
        }
        _ => {
            let point = &der[der.len() - 65..];
            assert_eq!(point[0], 4);
            json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]), "kid": kid, "alg": "ES256", "use": "sig" })
        }
    }
}

/// Serves `jwks` at `/jwks.json` over TLS with a certificate signed by a private CA made here;
/// returns the address and the CA file.
async fn tls_jwks_server(dir: &Path, jwks: String) -> (std::net::SocketAddr, std::path::PathBuf) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=palisade-test-ca",
            "-days",
            "2",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=localhost",
        ],
        dir,
    );
    std::fs::write(
        dir.join("srv.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "srv.ext",
        ],
        dir,
    );
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("srv.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    let body = jwks.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, dir.join("ca.pem"))
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_over_https_is_verified_against_the_configured_ca() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("palisade-jwks-tls-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    key_pair(&dir, "sig", "ec");
    let jwk = jwk_from_public_pem(&dir, "sig.pub", "tls-1", "ES256");
    let (addr, ca) = tls_jwks_server(&dir, json!({ "keys": [jwk] }).to_string()).await;
    let signer = EncodingKey::from_ec_pem(&std::fs::read(dir.join("sig.key")).unwrap()).unwrap();
    let cfg = |ca_line: &str| {
        config_for(
            &up,
            &format!(
                "[jwt]\njwks_url = \"https://127.0.0.1:{}/jwks.json\"\n{ca_line}\n\n[[routes]]\nname = \"items\"\nmatch = {{ path = \"/items/*\" }}\nauth = \"jwt\"\n",
                addr.port()
            ),
        )
    };
    let t = token(
        Algorithm::ES256,
        Some("tls-1"),
        &signer,
        json!({ "sub": "s", "exp": now() + 600 }),
    );
    let auth = format!("Bearer {t}");

    // Trusting the private CA: the keys arrive and the token verifies.
    let g = Gateway::start(Some(&cfg(&format!("jwks_ca_file = \"{}\"", ca.display()))));
    let mut status = 0;
    for _ in 0..100 {
        status = send("GET", &g.url("/items/1"), &[("authorization", &auth)], "")
            .await
            .status
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "{}", g.stderr());

    // Without it the server's certificate is not trusted: no keys, the token is refused, and
    // the gateway says why.
    let g = Gateway::start(Some(&cfg("")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !g.stderr().contains("fetching JWKS failed") {
        assert!(std::time::Instant::now() < deadline, "{}", g.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = send("GET", &g.url("/items/1"), &[("authorization", &auth)], "").await;
    assert_eq!(r.status, 401);
    let _ = std::fs::remove_dir_all(&dir);
}
