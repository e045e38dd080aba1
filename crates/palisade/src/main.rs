//! `palisade`: self-hosted bot and abuse defense for HTTP APIs.
//!
//! `palisade serve` runs the gateway (with no arguments, on the embedded default policy and a
//! built-in sample API); `palisade check --config FILE` validates a config and runs its test
//! cases; `palisade sample-api` serves the sample API alone (for demos and benchmarks).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use palisade_config::{ConfigErrors, Overrides};

mod keys_cmd;
mod replay;
mod simulate;

// The request path allocates small, short-lived buffers at a high rate; mimalloc measured
// noticeably faster than glibc malloc for it (see bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use palisade_gateway::{ConfigSource, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "palisade",
    version,
    about = "Self-hosted bot and abuse defense for HTTP APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default command).
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Validate a config, report every error with its location, then run its [[tests]].
    Check(CheckArgs),
    /// Manage API keys, offline on a data dir or through a running gateway's admin API.
    Keys(keys_cmd::KeysArgs),
    /// Block identities for a while, list and lift blocks (through a running gateway's admin API).
    Blocks(keys_cmd::BlocksArgs),
    /// Inspect the built-in bot catalog.
    Bots {
        #[command(subcommand)]
        command: BotsCommand,
    },
    /// Run scripted people, integrations and bots against a gateway and report, per class,
    /// what reached the upstream and what was stopped.
    Simulate(simulate::SimArgs),
    /// What a policy would have done to the traffic in access logs (nginx/Apache combined,
    /// nginx JSON, Caddy, Traefik, Palisade's own decision log; gzip allowed): every request
    /// through the full engine on the log's own clock, reported by action, rule, signal, route
    /// and identity; `--against OLD.toml` shows which requests change action and why.
    Replay(replay::ReplayArgs),
    /// The whole product in a minute: the gateway on its default policy in front of the sample
    /// API, the simulator's people, customers and bots running against it, and the dashboard's
    /// address with a one-time sign-in token. Ctrl-C ends it with the simulator's report.
    Demo {
        /// How long to run (Ctrl-C ends it sooner).
        #[arg(long, default_value = "8h")]
        duration: String,
        /// People browsing, signing in and reading.
        #[arg(long, default_value_t = 20)]
        humans: u32,
        /// Customers' keyed integrations.
        #[arg(long, default_value_t = 6)]
        integrations: u32,
    },
    /// Scan values for injection probes, one per line (files, or stdin): print each flagged
    /// line's classes and fingerprints, then how many of how many were flagged. The values are
    /// taken as a query or form value would arrive (percent-encoded or not; `--plus` makes `+`
    /// a space). Exit 0 always; the summary is the result.
    Probes {
        /// Files of values, one per line (`-` or none: stdin). Lines starting with `#` and
        /// empty lines are skipped.
        files: Vec<PathBuf>,
        /// Print every line, flagged or not, as JSON.
        #[arg(long)]
        json: bool,
        /// `+` is a space (values copied from query strings).
        #[arg(long)]
        plus: bool,
        /// Print only the summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write the man pages and shell completions (for packaging) into a directory.
    #[command(hide = true)]
    Generate {
        /// Where to write `man/palisade*.1` and `completions/{palisade.bash,_palisade,palisade.fish}`.
        dir: PathBuf,
    },
    /// Solve a proof-of-work challenge (the reference solver for API clients): give it the
    /// `WWW-Authenticate: PoW ...` value (or the bare challenge token and `--difficulty`);
    /// prints the `Palisade-PoW` header value to send with the retried request.
    Solve(SolveArgs),
    /// Serve only the built-in sample API.
    SampleApi {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
enum BotsCommand {
    /// Read user agents on stdin, one per line; print `<category>\t<bot name or ->\t<user agent>`
    /// for each (category `human` for what looks like a person's browser).
    Classify,
    /// List the categories.
    Categories,
    /// Check whether a client claiming to be a verifiable bot (by its user agent) is that bot:
    /// published ranges, then forward-confirmed reverse DNS, as the gateway would. Exit 0 when
    /// verified, 1 otherwise.
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The client's address.
    ip: std::net::IpAddr,
    /// The user agent it sent.
    user_agent: String,
    /// Config whose [bots] to use (its [[bots.verify]], [bots.ranges], dns_servers); default:
    /// the embedded default policy.
    #[arg(long, short, env = "PALISADE_CONFIG")]
    config: Option<PathBuf>,
    /// Data dir holding fetched ranges (default: the config's).
    #[arg(long, env = "PALISADE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// DNS server (`ip:port`) for the reverse lookups, instead of the config's or the system's.
    #[arg(long = "dns-server")]
    dns_servers: Vec<SocketAddr>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// Config file; without it the embedded default policy runs.
    #[arg(long, short, env = "PALISADE_CONFIG")]
    config: Option<PathBuf>,
    /// Upstream URL; replaces the first upstream's (or sets one).
    #[arg(long, env = "PALISADE_UPSTREAM")]
    upstream: Option<http::Uri>,
    /// Proxy listen address.
    #[arg(long, env = "PALISADE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin listen address.
    #[arg(long, env = "PALISADE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "PALISADE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long, env = "PALISADE_WORKERS")]
    workers: Option<usize>,
    /// Log filter for operational logs on stderr (e.g. info, debug, palisade_gateway=debug).
    #[arg(long, env = "PALISADE_LOG", default_value = "info")]
    log_level: String,
    /// Seconds between checks of the config file for changes.
    #[arg(long, default_value_t = 1)]
    watch_interval: u64,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Config file to check; without it the embedded default is checked.
    #[arg(long, short, env = "PALISADE_CONFIG")]
    config: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Man pages (one per command) and bash, zsh and fish completions, from the CLI definition.
fn generate(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).context("writing the man pages")?;
    for (shell, name) in [
        (clap_complete::Shell::Bash, "palisade.bash"),
        (clap_complete::Shell::Zsh, "_palisade"),
        (clap_complete::Shell::Fish, "palisade.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "palisade", &mut out);
        std::fs::write(completions.join(name), out)
            .with_context(|| format!("writing the {name} completions"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli
        .command
        .unwrap_or(Command::Serve(ServeArgs::default_from_env()))
    {
        Command::Serve(args) => serve(args),
        Command::Check(args) => return check(args),
        Command::Keys(args) => keys_cmd::run(args),
        Command::Blocks(args) => keys_cmd::run_blocks(args),
        Command::Bots { command } => bots(command),
        Command::SampleApi { listen, workers } => sample_api(listen, workers),
        Command::Simulate(args) => simulate_cmd(&args),
        Command::Solve(args) => solve(&args),
        Command::Replay(args) => replay::run(&args).map(|_| ()),
        Command::Generate { dir } => generate(&dir),
        Command::Probes {
            files,
            json,
            plus,
            quiet,
        } => probes(&files, json, plus, quiet),
        Command::Demo {
            duration,
            humans,
            integrations,
        } => demo(duration, humans, integrations),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `palisade probes`: the probe scan over lines of values.
fn probes(files: &[PathBuf], json: bool, plus: bool, quiet: bool) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let mut sources: Vec<Box<dyn std::io::BufRead>> = Vec::new();
    if files.is_empty() || files.iter().any(|f| f.as_os_str() == "-") {
        sources.push(Box::new(std::io::stdin().lock()));
    }
    for f in files.iter().filter(|f| f.as_os_str() != "-") {
        let file = std::fs::File::open(f)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
        sources.push(Box::new(std::io::BufReader::new(file)));
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let (mut n, mut flagged) = (0u64, 0u64);
    let mut by_class = std::collections::BTreeMap::<&str, u64>::new();
    for source in sources {
        for line in source.split(b'\n') {
            let mut line = line?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() || line.first() == Some(&b'#') {
                continue;
            }
            n += 1;
            let hits = palisade_intel::probes::scan_one(&line, plus);
            if !hits.is_empty() {
                flagged += 1;
            }
            for h in &hits {
                *by_class.entry(h.class.name()).or_default() += 1;
            }
            if quiet {
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            if json {
                let found: Vec<_> = hits
                    .iter()
                    .map(|h| serde_json::json!({ "class": h.class.name(), "fingerprint": h.fingerprint.as_str() }))
                    .collect();
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "value": text, "probes": found })
                )?;
            } else if !hits.is_empty() {
                let found: Vec<String> = hits
                    .iter()
                    .map(|h| format!("{}:{}", h.class.name(), h.fingerprint))
                    .collect();
                writeln!(out, "{}\t{text}", found.join(","))?;
            }
        }
    }
    let share = if n == 0 {
        0.0
    } else {
        100.0 * flagged as f64 / n as f64
    };
    let classes: Vec<String> = by_class.iter().map(|(c, k)| format!("{c} {k}")).collect();
    eprintln!(
        "{flagged} of {n} values flagged ({share:.2}%){}{}",
        if classes.is_empty() { "" } else { ": " },
        classes.join(", ")
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
struct SolveArgs {
    /// The `WWW-Authenticate` value (`PoW realm=..., challenge="...", difficulty=N, ...`), or
    /// the challenge token itself.
    challenge: String,
    /// Leading zero bits (read from the `WWW-Authenticate` value when given).
    #[arg(long)]
    difficulty: Option<u8>,
}

/// `palisade solve`.
fn solve(args: &SolveArgs) -> anyhow::Result<()> {
    let text = args.challenge.trim();
    let param = |name: &str| -> Option<String> {
        let at = text.find(&format!("{name}="))? + name.len() + 1;
        let rest = text.get(at..)?;
        Some(match rest.strip_prefix('"') {
            Some(q) => q.split('"').next()?.to_owned(),
            None => rest.split([',', ' ']).next()?.to_owned(),
        })
    };
    let (token, bits) = if text.starts_with("PoW ") || text.contains("challenge=") {
        let token =
            param("challenge").context("no challenge=\"...\" in the WWW-Authenticate value")?;
        let bits = match args.difficulty {
            Some(b) => b,
            None => param("difficulty")
                .and_then(|d| d.parse().ok())
                .context("no difficulty=N in the WWW-Authenticate value")?,
        };
        (token, bits)
    } else {
        (
            text.to_owned(),
            args.difficulty
                .context("give --difficulty with a bare challenge token")?,
        )
    };
    anyhow::ensure!(
        bits <= 32,
        "a difficulty over 32 bits is not one Palisade sets"
    );
    let started = std::time::Instant::now();
    let n = palisade_gateway::challenge::token::solve(&token, bits);
    eprintln!(
        "solved {bits} bits in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    println!("{token}:{n}");
    Ok(())
}

impl ServeArgs {
    /// `palisade` with no subcommand behaves as `palisade serve`, environment included.
    fn default_from_env() -> Self {
        match Cli::try_parse_from(["palisade", "serve"]) {
            Ok(Cli {
                command: Some(Command::Serve(a)),
            }) => a,
            _ => Self {
                log_level: "info".to_owned(),
                watch_interval: 1,
                ..Self::default()
            },
        }
    }
}

/// The async runtime: one worker per core by default. With exactly one worker, a
/// current-thread runtime serves everything on one thread, as one nginx worker does, without
/// the work-stealing scheduler's cross-thread bookkeeping.
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all();
    b.build().context("starting the async runtime")
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_current_span(false)
        .try_init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_level);
    let rt = runtime(args.workers)?;
    rt.block_on(async move {
        let opts = RunOptions {
            source: match args.config {
                Some(p) => ConfigSource::File(p),
                None => ConfigSource::Embedded,
            },
            overrides: Overrides {
                listen: args.listen,
                admin_listen: args.admin_listen,
                data_dir: args.data_dir,
                upstream: args.upstream,
            },
            watch_interval: Duration::from_secs(args.watch_interval.max(1)),
            env_admin_token: std::env::var("PALISADE_ADMIN_TOKEN").ok(),
            in_process: false,
        };
        let running = palisade_gateway::start(opts).await?;
        eprint!("{}", running.banner());
        wait_for_shutdown_signal().await;
        tracing::info!("shutdown signal received");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let source = match &args.config {
        Some(p) => ConfigSource::File(p.clone()),
        None => ConfigSource::Embedded,
    };
    let compiled = match source.compile() {
        Ok(c) => c,
        Err(errs) => {
            report_errors(&errs, args.json);
            return ExitCode::FAILURE;
        }
    };
    let outcomes = palisade_config::run_cases(&compiled);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let certificates: Vec<(String, Vec<String>, i64)> = compiled
        .tls
        .iter()
        .flat_map(|t| &t.certificates)
        .map(|c| {
            (
                c.path.display().to_string(),
                c.names.clone(),
                (c.not_after - now).div_euclid(86_400),
            )
        })
        .collect();
    if args.json {
        let cases: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| {
                serde_json::json!({
                    "name": o.name, "line": o.line, "passed": o.passed,
                    "expected": o.expected, "got_action": o.got_action, "got_rule": o.got_rule,
                })
            })
            .collect();
        let certs: Vec<serde_json::Value> = certificates
            .iter()
            .map(|(path, names, days)| {
                serde_json::json!({ "file": path, "names": names, "days_left": days })
            })
            .collect();
        let acme = compiled.tls.as_ref().and_then(|t| t.acme.as_ref()).map(|a| {
            serde_json::json!({ "domains": a.domains, "directory": a.directory,
                "challenge": match a.challenge { palisade_config::AcmeChallenge::Http01 => "http-01", palisade_config::AcmeChallenge::TlsAlpn01 => "tls-alpn-01" },
                "renew_before_days": a.renew_before_secs / 86_400 })
        });
        println!(
            "{}",
            serde_json::json!({ "valid": true, "cases": cases, "failed": failed, "certificates": certs, "acme": acme })
        );
    } else {
        println!("{}: configuration is valid", source.describe());
        for (path, names, days) in &certificates {
            let state = match *days {
                d if d < 0 => "EXPIRED".to_owned(),
                d if d < 14 => format!("expires in {d} days: renew it"),
                d => format!("valid for {d} more days"),
            };
            println!("  certificate {path} ({}): {state}", names.join(", "));
        }
        if let Some(a) = compiled.tls.as_ref().and_then(|t| t.acme.as_ref()) {
            let how = match a.challenge {
                palisade_config::AcmeChallenge::Http01 => {
                    "HTTP-01 on the plain listener (port 80 must reach it)"
                }
                palisade_config::AcmeChallenge::TlsAlpn01 => {
                    "TLS-ALPN-01 on the TLS listener (port 443 must reach it)"
                }
            };
            println!(
                "  ACME certificate for {} from {}: proven by {how}, renewed {} days before expiry",
                a.domains.join(", "),
                a.directory,
                a.renew_before_secs / 86_400
            );
        }
        for o in &outcomes {
            let line = o.line.map(|l| format!(":{l}")).unwrap_or_default();
            if o.passed {
                println!("  ok    {} ({}{line})", o.name, source.describe());
            } else {
                println!(
                    "  FAIL  {} ({}{line}): expected {}, got {} by {}",
                    o.name,
                    source.describe(),
                    o.expected,
                    o.got_action,
                    o.got_rule
                );
            }
        }
        println!("{} passed, {} failed", outcomes.len() - failed, failed);
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn report_errors(errs: &ConfigErrors, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "valid": false, "source": errs.origin, "errors": errs.errors })
        );
    } else {
        eprint!("{errs}");
    }
}

fn bots(command: BotsCommand) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    if let BotsCommand::Verify(args) = command {
        return bots_verify(args);
    }
    let catalog = palisade_intel::BotCatalog::builtin()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        BotsCommand::Categories => {
            for c in palisade_intel::Category::ALL {
                writeln!(out, "{c}")?;
            }
        }
        BotsCommand::Classify => {
            let stdin = std::io::stdin();
            let mut line = Vec::new();
            let mut input = stdin.lock();
            loop {
                line.clear();
                if input.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line);
                let ua = text.trim_end_matches(['\n', '\r']);
                let c = catalog.classify(ua);
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    c.category,
                    c.name.as_deref().unwrap_or("-"),
                    ua.replace('\t', " ")
                )?;
            }
        }
        BotsCommand::Verify(_) => {}
    }
    out.flush()?;
    Ok(())
}

/// `palisade bots verify IP UA`.
fn bots_verify(args: VerifyArgs) -> anyhow::Result<()> {
    use palisade_intel::verify::VerifyStatus;
    let source = match &args.config {
        Some(p) => ConfigSource::File(p.clone()),
        None => ConfigSource::Embedded,
    };
    let compiled = match source.compile() {
        Ok(c) => c,
        Err(errs) => {
            eprint!("{errs}");
            anyhow::bail!("the config is not valid");
        }
    };
    let catalog = palisade_intel::BotCatalog::builtin()?;
    let class = catalog.classify(&args.user_agent);
    let bots = compiled.policy.bots.as_ref();
    let claimed = bots.and_then(|b| b.verified.iter().find(|v| v.claimed_by(&args.user_agent)));
    let Some(bot) = claimed else {
        let why = if bots.is_none_or(|b| b.verified.is_empty()) {
            "the config verifies no bots"
        } else {
            "it claims no verifiable bot"
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "ip": args.ip, "category": class.category.name(), "bot": class.name.as_deref(), "claim": null, "status": "no_claim", "how": why })
            );
        } else {
            println!(
                "{}: category {}, {}; {why}",
                args.ip,
                class.category,
                class.name.as_deref().unwrap_or("no known bot")
            );
        }
        return Err(anyhow::anyhow!("not verified"));
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| compiled.server.data_dir.clone());
    let servers = if args.dns_servers.is_empty() {
        bots.map(|b| b.dns_servers.clone()).unwrap_or_default()
    } else {
        args.dns_servers.clone()
    };
    let fetch = compiled
        .bot_ranges
        .iter()
        .find(|f| *f.bot == *bot.name)
        .cloned();
    let rt = runtime(Some(1))?;
    let checked = rt.block_on(async {
        // Fetched ranges: the gateway's last good copy, else fetched now.
        let mut fetched = None;
        if let Some(f) = &fetch {
            let file = palisade_gateway::bot_ranges::cache_file(&data_dir, &f.bot);
            fetched = std::fs::read(&file)
                .ok()
                .and_then(|b| palisade_gateway::bot_ranges::parse_document(&b).ok());
            if fetched.is_none() {
                let client = palisade_gateway::client::documents::DocumentClient::new(None)
                    .map_err(|e| anyhow::anyhow!(e))?;
                let body = client
                    .get(&f.url, 8 << 20)
                    .await
                    .map_err(|e| anyhow::anyhow!("fetching {}: {e}", f.url))?;
                fetched = Some(
                    palisade_gateway::bot_ranges::parse_document(&body)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", f.url))?,
                );
            }
        }
        anyhow::Ok(
            palisade_gateway::bot_dns::check_now(bot, args.ip, fetched.as_ref(), &servers).await,
        )
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "ip": args.ip, "category": class.category.name(), "bot": class.name.as_deref(), "claim": &*bot.name, "status": checked.status.name(), "how": checked.how })
        );
    } else {
        println!(
            "{}: claims to be {} (category {}): {} — {}",
            args.ip,
            bot.name,
            class.category,
            checked.status.name(),
            checked.how
        );
    }
    if checked.status == VerifyStatus::Verified {
        Ok(())
    } else {
        Err(anyhow::anyhow!("not verified"))
    }
}

fn demo(duration: String, humans: u32, integrations: u32) -> anyhow::Result<()> {
    let args = simulate::SimArgs {
        config: None,
        duration,
        humans,
        office: 4,
        integrations,
        delay_bound: "1s".to_owned(),
        grace: 50,
        seed: rand::random(),
        json: false,
        decision_log: None,
        demo: true,
    };
    let rt = runtime(None)?;
    let report = rt.block_on(simulate::run(&args))?;
    print!("{}", simulate::render(&report));
    Ok(())
}

fn simulate_cmd(args: &simulate::SimArgs) -> anyhow::Result<()> {
    let rt = runtime(None)?;
    let report = rt.block_on(simulate::run(args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", simulate::render(&report));
    }
    if !report.all_targets_met {
        anyhow::bail!("some classes missed their target");
    }
    Ok(())
}

fn sample_api(listen: SocketAddr, workers: Option<usize>) -> anyhow::Result<()> {
    init_tracing("info");
    let rt = runtime(workers)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        eprintln!("palisade sample API on http://{}", listener.local_addr()?);
        palisade_gateway::sample_api::serve(listener).await?;
        Ok(())
    })
}
