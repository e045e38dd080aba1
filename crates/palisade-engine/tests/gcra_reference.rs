//! Our GCRA against the reference implementation in the `governor` crate: for random arrival
//! sequences and costs, both must allow and refuse the same requests and name the same earliest
//! time for a refused one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, FakeRelativeClock};
use governor::{Quota, RateLimiter};
use palisade_engine::Algorithm;
use palisade_engine::state::limiter::Cell;
use proptest::prelude::*;

fn compare(interval_ms: u64, burst: u32, steps: &[(u64, u32)]) {
    let quota = Quota::with_period(Duration::from_millis(interval_ms))
        .unwrap()
        .allow_burst(NonZeroU32::new(burst).unwrap());
    let clock = FakeRelativeClock::default();
    let reference = RateLimiter::direct_with_clock(quota, clock.clone());
    let ours = Algorithm::Gcra {
        interval: interval_ms * 1_000_000,
        burst: u64::from(burst),
    };
    // Our clock starts an hour in, as the gateway's does; the reference starts at 0.
    let origin = 3_600_000_000_000u64;
    let mut cell = Cell::Gcra { tat: origin };
    let mut now_ns = origin;
    for (i, &(advance_ms, cost)) in steps.iter().enumerate() {
        clock.advance(Duration::from_millis(advance_ms));
        now_ns += advance_ms * 1_000_000;
        let want = reference.check_n(NonZeroU32::new(cost).unwrap());
        let got = ours.check(&mut cell, now_ns, u64::from(cost), 0);
        match want {
            Ok(Ok(())) => assert!(
                got.allowed,
                "step {i}: reference allowed, we refused ({steps:?})"
            ),
            Ok(Err(not_until)) => {
                assert!(
                    !got.allowed,
                    "step {i}: reference refused, we allowed ({steps:?})"
                );
                let wait = not_until.wait_time_from(clock.now());
                assert_eq!(
                    Duration::from_nanos(got.retry_after),
                    wait,
                    "step {i}: retry time differs"
                );
            }
            Err(_insufficient) => {
                assert!(!got.allowed, "step {i}: cost above burst must be refused")
            }
        }
    }
}

#[test]
fn burst_then_steady_rate() {
    let steps: Vec<(u64, u32)> = std::iter::repeat_n((0, 1), 12)
        .chain(std::iter::repeat_n((50, 1), 20))
        .collect();
    compare(100, 10, &steps);
}

#[test]
fn costs_larger_than_one() {
    compare(
        10,
        20,
        &[
            (0, 5),
            (0, 5),
            (0, 5),
            (0, 5),
            (0, 1),
            (30, 3),
            (10, 2),
            (500, 20),
            (0, 1),
            (0, 21),
        ],
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_sequences_agree(
        interval_ms in 1u64..500,
        burst in 1u32..50,
        steps in proptest::collection::vec((0u64..400, 1u32..8), 1..200),
    ) {
        compare(interval_ms, burst, &steps);
    }
}
