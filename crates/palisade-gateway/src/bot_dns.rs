//! Verified good bots, the DNS half: forward-confirmed reverse DNS for clients that claim to be
//! a bot whose operator publishes DNS names (Googlebot, Bingbot). Lookups run in the background,
//! one per (bot, address) at a time, with a timeout; their outcome is cached. The request that
//! starts a lookup, and any until it finishes, see `pending` (what they get is `[bots] pending`).
//! A lookup that fails (timeout, refused, server error) leaves the claim pending and is tried
//! again after a back-off that starts at two seconds and doubles to two minutes, so a DNS
//! hiccup is short and a DNS outage is not hammered.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use palisade_intel::verify::{Ranges, VerifiedBot, VerifyStatus};
use quick_cache::sync::Cache;

/// How long a verdict is kept.
const VERIFIED_FOR: Duration = Duration::from_secs(24 * 3600);
const SPOOFED_FOR: Duration = Duration::from_secs(3600);
/// After a first DNS failure the claim stays pending this long before it is tried again; each
/// further failure in a row doubles it, up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(120);
/// Each DNS query's time limit.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most lookups under way at once.
const MAX_IN_FLIGHT: usize = 256;

type Key = (Arc<str>, IpAddr);

/// How long to wait before trying again after `failures` lookups in a row failed.
fn retry_after(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// A cached outcome: the status, until when it holds, and how many lookups in a row failed.
#[derive(Clone, Copy)]
struct Entry {
    status: VerifyStatus,
    until: Instant,
    failures: u32,
}

struct Inner {
    cache: Cache<Key, Entry>,
    /// Published ranges the gateway fetched itself (`[bots.ranges] NAME = { ... }`), by bot;
    /// they outlive reloads.
    fetched: ArcSwap<HashMap<Arc<str>, Arc<Ranges>>>,
    in_flight: Mutex<HashSet<Key>>,
    resolver: Mutex<Option<(Vec<SocketAddr>, TokioResolver)>>,
}

impl Inner {
    fn finish(&self, key: &Key, status: VerifyStatus, ttl: Duration, failures: u32) {
        let until = Instant::now() + ttl;
        self.cache.insert(
            key.clone(),
            Entry {
                status,
                until,
                failures,
            },
        );
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// The verifier.
#[derive(Clone)]
pub struct BotVerifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BotVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotVerifier")
            .field("cached", &self.inner.cache.len())
            .finish()
    }
}

impl Default for BotVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl BotVerifier {
    /// An empty verifier.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                cache: Cache::new(100_000),
                fetched: ArcSwap::from_pointee(HashMap::new()),
                in_flight: Mutex::new(HashSet::new()),
                resolver: Mutex::new(None),
            }),
        }
    }

    fn resolver(&self, servers: &[SocketAddr]) -> Option<TokioResolver> {
        let mut slot = self
            .inner
            .resolver
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((s, r)) = slot.as_ref()
            && s == servers
        {
            return Some(r.clone());
        }
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio().ok()?
        } else {
            let mut group = NameServerConfigGroup::new();
            for s in servers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[s.ip()],
                    s.port(),
                    true,
                ));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        };
        let r = builder.build();
        *slot = Some((servers.to_vec(), r.clone()));
        Some(r)
    }

    /// Installs `bot`'s fetched published ranges (replacing any before).
    pub fn set_ranges(&self, bot: &str, ranges: Arc<Ranges>) {
        self.inner.fetched.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(Arc::from(bot), ranges.clone());
            m
        });
    }

    /// Drops the fetched ranges of bots `keep` says no to (no longer fetched by the config).
    pub fn retain_ranges(&self, keep: impl Fn(&str) -> bool) {
        if self.inner.fetched.load().keys().all(|k| keep(k)) {
            return;
        }
        self.inner.fetched.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.retain(|k, _| keep(k));
            m
        });
    }

    /// `bot`'s fetched published ranges, if any.
    pub fn ranges(&self, bot: &str) -> Option<Arc<Ranges>> {
        self.inner.fetched.load().get(bot).cloned()
    }

    /// The state of `bot`'s claim for `ip`: from the published ranges, the cache, or (starting
    /// a lookup) pending.
    pub fn status(
        &self,
        bot: &Arc<VerifiedBot>,
        ip: IpAddr,
        servers: &[SocketAddr],
    ) -> VerifyStatus {
        let ip = ip.to_canonical();
        let fetched = self.ranges(&bot.name);
        if let Some(s) = bot.check_with(ip, fetched.as_deref()) {
            return s;
        }
        let key: Key = (bot.name.clone(), ip);
        let failures = match self.inner.cache.get(&key) {
            Some(e) if e.until > Instant::now() => return e.status,
            Some(e) => e.failures,
            None => 0,
        };
        {
            let mut in_flight = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if in_flight.len() >= MAX_IN_FLIGHT || !in_flight.insert(key.clone()) {
                return VerifyStatus::Pending;
            }
        }
        let failed = failures.saturating_add(1);
        let Some(resolver) = self.resolver(servers) else {
            self.inner
                .finish(&key, VerifyStatus::Pending, retry_after(failed), failed);
            return VerifyStatus::Pending;
        };
        let bot = bot.clone();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            match fcrdns(&resolver, &bot, ip).await {
                Some(VerifyStatus::Verified) => {
                    inner.finish(&key, VerifyStatus::Verified, VERIFIED_FOR, 0);
                }
                Some(s) => inner.finish(&key, s, SPOOFED_FOR, 0),
                None => inner.finish(&key, VerifyStatus::Pending, retry_after(failed), failed),
            }
        });
        VerifyStatus::Pending
    }
}

/// What one check found: the verdict, and the reverse DNS names looked at (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The verdict; `Pending` when DNS failed.
    pub status: VerifyStatus,
    /// How it was reached: `ranges`, `reverse DNS`, or why it could not be.
    pub how: String,
}

/// Checks `bot`'s claim for `ip` now, waiting for DNS (for `palisade bots verify`).
pub async fn check_now(
    bot: &VerifiedBot,
    ip: IpAddr,
    fetched: Option<&Ranges>,
    servers: &[SocketAddr],
) -> Checked {
    let ip = ip.to_canonical();
    match bot.check_with(ip, fetched) {
        Some(VerifyStatus::Verified) => {
            return Checked {
                status: VerifyStatus::Verified,
                how: "in the published ranges".to_owned(),
            };
        }
        Some(VerifyStatus::Unverifiable) => {
            return Checked {
                status: VerifyStatus::Unverifiable,
                how: "its operator publishes only ranges, and none are loaded ([bots.ranges])"
                    .to_owned(),
            };
        }
        Some(s) => {
            return Checked {
                status: s,
                how: "not in the published ranges, and no reverse DNS domain to check".to_owned(),
            };
        }
        None => {}
    }
    let Some(resolver) = BotVerifier::new().resolver(servers) else {
        return Checked {
            status: VerifyStatus::Pending,
            how: "no DNS resolver could be set up".to_owned(),
        };
    };
    match fcrdns(&resolver, bot, ip).await {
        Some(VerifyStatus::Verified) => Checked {
            status: VerifyStatus::Verified,
            how: format!("forward-confirmed reverse DNS in {}", bot.rdns.join(", ")),
        },
        Some(s) => Checked {
            status: s,
            how: format!(
                "its reverse DNS name is not in {} or does not resolve back to it",
                bot.rdns.join(", ")
            ),
        },
        None => Checked {
            status: VerifyStatus::Pending,
            how: "DNS failed or timed out; try again".to_owned(),
        },
    }
}

/// Forward-confirmed reverse DNS: the PTR names of `ip` in the bot's domains, one of which must
/// resolve back to `ip`. `None` when DNS failed (try again later).
async fn fcrdns(resolver: &TokioResolver, bot: &VerifiedBot, ip: IpAddr) -> Option<VerifyStatus> {
    let names: Vec<String> =
        match tokio::time::timeout(DNS_TIMEOUT, resolver.reverse_lookup(ip)).await {
            Ok(Ok(found)) => found.iter().map(|ptr| ptr.to_string()).collect(),
            Ok(Err(e)) if e.is_no_records_found() => Vec::new(),
            Ok(Err(e)) => {
                tracing::warn!(bot = %bot.name, error = %e, "reverse DNS lookup failed");
                return None;
            }
            Err(_) => return None,
        };
    for name in names.iter().filter(|n| bot.rdns_matches(n)).take(4) {
        match tokio::time::timeout(DNS_TIMEOUT, resolver.lookup_ip(name.as_str())).await {
            Ok(Ok(ips)) => {
                if ips.iter().any(|x| x.to_canonical() == ip) {
                    return Some(VerifyStatus::Verified);
                }
            }
            Ok(Err(e)) if e.is_no_records_found() => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
    Some(VerifyStatus::Spoofed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn failed_lookups_back_off_from_two_seconds_doubling_to_two_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 120, 120, 120]);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    }

    #[tokio::test]
    async fn a_failed_lookup_stays_pending_for_the_back_off_then_is_tried_again() {
        // A DNS server that is not there: the port was free a moment ago.
        let server = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let bot = Arc::new(
            VerifiedBot::new(
                "googlebot",
                "googlebot",
                Vec::new(),
                vec!["googlebot.com".into()],
            )
            .unwrap(),
        );
        let v = BotVerifier::new();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let key: Key = (bot.name.clone(), ip);
        let in_flight = |v: &BotVerifier| v.inner.in_flight.lock().unwrap().contains(&key);

        assert_eq!(v.status(&bot, ip, &[server]), VerifyStatus::Pending);
        assert!(in_flight(&v), "the first request starts a lookup");
        let deadline = Instant::now() + DNS_TIMEOUT * 3;
        while in_flight(&v) {
            assert!(Instant::now() < deadline, "the lookup never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = v.inner.cache.get(&key).expect("the failure is remembered");
        assert_eq!((e.status, e.failures), (VerifyStatus::Pending, 1));
        assert!(e.until <= Instant::now() + RETRY_FIRST);

        // Within the back-off: pending, and no new lookup.
        assert_eq!(v.status(&bot, ip, &[server]), VerifyStatus::Pending);
        assert!(!in_flight(&v));

        // After it: tried again, and a second failure doubles the wait.
        v.inner.cache.insert(
            key.clone(),
            Entry {
                until: Instant::now(),
                ..e
            },
        );
        assert_eq!(v.status(&bot, ip, &[server]), VerifyStatus::Pending);
        assert!(in_flight(&v), "an expired failure starts a new lookup");
        while in_flight(&v) {
            assert!(Instant::now() < deadline, "the retry never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = v.inner.cache.get(&key).unwrap();
        assert_eq!((e.status, e.failures), (VerifyStatus::Pending, 2));
        assert!(e.until > Instant::now() + RETRY_FIRST);
    }
}
