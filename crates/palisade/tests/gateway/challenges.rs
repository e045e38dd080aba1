//! Challenges that work: API clients get a machine-readable proof-of-work and pay it with the
//! reference solver (`palisade solve`) or the documented Python client; browsers get a page a
//! real Chromium (puppeteer-core) solves, or waits out with JavaScript off; clearances are bound
//! to the client and the policy, never replayed, never looped.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// Everything under /protected is challenged; a second rule blocks past a high score.
fn policy(up: &Upstream, extra: &str) -> String {
    policy_bits(up, 12, extra)
}

fn policy_bits(up: &Upstream, bits: u8, extra: &str) -> String {
    config_for(
        up,
        &format!(
            "[[rules]]\nname = \"protect\"\nwhen = 'path.startsWith(\"/protected\")'\naction = \"challenge\"\n\n\
             [challenge]\ndifficulty = {bits}\nnojs_wait = \"2s\"\n{extra}\n"
        ),
    )
}

fn solve(www: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["solve", www])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn api_clients_pay_a_proof_of_work_and_keep_their_clearance() {
    let up = upstream().await;
    let g = Gateway::start(Some(&policy(&up, "")));
    let url = g.url("/protected/items");
    let json = [
        ("accept", "application/json"),
        ("user-agent", "sync-job/1.0"),
    ];
    // A program never gets a page: 401, a PoW challenge, a problem document.
    let r = send("GET", &url, &json, "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), "application/problem+json");
    let www = r.header("www-authenticate").to_owned();
    assert!(
        www.starts_with("PoW realm=\"palisade\", challenge=\""),
        "{www}"
    );
    assert!(
        www.contains("algorithm=\"sha-256\", difficulty=12"),
        "{www}"
    );
    let body = r.json();
    assert_eq!(body["challenge"]["difficulty"], 12);
    assert_eq!(body["challenge"]["header"], "Palisade-PoW");
    assert!(!String::from_utf8_lossy(&r.body).contains("<html"));
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // Solved by the reference solver: the retry goes through and earns a clearance.
    let answer = solve(&www);
    let mut with_answer = json.to_vec();
    with_answer.push(("palisade-pow", &answer));
    let r = send("GET", &url, &with_answer, "").await;
    assert_eq!(r.status, 200);
    let clearance = r.header("palisade-clearance").to_owned();
    assert!(clearance.len() > 40, "{:?}", r.header("palisade-clearance"));
    let d = g.wait_decision(|d| d["path"] == "/protected/items" && d["status"] == 200);
    assert_eq!(d["rule"], "challenge/cleared", "{d}");
    assert_eq!(d["identity"]["clearance"], "pow", "{d}");

    // The clearance lets later requests through without a new challenge.
    let mut cleared = json.to_vec();
    cleared.push(("palisade-clearance", &clearance));
    for _ in 0..3 {
        assert_eq!(send("GET", &url, &cleared, "").await.status, 200);
    }
    // The same answer again: one solution, one clearance.
    let r = send("GET", &url, &with_answer, "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("palisade-clearance"), "");
    // Bound to the client: another user agent with the same token is challenged.
    let other = [
        ("accept", "application/json"),
        ("user-agent", "someone-else/2.0"),
        ("palisade-clearance", clearance.as_str()),
    ];
    assert_eq!(send("GET", &url, &other, "").await.status, 401);
    // Forged or truncated: challenged.
    let forged = format!("{}x", &clearance[..clearance.len() - 1]);
    let bad = [
        ("accept", "application/json"),
        ("user-agent", "sync-job/1.0"),
        ("palisade-clearance", forged.as_str()),
    ];
    assert_eq!(send("GET", &url, &bad, "").await.status, 401);
    // A wrong counter fails.
    let (token, _) = answer.rsplit_once(':').unwrap();
    let wrong = format!("{token}:notanumber");
    let mut wrong_answer = json.to_vec();
    wrong_answer.push(("palisade-pow", &wrong));
    assert_eq!(send("GET", &url, &wrong_answer, "").await.status, 401);

    assert!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"pow\",route=\"default\",result=\"issued\"}"
        )
        .await
            >= 4.0
    );
    assert_eq!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"pow\",route=\"default\",result=\"solved\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"pow\",route=\"default\",result=\"replayed\"}"
        )
        .await,
        1.0
    );
    assert!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"pow\",route=\"default\",result=\"failed\"}"
        )
        .await
            >= 1.0
    );

    // A policy change challenges again (the clearance names the policy that issued it).
    let changed = policy(&up, "discount = 25\n");
    std::fs::write(g.config_path(), changed).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = send("GET", &url, &cleared, "").await.status;
        if s == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still cleared after a policy change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_python_client_pays_and_reuses_its_clearance() {
    let up = upstream().await;
    let g = Gateway::start(Some(&policy(&up, "")));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pow_client.py");
    let url = g.url("/protected/export");
    let out = Command::new("python3")
        .args([script, &url, &url, &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["200", "200", "200"],
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"pow\",route=\"default\",result=\"issued\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_for_programs_never_get_a_page_and_browsers_without_javascript_wait() {
    let up = upstream().await;
    let config = format!(
        "{}\n[[routes]]\nname = \"api\"\nclient = \"api\"\nmatch = {{ path = \"/protected/api/*\" }}\n",
        policy(
            &up,
            "[challenge.locales.de]\ntitle = \"Wir prüfen Ihren Browser\"\n"
        )
    );
    let g = Gateway::start(Some(&config));
    let html = [
        ("accept", "text/html,application/xhtml+xml"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
    ];
    // An API route: a program's answer even to a browser's Accept.
    let r = send("GET", &g.url("/protected/api/x"), &html, "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), "application/problem+json");
    // Elsewhere a browser gets the page (no third-party anything, a CSP with a nonce).
    let r = send("GET", &g.url("/protected/page?q=1"), &html, "").await;
    assert_eq!(r.status, 403);
    assert!(r.header("content-type").starts_with("text/html"));
    assert_eq!(r.header("cache-control"), "no-store");
    assert!(
        r.header("content-security-policy")
            .contains("script-src 'nonce-")
    );
    let page = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "self-contained"
    );
    assert!(page.contains("<html lang=\"en\">") && page.contains("Checking your browser"));
    // In the browser's language, when the config has it.
    let mut german = html.to_vec();
    german.push(("accept-language", "de-DE,de;q=0.9,en;q=0.5"));
    let de = send("GET", &g.url("/protected/page"), &german, "").await;
    let de = String::from_utf8_lossy(&de.body).into_owned();
    assert!(
        de.contains("<html lang=\"de\">") && de.contains("Wir prüfen Ihren Browser"),
        "{de}"
    );
    // Without JavaScript: the timed refresh. Too early: back to the challenge.
    let wait = page
        .split("url=")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    assert!(wait.starts_with("/.palisade/challenge/wait?t="), "{wait}");
    let early = raw_request(
        g.proxy,
        "GET",
        &wait,
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n",
    )
    .await;
    assert_eq!(early.status, 303);
    assert!(
        early.head.contains("location: /protected/page?q=1"),
        "{}",
        early.head
    );
    assert!(!early.head.contains("set-cookie"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let done = raw_request(
        g.proxy,
        "GET",
        &wait,
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n",
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.head);
    let cookie = done
        .head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let mut with_cookie = html.to_vec();
    with_cookie.push(("cookie", &pair));
    let r = send("GET", &g.url("/protected/page?q=1"), &with_cookie, "").await;
    assert_eq!(r.status, 200);
    let d = g.wait_decision(|d| d["path"] == "/protected/page" && d["status"] == 200);
    assert_eq!(d["identity"]["clearance"], "wait", "{d}");
    // The link works once.
    let again = raw_request(
        g.proxy,
        "GET",
        &wait,
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n",
    )
    .await;
    assert!(!again.head.contains("set-cookie"), "{}", again.head);
    // A link that is not ours: 400, nothing set.
    let junk = raw_request(g.proxy, "GET", "/.palisade/challenge/verify?t=junk&n=1", "").await;
    assert_eq!(junk.status, 400);
    // A POST that was challenged: its page says the form was not sent.
    let r = send("POST", &g.url("/protected/form"), &html, "a=1").await;
    assert!(String::from_utf8_lossy(&r.body).contains("Your form was not sent"));
}

/// Runs the browser driver; `None` when chromium or the node peers are missing.
fn browser(url: &str, shot: &std::path::Path, mode: &str) -> Option<serde_json::Value> {
    let dir = node_peers()?;
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        return None;
    }
    let out = Command::new("node")
        .arg(dir.join("browser.js"))
        .args([url, shot.to_str().unwrap(), mode])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "browser.js: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Some(v)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_passes_and_headless_automation_is_flagged() {
    let up = upstream().await;
    let g = Gateway::start(Some(&policy_bits(&up, 16, "")));
    let shots = g.dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // Puppeteer's defaults: solves the page, reaches the API, but is flagged as automation.
    let Some(v) = browser(
        &g.url("/protected/default"),
        &shots.join("default.png"),
        "default",
    ) else {
        println!("SKIPPED: chromium or puppeteer-core missing (scripts/test.sh installs them)");
        return;
    };
    assert_eq!(v["title"], "Checking your browser", "{v}");
    assert!(
        v["url"].as_str().unwrap().ends_with("/protected/default"),
        "{v}"
    );
    assert!(
        v["body"]
            .as_str()
            .unwrap()
            .contains("ok /protected/default"),
        "{v}"
    );
    assert!(
        v["cookies"].to_string().contains("__palisade_clearance"),
        "{v}"
    );
    let d = g.wait_decision(|d| d["path"] == "/protected/default" && d["status"] == 200);
    let reasons = d["reasons"].to_string();
    assert!(reasons.contains("browser/webdriver"), "{d}");
    assert!(reasons.contains("browser/headless"), "{d}");
    println!("screenshot: {}", shots.join("default.png").display());

    // The same browser with a profile, a desktop user agent and pointer events: not flagged.
    let v = browser(
        &g.url("/protected/person"),
        &shots.join("person.png"),
        "profile",
    )
    .unwrap();
    assert!(
        v["body"].as_str().unwrap().contains("ok /protected/person"),
        "{v}"
    );
    let d = g.wait_decision(|d| d["path"] == "/protected/person" && d["status"] == 200);
    assert!(!d["reasons"].to_string().contains("browser/"), "{d}");

    // JavaScript off: the refresh path gets through after its wait.
    let v = browser(&g.url("/protected/nojs"), &shots.join("nojs.png"), "nojs").unwrap();
    assert!(
        v["body"].as_str().unwrap().contains("ok /protected/nojs"),
        "{v}"
    );
    let d = g.wait_decision(|d| d["path"] == "/protected/nojs" && d["status"] == 200);
    assert_eq!(d["identity"]["clearance"], "wait", "{d}");
    println!("screenshots: {}", shots.display());
    assert!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"page\",route=\"default\",result=\"solved\"}"
        )
        .await
            >= 2.0
    );
    assert!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"wait\",route=\"default\",result=\"solved\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_altcha_widget_is_served_and_solved_in_a_real_browser() {
    let Some(peers) = node_peers() else {
        println!("SKIPPED: node peers missing (scripts/test.sh installs them)");
        return;
    };
    let widget = peers.join("node_modules/altcha/dist/altcha.umd.cjs");
    if !widget.exists() {
        println!("SKIPPED: npm altcha missing (scripts/test.sh installs it)");
        return;
    }
    let up = upstream().await;
    let g = Gateway::start(Some(&policy_bits(
        &up,
        14,
        &format!(
            "kind = \"altcha\"\naltcha_widget = \"{}\"\n",
            widget.display()
        ),
    )));
    // The page loads the widget from the gateway, never from elsewhere.
    let html = [("accept", "text/html")];
    let r = send("GET", &g.url("/protected/a"), &html, "").await;
    assert_eq!(r.status, 403);
    let page = String::from_utf8_lossy(&r.body).into_owned();
    assert!(page.contains("<altcha-widget challengejson="), "{page}");
    assert!(page.contains("src=\"/.palisade/challenge/altcha.js\""));
    let js = get(&g.url("/.palisade/challenge/altcha.js")).await;
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").starts_with("text/javascript"));
    assert_eq!(
        js.body.len() as u64,
        std::fs::metadata(&widget).unwrap().len()
    );
    // A forged answer is refused.
    let token = page
        .split("id=\"t\">\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let forged = raw_request(
        g.proxy,
        "GET",
        &format!("/.palisade/challenge/altcha?t={token}&altcha=eyJhbGdvcml0aG0iOiJTSEEtMjU2In0="),
        "",
    )
    .await;
    assert_eq!(forged.status, 303);
    assert!(!forged.head.contains("set-cookie"));
    // The real widget in Chromium solves it and reaches the API.
    let shots = g.dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let Some(v) = browser(
        &g.url("/protected/altcha"),
        &shots.join("altcha.png"),
        "profile",
    ) else {
        println!("SKIPPED: chromium missing (scripts/test.sh installs it)");
        return;
    };
    assert!(
        v["body"].as_str().unwrap().contains("ok /protected/altcha"),
        "{v}"
    );
    let d = g.wait_decision(|d| d["path"] == "/protected/altcha" && d["status"] == 200);
    assert_eq!(d["identity"]["clearance"], "altcha", "{d}");
    println!("screenshot: {}", shots.join("altcha.png").display());
    assert_eq!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"altcha\",route=\"default\",result=\"solved\"}"
        )
        .await,
        1.0
    );
}

/// A local siteverify (tests/python/siteverify.py); its port and the log of forms it got.
struct SiteVerify {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for SiteVerify {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn siteverify(dir: &std::path::Path) -> SiteVerify {
    use std::io::BufRead;
    let log = dir.join("siteverify.log");
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/siteverify.py"
        ))
        .arg("s3cret")
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    SiteVerify {
        child,
        port: line.trim().parse().unwrap(),
        log,
    }
}

/// The puzzle token in a CAPTCHA page.
fn captcha_token(page: &str) -> String {
    page.split("var cfg={\"action\":")
        .nth(1)
        .and_then(|s| s.split("\"t\":\"").nth(1))
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("{page}"))
        .to_owned()
}

async fn captcha_answer(g: &Gateway, path: &str, response: &str) -> RawResp {
    let html = [("accept", "text/html")];
    let r = send("GET", &g.url(path), &html, "").await;
    assert_eq!(r.status, 403);
    let token = captcha_token(&String::from_utf8_lossy(&r.body));
    raw_request(
        g.proxy,
        "GET",
        &format!("/.palisade/challenge/captcha?t={token}&r={response}"),
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn hosted_captchas_are_checked_with_their_siteverify_and_scores_per_route() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!(
        "palisade-captcha-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sv = siteverify(&dir);
    let config = |provider: &str, on_error: &str, port: u16| {
        format!(
            "{}\n[challenge.captcha]\nprovider = \"{provider}\"\nsite_key = \"site-key-1\"\nsecret = \"s3cret\"\n\
             verify_url = \"http://127.0.0.1:{port}/siteverify\"\ntimeout = \"1s\"\non_error = \"{on_error}\"\nmin_score = 0.5\n\n\
             [[routes]]\nname = \"pay\"\nchallenge = \"captcha\"\ncaptcha_min_score = 0.8\nmatch = {{ path = \"/protected/pay\" }}\n\n\
             [[routes]]\nname = \"newsletter\"\nchallenge = \"captcha\"\ncaptcha_min_score = 0.3\nmatch = {{ path = \"/protected/newsletter\" }}\n",
            policy(&up, "")
        )
    };
    let g = Gateway::start(Some(&config("recaptcha", "deny", sv.port)));
    // The page carries the provider's widget with the site key (its script is the provider's).
    let r = send(
        "GET",
        &g.url("/protected/pay"),
        &[("accept", "text/html")],
        "",
    )
    .await;
    let page = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        page.contains("https://www.google.com/recaptcha/api.js?render=site-key-1"),
        "{page}"
    );
    assert!(
        r.header("content-security-policy")
            .contains("https://www.google.com")
    );
    // Per-route thresholds: 0.5 passes the newsletter (0.3), not payments (0.8).
    let set_cookie = |r: &RawResp| r.head.contains("set-cookie: __palisade_clearance=");
    assert!(!set_cookie(
        &captcha_answer(&g, "/protected/pay", "pass-0.5").await
    ));
    assert!(set_cookie(
        &captcha_answer(&g, "/protected/newsletter", "pass-0.5").await
    ));
    assert!(set_cookie(
        &captcha_answer(&g, "/protected/pay", "pass-0.9").await
    ));
    // Invalid, expired, the wrong action: refused.
    for bad in ["nonsense", "expired", "wrong-action"] {
        assert!(
            !set_cookie(&captcha_answer(&g, "/protected/newsletter", bad).await),
            "{bad}"
        );
    }
    // What siteverify got: the secret, the widget's token and the client's address.
    let log = std::fs::read_to_string(&sv.log).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["secret"], "s3cret");
    assert_eq!(first["response"], "pass-0.5");
    assert_eq!(first["remoteip"], "127.0.0.1");
    assert!(
        metric_sum(
            &g,
            "palisade_challenges_total{kind=\"captcha\",route=\"pay\",result=\"solved\"}"
        )
        .await
            >= 1.0
    );

    // siteverify away: fail closed by default, open when chosen.
    let closed = Gateway::start(Some(&config("turnstile", "deny", 9)));
    assert!(!set_cookie(
        &captcha_answer(&closed, "/protected/newsletter", "pass-0.9").await
    ));
    assert_eq!(
        metric_sum(
            &closed,
            "palisade_challenges_total{kind=\"captcha\",route=\"newsletter\",result=\"error\"}"
        )
        .await,
        1.0
    );
    let open = Gateway::start(Some(&config("hcaptcha", "allow", 9)));
    let r = send(
        "GET",
        &open.url("/protected/newsletter"),
        &[("accept", "text/html")],
        "",
    )
    .await;
    assert!(
        String::from_utf8_lossy(&r.body)
            .contains("class=\"h-captcha\" data-sitekey=\"site-key-1\"")
    );
    assert!(set_cookie(
        &captcha_answer(&open, "/protected/newsletter", "pass-0.9").await
    ));
    assert_eq!(metric_sum(&open, "palisade_challenges_total{kind=\"captcha\",route=\"newsletter\",result=\"error_allowed\"}").await, 1.0);
    // Too slow counts as away.
    let slow = captcha_answer(&g, "/protected/newsletter", "slow").await;
    assert!(!set_cookie(&slow));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_burst_is_challenged_and_a_client_that_never_solves_is_blocked() {
    let up = upstream().await;
    let config = config_for(
        &up,
        "[behaviour]\n\n[scoring]\nthrottle = [\"1s\"]\nthrottle_block_for = \"1m\"\n\n\
         [[limits]]\nname = \"burst\"\nkey = [\"ip\"]\nrate = \"2/1m\"\naction = \"challenge\"\n\n\
         [challenge]\ndifficulty = 10\n",
    );
    let g = Gateway::start(Some(&config));
    let url = g.url("/export");
    let h = [
        ("accept", "application/json"),
        ("user-agent", "nightly-export/3"),
    ];
    assert_eq!(send("GET", &url, &h, "").await.status, 200);
    assert_eq!(send("GET", &url, &h, "").await.status, 200);
    // The burst is spent: a challenge, not a 429.
    let r = send("GET", &url, &h, "").await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let answer = solve(r.header("www-authenticate"));
    let mut paid = h.to_vec();
    paid.push(("palisade-pow", &answer));
    let r = send("GET", &url, &paid, "").await;
    assert_eq!(r.status, 200);
    let clearance = r.header("palisade-clearance").to_owned();
    // Cleared: it goes on past the limit while the clearance lasts.
    let mut cleared = h.to_vec();
    cleared.push(("palisade-clearance", &clearance));
    for _ in 0..3 {
        assert_eq!(send("GET", &url, &cleared, "").await.status, 200);
    }
    // Another client that never solves: challenged, then (a throttle step later) blocked.
    let other = [
        ("accept", "application/json"),
        ("user-agent", "scraper/1"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    let from = "127.0.0.2".parse().unwrap();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let mut s = connect_from(from, g.proxy).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(format!("GET /export HTTP/1.1\r\nhost: t\r\naccept: application/json\r\nuser-agent: {}\r\nconnection: close\r\n\r\n", other[1].1).as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        statuses.push(text.split(' ').nth(1).unwrap_or("").to_owned());
        if i == 2 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    assert_eq!(&statuses[..2], ["200", "200"], "{statuses:?}");
    assert_eq!(statuses[2], "401", "{statuses:?}");
    assert!(statuses[3..].iter().any(|s| s == "403"), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clearance_from_one_replica_is_accepted_by_another_and_tabs_do_not_collide() {
    let up = upstream().await;
    let redis = Redis::start();
    let config = policy(
        &up,
        &format!(
            "\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ),
    );
    let a = Gateway::start(Some(&config));
    let b = Gateway::start(Some(&config));
    let h = [("accept", "application/json"), ("user-agent", "sync/1")];
    let pay = |path: &'static str, gw: &Gateway| {
        let url = gw.url(path);
        async move {
            let r = send("GET", &url, &h, "").await;
            let s = solve(r.header("www-authenticate"));
            let mut paid = h.to_vec();
            paid.push(("palisade-pow", &s));
            let r = send("GET", &url, &paid, "").await;
            (r.status, r.header("palisade-clearance").to_owned())
        }
    };
    // A clearance from replica A is accepted by replica B (they adopt one key through the
    // store; give them a moment to join).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, clearance) = pay("/protected/1", &a).await;
        assert_eq!(status, 200);
        let mut cleared = h.to_vec();
        cleared.push(("palisade-clearance", &clearance));
        if send("GET", &b.url("/protected/x"), &cleared, "")
            .await
            .status
            == 200
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica B never accepted A's clearance"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two tabs: two puzzles in flight at once, each answered on its own, neither undoing the
    // other.
    let t1 = send("GET", &a.url("/protected/tab1"), &h, "").await;
    let t2 = send("GET", &b.url("/protected/tab2"), &h, "").await;
    let (s1, s2) = (
        solve(t1.header("www-authenticate")),
        solve(t2.header("www-authenticate")),
    );
    let mut p2 = h.to_vec();
    p2.push(("palisade-pow", &s2));
    let r2 = send("GET", &b.url("/protected/tab2"), &p2, "").await;
    let mut p1 = h.to_vec();
    p1.push(("palisade-pow", &s1));
    let r1 = send("GET", &a.url("/protected/tab1"), &p1, "").await;
    assert_eq!((r1.status.as_u16(), r2.status.as_u16()), (200, 200));
    let (c1, c2) = (
        r1.header("palisade-clearance"),
        r2.header("palisade-clearance"),
    );
    assert!(!c1.is_empty() && !c2.is_empty());
    for c in [c1, c2] {
        let mut cleared = h.to_vec();
        cleared.push(("palisade-clearance", c));
        assert_eq!(
            send("GET", &a.url("/protected/y"), &cleared, "")
                .await
                .status,
            200
        );
        assert_eq!(
            send("GET", &b.url("/protected/y"), &cleared, "")
                .await
                .status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_time_zone_far_from_its_network_is_a_signal() {
    if !std::path::Path::new("/usr/share/zoneinfo/zone1970.tab").exists() {
        println!("SKIPPED: tzdata's zone1970.tab is not installed");
        return;
    }
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("palisade-tz-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ip2asn.tsv"),
        "81.2.69.0\t81.2.69.255\t20712\tGB\tANDREWS-ARNOLD\n",
    )
    .unwrap();
    let config = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[intel]\nasn_db = \"{}/ip2asn.tsv\"\n\n{}",
        dir.display(),
        policy(&up, "")
    );
    let g = Gateway::start(Some(&config));
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    // Solves the page's puzzle as its worker would, reporting `tz`; then a request with the
    // clearance: its reasons.
    let run = |tz: &'static str, path: &'static str| {
        let g = &g;
        async move {
            let h = [
                ("accept", "text/html"),
                ("user-agent", ua),
                ("x-forwarded-for", "81.2.69.10"),
            ];
            let r = send("GET", &g.url(path), &h, "").await;
            let page = String::from_utf8_lossy(&r.body).into_owned();
            let cfg: serde_json::Value = serde_json::from_str(
                page.split("id=\"cfg\">")
                    .nth(1)
                    .and_then(|s| s.split("</script>").next())
                    .unwrap(),
            )
            .unwrap();
            let token = cfg["t"].as_str().unwrap().to_owned();
            let bits = cfg["bits"].as_u64().unwrap().to_string();
            let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
                .args(["solve", "--difficulty", &bits, &token])
                .output()
                .unwrap();
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let n = answer.rsplit_once(':').unwrap().1.to_owned();
            let report = format!("{{\"wd\":0,\"hl\":0,\"lg\":2,\"ev\":4,\"tz\":\"{tz}\"}}");
            let target = format!(
                "/.palisade/challenge/verify?t={token}&n={n}&s={}",
                report
                    .bytes()
                    .map(|b| if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    })
                    .collect::<String>()
            );
            let v = raw_request(
                g.proxy,
                "GET",
                &target,
                &format!("user-agent: {ua}\r\nx-forwarded-for: 81.2.69.10\r\n"),
            )
            .await;
            assert_eq!(v.status, 303, "{}", v.head);
            let cookie = v
                .head
                .lines()
                .find_map(|l| l.strip_prefix("set-cookie: "))
                .unwrap();
            let pair = cookie.split(';').next().unwrap().to_owned();
            let mut with = h.to_vec();
            with.push(("cookie", &pair));
            assert_eq!(send("GET", &g.url(path), &with, "").await.status, 200);
            g.wait_decision(|d| d["path"] == path && d["status"] == 200)["reasons"].to_string()
        }
    };
    assert!(
        run("Asia/Tokyo", "/protected/tokyo")
            .await
            .contains("browser/tz_mismatch")
    );
    assert!(
        !run("Europe/London", "/protected/london")
            .await
            .contains("browser/tz_mismatch")
    );
    // A zone nobody knows is no evidence.
    assert!(
        !run("Mars/Olympus_Mons", "/protected/mars")
            .await
            .contains("browser/tz_mismatch")
    );
}
