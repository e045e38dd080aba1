//! Web Bot Auth key directories fetched over HTTPS: a listed agent without a keys file, an
//! agent discovered through its `Signature-Agent`, a directory that does not sign its keys, and
//! a directory on a private address (refused unless allowed). Requests are signed by the PyPI
//! `http-message-signatures` package; the directories are served over TLS by
//! `tests/python/wba_sign.py serve` with a certificate from a CA made here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/wba_sign.py")
}

fn http_message_signatures() -> bool {
    Command::new("python3")
        .args(["-c", "import http_message_signatures"])
        .status()
        .is_ok_and(|s| s.success())
}

/// `dirca.crt` and a server certificate it issued for localhost and 127.0.0.1 (`dir.crt/.key`).
fn make_directory_cert(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-days",
        "30",
        "-subj",
        "/CN=agent directory CA",
        "-keyout",
        "dirca.key",
        "-out",
        "dirca.crt",
    ]);
    openssl(dir, &a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-subj",
        "/CN=localhost",
        "-keyout",
        "dir.key",
        "-out",
        "dir.csr",
    ]);
    openssl(dir, &a);
    std::fs::write(
        dir.join("dir.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "dir.csr",
            "-CA",
            "dirca.crt",
            "-CAkey",
            "dirca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "dir.ext",
            "-out",
            "dir.crt",
        ],
    );
}

/// A directory server, killed on drop.
struct DirectoryServer {
    child: Child,
    port: u16,
    hits: PathBuf,
}

impl Drop for DirectoryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DirectoryServer {
    fn start(dir: &Path, signed: bool) -> Self {
        use std::io::BufRead;
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(script())
            .args(["serve", dir.to_str().unwrap(), &port.to_string()])
            .arg(dir.join("dir.crt"))
            .arg(dir.join("dir.key"));
        if !signed {
            cmd.arg("unsigned");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        DirectoryServer {
            child,
            port,
            hits: dir.join(format!("hits-{port}.log")),
        }
    }

    fn hits(&self) -> usize {
        std::fs::read_to_string(&self.hits)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// A signed GET of `url` as the agent at `agent`: the status.
fn signed_get(dir: &Path, url: &str, agent: &str) -> String {
    let out = Command::new("python3")
        .arg(script())
        .args(["send", dir.to_str().unwrap(), url])
        .env("WBA_AGENT", agent)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn fetches(g: &Gateway, result: &str) -> u64 {
    let prefix = format!("palisade_agent_directory_fetches_total{{result=\"{result}\"}}");
    metric_sum(g, &prefix).await as u64
}

async fn wait_fetches(g: &Gateway, result: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while fetches(g, result).await < n {
        assert!(
            Instant::now() < deadline,
            "no `{result}` fetch:\n{}",
            g.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const BOTS: &str =
    "[bots]\n[bots.actions]\nhttp_library = \"block\"\nai_assistant = \"allow_verified\"\n\n";

#[tokio::test(flavor = "multi_thread")]
async fn key_directories_are_fetched_cached_and_checked() {
    if !http_message_signatures() {
        println!(
            "SKIPPED: http-message-signatures (PyPI) is not installed (scripts/test.sh installs it)"
        );
        return;
    }
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!(
        "palisade-wbadir-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .args(["key", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    make_directory_cert(&dir);
    let signed = DirectoryServer::start(&dir, true);
    let unsigned = DirectoryServer::start(&dir, false);
    let listed = format!("https://localhost:{}", signed.port);
    let config = config_for(
        &up,
        &format!(
            "{BOTS}[web_bot_auth]\ndiscover = true\nallow_private_directories = true\ndirectory_ca = \"{}\"\n\n\
             [[web_bot_auth.agents]]\nname = \"listed-agent\"\nagent = \"{listed}\"\n",
            dir.join("dirca.crt").display()
        ),
    );
    let g = Gateway::start_with(Some(&config), &[], &[]);
    // The listed agent's directory is fetched at start, before its first request.
    wait_fetches(&g, "ok", 1).await;
    assert_eq!(signed.hits(), 1);
    let url = g.url("/signed");
    assert_eq!(signed_get(&dir, &url, &listed), "200");
    let d = g.wait_decision(|d| d["path"] == "/signed" && d["action"] == "allow");
    assert_eq!(d["identity"]["agent"], "listed-agent", "{d}");
    // Cached: more signed requests fetch nothing more.
    assert_eq!(signed_get(&dir, &url, &listed), "200");
    assert_eq!(signed.hits(), 1);

    // An agent nobody listed, discovered through its Signature-Agent: the first request is
    // judged unsigned (the library is refused) while the directory is fetched; then verified.
    let discovered = format!("https://127.0.0.1:{}", signed.port);
    let first = g.url("/discovered-first");
    assert_eq!(signed_get(&dir, &first, &discovered), "403");
    wait_fetches(&g, "ok", 2).await;
    let next = g.url("/discovered");
    assert_eq!(signed_get(&dir, &next, &discovered), "200");
    let d = g.wait_decision(|d| d["path"] == "/discovered" && d["action"] == "allow");
    assert_eq!(d["identity"]["agent"], "127.0.0.1", "{d}");

    // A directory whose response is not signed gives no key (require_signed_directory).
    let bare = format!("https://localhost:{}", unsigned.port);
    assert_eq!(signed_get(&dir, &g.url("/unsigned-dir"), &bare), "403");
    wait_fetches(&g, "directory_unsigned", 1).await;
    assert_eq!(signed_get(&dir, &g.url("/unsigned-dir"), &bare), "403");
    // A failed directory is not hammered: one fetch per retry period.
    assert_eq!(unsigned.hits(), 1);
    // An http:// agent is never fetched.
    assert_eq!(
        signed_get(
            &dir,
            &g.url("/plain-agent"),
            &format!("http://localhost:{}", signed.port)
        ),
        "403"
    );
    assert_eq!(signed.hits(), 2);

    // Without allow_private_directories, a directory on loopback is refused before any
    // connection.
    let strict = config_for(
        &up,
        &format!(
            "{BOTS}[web_bot_auth]\ndiscover = true\ndirectory_ca = \"{}\"\n",
            dir.join("dirca.crt").display()
        ),
    );
    let g2 = Gateway::start_with(Some(&strict), &[], &[]);
    assert_eq!(signed_get(&dir, &g2.url("/private"), &listed), "403");
    wait_fetches(&g2, "private_address", 1).await;
    assert_eq!(signed_get(&dir, &g2.url("/private"), &listed), "403");
    assert_eq!(signed.hits(), 2, "no connection to a private address");
}
