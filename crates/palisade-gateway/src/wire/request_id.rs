//! Request ids and the cheap randomness they and log sampling draw on (not for secrets).

/// A request id: 16 lowercase hex digits, held on the stack (every request makes one).
pub type RequestId = palisade_intel::text::AsciiText<16>;

/// A new random request id.
pub fn request_id() -> RequestId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = per_request_random();
    let mut out = [0u8; 16];
    for b in &mut out {
        *b = HEX.get((n >> 60) as usize).copied().unwrap_or(b'0');
        n <<= 4;
    }
    RequestId::new(out)
}

thread_local! {
    /// A fast generator for what needs randomness but not secrecy (request ids, log sampling),
    /// seeded per thread from the operating system's.
    static FAST_RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_rng(&mut rand::rng()));
}

/// A random number for request ids and sampling (not for secrets).
fn per_request_random() -> u64 {
    FAST_RNG.with(|r| rand::RngCore::next_u64(&mut *r.borrow_mut()))
}

/// A uniform random number in [0, 1), for sampling.
pub fn unit_random() -> f64 {
    // The top 53 bits: every value a double can hold exactly in [0, 1).
    (per_request_random() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sixteen_lowercase_hex_digits_and_do_not_repeat() {
        let ids: std::collections::HashSet<RequestId> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        // Every digit position takes every value (the high nibble is not stuck).
        for pos in 0..16 {
            let seen: std::collections::HashSet<u8> =
                ids.iter().map(|id| id.as_bytes()[pos]).collect();
            assert_eq!(seen.len(), 16, "position {pos}");
        }
    }

    #[test]
    fn sampling_numbers_are_uniform_in_the_unit_interval() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| unit_random()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below = xs.iter().filter(|x| **x < 0.01).count();
        // 1% sampling keeps about 1%: 1000 expected, sd ~31.
        assert!((850..1150).contains(&below), "{below}");
        let mean = xs.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
