//! API keys, accounts and quotas through the real gateway: lifecycle, scopes, rotation,
//! revocation, account-wide limits, daily quotas across midnight UTC, spend quotas with costs
//! from a real upstream, concurrency without overspend, key guessing, crash durability.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

const KEY_ROUTES: &str = r#"
[[routes]]
name = "items"
match = { path = "/items/*" }
auth = "api_key"
scopes = ["items:read"]

[[routes]]
name = "admin"
match = { path = "/admin/*" }
auth = "api_key"
scopes = ["admin"]

[[routes]]
name = "spend"
match = { path = "/spend" }
auth = "api_key"
spend_header = "x-cost-usd"
spend_reserve_usd = 0.10
"#;

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn call(g: &Gateway, path: &str, key: &str) -> Resp {
    send("GET", &g.url(path), &[("authorization", &bearer(key))], "").await
}

#[tokio::test(flavor = "multi_thread")]
async fn key_lifecycle_scopes_rotation_expiry_and_revocation() {
    let up = upstream().await;
    let g = Gateway::start_with(
        Some(&config_for(
            &up,
            &format!("[keys]\nrotation_grace = \"1h\"\n{KEY_ROUTES}"),
        )),
        &[],
        &[TEST_CLOCK],
    );
    let (id, key) = create_key(
        &g,
        json!({ "name": "ci", "account": "acme", "scopes": ["items:read"] }),
    )
    .await;
    assert!(key.starts_with(&format!("pal_{id}_")));

    // Use: both header forms; missing, malformed and wrong keys; a scope the key lacks.
    assert_eq!(call(&g, "/items/1", &key).await.status, 200);
    let r = send("GET", &g.url("/items/1"), &[("x-api-key", &key)], "").await;
    assert_eq!(r.status, 200);
    let r = get(&g.url("/items/1")).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (401, json!("missing_api_key"))
    );
    assert_eq!(r.header("www-authenticate"), "Bearer");
    let r = call(&g, "/items/1", "pal_nope").await;
    assert_eq!(r.json()["error"], "invalid_api_key");
    let mut forged = key.clone();
    forged.replace_range(key.len() - 3.., "AAA");
    assert_eq!(
        call(&g, "/items/1", &forged).await.json()["error"],
        "invalid_api_key"
    );
    let r = call(&g, "/admin/x", &key).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (403, json!("insufficient_scope"))
    );
    // Unauthenticated routes still work without a key.
    assert_eq!(get(&g.url("/public")).await.status, 200);

    // Rotation: the successor works at once, the old key until the grace period ends.
    let r = admin_post(&g, &format!("/v1/keys/{id}/rotate")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let new_key = r.json()["key"].as_str().unwrap().to_owned();
    let new_id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(call(&g, "/items/1", &new_key).await.status, 200);
    assert_eq!(call(&g, "/items/1", &key).await.status, 200);
    advance_clock(&g, 3_601).await;
    let r = call(&g, "/items/1", &key).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (401, json!("expired_api_key"))
    );
    assert_eq!(call(&g, "/items/1", &new_key).await.status, 200);

    // Expiry set at creation.
    let (_, short) = create_key(&g, json!({ "scopes": ["items:read"], "expires_in": "1h" })).await;
    assert_eq!(call(&g, "/items/1", &short).await.status, 200);
    advance_clock(&g, 3_600).await;
    assert_eq!(
        call(&g, "/items/1", &short).await.json()["error"],
        "expired_api_key"
    );

    // Revocation takes effect within a second.
    let revoked_at = Instant::now();
    assert_eq!(
        admin_post(&g, &format!("/v1/keys/{new_id}/revoke"))
            .await
            .status,
        200
    );
    loop {
        let r = call(&g, "/items/1", &new_key).await;
        if r.status == 401 {
            assert_eq!(r.json()["error"], "revoked_api_key");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "revocation took over a second"
        );
    }

    // The admin API shows ids and prefixes, never keys or hashes; every change is audited.
    let list = admin_get(&g, "/v1/keys").await;
    let text = String::from_utf8_lossy(&list.body).to_string();
    assert!(!text.contains(&key) && !text.contains(&new_key) && !text.contains("hash"));
    let statuses: Vec<_> = list.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["prefix"].as_str().unwrap().to_owned(),
                k["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&(format!("pal_{id}"), "expired".to_owned())),
        "{statuses:?}"
    );
    assert!(statuses.contains(&(format!("pal_{new_id}"), "revoked".to_owned())));
    let audit = admin_get(&g, "/v1/audit").await.json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["key.create", "key.rotate", "key.create", "key.revoke"]
    );

    // Keys never reach the decision log, the metrics or the admin API's decisions.
    g.wait_decisions(5);
    std::thread::sleep(Duration::from_millis(300));
    let out = g.all_output();
    for k in [&key, &new_key, &short] {
        assert!(!out.contains(k.as_str()), "a raw key was logged");
    }
    assert!(
        out.contains(&format!("\"api_key\":\"{id}\"")),
        "the key id identifies the caller in the log"
    );
    let metrics = String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).to_string();
    assert!(!metrics.contains(&id) && !metrics.contains("pal_"));
    let recent = String::from_utf8_lossy(&admin_get(&g, "/v1/decisions").await.body).to_string();
    assert!(!recent.contains(&key));
}

#[tokio::test(flavor = "multi_thread")]
async fn account_limits_hold_across_keys_and_cap_the_number_of_keys() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            r#"
[keys]
max_keys_per_account = 3

[[limits]]
name = "per-account"
key = ["account"]
rate = "5/1m"

[[limits]]
name = "per-key"
key = ["api_key"]
rate = "4/1m"
{KEY_ROUTES}"#
        ),
    )));
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(
            create_key(&g, json!({ "account": "acme", "scopes": ["items:read"] }))
                .await
                .1,
        );
    }
    let r = admin_json(&g, "POST", "/v1/keys", json!({ "account": "acme" })).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (409, json!("account_key_limit"))
    );
    // Spread over three keys, each far under its own limit: the account's budget still holds.
    let mut statuses = Vec::new();
    for i in 0..7 {
        statuses.push(call(&g, "/items/1", &keys[i % 3]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let limited = g.wait_decision(|d| d["action"] == "limit");
    assert_eq!(limited["rule"], "limit/per-account");
    assert_eq!(limited["identity"]["account"], "acme");
    // "Why was acme limited?"
    let who = admin_get(&g, "/v1/identities/account/acme").await.json();
    let l = &who["identity"]["limits"][0];
    assert_eq!(
        (l["limit"].clone(), l["remaining"].clone()),
        (json!("per-account"), json!(0))
    );
    // Another account is unaffected.
    let (_, other) = create_key(&g, json!({ "account": "globex", "scopes": ["items:read"] })).await;
    assert_eq!(call(&g, "/items/1", &other).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn daily_quota_resets_at_midnight_utc_and_usage_is_readable() {
    let up = upstream().await;
    let g = Gateway::start_with(
        Some(&config_for(
            &up,
            &format!(
                r#"
[[quotas]]
name = "daily"
key = ["api_key"]
requests_per_day = 3
{KEY_ROUTES}"#
            ),
        )),
        &[],
        &[TEST_CLOCK],
    );
    let (_, key) = create_key(&g, json!({ "scopes": ["items:read"] })).await;
    let now_ms = advance_clock(&g, 0).await;
    // Keep clear of midnight so the test cannot straddle it by accident.
    let secs_left = 86_400 - (now_ms / 1000) % 86_400;
    let now_ms = if secs_left < 120 {
        advance_clock(&g, 300).await
    } else {
        now_ms
    };
    let to_midnight = 86_400 - (now_ms / 1000) % 86_400;
    for i in 0..3 {
        let r = call(&g, "/items/1", &key).await;
        assert_eq!(r.status, 200, "request {i}");
        assert!(
            r.header("ratelimit-policy")
                .contains(r#""daily";q=3;w=86400"#),
            "{}",
            r.header("ratelimit-policy")
        );
        assert!(
            r.header("ratelimit")
                .contains(&format!(r#""daily";r={}"#, 2 - i)),
            "{}",
            r.header("ratelimit")
        );
    }
    let r = call(&g, "/items/1", &key).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "daily_rpd_limit_exceeded");
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!(
        retry.abs_diff(to_midnight) <= 5,
        "retry-after {retry} vs {to_midnight} s to midnight"
    );
    assert!(
        r.header("ratelimit").contains(r#""daily";r=0"#),
        "{}",
        r.header("ratelimit")
    );

    let u = call(&g, "/_palisade/usage", &key).await;
    assert_eq!(u.status, 200, "{:?}", u.body);
    let u = u.json();
    assert_eq!(
        (u["daily"]["used"].clone(), u["daily"]["remaining"].clone()),
        (json!(3), json!(0))
    );
    assert!(
        u["daily"]["resetAt"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z")
    );
    assert_eq!(call(&g, "/_palisade/usage", "pal_bad").await.status, 401);

    // Past midnight UTC: a fresh budget.
    advance_clock(&g, to_midnight + 1).await;
    assert_eq!(call(&g, "/items/1", &key).await.status, 200);
    let u = call(&g, "/_palisade/usage", &key).await.json();
    assert_eq!(u["daily"]["used"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_overspend_request_or_spend_quotas() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            r#"
[[quotas]]
name = "budget"
key = ["api_key"]
spend_per_day_usd = 1.00

[[quotas]]
name = "acct-daily"
key = ["account"]
routes = ["items"]
requests_per_day = 7
{KEY_ROUTES}"#
        ),
    )));
    // Spend: each call costs what the upstream reports ($0.10), held while in flight.
    let (_, spender) = create_key(&g, json!({ "name": "spender" })).await;
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let c = c.clone();
        let url = g.url("/spend?usd=0.10&ms=200");
        let auth = bearer(&spender);
        tasks.push(tokio::spawn(async move {
            send_with(&c, "GET", &url, &[("authorization", &auth)], "")
                .await
                .status
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 10, "$1.00 at $0.10 a request");
    let r = call(&g, "/spend?usd=0.10", &spender).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (429, json!("daily_usd_limit_exceeded"))
    );
    let u = call(&g, "/_palisade/usage", &spender).await.json();
    let used = u["spend"]["used"].as_f64().unwrap();
    assert!((used - 1.0).abs() < 1e-9, "spent {used}");

    // Reported costs settle what was held: cheaper calls leave budget for more.
    let (_, cheap) = create_key(&g, json!({ "name": "cheap" })).await;
    for _ in 0..20 {
        assert_eq!(call(&g, "/spend?usd=0.01", &cheap).await.status, 200);
    }
    let u = call(&g, "/_palisade/usage", &cheap).await.json();
    assert!(
        (u["spend"]["used"].as_f64().unwrap() - 0.20).abs() < 1e-9,
        "{u}"
    );

    // Requests: an account's daily budget across two keys, under 100 concurrent requests.
    let (_, a) = create_key(&g, json!({ "account": "acme", "scopes": ["items:read"] })).await;
    let (_, b) = create_key(&g, json!({ "account": "acme", "scopes": ["items:read"] })).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = c.clone();
        let url = g.url("/items/1");
        let auth = bearer(if i % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            send_with(&c, "GET", &url, &[("authorization", &auth)], "")
                .await
                .status
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_key_guessing_blocks_the_source() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!("[keys]\nmax_failures = \"5/1m\"\n{KEY_ROUTES}"),
    )));
    let (_, key) = create_key(&g, json!({ "scopes": ["items:read"] })).await;
    let mut codes = Vec::new();
    for i in 0..7 {
        let guess = format!("pal_aaaaaaaaaaa{i}_{}", "B".repeat(32));
        let r = call(&g, "/items/1", &guess).await;
        codes.push((
            r.status.as_u16(),
            r.json()["error"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        codes[..4].iter().filter(|c| c.0 == 401).count(),
        4,
        "{codes:?}"
    );
    assert_eq!(codes[6], (403, "forbidden".to_owned()), "{codes:?}");
    // Blocked means blocked: a valid key from the same source is refused too.
    assert_eq!(call(&g, "/items/1", &key).await.status, 403);
    g.wait_decision(|d| d["rule"] == "auth/guessing");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_revocations_survive_kill_9() {
    let up = upstream().await;
    let cfg = config_for(
        &up,
        &format!(
            "[[quotas]]\nname = \"daily\"\nkey = [\"api_key\"]\nrequests_per_day = 5\n{KEY_ROUTES}"
        ),
    );
    let g = Gateway::start(Some(&cfg));
    let (_, kept) = create_key(&g, json!({ "scopes": ["items:read"] })).await;
    let (gone_id, gone) = create_key(&g, json!({ "scopes": ["items:read"] })).await;
    assert_eq!(
        admin_post(&g, &format!("/v1/keys/{gone_id}/revoke"))
            .await
            .status,
        200
    );
    for _ in 0..3 {
        assert_eq!(call(&g, "/items/1", &kept).await.status, 200);
    }
    // Usage is flushed every second; keys are durable when the admin call returns.
    std::thread::sleep(Duration::from_millis(1_500));
    let dir = g.kill9();
    let g = Gateway::start_in(dir, Some(&cfg), &[], &[]);
    assert_eq!(call(&g, "/items/1", &kept).await.status, 200);
    assert_eq!(
        call(&g, "/items/1", &gone).await.json()["error"],
        "revoked_api_key"
    );
    // 3 before the crash + 1 now: one left of 5.
    assert_eq!(call(&g, "/items/1", &kept).await.status, 200);
    assert_eq!(call(&g, "/items/1", &kept).await.status, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_requests_verify_and_refuse_replays() {
    use palisade_keys::signature::{body_digest, sign, string_to_sign};
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, KEY_ROUTES)));
    let r = admin_json(
        &g,
        "POST",
        "/v1/keys",
        json!({ "scopes": ["items:read"], "signed": true }),
    )
    .await;
    assert_eq!(r.status, 201);
    let key = r.json()["key"].as_str().unwrap().to_owned();
    let secret = r.json()["signing_secret"].as_str().unwrap().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let body = r#"{"q":"x"}"#;
    let signed = |nonce: &str, ts: &str, body: &str| {
        sign(
            &secret,
            &string_to_sign(
                "POST",
                "/items/search",
                "page=2",
                ts,
                nonce,
                &body_digest(body.as_bytes()),
            ),
        )
    };
    let post = |nonce: String, ts: String, sig: String, body: &'static str| {
        let url = g.url("/items/search?page=2");
        let key = key.clone();
        async move {
            send(
                "POST",
                &url,
                &[
                    ("authorization", &bearer(&key)),
                    ("x-palisade-timestamp", &ts),
                    ("x-palisade-nonce", &nonce),
                    ("x-palisade-signature", &sig),
                ],
                body,
            )
            .await
        }
    };
    let sig = signed("nonce-00000001", &now, body);
    let r = post("nonce-00000001".into(), now.clone(), sig.clone(), body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Replayed, tampered, unsigned, stale.
    let r = post("nonce-00000001".into(), now.clone(), sig, body).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (401, json!("invalid_signature"))
    );
    let sig = signed("nonce-00000002", &now, body);
    assert_eq!(
        post("nonce-00000002".into(), now.clone(), sig, r#"{"q":"y"}"#)
            .await
            .status,
        401
    );
    assert_eq!(
        call(&g, "/items/1", &key).await.json()["error"],
        "invalid_signature"
    );
    let stale = (now.parse::<u64>().unwrap() - 3_600).to_string();
    let sig = signed("nonce-00000003", &stale, body);
    assert_eq!(
        post("nonce-00000003".into(), stale, sig, body).await.status,
        401
    );
}
