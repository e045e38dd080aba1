//! `palisade keys …`: the API key lifecycle from the command line, either offline on a data dir
//! (a stopped gateway's, or a new one) or through a running gateway's admin API. Tables for
//! people, `--json` for scripts. `create` and `rotate` print the raw key once.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_config::KeySettings;
use palisade_keys::{AuditEntry, CreatedKey, KeyStore, KeyUpdate, KeyView, NewKey};
use serde_json::{Value, json};

/// Where the keys live.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// A running gateway's admin API, e.g. http://127.0.0.1:9901 (token from
    /// PALISADE_ADMIN_TOKEN, or the data dir's admin.token).
    #[arg(long, env = "PALISADE_ADMIN_URL", global = true)]
    admin: Option<String>,
    /// The data dir to work on offline (the gateway using it must be stopped).
    #[arg(long, env = "PALISADE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Config whose [keys] settings apply offline (max keys per account, rotation grace).
    #[arg(long, short, env = "PALISADE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

/// `palisade keys`.
#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key and print it (once).
    Create(CreateArgs),
    /// List keys.
    List {
        /// Only this account's keys.
        #[arg(long)]
        account: Option<String>,
        /// Only keys with this status: active, revoked or expired.
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one key (id or pal_ prefix).
    Show {
        /// Key id.
        id: String,
    },
    /// Change a key's name, scopes, expiry, rate or budgets.
    Update(UpdateArgs),
    /// Revoke a key; it is refused from the next request on.
    Revoke {
        /// Key id.
        id: String,
    },
    /// Issue a successor; the old key keeps working for the rotation grace period.
    Rotate {
        /// Key id.
        id: String,
    },
    /// Show the audit log of key changes.
    Audit {
        /// Most entries shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// A name people recognise.
    #[arg(long, default_value = "")]
    name: String,
    /// The account the key belongs to.
    #[arg(long)]
    account: Option<String>,
    /// Scopes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Lifetime, e.g. 90d.
    #[arg(long)]
    expires_in: Option<String>,
    /// The key's own rate limit, e.g. 100/1m.
    #[arg(long)]
    rate: Option<String>,
    /// Burst for --rate.
    #[arg(long)]
    burst: Option<u64>,
    /// Requests per UTC day.
    #[arg(long)]
    daily_requests: Option<u64>,
    /// Dollars per UTC day.
    #[arg(long)]
    daily_spend: Option<f64>,
    /// Require signed requests (prints the signing secret once).
    #[arg(long)]
    signed: bool,
}

#[derive(Args, Debug)]
struct UpdateArgs {
    /// Key id.
    id: String,
    /// New name.
    #[arg(long)]
    name: Option<String>,
    /// New scopes, comma-separated (replacing the old ones).
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// New lifetime from now, e.g. 30d, or `never`.
    #[arg(long)]
    expires_in: Option<String>,
    /// New rate, e.g. 100/1m, or `none`.
    #[arg(long)]
    rate: Option<String>,
    /// New burst.
    #[arg(long)]
    burst: Option<u64>,
    /// New requests per UTC day (0 removes the budget).
    #[arg(long)]
    daily_requests: Option<u64>,
    /// New dollars per UTC day (0 removes the budget).
    #[arg(long)]
    daily_spend: Option<f64>,
}

enum Backend {
    Offline {
        store: KeyStore,
        settings: KeySettings,
    },
    Admin(AdminClient),
}

struct AdminClient {
    base: String,
    token: String,
    rt: tokio::runtime::Runtime,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let uri: Uri = format!("{}{path}", self.base.trim_end_matches('/'))
            .parse()
            .with_context(|| format!("`{}` is not a valid admin URL", self.base))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let (status, bytes) = self.rt.block_on(async {
            let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
                .await
                .map_err(|_| anyhow!("the admin API at {} did not answer in 30 s", self.base))?
                .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        })?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let mut msg = format!(
            "{} ({status})",
            field(&v, "message")
                .as_str()
                .unwrap_or("the admin API refused the request")
        );
        if let Some(list) = field(&v, "errors").as_array() {
            for e in list {
                msg.push_str("\n  - ");
                msg.push_str(e.as_str().unwrap_or(&e.to_string()));
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            msg.push_str("\n  set PALISADE_ADMIN_TOKEN to the gateway's admin token");
        }
        bail!(msg)
    }
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.get(name).unwrap_or(&Value::Null)
}

fn take(mut v: Value, name: &str) -> Value {
    v.get_mut(name).map(Value::take).unwrap_or_default()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn backend(t: &Target) -> anyhow::Result<Backend> {
    let data_dir = t
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./palisade-data"));
    if let Some(base) = &t.admin {
        let token = match std::env::var("PALISADE_ADMIN_TOKEN") {
            Ok(tok) if !tok.is_empty() => tok,
            _ => std::fs::read_to_string(data_dir.join("admin.token"))
                .map(|s| s.trim().to_owned())
                .map_err(|_| {
                    anyhow!(
                        "set PALISADE_ADMIN_TOKEN (or point --data-dir at the gateway's data dir holding admin.token)"
                    )
                })?,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        return Ok(Backend::Admin(AdminClient {
            base: base.clone(),
            token,
            rt,
            client,
        }));
    }
    let settings = match &t.config {
        Some(p) => {
            palisade_config::load_file(p)
                .map_err(|e| anyhow!("{e}"))?
                .keys
        }
        None => KeySettings::default(),
    };
    let store = KeyStore::open(&data_dir)
        .with_context(|| format!("opening the key store in {}", data_dir.display()))?;
    Ok(Backend::Offline { store, settings })
}

const ACTOR: &str = "cli";

/// Runs `palisade keys …`.
pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let b = backend(t)?;
    match args.command {
        KeysCommand::Create(c) => {
            let req = NewKey {
                name: c.name,
                account: c.account,
                scopes: c.scopes.into_iter().filter(|s| !s.is_empty()).collect(),
                expires_in: c.expires_in,
                rate: c.rate,
                burst: c.burst,
                daily_requests: c.daily_requests,
                daily_spend_usd: c.daily_spend,
                signed: c.signed,
            };
            let created: CreatedKey = match &b {
                Backend::Offline { store, settings } => {
                    store.create(&req, now(), settings.max_keys_per_account, ACTOR)?
                }
                Backend::Admin(a) => serde_json::from_value(a.call(
                    Method::POST,
                    "/v1/keys",
                    Some(serde_json::to_value(&req)?),
                )?)?,
            };
            print_created(&created, t.json);
        }
        KeysCommand::List { account, status } => {
            let keys: Vec<KeyView> = match &b {
                Backend::Offline { store, .. } => {
                    let n = now();
                    store.list()?.iter().map(|r| r.view(n)).collect()
                }
                Backend::Admin(a) => {
                    serde_json::from_value(take(a.call(Method::GET, "/v1/keys", None)?, "keys"))?
                }
            };
            let keys: Vec<KeyView> = keys
                .into_iter()
                .filter(|k| {
                    account
                        .as_ref()
                        .is_none_or(|a| k.account.as_ref() == Some(a))
                })
                .filter(|k| status.as_ref().is_none_or(|s| k.status.name() == s))
                .collect();
            if t.json {
                println!("{}", json!({ "keys": keys }));
            } else {
                print_table(&keys);
            }
        }
        KeysCommand::Show { id } => {
            let id = id
                .strip_prefix(palisade_keys::key::KEY_PREFIX)
                .unwrap_or(&id)
                .to_owned();
            let v: Value = match &b {
                Backend::Offline { store, .. } => {
                    serde_json::to_value(store.get(&id)?.view(now()))?
                }
                Backend::Admin(a) => a.call(Method::GET, &format!("/v1/keys/{id}"), None)?,
            };
            print_value(&v, t.json);
        }
        KeysCommand::Update(u) => {
            let req = KeyUpdate {
                name: u.name,
                scopes: u.scopes,
                expires_in: u.expires_in,
                rate: u.rate,
                burst: u.burst,
                daily_requests: u.daily_requests,
                daily_spend_usd: u.daily_spend,
            };
            let v: Value = match &b {
                Backend::Offline { store, .. } => {
                    serde_json::to_value(store.update(&u.id, &req, now(), ACTOR)?.view(now()))?
                }
                Backend::Admin(a) => a.call(
                    Method::PATCH,
                    &format!("/v1/keys/{}", u.id),
                    Some(serde_json::to_value(&req)?),
                )?,
            };
            print_value(&v, t.json);
        }
        KeysCommand::Revoke { id } => {
            let v: Value = match &b {
                Backend::Offline { store, .. } => {
                    serde_json::to_value(store.revoke(&id, now(), ACTOR)?.view(now()))?
                }
                Backend::Admin(a) => {
                    a.call(Method::POST, &format!("/v1/keys/{id}/revoke"), None)?
                }
            };
            if t.json {
                println!("{v}");
            } else {
                println!(
                    "revoked {} ({})",
                    field(&v, "prefix").as_str().unwrap_or(&id),
                    field(&v, "name").as_str().unwrap_or("")
                );
            }
        }
        KeysCommand::Rotate { id } => {
            let created: CreatedKey = match &b {
                Backend::Offline { store, settings } => {
                    store.rotate(&id, now(), settings.rotation_grace_secs, ACTOR)?
                }
                Backend::Admin(a) => serde_json::from_value(a.call(
                    Method::POST,
                    &format!("/v1/keys/{id}/rotate"),
                    None,
                )?)?,
            };
            if !t.json {
                println!(
                    "rotated {}: the old key stays valid for the rotation grace period",
                    palisade_keys::key::prefix_of(&id)
                );
            }
            print_created(&created, t.json);
        }
        KeysCommand::Audit { limit } => {
            let entries: Vec<AuditEntry> = match &b {
                Backend::Offline { store, .. } => store.audit(limit)?,
                Backend::Admin(a) => serde_json::from_value(take(
                    a.call(Method::GET, &format!("/v1/audit?limit={limit}"), None)?,
                    "entries",
                ))?,
            };
            if t.json {
                println!("{}", json!({ "entries": entries }));
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.seq.to_string(),
                            e.time.clone(),
                            e.actor.clone(),
                            e.action.clone(),
                            palisade_keys::key::prefix_of(&e.key_id),
                        ]
                    })
                    .collect();
                table(&["SEQ", "TIME", "ACTOR", "ACTION", "KEY"], &rows);
            }
        }
    }
    Ok(())
}

fn print_created(c: &CreatedKey, json: bool) {
    if json {
        println!("{}", serde_json::to_value(c).unwrap_or_default());
        return;
    }
    println!("created {} ({})", c.prefix, c.record.name);
    println!();
    println!("  key: {}", c.key);
    if let Some(s) = &c.signing_secret {
        println!("  signing secret: {s}");
    }
    println!();
    println!("This is the only time the key is shown; store it now. Palisade keeps only a hash.");
}

fn print_value(v: &Value, json: bool) {
    if json {
        println!("{v}");
        return;
    }
    if let Some(obj) = v.as_object() {
        let width = obj.keys().map(String::len).max().unwrap_or(0);
        for (k, val) in obj {
            let shown = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:width$}  {shown}");
        }
    }
}

fn print_table(keys: &[KeyView]) {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.prefix.clone(),
                k.name.clone(),
                k.account.clone().unwrap_or_else(|| "-".to_owned()),
                k.status.name().to_owned(),
                k.scopes.join(","),
                k.expires_at.clone().unwrap_or_else(|| "never".to_owned()),
                k.last_used_at.clone().unwrap_or_else(|| "never".to_owned()),
            ]
        })
        .collect();
    table(
        &[
            "KEY",
            "NAME",
            "ACCOUNT",
            "STATUS",
            "SCOPES",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(c);
            s.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 2));
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

/// `palisade blocks`.
#[derive(Args, Debug)]
pub struct BlocksArgs {
    #[command(subcommand)]
    command: BlocksCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand, Debug)]
enum BlocksCommand {
    /// Block an identity for a while (again: for twice as long).
    Add {
        /// ip, ip/24, api_key, account or ja4h.
        dimension: String,
        /// The value, e.g. 203.0.113.7.
        value: String,
        /// How long, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Why (letters, digits, -_./), shown in the decision log as block/admin/<reason>.
        #[arg(long)]
        reason: Option<String>,
        /// Add a signal of this weight instead of refusing.
        #[arg(long)]
        score: Option<u8>,
    },
    /// List active blocks.
    List,
    /// Lift a block.
    Remove {
        /// ip, ip/24, api_key, account or ja4h.
        dimension: String,
        /// The value.
        value: String,
    },
}

/// Runs `palisade blocks …` against a running gateway (blocks are its live state).
pub fn run_blocks(args: BlocksArgs) -> anyhow::Result<()> {
    let t = &args.target;
    if t.admin.is_none() {
        bail!(
            "blocks live in the running gateway: give its admin API with --admin URL or PALISADE_ADMIN_URL"
        );
    }
    let Backend::Admin(a) = backend(t)? else {
        bail!("blocks need --admin");
    };
    match args.command {
        BlocksCommand::Add {
            dimension,
            value,
            ttl,
            reason,
            score,
        } => {
            let v = a.call(
                Method::POST,
                "/v1/blocks",
                Some(json!({ "dimension": dimension, "value": value, "ttl": ttl, "reason": reason, "score": score })),
            )?;
            if t.json {
                println!("{v}");
            } else {
                println!(
                    "blocked {} until {} (offence {})",
                    field(&v, "key").as_str().unwrap_or(""),
                    field(&v, "until").as_str().unwrap_or(""),
                    field(&v, "strikes")
                );
            }
        }
        BlocksCommand::List => {
            let v = a.call(Method::GET, "/v1/blocks", None)?;
            if t.json {
                println!("{v}");
            } else {
                let rows: Vec<Vec<String>> = field(&v, "blocks")
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .map(|b| {
                                let s = |k: &str| match field(b, k) {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                vec![s("key"), s("until"), s("reason"), s("effect"), s("strikes")]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["BLOCK", "UNTIL", "REASON", "EFFECT", "OFFENCES"], &rows);
            }
        }
        BlocksCommand::Remove { dimension, value } => {
            let v = a.call(
                Method::POST,
                "/v1/blocks/remove",
                Some(json!({ "dimension": dimension, "value": value })),
            )?;
            if t.json {
                println!("{v}");
            } else {
                println!("removed {}", field(&v, "removed").as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}
