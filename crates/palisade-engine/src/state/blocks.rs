//! Blocks with a time to live, on any identity dimension (ip, ip prefix, api key, account,
//! JA4H): added by honeypots or by operators, escalating for repeat offenders (like fail2ban's
//! increasing ban time), looked up on every request.
//!
//! Times are wall-clock (unix ms) because blocks outlive the process (the gateway persists
//! them). The table is bounded: when it is full, expired entries go first, then the entry that
//! would expire soonest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::model::identity::mask;

/// Longest block, however often a client offends.
pub const MAX_BLOCK_MS: u64 = 30 * 86_400_000;

/// What a block does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockEffect {
    /// Refuse (403).
    Block,
    /// Add a signal of this weight.
    Score(u8),
}

/// One block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockEntry {
    /// `ip:203.0.113.7`, `ip/24:203.0.113.0`, `api_key:<id>`, `account:<name>`, `ja4h:<fp>`.
    pub key: String,
    /// Unix ms when it ends.
    pub until_ms: u64,
    /// Why (`honeypot/<name>`, `admin`, ...); a signal name, never shown to clients.
    pub reason: String,
    /// What it does.
    pub effect: BlockEffect,
    /// How many times this identity was blocked (escalation).
    pub strikes: u32,
}

/// The dimensions a block can name.
pub const DIMENSIONS: [&str; 10] = [
    "ip", "ip/24", "asn", "api_key", "account", "hfp", "ja4h", "ja4", "h2fp", "ja3",
];

/// Normalises a block key: `dimension:value`, with IPs canonical and prefixes masked (ip/24
/// masks IPv6 to /48). Returns `None` for an unknown dimension or a bad value.
pub fn block_key(dimension: &str, value: &str) -> Option<String> {
    let value = value.trim();
    match dimension {
        "ip" => {
            let ip: IpAddr = value.parse().ok()?;
            Some(format!("ip:{}", ip.to_canonical()))
        }
        "ip/24" => {
            let ip: IpAddr = value.split('/').next()?.parse().ok()?;
            Some(format!("ip/24:{}", mask(ip.to_canonical(), 24, 48)))
        }
        "asn" => {
            let n: u32 = value
                .trim_start_matches("AS")
                .trim_start_matches("as")
                .parse()
                .ok()?;
            Some(format!("asn:{n}"))
        }
        "api_key" | "account" | "hfp" | "ja4h" | "ja4" | "h2fp" | "ja3"
            if !value.is_empty()
                && value.len() <= 256
                && !value.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            Some(format!("{dimension}:{value}"))
        }
        _ => None,
    }
}

/// The block table.
#[derive(Debug)]
pub struct BlockTable {
    entries: Mutex<HashMap<String, BlockEntry>>,
    len: AtomicUsize,
    max: usize,
    added: Mutex<Vec<BlockEntry>>,
    /// Local changes for other gateways (cluster mode), when enabled.
    outbox: Mutex<Option<Vec<BlockChange>>>,
    /// When each key last changed (cluster mode), to order changes from several gateways.
    versions: Mutex<HashMap<String, u64>>,
}

/// A change to share with the other gateways of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum BlockChange {
    /// A block was added or escalated.
    Add {
        /// The block.
        entry: BlockEntry,
        /// When (unix ms): a change older than the last one seen for its key is ignored, so a
        /// retried message cannot bring back a block lifted since.
        #[serde(default)]
        at_ms: u64,
    },
    /// A block was lifted.
    Remove {
        /// Its key.
        key: String,
        /// When (unix ms).
        #[serde(default)]
        at_ms: u64,
    },
}

impl BlockTable {
    /// A table of at most `max` blocks.
    pub fn new(max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            max: max.max(16),
            added: Mutex::new(Vec::new()),
            outbox: Mutex::new(None),
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `key` changed at `at_ms`; false if a newer change was seen already.
    fn newer(&self, key: &str, at_ms: u64) -> bool {
        let mut v = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        if v.get(key).is_some_and(|seen| *seen > at_ms) {
            return false;
        }
        if v.len() >= 2 * self.max && !v.contains_key(key) {
            v.clear();
        }
        v.insert(key.to_owned(), at_ms);
        true
    }

    /// Starts recording local changes for other gateways (cluster mode).
    pub fn share_changes(&self) {
        let mut o = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        if o.is_none() {
            *o = Some(Vec::new());
        }
    }

    /// Local changes since the last call (empty unless sharing).
    pub fn take_changes(&self) -> Vec<BlockChange> {
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&self, change: BlockChange) {
        if let Some(o) = self
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            && o.len() < 100_000
        {
            o.push(change);
        }
    }

    /// Applies a change another gateway made: kept (and persisted) like a local one, not
    /// shared again.
    pub fn apply_remote(&self, change: BlockChange, now_ms: u64) {
        match change {
            BlockChange::Add { entry, at_ms } => {
                if entry.until_ms <= now_ms || !self.newer(&entry.key, at_ms) {
                    return;
                }
                let mut map = self.lock();
                if !map.contains_key(&entry.key) && map.len() >= self.max {
                    map.retain(|_, e| e.until_ms > now_ms);
                }
                if map.len() < self.max || map.contains_key(&entry.key) {
                    map.insert(entry.key.clone(), entry.clone());
                }
                self.len.store(map.len(), Ordering::Relaxed);
                drop(map);
                self.added
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(entry);
            }
            BlockChange::Remove { key, at_ms } => {
                if !self.newer(&key, at_ms) {
                    return;
                }
                let mut map = self.lock();
                map.remove(&key);
                self.len.store(map.len(), Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BlockEntry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the table holds no block (the request path's fast exit).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Adds (or escalates) a block: the first lasts `base_ms`, each repeat while the previous
    /// is remembered twice as long, up to [`MAX_BLOCK_MS`]. Returns the entry.
    pub fn add(
        &self,
        key: String,
        base_ms: u64,
        reason: &str,
        effect: BlockEffect,
        escalate: bool,
        now_ms: u64,
    ) -> BlockEntry {
        let mut map = self.lock();
        let strikes = map.get(&key).map_or(1, |e| {
            if escalate {
                e.strikes.saturating_add(1)
            } else {
                e.strikes
            }
        });
        let factor = 1u64 << (strikes.saturating_sub(1)).min(20);
        let until_ms = now_ms.saturating_add(base_ms.saturating_mul(factor).min(MAX_BLOCK_MS));
        let entry = BlockEntry {
            key: key.clone(),
            until_ms,
            reason: reason.to_owned(),
            effect,
            strikes,
        };
        if !map.contains_key(&key) && map.len() >= self.max {
            map.retain(|_, e| e.until_ms > now_ms);
            if map.len() >= self.max
                && let Some(soonest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.until_ms)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&soonest);
            }
        }
        map.insert(key, entry.clone());
        self.len.store(map.len(), Ordering::Relaxed);
        drop(map);
        self.added
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry.clone());
        if self.sharing() {
            self.newer(&entry.key, now_ms);
            self.record(BlockChange::Add {
                entry: entry.clone(),
                at_ms: now_ms,
            });
        }
        entry
    }

    fn sharing(&self) -> bool {
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Loads persisted blocks (expired ones are skipped; nothing is reported as added).
    pub fn restore(&self, entries: impl IntoIterator<Item = BlockEntry>, now_ms: u64) {
        let mut map = self.lock();
        for e in entries {
            if e.until_ms > now_ms && map.len() < self.max {
                map.insert(e.key.clone(), e);
            }
        }
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// Removes a block. Returns whether there was one.
    pub fn remove(&self, key: &str, now_ms: u64) -> bool {
        let mut map = self.lock();
        let had = map.remove(key).is_some();
        self.len.store(map.len(), Ordering::Relaxed);
        drop(map);
        if self.sharing() {
            self.newer(key, now_ms);
            self.record(BlockChange::Remove {
                key: key.to_owned(),
                at_ms: now_ms,
            });
        }
        had
    }

    /// The active block on any of `keys`, the strongest first (a block over a score).
    pub fn find(&self, keys: &[String], now_ms: u64) -> Option<BlockEntry> {
        let map = self.lock();
        let mut best: Option<&BlockEntry> = None;
        for k in keys {
            if let Some(e) = map.get(k).filter(|e| e.until_ms > now_ms) {
                let stronger = match (best.map(|b| b.effect), e.effect) {
                    (None, _) => true,
                    (Some(BlockEffect::Score(_)), BlockEffect::Block) => true,
                    (Some(BlockEffect::Score(a)), BlockEffect::Score(b)) => b > a,
                    _ => false,
                };
                if stronger {
                    best = Some(e);
                }
            }
        }
        best.cloned()
    }

    /// Active blocks, soonest to expire first.
    pub fn list(&self, now_ms: u64) -> Vec<BlockEntry> {
        let map = self.lock();
        let mut v: Vec<BlockEntry> = map
            .values()
            .filter(|e| e.until_ms > now_ms)
            .cloned()
            .collect();
        v.sort_by_key(|e| e.until_ms);
        v
    }

    /// Blocks added since the last call (for the store).
    pub fn take_added(&self) -> Vec<BlockEntry> {
        std::mem::take(&mut *self.added.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A shared table (carried across reloads).
pub type SharedBlocks = Arc<BlockTable>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalised_and_checked() {
        assert_eq!(
            block_key("ip", "::ffff:203.0.113.7").as_deref(),
            Some("ip:203.0.113.7")
        );
        assert_eq!(
            block_key("ip/24", "203.0.113.77").as_deref(),
            Some("ip/24:203.0.113.0")
        );
        assert_eq!(
            block_key("ip/24", "2001:db8:1:2::9").as_deref(),
            Some("ip/24:2001:db8:1::")
        );
        assert_eq!(block_key("ip", "nope"), None);
        assert_eq!(block_key("asn", "AS16509").as_deref(), Some("asn:16509"));
        assert_eq!(block_key("asn", "x"), None);
        assert_eq!(block_key("colour", "red"), None);
        assert_eq!(block_key("api_key", "a b"), None);
    }

    #[test]
    fn blocks_expire_escalate_and_stay_bounded() {
        let t = BlockTable::new(16);
        let k = || block_key("ip", "198.51.100.7").unwrap();
        let e = t.add(k(), 1_000, "honeypot/x", BlockEffect::Block, true, 0);
        assert_eq!((e.until_ms, e.strikes), (1_000, 1));
        assert!(t.find(&[k()], 999).is_some());
        assert!(t.find(&[k()], 1_000).is_none());
        let e = t.add(k(), 1_000, "honeypot/x", BlockEffect::Block, true, 5_000);
        assert_eq!(
            (e.until_ms, e.strikes),
            (7_000, 2),
            "the second offence lasts twice as long"
        );
        let e = t.add(k(), 1_000, "honeypot/x", BlockEffect::Block, true, 10_000);
        assert_eq!(e.until_ms, 14_000);
        assert_eq!(t.take_added().len(), 3);
        for i in 0..100 {
            t.add(
                format!("ip:10.0.0.{i}"),
                60_000,
                "r",
                BlockEffect::Score(10),
                false,
                20_000,
            );
        }
        assert!(t.len() <= 16);
        // A block wins over a score on another dimension.
        t.add(
            "ja4h:x".into(),
            60_000,
            "r",
            BlockEffect::Score(10),
            false,
            20_000,
        );
        t.add(
            "account:a".into(),
            60_000,
            "r",
            BlockEffect::Block,
            false,
            20_000,
        );
        let f = t
            .find(&["ja4h:x".into(), "account:a".into()], 20_001)
            .unwrap();
        assert_eq!(f.effect, BlockEffect::Block);
        assert!(t.remove("account:a", 0));
        assert!(!t.remove("account:a", 0));
    }

    #[test]
    fn shared_changes_are_ordered_so_a_retried_add_cannot_undo_a_removal() {
        let a = BlockTable::new(100);
        let b = BlockTable::new(100);
        a.share_changes();
        b.share_changes();
        a.add(
            "ip:1.2.3.4".into(),
            60_000,
            "r",
            BlockEffect::Block,
            true,
            1_000,
        );
        let add = a.take_changes();
        assert_eq!(add.len(), 1);
        for c in add.clone() {
            b.apply_remote(c, 1_001);
        }
        assert!(b.find(&["ip:1.2.3.4".to_owned()], 1_002).is_some());
        // Lifted on b, then a's add arrives again (a retried message): the block stays lifted.
        assert!(b.remove("ip:1.2.3.4", 2_000));
        for c in add {
            b.apply_remote(c, 2_001);
        }
        assert!(b.find(&["ip:1.2.3.4".to_owned()], 2_002).is_none());
        // b's removal reaches a; a later block on a is newer and applies again.
        for c in b.take_changes() {
            a.apply_remote(c, 2_003);
        }
        assert!(a.find(&["ip:1.2.3.4".to_owned()], 2_004).is_none());
        a.add(
            "ip:1.2.3.4".into(),
            60_000,
            "r",
            BlockEffect::Block,
            true,
            3_000,
        );
        for c in a.take_changes() {
            b.apply_remote(c, 3_001);
        }
        assert!(b.find(&["ip:1.2.3.4".to_owned()], 3_002).is_some());
    }
}
