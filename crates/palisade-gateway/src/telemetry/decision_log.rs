//! The decision log: one JSON line per decided request, written by a dedicated thread so the
//! request path never blocks on I/O; if the writer falls behind, lines are dropped and counted.
//! The most recent decisions are also kept in a bounded ring for the admin API.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use serde::Serialize;

use palisade_config::DecisionLogTarget;

/// One decision record.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// RFC 3339 time.
    pub time: String,
    /// Request id (also sent to the upstream and the client as `x-request-id`).
    pub request_id: String,
    /// Client IP.
    pub client_ip: String,
    /// Method.
    pub method: String,
    /// Path (without query).
    pub path: String,
    /// Route name.
    pub route: String,
    /// Response status.
    pub status: u16,
    /// Milliseconds from arrival to response headers.
    pub latency_ms: f64,
    /// Identity dimensions and values.
    pub identity: serde_json::Map<String, serde_json::Value>,
    /// Logged action (`would_<action>` when shadowed).
    pub action: String,
    /// Risk score.
    pub score: u8,
    /// Rule that chose the action.
    pub rule: String,
    /// Every signal: name, weight, shadow.
    pub reasons: Vec<Reason>,
    /// Whether the logged action was shadowed.
    pub shadow: bool,
    /// Limiter states.
    pub limits: Vec<LimitRecord>,
}

/// A signal in the log.
#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    /// Signal name.
    pub signal: String,
    /// Weight.
    pub weight: u8,
    /// Shadowed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// An anonymous client's habit seen on a verified key or token: shown, not scored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub discounted: bool,
}

/// A limit's verdict in the log.
#[derive(Debug, Clone, Serialize)]
pub struct LimitRecord {
    /// Limit name.
    pub limit: String,
    /// Allowed.
    pub allowed: bool,
    /// Remaining.
    pub remaining: u64,
    /// Seconds to reset.
    pub reset: u64,
}

/// The decision log and the recent-decisions ring.
#[derive(Debug)]
pub struct DecisionLog {
    tx: Option<SyncSender<String>>,
    recent: Mutex<VecDeque<DecisionRecord>>,
    recent_cap: usize,
}

impl DecisionLog {
    /// Starts the writer thread for `target`.
    pub fn start(target: &DecisionLogTarget, recent_cap: usize) -> std::io::Result<Self> {
        let tx = match target {
            DecisionLogTarget::Off => None,
            DecisionLogTarget::Stdout => Some(spawn_writer(Box::new(std::io::stdout()))?),
            DecisionLogTarget::File(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                Some(spawn_writer(Box::new(f))?)
            }
        };
        Ok(Self {
            tx,
            recent: Mutex::new(VecDeque::with_capacity(recent_cap.min(4096))),
            recent_cap,
        })
    }

    /// Records a logged decision: to the log target and into the recent ring. Returns false if
    /// the line had to be dropped because the writer fell behind.
    pub fn record(&self, rec: DecisionRecord) -> bool {
        let mut ok = true;
        if let Some(tx) = &self.tx {
            match serde_json::to_string(&rec) {
                Ok(line) => {
                    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                        tx.try_send(line)
                    {
                        ok = false;
                    }
                }
                Err(_) => ok = false,
            }
        }
        if self.recent_cap > 0
            && let Ok(mut ring) = self.recent.lock()
        {
            if ring.len() >= self.recent_cap {
                ring.pop_front();
            }
            ring.push_back(rec);
        }
        ok
    }

    /// The most recent decisions, newest first, optionally filtered.
    pub fn recent(
        &self,
        limit: usize,
        filter: impl Fn(&DecisionRecord) -> bool,
    ) -> Vec<DecisionRecord> {
        match self.recent.lock() {
            Ok(ring) => ring
                .iter()
                .rev()
                .filter(|r| filter(r))
                .take(limit)
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

const QUEUE: usize = 65_536;

fn spawn_writer(mut out: Box<dyn Write + Send>) -> std::io::Result<SyncSender<String>> {
    let (tx, rx): (SyncSender<String>, Receiver<String>) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("palisade-decision-log".to_owned())
        .spawn(move || {
            let mut buf = std::io::BufWriter::with_capacity(64 << 10, &mut out);
            loop {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(line) => {
                        let _ = buf.write_all(line.as_bytes());
                        let _ = buf.write_all(b"\n");
                        // Drain what is queued, then flush, so lines reach the file promptly.
                        while let Ok(line) = rx.try_recv() {
                            let _ = buf.write_all(line.as_bytes());
                            let _ = buf.write_all(b"\n");
                        }
                        let _ = buf.flush();
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        let _ = buf.flush();
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = buf.flush();
                        return;
                    }
                }
            }
        })?;
    Ok(tx)
}

/// RFC 3339 UTC time with milliseconds, from Unix milliseconds (no date crate needed).
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let ms = unix_ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (y, mo, d) = palisade_keys::time::civil_from_days(days);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T12:34:56.789Z, a leap day.
        assert_eq!(rfc3339(951_827_696_789), "2000-02-29T12:34:56.789Z");
        // 2026-11-21T00:00:00Z.
        assert_eq!(rfc3339(1_795_219_200_000), "2026-11-21T00:00:00.000Z");
    }
}
