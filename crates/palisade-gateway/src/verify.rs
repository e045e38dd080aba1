//! Verified good bots, the DNS half: forward-confirmed reverse DNS for clients that claim to be
//! a bot whose operator publishes DNS names (Googlebot, Bingbot). Lookups run in the background,
//! one per (bot, address) at a time, with a timeout; their outcome is cached. The request that
//! starts a lookup, and any until it finishes, see `pending` (what they get is `[bots] pending`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use palisade_intel::verify::{VerifiedBot, VerifyStatus};
use quick_cache::sync::Cache;

/// How long a verdict is kept.
const VERIFIED_FOR: Duration = Duration::from_secs(24 * 3600);
const SPOOFED_FOR: Duration = Duration::from_secs(3600);
/// After a DNS failure, the claim stays pending this long before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Each DNS query's time limit.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most lookups under way at once.
const MAX_IN_FLIGHT: usize = 256;

type Key = (Arc<str>, IpAddr);

struct Inner {
    cache: Cache<Key, (VerifyStatus, Instant)>,
    in_flight: Mutex<HashSet<Key>>,
    resolver: Mutex<Option<(Vec<SocketAddr>, TokioResolver)>>,
}

impl Inner {
    fn finish(&self, key: &Key, status: VerifyStatus, ttl: Duration) {
        self.cache
            .insert(key.clone(), (status, Instant::now() + ttl));
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

    /// The state of `bot`'s claim for `ip`: from the published ranges, the cache, or (starting
    /// a lookup) pending.
    pub fn status(
        &self,
        bot: &Arc<VerifiedBot>,
        ip: IpAddr,
        servers: &[SocketAddr],
    ) -> VerifyStatus {
        let ip = ip.to_canonical();
        if let Some(s) = bot.check_without_dns(ip) {
            return s;
        }
        let key: Key = (bot.name.clone(), ip);
        if let Some((s, until)) = self.inner.cache.get(&key)
            && until > Instant::now()
        {
            return s;
        }
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
        let Some(resolver) = self.resolver(servers) else {
            self.inner.finish(&key, VerifyStatus::Pending, RETRY_AFTER);
            return VerifyStatus::Pending;
        };
        let bot = bot.clone();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            match fcrdns(&resolver, &bot, ip).await {
                Some(VerifyStatus::Verified) => {
                    inner.finish(&key, VerifyStatus::Verified, VERIFIED_FOR);
                }
                Some(s) => inner.finish(&key, s, SPOOFED_FOR),
                None => inner.finish(&key, VerifyStatus::Pending, RETRY_AFTER),
            }
        });
        VerifyStatus::Pending
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
