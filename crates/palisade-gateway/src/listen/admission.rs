//! Which client connections are let in and which are let go: a cap on open connections in all
//! and per client address (per /64 for IPv6; peers in `trusted_proxies` are exempt, since a
//! load balancer carries many clients), and, when a cap is reached, shedding of connections that
//! are doing nothing useful — idle between requests, never having sent a byte, or dribbling a
//! head — oldest first, before a new connection is refused. A connection with a request in
//! flight is never shed. This is the model of nginx's and Envoy's overload handling: under
//! connection pressure, idle keep-alive and slow connections go first, so that one address
//! holding thousands of idle sockets cannot lock out everyone else.
//!
//! Connections mark their phase with atomic stores (no lock per request); the registry's lock
//! is taken when a connection opens or closes, and scanned only when a cap is reached.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;

/// The connection's phase, in the top bits of [`ConnState::phase`]; the rest is when it began
/// (milliseconds since the registry's epoch).
const ACTIVE: u64 = 0;
const IDLE: u64 = 1 << 62;
const HEAD: u64 = 2 << 62;
const PHASE_MASK: u64 = 3 << 62;

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` are open and none can be shed.
    Total,
    /// `max_connections_per_ip` are open from this address and none can be shed.
    PerIp,
}

/// What made room for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Nothing needed to go.
    None,
    /// An idle or slow connection of the same address was let go.
    PerIp,
    /// An idle or slow connection of any address was let go.
    Total,
}

/// The admission registry of one listener.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    epoch: Instant,
    reg: Mutex<Registry>,
    drained: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Registry {
    open: usize,
    /// Connections told to go that have not closed yet.
    pending_shed: usize,
    per_ip: HashMap<u128, u32>,
    conns: HashMap<u64, Arc<ConnState>>,
    next_id: u64,
}

/// One connection's phase and its shed signal.
#[derive(Debug)]
pub struct ConnState {
    key: u128,
    /// False for exempt peers (not counted per address).
    counted: bool,
    phase: AtomicU64,
    shed: AtomicBool,
    waker: AtomicWaker,
    epoch: Instant,
}

impl ConnState {
    fn since_epoch(&self) -> u64 {
        self.since_epoch_at(Instant::now())
    }

    fn since_epoch_at(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_millis() as u64) & !PHASE_MASK
    }

    /// Waiting for a request (its first byte): may be shed.
    pub fn idle(&self) {
        self.idle_at(Instant::now());
    }

    /// [`ConnState::idle`] from `now`, a reading of the clock just taken.
    pub fn idle_at(&self, now: Instant) {
        self.phase
            .store(IDLE | self.since_epoch_at(now), Ordering::Relaxed);
    }

    /// A request head began to arrive and is not complete: may be shed after idle ones of the
    /// same age.
    pub fn reading_head(&self) {
        self.phase
            .store(HEAD | self.since_epoch(), Ordering::Relaxed);
    }

    /// A request is in flight: never shed.
    pub fn active(&self) {
        self.phase.store(ACTIVE, Ordering::Relaxed);
    }

    /// Ready once the connection was chosen to be let go. Registers the waker.
    pub fn poll_shed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.shed.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether it was chosen to be let go.
    pub fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }

    fn shed_now(&self) {
        self.shed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Sheddable now: (phase rank, since); smaller goes first.
    fn shed_rank(&self) -> Option<(u64, u64)> {
        if self.shed.load(Ordering::Relaxed) {
            return None;
        }
        let p = self.phase.load(Ordering::Relaxed);
        match p & PHASE_MASK {
            IDLE => Some((0, p & !PHASE_MASK)),
            HEAD => Some((1, p & !PHASE_MASK)),
            _ => None,
        }
    }
}

/// A connection's place in the registry; gives it back when dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    id: u64,
    /// The connection's phase and shed signal.
    pub state: Arc<ConnState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let empty = {
            let mut reg = self.admission.lock();
            reg.conns.remove(&self.id);
            reg.open = reg.open.saturating_sub(1);
            if self.state.is_shed() {
                reg.pending_shed = reg.pending_shed.saturating_sub(1);
            }
            if self.state.counted
                && let Some(n) = reg.per_ip.get_mut(&self.state.key)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    reg.per_ip.remove(&self.state.key);
                }
            }
            reg.open == 0
        };
        if empty {
            self.admission.drained.notify_waiters();
        }
    }
}

/// The key connections are counted under: the address, or its /64 for IPv6.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1) | (1u128 << 127),
    }
}

impl Admission {
    /// A registry admitting `max_total` connections, `max_per_ip` per address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            epoch: Instant::now(),
            reg: Mutex::new(Registry::default()),
            drained: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Nothing panics while holding it; a poisoned registry is still consistent.
        self.reg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Admits a connection from `ip` (`exempt`: not counted per address), shedding an idle or
    /// slow connection when a cap is reached; refuses when nothing can be shed.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, exempt: bool) -> Result<(Admitted, Shed), Refused> {
        let key = ip_key(ip);
        let mut reg = self.lock();
        let mut shed = Shed::None;
        if !exempt && reg.per_ip.get(&key).copied().unwrap_or(0) as usize >= self.max_per_ip {
            match Self::oldest_sheddable(&reg, Some(key)) {
                Some(victim) => {
                    victim.shed_now();
                    reg.pending_shed += 1;
                    shed = Shed::PerIp;
                }
                None => return Err(Refused::PerIp),
            }
        }
        // Connections already told to go still count until they close; room is made for the
        // newcomer among the rest.
        if shed == Shed::None && reg.open.saturating_sub(reg.pending_shed) >= self.max_total {
            match Self::oldest_sheddable(&reg, None) {
                Some(victim) => {
                    victim.shed_now();
                    reg.pending_shed += 1;
                    shed = Shed::Total;
                }
                None => return Err(Refused::Total),
            }
        }
        let state = Arc::new(ConnState {
            key,
            counted: !exempt,
            phase: AtomicU64::new(0),
            shed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            epoch: self.epoch,
        });
        state.idle();
        let id = reg.next_id;
        reg.next_id += 1;
        reg.open += 1;
        if !exempt {
            *reg.per_ip.entry(key).or_insert(0) += 1;
        }
        reg.conns.insert(id, state.clone());
        drop(reg);
        Ok((
            Admitted {
                admission: self.clone(),
                id,
                state,
            },
            shed,
        ))
    }

    /// Lets go of the oldest idle or slow connection (when file descriptors run out).
    pub fn shed_one(&self) -> bool {
        let mut reg = self.lock();
        match Self::oldest_sheddable(&reg, None) {
            Some(victim) => {
                victim.shed_now();
                reg.pending_shed += 1;
                true
            }
            None => false,
        }
    }

    fn oldest_sheddable(reg: &Registry, key: Option<u128>) -> Option<&Arc<ConnState>> {
        reg.conns
            .values()
            .filter(|c| key.is_none_or(|k| c.counted && c.key == k))
            .filter_map(|c| c.shed_rank().map(|r| (r, c)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, c)| c)
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_sheds_that_addresss_idle_connections_first() {
        let a = Admission::new(100, 2);
        let (c1, _) = a.admit(ip("10.0.0.1"), false).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let (c2, _) = a.admit(ip("10.0.0.1"), false).unwrap();
        c2.state.active();
        let (other, _) = a.admit(ip("10.0.0.2"), false).unwrap();
        // The third from 10.0.0.1 sheds its idle first connection, not its active one nor the
        // other address's.
        let (c3, shed) = a.admit(ip("10.0.0.1"), false).unwrap();
        assert_eq!(shed, Shed::PerIp);
        assert!(c1.state.is_shed());
        assert!(!c2.state.is_shed() && !other.state.is_shed() && !c3.state.is_shed());
        // With both remaining ones busy, a fourth is refused.
        c3.state.active();
        drop(c1);
        assert_eq!(a.admit(ip("10.0.0.1"), false).err(), Some(Refused::PerIp));
        // Exempt peers (trusted proxies) are not counted per address.
        let many: Vec<_> = (0..5)
            .map(|_| a.admit(ip("10.0.0.1"), true).unwrap().0)
            .collect();
        assert_eq!(a.open(), 8);
        drop(many);
    }

    #[test]
    fn total_cap_sheds_idle_before_slow_heads_and_never_active_ones() {
        let a = Admission::new(3, 100);
        let (idle, _) = a.admit(ip("10.0.0.1"), false).unwrap();
        let (head, _) = a.admit(ip("10.0.0.2"), false).unwrap();
        head.state.reading_head();
        let (busy, _) = a.admit(ip("10.0.0.3"), false).unwrap();
        busy.state.active();
        let (n1, shed) = a.admit(ip("10.0.0.4"), false).unwrap();
        assert_eq!(shed, Shed::Total);
        assert!(idle.state.is_shed() && !head.state.is_shed());
        n1.state.active();
        let (n2, _) = a.admit(ip("10.0.0.5"), false).unwrap();
        assert!(head.state.is_shed() && !busy.state.is_shed());
        n2.state.active();
        // Everything left is busy: refused, also once the shed ones closed.
        assert_eq!(a.admit(ip("10.0.0.6"), false).err(), Some(Refused::Total));
        drop((idle, head));
        assert_eq!(a.admit(ip("10.0.0.7"), false).err(), Some(Refused::Total));
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        assert_eq!(ip_key(ip("2001:db8::1")), ip_key(ip("2001:db8::ffff:1")));
        assert_ne!(ip_key(ip("2001:db8::1")), ip_key(ip("2001:db8:0:1::1")));
        assert_eq!(ip_key(ip("::ffff:10.0.0.1")), ip_key(ip("10.0.0.1")));
        assert_ne!(ip_key(ip("::a00:1")), ip_key(ip("10.0.0.1")));
    }

    #[tokio::test]
    async fn shed_wakes_the_connection_and_drained_waits_for_the_last() {
        let a = Admission::new(1, 1);
        let (c1, _) = a.admit(ip("10.0.0.1"), false).unwrap();
        let st = c1.state.clone();
        let waiter = tokio::spawn(async move {
            std::future::poll_fn(|cx| st.poll_shed(cx)).await;
        });
        tokio::task::yield_now().await;
        let (c2, _) = a.admit(ip("10.0.0.2"), false).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        drop(c1);
        let a2 = a.clone();
        let drained = tokio::spawn(async move { a2.drained().await });
        tokio::task::yield_now().await;
        assert!(!drained.is_finished());
        drop(c2);
        tokio::time::timeout(std::time::Duration::from_secs(1), drained)
            .await
            .unwrap()
            .unwrap();
    }
}
