//! Palisade's header fingerprint (`hfp`): which headers a client sends and in what order — the
//! habit of its HTTP stack — as a short, stable string. Our own design, free of the FoxIO
//! licence that covers JA4H (which stays available as an explicit opt-in).
//!
//! ```text
//! h1cl09_8f14e45fceea167a
//! ││││└┴─ headers counted (cookie left out), two digits, at most 99
//! │││└─── `l`: an Accept-Language header was sent; `n`: none
//! ││└──── `c`: a Cookie header was sent; `n`: none
//! │└───── HTTP version: `1` (1.0 and 1.1), `2`, `3`
//! └────── `h`
//! _ then 16 hex digits: FNV-1a (64-bit) of the header names, lowercased, in the order sent,
//!   joined by `,`, without Cookie (its presence is above) and pseudo-headers
//! ```
//!
//! The method, cookie values and header values are not part of it: one client's GET and POST,
//! logged in or not, share it. It is stable across versions and processes (documented here,
//! tested against fixed values), and cheap: no cryptographic hash.

/// FNV-1a's 64-bit offset basis: the state [`fnv1a`] starts from.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64-bit) of `bytes`, continuing from `state` ([`FNV_OFFSET`] to start): a stable,
/// cheap, non-cryptographic hash (the same on every machine and version).
#[inline]
pub fn fnv1a(state: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(state, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// A header fingerprint as text (`h1cl05_` and 16 hex digits), held on the stack: every
/// request of a policy that reads it makes one.
pub type Fingerprint = crate::text::AsciiText<23>;

/// The header fingerprint. `version` is 1, 2 or 3; `names` are the header names in the order
/// sent (case is ignored).
pub fn header_fingerprint<'a>(
    version: u8,
    names: impl IntoIterator<Item = &'a str>,
) -> Fingerprint {
    let mut hash = FNV_OFFSET;
    let (mut count, mut cookie, mut language) = (0usize, false, false);
    for name in names {
        if name.starts_with(':') {
            continue;
        }
        if name.eq_ignore_ascii_case("cookie") {
            cookie = true;
            continue;
        }
        if name.eq_ignore_ascii_case("accept-language") {
            language = true;
        }
        if count > 0 {
            hash = fnv1a(hash, [b',']);
        }
        hash = fnv1a(hash, name.bytes().map(|b| b.to_ascii_lowercase()));
        count += 1;
    }
    // Written by hand: `format!` with widths costs more than the hashing (on every request).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let count = count.min(99) as u8;
    let mut out = [0u8; 23];
    let head = [
        b'h',
        b'0' + version.clamp(1, 3),
        if cookie { b'c' } else { b'n' },
        if language { b'l' } else { b'n' },
        b'0' + count / 10,
        b'0' + count % 10,
        b'_',
    ];
    let (start, digits) = out.split_at_mut(head.len());
    start.copy_from_slice(&head);
    for (i, d) in digits.iter_mut().enumerate() {
        let nibble = (hash >> ((15 - i) * 4)) & 0xf;
        *d = HEX.get(nibble as usize).copied().unwrap_or(b'0');
    }
    Fingerprint::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed values: the format is a contract (logs, blocks and limits keep them).
    #[test]
    fn stable_values() {
        assert_eq!(
            header_fingerprint(1, ["Host", "User-Agent", "Accept"]),
            format!("h1nn03_{:016x}", fnv(b"host,user-agent,accept"))
        );
        assert_eq!(header_fingerprint(1, []), "h1nn00_cbf29ce484222325");
        // FNV-1a of "a" is a published test value.
        assert_eq!(header_fingerprint(2, ["a"]), "h2nn01_af63dc4c8601ec8c");
    }

    fn fnv(b: &[u8]) -> u64 {
        b.iter().fold(FNV_OFFSET, |h, c| {
            (h ^ u64::from(*c)).wrapping_mul(FNV_PRIME)
        })
    }

    #[test]
    fn habits_not_values() {
        let a = header_fingerprint(1, ["host", "cookie", "accept-language", "accept"]);
        let b = header_fingerprint(1, ["Host", "Accept-Language", "Accept", "Cookie"]);
        assert_eq!(a, b, "case and the cookie's place do not matter");
        assert!(a.starts_with("h1cl03_"), "{a}");
        let reordered = header_fingerprint(1, ["host", "accept", "accept-language"]);
        assert_ne!(a.get(7..), reordered.get(7..), "order does");
        assert_eq!(
            header_fingerprint(2, [":method", ":path", "accept"]),
            header_fingerprint(2, ["accept"])
        );
    }
}
