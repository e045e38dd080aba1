//! Verified good bots, the ranges half: the published ranges of built-in bots that the config
//! asks the gateway to fetch (`[bots.ranges] gptbot = { refresh = "24h" }`). Each is fetched at
//! start and every `refresh`; a good document (it parses and names at least one prefix) is
//! written to `data_dir/bot-ranges/NAME.json` (a temporary file, synced, renamed over the old
//! one) and installed in the verifier. A failed fetch or a bad document keeps the copy in use and
//! is tried again after a back-off that starts at 30 s and doubles up to `refresh`. At start, and
//! for a bot that appears on reload, the last good copy on disk is installed before the first
//! fetch, so a restart during an outage of the operator's site loses nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_config::RangeFetch;
use palisade_intel::verify::{Ranges, parse_ranges};

use crate::Shared;
use crate::client::documents::DocumentClient;
use crate::telemetry::metrics::BotRangesLabels;

/// Largest ranges document accepted (Google's is ~100 KiB).
const MAX_BYTES: usize = 8 << 20;
/// First wait after a failure; doubles per failure in a row, up to the refresh period.
const RETRY_FIRST: Duration = Duration::from_secs(30);

/// Where the last good copy of `bot`'s ranges is kept.
pub fn cache_file(data_dir: &Path, bot: &str) -> PathBuf {
    data_dir.join("bot-ranges").join(format!("{bot}.json"))
}

/// Parses a fetched document: at least one prefix, or an error.
pub fn parse_document(body: &[u8]) -> Result<Ranges, String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8 text".to_owned())?;
    let ranges = Ranges::new(parse_ranges(text)?);
    if ranges.is_empty() {
        return Err("no prefixes".to_owned());
    }
    Ok(ranges)
}

/// Writes `body` to `path` so that a crash leaves the old copy or the new one, never a torn one.
fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// One source's schedule.
struct Source {
    url: http::Uri,
    next: Instant,
    failures: u32,
}

/// Runs for the gateway's life.
pub async fn refresh_loop(shared: Arc<Shared>) {
    let client = match DocumentClient::new(None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the client for bot ranges; they will not be fetched");
            return;
        }
    };
    let mut sources: HashMap<String, Source> = HashMap::new();
    loop {
        let rt = shared.runtime.load_full();
        let data_dir = rt.compiled.server.data_dir.clone();
        let wanted: Vec<RangeFetch> = rt.compiled.bot_ranges.clone();
        drop(rt);
        sources.retain(|bot, _| wanted.iter().any(|w| w.bot == *bot));
        shared
            .verifier
            .retain_ranges(|bot| wanted.iter().any(|w| w.bot == bot));
        for w in &wanted {
            let file = cache_file(&data_dir, &w.bot);
            if !sources.contains_key(&w.bot) && shared.verifier.ranges(&w.bot).is_none() {
                load_cached(&shared, &w.bot, &file).await;
            }
            let s = sources.entry(w.bot.clone()).or_insert_with(|| Source {
                url: w.url.clone(),
                next: Instant::now(),
                failures: 0,
            });
            if s.url != w.url {
                s.url = w.url.clone();
                s.next = Instant::now();
                s.failures = 0;
            }
            if Instant::now() < s.next {
                continue;
            }
            let refresh = Duration::from_nanos(w.refresh);
            let outcome = match client.get(&w.url, MAX_BYTES).await {
                Ok(body) => parse_document(&body).map(|r| (r, body)),
                Err(e) => Err(e),
            };
            let result = match outcome {
                Ok((ranges, body)) => {
                    // Off the runtime: the copy is synced to disk.
                    let path = file.clone();
                    let written =
                        tokio::task::spawn_blocking(move || write_atomically(&path, &body))
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    if let Err(e) = written {
                        tracing::warn!(bot = %w.bot, file = %file.display(), error = %e, "cannot keep a copy of the bot's ranges; using them anyway");
                    }
                    tracing::info!(bot = %w.bot, url = %w.url, ranges = ranges.len(), "fetched published bot ranges");
                    shared.verifier.set_ranges(&w.bot, Arc::new(ranges));
                    s.failures = 0;
                    s.next = Instant::now() + refresh;
                    "ok"
                }
                Err(e) => {
                    s.failures = s.failures.saturating_add(1);
                    let wait = RETRY_FIRST
                        .saturating_mul(1 << (s.failures - 1).min(16))
                        .min(refresh);
                    tracing::warn!(bot = %w.bot, url = %w.url, error = %e, retry_in_secs = wait.as_secs(), "fetching published bot ranges failed; keeping the copy in use");
                    s.next = Instant::now() + wait;
                    "error"
                }
            };
            shared
                .metrics
                .bot_ranges
                .get_or_create(&BotRangesLabels {
                    bot: w.bot.clone(),
                    result,
                })
                .inc();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Installs the last good copy on disk, if there is one (read off the runtime).
async fn load_cached(shared: &Shared, bot: &str, file: &Path) {
    let path = file.to_owned();
    let read = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match read {
        Ok(body) => match parse_document(&body) {
            Ok(r) => {
                tracing::info!(bot, file = %file.display(), ranges = r.len(), "using the last good copy of the bot's ranges until they are fetched");
                shared.verifier.set_ranges(bot, Arc::new(r));
            }
            Err(e) => {
                tracing::warn!(bot, file = %file.display(), error = %e, "ignoring a bad copy of the bot's ranges");
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(bot, file = %file.display(), error = %e, "cannot read the copy of the bot's ranges");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_must_name_prefixes() {
        assert!(parse_document(br#"{"prefixes": []}"#).is_err());
        assert!(parse_document(b"<html>maintenance</html>").is_err());
        assert!(parse_document(&[0xff, 0xfe]).is_err());
        let r = parse_document(br#"{"prefixes": [{"ipv4Prefix": "20.171.206.0/24"}]}"#).unwrap();
        assert!(r.contains("20.171.206.9".parse().unwrap()));
    }

    #[test]
    fn a_copy_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("palisade-ranges-{}", rand::random::<u64>()));
        let f = cache_file(&dir, "gptbot");
        write_atomically(&f, b"1.2.3.0/24\n").unwrap();
        write_atomically(&f, b"5.6.7.0/24\n").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"5.6.7.0/24\n");
        assert!(!f.with_extension("json.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
