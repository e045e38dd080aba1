//! Requests held by progressive throttling: how many each client has waiting, and whether the
//! client of a held request is still there.
//!
//! A throttled client must pay its step in time, not in upstream requests: it may have at most
//! `[scoring] max_held` requests held at once (more connections buy nothing), and a held
//! request whose client went away is dropped, never forwarded when its hold ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Held requests per client. Entries exist only while requests are held, so the table is
/// bounded by the gateway-wide hold cap.
#[derive(Debug, Default)]
pub struct HeldByClient {
    held: Mutex<HashMap<u64, u32>>,
}

/// One held request's place; gives it back when dropped.
#[derive(Debug)]
pub struct Held {
    table: Arc<HeldByClient>,
    client: u64,
}

impl HeldByClient {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, u32>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more held request of `client`, unless it has `max` held already.
    pub fn enter(self: &Arc<Self>, client: u64, max: u32) -> Option<Held> {
        let mut held = self.lock();
        let n = held.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            table: self.clone(),
            client,
        })
    }

    /// Requests of `client` held now.
    pub fn count(&self, client: u64) -> u32 {
        self.lock().get(&client).copied().unwrap_or(0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.table.lock();
        if let Some(n) = held.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.client);
            }
        }
    }
}

/// Set by the connection when its client went away while a request was being handled (the
/// HTTP/1.x server watches the socket meanwhile); a hold waits on it.
#[derive(Debug, Clone, Default)]
pub struct ClientGone(Arc<GoneInner>);

#[derive(Debug, Default)]
struct GoneInner {
    gone: AtomicBool,
    notify: tokio::sync::Notify,
}

impl ClientGone {
    /// Marks the client as gone and wakes whoever waits.
    pub fn set(&self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Whether the client went away.
    pub fn is_gone(&self) -> bool {
        self.0.gone.load(Ordering::Acquire)
    }

    /// Waits until the client goes away.
    pub async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_gone() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_max_and_places_come_back() {
        let t = Arc::new(HeldByClient::default());
        let a = t.enter(1, 2).unwrap();
        let b = t.enter(1, 2).unwrap();
        assert!(t.enter(1, 2).is_none(), "a third is refused");
        assert!(t.enter(2, 2).is_some(), "another client is not affected");
        drop(a);
        assert_eq!(t.count(1), 1);
        let c = t.enter(1, 2).unwrap();
        drop((b, c));
        assert_eq!(t.count(1), 0);
        assert!(t.lock().is_empty(), "no entry outlives its holds");
    }

    #[tokio::test]
    async fn waiting_for_a_gone_client_ends_when_it_goes() {
        let g = ClientGone::default();
        let w = g.clone();
        let waiter = tokio::spawn(async move { w.wait().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        g.set();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(g.is_gone());
        // Already gone: returns at once.
        g.wait().await;
    }
}
