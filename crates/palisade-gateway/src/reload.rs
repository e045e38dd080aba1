//! Hot reload: on SIGHUP, on `POST /v1/reload`, and when the config file or a list file it
//! names changes. A config that fails validation is refused: the old policy keeps running and
//! the errors are returned and logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade_config::{Compiled, ConfigErrors, DEFAULT_CONFIG, UpstreamProtocol, UpstreamSettings};

use crate::telemetry::metrics::ReloadLabels;
use crate::{Runtime, Shared};

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The embedded default.
    Embedded,
    /// A file.
    File(PathBuf),
}

impl ConfigSource {
    /// Reads and compiles the config (blocking: call off the runtime or at start-up).
    pub fn compile(&self) -> Result<Compiled, ConfigErrors> {
        match self {
            ConfigSource::Embedded => palisade_config::compile_str(
                DEFAULT_CONFIG,
                "<embedded default>",
                std::path::Path::new("."),
            ),
            ConfigSource::File(p) => palisade_config::load_file(p),
        }
    }

    /// A name for messages.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::Embedded => "<embedded default>".to_owned(),
            ConfigSource::File(p) => p.display().to_string(),
        }
    }
}

/// Applies overrides and the sample upstream to a freshly compiled config.
pub fn finish(
    mut c: Compiled,
    shared_overrides: &palisade_config::Overrides,
    sample: Option<&http::Uri>,
) -> Compiled {
    shared_overrides.apply(&mut c);
    if c.upstreams.is_empty()
        && let Some(u) = sample
    {
        c.upstreams.push(UpstreamSettings {
            name: "sample".to_owned(),
            url: u.clone(),
            protocol: UpstreamProtocol::Http1,
            max_idle_connections: 64,
        });
    }
    c
}

/// Reloads the config; on success the new runtime is live when this returns.
pub async fn reload(shared: &Arc<Shared>, why: &str) -> Result<(), ConfigErrors> {
    let _guard = shared.reload_lock.lock().await;
    let source = shared.source.clone();
    let compiled = tokio::task::spawn_blocking(move || source.compile())
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors {
                origin: shared.source.describe(),
                errors: vec![palisade_config::ConfigError {
                    line: None,
                    column: None,
                    path: String::new(),
                    message: format!("reload task failed: {e}"),
                }],
            })
        });
    match compiled {
        Ok(c) => {
            let c = finish(c, &shared.overrides, shared.sample_upstream.as_ref());
            let old = shared.runtime.load_full();
            if c.server.listen != old.compiled.server.listen
                || c.server.admin_listen != old.compiled.server.admin_listen
            {
                tracing::warn!(
                    "listener addresses changed in the config; they take effect after a restart"
                );
            }
            let rt = Runtime::build(c, Some(&old));
            shared.runtime.store(Arc::new(rt));
            shared
                .metrics
                .reloads
                .get_or_create(&ReloadLabels {
                    result: "ok".to_owned(),
                })
                .inc();
            tracing::info!(trigger = why, config = %shared.source.describe(), "configuration reloaded");
            audit(
                shared,
                why,
                serde_json::json!({ "result": "ok", "config": shared.source.describe() }),
            )
            .await;
            Ok(())
        }
        Err(errs) => {
            shared
                .metrics
                .reloads
                .get_or_create(&ReloadLabels {
                    result: "error".to_owned(),
                })
                .inc();
            for e in &errs.errors {
                tracing::error!(trigger = why, config = %errs.origin, error = %e, "configuration refused; the previous policy stays in force");
            }
            audit(
                shared,
                why,
                serde_json::json!({ "result": "refused", "config": errs.origin, "errors": errs.errors.len() }),
            )
            .await;
            Err(errs)
        }
    }
}

/// Records a reload in the audit log (with what triggered it as the actor).
async fn audit(shared: &Shared, why: &str, details: serde_json::Value) {
    let actor = match why {
        "admin API" => "admin-api".to_owned(),
        other => other.to_owned(),
    };
    let now = shared.clock.unix_secs();
    if let Err(e) = shared
        .keys
        .run(move |s| s.append_audit(&actor, "config.reload", now, details))
        .await
    {
        shared.metrics.store_errors.inc();
        tracing::error!(error = %e, "writing the audit log failed");
    }
}

/// A cheap fingerprint of the files a config depends on.
pub fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| m.modified().ok().map(|t| (t, m.len())))
        })
        .collect()
}

/// Watches the config file and its list files by polling their metadata every `every`.
pub async fn watch_files(
    shared: Arc<Shared>,
    every: Duration,
    initial: Vec<Option<(SystemTime, u64)>>,
) {
    if matches!(shared.source, ConfigSource::Embedded) {
        return;
    }
    let mut files = shared.runtime.load().compiled.files.clone();
    let mut last = initial;
    // The first look is one period after start: `initial` was taken when the config was read,
    // so a change made since then is seen, and none is imagined.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let f = files.clone();
        let now = tokio::task::spawn_blocking(move || fingerprint(&f))
            .await
            .unwrap_or_default();
        if now != last {
            // Ignore the outcome here: reload() logs and counts it.
            let _ = reload(&shared, "file change").await;
            let loaded = shared.runtime.load().compiled.files.clone();
            if loaded == files {
                // What was seen before reading, not after: a file still being written when it
                // was read (an editor or `cp` truncates, then writes) differs from it at the next
                // look and is read again, instead of the half-written state staying in force.
                last = now;
            } else {
                files = loaded;
                let f = files.clone();
                last = tokio::task::spawn_blocking(move || fingerprint(&f))
                    .await
                    .unwrap_or_default();
            }
        }
    }
}
