//! Cluster mode: the distinct-count sketches of changed records, merged with the other
//! gateways'.

use super::*;

/// The table index [`SharedSketches`] uses for usernames (stuffing targets).
pub const SHARED_TARGETS: u8 = DIMS as u8;

/// Most records queued for sharing between two rounds; more wait for their next request.
const MAX_SHARE_QUEUE: usize = 100_000;

/// One record's distinct-count sketches as gateways share them (cluster mode): OR-ing
/// sketches is idempotent, so each gateway adds its own and takes back the union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSketches {
    /// A [`Dim`] index, or [`SHARED_TARGETS`].
    pub table: u8,
    /// The record's key (the same on every gateway in cluster mode).
    pub key: u64,
    /// The current epoch's sketches (for usernames, only the first: distinct sources).
    pub sketches: [u64; DISTINCTS],
    /// The cluster's previous epoch, as merged (empty in what a gateway sends). Gateways'
    /// windows are not aligned with the store's, so a swarm spread over a boundary would
    /// otherwise be split between two rows and counted by halves. It is merged into the local
    /// previous window, which is never sent: nothing is carried into a later epoch.
    pub previous: [u64; DISTINCTS],
}

impl Behaviour {
    /// Queues a record for sharing; false if the queue is full (it is tried again on the
    /// record's next request).
    pub(super) fn queue_share(&self, table: u8, key: u64) -> bool {
        match self.share_queue.lock() {
            Ok(mut q) if q.len() < MAX_SHARE_QUEUE => {
                q.push((table, key));
                true
            }
            _ => false,
        }
    }

    /// The sketches of every record that changed since the last call (cluster mode), for
    /// the gateway to merge with the other gateways'.
    pub fn take_shared(&self) -> Vec<SharedSketches> {
        let queued = match self.share_queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Vec::new(),
        };
        queued
            .into_iter()
            .filter_map(|(table, key)| {
                let sketches: [u64; DISTINCTS] = if table == SHARED_TARGETS {
                    self.targets.as_ref()?.update(key, |t| {
                        t.queued = false;
                        let mut s = [0u64; DISTINCTS];
                        if let Some(first) = s.first_mut() {
                            *first = t.sources_cur;
                        }
                        s
                    })?
                } else {
                    self.tables
                        .get(usize::from(table))?
                        .as_ref()?
                        .update(key, |f| {
                            f.queued = false;
                            f.cur.distinct
                        })?
                };
                // A record with nothing to count (no keys, agents, ids ...) has nothing to share.
                sketches.iter().any(|w| *w != 0).then_some(SharedSketches {
                    table,
                    key,
                    sketches,
                    previous: [0; DISTINCTS],
                })
            })
            .collect()
    }

    /// Merges the cluster's sketches into the records still held here: from the next request
    /// on, distinct counts (keys per address, addresses per key, sources per username ...)
    /// are the fleet's.
    pub fn merge_shared(&self, rows: &[SharedSketches]) {
        for row in rows {
            if row.table == SHARED_TARGETS {
                if let Some(targets) = &self.targets {
                    targets.update(row.key, |t| {
                        t.sources_cur |= row.sketches.first().copied().unwrap_or(0);
                        t.sources_prev |= row.previous.first().copied().unwrap_or(0);
                    });
                }
            } else if let Some(Some(table)) = self.tables.get(usize::from(row.table)) {
                table.update(row.key, |f| {
                    for (mine, theirs) in f.cur.distinct.iter_mut().zip(row.sketches) {
                        *mine |= theirs;
                    }
                    for (mine, theirs) in f.prev.distinct.iter_mut().zip(row.previous) {
                        *mine |= theirs;
                    }
                });
            }
        }
    }
}
