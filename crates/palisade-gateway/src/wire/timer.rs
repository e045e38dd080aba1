//! One timer for many deadlines, shared by the server and client sides of HTTP/1.x.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// One timer for many deadlines: brought forward when a deadline is earlier than it, re-armed
/// when it fires before the deadline being waited for. Deadlines that keep moving later (the
/// idle deadline of a busy connection) cost nothing until it fires.
pub(crate) struct Timer(Pin<Box<Sleep>>);

impl Timer {
    /// A timer armed for `at`.
    pub(crate) fn new(at: Instant) -> Self {
        Self(Box::pin(tokio::time::sleep_until(at)))
    }

    /// Ready once `deadline` has passed (never later; possibly re-armed on the way).
    pub(crate) fn poll_reached(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        if self.0.deadline() > deadline {
            self.0.as_mut().reset(deadline);
        }
        loop {
            ready!(self.0.as_mut().poll(cx));
            if self.0.deadline() >= deadline {
                return Poll::Ready(());
            }
            self.0.as_mut().reset(deadline);
        }
    }
}
