//! The enforcement phase: a decision becomes a refusal (one table: [`Refusal::from_decision`])
//! or a forward, after any hold. A limit's `delay` smooths a burst into its rate within the
//! limit's queue; any other delay is throttling, bounded gateway-wide and per client, and
//! dropped when its client goes away.

use std::time::Duration;

use palisade_engine::state::limiter::ceil_secs;
use palisade_engine::{Action, ClientCode, Clock, Decision};

use crate::proxy::hold::ClientGone;
use crate::refusal::Refusal;
use crate::{Runtime, Shared};

/// How enforcement went, beyond the refusal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Held {
    /// Not held, or held and released.
    #[default]
    No,
    /// A hold was wanted but its queue was full: refused instead.
    QueueFull,
    /// The client went away while held: dropped.
    ClientGone,
}

/// Holds a delayed request: `Some(refusal)` to answer with instead (its queue was full, or its
/// client left), or `None` to forward it now. (Other actions need no hold:
/// [`Refusal::from_decision`] says what they become.)
pub async fn hold(
    shared: &Shared,
    rt: &Runtime,
    decision: &mut Decision,
    client: std::net::IpAddr,
    gone: Option<&ClientGone>,
) -> (Option<Refusal>, Held) {
    let Action::Delay { wait } = decision.action else {
        return (Refusal::from_decision(decision), Held::No);
    };
    let refused = |decision: &mut Decision| {
        // Not held, so not served: give back what the engine reserved for it.
        rt.engine.refund(decision, shared.clock.now());
        Some(Refusal::RateLimited {
            retry_after: ceil_secs(wait).max(1),
            code: ClientCode::RateLimited,
        })
    };
    if decision.delayed_by_limit() {
        let mut permits = Vec::new();
        for o in decision
            .limits
            .iter()
            .filter(|o| !o.verdict.allowed && !o.shadow)
        {
            if let Some(Some(sem)) = rt.delay_queues.get(o.index) {
                match sem.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => return (refused(decision), Held::QueueFull),
                }
            }
        }
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        // The queue bounds requests *waiting*; once forwarded they no longer count.
        drop(permits);
        return (None, Held::No);
    }
    // Throttling (the score or a rule): bounded by one queue for the whole gateway and by
    // `max_held` per client; a client that goes away while held is not forwarded.
    let client_key = held_key(decision, client);
    let max_held = rt.compiled.policy.scoring.max_held;
    let (Ok(permit), Some(place)) = (
        rt.score_delays.clone().try_acquire_owned(),
        rt.held.enter(client_key, max_held),
    ) else {
        return (refused(decision), Held::QueueFull);
    };
    let hold = tokio::time::sleep(Duration::from_nanos(wait));
    let left = match gone {
        Some(g) => tokio::select! {
            _ = hold => false,
            _ = g.wait() => true,
        },
        None => {
            hold.await;
            false
        }
    };
    drop((permit, place));
    if left {
        rt.engine.refund(decision, shared.clock.now());
        return (Some(Refusal::ClientClosedRequest), Held::ClientGone);
    }
    (None, Held::No)
}

/// The client a throttling hold is counted for: its throttling record (key, else address),
/// or its address when behaviour is off.
fn held_key(decision: &Decision, client: std::net::IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    // A fixed hasher: the key only needs to tell clients apart within this process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match decision.trace.as_ref().and_then(|t| t.throttle_key()) {
        Some((dim, key)) => (dim as u8, key).hash(&mut h),
        None => client.to_canonical().hash(&mut h),
    }
    h.finish()
}
