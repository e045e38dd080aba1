//! Behaviour aggregates: distinct-count sketches merged across gateways.

use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_engine::clock::Clock as _;

use palisade_engine::behaviour::{DISTINCTS, SharedSketches};

use super::*;

/// Merges records' distinct-count sketches with the other gateways': ORs each into the shared
/// row of the current window (`BITOP` on a scratch key in the row's slot) and answers the
/// union, then the previous window's row (empty when there is none). Per record: `KEYS` the
/// row, its scratch key and the previous window's row, `ARGV` the sketches (little-endian
/// 64-bit words) and the row's lifetime in seconds.
pub(super) const SKETCH_MERGE: &str = r"
local out = {}
local r = 1
for i = 1, #KEYS, 3 do
  redis.call('SET', KEYS[i + 1], ARGV[r])
  redis.call('BITOP', 'OR', KEYS[i], KEYS[i], KEYS[i + 1])
  redis.call('DEL', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[r + 1])
  out[#out + 1] = redis.call('GET', KEYS[i])
  out[#out + 1] = redis.call('GET', KEYS[i + 2]) or ''
  r = r + 2
end
return out
";

/// How often behaviour aggregates are merged across the cluster.
pub(super) const AGGREGATE_INTERVAL: Duration = Duration::from_secs(1);

/// Shares behaviour aggregates every second: the distinct-count sketches of each record that
/// changed here (keys per address, prefix, fingerprint and ASN; addresses, user agents, ASNs
/// and countries per key and account; sources per username; ids and cache-busting values) are
/// merged with the other gateways' in Redis, and the union comes back into the local record.
/// So a swarm that spreads its keys over the gateways is counted whole. A round that fails is
/// dropped: the records are queued again by their next request.
pub async fn share_aggregates(shared: Arc<crate::Shared>) {
    let Some(store) = shared.store.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(AGGREGATE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = shared.runtime.load_full();
        let Some(behaviour) = rt.engine.behaviour() else {
            continue;
        };
        if !behaviour.policy().shared {
            continue;
        }
        let rows = behaviour.take_shared();
        if rows.is_empty() {
            continue;
        }
        let window_ms = (behaviour.policy().window / 1_000_000).max(1);
        let epoch = shared.clock.unix_ms() / window_ms;
        let ttl = (2 * window_ms).div_ceil(1000) + 60;
        match store.merge_sketches(&rows, epoch, ttl).await {
            Ok(merged) => behaviour.merge_shared(&merged),
            Err(e) => tracing::debug!(error = %e, "sharing behaviour aggregates failed"),
        }
    }
}

impl SharedStore {
    /// A record's row in `epoch`, its scratch key and its row in the epoch before, all in one
    /// hash slot.
    pub(super) fn sketch_keys(&self, row: &SharedSketches, epoch: u64) -> [String; 3] {
        let tag = format!(
            "{}:agg:{{{}:{:016x}}}",
            self.settings.prefix, row.table, row.key
        );
        [
            format!("{tag}:{epoch}"),
            format!("{tag}:scratch"),
            format!("{tag}:{}", epoch.saturating_sub(1)),
        ]
    }

    pub(super) fn merge_invocation<'a>(
        &'a self,
        rows: &[SharedSketches],
        epoch: u64,
        ttl: u64,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = self.sketch_merge.prepare_invoke();
        for row in rows {
            let [key, scratch, previous] = self.sketch_keys(row, epoch);
            let bytes: Vec<u8> = row.sketches.iter().flat_map(|w| w.to_le_bytes()).collect();
            inv.key(key).key(scratch).key(previous).arg(bytes).arg(ttl);
        }
        inv
    }

    /// Merges `rows` with the cluster's; answers the unions, each with the cluster's previous
    /// window.
    pub(super) async fn merge_sketches(
        &self,
        rows: &[SharedSketches],
        epoch: u64,
        ttl: u64,
    ) -> Result<Vec<SharedSketches>, StoreError> {
        let conn = self.conn.load_full().ok_or(StoreError::NotConnected)?;
        // One server: 200 records per call; a cluster: one per call, 64 in flight.
        let per_call = if conn.is_cluster() { 1 } else { 200 };
        let mut out = Vec::with_capacity(rows.len());
        let work = async {
            for batch in rows.chunks(per_call * 64) {
                let calls = batch.chunks(per_call).map(|chunk| {
                    let mut m = (*conn).clone();
                    let inv = self.merge_invocation(chunk, epoch, ttl);
                    async move { inv.invoke_async::<Vec<Vec<u8>>>(&mut m).await }
                });
                self.commands
                    .fetch_add(batch.len().div_ceil(per_call) as u64, Ordering::Relaxed);
                let answers = futures_util::future::try_join_all(calls).await?;
                let mut answers = answers.into_iter().flatten();
                for row in batch {
                    let (Some(current), Some(before)) = (answers.next(), answers.next()) else {
                        break;
                    };
                    let mut sketches = row.sketches;
                    or_words(&mut sketches, &current);
                    let mut previous = [0; DISTINCTS];
                    or_words(&mut previous, &before);
                    out.push(SharedSketches {
                        sketches,
                        previous,
                        ..*row
                    });
                }
            }
            Ok::<_, StoreError>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), work).await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Timeout(Duration::from_secs(5)))
            }
        }
    }
}

/// ORs little-endian 64-bit words from `bytes` into `words` (a short or odd answer ORs what
/// it holds).
fn or_words(words: &mut [u64], bytes: &[u8]) {
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *word |= u64::from_le_bytes(b);
    }
}
